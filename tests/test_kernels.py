"""Every kernel against its NumPy twin, on the shapes that break kernels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenn.csr import CSRPattern, balanced_row_splits
from sparsenn.kernels import softmax_xent, softmax_xent_ref, sddmm, sddmm_ref, spmm, spmm_ref
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
