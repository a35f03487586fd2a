"""Every kernel against its NumPy twin, on the shapes that break kernels."""

import os
import subprocess
import sys

import numpy as np
import scipy.sparse as sp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenn.csr import CSRPattern, balanced_row_splits
from sparsenn.kernels import (sddmm, sddmm_plain, sddmm_ref, softmax_xent, softmax_xent_ref, spmm, spmm_plain,
                              spmm_ref)
from tests.conftest import random_mask

CASES = {
    # name: (n_out, n_in, density, batch, empty_rows, empty_cols)
    "odd sizes": (13, 17, 0.3, 7, (), ()),
    "empty rows and cols": (11, 9, 0.5, 5, (0, 4, 10), (2, 3)),
    "empty matrix": (6, 5, 0.0, 4, (), ()),
    "full matrix": (8, 6, 1.0, 9, (), ()),
    "batch 1": (10, 12, 0.4, 1, (1,), ()),
    "one row": (1, 33, 0.5, 3, (), ()),
    "long rows (unroll tails)": (3, 64, 0.9, 5, (), ()),
}


def setup(rng, case, dtype=np.float32):
    n_out, n_in, density, batch, er, ec = CASES[case]
    p = CSRPattern.from_mask(random_mask(rng, n_out, n_in, density, er, ec))
    data = rng.standard_normal(p.nnz).astype(dtype)
    x = rng.standard_normal((n_in, batch)).astype(dtype)
    dy = rng.standard_normal((n_out, batch)).astype(dtype)
    return p, data, x, dy


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_parts", [1, 2, 5])
def test_spmm_matches_twin_and_dense(rng, case, n_parts):
    p, data, x, _ = setup(rng, case)
    out = np.full((p.shape[0], x.shape[1]), np.nan, np.float32)  # must be fully overwritten
    spmm(p.indptr, p.indices, data, x, out, balanced_row_splits(p.indptr, n_parts))
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, p.to_scipy(data).toarray() @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_parts", [1, 2, 5])
def test_transposed_spmm_gives_backward_input(rng, case, n_parts):
    p, data, x, dy = setup(rng, case)
    dx = np.full((p.shape[1], dy.shape[1]), np.nan, np.float32)
    spmm(p.t_indptr, p.t_rows, data, dy, dx, balanced_row_splits(p.t_indptr, n_parts), p.t_perm)
    np.testing.assert_allclose(dx, p.to_scipy(data).toarray().T @ dy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, spmm_ref(p.t_indptr, p.t_rows, data, dy, p.t_perm), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_parts", [1, 2, 5])
def test_sddmm_matches_twin_and_dense(rng, case, n_parts):
    p, _, x, dy = setup(rng, case)
    out = np.full(p.nnz, np.nan, np.float32)
    sddmm(p.indptr, p.indices, dy, x, out, balanced_row_splits(p.indptr, n_parts))
    np.testing.assert_allclose(out, sddmm_ref(p.indptr, p.indices, dy, x), rtol=1e-5, atol=1e-5)
    rows = p.row_of_entry()
    np.testing.assert_allclose(out, (dy @ x.T)[rows, p.indices], rtol=1e-5, atol=1e-5)


# spmm cuts the batch into register blocks of 128, 96, 64 or 48 columns, pairs of blocks in one
# pass (48+48, 64+48, 64+64) and a tail loop: these widths hit each block and each pair alone,
# after 128-blocks, the tail alone, and several 128-blocks.
BLOCK_BATCHES = [1, 15, 16, 47, 48, 49, 50, 63, 64, 95, 96, 100, 120, 127, 128, 129, 176, 178, 200, 228, 257]


@pytest.mark.parametrize("batch", BLOCK_BATCHES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_and_plain_kernels_equal_the_twins_at_every_block_width(rng, batch, dtype):
    # empty rows, one-nonzero rows, rows with 1-3 left after 4-wide unrolling, long rows
    mask = random_mask(rng, 40, 70, 0.15, (0, 7, 39), (5,))
    mask[3] = False
    mask[3, 11] = True  # a one-nonzero row
    mask[9] = True  # a full row (70: unroll tail of 2)
    p = CSRPattern.from_mask(mask)
    data = rng.standard_normal(p.nnz).astype(dtype)
    x = rng.standard_normal((p.shape[1], batch)).astype(dtype)
    dy = rng.standard_normal((p.shape[0], batch)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for n_parts in (1, 3):
        bounds, t_bounds = balanced_row_splits(p.indptr, n_parts), balanced_row_splits(p.t_indptr, n_parts)
        for kernel in (spmm, spmm_plain):
            out = np.full((p.shape[0], batch), np.nan, dtype)
            kernel(p.indptr, p.indices, data, x, out, bounds)
            np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x), **tol)
            dx = np.full((p.shape[1], batch), np.nan, dtype)
            kernel(p.t_indptr, p.t_rows, data, dy, dx, t_bounds, p.t_perm)
            np.testing.assert_allclose(dx, spmm_ref(p.t_indptr, p.t_rows, data, dy, p.t_perm), **tol)
        bias = rng.standard_normal(p.shape[0]).astype(dtype)  # the fused bias of the forward
        out = np.full((p.shape[0], batch), np.nan, dtype)
        spmm(p.indptr, p.indices, data, x, out, bounds, None, bias)
        np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x) + bias[:, None], **tol)
        for kernel in (sddmm, sddmm_plain):
            g = np.full(p.nnz, np.nan, dtype)
            kernel(p.indptr, p.indices, dy, x, g, bounds)
            assert g.dtype == dtype
            np.testing.assert_allclose(g, sddmm_ref(p.indptr, p.indices, dy, x), **tol)


def test_kernels_run_as_plain_python_with_the_jit_disabled():
    """The module docstring's debugging advice (NUMBA_DISABLE_JIT=1) must keep working: the
    register blocks then use a heap array instead of the stack intrinsic."""
    code = ("import numpy as np; from sparsenn.kernels import spmm, spmm_ref, sddmm, sddmm_ref; "
            "from sparsenn.csr import CSRPattern, balanced_row_splits; rng = np.random.default_rng(0); "
            "p = CSRPattern.from_mask(rng.random((6, 9)) < 0.4); d = rng.standard_normal(p.nnz); "
            "x = rng.standard_normal((9, 100)); y = np.empty((6, 100)); b = balanced_row_splits(p.indptr, 2); "
            "spmm(p.indptr, p.indices, d, x, y, b); assert np.allclose(y, spmm_ref(p.indptr, p.indices, d, x)); "
            "g = np.empty(p.nnz); sddmm(p.indptr, p.indices, y, x, g, b); "
            "assert np.allclose(g, sddmm_ref(p.indptr, p.indices, y, x)); "
            "y, x = y.astype(np.float32), x.astype(np.float32); g = np.empty(p.nnz, np.float32); "
            "sddmm(p.indptr, p.indices, y, x, g, b); "  # float32: the explicit-vector kernels, as NumPy
            "assert np.allclose(g, sddmm_ref(p.indptr, p.indices, y, x), rtol=1e-4, atol=1e-4); "
            "d = d.astype(np.float32); spmm(p.indptr, p.indices, d, x, y, b); "
            "assert np.allclose(y, spmm_ref(p.indptr, p.indices, d, x), rtol=1e-4, atol=1e-4); "
            "from sparsenn.kernels import gather_batch, gather_batch_ref; "
            "px = rng.integers(0, 256, (40, 20)).astype(np.uint8); "
            "ix = rng.integers(0, 40, 17); s1 = np.ones(20, np.float32); s0 = np.zeros(20, np.float32); "
            "o = np.empty((20, 17), np.float32); gather_batch(px, ix, s1, s0, o); "
            "assert np.array_equal(o, gather_batch_ref(px, ix)); print('ok')")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


@pytest.mark.parametrize("batch", [16, 17, 31, 32, 47, 50, 64, 96, 100, 111, 112, 127, 128, 143])
def test_the_vector_sddmm_covers_every_batch_tail_and_row_length(rng, batch):
    """float32, 16-143 columns: one kernel per whole-vector count, a masked vector for the
    tail. Rows of 0 to 20 entries exercise the groups of eight (and of four, in the kernels for
    layers beyond the caches), the single entries, and empty rows."""
    from sparsenn.csr import _ordered_indptr
    from sparsenn.kernels import _SDDMM_KERNELS, _SDDMM_KERNELS4, sddmm_any

    lengths = np.arange(21)
    mask = np.zeros((len(lengths), 40), bool)
    for r, n in enumerate(lengths):
        mask[r, rng.choice(40, n, replace=False)] = True
    p = CSRPattern.from_mask(mask)
    dy = rng.standard_normal((p.shape[0], batch)).astype(np.float32)
    x = rng.standard_normal((40, batch)).astype(np.float32)
    want = sddmm_ref(p.indptr, p.indices, dy.astype(np.float64), x.astype(np.float64))
    for n_parts in (1, 3):
        bounds = balanced_row_splits(p.indptr, n_parts)
        for order in (None, rng.permutation(p.shape[0]).astype(np.int64)):
            if order is not None:
                bounds = balanced_row_splits(_ordered_indptr(p.indptr, order), n_parts)
            for table in (_SDDMM_KERNELS, _SDDMM_KERNELS4):
                g = np.full(p.nnz, np.nan, np.float32)
                table[batch // 16](p.indptr, p.indices, dy, x, g, bounds, order, None)
                np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
            g2 = np.full(p.nnz, np.nan, np.float32)
            sddmm_any(p.indptr, p.indices, dy, x, g2, bounds, order)
            np.testing.assert_allclose(g2, want, rtol=1e-5, atol=1e-5)


def test_sddmm_takes_four_entries_at_a_time_on_ordered_layers_beyond_the_caches(rng, monkeypatch):
    from sparsenn import kernels

    calls = []
    for name in ("_SDDMM_KERNELS", "_SDDMM_KERNELS4"):
        monkeypatch.setattr(kernels, name, tuple(None if k is None else (lambda *a, n=name: calls.append(n))
                                                 for k in getattr(kernels, name)))
    p = CSRPattern.from_mask(rng.random((64, 64)) < 0.2)
    order = np.arange(64, dtype=np.int64)
    g = np.empty(p.nnz, np.float32)
    for batch, n_in, o in ((100, 8192, order), (100, 8192, None), (50, 8192, order), (100, 64, order)):
        x = np.zeros((n_in, batch), np.float32)  # 3.1 MB for 8,192 x 100: over SDDMM_GROUP8_MAX_X
        kernels.sddmm(p.indptr, p.indices, np.zeros((64, batch), np.float32), x, g, np.array([0, 64]), o)
    assert calls == ["_SDDMM_KERNELS4", "_SDDMM_KERNELS", "_SDDMM_KERNELS", "_SDDMM_KERNELS"]


def test_simd_operations_match_numpy(rng):
    from numba import njit

    from sparsenn import simd

    @njit
    def run(a, b, c, out, out1, keep):
        v = simd.vfma(simd.vload(a, 3), simd.vload(b, 0), simd.vmask_tail(simd.vload(c, 0), keep))
        out1[0] = simd.hsum(v)
        simd.hsum8_store(simd.vload(a, 0), simd.vload(a, 16), simd.vload(a, 32), simd.vload(a, 48),
                         simd.vload(a, 64), simd.vload(a, 80), simd.vload(a, 96), simd.vload(a, 112), out, 1)

    a = rng.standard_normal(130).astype(np.float32)
    b, c = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    for keep in (0, 1, 5, 16):
        out, out1 = np.zeros(10, np.float32), np.zeros(1, np.float32)
        run(a, b, c, out, out1, keep)
        masked = np.where(np.arange(16) >= 16 - keep, c, 0)
        np.testing.assert_allclose(out1[0], (a[3:19] * b + masked).sum(), rtol=1e-5)
        np.testing.assert_allclose(out[1:9], a[:128].reshape(8, 16).sum(1), rtol=1e-5)
        assert out[0] == 0 and out[9] == 0  # nothing written outside out[1:9]


def test_kernels_compile_for_float64(rng):
    p, data, x, dy = setup(rng, "odd sizes", dtype=np.float64)
    out = np.empty((p.shape[0], x.shape[1]))
    spmm(p.indptr, p.indices, data, x, out, balanced_row_splits(p.indptr, 2))
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(n_out=st.integers(0, 12), n_in=st.integers(1, 12), batch=st.integers(1, 9),
       density=st.floats(0, 1), seed=st.integers(0, 2**16), n_parts=st.integers(1, 4))
def test_spmm_and_sddmm_property(n_out, n_in, batch, density, seed, n_parts):
    rng = np.random.default_rng(seed)
    p = CSRPattern.from_mask(rng.random((n_out, n_in)) < density)
    data = rng.standard_normal(p.nnz).astype(np.float32)
    x = rng.standard_normal((n_in, batch)).astype(np.float32)
    dy = rng.standard_normal((n_out, batch)).astype(np.float32)
    y = np.empty((n_out, batch), np.float32)
    spmm(p.indptr, p.indices, data, x, y, balanced_row_splits(p.indptr, n_parts))
    np.testing.assert_allclose(y, spmm_ref(p.indptr, p.indices, data, x), rtol=1e-4, atol=1e-5)
    g = np.empty(p.nnz, np.float32)
    sddmm(p.indptr, p.indices, dy, x, g, balanced_row_splits(p.indptr, n_parts))
    np.testing.assert_allclose(g, sddmm_ref(p.indptr, p.indices, dy, x), rtol=1e-4, atol=1e-5)


def test_softmax_xent_matches_twin(rng):
    z = rng.standard_normal((10, 17)).astype(np.float32)
    labels = rng.integers(0, 10, 17)
    d = np.empty_like(z)
    loss = softmax_xent(z, labels, d)
    loss_ref, d_ref = softmax_xent_ref(z.astype(np.float64), labels)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.sum(axis=0), 0, atol=1e-6)  # softmax minus one-hot sums to 0


def test_softmax_xent_is_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0], [0.0, 1000.0], [-1000.0, 999.0]], np.float32)
    labels = np.array([0, 2])
    d = np.empty_like(z)
    loss = softmax_xent(z, labels, d)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    # sample 0 is certain and right (loss 0); sample 1 puts e^-1 / (1 + e^-1) on its label
    assert loss == pytest.approx(0.5 * np.log1p(np.exp(1.0)), rel=1e-5)


def test_gather_batch_copies_float_rows_exactly_and_normalises_pixels_like_to_features_major(rng):
    from sparsenn.data import normalisation, to_features_major
    from sparsenn.kernels import gather_batch, gather_batch_ref

    idx = rng.permutation(50)[:13]
    feats = rng.standard_normal((50, 70)).astype(np.float32)
    out = np.full((70, 13), np.nan, np.float32)
    gather_batch(feats, idx, np.ones(70, np.float32), np.zeros(70, np.float32), out)
    np.testing.assert_array_equal(out, gather_batch_ref(feats, idx))  # scale 1, shift 0: a copy
    images = rng.integers(0, 256, (50, 7, 10), dtype=np.uint8)  # 70 features per image
    scale, shift = normalisation(images.shape[1:], 0.1307, 0.3081)
    gather_batch(images.reshape(50, 70), idx, scale, shift, out)
    # the same bits as normalising the whole set first, then gathering the batch from it
    np.testing.assert_array_equal(out, to_features_major(images, 0.1307, 0.3081)[:, idx])
    np.testing.assert_array_equal(out, gather_batch_ref(images.reshape(50, 70), idx, scale, shift))


def test_batch_blocks_cover_every_column_with_register_block_widths():
    from sparsenn.kernels import _BLOCK_KERNELS, batch_blocks

    for batch in range(1, 400):
        passes = batch_blocks(batch)
        covered = np.zeros(batch, bool)
        for b0, w, c0, v in passes:
            assert (w, v) in _BLOCK_KERNELS, (batch, w, v)
            if w == 0:  # the tail loop, only for batches under 48 columns
                assert batch < 48 and len(passes) == 1
                covered[b0:] = True
                continue
            assert 0 <= b0 and b0 + w <= batch
            covered[b0:b0 + w] = True
            if v:  # a second block in the same pass
                assert 0 <= c0 and c0 + v <= batch
                covered[c0:c0 + v] = True
        assert covered.all(), batch
        assert len(passes) == -(-batch // 128), batch  # one pass per 128 columns, no more


@pytest.mark.parametrize("which", ["serial", "parallel"])
@pytest.mark.parametrize("n", [1, 1000, 70001])
def test_relu_kernels_equal_numpy(rng, which, n):
    from sparsenn import kernels

    relu, relu_backward = ((kernels.relu, kernels.relu_backward) if which == "serial"
                           else (kernels.relu_parallel, kernels.relu_backward_parallel))
    x = rng.standard_normal(n).astype(np.float32)
    x[:5] = 0.0
    y = np.full_like(x, np.nan)
    relu(x, y)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(n).astype(np.float32)
    dx = np.full_like(x, np.nan)
    relu_backward(y, dy, dx)
    np.testing.assert_array_equal(dx, np.where(y > 0, dy, 0))


def test_the_cpu_backend_takes_the_parallel_elementwise_kernels_for_wide_layers(rng, monkeypatch):
    from sparsenn import backend_cpu, kernels

    calls = []
    for name in ("relu", "relu_parallel", "relu_backward", "relu_backward_parallel", "sum_batch",
                 "sum_batch_parallel"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    for rows in (kernels.PARALLEL_ELEMENTS // 100 - 1, kernels.PARALLEL_ELEMENTS // 100 + 1):  # narrow, then wide
        x = rng.standard_normal((rows, 100)).astype(np.float32)
        y, dx, db = np.empty_like(x), np.empty_like(x), np.empty(rows, np.float32)
        backend_cpu.relu(x, y)
        backend_cpu.relu_backward(y, x, dx)
        backend_cpu.sum_batch(dx, db)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_array_equal(dx, np.where(y > 0, x, 0))
        np.testing.assert_allclose(db, kernels.sum_batch_ref(dx), rtol=1e-5, atol=1e-4)
    assert calls == ["relu", "relu_backward", "sum_batch", "relu_parallel", "relu_backward_parallel",
                     "sum_batch_parallel"]


@pytest.mark.parametrize("batch", [1, 47, 50, 100, 128, 200])
def test_kernels_computing_rows_in_another_order_equal_the_twins(rng, batch):
    """spmm and sddmm with ``order`` (rows computed in that order, bounds cutting it) give the
    same results as in the natural order: every row is still computed once, by one thread."""
    from sparsenn.csr import CSRPattern, _ordered_indptr, balanced_row_splits

    p = CSRPattern.from_mask(rng.random((40, 30)) < 0.2)  # some rows empty
    data = rng.standard_normal(p.nnz).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    x = rng.standard_normal((30, batch)).astype(np.float32)
    dy = rng.standard_normal((40, batch)).astype(np.float32)
    order, t_order = rng.permutation(40), rng.permutation(30)
    for n_parts in (1, 3):
        bounds = balanced_row_splits(_ordered_indptr(p.indptr, order), n_parts)
        t_bounds = balanced_row_splits(_ordered_indptr(p.t_indptr, t_order), n_parts)
        y = np.full((40, batch), np.nan, np.float32)
        spmm(p.indptr, p.indices, data, x, y, bounds, None, bias, order)
        np.testing.assert_allclose(y, spmm_ref(p.indptr, p.indices, data, x) + bias[:, None], rtol=1e-5, atol=1e-5)
        dx = np.full((30, batch), np.nan, np.float32)
        spmm(p.t_indptr, p.t_rows, data, dy, dx, t_bounds, p.t_perm, None, t_order)
        np.testing.assert_allclose(dx, p.to_scipy(data).T @ dy, rtol=1e-5, atol=1e-5)
        g = np.full(p.nnz, np.nan, np.float32)
        sddmm(p.indptr, p.indices, dy, x, g, bounds, order)
        np.testing.assert_allclose(g, sddmm_ref(p.indptr, p.indices, dy, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("n_features, batch", [(784, 100), (784, 17), (20, 16), (33, 50), (15, 100), (784, 5)])
def test_gather_batch_tiles_and_rows_give_the_twins_bits(rng, dtype, n_features, batch):
    """The 16 x 16 tiles (with overlapping last tiles) and the row-by-row loop write the same
    bits as the NumPy twin; shapes under 16 take the rows."""
    from sparsenn.kernels import gather_batch, gather_batch_ref, gather_batch_rows, gather_batch_tiles, prefetch_rows

    raw = rng.integers(0, 256, (500, n_features)) if dtype == np.uint8 else rng.standard_normal((500, n_features))
    data = raw.astype(dtype)
    idx = rng.integers(0, 500, batch)
    scale = rng.random(n_features).astype(np.float32) + 0.5
    shift = rng.standard_normal(n_features).astype(np.float32)
    want = gather_batch_ref(data, idx, scale, shift)
    kernels = [gather_batch, gather_batch_rows] + ([gather_batch_tiles] if min(n_features, batch) >= 16 else [])
    for kernel in kernels:
        out = np.full((n_features, batch), np.nan, np.float32)
        kernel(data, idx, scale, shift, out)
        np.testing.assert_array_equal(out, want)
    prefetch_rows(data, idx)  # a hint only: nothing to check but that it runs


def test_spmm_beyond_the_vector_limit_takes_the_blocks_and_agrees(rng):
    """float32, batch 100, x over SPMM_VECTOR_MAX_X: the register blocks, same results."""
    from sparsenn.kernels import SPMM_VECTOR_MAX_X

    n_in = SPMM_VECTOR_MAX_X // (4 * 100) + 1
    p = CSRPattern.from_mask(sp.random(12, n_in, density=0.001, random_state=0, format="csr") != 0)
    data = rng.standard_normal(p.nnz).astype(np.float32)
    x = rng.standard_normal((n_in, 100)).astype(np.float32)
    assert x.nbytes > SPMM_VECTOR_MAX_X
    out = np.full((12, 100), np.nan, np.float32)
    spmm(p.indptr, p.indices, data, x, out, balanced_row_splits(p.indptr, 2))
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x), rtol=1e-5, atol=1e-5)


def test_vector_kernels_step_aside_for_arrays_that_are_not_c_contiguous(rng):
    """A Fortran-ordered x (each row's batch strided) takes the generic kernels: same results."""
    p = CSRPattern.from_mask(random_mask(rng, 30, 40, 0.3))
    data = rng.standard_normal(p.nnz).astype(np.float32)
    x = np.asfortranarray(rng.standard_normal((40, 100)).astype(np.float32))
    dy = np.asfortranarray(rng.standard_normal((30, 100)).astype(np.float32))
    bounds = balanced_row_splits(p.indptr, 2)
    out = np.full((30, 100), np.nan, np.float32)
    spmm(p.indptr, p.indices, data, x, out, bounds)
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, x), rtol=1e-5, atol=1e-5)
    g = np.full(p.nnz, np.nan, np.float32)
    sddmm(p.indptr, p.indices, dy, x, g, bounds)
    np.testing.assert_allclose(g, sddmm_ref(p.indptr, p.indices, dy, x), rtol=1e-5, atol=1e-5)


def test_column_segments_cut_each_row_at_the_block_edges(rng):
    from sparsenn.csr import column_segments

    p = CSRPattern.from_mask(random_mask(rng, 20, 37, 0.3))
    for n_blocks in (1, 2, 3, 5, 37, 50):
        seg = column_segments(p.indptr, p.indices, 37, n_blocks)
        width = -(-37 // n_blocks)
        assert seg.shape == (20, n_blocks + 1)
        np.testing.assert_array_equal(seg[:, 0], p.indptr[:-1])
        np.testing.assert_array_equal(seg[:, -1], p.indptr[1:])
        for r in range(20):
            for b in range(n_blocks):
                cols = p.indices[seg[r, b]:seg[r, b + 1]]
                assert np.all((cols >= b * width) & (cols < (b + 1) * width))
    assert p.segments(3) is p.segments(3)  # computed once
    np.testing.assert_array_equal(p.segments(3, transpose=True), column_segments(p.t_indptr, p.t_rows, 20, 3))


@pytest.mark.parametrize("batch", [16, 50, 100, 128, 143])
def test_column_blocks_give_the_same_products(rng, batch):
    """spmm (with bias, with perm: W^T) and sddmm through column blocks equal their twins, on
    rows with no entries, with entries in one block only, and with blocks that hold none."""
    from sparsenn.csr import _ordered_indptr

    mask = random_mask(rng, 40, 90, 0.25)
    mask[3] = False  # an empty row
    mask[5] = False
    mask[5, 7] = True  # one entry, in the first block
    mask[:, 60:75] = False  # a block of columns with no entries at all
    p = CSRPattern.from_mask(mask)
    data = rng.standard_normal(p.nnz).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    x = rng.standard_normal((90, batch)).astype(np.float32)
    dy = rng.standard_normal((40, batch)).astype(np.float32)
    want = spmm_ref(p.indptr, p.indices, data, x) + bias[:, None]
    want_t = spmm_ref(p.t_indptr, p.t_rows, data, dy, perm=p.t_perm)
    want_g = sddmm_ref(p.indptr, p.indices, dy.astype(np.float64), x.astype(np.float64))
    for n_blocks in (2, 3, 6):
        for order in (None, rng.permutation(40).astype(np.int64)):
            bounds = balanced_row_splits(p.indptr if order is None else _ordered_indptr(p.indptr, order), 2)
            out = np.full((40, batch), np.nan, np.float32)
            spmm(p.indptr, p.indices, data, x, out, bounds, None, bias, order, p.segments(n_blocks))
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
            g = np.full(p.nnz, np.nan, np.float32)
            sddmm(p.indptr, p.indices, dy, x, g, bounds, order, p.segments(n_blocks))
            np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-5)
        out_t = np.full((90, batch), np.nan, np.float32)
        spmm(p.t_indptr, p.t_rows, data, dy, out_t, balanced_row_splits(p.t_indptr, 2), p.t_perm, None, None,
             p.segments(n_blocks, transpose=True))
        np.testing.assert_allclose(out_t, want_t, rtol=1e-5, atol=1e-5)


def test_the_layer_takes_column_blocks_where_rows_are_long_and_x_is_beyond_l2(rng):
    from sparsenn.kernels import COL_BLOCK_X, column_blocks

    x = np.zeros((4096, 128), np.float32)  # 2 MB: four blocks of 512 KB
    assert x.nbytes == 4 * COL_BLOCK_X
    assert column_blocks(4096, 1_677_722, x) == 4  # 4096x4096 at density 0.1
    assert column_blocks(4096, 167_772, x) == 2  # at 0.01: 41 entries a row, 20 per block in 2, 10 in 4
    assert column_blocks(4096, 4096 * 31, x) == 1  # under 32 a row: under 16 per block
    assert column_blocks(4096, 4096 * 32, np.zeros((4096, 100), np.float32)) == 2  # RadiX 4,096, batch 100
    assert column_blocks(4096, 4096 * 32, np.zeros((4096, 50), np.float32)) == 1  # batch 50: x in L2 (800 KB)
    assert column_blocks(300, 23_520, np.zeros((784, 100), np.float32)) == 1  # LeNet's fc1: x in L2
    # fan-in 32 beyond 8,192 neurons: blocks that fit L2 would hold under 16 entries a row
    assert column_blocks(8192, 8192 * 32, np.zeros((8192, 100), np.float32)) == 1  # x 3.3 MB: 4 blocks needed
    assert column_blocks(65536, 65536 * 32, np.zeros((65536, 50), np.float32)) == 1
    assert column_blocks(262_144, 262_144 * 32, np.zeros((262_144, 100), np.float32)) == 1
    assert column_blocks(4096, 167_772, x.astype(np.float64)) == 1  # the vector kernels are float32
    assert column_blocks(4096, 167_772, np.zeros((4096, 256), np.float32)) == 1  # and up to 143 columns
    # and the backend passes them: same products as without
    from sparsenn import backend_cpu

    p = CSRPattern.from_mask(sp.random(64, 4096, density=0.3, random_state=1, format="csr") != 0)
    data = rng.standard_normal(p.nnz).astype(np.float32)
    xb = rng.standard_normal((4096, 128)).astype(np.float32)
    assert column_blocks(64, p.nnz, xb) == 4
    out = np.empty((64, 128), np.float32)
    backend_cpu.spmm(p, data, xb, out)
    assert ("segments", 4, False) in p.cache  # the backend took the blocks
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, xb), rtol=1e-4, atol=1e-4)


def test_scattered_layers_are_told_from_radix_nets():
    """Random layers read their rows of x far apart (few reuses within 32 rows); RadiX-Nets, in
    their order, do not."""
    from sparsenn.models import sparse_mlp_masks

    for topology, want in (("random", True), ("radix", False)):
        masks = sparse_mlp_masks([8192] * 3, topology, fan_in=32, rng=np.random.default_rng(0))
        for m in masks[1:]:
            assert CSRPattern.from_mask(m).scattered() == (want, want), topology


def test_scattered_layers_take_column_blocks_that_fit_l3(rng):
    from sparsenn import backend_cpu
    from sparsenn.kernels import COL_BLOCK_X_L3, scattered_column_blocks

    # fan-in 32 at batch 100: 65,536 neurons (x 25 MB) in 3 blocks of at most 10 MB; 262,144
    # (100 MB) in 8, where 4 entries a row and block remain; none while x fits half of L3
    assert scattered_column_blocks(65536, 65536 * 32, np.zeros((65536, 100), np.float32)) == 3
    assert 25 << 20 > 2 * COL_BLOCK_X_L3
    assert scattered_column_blocks(262_144, 262_144 * 32, np.zeros((262_144, 100), np.float32)) == 8
    assert scattered_column_blocks(65536, 65536 * 32, np.zeros((65536, 50), np.float32)) == 1  # 12.5 MB
    assert scattered_column_blocks(16384, 16384 * 32, np.zeros((16384, 100), np.float32)) == 1
    assert scattered_column_blocks(65536, 65536 * 7, np.zeros((65536, 100), np.float32)) == 1  # too few entries
    assert scattered_column_blocks(65536, 65536 * 32, np.zeros((65536, 100), np.float64)) == 1
    # the backend takes them for a scattered pattern only, with the same products as without;
    # W^T dy then reads the weights from a copy in transpose order
    n = 45_000  # x and dy 18 MB at batch 100: 2 blocks, 4 of the ~9 entries of a row in each
    cols = rng.integers(0, n, size=(n, 9))
    mask = sp.csr_matrix((np.ones(cols.size, bool), (np.repeat(np.arange(n), 9), cols.ravel())), shape=(n, n))
    p = CSRPattern.from_mask(mask)
    assert p.scattered() == (True, True)
    data = rng.standard_normal(p.nnz).astype(np.float32)
    xb = rng.standard_normal((n, 100)).astype(np.float32)
    dy = rng.standard_normal((n, 100)).astype(np.float32)
    out, g, dx = np.empty((n, 100), np.float32), np.empty(p.nnz, np.float32), np.empty((n, 100), np.float32)
    backend_cpu.spmm(p, data, xb, out)
    backend_cpu.sddmm(p, dy, xb, g)
    backend_cpu.spmm_t(p, data, dy, dx)
    assert ("segments", 2, False) in p.cache and ("segments", 2, True) in p.cache  # the backend took the blocks
    np.testing.assert_array_equal(p.cache["values in transpose order", "<f4"], data[p.t_perm])
    np.testing.assert_allclose(out, spmm_ref(p.indptr, p.indices, data, xb), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g, sddmm_ref(p.indptr, p.indices, dy, xb), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, spmm_ref(p.t_indptr, p.t_rows, data, dy, perm=p.t_perm), rtol=1e-4, atol=1e-4)
    # a scattered layer whose blocks fit L2 (x 2 MB: kernels.column_blocks) keeps reading through t_perm
    q = CSRPattern.from_mask(sp.random(4096, 4096, density=0.01, random_state=2, format="csr") != 0)
    dq = rng.standard_normal((4096, 128)).astype(np.float32)
    assert q.scattered()[1] and backend_cpu.column_segments_for(q, dq, transpose=True) is not None
    wq, dxq = rng.standard_normal(q.nnz).astype(np.float32), np.empty((4096, 128), np.float32)
    backend_cpu.spmm_t(q, wq, dq, dxq)
    assert ("values in transpose order", "<f4") not in q.cache
    np.testing.assert_allclose(dxq, spmm_ref(q.t_indptr, q.t_rows, wq, dq, perm=q.t_perm), rtol=1e-4, atol=1e-4)
    data2 = rng.standard_normal(p.nnz).astype(np.float32)  # new weights: copied again, not reused
    backend_cpu.spmm_t(p, data2, dy, dx)
    np.testing.assert_allclose(dx, spmm_ref(p.t_indptr, p.t_rows, data2, dy, perm=p.t_perm), rtol=1e-4, atol=1e-4)


def test_permute_matches_take(rng):
    from sparsenn.kernels import permute

    data = rng.standard_normal(1000).astype(np.float32)
    perm = rng.permutation(1000).astype(np.int64)
    out = np.empty_like(data)
    permute(data, perm, out)
    np.testing.assert_array_equal(out, np.take(data, perm))
