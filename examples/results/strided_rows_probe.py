"""A probe, not part of sparsenn: at batch 100 a features-major row of activations is 400 bytes,
so three rows in four start inside a cache line and every 16-float load of them touches two
lines (docs/kernels.md, "misaligned rows"). Would carrying each activation in rows of 112
floats (448 bytes, each row starting on a 64-byte line), of which the first 100 are used, speed
up a LeNet-300-100 RadiX training step? Unlike padding the batch to 112 columns (measured
before, same section), the kernels still compute 100 columns; the arrays are strided views.

The vector kernels (``kernels._SPMM_KERNELS``, ``kernels._SDDMM_KERNELS``) are called directly,
since ``kernels.spmm``/``sddmm`` send arrays that are not C-contiguous to the generic loops;
Numba compiles them for the strided layout. Each product of the model's two sparse layers
runs on the same pattern, weights and values in both layouts, alternating, 2 threads.
Output: strided_rows_probe.log beside it.

    python examples/results/strided_rows_probe.py > examples/results/strided_rows_probe.log
"""
import time

import numba
import numpy as np

import sparsenn  # noqa: F401  (thread set-up)
from sparsenn import backend_cpu, kernels
from sparsenn.models import lenet300
from sparsenn.runtime import describe_machine, machine_report

BATCH, STRIDE, ROUNDS, CALLS = 100, 112, 7, 400


def activation(rows, rng, strided):
    """(rows, BATCH) float32 on a 64-byte boundary: C-contiguous, or the first BATCH columns
    of a (rows, STRIDE) array."""
    a = backend_cpu.empty((rows, STRIDE if strided else BATCH), np.float32)[:, :BATCH]
    a[...] = rng.standard_normal((rows, BATCH), dtype=np.float32)
    return a


def median_us(fn):
    for _ in range(50):
        fn()
    t = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(t))


def products(layer, strided):
    p, w = layer.pattern, layer.weight.value
    rng = np.random.default_rng(1)  # the same values in both layouts
    x, dy = activation(p.shape[1], rng, strided), activation(p.shape[0], rng, strided)
    y, dx = activation(p.shape[0], rng, strided), activation(p.shape[1], rng, strided)
    dw = np.empty(p.nnz, np.float32)
    threads = numba.get_num_threads()
    (b, tb), (o, to) = p.splits(threads, tiles=True), p.orders(tiles=True)
    spmm, sddmm = kernels._SPMM_KERNELS[BATCH // 16], kernels._SDDMM_KERNELS[BATCH // 16]
    return {
        "forward": (lambda: spmm(p.indptr, p.indices, w, x, y, b, None, None, o, None), y),
        "W^T dy": (lambda: spmm(p.t_indptr, p.t_rows, w, dy, dx, tb, p.t_perm, None, to, None), dx),
        "weight gradient": (lambda: sddmm(p.indptr, p.indices, dy, x, dw, b, o, None), dw),
    }


def main():
    print(describe_machine(machine_report()))
    model = lenet300("radix", np.random.default_rng(0))
    layers = model.weight_layers()[:2]  # fc1 (784 -> 300) and fc2 (300 -> 100); fc3 is dense
    times = {}
    for name, layer in zip(("fc1", "fc2"), layers):
        a, s = products(layer, False), products(layer, True)
        for op in a:
            a[op][0](), s[op][0]()
            assert np.array_equal(a[op][1], s[op][1]), (name, op)  # same sums, same order
            times[name, op] = [(median_us(a[op][0]), median_us(s[op][0])) for _ in range(ROUNDS)]
    print(f"batch {BATCH}, rows of {BATCH} floats (C-contiguous) against rows of {STRIDE} (aligned, strided view); "
          f"median of {CALLS} calls, {ROUNDS} rounds alternating; us per call")
    print(f"{'layer':6s} {'product':16s} {'contiguous':>11s} {'strided':>9s} {'gain':>6s}")
    step = [0.0, 0.0]
    for (name, op), t in times.items():
        c, s = np.median([u for u, _ in t]), np.median([v for _, v in t])
        print(f"{name:6s} {op:16s} {c:11.1f} {s:9.1f} {c / s:5.2f}x")
        if not (name == "fc1" and op == "W^T dy"):  # the first layer's dx is never computed in training
            step[0] += c
            step[1] += s
    print(f"the products of one training step (fc1 without W^T dy): {step[0]:.1f} -> {step[1]:.1f} us, "
          f"{step[0] - step[1]:.1f} us less")
    # what the rest of a step would pay as it is: the ReLU kernel runs over reshape(-1), which on
    # a strided view is a copy, so a strided activation would need another route (here NumPy's)
    rng = np.random.default_rng(2)
    h, hs = activation(300, rng, False), activation(300, rng, True)
    out, out_s = activation(300, rng, False), activation(300, rng, True)
    relu = [(median_us(lambda: kernels.relu(h.reshape(-1), out.reshape(-1))),
             median_us(lambda: np.maximum(hs, 0, out=out_s))) for _ in range(ROUNDS)]
    print(f"ReLU of fc1's output (300 x {BATCH}), one thread: kernel on contiguous rows "
          f"{np.median([c for c, _ in relu]):.1f} us, np.maximum on the strided view {np.median([s for _, s in relu]):.1f} us")


if __name__ == "__main__":
    main()
