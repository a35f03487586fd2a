#!/usr/bin/env bash
# 1024 x 120, all 60,000 images: 1 rank x 2 threads, then 2 ranks x 1 thread (the images split)
set -uo pipefail
cd "$(dirname "$0")/../../../.."
out=examples/results/graph_challenge/mpi
python examples/graph_challenge.py --peers none --no-progress --json $out/1x2.json 2>&1 | tee $out/1x2.log
mpiexec -n 2 python examples/graph_challenge.py --peers none --no-progress --json $out/2x1.json 2>&1 | tee $out/2x1.log
