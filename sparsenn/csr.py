"""CSR storage: the one vocabulary for sparse weights in sparsenn.

A sparse weight matrix ``W`` of shape ``(n_out, n_in)`` (PyTorch orientation: row = output
neuron, column = input feature) is held as four things::

    indptr   int32   (n_out + 1,)   row r owns entries indptr[r] : indptr[r+1]
    indices  int32   (nnz,)         column of each entry; sorted and unique within a row
    data     float32 (nnz,)         the weights
    shape    (n_out, n_in)

That is the *canonical form*. :func:`check_csr` is the single place that checks it.

The transpose of the pattern (CSC) is built once per pattern by :func:`transpose_index`:
``t_indptr`` (n_in+1,), ``t_rows`` (nnz,) and ``t_perm`` (nnz,) such that column ``c`` of ``W``
holds the entries ``data[t_perm[t_indptr[c]:t_indptr[c+1]]]`` in rows
``t_rows[t_indptr[c]:t_indptr[c+1]]`` (rows increasing). With it ``dx = W^T dy`` is a gather
per input feature: no atomics, no scatter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit
import scipy.sparse as sp


def check_csr(indptr, indices, data, shape, name: str = "CSR matrix") -> None:
    """Raise ``ValueError``/``TypeError`` naming the first way the arrays break canonical form.

    ``data`` may be ``None`` (checking a pattern only). Cost: O(n_out + nnz).
    """
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise ValueError(f"{name}: shape must be two non-negative ints, got {tuple(shape)}")
    n_out, n_in = int(shape[0]), int(shape[1])
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    for arr, what in ((indptr, "indptr"), (indices, "indices")):
        if arr.ndim != 1:
            raise ValueError(f"{name}: {what} must be 1-D, got shape {arr.shape}")
        if arr.dtype != np.int32:
            raise TypeError(f"{name}: {what} must be int32, got {arr.dtype}")
    if indptr.shape[0] != n_out + 1:
        raise ValueError(
            f"{name}: indptr must have n_out+1 = {n_out + 1} entries, got {indptr.shape[0]}"
        )
    if indptr[0] != 0:
        raise ValueError(f"{name}: indptr[0] must be 0, got {indptr[0]}")
    steps = np.diff(indptr)
    if np.any(steps < 0):
        r = int(np.argmax(steps < 0))
        raise ValueError(
            f"{name}: indptr must be non-decreasing (indptr[{r}]={indptr[r]} > "
            f"indptr[{r + 1}]={indptr[r + 1]})"
        )
    nnz = int(indptr[-1])
    if indices.shape[0] != nnz:
        raise ValueError(
            f"{name}: indices must have indptr[-1] = {nnz} entries, got {indices.shape[0]}"
        )
    if nnz:
        if indices.min() < 0:
            raise ValueError(f"{name}: indices must be >= 0, got {indices.min()}")
        if indices.max() >= n_in:
            raise ValueError(f"{name}: indices must be < n_in = {n_in}, got {indices.max()}")
        # Within a row, consecutive indices must strictly increase; the row boundaries are
        # the only places where a decrease is allowed.
        d = np.diff(indices.astype(np.int64))
        row_start = np.zeros(nnz, dtype=bool)
        starts = indptr[:-1][steps > 0]
        row_start[starts] = True
        bad = (d <= 0) & ~row_start[1:]
        if np.any(bad):
            k = int(np.argmax(bad)) + 1
            r = int(np.searchsorted(indptr, k, side="right") - 1)
            what = "duplicate" if d[k - 1] == 0 else "unsorted"
            raise ValueError(
                f"{name}: indices must be sorted and unique within each row "
                f"({what} column {indices[k]} in row {r})"
            )
    if data is not None:
        data = np.asarray(data)
        if data.dtype != np.float32:
            raise TypeError(f"{name}: data must be float32, got {data.dtype}")
        if data.shape != (nnz,):
            raise ValueError(f"{name}: data must have shape ({nnz},), got {data.shape}")


def transpose_index(indptr, indices, n_in: int):
    """Build the CSC view of a CSR pattern: ``(t_indptr, t_rows, t_perm)``.

    ``t_indptr``: int32 (n_in+1,); ``t_rows``: int32 (nnz,), the row of each entry, grouped by
    column and increasing within a column; ``t_perm``: int32 (nnz,), the position of that entry
    in ``data``. Cost O(nnz + n_in) (a stable counting sort by column). Build once per pattern.
    """
    n_out = len(indptr) - 1
    nnz = int(indptr[-1])
    rows = np.repeat(np.arange(n_out, dtype=np.int32), np.diff(indptr))  # row of each entry
    perm = np.argsort(indices, kind="stable").astype(np.int32)  # stable: rows stay increasing
    counts = np.bincount(indices, minlength=n_in) if nnz else np.zeros(n_in, dtype=np.int64)
    t_indptr = np.zeros(n_in + 1, dtype=np.int32)
    np.cumsum(counts, out=t_indptr[1:])
    return t_indptr, rows[perm].astype(np.int32), perm


def balanced_row_splits(indptr, n_parts: int) -> np.ndarray:
    """Split rows into ``n_parts`` contiguous chunks of about equal *nonzero* count.

    Returns int64 ``bounds`` of length ``n_parts+1``: chunk p is rows bounds[p]:bounds[p+1].
    Pruned layers have very uneven rows, so splitting by row count would leave one thread
    with most of the work. Rows are never split, so a row's outputs have one writer.
    """
    n_out = len(indptr) - 1
    if n_parts <= 1 or n_out == 0:
        return np.array([0, n_out], dtype=np.int64)
    # Weight each row by nnz + a constant so empty rows (which still write their output
    # row) are also spread, then cut at equal fractions of the running total.
    cost = np.diff(indptr).astype(np.int64) + 1
    cum = np.concatenate(([0], np.cumsum(cost)))
    targets = cum[-1] * np.arange(1, n_parts) / n_parts
    cuts = np.searchsorted(cum, targets, side="left")
    bounds = np.concatenate(([0], cuts, [n_out])).astype(np.int64)
    return np.maximum.accumulate(np.clip(bounds, 0, n_out))


LOCALITY_TILE = 16  # groups of rows that locality_order takes together


def locality_order(indptr, indices, tile: int = LOCALITY_TILE) -> np.ndarray:
    """The rows grouped by their first (smallest) column, the groups taken
    :data:`LOCALITY_TILE` at a time: int64 ``(n_rows,)``, empty rows last. Within a tile of
    groups, the first row of each group in turn, then the second of each, and so on.

    Why groups: a kernel reads, for each stored entry, the row of ``x`` of its column. Rows
    that read the same columns, computed one after another, find those ``x`` rows still in
    cache. In a RadiX-Net layer whose radix has place value ``s``, row ``r`` reads ``r, r + s,
    r + 2s, ...`` (mod n): rows ``r`` and ``r + s`` read the same columns, but in the natural order
    they are ``s`` rows apart (at ``s = 8,192`` the rows in between read all of ``x``, 105 MB at
    batch 100). Grouped by first column, they are neighbours.

    Why tiles: one group at a time, the 32 rows of a group read 32 rows of ``x`` that lie
    ``s`` rows apart (3.2 MB at 262,144 neurons), and write their outputs and read their ``dy``
    that far apart too: about a hundred streams of memory, each a few hundred bytes at a time,
    more than the hardware prefetchers follow. Sixteen groups at a time, each of those
    streams is read in runs of 16 rows. The tile's rows of ``x`` (32 x 16 of them, 205 KB at
    batch 100) stay in L2 while its 512 rows use them. Measured on the scaling study's strided
    layer (the three products, ms): 65,536 neurons at batch 50 on one thread (a rank's share
    on 2 MPI ranks) 31.0 -> 24.0; at batch 100 on 2 threads 18.6 -> 17.2; 262,144 neurons
    74.7 -> 67.3; 16,384 neurons 1.04-1.09x. Tiles of 8 measured about the same as 16; tiles of
    64 and 128 were slower (26.6 and 33.2 ms at batch 50). Rows whose columns are contiguous
    windows keep their order (each is a group of its own). ``tile=1``: one group at a time,
    which layers computed in column blocks take (``CSRPattern.orders(tiles=False)``): on a
    4,096-wide strided layer in 2 column blocks at batch 100, tiles of 16 were 1.3x slower.
    """
    n_rows = len(indptr) - 1
    filled = np.flatnonzero(np.diff(indptr) > 0)
    first = indices[indptr[:-1][filled]].astype(np.int64)
    sort = np.argsort(first, kind="stable")
    by_first, f = filled[sort], first[sort]
    starts = np.r_[True, f[1:] != f[:-1]] if len(f) else np.zeros(0, bool)
    group = np.cumsum(starts) - 1  # the group of each row, in by_first's order
    rank = np.arange(len(f)) - np.flatnonzero(starts)[group]  # its place within the group
    tiled = by_first[np.lexsort((group, rank, group // tile))]
    empty = np.setdiff1d(np.arange(n_rows), filled, assume_unique=True)
    return np.concatenate((tiled, empty)).astype(np.int64)


REUSE_WINDOW = 32  # rows: 32 rows x 32 nonzeros x 400-byte rows of x = 410 KB, in L2 (1 MB)
SCATTERED_BELOW = 0.5  # near reuses below which a pattern's rows read x far apart (CSRPattern.scattered)


@njit(cache=True)
def near_reuses(col_ptr, col_rows, position, window):
    """The fraction of reuses of a column (a row of ``x``) that come within ``window`` rows of
    its previous use, when the rows are computed in the order given by ``position`` (row r is
    computed ``position[r]``-th). ``col_ptr``/``col_rows``: for each column, the rows that read
    it (the transpose index). Cost O(nnz log(max column count))."""
    near = total = 0
    for c in range(len(col_ptr) - 1):
        lo, hi = col_ptr[c], col_ptr[c + 1]
        if hi - lo < 2:
            continue
        pos = np.empty(hi - lo, np.int64)
        for k in range(lo, hi):
            pos[k - lo] = position[col_rows[k]]
        pos.sort()
        for k in range(1, hi - lo):
            total += 1
            if pos[k] - pos[k - 1] <= window:
                near += 1
    return near / total if total else 1.0


def _better_order(indptr, indices, col_ptr, col_rows):
    """:func:`locality_order` if it puts clearly more reuses within :data:`REUSE_WINDOW` rows
    than the natural order does, else None."""
    n_rows = len(indptr) - 1
    order = locality_order(indptr, indices)
    natural = np.arange(n_rows, dtype=np.int64)
    if np.array_equal(order, natural):
        return None
    position = np.empty(n_rows, np.int64)
    position[order] = natural
    gain = near_reuses(col_ptr, col_rows, position, REUSE_WINDOW) - near_reuses(col_ptr, col_rows, natural, REUSE_WINDOW)
    return order if gain > 0.1 else None


def column_segments(indptr, indices, n_cols: int, n_blocks: int) -> np.ndarray:
    """Each row's entries cut by ``n_blocks`` equal ranges of columns: int64 ``seg[n_rows,
    n_blocks+1]``, row r's entries in column block b being ``seg[r, b] <= k < seg[r, b+1]``
    (``seg[r, 0] = indptr[r]``, ``seg[r, -1] = indptr[r+1]``; the columns of a row are sorted,
    so each block's entries are contiguous). Block b holds the columns from ``b * width`` to
    ``(b+1) * width`` with ``width = ceil(n_cols / n_blocks)``. O(nnz) time and memory."""
    n_rows = len(indptr) - 1
    width = max(1, -(-n_cols // n_blocks))
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))
    counts = np.bincount(rows * n_blocks + indices // width, minlength=n_rows * n_blocks).reshape(n_rows, n_blocks)
    seg = np.empty((n_rows, n_blocks + 1), np.int64)
    seg[:, 0] = indptr[:-1]
    np.cumsum(counts, axis=1, out=seg[:, 1:])
    seg[:, 1:] += seg[:, :1]
    return seg


def _ordered_indptr(indptr, order):
    """The indptr of the rows taken in ``order`` (for balancing chunks of that order)."""
    if order is None:
        return indptr
    counts = np.diff(indptr)[order]
    return np.concatenate(([0], np.cumsum(counts)))


@dataclass
class CSRPattern:
    """A canonical CSR pattern with its transpose index, built once and reused.

    ``indptr``/``indices``: the pattern; ``t_indptr``/``t_rows``/``t_perm``: its transpose
    (see :func:`transpose_index`); ``shape``: ``(n_out, n_in)``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    shape: tuple
    t_indptr: np.ndarray
    t_rows: np.ndarray
    t_perm: np.ndarray
    # what the backends derive from the pattern once (thread splits, copies on the GPU)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_arrays(cls, indptr, indices, shape, name: str = "pattern") -> "CSRPattern":
        indptr = np.ascontiguousarray(indptr, dtype=np.int32)
        indices = np.ascontiguousarray(indices, dtype=np.int32)
        shape = (int(shape[0]), int(shape[1]))
        check_csr(indptr, indices, None, shape, name=name)
        t_indptr, t_rows, t_perm = transpose_index(indptr, indices, shape[1])
        return cls(indptr, indices, shape, t_indptr, t_rows, t_perm)

    @classmethod
    def from_mask(cls, mask, name: str = "mask") -> "CSRPattern":
        """From a boolean ``(n_out, n_in)`` mask: a dense array or any ``scipy.sparse`` matrix."""
        if sp.issparse(mask):
            m = sp.csr_matrix(mask)
            m.eliminate_zeros()
            m.sum_duplicates()
            m.sort_indices()
        else:
            mask = np.asarray(mask)
            if mask.ndim != 2:
                raise ValueError(f"{name} must be 2-D (n_out, n_in), got shape {mask.shape}")
            m = sp.csr_matrix(mask.astype(bool))
        return cls.from_arrays(m.indptr, m.indices, m.shape, name=name)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def density(self) -> float:
        n = self.shape[0] * self.shape[1]
        return self.nnz / n if n else 0.0

    def row_of_entry(self) -> np.ndarray:
        """int32 (nnz,): the row (output neuron) of each stored entry."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(self.indptr))

    def to_scipy(self, data=None) -> sp.csr_matrix:
        """The pattern (boolean) or, with ``data``, the weights as a ``scipy.sparse.csr_matrix``."""
        if data is None:
            data = np.ones(self.nnz, dtype=bool)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)

    def splits(self, n_parts: int, tiles: bool = True) -> tuple:
        """(bounds of W's rows, bounds of W^T's rows) in ``n_parts`` chunks balanced by
        nonzeros (:func:`balanced_row_splits`), computed once per part count. The bounds cut the
        rows in the order of :meth:`orders` (``tiles`` as there; the natural order where that
        is None)."""
        key = ("splits", n_parts, tiles)
        if key not in self.cache:
            order, t_order = self.orders(tiles)
            self.cache[key] = (balanced_row_splits(_ordered_indptr(self.indptr, order), n_parts),
                               balanced_row_splits(_ordered_indptr(self.t_indptr, t_order), n_parts))
        return self.cache[key]

    def orders(self, tiles: bool = True) -> tuple:
        """(order of W's rows, order of W^T's rows) for the kernels: :func:`locality_order`
        where it brings reuses of ``x`` rows closer (:func:`near_reuses`; RadiX-Net layers with
        a strided radix), else None: the natural order (random layers, where sorting gains
        nothing and scatters the output rows: measured 15% slower). Computed once.
        ``tiles=False``: the same sides ordered, one group of rows at a time instead of tiles of
        them (the kernels take that with column blocks, :func:`locality_order`)."""
        if "orders" not in self.cache:
            self.cache["orders"] = (_better_order(self.indptr, self.indices, self.t_indptr, self.t_rows),
                                    _better_order(self.t_indptr, self.t_rows, self.indptr, self.indices))
        if tiles:
            return self.cache["orders"]
        if "orders, one group at a time" not in self.cache:
            order, t_order = self.cache["orders"]
            self.cache["orders, one group at a time"] = (
                None if order is None else locality_order(self.indptr, self.indices, tile=1),
                None if t_order is None else locality_order(self.t_indptr, self.t_rows, tile=1))
        return self.cache["orders, one group at a time"]

    def scattered(self) -> tuple:
        """(W, W^T): whether the rows, computed in the order of :meth:`orders`, read their rows
        of ``x`` far apart: under :data:`SCATTERED_BELOW` of the reuses of a row of ``x`` come
        within :data:`REUSE_WINDOW` rows of its previous use (:func:`near_reuses`). Random layers
        of fan-in 32 at 65,536 neurons: 0.016; RadiX-Nets: 1.0 (0.74 for a random layer from 784
        inputs, whose ``x`` is in L2 anyway). Such layers take column blocks that fit L3 when
        ``x`` is larger (``kernels.scattered_column_blocks``). Computed once."""
        if "scattered" not in self.cache:
            order, t_order = self.orders()

            def far(order, col_ptr, col_rows, n_rows):
                position = np.empty(n_rows, np.int64)
                position[np.arange(n_rows) if order is None else order] = np.arange(n_rows)
                return near_reuses(col_ptr, col_rows, position, REUSE_WINDOW) < SCATTERED_BELOW

            self.cache["scattered"] = (far(order, self.t_indptr, self.t_rows, self.shape[0]),
                                       far(t_order, self.indptr, self.indices, self.shape[1]))
        return self.cache["scattered"]

    def segments(self, n_blocks: int, transpose: bool = False) -> np.ndarray:
        """:func:`column_segments` of W (or of W^T, ``transpose=True``) in ``n_blocks`` column
        blocks, computed once per block count (the kernels' column blocking)."""
        key = ("segments", n_blocks, transpose)
        if key not in self.cache:
            if transpose:
                self.cache[key] = column_segments(self.t_indptr, self.t_rows, self.shape[0], n_blocks)
            else:
                self.cache[key] = column_segments(self.indptr, self.indices, self.shape[1], n_blocks)
        return self.cache[key]

    def nbytes(self) -> int:
        """Bytes to store the weights in CSR: indptr + indices + float32 data."""
        return self.indptr.nbytes + self.indices.nbytes + 4 * self.nnz
