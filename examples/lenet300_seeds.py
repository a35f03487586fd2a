"""Train LeNet-300-100 on several topologies and seeds; report mean and spread of test accuracy.

    python examples/lenet300_seeds.py --seeds 0 1 2 --out examples/results/lenet300_seeds
    python examples/lenet300_seeds.py --topologies dense radix --seeds 0 -- --epochs 5

Each run is ``examples/lenet300.py --topology T --seed S`` in its own process (arguments after
``--`` are passed through, except the flags this script sets for each run), with its metrics in
``OUT/T_seedS.jsonl``. The summary table is printed and written to ``OUT/summary.json`` and
``OUT/summary.md``. If a run fails, the study stops there (exit status 1) and the summary holds
the runs that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from sparsenn import cli
from sparsenn.models import TOPOLOGIES

HERE = os.path.dirname(os.path.abspath(__file__))
# set by this script for each run: after "--" they would clash with its own (--save: every run
# would write one checkpoint over the last)
OWN_FLAGS = ("--topology", "--seed", "--metrics", "--save", "--resume", "--mask", "--no-progress")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topologies", nargs="+", choices=TOPOLOGIES,
                   default=["dense", "radix", "random", "xnet", "radix-wide", "random-wide"])
    p.add_argument("--seeds", type=cli.nonneg_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/lenet300_seeds")
    args = p.parse_args(argv)
    for flag in extra:
        if flag.split("=")[0] in OWN_FLAGS:
            p.error(f"{flag.split('=')[0]} after '--': this script sets it for each run")
    args.topologies, args.seeds = list(dict.fromkeys(args.topologies)), list(dict.fromkeys(args.seeds))
    cli.check_output_paths(args, dirs=("out",), parser=p)
    os.makedirs(args.out, exist_ok=True)

    results, failed = {}, None
    for topology in args.topologies:
        if failed:
            break
        for seed in args.seeds:
            metrics = os.path.join(args.out, f"{topology}_seed{seed}.jsonl")
            if os.path.exists(metrics):
                os.remove(metrics)  # a fresh run, not appended to an old one
            cmd = [sys.executable, os.path.join(HERE, "lenet300.py"), "--topology", topology, "--seed", str(seed),
                   "--metrics", metrics, "--no-progress", *extra]
            print("$", " ".join(cmd[1:]), flush=True)
            status = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode  # its errors reach stderr
            if status != 0:
                failed = f"the run of {topology} seed {seed} failed (exit status {status}; its error is above)"
                break
            lines = [json.loads(l) for l in open(metrics)]
            epochs = [l for l in lines if l["kind"] == "epoch"]
            r = results.setdefault(topology, {"acc": [], "sec": [], "nnz": epochs[-1]["nnz"], "epochs": len(epochs)})
            r["acc"].append(epochs[-1]["test_acc"])
            r["sec"].append(float(np.median([l["epoch_seconds"] for l in epochs])))
            print(f"  {topology} seed {seed}: test accuracy {100 * epochs[-1]['test_acc']:.2f}%, "
                  f"median epoch {r['sec'][-1]:.2f} s", flush=True)

    rows = ["| topology | connections | epochs | test accuracy, mean ± std (%) | min–max (%) | median s/epoch |",
            "|---|---:|---:|---:|---:|---:|"]
    for topology, r in results.items():
        acc = 100 * np.array(r["acc"])
        rows.append(f"| {topology} | {r['nnz']:,} | {r['epochs']} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} "
                    f"| {acc.min():.2f}–{acc.max():.2f} | {np.median(r['sec']):.2f} |")
    table = "\n".join(rows)
    print(f"\nLeNet-300-100 on MNIST, seeds {args.seeds}, extra args {extra or 'none'}\n{table}")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"seeds": args.seeds, "extra_args": extra, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    if failed:
        print(f"error: {failed}; the summary holds the runs before it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
