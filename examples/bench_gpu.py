"""Time sparsenn's numba.cuda sparse kernels against cuSPARSE (through CuPy) and dense cuBLAS.

    python examples/bench_gpu.py                          # 4096 x 4096, density 0.01 and 0.1, batch 256
    python examples/bench_gpu.py --json examples/results/bench_gpu.json

Needs an NVIDIA GPU and the gpu extra (``pip install -e ".[gpu]"``); CuPy (``cupy-cuda13x``)
is optional: without it only sparsenn's kernels are timed. For each size and density:

* forward ``Y = W X``: sparsenn's SpMM (one warp per sparse row, lanes along the batch), then
  cuSPARSE SpMM (``cupyx.scipy.sparse.csr_matrix @ X``) and dense cuBLAS (``cupy.matmul``)
  on the same matrices; the target (issue 7) is at least half of cuSPARSE's throughput;
* backward ``dX = W^T dY`` (transpose index) and ``dW = dY X^T`` on the pattern (SDDMM).

Times are medians over ``--repeats`` warm runs, each measured with CUDA events around
``--inner`` back-to-back launches (so a kernel of a few microseconds is not all launch).
Throughput counts 2 * nnz * batch floating-point operations for the sparse products and
2 * n_out * n_in * batch for the dense one. All products are float32; X is features-major
(n_in, batch), C-contiguous, as in sparsenn.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from sparsenn import cli
from sparsenn.csr import CSRPattern
from sparsenn.device import cuda_status, describe, is_simulator


def _timer(fn, repeats: int, inner: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timings of ``inner`` calls each."""
    from numba import cuda

    fn()  # compile / warm up
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / inner)  # ms -> s per call
    return float(np.median(times))


def bench_one(n: int, density: float, batch: int, repeats: int, inner: int, rng) -> list:
    from numba import cuda

    from sparsenn import backend_cuda as ops

    mask = rng.random((n, n)) < density
    p = CSRPattern.from_mask(mask)
    w = rng.standard_normal(p.nnz).astype(np.float32)
    x = rng.standard_normal((n, batch)).astype(np.float32)
    dw, dx, dy = cuda.to_device(w), cuda.to_device(x), cuda.to_device(rng.standard_normal((n, batch)).astype(np.float32))
    out, grad = cuda.device_array((n, batch), np.float32), cuda.device_array(p.nnz, np.float32)
    sparse_flop, dense_flop = 2.0 * p.nnz * batch, 2.0 * n * n * batch
    rows = []

    def row(impl, op, seconds, flop):
        rows.append({"impl": impl, "op": op, "n": n, "density": density, "nnz": p.nnz, "batch": batch,
                     "seconds": seconds, "gflops": flop / seconds / 1e9})

    # correctness first: the kernel being timed must compute W x
    ops.spmm(p, dw, dx, out)
    want = p.to_scipy(w) @ x
    err = np.abs(out.copy_to_host() - want).max() / max(1.0, np.abs(want).max())
    if err > 1e-4:
        raise RuntimeError(f"sparsenn spmm disagrees with scipy on the GPU (relative error {err:.2e})")

    row("sparsenn", "forward W x", _timer(lambda: ops.spmm(p, dw, dx, out), repeats, inner), sparse_flop)
    row("sparsenn", "backward W^T dy", _timer(lambda: ops.spmm_t(p, dw, dy, out), repeats, inner), sparse_flop)
    row("sparsenn", "backward dW (sddmm)", _timer(lambda: ops.sddmm(p, dy, dx, grad), repeats, inner), sparse_flop)
    try:
        import cupy
        import cupyx.scipy.sparse as cusp
    except ImportError:
        return rows
    a = cusp.csr_matrix((cupy.asarray(w), cupy.asarray(p.indices), cupy.asarray(p.indptr)), shape=(n, n))
    xc = cupy.asarray(x)
    dense_w = cupy.asarray(p.to_scipy(w).toarray())
    res = a @ xc
    err = float(cupy.abs(res - cupy.asarray(want)).max()) / max(1.0, float(np.abs(want).max()))
    if err > 1e-4:
        raise RuntimeError(f"cuSPARSE result disagrees with scipy (relative error {err:.2e})")
    row("cuSPARSE (CuPy)", "forward W x", _timer(lambda: a @ xc, repeats, inner), sparse_flop)
    row("cuBLAS dense (CuPy)", "forward W x", _timer(lambda: dense_w @ xc, repeats, inner), dense_flop)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[4096], help="square layers n x n")
    ap.add_argument("--densities", type=float, nargs="*", default=[0.01, 0.1])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7, help="timings per kernel (median reported)")
    ap.add_argument("--inner", type=int, default=20, help="launches per timing")
    ap.add_argument("--seed", type=cli.nonneg_int, default=0)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    cli.check_output_paths(args, files=("json",), parser=ap)
    ok, why = cuda_status()
    if not ok:
        print(f"error: no GPU to benchmark on: {why}", file=sys.stderr)
        return 2
    print("device:", describe("cuda"))
    if is_simulator():
        print("(the CUDA simulator measures nothing: this run only checks that the script works)")
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        for d in args.densities:
            new = bench_one(n, d, args.batch, args.repeats, args.inner, rng)
            rows += new
            for r in new:
                print(f"{r['impl']:<20} {r['op']:<20} {n}x{n} d={d:<5} batch {args.batch}: "
                      f"{r['seconds'] * 1e6:9.1f} us  {r['gflops']:8.1f} GFLOP/s", flush=True)
            ours = next(r for r in new if r["impl"] == "sparsenn" and r["op"] == "forward W x")
            ref = next((r for r in new if r["impl"].startswith("cuSPARSE")), None)
            if ref is None:
                print("  (CuPy not installed: no cuSPARSE comparison; pip install cupy-cuda13x)")
            else:
                ratio = ours["gflops"] / ref["gflops"]
                print(f"  sparsenn / cuSPARSE throughput: {ratio:.2f}  target >= 0.5: {'PASS' if ratio >= 0.5 else 'FAIL'}")
                ours["vs_cusparse"] = ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": describe("cuda"), "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
