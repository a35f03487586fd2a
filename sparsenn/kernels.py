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

import numpy as np
from numba import njit, prange

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


@njit(**_JIT)
def spmm(indptr, indices, data, x, out, bounds, perm=None):
    """out = W @ x for CSR ``W``.

    indptr[n_out+1], indices[nnz], data[nnz]: CSR of W (n_out, n_in); perm[nnz] (optional): the
    value of entry k is data[perm[k]] instead of data[k] (used for W^T, below).
    x[n_in, batch]: C-contiguous.  out[n_out, batch]: overwritten.  bounds[n_parts+1]: row chunks.
    Cost O(nnz * batch) multiply-adds; reads each row of x once per nonzero in its column.

    Four nonzeros are combined per pass over the output row: one load and one store of
    ``out[r, b]`` per four multiply-adds instead of per one. That halves the memory traffic
    and was measured about 2x faster than the one-at-a-time loop on this machine kind.
    """
    batch = x.shape[1]
    for p in prange(len(bounds) - 1):
        for r in range(bounds[p], bounds[p + 1]):
            y = out[r]
            for b in range(batch):
                y[b] = 0.0
            k = indptr[r]
            end = indptr[r + 1]
            while k + 4 <= end:
                w0, w1 = _weight(data, perm, k), _weight(data, perm, k + 1)
                w2, w3 = _weight(data, perm, k + 2), _weight(data, perm, k + 3)
                x0, x1 = x[indices[k]], x[indices[k + 1]]
                x2, x3 = x[indices[k + 2]], x[indices[k + 3]]
                for b in range(batch):
                    y[b] += w0 * x0[b] + w1 * x1[b] + w2 * x2[b] + w3 * x3[b]
                k += 4
            while k < end:
                w = _weight(data, perm, k)
                xk = x[indices[k]]
                for b in range(batch):
                    y[b] += w * xk[b]
                k += 1


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


@njit(**_JIT)
def sddmm(indptr, indices, dy, x, out, bounds):
    """out[k] = dot(dy[r], x[indices[k]]) for every stored entry k of row r.

    This is ``(dy @ x.T)`` sampled at the pattern of W: the gradient of ``y = W x`` with
    respect to the stored weights only. Connections that do not exist get no gradient.
    indptr[n_out+1], indices[nnz]: pattern of W (n_out, n_in).  dy[n_out, batch],
    x[n_in, batch]: C-contiguous.  out[nnz]: overwritten.  Cost O(nnz * batch).

    Two entries of a row are done per pass so each load of ``dy[r, b]`` serves two dot products.
    """
    batch = x.shape[1]
    for p in prange(len(bounds) - 1):
        for r in range(bounds[p], bounds[p + 1]):
            g = dy[r]
            k = indptr[r]
            end = indptr[r + 1]
            while k + 2 <= end:
                x0 = x[indices[k]]
                x1 = x[indices[k + 1]]
                s0 = 0.0
                s1 = 0.0
                for b in range(batch):
                    s0 += g[b] * x0[b]
                    s1 += g[b] * x1[b]
                out[k] = s0
                out[k + 1] = s1
                k += 2
            if k < end:
                x0 = x[indices[k]]
                s0 = 0.0
                for b in range(batch):
                    s0 += g[b] * x0[b]
                out[k] = s0


def sddmm_ref(indptr, indices, dy, x):
    """NumPy twin of :func:`sddmm`: returns ``(dy @ x.T)[row_k, indices[k]]`` for each k."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.einsum("kb,kb->k", dy[rows], x[indices])


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
# Mini-batch gather: batch-major dataset rows -> a features-major batch
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=True, cache=True)
def gather_batch(data, idx, out):
    """out[f, b] = data[idx[b], f]: pick rows of a batch-major dataset into a features-major batch.

    data[n, n_features] C-contiguous (one sample per row), idx[batch] ints in [0, n),
    out[n_features, batch]: overwritten. Cost O(n_features * batch).
    Each thread owns a block of 64 features (64 output rows), so writes never overlap; within
    a block, each sample's 64 features are one contiguous read.
    """
    n_features = out.shape[0]
    batch = idx.shape[0]
    for blk in prange((n_features + 63) // 64):
        f0 = blk * 64
        f1 = min(n_features, f0 + 64)
        for b in range(batch):
            row = data[idx[b]]
            for f in range(f0, f1):
                out[f, b] = row[f]


def gather_batch_ref(data, idx):
    """NumPy twin of :func:`gather_batch`."""
    return np.ascontiguousarray(data[idx].T)
