"""The CPU backend: the operations a training step needs, on NumPy arrays.

A layer never calls a kernel directly; it calls ``self.ops.<operation>``, and ``self.ops`` is
this module on the CPU or :mod:`sparsenn.backend_cuda` on a GPU (``model.to("cuda")``). The
two modules have the same functions with the same arguments, so each layer's forward and
backward is written once. Here every operation is a NumPy expression or one of the Numba
kernels of :mod:`sparsenn.kernels`, :mod:`sparsenn.im2col` and :mod:`sparsenn.optim`.

Shapes follow the layers: activations ``(n_features, batch)``, CSR weights ``data[nnz]`` on a
:class:`sparsenn.csr.CSRPattern`. Outputs are preallocated and overwritten.
"""

from __future__ import annotations

import numba
import numpy as np

from sparsenn import im2col as _im2col
from sparsenn import kernels as _k
from sparsenn.runtime import matmul as _matmul

name = "cpu"


# ------------------------------------------------------------------ arrays


def asarray(a, dtype=None) -> np.ndarray:
    """A C-contiguous array of this backend holding ``a`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_host(a) -> np.ndarray:
    """The values as a NumPy array (the array itself here)."""
    return a


# Every array this backend allocates (activations, their gradients, the gathered batch) starts on
# a 64-byte boundary: one cache line, one AVX-512 vector. NumPy's own large arrays start 16 bytes
# past one (glibc's allocation header), so a row of 128 float32 columns (512 bytes) there spans
# nine cache lines, not eight, and every 16-float load of it reads two lines. Measured on an Intel
# Xeon host (rocketlake to Numba), the sparse products at batch 128 with x and dy aligned against
# NumPy's: 1.5-1.9x the GFLOP/s (300x784 d=0.1: 77, 79, 65 -> 147, 137, 125 for the forward,
# W^T dy and the weight gradient; 4096x4096 d=0.1: 72, 62, 65 -> 128, 99, 112). A batch whose rows
# are not whole vectors (100 columns, 400 bytes) has rows at every 16-byte offset whatever the
# start: there it changes nothing.
ALIGN = 64


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element is ALIGN-byte aligned."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def zeros(shape, dtype) -> np.ndarray:
    """:func:`empty`, filled with zeros."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def assign(dst, src) -> None:
    """dst[...] = src, for a NumPy ``src`` of dst's shape."""
    dst[...] = src


def is_array(a) -> bool:
    return isinstance(a, np.ndarray)


def synchronize() -> None:
    """Wait for queued work (nothing is queued on the CPU)."""


# ------------------------------------------------------------------ linear layers


def matmul(a, b, out, ta: bool = False, tb: bool = False) -> None:
    """out = op(a) @ op(b), op(m) = m.T when its flag is set (a view: no copy)."""
    _matmul(a.T if ta else a, b.T if tb else b, out)


def add_bias(out, bias) -> None:
    """out[r, :] += bias[r]."""
    out += bias[:, None]


def sum_batch(dy, out) -> None:
    """out[r] = sum_b dy[r, b] (on every thread for wide layers: kernels.PARALLEL_ELEMENTS)."""
    (_k.sum_batch_parallel if dy.size >= _k.PARALLEL_ELEMENTS else _k.sum_batch)(dy, out)


def column_segments_for(pattern, x, transpose=False):
    """The column blocks of W (or W^T) for the operand x, or None (kernels.column_blocks; and
    kernels.scattered_column_blocks for layers whose rows read x far apart, random ones)."""
    rows = pattern.shape[1 if transpose else 0]
    n = _k.column_blocks(rows, pattern.nnz, x)
    if n == 1 and scattered_beyond_l3(pattern, x, transpose):
        n = _k.scattered_column_blocks(rows, pattern.nnz, x)
    return pattern.segments(n, transpose) if n > 1 else None


def scattered_beyond_l3(pattern, x, transpose=False) -> bool:
    """Whether W (or W^T) reads the rows of x far apart (``pattern.scattered()``: random
    layers) and x is beyond L3's reach: such products take L3-sized column blocks, and W^T dy
    reads a copy of the weights in transpose order (:func:`spmm_t`)."""
    return x.nbytes > _k.COL_BLOCK_SCATTERED_X and pattern.scattered()[1 if transpose else 0]


def spmm(pattern, data, x, out, bias=None) -> None:
    """out = W x (+ bias[:, None]) for W = (pattern, data)."""
    seg = column_segments_for(pattern, x)
    bounds, _ = pattern.splits(numba.get_num_threads(), tiles=seg is None)
    order, _ = pattern.orders(tiles=seg is None)
    _k.spmm(pattern.indptr, pattern.indices, data, x, out, bounds, None, bias, order, seg)  # the bias in the same pass


def spmm_t(pattern, data, dy, out) -> None:
    """out = W^T dy: the transpose index of W, its values read through t_perm.

    For a random layer in column blocks (``pattern.scattered()``, activations beyond L3) the
    values are first copied into transpose order (``kernels.permute``, into a buffer the
    pattern keeps: 4 bytes per weight) and read in sequence: through ``t_perm`` each is a read
    at a random place in all of W's values, which beyond the caches costs more than the copy
    (random layers of fan-in 32 at batch 100, 2 threads: 65,536 neurons 14.4-14.8 -> 0.8 + 9.6
    ms; 262,144 neurons 105-115 -> 15 + 62-85 ms)."""
    seg = column_segments_for(pattern, dy, transpose=True)
    _, t_bounds = pattern.splits(numba.get_num_threads(), tiles=seg is None)
    _, t_order = pattern.orders(tiles=seg is None)
    if seg is not None and scattered_beyond_l3(pattern, dy, transpose=True):
        key = ("values in transpose order", data.dtype.str)
        if key not in pattern.cache:
            pattern.cache[key] = np.empty(pattern.nnz, data.dtype)
        data_t = pattern.cache[key]
        _k.permute(data, pattern.t_perm, data_t)
        _k.spmm(pattern.t_indptr, pattern.t_rows, data_t, dy, out, t_bounds, None, None, t_order, seg)
        return
    _k.spmm(pattern.t_indptr, pattern.t_rows, data, dy, out, t_bounds, pattern.t_perm, None, t_order, seg)


def sddmm(pattern, dy, x, out) -> None:
    """out[k] = dy[row_k] . x[col_k] for each stored entry k."""
    seg = column_segments_for(pattern, x)
    bounds, _ = pattern.splits(numba.get_num_threads(), tiles=seg is None)
    order, _ = pattern.orders(tiles=seg is None)
    _k.sddmm(pattern.indptr, pattern.indices, dy, x, out, bounds, order, seg)


# ------------------------------------------------------------------ elementwise


def relu(x, out) -> None:
    """out = max(x, 0) (on every thread for wide layers: kernels.PARALLEL_ELEMENTS)."""
    (_k.relu_parallel if x.size >= _k.PARALLEL_ELEMENTS else _k.relu)(x.reshape(-1), out.reshape(-1))


def relu_backward(y, dy, dx) -> None:
    """dx = dy where y > 0, else 0 (y the ReLU's output)."""
    kernel = _k.relu_backward_parallel if y.size >= _k.PARALLEL_ELEMENTS else _k.relu_backward
    kernel(y.reshape(-1), dy.reshape(-1), dx.reshape(-1))


def multiply(w, mask) -> None:
    """w *= mask, in place (re-zeroes pruned weights)."""
    np.multiply(w, mask, out=w)


# ------------------------------------------------------------------ loss, optimisers, data


def softmax_xent(logits, labels, dlogits) -> float:
    """Mean cross-entropy; dlogits overwritten with its gradient. Labels are checked by the caller."""
    return _k.softmax_xent(logits, labels, dlogits)


SERIAL_BELOW = 16_384  # parameters with fewer entries are updated on one thread (kernels.sgd_update_serial)


def sgd_update(w, g, v, lr, momentum, weight_decay, nesterov) -> None:
    """The SGD step on flat views (``sparsenn.kernels.sgd_update``)."""
    kernel = _k.sgd_update if w.shape[0] >= SERIAL_BELOW else _k.sgd_update_serial
    kernel(w, g, v, lr, momentum, weight_decay, nesterov)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2) -> None:
    """The Adam step on flat views (``sparsenn.kernels.adam_update``)."""
    kernel = _k.adam_update if w.shape[0] >= SERIAL_BELOW else _k.adam_update_serial
    kernel(w, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2)
gather_batch = _k.gather_batch
prefetch_rows = _k.prefetch_rows


def take(src, idx, out) -> None:
    """out[i] = src[idx[i]]."""
    np.take(src, idx, out=out)


# ------------------------------------------------------------------ convolution

im2col = _im2col.im2col
col2im = _im2col.col2im
maxpool_forward = _im2col.maxpool_forward
maxpool_backward = _im2col.maxpool_backward
lrn_forward = _im2col.lrn_forward
lrn_backward = _im2col.lrn_backward
