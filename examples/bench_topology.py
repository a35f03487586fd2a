"""Time the topology generators on the big networks (not a test: shared-machine timings are noisy).

Targets: the 1024-neuron, 120-layer Graph Challenge RadiX-Net in < 2 s; a 65536-neuron,
12-layer RadiX-Net in < 30 s without running out of memory. Run: python examples/bench_topology.py
"""

import resource
import time

import numpy as np

from sparsenn import topology

# What to time, and why these sizes.
CHALLENGE = dict(radix_lists=[[2] * 6] * 20, B=[16] * 121)  # Graph Challenge 1024 x 120 layers
BIG = dict(radix_lists=[[2] * 12], B=[16] * 13)  # N' = 4096, 16 * 4096 = 65536 neurons per layer
SEED = 0


def timed(label, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    print(f"{label:<55s} {dt:8.3f} s")
    return out


def main():
    masks = timed("radix_net 1024 neurons x 120 layers (target < 2 s)",
                  lambda: topology.radix_net(**CHALLENGE))
    desc = timed("describe (exact path counts) 1024 x 120", lambda: topology.describe(masks))
    print(f"  paths per pair: 2^{desc['paths']['min'].bit_length() - 1}, "
          f"all equal: {desc['paths']['all_equal']}")
    big = timed("radix_net 65536 neurons x 12 layers (target < 30 s)",
                lambda: topology.radix_net(**BIG))
    print(f"  {len(big)} layers of {big[0].shape}, {sum(m.nnz for m in big):,} connections")
    timed("describe 65536 x 12 (degrees; paths skipped)", lambda: topology.describe(big))
    del big
    rng = np.random.default_rng(SEED)
    timed("xnet 3000 x 784, in-degree 78", lambda: topology.xnet(3000, 784, 78, rng))
    wide = topology.lenet300_radix_wide()
    timed("random_equivalent(radix-wide), Bernoulli", lambda: topology.random_equivalent(wide, rng))
    timed("random_equivalent(radix-wide), fixed fan-in",
          lambda: topology.random_equivalent(wide, rng, fixed_fan_in=True))
    timed("random_sparse 65536 x 65536, density 2/4096",
          lambda: topology.random_sparse(65536, 65536, 2 / 4096, rng))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
