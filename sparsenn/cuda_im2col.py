"""CUDA twins (numba.cuda) of the convolution kernels in :mod:`sparsenn.im2col`: im2col /
col2im, max pooling, local response normalisation.

Each public function here has the name and argument list of its CPU twin in
``sparsenn.im2col`` and the same meaning; it takes numba device arrays instead of NumPy arrays,
launches one or two raw ``@cuda.jit`` kernels on the default stream and returns None. The CPU
Numba kernel and its NumPy ``_ref`` twin there are the reference the tests compare against:

    im2col            _im2col_kernel                        im2col, im2col_ref
    col2im            _col2im_kernel                        col2im, col2im_ref
    maxpool_forward   _maxpool_forward_kernel               maxpool_forward, maxpool_forward_ref
    maxpool_backward  _maxpool_backward_kernel              maxpool_backward, maxpool_backward_ref
    lrn_forward       _lrn_forward_kernel                   lrn_forward, lrn_forward_ref
    lrn_backward      _lrn_backward_t_kernel, then          lrn_backward, lrn_backward_ref
                      _lrn_backward_kernel

Layout. As on the CPU, an image activation is ``(C, H, W, batch)``, C-contiguous, batch last,
and the patch matrix is ``cols[(c, i, j), (oh, ow, b)]``: ``(C*kh*kw, H_out*W_out*batch)``.

Thread mapping. Every kernel gives one thread one output element (or one (channel, sample)
column, for the max-pooling backward) and numbers the elements in memory order, so the
batch index b is the fastest-varying: b = e % batch for element e. Consecutive threads of a
warp therefore take consecutive b and read and write consecutive addresses (coalesced), and
no thread idles when the batch is small or not a multiple of 32. Each output element has
exactly one writing thread, so no kernel needs atomics: col2im and the max-pooling backward
*gather* into the element they own, as their CPU twins do. The grid is 1-D, ``_THREADS``
threads per block, at most ``_MAX_BLOCKS`` blocks; threads loop over the elements with a
grid-stride loop when there are more elements than threads.

Precision. Sums are accumulated in the array's own dtype (``x.dtype.type(0)``, not the literal
``0.0``, which Numba types as float64), and a value the CPU kernel stores and then reads back
is rounded to the array dtype before it is reused, so float32 results match the CPU kernels to
rounding (the CPU ones are compiled with fastmath, so they may fuse or reorder differently).
The float arguments (LRN's bias, alpha, beta) are float64, as on the CPU, so the expressions
that mix them in are evaluated in float64 there as well.

Debugging: run with ``NUMBA_ENABLE_CUDASIM=1`` (Numba's CUDA simulator, no GPU needed; each
GPU thread becomes a Python thread, so keep grids to a few hundred threads) to step through a
kernel in a debugger. The simulator has no warp shuffles or ``syncwarp``; these kernels use
neither.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

_THREADS = 128  # threads per block: four full warps
# Enough blocks to fill a large GPU (an H100 keeps 132 SMs x 16 such blocks resident); past
# that, threads loop. Read at launch time, so a test may shrink it to exercise the loop.
_MAX_BLOCKS = 4096


def _launch(kernel, n, *args):
    """Run kernel(*args) on the default stream with enough threads for n elements."""
    blocks = max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS))
    kernel[blocks, _THREADS](*args)


# ---------------------------------------------------------------------------------------------
# im2col: x (C, H, W, B) -> cols (C*kh*kw, H_out*W_out*B)
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _im2col_kernel(x, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """cols[(c,i,j), (oh,ow,b)] = x[c, oh*sh - ph + i, ow*sw - pw + j, b], 0 outside x.

    x[C, H, W, B]: C-contiguous.  cols[C*kh*kw, out_h*out_w*B]: overwritten.
    Cost O(C * kh * kw * out_h * out_w * B) copies.
    One thread per element of cols, in memory order (b fastest): the writes are coalesced,
    and so are the reads, which for fixed (c, ih, iw) run along b.
    """
    C, H, W, B = x.shape
    n_cols = out_h * out_w * B
    n = cols.shape[0] * n_cols
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = e // n_cols
        col = e - r * n_cols  # = (oh * out_w + ow) * B + b
        b = col % B
        ow = (col // B) % out_w
        oh = col // (B * out_w)
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        ih = oh * sh - ph + i
        iw = ow * sw - pw + j
        if ih >= 0 and ih < H and iw >= 0 and iw < W:
            cols[r, col] = x[c, ih, iw, b]
        else:
            cols[r, col] = 0.0


def im2col(x, kh, kw, sh, sw, ph, pw, out_h, out_w, cols):
    """cols = im2col(x) on the GPU; see :func:`sparsenn.im2col.im2col`.

    x: device array (C, H, W, B).  cols: device array (C*kh*kw, out_h*out_w*B), overwritten.
    """
    _launch(_im2col_kernel, cols.size, x, int(kh), int(kw), int(sh), int(sw), int(ph), int(pw),
            int(out_h), int(out_w), cols)


# ---------------------------------------------------------------------------------------------
# col2im: the adjoint of im2col, dx (C, H, W, B) from dcols (C*kh*kw, H_out*W_out*B)
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _col2im_kernel(cols, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """dx[c, ih, iw, b] = sum of cols[(c,i,j), (oh,ow,b)] over all (i, j, oh, ow) with
    oh*sh - ph + i = ih and ow*sw - pw + j = iw: the adjoint of :func:`_im2col_kernel`.

    cols[C*kh*kw, out_h*out_w*B]: C-contiguous.  dx[C, H, W, B]: overwritten.
    Cost O(C * H * W * kh * kw * B): every (i, j) is tried, at most
    ceil(kh/sh) * ceil(kw/sw) of them contribute.
    One thread per element of dx (b fastest). A gather: the thread finds the patch entries
    that were copied from its pixel and sums them in a register, so overlapping windows never
    make two threads write one element (the scatter form, a thread per cols entry, would race).
    The sum runs over (i, j) in the CPU kernel's order, so the float32 result is the same.
    """
    C, H, W, B = dx.shape
    n = C * H * W * B
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = e % B
        iw = (e // B) % W
        ih = (e // (B * W)) % H
        c = e // (B * W * H)
        acc = dx.dtype.type(0)
        for i in range(kh):
            u = ih + ph - i  # = oh * sh for the window row oh whose row i lands on ih
            if u < 0 or u % sh != 0:
                continue
            oh = u // sh
            if oh >= out_h:
                continue
            for j in range(kw):
                v = iw + pw - j  # = ow * sw likewise
                if v < 0 or v % sw != 0:
                    continue
                ow = v // sw
                if ow >= out_w:
                    continue
                acc += cols[(c * kh + i) * kw + j, (oh * out_w + ow) * B + b]
        dx[c, ih, iw, b] = acc


def col2im(cols, kh, kw, sh, sw, ph, pw, out_h, out_w, dx):
    """dx = col2im(cols) on the GPU; see :func:`sparsenn.im2col.col2im`.

    cols: device array (C*kh*kw, out_h*out_w*B).  dx: device array (C, H, W, B), overwritten.
    """
    _launch(_col2im_kernel, dx.size, cols, int(kh), int(kw), int(sh), int(sw), int(ph), int(pw),
            int(out_h), int(out_w), dx)


# ---------------------------------------------------------------------------------------------
# Max pooling: y[c, oh, ow, b] = max over the window; argmax kept for the backward pass
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _maxpool_forward_kernel(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """out[c,oh,ow,b] = max of x[c, oh*sh-ph+i, ow*sw-pw+j, b] over the in-bounds (i, j).

    x[C, H, W, B]: C-contiguous.  out[C, out_h, out_w, B]: overwritten.
    argmax[C, out_h, out_w, B] (int32): overwritten with ih * W + iw of the maximum, the first
    one in window order on ties (strict >, as on the CPU). Padded positions are skipped, so
    padding never wins. Cost O(C * out_h * out_w * kh * kw * B) comparisons.
    One thread per output element (b fastest): its window is read along b, coalesced.
    """
    C, H, W, B = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    n = C * out_h * out_w * B
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = e % B
        ow = (e // B) % out_w
        oh = (e // (B * out_w)) % out_h
        c = e // (B * out_w * out_h)
        i0 = max(0, ph - oh * sh)  # the in-bounds window rows are [i0, i1)
        i1 = min(kh, H + ph - oh * sh)
        j0 = max(0, pw - ow * sw)
        j1 = min(kw, W + pw - ow * sw)
        ih = oh * sh - ph + i0
        iw = ow * sw - pw + j0
        best = x[c, ih, iw, b]  # start from the first in-bounds element of the window
        arg = ih * W + iw
        for i in range(i0, i1):
            ih = oh * sh - ph + i
            for j in range(j0, j1):
                iw = ow * sw - pw + j
                v = x[c, ih, iw, b]
                if v > best:
                    best = v
                    arg = ih * W + iw
        out[c, oh, ow, b] = best
        argmax[c, oh, ow, b] = arg


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """Max pooling on the GPU; see :func:`sparsenn.im2col.maxpool_forward`.

    x: device array (C, H, W, B).  out: device array (C, out_h, out_w, B), overwritten.
    argmax: int32 device array (C, out_h, out_w, B), overwritten.
    """
    _launch(_maxpool_forward_kernel, out.size, x, int(kh), int(kw), int(sh), int(sw), int(ph),
            int(pw), out, argmax)


@cuda.jit
def _maxpool_backward_kernel(dy, argmax, dx):
    """dx[c, h, w, b] = sum of dy[c, oh, ow, b] over the windows whose maximum was x[c, h, w, b].

    dy[C, out_h, out_w, B], argmax[C, out_h, out_w, B] (int32, from the forward pass).
    dx[C, H, W, B]: overwritten. Cost O(C * (H * W + out_h * out_w) * B).
    One thread per (c, b) column (b fastest), which zeroes dx[c, :, :, b] and then adds every
    window's gradient to the pixel that won it. Overlapping windows (3x3 stride 2) can send two
    gradients to one pixel, but only within one (c, b) column, which this thread owns, so
    there is no race. This is the CPU kernel's per-channel ownership, split further along b.
    A gather (a thread per dx element) would need the window geometry, which this signature
    does not carry, or else a scan of all out_h * out_w windows per pixel. The alternative,
    a thread per dy element with atomic adds, has C * out_h * out_w * B threads instead of
    C * B, but sums in a run-dependent order; this form is deterministic and gives the CPU
    kernel's result bit for bit (same windows, same (oh, ow) order).
    """
    C, H, W, B = dx.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    n = C * B
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = e % B
        c = e // B
        for h in range(H):
            for w in range(W):
                dx[c, h, w, b] = 0.0
        for oh in range(out_h):
            for ow in range(out_w):
                k = argmax[c, oh, ow, b]
                dx[c, k // W, k % W, b] += dy[c, oh, ow, b]


def maxpool_backward(dy, argmax, dx):
    """Max-pooling gradient on the GPU; see :func:`sparsenn.im2col.maxpool_backward`.

    dy: device array (C, out_h, out_w, B).  argmax: int32 device array, same shape.
    dx: device array (C, H, W, B), overwritten.
    """
    _launch(_maxpool_backward_kernel, dx.shape[0] * dx.shape[3], dy, argmax, dx)


# ---------------------------------------------------------------------------------------------
# Local response normalisation across channels (TensorFlow's tf.nn.lrn)
# ---------------------------------------------------------------------------------------------
#
#   d[c] = bias + alpha * sum_{c' = max(0, c-r)}^{min(C-1, c+r)} x[c']^2
#   y[c] = x[c] * d[c]^(-beta)
#
# at every position independently; x is viewed as (C, N) with N = H * W * B, so the position
# p is the fastest index and a warp reads 32 consecutive positions of one channel.


@cuda.jit
def _lrn_forward_kernel(x, radius, bias, alpha, beta, d, dpow, out):
    """y = x * (bias + alpha * windowed sum of x^2 over channels)^(-beta).

    x[C, N]: C-contiguous.  d[C, N], dpow[C, N], out[C, N]: overwritten with d, d^(-beta), y.
    Cost O(C * (2r + 1) * N). One thread per (c, p) (p fastest); each reads the 2r + 1
    neighbouring channels at p, which the threads of neighbouring channels read again (L2 hits).
    """
    C, N = x.shape
    n = C * N
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = e // N
        p = e - c * N
        s = x.dtype.type(0)
        for cc in range(max(0, c - radius), min(C, c + radius + 1)):
            s += x[cc, p] * x[cc, p]
        # rounded to the array dtype before reuse: the CPU kernel stores d, then reads it back
        dv = d.dtype.type(bias + alpha * s)
        d[c, p] = dv
        if beta == 0.75:
            # d^(-3/4) = 1 / (sqrt(d) * sqrt(sqrt(d))), as on the CPU: single-precision square
            # roots instead of a pow, which the float64 beta would make a float64 pow
            r = math.sqrt(dv)
            pv = dpow.dtype.type(1.0 / (r * math.sqrt(r)))
        else:
            pv = dpow.dtype.type(math.pow(dv, -beta))
        dpow[c, p] = pv
        out[c, p] = x[c, p] * pv


def lrn_forward(x, radius, bias, alpha, beta, d, dpow, out):
    """LRN forward on the GPU; see :func:`sparsenn.im2col.lrn_forward`.

    x: device array (C, N).  d, dpow, out: device arrays (C, N), overwritten.
    """
    _launch(_lrn_forward_kernel, x.size, x, int(radius), float(bias), float(alpha), float(beta),
            d, dpow, out)


@cuda.jit
def _lrn_backward_t_kernel(y, d, dy, t):
    """t = dy * y / d, elementwise: the per-channel term the backward window sums.

    y, d, dy, t [C, N]: C-contiguous; t overwritten. Cost O(C * N).
    One thread per (c, p), p fastest.
    """
    C, N = y.shape
    n = C * N
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = e // N
        p = e - c * N
        t[c, p] = dy[c, p] * y[c, p] / d[c, p]


@cuda.jit
def _lrn_backward_kernel(x, dpow, dy, radius, alpha, beta, t, dx):
    """dx[j] = dy[j] d[j]^(-beta) - 2 alpha beta x[j] sum_{c: |c - j| <= r} t[c],
    t = dy y / d from :func:`_lrn_backward_t_kernel` (derivation in
    :func:`sparsenn.im2col.lrn_backward`).

    x, dpow, dy, t [C, N]: C-contiguous.  dx[C, N]: overwritten. Cost O(C * (2r + 1) * N).
    One thread per (j, p), p fastest; the window sum runs over c in the CPU kernel's order.
    """
    C, N = x.shape
    k = -2.0 * alpha * beta
    n = C * N
    for e in range(cuda.grid(1), n, cuda.gridsize(1)):
        j = e // N
        p = e - j * N
        s = dx.dtype.type(0)
        for c in range(max(0, j - radius), min(C, j + radius + 1)):
            s += t[c, p]
        dx[j, p] = dy[j, p] * dpow[j, p] + k * x[j, p] * s


def lrn_backward(x, y, d, dpow, dy, radius, alpha, beta, t, dx):
    """LRN backward on the GPU; see :func:`sparsenn.im2col.lrn_backward`.

    x, y, d, dpow, dy: device arrays (C, N) from the forward pass and upstream.
    t: device array (C, N), scratch.  dx: device array (C, N), overwritten.
    Two launches: every t[c] must be complete before any window sums it, and kernels on one
    stream run in order, which is the grid-wide barrier a single kernel would lack.
    """
    _launch(_lrn_backward_t_kernel, x.size, y, d, dy, t)
    _launch(_lrn_backward_kernel, x.size, x, dpow, dy, int(radius), float(alpha), float(beta),
            t, dx)


# ---------------------------------------------------------------------------------------------
# Example arguments, for compiling every kernel to PTX without a GPU
# ---------------------------------------------------------------------------------------------


def ptx_examples():
    """[(kernel, args)] for every raw kernel above, args of the types its launcher passes
    (float32 C-contiguous arrays of the launcher's ndim, int32 argmax, Python ints and floats):

        cuda.compile_ptx(kernel.py_func, tuple(numba.typeof(a) for a in args), cc=(9, 0))

    compiles it as a real GPU would, which the simulator never does.
    """
    f32 = np.float32
    C, H, W, B, k, s, p = 2, 5, 5, 3, 3, 2, 1
    oh = ow = (H + 2 * p - k) // s + 1
    x = np.zeros((C, H, W, B), f32)  # (C, H, W, B)
    cols = np.zeros((C * k * k, oh * ow * B), f32)  # (C*kh*kw, out_h*out_w*B)
    pooled = np.zeros((C, oh, ow, B), f32)  # (C, out_h, out_w, B)
    argmax = np.zeros((C, oh, ow, B), np.int32)
    v = np.zeros((C, H * W * B), f32)  # (C, N)
    return [
        (_im2col_kernel, (x, k, k, s, s, p, p, oh, ow, cols)),
        (_col2im_kernel, (cols, k, k, s, s, p, p, oh, ow, x)),
        (_maxpool_forward_kernel, (x, k, k, s, s, p, p, pooled, argmax)),
        (_maxpool_backward_kernel, (pooled, argmax, x)),
        (_lrn_forward_kernel, (v, 2, 1.0, 1e-4, 0.75, v, v, v)),
        (_lrn_backward_t_kernel, (v, v, v, v)),
        (_lrn_backward_kernel, (v, v, v, 2, 1e-4, 0.75, v, v)),
    ]
