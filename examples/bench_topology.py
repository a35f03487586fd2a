"""Time the topology generators on the big networks (not a test: shared-machine timings are noisy).

Targets: the 1024-neuron, 120-layer Graph Challenge RadiX-Net in < 2 s; a 65536-neuron,
12-layer RadiX-Net in < 30 s without running out of memory.
Run: python examples/bench_topology.py [--repeats 3] [--skip-big] [--seed 0]
"""

import argparse
import resource
import time

import numpy as np

from sparsenn import topology

# What to time, and why these sizes.
CHALLENGE = dict(radix_lists=[[2] * 6] * 20, B=[16] * 121)  # Graph Challenge 1024 x 120 layers
BIG = dict(radix_lists=[[2] * 12], B=[16] * 13)  # N' = 4096, 16 * 4096 = 65536 neurons per layer
SEED = 0  # of the random generators (xnet, random_equivalent, random_sparse)
REPEATS = 1  # best of this many runs per line; the big builds take seconds, so 1 by default


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


def main(argv=None):
    args = parse_args(argv)
    print(f"config: repeats={args.repeats} seed={args.seed} skip_big={args.skip_big}")
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
