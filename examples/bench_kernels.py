"""Time the sparse-layer kernels against scipy.sparse, dense NumPy and (if installed) PyTorch.

A benchmark, not a test: timings on a shared machine are noisy, and the exit code is 0 whatever
the targets say unless ``--check`` is given. Run: python examples/bench_kernels.py [--json PATH]
[--plot PATH]; ``--replot JSON --plot PATH`` draws an earlier run's records without timing anything.

For a weight matrix ``W`` (rows x cols) = (n_out, n_in) and features-major activations
``x: (n_in, batch)``, ``dy: (n_out, batch)``, each implementation does the three products of a
sparse layer's training step, exactly as ``sparsenn.layers.SparseLinear`` calls them:

  forward         y  = W x       sparsenn: spmm on W;  scipy: W_csr @ x;  dense NumPy: W @ x;
                                 torch: W_csr @ x
  backward_input  dx = W^T dy    sparsenn: spmm on the transpose index, values through t_perm
                                 (random layers beyond L3: copied into transpose order first);
                                 scipy: W.T.tocsr() @ dy;  dense NumPy: W.T @ dy;
                                 torch: CSR of W^T @ dy  (every transpose built once, like ours)
  weight_grad     dW = dy x^T    sparsenn: sddmm;  scipy: not timed (no SDDMM, see _scipy_ops);
                  on W's pattern dense NumPy: dy @ x.T;  torch: torch.sparse.sampled_addmm

Every implementation is charged the same *useful* work, 2 * nnz * batch flops: dense NumPy
does rows * cols * batch multiply-adds, but only the nnz of them that touch a stored weight
count. So GFLOP/s compares like with like, and the dense figure falls as the density falls.

Method: all in one process; for each (case, op, implementation) one warm-up call, whose result
is checked against a float64 NumPy product (a wrong kernel cannot post a fast time), then calls
until MIN_TIME has passed or MAX_CALLS were made, but at least MIN_CALLS; the median is reported.
PyTorch is imported and timed last: its OpenMP pool spins after each call and would steal
cores from the others.

The yardstick: dense SGEMM, (4096x4096) @ (4096x128) float32 through NumPy's BLAS, timed at the
start of the same run; every sparsenn rate is also shown as a fraction of it ("of SGEMM").
``plain`` is sparsenn's textbook loops (``spmm_plain``, ``sddmm_plain``): what the fast kernels add.

Targets (checked from this run's ratios, printed as PASS/FAIL):
  * every product at density <= 0.1: sparsenn's useful GFLOP/s >= 0.5x the dense SGEMM rate
    (>= 0.3x for the small cases under 20,000 weights, where a call's fixed cost dominates);
  * forward: sparsenn >= 2x faster than scipy.sparse on every case with density <= 0.1;
  * weight_grad: sparsenn faster than dense ``dy @ x.T`` at density <= 0.1, >= 10x on 4096x4096 d=0.01;
  * forward on 4096x4096 d=0.01: sparsenn >= 10x faster than dense ``W @ x``.
"""

from __future__ import annotations

import sparsenn  # first: it sets OpenBLAS's thread timeout before NumPy/SciPy start their BLAS pools

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numba
import numpy as np
import scipy

from sparsenn import backend_cpu, cli
from sparsenn.csr import CSRPattern, balanced_row_splits
from sparsenn.kernels import permute, sddmm, sddmm_plain, spmm, spmm_plain
from sparsenn.runtime import describe_machine, machine_report, thread_info
from sparsenn.simd import hsum, vadd, vload, vzero

# ---------------------------------------------------------------------------------------------
# Defaults, and why
# ---------------------------------------------------------------------------------------------
BATCH = 128  # a typical training minibatch; every case uses it
SEED = 0  # each case's pattern, weights, x and dy come from default_rng([SEED, rows, cols, nnz])
MIN_TIME = 0.2  # seconds of calls per (case, op, impl): enough for a stable median ...
MAX_CALLS = 200  # ... but fast kernels stop here ...
MIN_CALLS = 10  # ... and slow ones (dense 4096x4096, scipy) still get this many
QUICK = dict(min_time=0.02, max_calls=20, min_calls=3)  # --quick: for tests, seconds not minutes
OPS = ("forward", "backward_input", "weight_grad")
IMPLS = ("sparsenn", "plain", "scipy", "dense_numpy", "torch")  # plain: the textbook loops
SGEMM = (4096, 4096)  # the dense yardstick: (4096x4096) @ (4096xBATCH) float32 through NumPy's BLAS
SMALL_NNZ = 20_000  # below this a call's fixed cost dominates: a lower target (#12)
# --scale: layers of the scaling study (examples/scale.py): x and y outgrow L2 (1 MB per core)
# at 4,096 neurons' neighbours and L3 (32 MB) at 262,144 (x: 105 MB at batch 100)
SCALE_SIZES = (4096, 65536, 262144)
SCALE_FAN_IN = 32
SCALE_BATCH = 100
SCALE_TARGET = 0.6  # issue #13: GFLOP/s at 262,144 neurons >= 0.6x the same kernel's rate at 4,096
# --bandwidth: KB of float32 each thread reads over and over: in L1, in L2, in L3, from memory
# (the L1 and L2 of every host so far: 48 KB and 1-2 MB per core; L3 32 MB and more, shared)
BANDWIDTH_KB = (32, 512, 8192, 131072)


@dataclass(frozen=True)
class Case:
    """A weight matrix (rows, cols) = (n_out, n_in): random nnz = density * rows * cols,
    or exactly ``per_row`` nonzeros in every row (random columns) when that is given."""

    rows: int
    cols: int
    density: float
    per_row: int | None = None

    @property
    def nnz(self) -> int:
        return self.rows * self.per_row if self.per_row else round(self.density * self.rows * self.cols)

    @property
    def shape(self) -> str:
        return f"{self.rows}x{self.cols}"

    @property
    def label(self) -> str:
        return f"{self.shape} " + (f"{self.per_row}/row" if self.per_row else f"d={self.density:g}")


CASES = [
    Case(300, 784, 1.0),  # LeNet-300-100's first layer, dense ...
    Case(300, 784, 0.1),  # ... and pruned to 10% and 1%
    Case(300, 784, 0.01),
    Case(100, 300, 0.1),  # LeNet-300-100's second layer at 10%
    Case(1024, 1024, 32 / 1024, per_row=32),  # fixed fan-in, like a RadiX-Net / Graph Challenge layer
    Case(4096, 4096, 0.01),  # a big layer: where sparsity has to pay off
    Case(4096, 4096, 0.1),  # skipped by --quick (the slowest case by far for scipy and dense)
]
SWEEP = Case(300, 784, 1.0)  # forward only: at what density does sparsenn stop beating dense?
SWEEP_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------------------------
# Operands: a random canonical CSR pattern with its transpose index, weights, x and dy
# ---------------------------------------------------------------------------------------------


def make_operands(case: Case):
    """Return ``(pattern, data[nnz], x[cols, BATCH], dy[rows, BATCH])``, all float32, seeded."""
    rng = np.random.default_rng([SEED, case.rows, case.cols, case.nnz])
    if case.per_row:
        # a random permutation of the columns per row, keep the first per_row: exact fan-in
        indices = np.sort(np.argsort(rng.random((case.rows, case.cols)), axis=1)[:, : case.per_row], axis=1)
        indptr = np.arange(case.rows + 1) * case.per_row
    else:
        # nnz distinct positions of the flattened matrix; sorted, they are row-major CSR order
        flat = np.sort(rng.choice(case.rows * case.cols, size=case.nnz, replace=False))
        indices = flat % case.cols
        indptr = np.concatenate(([0], np.cumsum(np.bincount(flat // case.cols, minlength=case.rows))))
    pattern = CSRPattern.from_arrays(indptr, indices.ravel(), (case.rows, case.cols))
    data = rng.standard_normal(pattern.nnz, dtype=np.float32)
    # x and dy as a layer holds them: on 64-byte boundaries (backend_cpu.empty); every
    # implementation gets these same arrays
    x, dy = backend_cpu.empty((case.cols, BATCH), np.float32), backend_cpu.empty((case.rows, BATCH), np.float32)
    x[...] = rng.standard_normal((case.cols, BATCH), dtype=np.float32)
    dy[...] = rng.standard_normal((case.rows, BATCH), dtype=np.float32)
    return pattern, data, x, dy


# ---------------------------------------------------------------------------------------------
# The implementations: each returns {op: zero-argument callable returning that op's result}
# ---------------------------------------------------------------------------------------------


def _sparsenn_ops(p: CSRPattern, data, x, dy, plain=False):
    """As the layer runs them: the fast kernels with the pattern's thread splits, row orders and
    column blocks (``CSRPattern.splits``, ``.orders``, ``.segments``, chosen as
    ``sparsenn.backend_cpu`` chooses them, once, so that the time is the kernel's); the textbook
    loops in the natural order."""
    n_threads = numba.get_num_threads()
    if plain:
        _spmm, _sddmm = spmm_plain, sddmm_plain
        bounds = balanced_row_splits(p.indptr, n_threads)  # rows of W, balanced by nonzeros
        t_bounds = balanced_row_splits(p.t_indptr, n_threads)  # rows of W^T
        order = t_order = None
    else:
        _spmm, _sddmm = spmm, sddmm
        seg, t_seg = backend_cpu.column_segments_for(p, x), backend_cpu.column_segments_for(p, dy, transpose=True)
        bounds, order = p.splits(n_threads, seg is None)[0], p.orders(seg is None)[0]
        t_bounds, t_order = p.splits(n_threads, t_seg is None)[1], p.orders(t_seg is None)[1]
    y = backend_cpu.empty((p.shape[0], x.shape[1]), np.float32)  # outputs preallocated, as in the layer
    dx = backend_cpu.empty(x.shape, x.dtype)
    dw = np.empty_like(data)
    # as backend_cpu.spmm_t: a random layer in column blocks copies its values into transpose order first
    copy_t = not plain and t_seg is not None and backend_cpu.scattered_beyond_l3(p, dy, transpose=True)
    data_t = np.empty_like(data) if copy_t else None

    def forward():
        if plain:
            _spmm(p.indptr, p.indices, data, x, y, bounds)
        else:
            _spmm(p.indptr, p.indices, data, x, y, bounds, None, None, order, seg)
        return y

    def backward_input():
        # W's values are read in column order through t_perm, as the layer does
        if plain:
            _spmm(p.t_indptr, p.t_rows, data, dy, dx, t_bounds, p.t_perm)
        elif copy_t:  # the copy is timed with the product: the layer pays it every step
            permute(data, p.t_perm, data_t)
            _spmm(p.t_indptr, p.t_rows, data_t, dy, dx, t_bounds, None, None, t_order, t_seg)
        else:
            _spmm(p.t_indptr, p.t_rows, data, dy, dx, t_bounds, p.t_perm, None, t_order, t_seg)
        return dx

    def weight_grad():
        if plain:
            _sddmm(p.indptr, p.indices, dy, x, dw, bounds)
        else:
            _sddmm(p.indptr, p.indices, dy, x, dw, bounds, order, seg)
        return dw

    return dict(forward=forward, backward_input=backward_input, weight_grad=weight_grad)


def _scipy_ops(p: CSRPattern, data, x, dy):
    w = p.to_scipy(data)
    w_t = w.T.tocsr()  # built once, as sparsenn builds its transpose index once per pattern
    # weight_grad: scipy.sparse has no sampled product (SDDMM). Its only routes are the dense
    # ``dy @ x.T`` followed by sampling at the pattern (e.g. ``mask.multiply(G)``), which is the
    # dense_numpy row plus extra work, or gathering ``dy[rows]`` and ``x[indices]`` into two
    # (nnz, batch) arrays and an einsum, which is NumPy rather than SciPy (sparsenn's own
    # reference twin ``sddmm_ref``) and needs 1.7 GB at 4096x4096 d=0.1. So scipy is not timed
    # for weight_grad, and the table shows "-" there.
    return dict(forward=lambda: w @ x, backward_input=lambda: w_t @ dy)


def _dense_numpy_ops(p: CSRPattern, data, x, dy):
    w = p.to_scipy(data).toarray()  # (rows, cols) float32, zeros where there is no weight
    y = np.empty((p.shape[0], BATCH), np.float32)
    dx = np.empty_like(x)
    g = np.empty_like(w)
    # out= buffers, as sparsenn.layers.Linear does: no allocation is timed for either side
    return dict(
        forward=lambda: np.matmul(w, x, out=y),
        backward_input=lambda: np.matmul(w.T, dy, out=dx),
        weight_grad=lambda: np.matmul(dy, x.T, out=g),
    )


def _torch_csr(torch, indptr, indices, values, shape):
    # int32 indices, like ours: measured faster than int64 for both products on CPU
    return torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices),
                                   torch.from_numpy(values), size=shape, check_invariants=False)


def _torch_sampled_addmm_works(torch) -> bool:
    """Does ``torch.sparse.sampled_addmm`` run on CPU CSR tensors and give dy x^T on the pattern?"""
    p, _, x, dy = make_operands(Case(5, 7, 0.4))
    w = _torch_csr(torch, p.indptr, p.indices, np.ones(p.nnz, np.float32), p.shape)
    try:
        got = torch.sparse.sampled_addmm(w, torch.from_numpy(dy), torch.from_numpy(x).T, beta=0.0)
        got = got.values().numpy()
    except (RuntimeError, NotImplementedError):
        return False
    return np.allclose(got, (dy @ x.T)[p.row_of_entry(), p.indices], rtol=1e-4, atol=1e-4)


def _torch_ops(torch, sampled_addmm: bool, p: CSRPattern, data, x, dy):
    w = _torch_csr(torch, p.indptr, p.indices, data, p.shape)
    w_t = _torch_csr(torch, p.t_indptr, p.t_rows, data[p.t_perm], p.shape[::-1])  # built once
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)  # share memory with the NumPy arrays
    if sampled_addmm:
        weight_grad = lambda: torch.sparse.sampled_addmm(w, dyt, xt.T, beta=0.0)  # noqa: E731
    else:  # what torch users do with masks: the dense product (masked afterwards, not timed)
        weight_grad = lambda: dyt @ xt.T  # noqa: E731
    return dict(forward=lambda: w @ xt, backward_input=lambda: w_t @ dyt, weight_grad=weight_grad)


# ---------------------------------------------------------------------------------------------
# Timing, with a one-time check of each result against a float64 reference
# ---------------------------------------------------------------------------------------------


def as_numpy(result, op, p: CSRPattern):
    """Bring any implementation's result to NumPy; weight gradients to their nnz pattern values."""
    if hasattr(result, "is_sparse_csr"):  # a torch tensor: sampled_addmm gives CSR on the pattern
        result = (result.values() if result.is_sparse_csr else result).numpy()
    if op == "weight_grad" and result.ndim == 2:  # a dense (rows, cols) gradient: sample it
        result = result[p.row_of_entry(), p.indices]
    return result


def median_time(fn, check, min_time, max_calls, min_calls) -> float:
    """Median seconds per call of ``fn()`` after one warm-up call, whose result ``check`` gets."""
    check(fn())
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (len(times) < max_calls and time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_impl(impl, fns, case, p, refs, timing, results, ops=OPS):
    """Time ``fns[op]()`` for each of ``ops`` that ``impl`` has; store the median seconds in
    ``results[(case, op, impl)]``. ``refs[op]`` is the float64 result the warm-up must match."""
    for op in ops:
        if op not in fns:
            continue

        def check(out, op=op):
            got, ref = as_numpy(out, op, p), refs[op]
            scale = max(1.0, float(np.abs(ref).max()))
            if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-3, atol=1e-3 * scale):
                err = np.abs(got - ref).max() if got.shape == ref.shape else f"shape {got.shape}"
                raise RuntimeError(f"{impl} {op} on {case.label} disagrees with float64 NumPy: {err}")

        results[(case, op, impl)] = median_time(fns[op], check, **timing)


def reference(p: CSRPattern, data, x, dy):
    """The three results from dense float64 products, weight gradient sampled at the pattern."""
    w = p.to_scipy(data.astype(np.float64)).toarray()
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    dw = (dy64 @ x64.T)[p.row_of_entry(), p.indices]
    return dict(forward=w @ x64, backward_input=w.T @ dy64, weight_grad=dw)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def gflops(case: Case, seconds: float) -> float:
    return 2 * case.nnz * BATCH / seconds / 1e9


def sgemm_rate(timing) -> float:
    """GFLOP/s of dense SGEMM in this process: (4096x4096) @ (4096xBATCH) float32 through NumPy,
    the BLAS rate the sparse products are held against (same threads, same machine, same run)."""
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal(SGEMM, dtype=np.float32)
    b = rng.standard_normal((SGEMM[1], BATCH), dtype=np.float32)
    out = np.empty((SGEMM[0], BATCH), np.float32)
    t = median_time(lambda: np.matmul(a, b, out=out), lambda _: None, **timing)
    return 2 * SGEMM[0] * SGEMM[1] * BATCH / t / 1e9


def print_table(cases, impls, results, sgemm):
    print(f"\nMedian ms per call and useful GFLOP/s (2*nnz*batch / time, for every implementation); "
          f"batch {BATCH}.")
    print("x scipy / x dense: how many times faster sparsenn is (their time / sparsenn's time);")
    print(f"of SGEMM: sparsenn's GFLOP/s as a fraction of dense SGEMM's {sgemm:.0f} GFLOP/s in this run.")
    head1 = f"{'case':<18} {'nnz':>10}  {'op':<15}" + "".join(f"{i:>17}" for i in impls)
    head1 += f"{'x scipy':>9}{'x dense':>9}{'of SGEMM':>9}"
    head2 = f"{'':<18} {'':>10}  {'':<15}" + "".join(f"{'ms':>9}{'GF/s':>8}" for _ in impls)
    print(head1)
    print(head2)
    for case in cases:
        for op in OPS:
            line = f"{case.label:<18} {case.nnz:>10,}  {op:<15}"
            for impl in impls:
                t = results.get((case, op, impl))
                line += f"{'-':>9}{'-':>8}" if t is None else f"{t * 1e3:9.3f}{gflops(case, t):8.2f}"
            mine = results.get((case, op, "sparsenn"))
            for other in ("scipy", "dense_numpy"):
                t = results.get((case, op, other))
                line += f"{'-':>9}" if t is None or mine is None else f"{t / mine:8.2f}x"
            line += f"{'-':>9}" if mine is None else f"{gflops(case, mine) / sgemm:9.2f}"
            print(line)


def print_sweep(sweep_cases, results):
    print(f"\nForward {SWEEP.shape}, batch {BATCH}: sparsenn vs dense NumPy as the density grows")
    print(f"{'density':>8} {'nnz':>9} {'sparsenn ms':>12} {'dense ms':>10} {'speedup':>9}")
    faster = []
    for case in sweep_cases:
        mine, dense = results[(case, "forward", "sparsenn")], results[(case, "forward", "dense_numpy")]
        print(f"{case.density:>8g} {case.nnz:>9,} {mine * 1e3:>12.3f} {dense * 1e3:>10.3f}"
              f" {dense / mine:>8.2f}x")
        if mine < dense:
            faster.append(case.density)
    if not faster:
        print("sparsenn forward is slower than dense NumPy at every swept density.")
    else:
        print(f"Highest swept density at which sparsenn forward is still faster than dense NumPy: "
              f"{max(faster):g}" + (" (the whole sweep)" if len(faster) == len(sweep_cases) else ""))



# ---------------------------------------------------------------------------------------------
# The figure (--plot), from a run's records or a saved --json (--replot)
# ---------------------------------------------------------------------------------------------

PLOT_MARKERS = {"plain": ("_", "textbook loop"), "scipy": ("o", "scipy.sparse"), "torch": ("x", "PyTorch CSR")}


def read_records(path: str) -> list[dict]:
    """The records a ``--json`` run wrote, checked enough to draw: a list of dicts with one
    ``sgemm`` record and kernel records carrying ``op rows cols density impl median_s gflops``.
    Raises ValueError naming what is wrong."""
    try:
        with open(path) as f:
            records = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg}, line {e.lineno}): give the file a --json run wrote") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of records, as --json writes")
    if records and all(r.get("kind") in ("scale", "machine") for r in records):  # a --scale run's
        need = {"topology", "neurons", "op", "gflops", "vs_smallest", "batch"}
        for r in records:
            if r["kind"] == "scale" and not need <= r.keys():
                raise ValueError(f"{path}: a --scale record lacks {', '.join(sorted(need - r.keys()))}: {r}")
        return records
    if sum(r.get("op") == "sgemm" for r in records) != 1:
        raise ValueError(f"{path}: expected one dense SGEMM record (op 'sgemm'), or --scale records; "
                         "is it a bench_kernels.py --json file?")
    need = {"op", "rows", "cols", "density", "impl", "median_s", "gflops"}
    for r in records:
        if r["op"] != "sgemm" and not need <= r.keys():
            raise ValueError(f"{path}: a record lacks {', '.join(sorted(need - r.keys()))}: {r}")
    return records


def _label(rows, cols, density) -> str:
    """The case's label as the tables print it (fixed fan-in cases by their entries per row)."""
    case = next((c for c in CASES if (c.rows, c.cols, c.density) == (rows, cols, density)), None)
    return (case or Case(rows, cols, density)).label


def _save(fig, path: str, title: str) -> None:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_results(records: list[dict], path: str, title: str = "") -> dict:
    """Draw a run's records to ``path`` (any format matplotlib writes, by its extension).

    Left: useful GFLOP/s of every product of every case timed with all three products (bars:
    sparsenn; markers: the textbook loops, scipy.sparse, PyTorch), against the dense SGEMM rate
    of the same run and the two target levels of issue #12 (0.5x and, under 20,000 weights,
    0.3x of it). Right: the forward density sweep, ms per call against density, sparsenn and
    dense NumPy. Returns what it drew: ``{"bars": {(label, op): GFLOP/s}, "sweep": {impl:
    [(density, ms), ...]}, "sgemm": GFLOP/s}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sgemm = next(r["gflops"] for r in records if r["op"] == "sgemm")
    kern = [r for r in records if r["op"] != "sgemm"]
    full = sorted({(r["rows"], r["cols"], r["density"]) for r in kern if r["op"] == "backward_input"},
                  key=lambda k: (k[0] * k[1], k[2]))
    rate = {(r["rows"], r["cols"], r["density"], r["op"], r["impl"]): r["gflops"] for r in kern}
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [2.2, 1]})
    drawn = {"bars": {}, "sweep": {}, "sgemm": sgemm}
    width = 0.27
    for i, key in enumerate(full):
        for j, op in enumerate(OPS):
            x = i + (j - 1) * width
            g = rate.get((*key, op, "sparsenn"))
            if g is not None:
                ax.bar(x, g, width * 0.95, color=f"C{j}", label=f"sparsenn {op}")
                drawn["bars"][(_label(*key), op)] = g
            for impl, (marker, name) in PLOT_MARKERS.items():
                g = rate.get((*key, op, impl))
                if g is not None:
                    ax.plot(x, g, marker, color="k", ms=9 if marker == "_" else 5, mew=1.5, label=name)
    seen = {}  # each name once in the legend
    for h, lab in zip(*ax.get_legend_handles_labels()):
        seen.setdefault(lab, h)
    for level, style, what in ((1.0, "-", "dense SGEMM"), (0.5, "--", "0.5x SGEMM: target"),
                               (0.3, ":", "0.3x SGEMM: target under 20,000 weights")):
        seen[f"{what} ({level * sgemm:.0f} GFLOP/s)"] = ax.axhline(level * sgemm, ls=style, color="0.4", lw=1)
    top = max([sgemm] + [r["gflops"] for r in kern if (r["rows"], r["cols"], r["density"]) in full])
    ax.set_ylim(0, 1.3 * top)  # room for the legend above the bars
    ax.set_xticks(range(len(full)))
    ax.set_xticklabels([_label(*k).replace(" ", "\n") for k in full])
    ax.set_ylabel(f"useful GFLOP/s (2 nnz batch / time), batch {BATCH}")
    ax.set_title("the three products of a sparse layer against dense SGEMM")
    ax.legend(seen.values(), seen.keys(), fontsize=7.5, ncol=2, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    sweep = {}
    for r in kern:
        if r["op"] == "forward" and (r["rows"], r["cols"]) == (SWEEP.rows, SWEEP.cols) \
                and r["impl"] in ("sparsenn", "dense_numpy"):
            sweep.setdefault(r["impl"], []).append((r["density"], r["median_s"] * 1e3))
    for impl, style, name in (("sparsenn", "o-", "sparsenn (CSR)"), ("dense_numpy", "s--", "dense NumPy W @ x")):
        pts = sorted(sweep.get(impl, []))
        if pts:
            ax_s.plot(*zip(*pts), style, label=name)
            drawn["sweep"][impl] = pts
    ax_s.set_xscale("log")
    ax_s.set_yscale("log")
    ax_s.set_xlabel("density (stored weights / 300 x 784)")
    ax_s.set_ylabel("ms per call")
    ax_s.set_title(f"forward {SWEEP.shape}: where sparse stops paying")
    ax_s.grid(True, which="both", alpha=0.3)
    ax_s.legend(fontsize=8)
    _save(fig, path, title)
    return drawn


def check_targets(cases, results, sgemm) -> list[tuple[str, str, str, float | None]]:
    """Each target as (PASS/FAIL/SKIP, what, case label, ratio): ratio = other's time / sparsenn's,
    or, for the SGEMM targets, sparsenn's GFLOP/s / dense SGEMM's in this run."""

    def ratio(case, op, other):
        a, b = results.get((case, op, other)), results.get((case, op, "sparsenn"))
        return None if a is None or b is None else a / b

    sparse_cases = [c for c in cases if c.density <= 0.1 + 1e-12]
    big = Case(4096, 4096, 0.01)
    wanted = [("forward: sparsenn >= 2x faster than scipy.sparse", c, "forward", "scipy", 2.0)
              for c in sparse_cases]
    wanted += [("weight_grad: sparsenn faster than dense dy @ x.T", c, "weight_grad", "dense_numpy", 1.0)
               for c in sparse_cases]
    wanted += [
        ("weight_grad: sparsenn >= 10x faster than dense dy @ x.T", big, "weight_grad", "dense_numpy", 10.0),
        ("forward: sparsenn >= 10x faster than dense W @ x", big, "forward", "dense_numpy", 10.0),
    ]
    # issue #12: useful GFLOP/s against the dense SGEMM rate of this run, every op at density <= 0.1
    for case in sparse_cases:
        need = 0.5 if case.nnz >= SMALL_NNZ else 0.3
        wanted += [(f"{op}: sparsenn >= {need}x the dense SGEMM rate", case, op, "sgemm", need) for op in OPS]
    out = []
    for what, case, op, other, need in wanted:
        if other == "sgemm":
            t = results.get((case, op, "sparsenn"))
            r = None if t is None else gflops(case, t) / sgemm
        else:
            r = ratio(case, op, other)  # None when the case was not run (--cases, --quick)
        verdict = "SKIP" if r is None else ("PASS" if r >= need else "FAIL")
        out.append((verdict, what, case.label, r))
    return out


# ---------------------------------------------------------------------------------------------
# --asm: what the hot loops compile to
# ---------------------------------------------------------------------------------------------


def asm_report(blocks_only: bool = False) -> None:
    """Compile fresh copies of the kernels (cached code cannot be inspected) for float32 and
    count, in the machine code, fused multiply-adds on 512-bit (zmm), 256-bit (ymm) and scalar or
    128-bit (xmm) registers, and gathers (a sign that LLVM vectorised across nonzeros instead).
    blocks_only: the three register-block kernels alone (the ones LLVM vectorises)."""
    import re

    from numba import njit

    from sparsenn import kernels as K

    p, data, x, dy = make_operands(Case(64, 96, 0.2))
    bounds = balanced_row_splits(p.indptr, numba.get_num_threads())
    y = np.empty((64, BATCH), np.float32)
    runs = {
        "spmm, 128-column register block (_spmm_128)": (K._spmm_128, (p.indptr, p.indices, data, x, y, bounds, 0, 0, None, None, None)),
        "spmm, 48-column register block (_spmm_48)": (K._spmm_48, (p.indptr, p.indices, data, x, y, bounds, 0, 0, None, None, None)),
        "spmm, 64+48 columns in one pass (_spmm_64_48)": (K._spmm_64_48, (p.indptr, p.indices, data, x, y, bounds, 0, 0, None, None, None)),
        "spmm, explicit vectors, 8 (_spmm_vector_kernel)": (K._SPMM_KERNELS[BATCH // 16],
                                                           (p.indptr, p.indices, data, x, y, bounds, None, None, None, None)),
        "spmm, explicit vectors, 8, column blocks": (K._SPMM_KERNELS[BATCH // 16],
                                                     (p.indptr, p.indices, data, x, y, bounds, None, None, None,
                                                      p.segments(2))),
        "spmm_plain": (K.spmm_plain, (p.indptr, p.indices, data, x, y, bounds)),
        "sddmm, explicit vectors, 8 (_sddmm_vector_kernel)": (K._SDDMM_KERNELS[BATCH // 16],
                                                             (p.indptr, p.indices, dy, x, np.empty(p.nnz, np.float32),
                                                              bounds, None, None)),
        "sddmm, explicit vectors, 4 (_sddmm_vector_kernel)": (K._SDDMM_KERNELS4[BATCH // 16],
                                                             (p.indptr, p.indices, dy, x, np.empty(p.nnz, np.float32),
                                                              bounds, None, None)),
    }
    if blocks_only:
        runs = {k: v for k, v in runs.items() if "register block" in k or "one pass" in k}
    # (sddmm_any is not listed: the machine code Numba lets us inspect for it shows no
    # multiply-add at all, so its hot loop is compiled somewhere this view does not reach)
    print("\nFMA instructions in the compiled kernels (float32):")
    narrow = []
    for name, (kernel, args) in runs.items():
        fresh = njit(parallel=True, fastmath=True)(kernel.py_func)
        fresh(*args)
        asm = "\n".join(fresh.inspect_asm().values())
        count = {reg: len(re.findall(rf"vfmadd\w*\s+[^\n]*%{reg}", asm)) for reg in ("zmm", "ymm", "xmm")}
        print(f"  {name:<50} zmm {count['zmm']:>3}  ymm {count['ymm']:>3}  xmm {count['xmm']:>3}  "
              f"gathers {len(re.findall(r'vgather', asm))}")
        if "register block" in name and count["zmm"] == 0 and count["ymm"] > 0:
            narrow.append(name)
    if narrow:  # the block kernels are left to LLVM's vectoriser, which follows its tuning for the CPU
        import llvmlite.binding as llvm

        print(f"\nLLVM tunes this CPU ({llvm.get_host_cpu_name()}) for 256-bit vectors, so the register-block "
              "kernels, which LLVM vectorises, use ymm; the explicit-vector ones are 512-bit on any AVX-512 CPU. "
              "NUMBA_CPU_FEATURES set to the host's features plus ',-prefer-256-bit' compiles them to zmm; on "
              "the host where that was found (a Sapphire Rapids-like CPU LLVM names 'rocketlake') both ran the "
              "same beyond the caches, where these kernels run (docs/kernels.md).")


# ---------------------------------------------------------------------------------------------
# --scale: the same kernels on layers beyond the caches
# ---------------------------------------------------------------------------------------------


def scale_study(timing) -> tuple[int, list[dict]]:
    """Each product on an n x n layer with in-degree SCALE_FAN_IN (a RadiX-Net layer and a random
    one), batch SCALE_BATCH; GFLOP/s and the ratio to the same kernel at the smallest size.
    Returns the number of failed targets and one record per (topology, neurons, op): ``kind
    "scale", topology, neurons, nnz, batch, op, median_s, gflops, vs_smallest``."""
    from sparsenn import topology

    print(f"\nLayers beyond the caches: n x n, fan-in {SCALE_FAN_IN}, batch {SCALE_BATCH}; useful GFLOP/s "
          f"and the ratio to the same kernel and topology at {SCALE_SIZES[0]:,} neurons")
    print(f"{'topology':<8} {'neurons':>9} {'nnz':>12} {'x MB':>6}" + "".join(f"{op:>16}" for op in OPS)
          + "".join(f"{'vs ' + str(SCALE_SIZES[0]):>9}" for _ in OPS))
    rates, verdicts, records = {}, [], []
    for name in ("radix", "random"):
        for n in SCALE_SIZES:
            rng = np.random.default_rng([SEED, n])
            if name == "radix":
                # a hidden-to-hidden layer of the scaling study's RadiX MLP (in-degree 32)
                mask = topology.radix_mlp(784, [n, n], SCALE_FAN_IN, progress=False)[1]
            else:
                mask = topology.random_fan_in(n, n, SCALE_FAN_IN, rng)
            p = CSRPattern.from_arrays(mask.indptr, mask.indices, mask.shape)
            del mask
            data = rng.standard_normal(p.nnz, dtype=np.float32)
            x = rng.standard_normal((n, SCALE_BATCH), dtype=np.float32)
            dy = rng.standard_normal((n, SCALE_BATCH), dtype=np.float32)
            fns = _sparsenn_ops(p, data, x, dy)
            line = f"{name:<8} {n:>9,} {p.nnz:>12,} {x.nbytes / 1e6:>6.0f}"
            for op in OPS:
                t = median_time(fns[op], lambda _: None, **timing)
                rates[(name, n, op)] = 2 * p.nnz * SCALE_BATCH / t / 1e9
                line += f"{rates[(name, n, op)]:>16.1f}"
                records.append(dict(kind="scale", topology=name, neurons=n, nnz=p.nnz, batch=SCALE_BATCH, op=op,
                                    median_s=t, gflops=rates[(name, n, op)],
                                    vs_smallest=rates[(name, n, op)] / rates[(name, SCALE_SIZES[0], op)]))
            for op in OPS:
                r = rates[(name, n, op)] / rates[(name, SCALE_SIZES[0], op)]
                line += f"{r:>9.2f}"
                if n == SCALE_SIZES[-1]:
                    verdicts.append(("PASS" if r >= SCALE_TARGET else "FAIL", name, op, r))
            print(line, flush=True)
    print(f"\nTarget: GFLOP/s at {SCALE_SIZES[-1]:,} neurons >= {SCALE_TARGET}x the rate at {SCALE_SIZES[0]:,}:")
    for verdict, name, op, r in verdicts:
        print(f"{verdict}  {name:<7} {op:<15} {r:.2f}x")
    return sum(v == "FAIL" for v, *_ in verdicts), records


@numba.njit(cache=True)
def _read_sweep(a, reps):
    """Read the float32 array ``a`` (length a multiple of 128) front to back ``reps`` times, 8
    independent 16-lane sums, one vector load per add: the load rate of the level ``a`` lives in."""
    total = 0.0
    for _ in range(reps):
        s0, s1, s2, s3, s4, s5, s6, s7 = vzero(), vzero(), vzero(), vzero(), vzero(), vzero(), vzero(), vzero()
        for i in range(0, a.shape[0], 128):
            s0, s1 = vadd(s0, vload(a, i)), vadd(s1, vload(a, i + 16))
            s2, s3 = vadd(s2, vload(a, i + 32)), vadd(s3, vload(a, i + 48))
            s4, s5 = vadd(s4, vload(a, i + 64)), vadd(s5, vload(a, i + 80))
            s6, s7 = vadd(s6, vload(a, i + 96)), vadd(s7, vload(a, i + 112))
        total += hsum(vadd(vadd(vadd(s0, s1), vadd(s2, s3)), vadd(vadd(s4, s5), vadd(s6, s7))))
    return total


@numba.njit(parallel=True, cache=True)
def _read_sweep_threads(a, reps):
    """:func:`_read_sweep` on every thread at once, thread t on row t of ``a`` (its own array)."""
    out = np.zeros(a.shape[0])
    for t in numba.prange(a.shape[0]):
        out[t] = _read_sweep(a[t], reps)
    return out.sum()


def bandwidth_report(timing) -> None:
    """The rate at which a core loads 64-byte vectors from each level of the memory hierarchy,
    and what it allows a sparse product, beside this run's SGEMM rate.

    The forward and ``W^T dy`` products load one 16-float vector of ``x`` (64 bytes, from wherever
    ``x`` lives) for every 16-lane multiply-add (32 flops): 0.5 flop per byte, so their ceiling is
    half the load rate of that level; SGEMM reuses every loaded value from registers and is bound
    by the multiply-add units instead. The weight gradient loads ``x`` at the same rate per flop
    (``dy[r]`` stays in L1)."""
    threads = numba.get_num_threads()
    sgemm = sgemm_rate(timing)
    print(f"dense SGEMM {SGEMM[0]}x{SGEMM[1]} @ {SGEMM[1]}x{BATCH} through NumPy: {sgemm:.1f} GFLOP/s")
    print(f"\nLoad rate by working set (each thread reads its own array front to back, 64-byte vector "
          f"loads, best of 3), and the ceiling it sets a product that loads one vector of x per 16-lane "
          f"multiply-add (0.5 flop per byte, all {threads} threads):")
    print(f"{'KB per thread':>13} {'1 thread GB/s':>14} {f'{threads} threads GB/s':>16} {'ceiling GFLOP/s':>16} "
          f"{'of SGEMM':>9}")
    for kb in BANDWIDTH_KB:
        n = kb * 1024 // 4
        raw = np.ones(threads * n + 16, np.float32)
        skip = (-raw.ctypes.data % 64) // 4  # every row on 64-byte boundaries: one cache line per load
        a = raw[skip:skip + threads * n].reshape(threads, n)
        reps = max(3, int(2e9 * timing["min_time"]) // (threads * a[0].nbytes))
        _read_sweep(a[0], 1)
        _read_sweep_threads(a, 1)
        one = every = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            _read_sweep(a[0], reps)
            one = min(one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            _read_sweep_threads(a, reps)
            every = min(every, time.perf_counter() - t0)
        bw1, bw = a[0].nbytes * reps / one / 1e9, a.nbytes * reps / every / 1e9
        print(f"{kb:>13,} {bw1:>14.1f} {bw:>16.1f} {0.5 * bw:>16.1f} {0.5 * bw / sgemm:>8.2f}x", flush=True)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write one record per timing to PATH")
    ap.add_argument("--quick", action="store_true",
                    help=f"few calls ({QUICK}), and skip 4096x4096 d=0.1: for tests")
    ap.add_argument("--repeats", type=int, help=f"most calls per timing (default {MAX_CALLS})")
    ap.add_argument("--min-time", type=float, help=f"seconds of calls per timing (default {MIN_TIME})")
    shapes = sorted({c.shape for c in CASES}, key=lambda s: [int(v) for v in s.split("x")])
    ap.add_argument("--cases", metavar="SHAPES",
                    help=f"comma-separated shapes to run, from {', '.join(shapes)} (default all); "
                         f"the density sweep runs when {SWEEP.shape} is among them")
    ap.add_argument("--check", action="store_true", help="exit 1 if any target FAILs")
    ap.add_argument("--plot", metavar="PATH",
                    help="draw the run's GFLOP/s against SGEMM and the density sweep (with --scale: GFLOP/s against "
                         "the layer's size) here (matplotlib; .png, .pdf, .svg)")
    ap.add_argument("--replot", metavar="JSON",
                    help="instead of timing: draw --plot from the records an earlier --json run wrote")
    ap.add_argument("--asm", action="store_true",
                    help="instead: compile the hot kernels afresh and count their AVX-512 FMA instructions")
    ap.add_argument("--bandwidth", action="store_true",
                    help="instead: each level of the memory hierarchy's load rate, and the ceiling it sets the "
                         "sparse products, beside SGEMM's rate")
    ap.add_argument("--scale", action="store_true",
                    help=f"instead: the three products on square layers of {', '.join(f'{n:,}' for n in SCALE_SIZES)} "
                         f"neurons, fan-in {SCALE_FAN_IN}, batch {SCALE_BATCH}, RadiX and random (beyond the caches); "
                         "--json and --plot write its records and figure")
    args = ap.parse_args(argv)
    cli.check_output_paths(args, files=("json",), figures=("plot",), parser=ap)
    if args.replot and not args.plot:
        ap.error("--replot draws to --plot PATH: give both")
    if args.plot and (args.asm or args.bandwidth):
        ap.error("--plot draws the benchmark or --scale; --asm and --bandwidth have no figure")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--plot needs matplotlib, which is not installed: pip install 'sparsenn[plot]' "
                     "(or pip install matplotlib)")
    if args.replot:
        try:
            args.replot_records = read_records(args.replot)
        except ValueError as e:
            ap.error(f"--replot: {e}")
    if args.cases:
        args.cases = [s.strip() for s in args.cases.split(",") if s.strip()]
        bad = [s for s in args.cases if s not in shapes]
        if bad:
            ap.error(f"--cases: unknown shape(s) {', '.join(bad)}; choose from {', '.join(shapes)}")
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.min_time is not None and args.min_time < 0:
        ap.error(f"--min-time must be >= 0, got {args.min_time}")
    return args


def plot_scale(records: list[dict], path: str, title: str = "") -> dict:
    """Draw a ``--scale`` run's records to ``path``: useful GFLOP/s of each product against the
    layer's neurons (left), and that rate as a fraction of the same product's at the smallest
    size, with the 0.6x target of issue #13 (right); RadiX solid, random dashed. Returns what it
    drew: ``{(topology, op): [(neurons, GFLOP/s, fraction), ...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(12, 4.8))
    drawn = {}
    for topo, style in (("radix", "o-"), ("random", "s--")):
        for j, op in enumerate(OPS):
            pts = sorted((r["neurons"], r["gflops"], r["vs_smallest"]) for r in records
                         if r.get("kind") == "scale" and r["topology"] == topo and r["op"] == op)
            if not pts:
                continue
            drawn[(topo, op)] = pts
            n, g, f = zip(*pts)
            ax.plot(n, g, style, color=f"C{j}", label=f"{topo} {op}")
            ax_r.plot(n, f, style, color=f"C{j}", label=f"{topo} {op}")
    ax_r.axhline(SCALE_TARGET, ls=":", color="0.3", label=f"target: {SCALE_TARGET}x at the largest size")
    batch = next((r["batch"] for r in records if r.get("kind") == "scale"), SCALE_BATCH)
    for a, ylab in ((ax, f"useful GFLOP/s (2 nnz batch / time), batch {batch}"),
                    (ax_r, "fraction of the same product's rate at the smallest size")):
        a.set_xscale("log", base=2)
        a.set_xlabel(f"neurons (n x n layer, fan-in {SCALE_FAN_IN})")
        a.set_ylabel(ylab)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7.5)
    ax.set_ylim(bottom=0)
    ax_r.set_ylim(bottom=0)
    ax.set_title("the three products as the layer outgrows the caches")
    ax_r.set_title("what is kept of the in-cache rate")
    _save(fig, path, title)
    return drawn


def _plot_title(machine, source=None, what=None) -> str:
    where = f"{machine['cpu']} ({machine['llvm_cpu']} to Numba), {machine['cpus']} CPUs" if machine else "machine not recorded"
    return (f"sparsenn kernel benchmark, {what or f'batch {BATCH}'}: {where}"
            + (f"; records from {source}" if source else ""))


def _write_json(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    print(f"wrote {len(records)} records to {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:  # nothing timed: the figure of an earlier run
        recs = args.replot_records
        if any(r.get("kind") == "scale" for r in recs):
            machine = next((r.get("machine") for r in recs if r.get("kind") == "machine"), None)
            plot_scale(recs, args.plot, _plot_title(machine, args.replot, "--scale, layers beyond the caches"))
        else:
            sgemm = next(r for r in recs if r["op"] == "sgemm")
            plot_results(recs, args.plot, _plot_title(sgemm.get("machine"), args.replot))
        print(f"plot: {args.plot} (from {args.replot})")
        return 0
    wall = time.perf_counter()
    timing = dict(QUICK) if args.quick else dict(min_time=MIN_TIME, max_calls=MAX_CALLS, min_calls=MIN_CALLS)
    if args.repeats is not None:
        timing["max_calls"] = args.repeats
        timing["min_calls"] = min(timing["min_calls"], args.repeats)
    if args.min_time is not None:
        timing["min_time"] = args.min_time
    cases = [c for c in CASES if (args.cases is None or c.shape in args.cases)
             and not (args.quick and (c.rows, c.density) == (4096, 0.1))]
    measured = {(c.rows, c.cols, c.density) for c in cases}
    # sweep densities already in the main table reuse its timings (and its records)
    sweep_cases = [] if (args.cases is not None and SWEEP.shape not in args.cases) else [
        Case(SWEEP.rows, SWEEP.cols, d) for d in SWEEP_DENSITIES]
    sweep_new = [c for c in sweep_cases if (c.rows, c.cols, c.density) not in measured]

    print(f"sparsenn {sparsenn.__version__}: kernel benchmark")
    print(f"threads: {thread_info()}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    machine = machine_report()
    print(f"machine: {describe_machine(machine)}")
    print("(the load average counts this machine's busy processes, which stall every threaded kernel)")
    print(f"config: batch={BATCH} seed={SEED} {timing} quick={args.quick}")
    if args.asm:
        asm_report()
        return 0
    if args.bandwidth:
        bandwidth_report(timing)
        print(f"elapsed {time.perf_counter() - wall:.1f} s")
        return 0
    if args.scale:
        if args.quick:  # 262,144 x 32 takes seconds to build and a second per call: not for tests
            print("--scale ignores --quick's sizes: it runs the full sizes with few calls")
        failed, records = scale_study(dict(timing, min_calls=min(timing["min_calls"], 5)))
        if args.plot:
            plot_scale(records, args.plot, _plot_title(machine, what="--scale, layers beyond the caches"))
            print(f"plot: {args.plot}")
        if args.json:
            _write_json(records + [dict(kind="machine", machine=machine)], args.json)
        print(f"elapsed {time.perf_counter() - wall:.1f} s")
        return 1 if args.check and failed else 0
    print(f"cases: {', '.join(c.label for c in cases)}")
    if sweep_cases:
        print(f"sweep: forward {SWEEP.shape} at densities {', '.join(f'{d:g}' for d in SWEEP_DENSITIES)}")

    print("  timing dense SGEMM ...", file=sys.stderr, flush=True)
    sgemm = sgemm_rate(timing)
    print(f"dense SGEMM {SGEMM[0]}x{SGEMM[1]} @ {SGEMM[1]}x{BATCH} through NumPy: {sgemm:.1f} GFLOP/s")
    results = {}  # (case, op, impl) -> median seconds
    operands = {}  # case -> (pattern, data, x, dy, refs), kept for the torch pass at the end
    for case in cases + sweep_new:
        print(f"  timing {case.label} ...", file=sys.stderr, flush=True)
        p, data, x, dy = make_operands(case)
        refs = reference(p, data, x, dy)
        ops = OPS if case in cases else ("forward",)
        time_impl("sparsenn", _sparsenn_ops(p, data, x, dy), case, p, refs, timing, results, ops)
        if case in cases:
            time_impl("plain", _sparsenn_ops(p, data, x, dy, plain=True), case, p, refs, timing, results, ops)
            time_impl("scipy", _scipy_ops(p, data, x, dy), case, p, refs, timing, results, ops)
        time_impl("dense_numpy", _dense_numpy_ops(p, data, x, dy), case, p, refs, timing, results, ops)
        if case in cases:
            operands[case] = (p, data, x, dy, refs)

    # PyTorch last, and only if it happens to be installed (never a dependency)
    try:
        import torch
    except ImportError:
        torch = None
    impls = list(IMPLS)
    if torch is None:
        impls.remove("torch")
        torch_note = "note: PyTorch is not installed, so it is not compared (pip install torch to add it)."
    else:
        torch.set_num_threads(numba.get_num_threads())
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        sampled = _torch_sampled_addmm_works(torch)
        torch_note = (f"torch {torch.__version__} with {torch.get_num_threads()} threads; weight_grad by "
                      + ("torch.sparse.sampled_addmm on the CSR pattern" if sampled
                         else "dense dy @ x.T (sampled_addmm does not run on CPU CSR here)"))
        for case, (p, data, x, dy, refs) in operands.items():
            print(f"  timing torch {case.label} ...", file=sys.stderr, flush=True)
            time_impl("torch", _torch_ops(torch, sampled, p, data, x, dy), case, p, refs, timing, results)
    print(torch_note)

    print_table(cases, impls, results, sgemm)
    if sweep_cases:
        print_sweep(sweep_cases, results)

    verdicts = check_targets(cases, results, sgemm)
    print("\nTargets (ratios from this run):")
    for verdict, what, label, r in verdicts:
        print(f"{verdict}  {what:<56} {label:<18} " + ("not run" if r is None else f"{r:.2f}x"))
    failed = sum(v == "FAIL" for v, *_ in verdicts)
    print(f"{sum(v == 'PASS' for v, *_ in verdicts)} passed, {failed} failed, "
          f"{sum(v == 'SKIP' for v, *_ in verdicts)} skipped; elapsed {time.perf_counter() - wall:.1f} s")

    records = [dict(op=op, rows=case.rows, cols=case.cols, density=case.density, batch=BATCH,
                    impl=impl, median_s=t, gflops=gflops(case, t), of_sgemm=gflops(case, t) / sgemm)
               for (case, op, impl), t in results.items()]
    records.append(dict(op="sgemm", rows=SGEMM[0], cols=SGEMM[1], density=1.0, batch=BATCH,
                        impl="dense_numpy", gflops=sgemm, machine=machine))
    if args.plot:
        plot_results(records, args.plot, _plot_title(machine))
        print(f"plot: {args.plot}")
    if args.json:
        _write_json(records, args.json)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
