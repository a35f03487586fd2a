"""Numba kernels for convolutional networks, each with a plain NumPy reference twin:
im2col / col2im (patch matrix and its adjoint), max pooling, local response normalisation.

Layout. An image activation is ``(C, H, W, batch)``, C-contiguous: features-major like every
sparsenn activation, with the batch last, so ``x[c, h, w]`` is one contiguous run of ``batch``
values and every inner loop below runs along it (LLVM turns those into SIMD instructions).

The patch matrix of a k_h x k_w convolution with stride (s_h, s_w) and top/left padding
(p_h, p_w) is::

    cols[(c, i, j), (oh, ow, b)] = x[c, oh*s_h - p_h + i, ow*s_w - p_w + j, b]   (0 outside x)

    cols: (C * k_h * k_w, H_out * W_out * batch),  row index (c * k_h + i) * k_w + j

so a convolution is one matrix product ``y = W @ cols`` with the filter bank ``W`` as a
``(C_out, C * k_h * k_w)`` matrix (PyTorch's ``weight.reshape(C_out, -1)`` order), and its
result ``(C_out, H_out * W_out * batch)`` already *is* ``(C_out, H_out, W_out, batch)``: no
transpose. Padding at the bottom/right is implied by ``H_out``/``W_out`` (see
:func:`conv_geometry`, which also computes TensorFlow's asymmetric 'same' padding).

Outputs are preallocated by the caller and *overwritten*. The kernels compile for whatever
float dtype they get (float32 for training, float64 for gradient checks). To step through them
or get a readable traceback, run with ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsenn.kernels import _sddmm_rows, _spmm_rows16

_JIT = dict(parallel=True, fastmath=True, cache=True)


# ---------------------------------------------------------------------------------------------
# Geometry: output size and padding of a window sliding over an image
# ---------------------------------------------------------------------------------------------


def conv_geometry(h: int, w: int, kh: int, kw: int, sh: int, sw: int, padding):
    """``(out_h, out_w, pad_top, pad_left)`` of a (kh, kw) window with stride (sh, sw) on h x w.

    padding:
      ``"valid"``     no padding: out = floor((n - k) / s) + 1
      ``"same"``      TensorFlow's rule: out = ceil(n / s), total padding
                      max((out - 1) * s + k - n, 0), the smaller half on top/left
      ``p`` or ``(p_h, p_w)``  explicit symmetric padding: out = floor((n + 2p - k) / s) + 1
    Raises ValueError when the window does not fit.
    """
    if padding == "valid":
        ph = pw = 0
        out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    elif padding == "same":
        out_h, out_w = -(-h // sh), -(-w // sw)
        ph = max((out_h - 1) * sh + kh - h, 0) // 2
        pw = max((out_w - 1) * sw + kw - w, 0) // 2
    else:
        ph, pw = (padding, padding) if np.isscalar(padding) else tuple(padding)
        ph, pw = int(ph), int(pw)
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if out_h < 1 or out_w < 1 or h < 1 or w < 1:
        raise ValueError(
            f"a {kh}x{kw} window with stride ({sh}, {sw}) and padding {padding!r} does not fit "
            f"a {h}x{w} input (output would be {out_h}x{out_w})"
        )
    return int(out_h), int(out_w), int(ph), int(pw)


# ---------------------------------------------------------------------------------------------
# im2col: x (C, H, W, B) -> cols (C*kh*kw, H_out*W_out*B)
# ---------------------------------------------------------------------------------------------


@njit(**_JIT)
def im2col(x, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """cols[(c,i,j), (oh,ow,b)] = x[c, oh*sh - ph + i, ow*sw - pw + j, b], 0 where that is outside x.

    x[C, H, W, B]: C-contiguous.  cols[C*kh*kw, out_h*out_w*B]: overwritten.
    Cost O(C * kh * kw * out_h * out_w * B) copies; no arithmetic.

    One row of cols per prange iteration, so every output element has a single writer. For a
    fixed (row, oh) the valid output columns ow form one interval [lo, hi), computed once, so
    the copies carry no bounds tests; with stride 1 the interval is one contiguous run of x
    and of cols, copied by a single loop. Copies go through 1-D views indexed by the loop
    counter alone: Numba then knows no index is negative and LLVM vectorises the loop (index
    arithmetic such as ``row[o + b]`` measured several times slower).
    """
    C, H, W, B = x.shape
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        row = cols[r]
        # ow is valid when 0 <= ow*sw - pw + j < W; -((j - pw) // sw) is ceil((pw - j) / sw)
        lo = min(max(0, -((j - pw) // sw)), out_w)
        hi = max(min(out_w, (W - 1 + pw - j) // sw + 1), lo)
        for oh in range(out_h):
            ih = oh * sh - ph + i
            dst = row[oh * out_w * B:(oh + 1) * out_w * B]  # (out_w * B,)
            if ih < 0 or ih >= H:
                dst[:] = 0.0
                continue
            dst[:lo * B] = 0.0
            dst[hi * B:] = 0.0
            src = x[c, ih].reshape(W * B)  # a view: x is C-contiguous
            if sw == 1:
                s0 = (lo - pw + j) * B
                d = dst[lo * B:hi * B]
                s = src[s0:s0 + (hi - lo) * B]
                for t in range(d.shape[0]):
                    d[t] = s[t]
            else:
                for ow in range(lo, hi):
                    d = dst[ow * B:(ow + 1) * B]
                    s = src[(ow * sw - pw + j) * B:(ow * sw - pw + j + 1) * B]
                    for b in range(B):
                        d[b] = s[b]


def im2col_ref(x, kh, kw, sh, sw, ph, pw, out_h, out_w):
    """NumPy twin of :func:`im2col`: returns cols (C*kh*kw, out_h*out_w*B)."""
    C, H, W, B = x.shape
    # pad enough on every side for every window, then take strided slices
    pad_b = max(0, (out_h - 1) * sh + kh - H - ph)
    pad_r = max(0, (out_w - 1) * sw + kw - W - pw)
    xp = np.pad(x, ((0, 0), (ph, pad_b), (pw, pad_r), (0, 0)))
    cols = np.empty((C, kh, kw, out_h, out_w, B), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
    return cols.reshape(C * kh * kw, out_h * out_w * B)


# ---------------------------------------------------------------------------------------------
# col2im: the adjoint of im2col, dx (C, H, W, B) from dcols (C*kh*kw, H_out*W_out*B)
# ---------------------------------------------------------------------------------------------


@njit(**_JIT)
def col2im(cols, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """dx[c, ih, iw, b] = sum of cols[(c,i,j), (oh,ow,b)] over all (i, j, oh, ow) with
    oh*sh - ph + i = ih and ow*sw - pw + j = iw: the adjoint (transpose) of :func:`im2col`.

    cols[C*kh*kw, out_h*out_w*B]: C-contiguous.  dx[C, H, W, B]: overwritten.
    Cost O(C * kh * kw * out_h * out_w * B) additions.

    Written as a *gather*: prange runs over the input rows (c, ih), and each iteration finds
    the (i, oh) pairs that land on its row and adds them into dx[c, ih] alone. No two
    iterations write the same row of dx, so overlapping windows cannot race (the scatter form,
    one iteration per cols row, would have neighbouring windows adding to the same pixel).
    The row dx[c, ih] (W * B values) stays in L1 cache while its kh * kw sources are added.
    """
    C, H, W, B = dx.shape
    for q in prange(C * H):
        c = q // H
        ih = q % H
        drow = dx[c, ih].reshape(W * B)  # a view: dx is C-contiguous
        drow[:] = 0.0
        for i in range(kh):
            t = ih + ph - i  # = oh * sh for the oh whose window row i lands on ih
            if t < 0 or t % sh != 0:
                continue
            oh = t // sh
            if oh >= out_h:
                continue
            for j in range(kw):
                lo = min(max(0, -((j - pw) // sw)), out_w)
                hi = max(min(out_w, (W - 1 + pw - j) // sw + 1), lo)
                src = cols[(c * kh + i) * kw + j, oh * out_w * B:(oh + 1) * out_w * B]
                if sw == 1:
                    s0 = (lo - pw + j) * B
                    d = drow[s0:s0 + (hi - lo) * B]
                    s = src[lo * B:hi * B]
                    for u in range(d.shape[0]):
                        d[u] += s[u]
                else:
                    for ow in range(lo, hi):
                        d = drow[(ow * sw - pw + j) * B:(ow * sw - pw + j + 1) * B]
                        s = src[ow * B:(ow + 1) * B]
                        for b in range(B):
                            d[b] += s[b]


def col2im_ref(cols, C, H, W, B, kh, kw, sh, sw, ph, pw, out_h, out_w):
    """NumPy twin of :func:`col2im`: returns dx (C, H, W, B)."""
    pad_b = max(0, (out_h - 1) * sh + kh - H - ph)
    pad_r = max(0, (out_w - 1) * sw + kw - W - pw)
    dxp = np.zeros((C, H + ph + pad_b, W + pw + pad_r, B), dtype=cols.dtype)
    c6 = cols.reshape(C, kh, kw, out_h, out_w, B)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :] += c6[:, i, j]
    return np.ascontiguousarray(dxp[:, ph:ph + H, pw:pw + W, :])


# ---------------------------------------------------------------------------------------------
# A sparse convolution patch by patch: im2col's product without the patch matrix
# ---------------------------------------------------------------------------------------------
#
# The patch matrix of a convolution is large: LeNet-5's conv2 (20 channels of 14 x 14, 5 x 5
# windows, batch 100) makes cols (500, 19,600), 39 MB, written by im2col and read by each of
# the three products of a step from memory. Column block (oh, ow) of cols, its ``batch``
# columns, is one window position's patch, ``(C*kh*kw, batch)``: 200 KB there, which stays in
# a core's L2 while the sparse products use it at once, and the input it is copied from
# (1.6 MB) stays in the caches. So for float32 batches of 16 to 143 columns (the explicit-vector
# kernels of sparsenn.kernels) the sparse convolution runs one window position at a time:
#
#   forward:   patch = cols[:, p]  ->  y[:, p] = W patch + b
#   backward:  dW += dy[:, p] patch^T at the stored entries (SDDMM),
#              dpatch = W^T dy[:, p]  ->  dx += col2im of that block alone
#
# with the positions split over the threads, each with its own patch buffer and (backward) its
# own partial dW and dx, summed at the end. The same sums as im2col -> spmm / sddmm / spmm with
# the transpose index -> col2im, taken in another order (float32 rounding apart).
# Measured: docs/kernels.md, "Convolutions patch by patch".


@njit(inline="always")
def _patch(x, kh, kw, sh, sw, ph, pw, oh, ow, buf):
    """buf[(c,i,j)] = x[c, oh*sh - ph + i, ow*sw - pw + j] (0 outside x): the columns of
    window position (oh, ow) in im2col's cols. x[C, H, W, B], buf[C*kh*kw, B]: overwritten."""
    C, H, W, B = x.shape
    for c in range(C):
        for i in range(kh):
            ih = oh * sh - ph + i
            for j in range(kw):
                iw = ow * sw - pw + j
                d = buf[(c * kh + i) * kw + j]
                if ih < 0 or ih >= H or iw < 0 or iw >= W:
                    for b in range(B):
                        d[b] = 0.0
                else:
                    s = x[c, ih, iw]
                    for b in range(B):
                        d[b] = s[b]


@njit(inline="always")
def _unpatch_add(dbuf, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """dx[c, oh*sh - ph + i, ow*sw - pw + j] += dbuf[(c,i,j)] where that pixel is inside dx:
    :func:`col2im` of one window position's columns, added. dbuf[C*kh*kw, B], dx[C, H, W, B]."""
    C, H, W, B = dx.shape
    for c in range(C):
        for i in range(kh):
            ih = oh * sh - ph + i
            if ih < 0 or ih >= H:
                continue
            for j in range(kw):
                iw = ow * sw - pw + j
                if iw < 0 or iw >= W:
                    continue
                d = dx[c, ih, iw]
                s = dbuf[(c * kh + i) * kw + j]
                for b in range(B):
                    d[b] += s[b]


def _sparse_conv_forward_kernel(NV):
    """The compiled forward for batches of 16 NV to 16 NV + 15 columns (NV a closure constant,
    as sparsenn.kernels._spmm_vector_kernel)."""

    @njit(**_JIT)
    def kernel(x, kh, kw, sh, sw, ph, pw, out_w, indptr, indices, data, bias, out, bounds, bufs, outs):
        B = x.shape[3]
        n_out = out.shape[0]
        for t in prange(len(bounds) - 1):
            buf, ob = bufs[t], outs[t]
            for p in range(bounds[t], bounds[t + 1]):
                _patch(x, kh, kw, sh, sw, ph, pw, p // out_w, p % out_w, buf)
                _spmm_rows16(indptr, indices, data, None, bias, None, buf, ob, 0, n_out, NV, None)
                for r in range(n_out):
                    d = out[r, p * B:(p + 1) * B]
                    s = ob[r]
                    for b in range(B):
                        d[b] = s[b]

    return kernel


def _sparse_conv_backward_kernel(NV):
    """The compiled backward for batches of 16 NV to 16 NV + 15 columns."""

    @njit(**_JIT)
    def kernel(x, kh, kw, sh, sw, ph, pw, out_w, indptr, indices, t_indptr, t_rows, t_perm, data, dy, dw,
               need_dx, dx, bounds, bufs, dys, dws, dxs):
        B = x.shape[3]
        n_out, K, nnz = dy.shape[0], bufs.shape[1], dw.shape[0]
        for t in prange(len(bounds) - 1):
            buf, dyb, part, dxt = bufs[t], dys[t], dws[t], dxs[t]
            acc = part[1]
            for k in range(nnz):
                acc[k] = 0.0
            if need_dx:
                flat = dxt.reshape(dxt.size)
                for q in range(flat.shape[0]):
                    flat[q] = 0.0
            for p in range(bounds[t], bounds[t + 1]):
                oh, ow = p // out_w, p % out_w
                for r in range(n_out):  # dy[:, p] as a contiguous (C_out, B) block
                    d = dyb[r]
                    s = dy[r, p * B:(p + 1) * B]
                    for b in range(B):
                        d[b] = s[b]
                _patch(x, kh, kw, sh, sw, ph, pw, oh, ow, buf)
                _sddmm_rows(indptr, indices, dyb, buf, part[0], 0, n_out, None, NV, 8, None)
                for k in range(nnz):
                    acc[k] += part[0, k]
                if need_dx:  # the patch is no longer needed: its buffer takes W^T dy[:, p]
                    _spmm_rows16(t_indptr, t_rows, data, t_perm, None, None, dyb, buf, 0, K, NV, None)
                    _unpatch_add(buf, kh, kw, sh, sw, ph, pw, oh, ow, dxt)
        for k in prange(nnz):
            s = dws[0, 1, k]
            for t in range(1, dws.shape[0]):
                s += dws[t, 1, k]
            dw[k] = s
        if need_dx:
            C, H, W = dx.shape[0], dx.shape[1], dx.shape[2]
            for q in prange(C * H):
                c, ih = q // H, q % H
                d = dx[c, ih].reshape(W * B)
                s0 = dxs[0, c, ih].reshape(W * B)
                for u in range(W * B):
                    d[u] = s0[u]
                for t in range(1, dxs.shape[0]):
                    st = dxs[t, c, ih].reshape(W * B)
                    for u in range(W * B):
                        d[u] += st[u]

    return kernel


_SPARSE_CONV_FORWARD = (None,) + tuple(_sparse_conv_forward_kernel(nv) for nv in range(1, 9))  # by batch // 16
_SPARSE_CONV_BACKWARD = (None,) + tuple(_sparse_conv_backward_kernel(nv) for nv in range(1, 9))


def patchwise(x, data) -> bool:
    """Whether :func:`sparse_conv_forward` / :func:`sparse_conv_backward` take this input
    ``x[C, H, W, B]`` and these weights: float32, C-contiguous, 16 <= B <= 143."""
    return (x.dtype == np.float32 and data.dtype == np.float32 and x.ndim == 4 and 16 <= x.shape[3] <= 143
            and x.flags.c_contiguous)


def _positions(scratch: dict, out_h: int, out_w: int, n_parts: int) -> np.ndarray:
    """bounds[n_parts+1]: the window positions 0 .. out_h*out_w cut into n_parts equal runs,
    kept in ``scratch`` (computed again only when the geometry or the thread count changes)."""
    key = ("positions", out_h, out_w, n_parts)
    if key not in scratch:
        scratch[key] = np.linspace(0, out_h * out_w, n_parts + 1).astype(np.int64)
    return scratch[key]


def _scratch(scratch: dict, name: str, shape: tuple) -> np.ndarray:
    """A float32 work array kept in ``scratch`` between calls (reallocated when its shape changes)."""
    a = scratch.get(name)
    if a is None or a.shape != shape:
        a = scratch[name] = np.empty(shape, np.float32)
    return a


def sparse_conv_forward(x, kh, kw, sh, sw, ph, pw, out_h, out_w, indptr, indices, data, bias, out, n_parts: int,
                        scratch=None):
    """out = W @ im2col(x) (+ bias[:, None]) for CSR ``W`` (indptr, indices, data) of shape
    (C_out, C*kh*kw), one window position at a time (see above): no patch matrix.

    x[C, H, W, B] float32, C-contiguous, 16 <= B <= 143 (:func:`patchwise`).
    out[C_out, out_h*out_w*B]: overwritten.  bias[C_out] or None.  n_parts: threads to use.
    scratch (a dict, optional): work arrays kept between calls, per part a patch (C*kh*kw, B)
    and an output block (C_out, B).
    """
    scratch = {} if scratch is None else scratch
    B = x.shape[3]
    bufs = _scratch(scratch, "patches", (n_parts, x.shape[0] * kh * kw, B))
    outs = _scratch(scratch, "output blocks", (n_parts, out.shape[0], B))
    _SPARSE_CONV_FORWARD[B // 16](x, kh, kw, sh, sw, ph, pw, out_w, indptr, indices, data, bias, out,
                                  _positions(scratch, out_h, out_w, n_parts), bufs, outs)


def sparse_conv_backward(x, kh, kw, sh, sw, ph, pw, out_h, out_w, indptr, indices, t_indptr, t_rows, t_perm,
                         data, dy, dw, dx, n_parts: int, scratch=None):
    """The gradients of :func:`sparse_conv_forward`, one window position at a time:
    dW[k] = sum over positions p of dy[row_k, p] . patch_p[col_k] (the stored entries only),
    dx = col2im(W^T dy), each position's W^T dy[:, p] added into dx as it is made.

    x: the forward's input.  dy[C_out, out_h*out_w*B] C-contiguous.  dw[nnz]: overwritten.
    dx[C, H, W, B]: overwritten, or None (the first layer: no input gradient).
    t_indptr, t_rows, t_perm: W's transpose index (sparsenn.csr.transpose_index).
    scratch (optional): per part a patch, a block of dy, two (nnz,) arrays and, with dx, a
    dx-sized partial sum.
    """
    scratch = {} if scratch is None else scratch
    B = x.shape[3]
    need_dx = dx is not None
    bufs = _scratch(scratch, "patches", (n_parts, x.shape[0] * kh * kw, B))
    dys = _scratch(scratch, "dy blocks", (n_parts, dy.shape[0], B))
    dws = _scratch(scratch, "dW sums", (n_parts, 2, dw.shape[0]))
    dxs = _scratch(scratch, "dx sums", (n_parts,) + x.shape if need_dx else (n_parts, 0, 0, 0, B))
    _SPARSE_CONV_BACKWARD[B // 16](x, kh, kw, sh, sw, ph, pw, out_w, indptr, indices, t_indptr, t_rows, t_perm,
                                   data, dy, dw, need_dx, dx if need_dx else dxs[0], _positions(scratch, out_h, out_w, n_parts),
                                   bufs, dys, dws, dxs)


def sparse_conv_ref(x, kh, kw, sh, sw, ph, pw, out_h, out_w, w_dense, bias, dy):
    """NumPy twin of the two above: (y, dW, dx) through the patch matrix, dense: y = W cols + b,
    dW = dy cols^T (every entry: the kernels' dw is this at W's stored entries),
    dx = col2im(W^T dy). w_dense: (C_out, C*kh*kw), zero where W stores nothing."""
    C, H, W, B = x.shape
    cols = im2col_ref(x, kh, kw, sh, sw, ph, pw, out_h, out_w)
    y = w_dense @ cols + (0 if bias is None else bias[:, None])
    dw = dy @ cols.T
    dx = col2im_ref(w_dense.T @ dy, C, H, W, B, kh, kw, sh, sw, ph, pw, out_h, out_w)
    return y, dw, dx


# ---------------------------------------------------------------------------------------------
# Max pooling: y[c, oh, ow, b] = max over the window; argmax kept for the backward pass
# ---------------------------------------------------------------------------------------------


@njit(**_JIT)
def maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """out[c,oh,ow,b] = max of x[c, oh*sh-ph+i, ow*sw-pw+j, b] over the in-bounds (i, j).

    x[C, H, W, B]: C-contiguous.  out[C, out_h, out_w, B]: overwritten.
    argmax[C, out_h, out_w, B] (int32): overwritten with ih * W + iw of the maximum (the first
    one in window order on ties). Padding never wins: padded positions are skipped, not -inf
    (fastmath assumes no infinities). Cost O(C * out_h * out_w * kh * kw * B) comparisons.
    One (c, oh) output row per prange iteration: a single writer per output element.
    """
    C, H, W, B = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for q in prange(C * out_h):
        c = q // out_h
        oh = q % out_h
        i0 = max(0, ph - oh * sh)
        i1 = min(kh, H + ph - oh * sh)
        for ow in range(out_w):
            j0 = max(0, pw - ow * sw)
            j1 = min(kw, W + pw - ow * sw)
            y = out[c, oh, ow]
            a = argmax[c, oh, ow]
            ih = oh * sh - ph + i0
            iw = ow * sw - pw + j0
            first = x[c, ih, iw]
            for b in range(B):  # start from the first in-bounds element of the window
                y[b] = first[b]
                a[b] = ih * W + iw
            for i in range(i0, i1):
                ih = oh * sh - ph + i
                for j in range(j0, j1):
                    iw = ow * sw - pw + j
                    v = x[c, ih, iw]
                    k = ih * W + iw
                    for b in range(B):
                        if v[b] > y[b]:
                            y[b] = v[b]
                            a[b] = k


@njit(**_JIT)
def maxpool_backward(dy, argmax, dx):
    """dx[c, h, w, b] = sum of dy[c, oh, ow, b] over the windows whose maximum was x[c, h, w, b].

    dy[C, out_h, out_w, B], argmax[C, out_h, out_w, B] (int32, from :func:`maxpool_forward`).
    dx[C, H, W, B]: overwritten. Cost O(C * (H * W + out_h * out_w) * B).
    prange runs over channels: overlapping windows (3x3 stride 2) can send two gradients to
    the same pixel, but only within one channel, which one iteration owns entirely.
    """
    C, H, W, B = dx.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    for c in prange(C):
        d = dx[c].reshape(H * W, B)  # a view: dx is C-contiguous
        for k in range(H * W):
            for b in range(B):
                d[k, b] = 0.0
        for oh in range(out_h):
            for ow in range(out_w):
                g = dy[c, oh, ow]
                a = argmax[c, oh, ow]
                for b in range(B):
                    d[a[b], b] += g[b]


def maxpool_forward_ref(x, kh, kw, sh, sw, ph, pw, out_h, out_w):
    """NumPy twin of :func:`maxpool_forward`: returns (out, argmax)."""
    C, H, W, B = x.shape
    pad_b = max(0, (out_h - 1) * sh + kh - H - ph)
    pad_r = max(0, (out_w - 1) * sw + kw - W - pw)
    xp = np.pad(x, ((0, 0), (ph, pad_b), (pw, pad_r), (0, 0)), constant_values=-np.inf)
    flat = np.pad(np.arange(H * W).reshape(H, W), ((ph, pad_b), (pw, pad_r)), constant_values=-1)
    # windows in window order (i, j), so argmax's first-maximum rule matches the kernel's
    win = np.stack([xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
                    for i in range(kh) for j in range(kw)])  # (kh*kw, C, out_h, out_w, B)
    pos = np.stack([flat[i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
                    for i in range(kh) for j in range(kw)])  # (kh*kw, out_h, out_w)
    best = np.argmax(win, axis=0)  # (C, out_h, out_w, B)
    out = np.take_along_axis(win, best[None], axis=0)[0]
    oh, ow = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    argmax = pos[best, oh[None, :, :, None], ow[None, :, :, None]].astype(np.int32)
    return out, argmax


def maxpool_backward_ref(dy, argmax, H, W):
    """NumPy twin of :func:`maxpool_backward`: returns dx (C, H, W, B)."""
    C, out_h, out_w, B = dy.shape
    dx = np.zeros((C, H * W, B), dtype=dy.dtype)
    c, _, _, b = np.indices(dy.shape)
    np.add.at(dx, (c, argmax, b), dy)
    return dx.reshape(C, H, W, B)


# ---------------------------------------------------------------------------------------------
# Local response normalisation across channels (TensorFlow's tf.nn.lrn)
# ---------------------------------------------------------------------------------------------
#
#   d[c] = bias + alpha * sum_{c' = max(0, c-r)}^{min(C-1, c+r)} x[c']^2
#   y[c] = x[c] * d[c]^(-beta)
#
# at every position (h, w, b) independently. x is viewed as (C, N) with N = H * W * B.


# The window moves one channel at a time: d[c + 1]'s sum is d[c]'s plus x[c + r + 1]^2 minus
# x[c - r]^2. So the fast kernels keep a running sum, two updates per channel where the plain
# loops add 2r + 1 rows (9 for TensorFlow's r = 4), and run over the channels in the inner
# sequence, in blocks of LRN_BLOCK positions (the threads take blocks; a block's rows stay in
# the caches while the window moves). Measured on an Intel Xeon host (rocketlake to Numba), one
# thread, TensorFlow's r = 4: LeNet-5's norm2 alone (50 x 19,600 float32) 1.5-1.6 -> 0.7 ms
# forward, 2.0 -> 1.1 ms backward; in a training step of the random LeNet-5 (bench_lenet5.py,
# one BLAS thread too) norm1 and norm2 together 7.1 -> 3.7 ms, the step 30.9 -> 27.5 ms.
# The plain loops, one window sum per channel, stay beside them.
LRN_BLOCK = 1024


@njit(**_JIT)
def lrn_forward(x, radius, bias, alpha, beta, d, dpow, out):
    """y = x * (bias + alpha * windowed sum of x^2 over channels)^(-beta), with a running window.

    x[C, N]: C-contiguous (an image activation viewed as (C, H*W*B)).
    d[C, N], dpow[C, N], out[C, N]: overwritten with d, d^(-beta) and y (d and d^(-beta) are
    what the backward pass needs). Cost O(C * N), whatever the radius. The running sum adds
    and subtracts the same squares: it is clamped at 0 so that rounding cannot make it negative.
    """
    C, N = x.shape
    b_, a_, one, zero = x.dtype.type(bias), x.dtype.type(alpha), x.dtype.type(1.0), x.dtype.type(0.0)
    for blk in prange((N + LRN_BLOCK - 1) // LRN_BLOCK):
        p0 = blk * LRN_BLOCK
        n = min(N, p0 + LRN_BLOCK) - p0
        s = np.zeros(n, x.dtype)
        for cc in range(min(C, radius)):  # channels 0 .. r-1; channel r enters at c = 0
            xc = x[cc, p0:p0 + n]
            for p in range(n):
                s[p] += xc[p] * xc[p]
        for c in range(C):
            if c + radius < C:
                xa = x[c + radius, p0:p0 + n]
                for p in range(n):
                    s[p] += xa[p] * xa[p]
            if c - radius - 1 >= 0:
                xo = x[c - radius - 1, p0:p0 + n]
                for p in range(n):
                    s[p] -= xo[p] * xo[p]
            xr, dr, pr, yr = x[c, p0:p0 + n], d[c, p0:p0 + n], dpow[c, p0:p0 + n], out[c, p0:p0 + n]
            if beta == 0.75:  # d^(-3/4) = 1 / (sqrt(d) sqrt(sqrt(d))): SIMD square roots, no pow
                for p in range(n):
                    v = b_ + a_ * max(s[p], zero)
                    r = np.sqrt(v)
                    q = one / (r * np.sqrt(r))
                    dr[p] = v
                    pr[p] = q
                    yr[p] = xr[p] * q
            else:
                for p in range(n):
                    v = b_ + a_ * max(s[p], zero)
                    q = v ** -beta
                    dr[p] = v
                    pr[p] = q
                    yr[p] = xr[p] * q


@njit(**_JIT)
def lrn_backward(x, y, d, dpow, dy, radius, alpha, beta, t, dx):
    """dx[j] = dy[j] d[j]^(-beta) - 2 alpha beta x[j] sum_{c: |c - j| <= r} dy[c] y[c] / d[c],
    the window summed as a running sum (:func:`lrn_forward`; derivation in :func:`lrn_backward_plain`).

    x, y, d, dpow, dy [C, N]: from the forward pass and upstream.  t[C, N]: overwritten with
    dy y / d.  dx[C, N]: overwritten. Cost O(C * N), whatever the radius.
    """
    C, N = x.shape
    k = x.dtype.type(-2.0 * alpha * beta)
    for blk in prange((N + LRN_BLOCK - 1) // LRN_BLOCK):
        p0 = blk * LRN_BLOCK
        n = min(N, p0 + LRN_BLOCK) - p0
        for c in range(C):
            tr, g, yr, dr = t[c, p0:p0 + n], dy[c, p0:p0 + n], y[c, p0:p0 + n], d[c, p0:p0 + n]
            for p in range(n):
                tr[p] = g[p] * yr[p] / dr[p]
        s = np.zeros(n, x.dtype)
        for cc in range(min(C, radius)):
            tc = t[cc, p0:p0 + n]
            for p in range(n):
                s[p] += tc[p]
        for j in range(C):
            if j + radius < C:
                ta = t[j + radius, p0:p0 + n]
                for p in range(n):
                    s[p] += ta[p]
            if j - radius - 1 >= 0:
                to = t[j - radius - 1, p0:p0 + n]
                for p in range(n):
                    s[p] -= to[p]
            o, xr, g, pr = dx[j, p0:p0 + n], x[j, p0:p0 + n], dy[j, p0:p0 + n], dpow[j, p0:p0 + n]
            for p in range(n):
                o[p] = g[p] * pr[p] + k * xr[p] * s[p]


@njit(**_JIT)
def lrn_forward_plain(x, radius, bias, alpha, beta, d, dpow, out):
    """The textbook loop of :func:`lrn_forward`: y = x * (bias + alpha * windowed sum of x^2 over
    channels)^(-beta), each channel's window summed afresh.

    x[C, N]: C-contiguous (an image activation viewed as (C, H*W*B)).
    d[C, N], dpow[C, N], out[C, N]: overwritten with d, d^(-beta) and y (d and d^(-beta) are
    what the backward pass needs). Cost O(C * (2r + 1) * N).
    One channel c per prange iteration, which writes only row c of d, dpow, out.
    """
    C, N = x.shape
    for c in prange(C):
        s = d[c]
        for p in range(N):
            s[p] = 0.0
        for cc in range(max(0, c - radius), min(C, c + radius + 1)):
            xc = x[cc]
            for p in range(N):
                s[p] += xc[p] * xc[p]
        xr, pr, yr = x[c], dpow[c], out[c]
        for p in range(N):
            s[p] = bias + alpha * s[p]
        if beta == 0.75:
            # d^(-3/4) = 1 / (sqrt(d) * sqrt(sqrt(d))): square roots are SIMD instructions,
            # while a general power is a scalar libm call per element (measured ~5x slower)
            for p in range(N):
                r = np.sqrt(s[p])
                pr[p] = 1.0 / (r * np.sqrt(r))
        else:
            for p in range(N):
                pr[p] = s[p] ** -beta
        for p in range(N):
            yr[p] = xr[p] * pr[p]


@njit(**_JIT)
def lrn_backward_plain(x, y, d, dpow, dy, radius, alpha, beta, t, dx):
    """The textbook loop of :func:`lrn_backward`: dx[j] = dy[j] d[j]^(-beta) - 2 alpha beta x[j] sum_{c: |c - j| <= r} dy[c] y[c] / d[c].

    From y[c] = x[c] d[c]^(-beta) and d[c] = bias + alpha sum_{|c'-c|<=r} x[c']^2:
    dy[c]/dx[j] = [c == j] d[c]^(-beta) - 2 alpha beta x[j] x[c] d[c]^(-beta-1) [|c - j| <= r],
    and x[c] d[c]^(-beta-1) = y[c] / d[c]. The window is symmetric, so the channels c whose
    window holds j are those within r of j.
    x, y, d, dpow, dy [C, N]: from the forward pass and upstream.  t[C, N]: scratch.
    dx[C, N]: overwritten. Cost O(C * (2r + 1) * N). Each prange iteration writes one row.
    """
    C, N = x.shape
    for c in prange(C):
        tr, g, yr, dr = t[c], dy[c], y[c], d[c]
        for p in range(N):
            tr[p] = g[p] * yr[p] / dr[p]
    k = -2.0 * alpha * beta
    for j in prange(C):
        o, xr, g, pr = dx[j], x[j], dy[j], dpow[j]
        for p in range(N):
            o[p] = 0.0
        for c in range(max(0, j - radius), min(C, j + radius + 1)):
            tc = t[c]
            for p in range(N):
                o[p] += tc[p]
        for p in range(N):
            o[p] = g[p] * pr[p] + k * xr[p] * o[p]


def lrn_forward_ref(x, radius, bias, alpha, beta):
    """NumPy twin of :func:`lrn_forward`: returns (y, d) for x (C, N)."""
    C = x.shape[0]
    sq = x * x
    d = np.stack([sq[max(0, c - radius):c + radius + 1].sum(axis=0) for c in range(C)])
    d = bias + alpha * d
    return x * d ** -beta, d


def lrn_backward_ref(x, dy, radius, bias, alpha, beta):
    """NumPy twin of :func:`lrn_backward`: returns dx (C, N)."""
    y, d = lrn_forward_ref(x, radius, bias, alpha, beta)
    C = x.shape[0]
    t = dy * y / d
    s = np.stack([t[max(0, j - radius):j + radius + 1].sum(axis=0) for j in range(C)])
    return dy * d ** -beta - 2.0 * alpha * beta * x * s

