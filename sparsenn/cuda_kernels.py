"""numba.cuda kernels for a training step on an NVIDIA GPU, each the twin of a CPU kernel.

Every kernel here computes what a CPU kernel computes (the reference the tests compare it
with), on numba device arrays of the same shapes and layout:

    GPU kernel (this module)   CPU twin (Numba kernel, and its NumPy ``_ref`` twin)
    spmm                       sparsenn.kernels.spmm            y = W x (+ b), and W^T dy via perm
    sddmm                      sparsenn.kernels.sddmm           dW[k] = dy[row_k] . x[col_k]
    gemm                       sparsenn.runtime.matmul          dense out = op(a) @ op(b)
    add_bias, sum_batch        out += b[:, None];  np.sum(dy, axis=1)
    relu, relu_backward        np.maximum(x, 0);  dy * (y > 0)
    softmax_xent               sparsenn.kernels.softmax_xent
    sgd_update, adam_update    sparsenn.kernels.sgd_update, adam_update
    gather_batch, take         sparsenn.kernels.gather_batch;  src[idx]
    multiply                   np.multiply(w, mask, out=w)      (pruning masks)

Layout. Activations are features-major, ``(n_features, batch)`` C-contiguous, as on the CPU:
``x[c, b]`` and ``x[c, b + 1]`` are neighbours in memory. So threads with consecutive
``threadIdx.x`` work on consecutive batch columns, and the 32 threads of a warp read 32
neighbouring floats: one coalesced 128-byte transaction.

Each launcher below (the public function without the leading underscore) takes device
arrays, picks the grid and launches on the default stream; outputs are preallocated and
overwritten. Nothing here uses warp shuffles or ``syncwarp``: the reductions go through
shared memory and ``syncthreads``, so Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
which has neither) runs every kernel in the tests.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

WARP = 32
ROWS_PER_BLOCK = 4  # spmm: four warps per block, one sparse row per warp
REDUCE_THREADS = 64  # sum_batch and softmax_xent: threads that share one reduction
ELEMENTWISE_THREADS = 128
TILE = 16  # gemm: 16 x 16 output tile per block
# Shared-memory rows padded by one element, so threads walking a column hit different banks.
# (Written out: a shared array's shape must be a compile-time constant, not WARP + 1.)
WARP_PADDED = 33
TILE_PADDED = 17


def _blocks(n: int, per_block: int) -> int:
    return max(1, (n + per_block - 1) // per_block)


# ---------------------------------------------------------------------------------------------
# y = W x (+ b), and dx = W^T dy through the transpose index
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _spmm_kernel(indptr, indices, data, perm, has_perm, x, bias, has_bias, out):
    """out[r, b] = sum_k w_k * x[indices[k], b]  (+ bias[r]),  k in row r,
    w_k = data[perm[k]] if has_perm (W^T: t_perm) else data[k] (W).

    indptr[n_rows+1], indices[nnz], data[nnz], perm[nnz] (read only if has_perm);
    x[n_in, batch]; bias[n_rows] (read only if has_bias); out[n_rows, batch]: overwritten.
    Thread mapping: one warp per (row, 32 batch columns); lane = batch column. The lanes share
    the row's indices and weights (broadcast loads) and read 32 neighbouring x values per
    nonzero (coalesced). Each thread owns one output value: no races, no atomics.
    Cost O(nnz * batch).
    """
    r = cuda.blockIdx.x * ROWS_PER_BLOCK + cuda.threadIdx.x // WARP
    b = cuda.blockIdx.y * WARP + cuda.threadIdx.x % WARP
    if r >= out.shape[0] or b >= out.shape[1]:
        return
    # out.dtype.type(0), not 0.0: the sum stays in out's precision (0.0 would make it float64)
    acc = bias[r] if has_bias else out.dtype.type(0)
    for k in range(indptr[r], indptr[r + 1]):
        w = data[perm[k]] if has_perm else data[k]
        acc += w * x[indices[k], b]
    out[r, b] = acc


def spmm(indptr, indices, data, x, out, bias=None, perm=None):
    """out = W @ x (+ bias[:, None]) for CSR W; with ``perm``, W's values are data[perm]
    (the W^T product: the transpose index and t_perm). As :func:`sparsenn.kernels.spmm`."""
    n_rows, batch = out.shape
    grid = (_blocks(n_rows, ROWS_PER_BLOCK), _blocks(batch, WARP))
    has_bias, has_perm = bias is not None, perm is not None
    # arrays that are not read (bias, perm) are passed as placeholders of the right type
    _spmm_kernel[grid, ROWS_PER_BLOCK * WARP](indptr, indices, data, perm if has_perm else indptr, has_perm, x,
                                               bias if has_bias else data, has_bias, out)


# ---------------------------------------------------------------------------------------------
# dW[k] = dy[row_k] . x[col_k]   (weight gradient on the stored pattern: SDDMM)
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _sddmm_kernel(indptr, indices, dy, x, out):
    """out[k] = sum_b dy[r, b] * x[indices[k], b] for every stored entry k of row r.

    indptr[n_rows+1], indices[nnz]; dy[n_rows, batch], x[n_in, batch]; out[nnz]: overwritten.
    Thread mapping: one block of 32 threads per row; lane l sums batch columns l, l+32, ...
    The row's entries go 32 at a time: each lane writes its partial dot product for each of
    the 32 entries into shared memory, part[e, lane]; then lane e adds up row e of part (a
    transposed read) and writes out[k0 + e]. That is a warp reduction without shuffles; the
    row of part is padded to 33 so both the writes and the transposed reads hit 32 different
    memory banks. The loop bounds are the same for every thread of the block, so each
    syncthreads is reached by all of them. Cost O(nnz * batch).
    """
    part = cuda.shared.array((WARP, WARP_PADDED), dtype=dy.dtype)
    r = cuda.blockIdx.x
    lane = cuda.threadIdx.x
    batch = dy.shape[1]
    zero = dy.dtype.type(0)  # accumulate in dy's precision, as the CPU kernel does
    start, end = indptr[r], indptr[r + 1]
    for k0 in range(start, end, WARP):
        for e in range(WARP):
            s = zero
            if k0 + e < end:
                c = indices[k0 + e]
                for b in range(lane, batch, WARP):
                    s += dy[r, b] * x[c, b]
            part[e, lane] = s
        cuda.syncthreads()
        if k0 + lane < end:
            t = zero
            for j in range(WARP):
                t += part[lane, j]
            out[k0 + lane] = t
        cuda.syncthreads()  # part is rewritten by the next group of 32 entries


def sddmm(indptr, indices, dy, x, out):
    """out[k] = dot(dy[row_k], x[indices[k]]): (dy @ x.T) sampled at the pattern of W."""
    _sddmm_kernel[max(1, dy.shape[0]), WARP](indptr, indices, dy, x, out)


# ---------------------------------------------------------------------------------------------
# Dense products (dense layers): out = op(a) @ op(b), op = transpose or not
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _gemm_kernel(a, b, ta, tb, out):
    """out[i, j] = sum_k A[i, k] B[k, j],  A = a.T if ta else a,  B = b.T if tb else b.

    out[m, n]: overwritten. Thread mapping: a 16 x 16 block computes a 16 x 16 tile of out,
    threadIdx.x along j (the contiguous axis of out). For each 16-wide slice of k the block
    copies a tile of A and of B into shared memory, reading along the *contiguous* axis of a
    and b whichever way they are transposed (coalesced), then every thread does 16
    multiply-adds from shared memory. The tiles are padded to 17 columns so the transposed
    writes do not all land in one memory bank. Cost O(m * n * k).
    """
    sa = cuda.shared.array((TILE, TILE_PADDED), dtype=out.dtype)  # sa[i, k] = A[i0 + i, k0 + k]
    sb = cuda.shared.array((TILE, TILE_PADDED), dtype=out.dtype)  # sb[k, j] = B[k0 + k, j0 + j]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i0, j0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    m, n = out.shape
    kk = b.shape[1] if tb else b.shape[0]
    zero = out.dtype.type(0)  # (0.0 would pull the tile loads into float64)
    acc = zero
    for k0 in range(0, kk, TILE):
        if ta:  # A[i, k] = a[k, i]: thread (ty, tx) reads a[k0 + ty, i0 + tx]
            i, k = i0 + tx, k0 + ty
            sa[tx, ty] = a[k, i] if i < m and k < kk else zero
        else:
            i, k = i0 + ty, k0 + tx
            sa[ty, tx] = a[i, k] if i < m and k < kk else zero
        if tb:  # B[k, j] = b[j, k]: thread (ty, tx) reads b[j0 + ty, k0 + tx]
            k, j = k0 + tx, j0 + ty
            sb[tx, ty] = b[j, k] if j < n and k < kk else zero
        else:
            k, j = k0 + ty, j0 + tx
            sb[ty, tx] = b[k, j] if j < n and k < kk else zero
        cuda.syncthreads()
        for q in range(TILE):
            acc += sa[ty, q] * sb[q, tx]
        cuda.syncthreads()
    i, j = i0 + ty, j0 + tx
    if i < m and j < n:
        out[i, j] = acc


def gemm(a, b, out, ta: bool = False, tb: bool = False):
    """out = op(a) @ op(b) with op(a) = a.T if ta (a view is never materialised)."""
    m, n = out.shape
    _gemm_kernel[(_blocks(n, TILE), _blocks(m, TILE)), (TILE, TILE)](a, b, ta, tb, out)


# ---------------------------------------------------------------------------------------------
# Bias: forward broadcast and backward sum over the batch
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _add_bias_kernel(out, bias):
    """out[r, b] += bias[r].  out[n_rows, batch]; thread x along b, grid y along r."""
    b = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y
    if b < out.shape[1]:
        out[r, b] += bias[r]


def add_bias(out, bias):
    _add_bias_kernel[(_blocks(out.shape[1], ELEMENTWISE_THREADS), out.shape[0]), ELEMENTWISE_THREADS](out, bias)


@cuda.jit
def _sum_batch_kernel(dy, out):
    """out[r] = sum_b dy[r, b].  dy[n_rows, batch], out[n_rows]: overwritten.

    One block per row: each thread sums a strided slice of the row (coalesced reads), writes
    its partial sum to shared memory, and after one syncthreads thread 0 adds up the 64
    partial sums. (A tree reduction would take log2(64) = 6 barriers for a saving of about a
    microsecond; one barrier also keeps the CUDA simulator, where barriers are slow, usable.)
    """
    part = cuda.shared.array(REDUCE_THREADS, dtype=dy.dtype)
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    s = dy.dtype.type(0)  # in dy's precision, like np.sum
    for b in range(t, dy.shape[1], REDUCE_THREADS):
        s += dy[r, b]
    part[t] = s
    cuda.syncthreads()
    if t == 0:
        for j in range(1, REDUCE_THREADS):
            s += part[j]
        out[r] = s


def sum_batch(dy, out):
    """out = dy.sum(axis=1): the bias gradient."""
    _sum_batch_kernel[max(1, dy.shape[0]), REDUCE_THREADS](dy, out)


# ---------------------------------------------------------------------------------------------
# Elementwise: ReLU, masks (on flat, contiguous views)
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _relu_kernel(x, out):
    """out[i] = max(x[i], 0); flat arrays of equal length; grid-stride loop."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = x[i] if x[i] > 0 else 0.0


@cuda.jit
def _relu_backward_kernel(y, dy, dx):
    """dx[i] = dy[i] if y[i] > 0 else 0 (y the ReLU's output); flat arrays."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        dx[i] = dy[i] if y[i] > 0 else dy.dtype.type(0)


@cuda.jit
def _multiply_kernel(w, mask):
    """w[i] *= mask[i] (mask bool or 0/1): re-zero pruned weights; flat arrays."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        if not mask[i]:
            w[i] = 0.0


def _grid1(n: int) -> int:
    # enough blocks to fill a large GPU (132 SMs x 8), then the grid-stride loops take over
    return min(_blocks(n, ELEMENTWISE_THREADS), 1056)


def relu(x, out):
    f, o = x.reshape(-1), out.reshape(-1)
    _relu_kernel[_grid1(f.size), ELEMENTWISE_THREADS](f, o)


def relu_backward(y, dy, dx):
    f = y.reshape(-1)
    _relu_backward_kernel[_grid1(f.size), ELEMENTWISE_THREADS](f, dy.reshape(-1), dx.reshape(-1))


def multiply(w, mask):
    f = w.reshape(-1)
    _multiply_kernel[_grid1(f.size), ELEMENTWISE_THREADS](f, mask.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Fused softmax cross-entropy
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _softmax_xent_kernel(logits, labels, dlogits, result):
    """The twin of sparsenn.kernels.softmax_xent, for one block.

    logits[n_classes, batch], labels[batch]; dlogits[n_classes, batch]: overwritten with
    (softmax - onehot) / batch; result[2]: overwritten with (mean loss, number of labels
    outside [0, n_classes)). Thread t handles columns t, t+64, ... (the same stable
    formula as the CPU kernel: subtract the column max before exp); then thread 0 adds up
    the threads' losses from shared memory (in float64), as in :func:`_sum_batch_kernel`.
    A bad label is counted, not read out of bounds: the host raises a clear error.
    """
    part = cuda.shared.array(REDUCE_THREADS, dtype=np.float64)
    bad = cuda.shared.array(REDUCE_THREADS, dtype=np.int32)
    t = cuda.threadIdx.x
    n_classes, batch = logits.shape
    total = 0.0
    n_bad = 0
    for b in range(t, batch, REDUCE_THREADS):
        y = labels[b]
        if y < 0 or y >= n_classes:
            n_bad += 1
            for c in range(n_classes):
                dlogits[c, b] = 0.0
            continue
        m = logits[0, b]
        for c in range(1, n_classes):
            m = max(m, logits[c, b])
        s = 0.0
        for c in range(n_classes):
            e = math.exp(logits[c, b] - m)
            dlogits[c, b] = e
            s += e
        total += math.log(s) - (logits[y, b] - m)
        inv = 1.0 / (s * batch)
        for c in range(n_classes):
            dlogits[c, b] *= inv
        dlogits[y, b] -= 1.0 / batch
    part[t] = total
    bad[t] = n_bad
    cuda.syncthreads()
    if t == 0:
        for j in range(1, REDUCE_THREADS):
            total += part[j]
            n_bad += bad[j]
        result[0] = total / batch
        result[1] = n_bad


def softmax_xent(logits, labels, dlogits, result):
    """Launch :func:`_softmax_xent_kernel` (one block: 10 x 100 values need no more)."""
    _softmax_xent_kernel[1, REDUCE_THREADS](logits, labels, dlogits, result)


# ---------------------------------------------------------------------------------------------
# Optimiser updates (flat views of a parameter and its state)
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _sgd_kernel(w, g, v, lr, momentum, weight_decay, nesterov):
    """The twin of sparsenn.kernels.sgd_update, one element per thread (grid-stride):
    g' = g + wd w;  v = momentum v + g';  w -= lr (g' + momentum v) if nesterov else lr v."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        gi = g[i] + weight_decay * w[i]
        vi = momentum * v[i] + gi
        v[i] = vi
        if nesterov:
            w[i] -= lr * (gi + momentum * vi)
        else:
            w[i] -= lr * vi


def _scalars(w, *values):
    # Python floats would make every update float64 arithmetic (slow on most GPUs): pass
    # the hyper-parameters in the parameter's own dtype.
    return tuple(w.dtype.type(v) for v in values)


def sgd_update(w, g, v, lr, momentum, weight_decay, nesterov):
    _sgd_kernel[_grid1(w.shape[0]), ELEMENTWISE_THREADS](w, g, v, *_scalars(w, lr, momentum, weight_decay),
                                                         bool(nesterov))


@cuda.jit
def _adam_kernel(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    """The twin of sparsenn.kernels.adam_update: Adam with L2 decay, bias corrections bc1, bc2."""
    one = w.dtype.type(1)  # (a plain 1 - beta1 would be float64 arithmetic)
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        gi = g[i] + weight_decay * w[i]
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] -= lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    _adam_kernel[_grid1(w.shape[0]), ELEMENTWISE_THREADS](
        w, g, m, v, *_scalars(w, lr, beta1, beta2, eps, weight_decay, bc1, bc2))


# ---------------------------------------------------------------------------------------------
# Mini-batches from a dataset that lives on the GPU
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _gather_batch_kernel(data, idx, scale, shift, out):
    """out[f, b] = data[idx[b], f] * scale[f] + shift[f].  data[n, n_features] (batch-major,
    uint8 or float32), idx[batch], scale/shift[n_features] float32, out[n_features, batch].
    Thread x along f: a warp reads 32 neighbouring features of one sample (coalesced); grid y
    along b."""
    f = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    b = cuda.blockIdx.y
    if f < out.shape[0]:
        out[f, b] = float32(data[idx[b], f]) * scale[f] + shift[f]


def gather_batch(data, idx, scale, shift, out):
    n_features, batch = out.shape
    _gather_batch_kernel[(_blocks(n_features, ELEMENTWISE_THREADS), max(1, batch)), ELEMENTWISE_THREADS](
        data, idx, scale, shift, out)


@cuda.jit
def _take_kernel(src, idx, out):
    """out[i] = src[idx[i]] (the labels of a mini-batch)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = src[idx[i]]


def take(src, idx, out):
    _take_kernel[_blocks(out.shape[0], ELEMENTWISE_THREADS), ELEMENTWISE_THREADS](src, idx, out)


# ---------------------------------------------------------------------------------------------
# For the compile check: every kernel with small arguments of the types its launcher passes
# ---------------------------------------------------------------------------------------------


def ptx_examples():
    """``[(kernel, args)]``: compile each with ``cuda.compile_ptx(kernel.py_func, types)``."""
    f, i32, i64 = np.float32, np.int32, np.int64
    indptr, indices, perm = np.array([0, 1, 2], i32), np.array([0, 1], i32), np.arange(2, dtype=i64)
    data, v = np.ones(2, f), np.ones(2, f)
    x, y = np.ones((2, 3), f), np.ones((2, 3), f)
    return [
        (_spmm_kernel, (indptr, indices, data, perm, True, x, data, True, y)),
        (_spmm_kernel, (indptr, indices, data, indptr, False, x, data, False, y)),
        (_sddmm_kernel, (indptr, indices, y, x, data)),
        (_gemm_kernel, (x, x, False, True, np.ones((2, 2), f))),
        (_add_bias_kernel, (y, v)),
        (_sum_batch_kernel, (y, v)),
        (_relu_kernel, (data, v)),
        (_relu_backward_kernel, (data, v, v)),
        (_multiply_kernel, (data, np.ones(2, bool))),
        (_softmax_xent_kernel, (x, np.zeros(3, i64), y, np.zeros(2, f))),
        (_sgd_kernel, (data, v, v, f(0.1), f(0.9), f(1e-4), True)),
        (_adam_kernel, (data, v, v, v) + tuple(f(s) for s in (0.1, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001))),
        (_gather_batch_kernel, (np.ones((4, 2), f), np.zeros(3, i64), v, v, x)),
        (_gather_batch_kernel, (np.ones((4, 2), np.uint8), np.zeros(3, i64), v, v, x)),
        (_take_kernel, (np.zeros(4, i64), np.zeros(3, i64), np.zeros(3, i64))),
    ]
