import numpy as np
import pytest
import scipy.sparse as sp

from sparsenn.csr import CSRPattern, balanced_row_splits, check_csr, transpose_index
from sparsenn.io import load_masks, save_masks


def good():
    # 3 x 4: row 0 -> {0, 2}, row 1 empty, row 2 -> {1, 2, 3}
    return (np.array([0, 2, 2, 5], np.int32), np.array([0, 2, 1, 2, 3], np.int32),
            np.arange(5, dtype=np.float32), (3, 4))


def test_canonical_form_passes():
    check_csr(*good())


@pytest.mark.parametrize("mutate, message", [
    (lambda p, i, d, s: (p, np.array([0, 2, 1, 2, 4], np.int32), d, s), "indices must be < n_in"),
    (lambda p, i, d, s: (p, np.array([0, 2, 1, -1, 3], np.int32), d, s), "indices must be >= 0"),
    (lambda p, i, d, s: (np.array([0, 3, 2, 5], np.int32), i, d, s), "indptr must be non-decreasing"),
    (lambda p, i, d, s: (np.array([1, 2, 2, 5], np.int32), i, d, s), "indptr[0] must be 0"),
    (lambda p, i, d, s: (p[:-1], i, d, s), "indptr must have n_out+1 = 4 entries"),
    (lambda p, i, d, s: (p, i[:-1], d, s), "indices must have indptr[-1] = 5 entries"),
    (lambda p, i, d, s: (p, np.array([0, 2, 2, 1, 3], np.int32), d, s), "unsorted column 1 in row 2"),
    (lambda p, i, d, s: (p, np.array([0, 2, 1, 1, 3], np.int32), d, s), "duplicate column 1 in row 2"),
    (lambda p, i, d, s: (p, i, d[:-1], s), "data must have shape (5,)"),
    (lambda p, i, d, s: (p, i, d, (3,)), "shape must be two non-negative ints"),
])
def test_each_broken_rule_is_named(mutate, message):
    with pytest.raises(ValueError) as e:
        check_csr(*mutate(*good()))
    assert message in str(e.value)


def test_wrong_dtypes_are_type_errors():
    p, i, d, s = good()
    with pytest.raises(TypeError, match="indices must be int32"):
        check_csr(p, i.astype(np.int64), d, s)
    with pytest.raises(TypeError, match="data must be float32"):
        check_csr(p, i, d.astype(np.float64), s)


def test_row_boundary_may_decrease():
    # Row 0 ends at column 3, row 1 starts at column 0: allowed.
    check_csr(np.array([0, 1, 2], np.int32), np.array([3, 0], np.int32), None, (2, 4))


@pytest.mark.parametrize("shape, density", [((7, 9), 0.3), ((1, 1), 1.0), ((5, 3), 0.0), ((20, 11), 1.0)])
def test_transpose_index_matches_scipy(rng, shape, density):
    m = sp.random(*shape, density=density, format="csr", random_state=3)
    m.data[:] = np.arange(1, m.nnz + 1)
    p = CSRPattern.from_mask(m != 0)
    csc = m.tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(p.t_indptr, csc.indptr)
    np.testing.assert_array_equal(p.t_rows, csc.indices)
    # t_perm takes data (row order) to column order
    np.testing.assert_array_equal(m.data[p.t_perm], csc.data)


def test_balanced_splits_follow_nonzeros():
    # One heavy row-block then many light rows: a row-count split would give thread 0 almost
    # everything; an nnz split puts the cut right after the heavy rows.
    counts = np.array([100] * 10 + [1] * 1000)
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    b = balanced_row_splits(indptr, 2)
    assert b[0] == 0 and b[-1] == len(counts)
    work = [indptr[b[i + 1]] - indptr[b[i]] + (b[i + 1] - b[i]) for i in range(2)]
    assert max(work) / min(work) < 1.1
    assert b[1] < 300  # a row-count split would cut at 505, giving thread 0 twice the work


@pytest.mark.parametrize("n_parts", [1, 2, 3, 8])
def test_splits_cover_every_row_once(n_parts):
    indptr = np.array([0, 0, 5, 5, 6, 10, 10], np.int32)
    b = balanced_row_splits(indptr, n_parts)
    assert len(b) == (n_parts + 1 if n_parts > 1 else 2)
    assert b[0] == 0 and b[-1] == 6 and np.all(np.diff(b) >= 0)


def test_mask_file_round_trip(tmp_path, rng):
    masks = [sp.csr_matrix(rng.random((5, 8)) < 0.3), sp.csr_matrix(np.ones((2, 5), bool))]
    path = tmp_path / "m.npz"
    save_masks(path, masks, sparsity=0.7)
    back = load_masks(path)
    assert len(back) == 2
    for a, b in zip(masks, back):
        assert a.shape == b.shape and (a != b).nnz == 0
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write left nothing behind


def test_mask_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        load_masks(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a sparsenn mask file"):
        load_masks(tmp_path / "bad.npz")
    np.savez(tmp_path / "broken.npz", n_layers=1, mask0_indptr=np.array([0, 1], np.int32),
             mask0_indices=np.array([7], np.int32), mask0_shape=np.array([1, 3]))
    with pytest.raises(ValueError, match="indices must be < n_in"):
        load_masks(tmp_path / "broken.npz")


def test_pattern_from_mask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be 2-D"):
        CSRPattern.from_mask(np.ones(5, bool))


def _strided(n, stride, fan_in):
    """Row r reads r, r + stride, ..., r + (fan_in - 1) stride (mod n): a RadiX-Net layer."""
    rows = np.repeat(np.arange(n), fan_in)
    cols = (rows + stride * np.tile(np.arange(fan_in), n)) % n
    import scipy.sparse as sp

    return CSRPattern.from_mask(sp.csr_matrix((np.ones(n * fan_in, bool), (rows, cols)), shape=(n, n)))


def test_strided_layers_get_a_locality_order_and_random_ones_keep_theirs(rng):
    from sparsenn.csr import REUSE_WINDOW, locality_order, near_reuses

    p = _strided(4096, 512, 8)  # rows r and r + 512 share 7 of their 8 columns
    order, t_order = p.orders()
    assert order is not None and t_order is not None
    np.testing.assert_array_equal(np.sort(order), np.arange(4096))  # a permutation of the rows
    # groups (rows r + 512 j share their columns) taken 16 at a time: the first row of each of
    # groups 0-15, then the second of each, ...; all of a tile's rows before the next tile's
    from sparsenn.csr import LOCALITY_TILE

    assert LOCALITY_TILE == 16
    np.testing.assert_array_equal(order[:32], np.r_[np.arange(16), 512 + np.arange(16)])
    tile = (np.arange(16)[None, :] + 512 * np.arange(8)[:, None]).ravel()
    np.testing.assert_array_equal(order[:128], tile)
    # with column blocks the kernels take the groups one at a time: same sides, another order
    groups, t_groups = p.orders(tiles=False)
    np.testing.assert_array_equal(groups[:16], np.r_[512 * np.arange(8), 1 + 512 * np.arange(8)])
    assert t_groups is not None and p.orders(tiles=False)[0] is groups
    np.testing.assert_array_equal(p.splits(4, tiles=False)[0], [0, 1024, 2048, 3072, 4096])
    # in that order, rows reading the same columns are neighbours: (nearly) every reuse is close
    position = np.empty(4096, np.int64)
    position[order] = np.arange(4096)
    assert near_reuses(p.t_indptr, p.t_rows, position, REUSE_WINDOW) > 0.9
    assert near_reuses(p.t_indptr, p.t_rows, np.arange(4096), REUSE_WINDOW) == 0.0  # 512 rows apart
    # the splits cut the ordered rows into chunks of equal nonzeros
    bounds, t_bounds = p.splits(4)
    np.testing.assert_array_equal(bounds, [0, 1024, 2048, 3072, 4096])
    # contiguous windows (stride 1) and random layers keep the natural order
    assert _strided(4096, 1, 8).orders() == (None, None)
    assert CSRPattern.from_mask(rng.random((500, 400)) < 0.05).orders() == (None, None)
    # empty rows go last
    q = CSRPattern.from_mask(np.array([[0, 1], [0, 0], [1, 0]], bool))
    np.testing.assert_array_equal(locality_order(q.indptr, q.indices), [2, 0, 1])
