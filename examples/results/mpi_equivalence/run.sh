#!/usr/bin/env bash
# LeNet-300-100 radix, 2 epochs, seed 0, global batch 100: one process against mpiexec -n 2
#   bash examples/results/mpi_equivalence/run.sh > examples/results/mpi_equivalence/result.txt
set -euo pipefail
cd "$(dirname "$0")/../../.."
tmp=$(mktemp -d)
common="--topology radix --epochs 2 --seed 0 --no-progress"
python examples/lenet300.py $common --save "$tmp/one.npz" --metrics "$tmp/one.jsonl" > /dev/null
mpiexec -n 2 python examples/lenet300.py $common --save "$tmp/two.npz" --metrics "$tmp/two.jsonl" \
    | grep "data-parallel"
python - "$tmp" <<'PY'
import json, sys
import numpy as np
tmp = sys.argv[1]
a, b = np.load(f"{tmp}/one.npz"), np.load(f"{tmp}/two.npz")
for k in sorted(k for k in a.files if k.startswith("param.")):
    print(f"{k}: max |one - two| / max |one| = {np.abs(a[k] - b[k]).max() / np.abs(a[k]).max():.2g}")
for name in ("one", "two"):
    recs = [json.loads(line) for line in open(f"{tmp}/{name}.jsonl")]
    print(name, "test_acc by epoch:", [r["test_acc"] for r in recs], "train_loss:", [round(r["train_loss"], 5) for r in recs])
PY
rm -r "$tmp"
