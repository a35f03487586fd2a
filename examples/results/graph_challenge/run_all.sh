#!/usr/bin/env bash
# The Graph Challenge runs behind the README's table, one after the other on an otherwise idle
# machine (about 50 minutes): bash examples/results/graph_challenge/run_all.sh
set -uo pipefail  # one size failing does not stop the others
cd "$(dirname "$0")/../../.."
out=examples/results/graph_challenge
run() {  # neurons layers images
    python examples/graph_challenge.py --neurons "$1" --layers "$2" --images "$3" --no-progress \
        --json "$out/n$1-l$2.json" 2>&1 | tee "$out/n$1-l$2.log"
}
run 1024 120 60000
run 4096 120 60000
run 1024 480 20000
run 65536 120 1000
run 16384 120 6000
run 4096 480 6000
