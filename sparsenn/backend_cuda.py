"""The CUDA backend: the operations of :mod:`sparsenn.backend_cpu`, on numba device arrays.

Same functions, same arguments; each launches a kernel of :mod:`sparsenn.cuda_kernels` or
:mod:`sparsenn.cuda_im2col`. Arrays stay on the GPU from step to step: the parameters, their
gradients, the optimiser state, the activations, and the training set itself (a mini-batch is
gathered on the GPU). What comes back to the host is the loss of each step (one number) and,
when evaluating, the logits.

Import this module only through :func:`sparsenn.device.backend` ("cuda"), which checks first
that numba-cuda is installed and a GPU (or the simulator) is usable.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from sparsenn import cuda_im2col as _im2col
from sparsenn import cuda_kernels as _k

name = "cuda"


# ------------------------------------------------------------------ arrays


def is_array(a) -> bool:
    """A device array (numba's, or the simulator's stand-in for one)."""
    return hasattr(a, "copy_to_host")


def asarray(a, dtype=None):
    """A device array holding ``a``: a NumPy array is copied to the GPU; a device array of
    the right dtype is returned as it is."""
    if is_array(a) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return cuda.to_device(np.ascontiguousarray(to_host(a), dtype=dtype))


def to_host(a) -> np.ndarray:
    """The values as a NumPy array (a copy from the GPU)."""
    return a.copy_to_host() if is_array(a) else np.asarray(a)


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


def zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def assign(dst, src) -> None:
    """dst[...] = src, for a NumPy ``src`` of dst's shape (a host-to-device copy)."""
    dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))


def synchronize() -> None:
    """Wait until every queued kernel has finished (for timing)."""
    cuda.synchronize()


def _pattern(p) -> dict:
    """The pattern's index arrays (and its transpose index) on the GPU, copied once per pattern."""
    if "cuda" not in p.cache:
        p.cache["cuda"] = {
            "indptr": cuda.to_device(p.indptr), "indices": cuda.to_device(p.indices),
            "t_indptr": cuda.to_device(p.t_indptr), "t_rows": cuda.to_device(p.t_rows),
            "t_perm": cuda.to_device(p.t_perm),
        }
    return p.cache["cuda"]


# ------------------------------------------------------------------ linear layers


def matmul(a, b, out, ta: bool = False, tb: bool = False) -> None:
    """out = op(a) @ op(b), op(m) = m.T when its flag is set."""
    _k.gemm(a, b, out, ta, tb)


add_bias = _k.add_bias
sum_batch = _k.sum_batch


def spmm(pattern, data, x, out, bias=None) -> None:
    """out = W x (+ bias[:, None]), the bias added in the same kernel."""
    d = _pattern(pattern)
    _k.spmm(d["indptr"], d["indices"], data, x, out, bias)


def spmm_t(pattern, data, dy, out) -> None:
    """out = W^T dy through the transpose index (each output row has one writer: no atomics)."""
    d = _pattern(pattern)
    _k.spmm(d["t_indptr"], d["t_rows"], data, dy, out, perm=d["t_perm"])


def sddmm(pattern, dy, x, out) -> None:
    d = _pattern(pattern)
    _k.sddmm(d["indptr"], d["indices"], dy, x, out)


# ------------------------------------------------------------------ elementwise

relu = _k.relu
relu_backward = _k.relu_backward
multiply = _k.multiply


# ------------------------------------------------------------------ loss, optimisers, data

_loss_result = {}


def softmax_xent(logits, labels, dlogits) -> float:
    """Mean cross-entropy, computed on the GPU; only the loss (and a bad-label count) comes back.

    labels: a device array (the mini-batch's labels, gathered on the GPU) or a NumPy array.
    """
    if not is_array(labels):
        labels = cuda.to_device(np.ascontiguousarray(labels))
    if logits.dtype not in _loss_result:  # (device result, host copy), reused every step
        _loss_result[logits.dtype] = (cuda.device_array(2, logits.dtype), np.empty(2, logits.dtype))
    result, host = _loss_result[logits.dtype]
    _k.softmax_xent(logits, labels, dlogits, result)
    loss, n_bad = result.copy_to_host(host)
    if n_bad:
        raise ValueError(f"{int(n_bad)} labels of the batch are outside [0, {logits.shape[0]}) "
                         f"(the number of classes)")
    return float(loss)


sgd_update = _k.sgd_update
adam_update = _k.adam_update
gather_batch = _k.gather_batch
take = _k.take


def prefetch_rows(data, idx) -> None:
    """Nothing to do: the training set is already in device memory (see backend_cpu)."""


# ------------------------------------------------------------------ convolution

im2col = _im2col.im2col
col2im = _im2col.col2im
maxpool_forward = _im2col.maxpool_forward
maxpool_backward = _im2col.maxpool_backward
lrn_forward = _im2col.lrn_forward
lrn_backward = _im2col.lrn_backward
