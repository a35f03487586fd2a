"""Time the topology generators on the big networks (not a test: shared-machine timings are noisy).

Targets: the 1024-neuron, 120-layer Graph Challenge RadiX-Net in < 2 s; a 65536-neuron,
12-layer RadiX-Net in < 30 s without running out of memory. With --huge, instead: layers of
10^8 connections (issue 13's target: each in <= 10 s, peak memory <= 2x its CSR bytes) and the
sparse MLP of the scaling study, 784 -> 4 x 262,144 at fan-in 32.

Peak memory is tracemalloc's peak of the allocations traced during the call (NumPy reports its
buffers to tracemalloc), against the CSR bytes of the result (indptr + indices + data).
Run: python examples/bench_topology.py [--repeats 3] [--skip-big] [--seed 0] [--huge]
"""

import argparse
import resource
import time
import tracemalloc

import numpy as np

from sparsenn import topology

# What to time, and why these sizes.
CHALLENGE = dict(radix_lists=[[2] * 6] * 20, B=[16] * 121)  # Graph Challenge 1024 x 120 layers
BIG = dict(radix_lists=[[2] * 12], B=[16] * 13)  # N' = 4096, 16 * 4096 = 65536 neurons per layer
SEED = 0  # of the random generators (xnet, random_equivalent, random_sparse)
REPEATS = 1  # best of this many runs per line; the big builds take seconds, so 1 by default
# --huge: 10^8 connections per layer. 10^6 x 10^6 at in-degree 100 is one layer of the RadiX-Net
# radix_net([[100, 100, 100]]) (N' = 10^6) and has a fixed fan-in random twin of the same size;
# 3,125,000 x 3,125,000 at fan-in 32 has the scaling study's fan-in and 3x the neurons.
HUGE_N, HUGE_RADIX = 10**6, 100
WIDE_N, WIDE_FAN_IN = 3_125_000, 32
STUDY_WIDTHS, STUDY_FAN_IN = [2**18] * 4, 32  # examples/scale.py's top model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time sparsenn.topology's generators on the Graph Challenge RadiX-Net "
                    "(1024 neurons x 120 layers), a 65536-neuron 12-layer RadiX-Net, X-Nets "
                    "and random equivalents. Prints one line per timing and the peak memory.")
    parser.add_argument("--repeats", type=int, default=REPEATS, metavar="N",
                        help=f"time each line N times and report the best (default {REPEATS})")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of numpy.random.default_rng, >= 0 (default {SEED})")
    parser.add_argument("--skip-big", action="store_true",
                        help="skip the 65536-neuron RadiX-Net and the 65536 x 65536 random "
                             "layer (most of the ~200 MiB peak memory)")
    parser.add_argument("--huge", action="store_true",
                        help="instead, time 10^8-connection layers (RadiX, fixed fan-in random, "
                             "Bernoulli, X-Net) and the scaling study's 4 x 262,144 RadiX MLP, "
                             "with peak memory against CSR bytes (needs ~3 GiB, ~30 s)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.seed < 0:
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    return args


def timed(label, fn, repeats):
    """Run fn() `repeats` times; print the best wall time; return the last result."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<55s} {best:8.3f} s")
    return out


def csr_bytes(masks):
    return sum(m.indptr.nbytes + m.indices.nbytes + m.data.nbytes for m in masks)


def timed_memory(label, fn, repeats):
    """Run fn() (-> a mask or a list of masks) `repeats` times under tracemalloc; print the best
    wall time, the connections, and the peak traced memory against the result's CSR bytes."""
    best = float("inf")
    for _ in range(repeats):
        out = None  # free the previous result before the next run
        tracemalloc.start()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    masks = out if isinstance(out, list) else [out]
    nnz, size = sum(m.nnz for m in masks), csr_bytes(masks)
    print(f"{label:<66s} {nnz:>13,} {best:7.2f} s {peak / 2**20:9.0f} MiB {size / 2**20:9.0f} MiB"
          f" {peak / size:6.2f}")


def huge(args):
    """10^8-connection layers and the study's MLP: seconds and peak memory vs CSR bytes."""
    n, r = HUGE_N, HUGE_RADIX
    print(f"{'build':<66s} {'connections':>13s} {'time':>9s} {'peak':>13s} {'CSR':>13s}"
          f" {'ratio':>6s}")
    timed_memory(f"radix_net([[{r}] * 3]): 3 layers {n:,} x {n:,}, in-degree {r}",
                 lambda: topology.radix_net([[r, r, r]], progress=False), args.repeats)
    rng = np.random.default_rng(args.seed)
    timed_memory(f"random_fan_in {n:,} x {n:,}, fan-in {r}",
                 lambda: topology.random_fan_in(n, n, r, rng), args.repeats)
    timed_memory(f"random_fan_in {WIDE_N:,} x {WIDE_N:,}, fan-in {WIDE_FAN_IN}",
                 lambda: topology.random_fan_in(WIDE_N, WIDE_N, WIDE_FAN_IN, rng), args.repeats)
    timed_memory(f"random_sparse {n:,} x {n:,}, density {r / n:g} (Bernoulli)",
                 lambda: topology.random_sparse(n, n, r / n, rng), args.repeats)
    timed_memory(f"xnet {n:,} x {n:,}, in-degree {r}",
                 lambda: topology.xnet(n, n, r, rng), args.repeats)
    timed_memory(f"radix_mlp 784 -> {len(STUDY_WIDTHS)} x {STUDY_WIDTHS[0]:,}, fan-in {STUDY_FAN_IN}",
                 lambda: topology.radix_mlp(784, STUDY_WIDTHS, STUDY_FAN_IN, progress=False),
                 args.repeats)
    print("(the radix_net line builds three 10^8-connection layers: divide its time by 3)")


def main(argv=None):
    args = parse_args(argv)
    print(f"config: repeats={args.repeats} seed={args.seed} skip_big={args.skip_big} "
          f"huge={args.huge}")
    if args.huge:
        huge(args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory: {peak:.0f} MiB")
        return
    n = args.repeats
    masks = timed("radix_net 1024 neurons x 120 layers (target < 2 s)",
                  lambda: topology.radix_net(**CHALLENGE), n)
    desc = timed("describe (exact path counts) 1024 x 120", lambda: topology.describe(masks), n)
    print(f"  paths per pair: 2^{desc['paths']['min'].bit_length() - 1}, "
          f"all equal: {desc['paths']['all_equal']}")
    if not args.skip_big:
        big = timed("radix_net 65536 neurons x 12 layers (target < 30 s)",
                    lambda: topology.radix_net(**BIG), n)
        print(f"  {len(big)} layers of {big[0].shape}, {sum(m.nnz for m in big):,} connections")
        timed("describe 65536 x 12 (degrees; paths skipped)", lambda: topology.describe(big), n)
        del big
    rng = np.random.default_rng(args.seed)
    timed("xnet 3000 x 784, in-degree 78", lambda: topology.xnet(3000, 784, 78, rng), n)
    wide = topology.lenet300_radix_wide()
    timed("random_equivalent(radix-wide), Bernoulli",
          lambda: topology.random_equivalent(wide, rng), n)
    timed("random_equivalent(radix-wide), fixed fan-in",
          lambda: topology.random_equivalent(wide, rng, fixed_fan_in=True), n)
    if not args.skip_big:
        timed("random_sparse 65536 x 65536, density 2/4096",
              lambda: topology.random_sparse(65536, 65536, 2 / 4096, rng), n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
