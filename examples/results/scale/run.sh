#!/bin/bash
# The commands behind the scaling study's outputs in this folder (2-core machine, idle; each writes its own files).
# From the repository root: bash examples/results/scale/run.sh
cd "$(dirname "$0")/../../.."
OUT=examples/results/scale
MPIEXEC="$(dirname "$(python -c 'import sys; print(sys.executable)')")/mpiexec"
# 1. the study: every width 1 epoch, the two 262,144-wide models timed over 60 steps (extrapolated)
python examples/scale.py --lr 0.1 --epochs 1 --steps 60 --steps-from 20000000 \
    --json $OUT/study.json --plot $OUT/study.png > $OUT/study.log 2>&1
# 2. issue #15: the 65,536-wide model on 1 rank x 2 threads, then 2 ranks x 1 thread, one full
#    epoch each (timed steps would charge the first steps' page faults and warm-up to the epoch);
#    the model with 65,536 hidden neurons (4 x 16,384), the other reading of the issue's
#    "65,536-neuron model"; and where a step of the 65,536-wide model goes, both ways.
#    $1: a suffix for the output files' names
mpi_pairs() {
    python examples/scale.py --widths 65536 --topologies radix --lr 0.1 --epochs 1 --no-torch --no-progress \
        --json $OUT/mpi_1rank$1.json > $OUT/mpi_1rank$1.log 2>&1
    "$MPIEXEC" -n 2 python examples/scale.py --widths 65536 --topologies radix --lr 0.1 --epochs 1 \
        --no-torch --no-progress --json $OUT/mpi_2ranks$1.json > $OUT/mpi_2ranks$1.log 2>&1
    python examples/scale.py --widths 16384 --topologies radix --lr 0.1 --epochs 1 --no-torch --no-progress \
        --json $OUT/mpi16k_1rank$1.json > $OUT/mpi16k_1rank$1.log 2>&1
    "$MPIEXEC" -n 2 python examples/scale.py --widths 16384 --topologies radix --lr 0.1 --epochs 1 \
        --no-torch --no-progress --json $OUT/mpi16k_2ranks$1.json > $OUT/mpi16k_2ranks$1.log 2>&1
    (python examples/profile_step.py --width 65536
     "$MPIEXEC" -n 2 python examples/profile_step.py --width 65536) > $OUT/step_profile$1.log 2>&1
}
mpi_pairs ""
#    and a step of the top model, layer by layer and kernel call by kernel call
python examples/profile_step.py --width 262144 --steps 10 --layers > $OUT/step_layers.log 2>&1
# 3. accuracy: the top RadiX model (4 x 262,144 neurons), three full epochs
python examples/scale.py --widths 262144 --topologies radix --epochs 3 --lr 0.1 --no-torch \
    --json $OUT/top_radix_3epochs.json > $OUT/top_radix_3epochs.log 2>&1
#    and the 4,096-wide model under the same settings, to compare
python examples/scale.py --widths 4096 --topologies radix --epochs 3 --lr 0.1 --no-torch \
    --json $OUT/radix4096_3epochs.json > $OUT/radix4096_3epochs.log 2>&1
# 4. the *_host2 files: part 2 on the host of the 2026-12-01 fourth session (the same 2-core kind, a
#    slower host: a step of the 65,536-wide model took 206-275 ms on 1 rank against 74.5 ms on the
#    host above), run there as: mpi_pairs _host2
# 5. the *_host3 files: part 2 on the host of the 2026-12-02 session (an Intel Xeon, emeraldrapids,
#    1-rank epochs 3.7-3.9x the host above's before the parallel ReLU passes), with each rank keeping its own weights
#    (the default since then), run there as: mpi_pairs _host3
# 6. the *_host4 files: part 2 on the host of the next 2026-12-02 session (an AMD EPYC, Zen 4 /
#    znver4, one core copying 13-21 GB/s), the code unchanged since part 5, run there as: mpi_pairs _host4
# 7. the *_host5 files: part 2 on the host of the third 2026-12-02 session (an AMD EPYC, Zen 5 /
#    znver5, one core copying 31-36 GB/s, slower than the host of part 2), the code's MLP path
#    unchanged since part 5, background jobs paused, run there as: mpi_pairs _host5
# 8. repeats_host5/: more pairs on the same host, right after part 7. The 65,536-wide pairs were
#    run as in mpi_pairs but with --json under /tmp (their logs name those paths), and copied here
#    unedited; the 4 x 16,384 pairs were run into this folder directly:
#    for i in 1 2; do python examples/scale.py --widths 16384 --topologies radix --lr 0.1 --epochs 1 \
#      --no-torch --no-progress --json $OUT/repeats_host5/w16384_pair${i}_1rank.json > ..._1rank.log
#      (the same under "$MPIEXEC" -n 2 into ..._2ranks.*); done
# 9. batch_host6/: on the host of the fourth 2026-12-02 session (an Intel Xeon, rocketlake to Numba,
#    one core copying 14-15 GB/s), after training began to flush denormals to zero, background
#    jobs paused: the 65,536-wide pair at global batch 100 and at 128 (64 images per rank: whole
#    16-image units), then where a step goes at both batches, then a second pair at 128 and the
#    4 x 16,384 pairs at both batches:
batch_pair() {  # $1 width, $2 global batch, $3 file name, $4 folder (batch_host6 if not given)
    local dir=$OUT/${4:-batch_host6}
    mkdir -p $dir
    python examples/scale.py --widths $1 --topologies radix --lr 0.1 --epochs 1 --no-torch --no-progress \
        --batch-size $2 --json $dir/$3_1rank.json > $dir/$3_1rank.log 2>&1
    "$MPIEXEC" -n 2 python examples/scale.py --widths $1 --topologies radix --lr 0.1 --epochs 1 --no-torch \
        --no-progress --batch-size $2 --json $dir/$3_2ranks.json > $dir/$3_2ranks.log 2>&1
}
# run there as (the step profile as in mpi_pairs, with --batch-size 100 and 128, into step_profile.log):
#    batch_pair 65536 100 w65536_b100; batch_pair 65536 128 w65536_b128
#    batch_pair 65536 128 w65536_b128_pair2; batch_pair 16384 100 w16384_b100; batch_pair 16384 128 w16384_b128
# 10. study_host6.*: the study of part 1 on the same host as part 9, denormals flushed, widths from 4,096,
#    without PyTorch (background jobs paused):
#    python examples/scale.py --lr 0.1 --epochs 1 --steps 60 --steps-from 20000000 --widths 4096 16384 65536 262144 \
#        --no-torch --no-progress --json $OUT/study_host6.json --plot $OUT/study_host6.png > $OUT/study_host6.log 2>&1
# 11. batch_host7/: on the host of the 2026-12-03 sessions (an AMD EPYC, Zen 4 / znver4, one core copying
#    21-23 GB/s; loud neighbours), nothing else of ours running: two pairs of each model at global batch
#    100 and 128, alternating, run there as:
#    for i in 1 2; do for w in 16384 65536; do for b in 100 128; do
#        batch_pair $w $b w${w}_b${b}_pair$i batch_host7; done; done; done
#    then the step profile of the 65,536-wide model, 20 steps, at both batches:
#    (for b in 100 128; do python examples/profile_step.py --width 65536 --batch-size $b --steps 20 --layers
#        "$MPIEXEC" -n 2 python examples/profile_step.py --width 65536 --batch-size $b --steps 20 --layers
#     done) > $OUT/batch_host7/step_profile.log 2>&1
# 12. inplace_relu/: the top models (4 x 262,144 hidden neurons, RadiX and random), 40 timed steps each, on the
#    same host as part 11, before and after sparse_mlp's ReLUs began to work in place: *_before at commit 63af466
#    (git worktree add /tmp/old 63af466; that tree's kernels compiled by one untimed run first), *_after at
#    a8b6439 (this repository), the two alternating per topology, run there as:
#    top() {  # $1 source tree, $2 topology, $3 file name
#        (cd $1 && PYTHONPATH=$1 python examples/scale.py --widths 262144 --topologies $2 --no-torch --epochs 1 \
#            --steps 40 --steps-from 0 --no-progress --lr 0.1 --json $OUT/inplace_relu/$3.json > $OUT/inplace_relu/$3.log 2>&1)
#    }
#    for t in radix random; do top /tmp/old $t ${t}_before; top "$PWD" $t ${t}_after; done
#    ($OUT an absolute path there)
