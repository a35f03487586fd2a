"""Numba kernels for a sparse layer, each with a plain NumPy reference twin.

Conventions (see ``sparsenn.csr`` for the CSR vocabulary):

* ``W`` is CSR ``(n_out, n_in)``: ``indptr[n_out+1]``, ``indices[nnz]`` (sorted, unique per
  row), ``data[nnz]``.
* Activations are *features-major*: ``x`` is ``(n_in, batch)`` and C-contiguous, so ``x[c]``
  is one contiguous row of ``batch`` values. Every inner loop below runs along the batch over
  contiguous memory, which LLVM turns into SIMD instructions.
* ``bounds[n_parts+1]`` (int64) splits the rows into contiguous chunks of about equal nonzero
  count (``sparsenn.csr.balanced_row_splits``). ``prange`` runs one chunk per thread. A row
  belongs to exactly one chunk, so every output row has a single writer: no races, no atomics.
* Outputs are preallocated by the caller and *overwritten*.

The kernels are compiled for whatever dtype they are given (float32 for training, float64 for
gradient checks). To step through them in a debugger or see a readable traceback, run with
``NUMBA_DISABLE_JIT=1``: they then execute as the plain Python they are written in.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from sparsenn.simd import (hsum, hsum8_store, prefetch, transpose16, vadd, vbroadcast, vfma, vload, vmask_tail, vmul,
                           vstore, vzero)

_JIT = dict(parallel=True, fastmath=True, cache=True)


# ---------------------------------------------------------------------------------------------
# y = W x   (forward), and dx = W^T dy via the transpose index
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _weight(data, perm, k):
    """data[k], or data[perm[k]] when a permutation is given (compiled away when perm is None)."""
    if perm is None:
        return data[k]
    return data[perm[k]]


@njit(parallel=True, fastmath=True, cache=True)
def spmm_plain(indptr, indices, data, x, out, bounds, perm=None):
    """out = W @ x, the textbook loop: for each row r, for each stored entry k of it,
    ``out[r, :] += data[k] * x[indices[k], :]``. Same arguments as :func:`spmm`.

    This is the loop to read first; :func:`spmm` computes the same sums, faster.
    """
    batch = x.shape[1]
    for p in prange(len(bounds) - 1):
        for r in range(bounds[p], bounds[p + 1]):
            y = out[r]
            for b in range(batch):
                y[b] = 0.0
            for k in range(indptr[r], indptr[r + 1]):
                w = _weight(data, perm, k)
                xk = x[indices[k]]
                for b in range(batch):
                    y[b] += w * xk[b]


# A small array on the stack. LLVM knows an alloca cannot alias any other array, and when every
# index into it is a compile-time constant (a fixed-length loop, fully vectorised) it keeps the
# whole array in registers. Numba has no stack arrays, so this is a two-line intrinsic.
if config.DISABLE_JIT:  # plain Python (debugging): a heap array behaves the same

    def _registers(n, dtype):
        return np.empty(n, dtype)

else:

    @intrinsic
    def _alloca(typingctx, n, dtype):
        if not isinstance(n, types.IntegerLiteral):  # the length must be known at compile time
            return None

        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_data_type(dtype.dtype), size=n.literal_value)

        return types.CPointer(dtype.dtype)(n, dtype), codegen

    @njit(inline="always")
    def _registers(n, dtype):
        return carray(_alloca(n, dtype), (n,))


@njit(inline="always")
def _row(order, i):
    """order[i], or i when no order is given (compiled away when order is None)."""
    if order is None:
        return i
    return order[i]


@njit(inline="always")
def _bias(bias, r, like):
    """bias[r], or a zero of like's dtype when there is no bias (compiled away when None)."""
    if bias is None:
        return like * 0
    return bias[r]


@njit(inline="always")
def _entries(indptr, seg, r, b):
    """Row r's entries in column block b: (seg[r, b], seg[r, b+1]); all of the row's,
    (indptr[r], indptr[r+1]), when there are no blocks (seg None: compiled away)."""
    if seg is None:
        return indptr[r], indptr[r + 1]
    return seg[r, b], seg[r, b + 1]


@njit(inline="always")
def _n_blocks(seg):
    """The number of column blocks: 1 without ``seg``."""
    if seg is None:
        return 1
    return seg.shape[1] - 1


@njit(inline="always")
def _spmm_block(indptr, indices, data, perm, bias, order, x, out, r0, r1, b0, W):
    """out[r, b0:b0+W] = sum_k w_k x[c_k, b0:b0+W] (+ bias[r]) for rows r0 <= r < r1; W a literal.

    The W accumulators live in registers (W/16 zmm for float32) for all of a row's nonzeros,
    and the row is stored once: per nonzero, one broadcast weight, W/16 loads of x, W/16 FMAs.
    """
    acc = _registers(W, x.dtype)
    for i in range(r0, r1):
        r = _row(order, i)
        for b in range(W):
            acc[b] = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            w = _weight(data, perm, k)
            xk = x[indices[k], b0:b0 + W]  # a slice, not xk[b0 + b]: a provably non-negative index
            for b in range(W):
                acc[b] += w * xk[b]
        y = out[r, b0:b0 + W]
        br = _bias(bias, r, acc[0])
        for b in range(W):
            y[b] = acc[b] + br


@njit(inline="always")
def _spmm_block_pair(indptr, indices, data, perm, bias, order, x, out, r0, r1, b0, W, c0, V):
    """:func:`_spmm_block` for two blocks in one pass over the nonzeros: W columns from b0 and
    V columns from c0 (W, V literals; the blocks may overlap). Batch 100 = [0, 64) + [52, 100):
    7 zmm accumulators, each row's indices, weights and x rows read once instead of twice."""
    acc = _registers(W, x.dtype)
    acc2 = _registers(V, x.dtype)
    for i in range(r0, r1):
        r = _row(order, i)
        for b in range(W):
            acc[b] = 0.0
        for b in range(V):
            acc2[b] = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            w = _weight(data, perm, k)
            xr = x[indices[k]]
            xk, xk2 = xr[b0:b0 + W], xr[c0:c0 + V]
            for b in range(W):
                acc[b] += w * xk[b]
            for b in range(V):
                acc2[b] += w * xk2[b]
        br = _bias(bias, r, acc[0])
        y, y2 = out[r, b0:b0 + W], out[r, c0:c0 + V]
        for b in range(W):
            y[b] = acc[b] + br
        for b in range(V):
            y2[b] = acc2[b] + br


@njit(inline="always")
def _spmm_tail(indptr, indices, data, perm, bias, order, x, out, r0, r1, b0):
    """out[r, b0:] for rows r0 <= r < r1, any width: batches under 48 columns.

    Accumulates in the output row (in L1), four nonzeros per pass over it.
    """
    width = x.shape[1] - b0
    for i in range(r0, r1):
        r = _row(order, i)
        y = out[r, b0:]
        br = _bias(bias, r, x[0, 0])
        for b in range(width):
            y[b] = br
        k, end = indptr[r], indptr[r + 1]
        while k + 4 <= end:
            w0, w1 = _weight(data, perm, k), _weight(data, perm, k + 1)
            w2, w3 = _weight(data, perm, k + 2), _weight(data, perm, k + 3)
            x0, x1 = x[indices[k], b0:], x[indices[k + 1], b0:]
            x2, x3 = x[indices[k + 2], b0:], x[indices[k + 3], b0:]
            for b in range(width):
                y[b] += w0 * x0[b] + w1 * x1[b] + w2 * x2[b] + w3 * x3[b]
            k += 4
        while k < end:
            w, xk = _weight(data, perm, k), x[indices[k], b0:]
            for b in range(width):
                y[b] += w * xk[b]
            k += 1


_WIDTHS = (48, 64, 96, 128)  # register-block widths: multiples of 16, at least 3 zmm (see spmm)
_PAIRS = ((48, 2), (48, 48), (64, 48), (64, 64))  # two blocks in one pass, for batches that are not a width


@njit(cache=True)
def batch_blocks(batch):
    """The passes of register blocks that cover ``batch`` columns: int64 (n_passes, 4) rows of
    (b0, W, c0, V): a block of W columns from b0 and, when V > 0, a second block of V columns
    from c0, both computed in the same pass over the nonzeros.

    Passes of one 128-column block while 128 columns remain. The rest, ending at ``batch``, by
    the one pass with the fewest columns: a single block of 48, 64, 96 or 128 columns, or a
    pair from ``_PAIRS``; the last block ends at ``batch`` and overlaps its neighbour if need
    be (overlapping columns are computed twice, the same way, and written twice with the same
    value). Batch 100 = [0, 64) + [52, 100) in one pass; batch 50 = [0, 48) + [48, 50). Under
    48 columns: one pass of width 0, meaning the tail loop from column 0.
    """
    if batch < 48:
        return np.zeros((1, 4), np.int64)
    n128 = batch // 128
    rest = batch - 128 * n128
    start = batch - rest
    best, w1, w2 = 1 << 30, 0, 0
    if rest > 0:
        for a in _WIDTHS:  # one block, ending at batch
            if rest <= a <= batch and a < best:
                best, w1, w2 = a, a, 0
        for pair in _PAIRS:  # two: the first from `start`, the second ending at batch
            a, b = pair
            if a <= rest and b <= batch and a + b >= rest and a + b < best:
                best, w1, w2 = a + b, a, b
    out = np.zeros((n128 + (w1 > 0), 4), np.int64)
    for i in range(n128):
        out[i, 0], out[i, 1] = 128 * i, 128
    if w2 > 0:
        out[n128, 0], out[n128, 1], out[n128, 2], out[n128, 3] = start, w1, batch - w2, w2
    elif w1 > 0:
        out[n128, 0], out[n128, 1] = batch - w1, w1
    return out


# One compiled kernel per block width (or pair of widths): each holds a single copy of the
# block loop, so LLVM allocates its registers for that loop alone (one kernel with four inlined
# widths and a runtime choice between them was measured 1.5x slower on the 96-column block).
# All take the same arguments; c0 is used by the pairs only.
@njit(**_JIT)
def _spmm_128(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0 = max(b0, 0)  # tells LLVM that b0 >= 0: slicing at b0 then needs no wraparound per nonzero
    for p in prange(len(bounds) - 1):
        _spmm_block(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 128)


@njit(**_JIT)
def _spmm_96(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0 = max(b0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 96)


@njit(**_JIT)
def _spmm_64(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0 = max(b0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 64)


@njit(**_JIT)
def _spmm_48(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0 = max(b0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 48)


@njit(**_JIT)
def _spmm_48_48(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0, c0 = max(b0, 0), max(c0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block_pair(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 48, c0, 48)


@njit(**_JIT)
def _spmm_48_2(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    """Batch 50, each rank's share of a batch of 100 on 2 MPI ranks: the 2 columns past the
    48-column block as 2 scalar accumulators in the same pass. Measured on one thread against
    the [0, 48) + [2, 50) pair it replaced: 1.33x on LeNet-300-100's RadiX fc1 (46 against 61
    us), 1.07x on a 65,536-wide RadiX layer (9.8 against 10.5 ms, memory-bound). A 16-column
    second block from column 34, or two 32-column blocks, compiled to scalar loops and took
    1.5-6x as long as the pair of 48s (docs/kernels.md)."""
    b0, c0 = max(b0, 0), max(c0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block_pair(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 48, c0, 2)


@njit(**_JIT)
def _spmm_64_48(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0, c0 = max(b0, 0), max(c0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block_pair(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 64, c0, 48)


@njit(**_JIT)
def _spmm_64_64(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    b0, c0 = max(b0, 0), max(c0, 0)
    for p in prange(len(bounds) - 1):
        _spmm_block_pair(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0, 64, c0, 64)


@njit(**_JIT)
def _spmm_narrow(indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order):
    for p in prange(len(bounds) - 1):
        _spmm_tail(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], b0)


_BLOCK_KERNELS = {(128, 0): _spmm_128, (96, 0): _spmm_96, (64, 0): _spmm_64, (48, 0): _spmm_48,
                  (48, 2): _spmm_48_2, (48, 48): _spmm_48_48, (64, 48): _spmm_64_48, (64, 64): _spmm_64_64,
                  (0, 0): _spmm_narrow}


SPMM_VECTOR_MAX_X = 2 << 20  # bytes of x up to which spmm takes the explicit-vector kernels
COL_BLOCK_X = 512 << 10  # bytes of x's rows per column block: half of a core's L2 (1 MB) ...
COL_BLOCK_L2 = 1 << 20  # ... and at most all of it (a core's L2)
COL_BLOCK_MIN = 16  # entries per row and block, on average, below which blocks cost more than they save


def column_blocks(n_rows: int, nnz: int, x) -> int:
    """How many column blocks :func:`spmm` and :func:`sddmm` should cut the rows of a CSR matrix
    (``n_rows`` rows, ``nnz`` entries) into, for the operand ``x``: 1 (none) unless the float32
    vector kernels run, ``x`` is over a core's L2 (:data:`COL_BLOCK_L2`), and the rows are long
    enough to be cut into blocks whose rows of ``x`` fit in it while keeping
    :data:`COL_BLOCK_MIN` entries per row and block on average (each block's pass re-reads, and
    for spmm re-writes, its output rows, so blocks pay where rows are long). Then as many blocks
    as give :data:`COL_BLOCK_X` each, within that limit. Measured on 2 threads (docs/kernels.md,
    "Column blocks"): 4096x4096 at batch 128, density 0.1 (4 blocks) 1.1-1.4x, density 0.01 (2
    blocks) 1.1-1.2x; a 4,096-wide RadiX layer of fan-in 32 at batch 100 (2 blocks) 1.2-1.4x.
    Layers whose ``x`` would need blocks of fewer entries than that (fan-in 32 beyond 8,192
    neurons at batch 50-100) keep none: there the register blocks are faster."""
    if not (x.dtype == np.float32 and x.ndim == 2 and 16 <= x.shape[1] <= 143 and x.flags.c_contiguous):
        return 1
    fit = -(-x.nbytes // COL_BLOCK_L2)  # the fewest blocks whose rows of x fit in L2
    most = nnz // (COL_BLOCK_MIN * max(n_rows, 1))  # the most that keep COL_BLOCK_MIN entries each
    if fit < 2 or fit > most:
        return 1
    return min(-(-x.nbytes // COL_BLOCK_X), most)


COL_BLOCK_SCATTERED_X = 16 << 20  # bytes of x beyond which scattered (random) layers take column blocks ...
COL_BLOCK_X_L3 = 10 << 20  # ... of at most this many bytes each (a third of the 32 MB L3) ...
COL_BLOCK_MIN_SCATTERED = 4  # ... while the rows keep this many entries per block on average


def scattered_column_blocks(n_rows: int, nnz: int, x) -> int:
    """:func:`column_blocks` for a layer whose rows read their rows of ``x`` far apart
    (``CSRPattern.scattered``: random layers), when ``x`` is beyond L3's reach
    (:data:`COL_BLOCK_SCATTERED_X`, half of the 32 MB L3): blocks of at most
    :data:`COL_BLOCK_X_L3` of ``x`` (so that a block's rows of ``x`` stay in L3 while every row
    of ``W`` reads its entries from it, instead of each entry's row coming from DRAM), keeping
    :data:`COL_BLOCK_MIN_SCATTERED` entries per row and block on average; else 1.
    Measured, random layers of fan-in 32, batch 100, 2 threads, forward / ``W^T dy`` / weight
    gradient (docs/kernels.md, "Beyond the caches"): 65,536 neurons (x 25 MB, 3 blocks) 16.2 /
    27.1 / 12.6 -> 9.6 / 14.0 / 10.3 ms; 262,144 (x 100 MB, 8 blocks) 110 / 137 / 74 -> 71 / 92 /
    69 ms; at 16,384 (x 6.3 MB, in L3) no block count gained. On RadiX-Nets, whose neighbouring
    rows read the same rows of ``x``, such blocks were 1.2-1.5x slower, so they keep none."""
    if not (x.dtype == np.float32 and x.ndim == 2 and 16 <= x.shape[1] <= 143 and x.flags.c_contiguous):
        return 1
    if x.nbytes <= COL_BLOCK_SCATTERED_X:
        return 1
    n = min(-(-x.nbytes // COL_BLOCK_X_L3), nnz // (COL_BLOCK_MIN_SCATTERED * max(n_rows, 1)))
    return n if n >= 2 else 1



def spmm(indptr, indices, data, x, out, bounds, perm=None, bias=None, order=None, seg=None):
    """out = W @ x (+ bias[:, None]) for CSR ``W``.

    indptr[n_out+1], indices[nnz], data[nnz]: CSR of W (n_out, n_in); perm[nnz] (optional): the
    value of entry k is data[perm[k]] instead of data[k] (used for W^T, below); bias[n_out]
    (optional): added to each output row, in the same pass. order[n_out] (optional): the rows
    in the order to compute them (``sparsenn.csr.locality_order``); bounds then cut that order.
    x[n_in, batch]: C-contiguous.  out[n_out, batch]: overwritten.  bounds[n_parts+1]: row chunks.
    Cost O(nnz * batch) multiply-adds; reads each row of x once per nonzero in its column.

    What it adds to :func:`spmm_plain`: register blocking along the batch. The batch is covered
    by passes over the nonzeros (:func:`batch_blocks`), one kernel call per pass, each with one
    or two blocks of 48 to 128 columns; a block of an output row stays in registers across all
    of the row's nonzeros and is stored once (``_spmm_block``), so the only memory traffic per
    nonzero is its x row. Columns that are not a block width are covered by a second block
    that overlaps the first, in the same pass (``_spmm_block_pair``), rather than a loop over a
    few columns (on LeNet-300-100's first layer at batch 100 a 4-column tail loop cost as much
    as the 96 columns before it) or a second pass (1.2x slower at batch 100, 1.35x at batch 50).
    Measured gains over the plain loop: docs/kernels.md.

    float32 batches of 16 to 143 columns whose ``x`` takes at most 2 MB (``SPMM_VECTOR_MAX_X``)
    take the same register blocking written with explicit 16-lane vectors instead
    (``_spmm_rows16``, :mod:`sparsenn.simd`): the whole batch in one pass, ``batch // 16``
    accumulators and one more for the last 16 columns. On layers whose ``x`` is in the caches
    that is 1.1-1.3x the blocks above (LeNet-300-100's RadiX fc1 at batch 100: 37 -> 29 us
    forward, 40 -> 32 us ``W^T dy``); on larger ones the blocks are faster (RadiX layers at
    batch 100, 2 threads: the same at 8,192 neurons, x 3.3 MB; 1.2x the vectors at 16,384;
    1.3-1.6x at 65,536 and 262,144; at batch 50 on one thread, a rank's share on 2 MPI ranks,
    the vectors 1.1x faster with x at 1.6 MB, the blocks 1.1x faster at 3.1 MB and 1.3-1.5x at
    12.5 MB), for a reason not found, so they keep the blocks.

    seg[n_out, n_blocks+1] (optional, float32 vector kernels only): the rows' entries cut by
    column blocks (:func:`sparsenn.csr.column_segments`; :func:`column_blocks` says when): the
    rows are computed once per block, so only that block's rows of ``x`` are read while it
    runs, from L2 instead of L3 (docs/kernels.md, "Column blocks").
    """
    batch = x.shape[1]
    vector = (x.dtype == np.float32 and data.dtype == np.float32 and out.dtype == np.float32 and 16 <= batch <= 143
              and x.flags.c_contiguous and out.flags.c_contiguous)
    if vector and (x.nbytes <= SPMM_VECTOR_MAX_X or seg is not None):
        _SPMM_KERNELS[batch // 16](indptr, indices, data, x, out, bounds, perm, bias, order, seg)
        return
    for b0, w, c0, v in _blocks_of(batch):
        _BLOCK_KERNELS[w, v](indptr, indices, data, x, out, bounds, b0, c0, perm, bias, order)


@njit(inline="always")
def _spmm_rows16(indptr, indices, data, perm, bias, order, x, out, r0, r1, NV, seg):
    """out[r] = sum_k w_k x[c_k] (+ bias[r]) for the rows r0 <= i < r1 of the order, float32,
    batch = 16 NV + a tail of 0-15 columns (NV a compile-time constant, 1 to 8): NV vector
    accumulators, and one more for the last 16 columns when there is a tail. That one overlaps
    the last whole vector; the overlapping lanes hold the same sums in the same order, so
    storing both is safe.
    Per nonzero: one broadcast weight, one FMA per accumulator with its slice of ``x[c_k]``.
    With ``seg`` (column blocks, :func:`spmm`), the rows are computed once per block of
    columns, each pass adding its block's sums to the output row."""
    batch = x.shape[1]
    tb = batch - 16
    tail = batch - 16 * NV
    for b in range(_n_blocks(seg)):
        for i in range(r0, r1):
            r = _row(order, i)
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = at = vbroadcast(
                np.float32(_bias(bias, r, x[0, 0]) if b == 0 else 0.0))
            k0, k1 = _entries(indptr, seg, r, b)
            for k in range(k0, k1):
                xr = x[indices[k]]
                w = vbroadcast(_weight(data, perm, k))
                a0 = vfma(vload(xr, 0), w, a0)  # NV >= 1; the tests below are constants per kernel
                if NV > 1:
                    a1 = vfma(vload(xr, 16), w, a1)
                if NV > 2:
                    a2 = vfma(vload(xr, 32), w, a2)
                if NV > 3:
                    a3 = vfma(vload(xr, 48), w, a3)
                if NV > 4:
                    a4 = vfma(vload(xr, 64), w, a4)
                if NV > 5:
                    a5 = vfma(vload(xr, 80), w, a5)
                if NV > 6:
                    a6 = vfma(vload(xr, 96), w, a6)
                if NV > 7:
                    a7 = vfma(vload(xr, 112), w, a7)
                if tail > 0:
                    at = vfma(vload(xr, tb), w, at)
            y = out[r]
            if b > 0:  # (only with column blocks) add to what the blocks before wrote
                a0 = vadd(a0, vload(y, 0))
                if NV > 1:
                    a1 = vadd(a1, vload(y, 16))
                if NV > 2:
                    a2 = vadd(a2, vload(y, 32))
                if NV > 3:
                    a3 = vadd(a3, vload(y, 48))
                if NV > 4:
                    a4 = vadd(a4, vload(y, 64))
                if NV > 5:
                    a5 = vadd(a5, vload(y, 80))
                if NV > 6:
                    a6 = vadd(a6, vload(y, 96))
                if NV > 7:
                    a7 = vadd(a7, vload(y, 112))
                if tail > 0:
                    at = vadd(at, vload(y, tb))
            if tail > 0:
                vstore(y, tb, at)
            vstore(y, 0, a0)
            if NV > 1:
                vstore(y, 16, a1)
            if NV > 2:
                vstore(y, 32, a2)
            if NV > 3:
                vstore(y, 48, a3)
            if NV > 4:
                vstore(y, 64, a4)
            if NV > 5:
                vstore(y, 80, a5)
            if NV > 6:
                vstore(y, 96, a6)
            if NV > 7:
                vstore(y, 112, a7)


@functools.lru_cache(maxsize=64)
def _blocks_of(batch: int) -> tuple:
    """:func:`batch_blocks` as a tuple, computed once per batch size (spmm runs every step)."""
    return tuple(tuple(int(v) for v in row) for row in batch_blocks(batch))


def _spmm_vector_kernel(NV):
    """The compiled kernel for batches of 16 NV to 16 NV + 15 columns: one per vector count, as
    one per block width above (each holds a single copy of the row loop, for LLVM to allocate
    its registers to). NV is a closure constant, so Numba compiles it in and caches each
    kernel apart."""

    @njit(**_JIT)
    def kernel(indptr, indices, data, x, out, bounds, perm, bias, order, seg):
        for p in prange(len(bounds) - 1):
            _spmm_rows16(indptr, indices, data, perm, bias, order, x, out, bounds[p], bounds[p + 1], NV, seg)

    return kernel


_SPMM_KERNELS = (None,) + tuple(_spmm_vector_kernel(nv) for nv in range(1, 9))  # by batch // 16


def spmm_ref(indptr, indices, data, x, perm=None):
    """NumPy twin of :func:`spmm`: returns ``W @ x`` (n_out, batch)."""
    if perm is not None:
        data = data[perm]
    n_out = len(indptr) - 1
    rows = np.repeat(np.arange(n_out), np.diff(indptr))
    out = np.zeros((n_out, x.shape[1]), dtype=np.result_type(data, x))
    np.add.at(out, rows, data[:, None] * x[indices])
    return out


# dx = W^T dy is the same kernel run on the transpose: the CSC arrays of W (t_indptr, t_rows)
# are a CSR matrix of shape (n_in, n_out) whose values are data[t_perm]. Passing perm=t_perm reads
# them in place. (Gathering data[t_perm] into a buffer first was measured 2.5x slower on a
# 4096x4096 layer at density 0.1: a separate, single-threaded pass of random reads.)


# ---------------------------------------------------------------------------------------------
# dW[k] = dy[row_k] . x[col_k]   (weight gradient on the stored pattern: SDDMM)
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=True, cache=True)
def sddmm_plain(indptr, indices, dy, x, out, bounds):
    """out[k] = dot(dy[r], x[indices[k]]), the textbook loop. Same arguments as :func:`sddmm`."""
    batch = x.shape[1]
    for p in prange(len(bounds) - 1):
        for r in range(bounds[p], bounds[p + 1]):
            for k in range(indptr[r], indptr[r + 1]):
                xk = x[indices[k]]
                s = dy[r, 0] * 0  # zero of the arrays' dtype: the sum stays in float32 for float32
                for b in range(batch):
                    s += dy[r, b] * xk[b]
                out[k] = s


@njit(inline="always")
def _dots8(g, x, indices, k, out, batch, zero):
    """out[k:k+8] = dot(g, x[indices[k + j]]) for j < 8: one pass over the batch, eight sums."""
    x0, x1, x2, x3 = x[indices[k]], x[indices[k + 1]], x[indices[k + 2]], x[indices[k + 3]]
    x4, x5, x6, x7 = x[indices[k + 4]], x[indices[k + 5]], x[indices[k + 6]], x[indices[k + 7]]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
    for b in range(batch):
        gb = g[b]
        s0 += gb * x0[b]
        s1 += gb * x1[b]
        s2 += gb * x2[b]
        s3 += gb * x3[b]
        s4 += gb * x4[b]
        s5 += gb * x5[b]
        s6 += gb * x6[b]
        s7 += gb * x7[b]
    out[k], out[k + 1], out[k + 2], out[k + 3] = s0, s1, s2, s3
    out[k + 4], out[k + 5], out[k + 6], out[k + 7] = s4, s5, s6, s7


@njit(inline="always")
def _dots4(g, x, indices, k, out, batch, zero):
    """out[k:k+4], as :func:`_dots8` with four sums."""
    x0, x1, x2, x3 = x[indices[k]], x[indices[k + 1]], x[indices[k + 2]], x[indices[k + 3]]
    s0 = s1 = s2 = s3 = zero
    for b in range(batch):
        gb = g[b]
        s0 += gb * x0[b]
        s1 += gb * x1[b]
        s2 += gb * x2[b]
        s3 += gb * x3[b]
    out[k], out[k + 1], out[k + 2], out[k + 3] = s0, s1, s2, s3


@njit(**_JIT)
def sddmm_any(indptr, indices, dy, x, out, bounds, order=None):
    """:func:`sddmm` for any dtype and batch, written as scalar loops that LLVM vectorises: the
    float64 gradient checks and batches under 16 columns take it. Same arguments.

    What it adds to :func:`sddmm_plain`: eight entries of a row per pass (then four, then one
    at a time), so each load of ``dy[r, b]`` serves eight dot products, the eight SIMD
    accumulators are independent chains of FMAs (one FMA's latency is hidden behind the
    other seven), and the eight horizontal sums that end them overlap. Accumulation is in the
    arrays' dtype (float32 in training: a 128-term dot product in 16 SIMD lanes, relative error
    about 1e-6; float64 for gradient checks). The sum must start from a zero of that dtype: a
    Python ``0.0`` is float64 and kept the old loop scalar.
    Measured, 2 threads: four entries per pass was 1.2-1.3x the plain loop; eight then four is
    1.05-1.1x that at batch 100 (LeNet-300-100 RadiX fc1: 63 against 69 us) and 1.3-1.4x at
    batch 50. Sixteen per pass measured the same as eight. The explicit-vector kernels of
    :func:`sddmm` are 1.3-2x this one where they apply.
    """
    batch = x.shape[1]
    for p in prange(len(bounds) - 1):
        for i in range(bounds[p], bounds[p + 1]):
            r = _row(order, i)
            g = dy[r]
            zero = g[0] * 0
            k, end = indptr[r], indptr[r + 1]
            while k + 8 <= end:
                _dots8(g, x, indices, k, out, batch, zero)
                k += 8
            if k + 4 <= end:
                _dots4(g, x, indices, k, out, batch, zero)
                k += 4
            while k < end:
                xk = x[indices[k]]
                s = zero
                for b in range(batch):
                    s += g[b] * xk[b]
                out[k] = s
                k += 1


@njit(inline="always")
def _dot16(xr, g, NV, gt):
    """The 16-lane partial sums of dot(g, xr) over 16 NV + tail columns (tail 0-15): NV whole
    vectors (NV a compile-time constant: the loop is unrolled, one FMA each), then the last 16
    columns against gt, g's last 16 with the lanes the vectors already counted zeroed (all zero
    when tail = 0: one wasted FMA, cheaper than a branch per entry)."""
    a = vfma(vload(xr, xr.shape[0] - 16), gt, vzero())
    for c in range(NV):
        a = vfma(vload(xr, 16 * c), vload(g, 16 * c), a)
    return a


@njit(inline="always")
def _sddmm_rows(indptr, indices, dy, x, out, r0, r1, order, NV, G, seg):
    """out[k] = dot(dy[r], x[c_k]) for the rows r0 <= i < r1 of the order; float32, batch =
    16 NV + 0-15 columns (NV a compile-time constant, 1 to 8). G (a constant, 8 or 4): the
    entries taken together, eight with one tree of horizontal sums or four with one each.
    With ``seg`` (column blocks), one pass over the rows per block of columns."""
    batch = x.shape[1]
    tail = batch - 16 * NV
    for blk in range(_n_blocks(seg)):
        for i in range(r0, r1):
            r = _row(order, i)
            g = dy[r]
            gt = vmask_tail(vload(g, batch - 16), tail)
            k, end = _entries(indptr, seg, r, blk)
            while G == 8 and k + 8 <= end:  # eight entries: eight independent chains of FMAs, one tree of sums
                a0 = _dot16(x[indices[k]], g, NV, gt)
                a1 = _dot16(x[indices[k + 1]], g, NV, gt)
                a2 = _dot16(x[indices[k + 2]], g, NV, gt)
                a3 = _dot16(x[indices[k + 3]], g, NV, gt)
                a4 = _dot16(x[indices[k + 4]], g, NV, gt)
                a5 = _dot16(x[indices[k + 5]], g, NV, gt)
                a6 = _dot16(x[indices[k + 6]], g, NV, gt)
                a7 = _dot16(x[indices[k + 7]], g, NV, gt)
                hsum8_store(a0, a1, a2, a3, a4, a5, a6, a7, out, k)
                k += 8
            while k + 4 <= end:  # (G = 4) four entries, four rows of x in flight
                a0 = _dot16(x[indices[k]], g, NV, gt)
                a1 = _dot16(x[indices[k + 1]], g, NV, gt)
                a2 = _dot16(x[indices[k + 2]], g, NV, gt)
                a3 = _dot16(x[indices[k + 3]], g, NV, gt)
                out[k], out[k + 1], out[k + 2], out[k + 3] = hsum(a0), hsum(a1), hsum(a2), hsum(a3)
                k += 4
            while k < end:
                out[k] = hsum(_dot16(x[indices[k]], g, NV, gt))
                k += 1


def _sddmm_vector_kernel(NV, G=8):
    """The compiled kernel for batches of 16 NV to 16 NV + 15 columns, entries G at a time, as
    :func:`_spmm_vector_kernel`."""

    @njit(**_JIT)
    def kernel(indptr, indices, dy, x, out, bounds, order, seg):
        for p in prange(len(bounds) - 1):
            _sddmm_rows(indptr, indices, dy, x, out, bounds[p], bounds[p + 1], order, NV, G, seg)

    return kernel


_SDDMM_KERNELS = (None,) + tuple(_sddmm_vector_kernel(nv) for nv in range(1, 9))  # by batch // 16
_SDDMM_KERNELS4 = (None,) + tuple(_sddmm_vector_kernel(nv, 4) for nv in range(1, 9))  # entries four at a time
SDDMM_GROUP8_MAX_X = 2 << 20  # bytes of x beyond which ordered (RadiX) layers take four entries at a time


def sddmm(indptr, indices, dy, x, out, bounds, order=None, seg=None):
    """out[k] = dot(dy[r], x[indices[k]]) for every stored entry k of row r.

    This is ``(dy @ x.T)`` sampled at the pattern of W: the gradient of ``y = W x`` with
    respect to the stored weights only. Connections that do not exist get no gradient.
    indptr[n_out+1], indices[nnz]: pattern of W (n_out, n_in).  dy[n_out, batch],
    x[n_in, batch]: C-contiguous.  out[nnz]: overwritten.  bounds[n_parts+1]: row chunks.
    Cost O(nnz * batch). order[n_out] (optional): the rows in the order to compute them, as
    for :func:`spmm`.

    What it adds to :func:`sddmm_plain`, for float32 and batches of 16 to 143 columns: each
    entry's dot product is written with explicit 16-lane vectors (:mod:`sparsenn.simd`). Per
    row, each of eight entries streams its row of ``x`` once, front to back, in a fully
    unrolled chain of fused multiply-adds against ``dy[r]`` (in L1); the last ``batch % 16``
    columns are one more vector FMA against a copy of ``dy[r]``'s last 16 columns with the
    lanes already counted zeroed, not a scalar loop; and the eight results are summed across
    their lanes together, by one tree of shuffles. The vector count is a compile-time constant
    (one kernel per count, :func:`_sddmm_vector_kernel`). Accumulation is in float32 (a
    128-term dot product in 16 lanes: relative error about 1e-6). float64 (the gradient
    checks) and other batch sizes take :func:`sddmm_any` (at batch 256, two passes of these
    kernels measured no faster than it).
    Measured against :func:`sddmm_any`, 2 threads (docs/kernels.md): 1.5-1.9x on layers of
    20,000 weights and more in cache (LeNet-300-100's RadiX fc1, batch 100: 62 -> 33 us),
    1.1-1.3x on the small ones, 1.1-1.4x on RadiX layers of 16,384 to 262,144 neurons, where
    memory bounds it. (Arrays that are not C-contiguous also take :func:`sddmm_any`: the vector
    loads need each row's batch contiguous.)

    Layers beyond the caches with a locality order (RadiX-Nets: ``order`` given), ``x`` over
    :data:`SDDMM_GROUP8_MAX_X` and at least 64 columns take four entries at a time, each with
    its own horizontal sum: fewer rows of ``x`` in flight at once. Measured, batch 100, 2
    threads, RadiX fan-in 32: 1.05-1.2x from 8,192 to 262,144 neurons (262,144: 50-57 -> 60
    GFLOP/s). Not elsewhere: in cache the eight-entry tree was 1.05-1.12x faster, on random
    layers (no order) 1.05-1.2x, and at batch 50 (2 MPI ranks' share) it was 1.15-1.25x faster
    at 131,072-262,144 neurons and within the noise below.

    seg (optional, the vector kernels only): column blocks, as for :func:`spmm`; each entry is
    in one block, so the blocks only change the order the entries are computed in.
    """
    batch = x.shape[1]
    if (x.dtype == np.float32 and dy.dtype == np.float32 and out.dtype == np.float32 and 16 <= batch <= 143
            and x.flags.c_contiguous and dy.flags.c_contiguous):
        four = order is not None and batch >= 64 and x.nbytes > SDDMM_GROUP8_MAX_X and seg is None
        (_SDDMM_KERNELS4 if four else _SDDMM_KERNELS)[batch // 16](indptr, indices, dy, x, out, bounds, order, seg)
    else:
        sddmm_any(indptr, indices, dy, x, out, bounds, order)


def sddmm_ref(indptr, indices, dy, x):
    """NumPy twin of :func:`sddmm`: returns ``(dy @ x.T)[row_k, indices[k]]`` for each k."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.einsum("kb,kb->k", dy[rows], x[indices])


# ---------------------------------------------------------------------------------------------
# The bias gradient: a sum over the batch
# ---------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def sum_batch(dy, out):
    """out[r] = sum_b dy[r, b]: the gradient of a bias added to every column. dy[n, batch]
    C-contiguous, out[n]. Cost O(n * batch), on one thread.

    NumPy's ``np.sum(dy, axis=1, out=out)`` took 9.2 us on LeNet-300-100's (300, 100) float32
    dy, 4.1 us on (100, 100) and 142 us on LeNet-5 conv2's (50, 19600); this loop takes 1.7,
    0.7 and 39 us (LLVM keeps 16-lane partial sums: fastmath lets it reorder the additions,
    so the sum is pairwise-like, not one running float32 total).
    """
    for r in range(dy.shape[0]):
        row = dy[r]
        s = row[0] * 0
        for b in range(row.shape[0]):
            s += row[b]
        out[r] = s


@njit(parallel=True, fastmath=True, cache=True)
def sum_batch_parallel(dy, out):
    """:func:`sum_batch` with the rows split over the threads, for wide layers (the CPU backend
    takes it from ``PARALLEL_ELEMENTS`` values up). Measured on 2 threads (Intel Xeon host,
    emeraldrapids; one thread's loop first): (4096, 100) 65 -> 34 us, (65536, 100) 1.6 -> 0.86
    ms, (262144, 100) 13.9 -> 7.8 ms; (300, 100) 5.1 -> 5.9 us, where waking the second thread
    costs more than it saves."""
    for r in prange(dy.shape[0]):
        row = dy[r]
        s = row[0] * 0
        for b in range(row.shape[0]):
            s += row[b]
        out[r] = s


def sum_batch_ref(dy):
    """NumPy twin of :func:`sum_batch`."""
    return np.sum(dy, axis=1)


# Elementwise passes over this many values or more use every thread. Called alone, a 300 x 100
# pass is faster on one thread (below: waking the second costs more than it saves), but inside a
# training step its input was just written by both threads' halves of a sparse product, and on
# one thread half of it first crosses from the other core's cache. With the threshold at 2**14
# instead of 2**16 (LeNet-300-100's 300 x 100 passes on both threads, its 100 x 100 ones on
# one), the RadiX step's median went 283-289 -> 271-274 us in four interleaved pairs (bench_train.py's
# loop timed phase by phase in a script not kept; Intel Xeon, rocketlake, 2 threads; the mean
# 295-302 -> 282-296 us); the dense step did not move. bench_train.py: README, "Kernels".
PARALLEL_ELEMENTS = 1 << 14


# ---------------------------------------------------------------------------------------------
# ReLU, forward and backward (elementwise)
# ---------------------------------------------------------------------------------------------


@njit(fastmath=True, cache=True)
def relu(x, out):
    """out = max(x, 0). x[n], out[n] (flat views of the activations). Cost O(n).

    NumPy's ``np.maximum(x, 0, out=out)`` took 9 us on a 300x100 float32 activation here (it
    propagates NaNs with a slower loop); this loop takes 2, on one thread. Wider passes take
    :func:`relu_parallel` (``PARALLEL_ELEMENTS``).
    """
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v if v > 0 else v * 0


@njit(fastmath=True, cache=True)
def relu_backward(y, dy, dx):
    """dx = dy where y > 0, else 0: y = max(x, 0) is the forward's output, and y > 0 exactly
    where x > 0. y[n], dy[n], dx[n]: flat. One pass (NumPy needed two: sign, then multiply)."""
    for i in range(y.shape[0]):
        dx[i] = dy[i] if y[i] > 0 else dy[i] * 0


# The same two loops over every thread, for wide layers (the CPU backend takes them from
# PARALLEL_ELEMENTS values up: below that, waking the second thread costs more than it saves).
# Measured on 2 threads (Intel Xeon host, emeraldrapids), one thread's loop -> these, per call:
# relu (300 x 100) 4.5 -> 5.7 us, (4096 x 100) 146 -> 54 us, (65536 x 100) 5.6 -> 1.4 ms,
# (262144 x 100) 21.9 -> 16.9 ms; relu_backward 5.0 -> 5.1 us, 157 -> 50 us, 3.0 -> 1.3 ms,
# 21.7 -> 11.2 ms. In a step of the scaling study's 65,536-wide model these passes (and
# sum_batch) had taken a quarter of the time on one thread while the products used two.


@njit(parallel=True, fastmath=True, cache=True)
def relu_parallel(x, out):
    """:func:`relu`, the elements split over the threads."""
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = v if v > 0 else v * 0


@njit(parallel=True, fastmath=True, cache=True)
def relu_backward_parallel(y, dy, dx):
    """:func:`relu_backward`, the elements split over the threads."""
    for i in prange(y.shape[0]):
        dx[i] = dy[i] if y[i] > 0 else dy[i] * 0


# ---------------------------------------------------------------------------------------------
# Fused softmax cross-entropy (numerically stable)
# ---------------------------------------------------------------------------------------------


@njit(fastmath=False, cache=True)
def softmax_xent(logits, labels, dlogits):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits[n_classes, batch] (features-major), labels[batch] (ints in [0, n_classes)).
    dlogits[n_classes, batch]: overwritten with d(mean loss)/d(logits) = (p - onehot) / batch.
    Returns the mean loss as a Python float. Cost O(n_classes * batch).

    Stability: p = exp(z - max z) / sum exp(z - max z), and log p_y = (z_y - max z) - log sum,
    so no exponential overflows and no log of a rounded-to-zero probability is taken.
    Not parallel: at 10 x 100 the thread launch would cost more than the work.
    """
    n_classes, batch = logits.shape
    total = 0.0
    for b in range(batch):
        m = logits[0, b]
        for c in range(1, n_classes):
            if logits[c, b] > m:
                m = logits[c, b]
        s = 0.0
        for c in range(n_classes):
            e = np.exp(logits[c, b] - m)
            dlogits[c, b] = e
            s += e
        y = labels[b]
        total += np.log(s) - (logits[y, b] - m)
        inv = 1.0 / (s * batch)
        for c in range(n_classes):
            dlogits[c, b] *= inv
        dlogits[y, b] -= 1.0 / batch
    return total / batch


def softmax_xent_ref(logits, labels):
    """NumPy twin of :func:`softmax_xent`: returns ``(loss, dlogits)``."""
    z = logits - logits.max(axis=0, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=0, keepdims=True))
    batch = logits.shape[1]
    cols = np.arange(batch)
    loss = -logp[labels, cols].mean()
    d = np.exp(logp)
    d[labels, cols] -= 1.0
    return float(loss), d / batch


# ---------------------------------------------------------------------------------------------
# Optimiser updates (sparsenn.optim runs them through the backend), elementwise and in place
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _sgd_one(w, g, v, i, lr, momentum, weight_decay, nesterov):
    gi = g[i] + weight_decay * w[i]
    vi = momentum * v[i] + gi
    v[i] = vi
    if nesterov:
        w[i] -= lr * (gi + momentum * vi)
    else:
        w[i] -= lr * vi


@njit(parallel=True, fastmath=True, cache=True)
def sgd_update(w, g, v, lr, momentum, weight_decay, nesterov):
    """In place, elementwise over w[n], g[n], v[n] (flattened views):

        g' = g + weight_decay * w
        v  = momentum * v + g'
        w -= lr * (g' + momentum * v)   if nesterov   else   lr * v

    With momentum 0, v is just g' and this is plain SGD. Cost O(n).
    """
    for i in prange(w.shape[0]):
        _sgd_one(w, g, v, i, lr, momentum, weight_decay, nesterov)


@njit(fastmath=True, cache=True)
def sgd_update_serial(w, g, v, lr, momentum, weight_decay, nesterov):
    """:func:`sgd_update` on one thread, for small parameters. Measured per call, 2 threads
    against 1: 1.5 against 0.4 us at 300 entries, 1.7 against 0.8 at 3,000, 2.3 against 2.0 at
    10,000, 3.6 against 4.2 at 23,520: starting the thread pool costs more than a second core
    saves below about 16,000 entries (``backend_cpu.SERIAL_BELOW``)."""
    for i in range(w.shape[0]):
        _sgd_one(w, g, v, i, lr, momentum, weight_decay, nesterov)


def sgd_update_ref(w, g, v, lr, momentum, weight_decay, nesterov):
    """NumPy twin of :func:`sgd_update` (in place)."""
    gi = g + weight_decay * w
    v[...] = momentum * v + gi
    w -= lr * (gi + momentum * v) if nesterov else lr * v


@njit(inline="always")
def _adam_one(w, g, m, v, i, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    gi = g[i] + weight_decay * w[i]
    mi = beta1 * m[i] + (1.0 - beta1) * gi
    vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
    m[i] = mi
    v[i] = vi
    w[i] -= lr * (mi / bc1) / (np.sqrt(vi / bc2) + eps)


@njit(parallel=True, fastmath=True, cache=True)
def adam_update(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    """In place, elementwise (Kingma & Ba, with L2 weight decay added to the gradient):

        g' = g + weight_decay * w
        m  = beta1 * m + (1 - beta1) * g'
        v  = beta2 * v + (1 - beta2) * g'^2
        w -= lr * (m / bc1) / (sqrt(v / bc2) + eps)      bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
    """
    for i in prange(w.shape[0]):
        _adam_one(w, g, m, v, i, lr, beta1, beta2, eps, weight_decay, bc1, bc2)


@njit(fastmath=True, cache=True)
def adam_update_serial(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    """:func:`adam_update` on one thread, for small parameters (as :func:`sgd_update_serial`)."""
    for i in range(w.shape[0]):
        _adam_one(w, g, m, v, i, lr, beta1, beta2, eps, weight_decay, bc1, bc2)


def adam_update_ref(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    """NumPy twin of :func:`adam_update` (in place)."""
    gi = g + weight_decay * w
    m[...] = beta1 * m + (1 - beta1) * gi
    v[...] = beta2 * v + (1 - beta2) * gi * gi
    w -= lr * (m / bc1) / (np.sqrt(v / bc2) + eps)



# ---------------------------------------------------------------------------------------------
# Data-parallel gradient sum in shared memory (sparsenn.distributed)
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=True, cache=True)
def weighted_sum_into(bufs, weights, lo, hi, outs):
    """For lo <= i < hi: s = sum_q weights[q] * bufs[q][i], then out[i] = s for every out in outs.

    bufs: a tuple of P equal-length float32 arrays (the P ranks' gradient buffers, all mapped
    into this process from one MPI shared-memory window); weights[P] float32 (rank q's share of
    the global batch); outs: a tuple of arrays of that length to write the sums into (every
    rank's buffer, so that after a barrier every buffer holds the same average, bit for bit; or
    only this rank's, when it alone uses the sum of its slice). Each rank sums its own slice
    [lo, hi). Cost: reads P x (hi - lo) floats, writes len(outs) x (hi - lo).
    """
    for i in prange(lo, hi):
        s = weights[0] * bufs[0][i]
        for q in range(1, len(bufs)):
            s += weights[q] * bufs[q][i]
        for q in range(len(outs)):  # (not ``for out in outs``: in a prange Numba drops those stores)
            outs[q][i] = s


@njit(parallel=True, cache=True)
def permute(data, perm, out):
    """out[i] = data[perm[i]]: W's values in the order of its transpose (``perm = t_perm``), so
    that ``W^T dy`` reads them in sequence instead of through ``t_perm``. O(len(out)), threads
    over i. backend_cpu.spmm_t takes it for random layers beyond L3 (docs/kernels.md)."""
    for i in prange(out.shape[0]):
        out[i] = data[perm[i]]


def weighted_sum_into_ref(bufs, weights, lo, hi, outs):
    """NumPy twin of :func:`weighted_sum_into` (in place)."""
    s = sum(np.float32(w) * b[lo:hi] for w, b in zip(weights, bufs))
    for out in outs:
        out[lo:hi] = s


# ---------------------------------------------------------------------------------------------
# Mini-batch gather: batch-major dataset rows -> a features-major batch
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def gather_batch_rows(data, idx, scale, shift, out):
    """:func:`gather_batch` one output row at a time, for any shapes and dtypes.

    data[n, n_features] C-contiguous (one sample per row), uint8 pixels or float32 features;
    idx[batch] ints in [0, n); scale[n_features], shift[n_features] float32 (1 and 0 for data
    that is already normalised: then the copy is exact); out[n_features, batch] float32:
    overwritten. Cost O(n_features * batch).

    uint8 keeps the MNIST training set at 47 MB instead of 188 MB. The arithmetic is
    ``to_features_major``'s, in float32 and without fastmath (no fused multiply-add), so both
    routes give the same bits.
    Each thread owns a block of 64 features (64 output rows), so writes never overlap. Within
    a block, one output row at a time: its batch entries are written contiguously, read from
    the batch's rows (which stay in L1 across the block). Measured, batch 100 of MNIST, 2
    threads: 35 us a batch, for uint8 and float32 alike; the sample-at-a-time order (contiguous
    reads, writes strided by the batch) took 56 us (float32) and 71 us (uint8).
    """
    n_features = out.shape[0]
    batch = idx.shape[0]
    for blk in prange((n_features + 63) // 64):
        for f in range(blk * 64, min(n_features, blk * 64 + 64)):
            o, s, t = out[f], scale[f], shift[f]
            for b in range(batch):
                o[b] = np.float32(data[idx[b], f]) * s + t


@njit(parallel=True, cache=True)  # no fastmath: the same bits as gather_batch_rows
def gather_batch_tiles(data, idx, scale, shift, out):
    """:func:`gather_batch` in tiles of 16 features x 16 samples, for uint8 or float32 data with
    at least 16 features and 16 samples: per tile, 16 vector loads (16 features of one sample
    each, converted to float32), one 16 x 16 transpose in registers (:func:`sparsenn.simd.
    transpose16`), and 16 vector stores (16 samples of one feature each), scaled and shifted
    with a multiply then an add, as ``to_features_major`` rounds them. The last tile of each
    direction overlaps the one before it; the overlap is computed and written twice, the same.
    """
    n_features = out.shape[0]
    batch = idx.shape[0]
    for fb in prange((n_features + 15) // 16):
        f0 = min(fb * 16, n_features - 16)
        for i in range(0, batch, 16):
            b0 = min(i, batch - 16)
            t = transpose16(vload(data[idx[b0]], f0), vload(data[idx[b0 + 1]], f0), vload(data[idx[b0 + 2]], f0),
                            vload(data[idx[b0 + 3]], f0), vload(data[idx[b0 + 4]], f0), vload(data[idx[b0 + 5]], f0),
                            vload(data[idx[b0 + 6]], f0), vload(data[idx[b0 + 7]], f0), vload(data[idx[b0 + 8]], f0),
                            vload(data[idx[b0 + 9]], f0), vload(data[idx[b0 + 10]], f0), vload(data[idx[b0 + 11]], f0),
                            vload(data[idx[b0 + 12]], f0), vload(data[idx[b0 + 13]], f0),
                            vload(data[idx[b0 + 14]], f0), vload(data[idx[b0 + 15]], f0))
            for m in range(16):
                f = f0 + m
                vstore(out[f], b0, vadd(vmul(t[m], vbroadcast(scale[f])), vbroadcast(shift[f])))


@njit(cache=True)
def prefetch_rows(data, idx):
    """Ask for every cache line of the rows data[idx] without waiting for them: issued after a
    step's gather for the next step's samples, the lines arrive while the step computes, and
    the next gather finds them in cache. data[n, m] C-contiguous, idx[batch]. One thread,
    about 1,300 prefetch instructions for a batch of 100 MNIST images (784 bytes each)."""
    line = 64 // data.itemsize
    for b in range(idx.shape[0]):
        row = data[idx[b]]
        for j in range(0, row.shape[0], line):
            prefetch(row, j)
        prefetch(row, row.shape[0] - 1)


def gather_batch(data, idx, scale, shift, out):
    """out[f, b] = data[idx[b], f] * scale[f] + shift[f]: pick rows of a batch-major dataset into
    a features-major batch, normalising on the way.

    data[n, n_features] C-contiguous (one sample per row), uint8 pixels or float32 features;
    idx[batch] ints in [0, n); scale[n_features], shift[n_features] float32 (1 and 0 for data
    that is already normalised: then the copy is exact); out[n_features, batch] float32:
    overwritten. Cost O(n_features * batch). uint8 keeps the MNIST training set at 47 MB
    instead of 188 MB. The arithmetic is ``to_features_major``'s, in float32 and without
    fastmath (no fused multiply-add), so every route gives the same bits.

    :func:`gather_batch_tiles` (16 x 16 tiles transposed in registers) where it applies, else
    :func:`gather_batch_rows`. Measured on a batch of 100 MNIST images, 2 threads: 35 us row by
    row, 9 us in tiles.
    """
    if (data.dtype in (np.uint8, np.float32) and out.shape[0] >= 16 and idx.shape[0] >= 16
            and data.flags.c_contiguous and scale.dtype == np.float32 and shift.dtype == np.float32):
        gather_batch_tiles(data, idx, scale, shift, out)
    else:
        gather_batch_rows(data, idx, scale, shift, out)


def gather_batch_ref(data, idx, scale=None, shift=None):
    """NumPy twin of :func:`gather_batch` (scale 1 and shift 0 when not given)."""
    x = data[idx].astype(np.float32)
    if scale is not None:
        x = x * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)
    return np.ascontiguousarray(x.T)
