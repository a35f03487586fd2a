"""Convolutional layers with hand-written forward and backward passes: Conv2d, SparseConv2d,
MaxPool2d, LocalResponseNorm, Flatten.

Image activations are ``(C, H, W, batch)``, C-contiguous: features-major with the batch last,
like every sparsenn activation. A convolution is im2col followed by the matrix product the
linear layers use (see ``sparsenn.im2col``)::

    cols = im2col(x)      x: (C_in, H, W, batch) -> cols: (C_in*kh*kw, H_out*W_out*batch)
    y    = W @ cols + b   W: (C_out, C_in*kh*kw)  -> y: (C_out, H_out*W_out*batch)
                                                     which *is* (C_out, H_out, W_out, batch)

So a convolution layer is a linear layer applied to the patch matrix, and it is written as one:
``Conv2d`` is a :class:`~sparsenn.layers.Linear` and ``SparseConv2d`` a
:class:`~sparsenn.layers.SparseLinear` whose ``(n_out, n_in)`` matrix is the filter bank
``(C_out, C_in*kh*kw)``. They inherit its storage, initialisation (fan-in = C_in*kh*kw, or a
neuron's actual fan-in when sparse), ``shape``, ``nnz``, ``weight``, ``bias``, ``mask()``,
``to_dense()``, ``set_pattern`` and ``prune``, so pruning, checkpoints and
``Sequential.weight_layers()`` treat them like any other weight layer. Only forward and
backward differ: they wrap the product in im2col and col2im.

On the CPU, a ``SparseConv2d`` with float32 batches of 16 to 143 images computes the same
products one window position at a time instead (``SparseConv2d.patchwise``): column block ``p``
of ``cols`` is window position ``p``'s patch, ``(C_in*kh*kw, batch)``, small enough to stay in
cache while the sparse kernels use it, so the patch matrix itself is never formed (LeNet-5's
conv2 at batch 100: 39 MB). See ``sparsenn.im2col``, "A sparse convolution patch by patch".

The first convolution of a model receives the training loop's flat ``(C*H*W, batch)`` batch:
give it ``input_shape=(C, H, W)`` and it views the 2-D input as an image (no copy), and hands
back dx in the 2-D shape it was given. :class:`Flatten` turns ``(C, H, W, batch)`` back into
``(C*H*W, batch)`` for the fully connected layers, also without a copy.

As in ``sparsenn.layers``: outputs are reused buffers (overwritten by the layer's next forward),
and gradients are overwritten by each backward.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from sparsenn import backend_cpu
from sparsenn import im2col as _im2col
from sparsenn.im2col import conv_geometry
from sparsenn.layers import Layer, Linear, SparseLinear, _check_array, _check_grad, _contiguous
from sparsenn.runtime import matmul


def _pair(v, what: str) -> tuple:
    """An int or a pair of ints -> a pair of ints >= 1 (kernel sizes, strides)."""
    pair = (v, v) if np.isscalar(v) else tuple(v)
    if len(pair) != 2 or any(int(p) != p or int(p) < 1 for p in pair):
        raise ValueError(f"{what} must be an int >= 1 or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _check_padding(padding, who: str):
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{who}: padding must be 'same', 'valid', an int or (p_h, p_w), got {padding!r}")
        return padding
    pair = (padding, padding) if np.isscalar(padding) else tuple(padding)
    if len(pair) != 2 or any(int(p) != p or int(p) < 0 for p in pair):
        raise ValueError(f"{who}: padding must be 'same', 'valid', an int >= 0 or (p_h, p_w), got {padding!r}")
    return int(pair[0]), int(pair[1])


def _check_image(x, channels: int, dtype, who: str, input_shape=None, ops=backend_cpu):
    """Validate an image activation at a public boundary; returns the (C, H, W, batch) view.

    x: (C, H, W, batch), or (C*H*W, batch) when ``input_shape = (C, H, W)`` is known.
    """
    _check_array(x, ops, who)
    if x.dtype != dtype:
        raise TypeError(f"{who}: input dtype must be {np.dtype(dtype).name}, got {x.dtype}")
    if not _contiguous(x):
        raise ValueError(f"{who}: input must be C-contiguous (use np.ascontiguousarray)")
    if x.ndim == 2 and input_shape is not None:
        n = int(np.prod(input_shape))
        if x.shape[0] != n:
            raise ValueError(f"{who}: flat input has {x.shape[0]} features (shape {x.shape}), layer expects "
                             f"C*H*W = {n} for input_shape {tuple(input_shape)}")
        return x.reshape(*input_shape, x.shape[1])  # (C, H, W, batch): a view
    if x.ndim != 4:
        flat = " or (C*H*W, batch) with input_shape set" if input_shape is None else ""
        raise ValueError(f"{who}: input must be 4-D (C, H, W, batch){flat}, got shape {x.shape}")
    if x.shape[0] != channels:
        raise ValueError(f"{who}: input has {x.shape[0]} channels (shape {x.shape}), layer expects {channels}; "
                         f"image activations are (C, H, W, batch)")
    if input_shape is not None and x.shape[:3] != tuple(input_shape):
        raise ValueError(f"{who}: input image is {x.shape[:3]}, layer expects input_shape {tuple(input_shape)}")
    return x


class _Im2colConv:
    """The convolution around a matrix product; Conv2d and SparseConv2d supply the product.

    Subclasses implement, on 2-D views:
      ``_product(cols, out)``      out = W @ cols                       (C_out, n)
      ``_weight_grad(dy, cols)``   weight.grad = dW from dy (C_out, n) and cols (K, n)
      ``_input_grad(dy, dcols)``   dcols = W^T dy                        (K, n)
    with K = C_in*kh*kw and n = H_out*W_out*batch.
    """

    def _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, input_shape):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, f"{self.name}: kernel_size")
        self.stride = _pair(stride, f"{self.name}: stride")
        self.padding = _check_padding(padding, self.name)
        if input_shape is not None:
            input_shape = tuple(int(s) for s in input_shape)
            if len(input_shape) != 3 or input_shape[0] != self.in_channels or min(input_shape) < 1:
                raise ValueError(f"{self.name}: input_shape must be (C, H, W) with C = in_channels = "
                                 f"{self.in_channels}, got {input_shape}")
        self.input_shape = input_shape
        self._x_shape = None
        self._cols = self._dcols = None  # (K, H_out*W_out*batch), kept between steps
        self._x4 = None  # the last forward's input, when it went patch by patch

    def _patchwise(self, x4) -> bool:
        """Whether this forward runs one window position at a time, without the patch matrix
        (``SparseConv2d`` on the CPU; see there). Here: no."""
        return False

    def output_shape(self, h: int, w: int) -> tuple:
        """(C_out, H_out, W_out) for an h x w input."""
        kh, kw = self.kernel_size
        out_h, out_w, _, _ = conv_geometry(h, w, kh, kw, *self.stride, self.padding)
        return self.out_channels, out_h, out_w

    def forward(self, x):
        """x: (C_in, H, W, batch) [or (C_in*H*W, batch) with input_shape] ->
        y = W @ im2col(x) + b: (C_out, H_out, W_out, batch)."""
        ops = self.ops
        x4 = _check_image(x, self.in_channels, self.dtype, self.name, self.input_shape, ops)
        C, H, W, B = x4.shape
        kh, kw = self.kernel_size
        sh, sw = self.stride
        out_h, out_w, ph, pw = conv_geometry(H, W, kh, kw, sh, sw, self.padding)
        if self._x_shape != x4.shape:  # new batch size or image size: new buffers, once
            self._x_shape = x4.shape
            self._geom = (kh, kw, sh, sw, ph, pw, out_h, out_w)
            self._cols = self._dcols = None
            self._out = ops.empty((self.out_channels, out_h, out_w, B), self.dtype)
            self._dx = None
        y2 = self._out.reshape(self.out_channels, -1)  # (C_out, H_out*W_out*batch): a view
        self._in_ndim = x.ndim
        if self._patchwise(x4):  # no patch matrix: one window position at a time, bias included
            self._x4 = x4  # the backward takes the patches from the input again
            self._patchwise_forward(x4, y2)
            return self._out
        self._x4 = None
        if self._cols is None:
            self._cols = ops.empty((C * kh * kw, out_h * out_w * B), self.dtype)
        ops.im2col(x4, *self._geom, self._cols)  # cols: (C_in*kh*kw, H_out*W_out*batch)
        self._product(self._cols, y2)
        if self.bias is not None:
            ops.add_bias(y2, self.bias.value)
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = W cols + b, cols = im2col(x)  =>  dW = dy cols^T (stored entries only when sparse),
        db = sum of dy over (H_out, W_out, batch),  dcols = W^T dy,  dx = col2im(dcols).

        dy: (C_out, H_out, W_out, batch), the shape of the last forward's y -> dx in the shape x
        had, or None when ``need_dx`` is False (the first layer: skipping it saves the W^T
        product and the col2im).
        """
        ops = self.ops
        _check_grad(dy, self._out, self.name, ops)
        dy2 = dy.reshape(self.out_channels, -1)  # (C_out, H_out*W_out*batch): a view
        if self._x4 is not None:  # the forward went window position by window position
            if need_dx and self._dx is None:
                self._dx = ops.empty(self._x_shape, self.dtype)
            self._patchwise_backward(dy2, self._dx if need_dx else None)
            if self.bias is not None:
                ops.sum_batch(dy2, self.bias.grad)
            if not need_dx:
                return None
            return self._dx if self._in_ndim == 4 else self._dx.reshape(-1, self._x_shape[3])
        # in the forward pass y[o, n] += W[o, k] * cols[k, n], so dW[o, k] = sum_n dy[o, n] cols[k, n]
        self._weight_grad(dy2, self._cols)
        if self.bias is not None:
            ops.sum_batch(dy2, self.bias.grad)
        if not need_dx:
            return None
        # ... and cols[k, n] feeds y[o, n] through W[o, k]: dcols = W^T dy; then each patch
        # entry's gradient goes back to the pixel it was copied from (col2im sums the copies).
        if self._dcols is None:
            self._dcols = ops.empty(self._cols.shape, self.dtype)
            self._dx = ops.empty(self._x_shape, self.dtype)
        self._input_grad(dy2, self._dcols)
        ops.col2im(self._dcols, *self._geom, self._dx)  # dx: (C_in, H, W, batch)
        return self._dx if self._in_ndim == 4 else self._dx.reshape(-1, self._x_shape[3])

    def _describe(self) -> str:
        kh, kw = self.kernel_size
        return (f"{self.in_channels} -> {self.out_channels}, {kh}x{kw}, stride {self.stride}, "
                f"padding {self.padding!r}")


class Conv2d(_Im2colConv, Linear):
    """Dense 2-D convolution ``y = W @ im2col(x) + b`` (cross-correlation, as in every framework).

    Filter bank ``weight``: (C_out, C_in*kh*kw), column (c*kh + i)*kw + j; ``bias``: (C_out,).
    padding: 'same' (TensorFlow's rule), 'valid', an int or (p_h, p_w). input_shape: (C, H, W)
    to accept a flat (C*H*W, batch) input (the first layer of a model).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rng, stride=1, padding="valid",
                 input_shape=None, init: str = "kaiming_normal", bias: bool = True, dtype=np.float32,
                 name: str = "conv"):
        self.name = name
        kh, kw = _pair(kernel_size, f"{name}: kernel_size")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{name}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        Linear.__init__(self, in_channels * kh * kw, out_channels, rng, init=init, bias=bias, dtype=dtype, name=name)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, input_shape)

    def _reset_buffers(self):
        Linear._reset_buffers(self)
        self._x_shape = None
        self._grad_t = None

    def _product(self, cols, out):
        self.ops.matmul(self.weight.value, cols, out)

    def _weight_grad(self, dy, cols):
        if self.ops is not backend_cpu:
            self.ops.matmul(dy, cols, self.weight.grad, tb=True)  # dW = dy cols^T
            return
        # On the CPU: dW^T = cols @ dy^T, then copy the small (K, C_out) result transposed.
        # The same product as dy @ cols^T, but OpenBLAS splits this orientation well over its
        # threads: for LeNet-5's conv2 (K = 500, C_out = 50, inner dimension 19600) measured
        # 24 ms against 135 ms with two threads (equal on one thread).
        if self._grad_t is None:
            self._grad_t = np.empty(self.shape[::-1], dtype=self.dtype)
        matmul(cols, dy.T, self._grad_t)
        self.weight.grad[...] = self._grad_t.T

    def _input_grad(self, dy, dcols):
        self.ops.matmul(self.weight.value, dy, dcols, ta=True)  # dcols = W^T dy

    def mask(self):
        """The (full) pattern as a boolean ``scipy.sparse.csr_matrix`` (C_out, C_in*kh*kw), as
        :meth:`SparseConv2d.mask` returns it."""
        return sp.csr_matrix(np.ones(self.shape, dtype=bool))

    def to_dense(self) -> np.ndarray:
        """The filter bank as a ``(C_out, C_in*kh*kw)`` array (a copy)."""
        return self.weight.host().copy()

    def to_sparse(self, mask) -> "SparseConv2d":
        """A SparseConv2d with this layer's geometry holding ``W[mask]`` (mask: bool
        (C_out, C_in*kh*kw)), sharing this layer's bias Parameter: the same function when the
        weights outside ``mask`` are zero. (Pruning's dense -> CSR swap for a convolution.)
        An all-False mask is allowed here: the conversion keeps whatever pruning left."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape:
            raise ValueError(f"{self.name}: mask shape {mask.shape} != filter bank shape {self.shape}")
        # the constructor draws initial weights from this throwaway generator; they are overwritten
        new = SparseConv2d(self.in_channels, self.out_channels, self.kernel_size, mask, np.random.default_rng(0),
                           stride=self.stride, padding=self.padding, input_shape=self.input_shape,
                           bias=self.bias is not None, dtype=self.dtype, name=self.name, allow_empty=True)
        new.weight.value[...] = self.weight.host()[mask]  # row-major = CSR order
        if self.ops is not backend_cpu:
            new.to(self.device)
        new.weight.decay = self.weight.decay
        if self.bias is not None:
            new.bias = self.bias
        return new

    def __repr__(self):
        return f"Conv2d({self._describe()})"


class SparseConv2d(_Im2colConv, SparseLinear):
    """Sparse 2-D convolution: the filter bank ``(C_out, C_in*kh*kw)`` stored in CSR on a fixed
    pattern, ``y = W @ im2col(x) + b`` with ``sparsenn.kernels.spmm``.

    mask: boolean ``(C_out, C_in*kh*kw)`` (dense or scipy.sparse) or ``(C_out, C_in, kh, kw)``;
    checked as :func:`sparsenn.layers.as_mask` checks it (0/1 integers yes, floats no).
    Only stored connections have weights, gradients (SDDMM), optimiser state and weight decay.
    Other arguments as :class:`Conv2d`; ``fan`` and ``allow_empty`` (a mask with no
    connections is refused unless it is True) as :class:`~sparsenn.layers.SparseLinear`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask, rng, stride=1, padding="valid",
                 input_shape=None, init: str = "kaiming_normal", fan: str = "actual", bias: bool = True,
                 dtype=np.float32, name: str = "sparse_conv", allow_empty: bool = False):
        self.name = name
        kh, kw = _pair(kernel_size, f"{name}: kernel_size")
        want = (int(out_channels), int(in_channels) * kh * kw)
        if not sp.issparse(mask):  # scipy.sparse masks are 2-D already
            mask = np.asarray(mask)
            if mask.ndim == 4 and mask.shape == (want[0], in_channels, kh, kw):
                mask = mask.reshape(want)
        if tuple(mask.shape) != want:
            raise ValueError(f"{name}: mask must have shape (C_out, C_in*kh*kw) = {want} "
                             f"(or (C_out, C_in, kh, kw)), got {tuple(mask.shape)}")
        SparseLinear.__init__(self, mask, rng, init=init, fan=fan, bias=bias, dtype=dtype, name=name,
                              allow_empty=allow_empty)
        self._init_conv(in_channels, out_channels, (kh, kw), stride, padding, input_shape)

    #: False: always through the patch matrix (im2col, the products, col2im), the reference
    #: the patch-by-patch kernels are tested against. Settable per layer.
    patchwise = True

    def _reset_buffers(self):
        # a new pattern (set_pattern, prune) drops every buffer; the next forward reallocates
        SparseLinear._reset_buffers(self)
        self._x_shape = None
        self._x4 = None
        self._scratch = {}

    def _patchwise(self, x4) -> bool:
        """On the CPU, for float32 batches of 16 to 143 images (the explicit-vector kernels),
        the convolution runs one window position at a time (``sparsenn.im2col``, "A sparse
        convolution patch by patch"): each position's patch (C_in*kh*kw, batch) is copied from
        the input into a buffer that stays in L2 and used at once by the sparse products, so
        the patch matrix (39 MB for LeNet-5's conv2 at batch 100) is never written or read."""
        return self.patchwise and self.ops is backend_cpu and _im2col.patchwise(x4, self.weight.value)

    def _patchwise_forward(self, x4, out):
        # y[:, p] = W patch_p + b for each window position p
        b = None if self.bias is None else self.bias.value
        _im2col.sparse_conv_forward(x4, *self._geom, self.pattern.indptr, self.pattern.indices, self.weight.value,
                                    b, out, numba.get_num_threads(), self._scratch)

    def _patchwise_backward(self, dy, dx):
        # dW = sum_p dy[:, p] patch_p^T at the stored entries (SDDMM); dx = col2im(W^T dy), by position
        pat = self.pattern
        _im2col.sparse_conv_backward(self._x4, *self._geom, pat.indptr, pat.indices, pat.t_indptr, pat.t_rows,
                                     pat.t_perm, self.weight.value, dy, self.weight.grad, dx,
                                     numba.get_num_threads(), self._scratch)

    def _product(self, cols, out):
        self.ops.spmm(self.pattern, self.weight.value, cols, out)

    def _weight_grad(self, dy, cols):
        # dW[k] = dy[row_k] . cols[col_k] for the stored entries k only (SDDMM)
        self.ops.sddmm(self.pattern, dy, cols, self.weight.grad)

    def _input_grad(self, dy, dcols):
        # W^T dy with the transpose index: W's values read in column order through t_perm
        self.ops.spmm_t(self.pattern, self.weight.value, dy, dcols)

    def __repr__(self):
        return f"SparseConv2d({self._describe()}, nnz={self.nnz}, density={self.pattern.density:.4f})"


class MaxPool2d(Layer):
    """Max pooling over (kh, kw) windows with a stride, per channel: (C, H, W, batch) ->
    (C, H_out, W_out, batch). padding 'valid', 'same' (TensorFlow's rule; padded positions
    never win) or explicit, smaller than the window. ``stride`` defaults to the window size."""

    def __init__(self, kernel_size=2, stride=None, padding="valid", name: str = "maxpool"):
        self.name = name
        self.kernel_size = _pair(kernel_size, f"{name}: kernel_size")
        self.stride = _pair(self.kernel_size if stride is None else stride, f"{name}: stride")
        self.padding = _check_padding(padding, name)
        if not isinstance(self.padding, str) and (self.padding[0] >= self.kernel_size[0]
                                                  or self.padding[1] >= self.kernel_size[1]):
            raise ValueError(f"{name}: padding {self.padding} must be smaller than the window "
                             f"{self.kernel_size}, or a window could hold only padding")
        self._reset_buffers()

    def _reset_buffers(self):
        self._x_shape = self._out = None

    def forward(self, x):
        """x: (C, H, W, batch) -> y[c, oh, ow, b] = max over the window: (C, H_out, W_out, batch)."""
        ops = self.ops
        _check_array(x, ops, self.name)
        if x.ndim != 4:
            raise ValueError(f"{self.name}: input must be a 4-D array (C, H, W, batch), got shape {x.shape}")
        x = ops.asarray(x)
        C, H, W, B = x.shape
        kh, kw = self.kernel_size
        out_h, out_w, ph, pw = conv_geometry(H, W, kh, kw, *self.stride, self.padding)
        if self._x_shape != x.shape or self._out.dtype != x.dtype:
            self._x_shape = x.shape
            self._geom = (kh, kw, *self.stride, ph, pw)
            self._out = ops.empty((C, out_h, out_w, B), x.dtype)
            self._argmax = ops.empty((C, out_h, out_w, B), np.int32)
            self._dx = ops.empty(x.shape, x.dtype)
        ops.maxpool_forward(x, *self._geom, self._out, self._argmax)
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = x[argmax of the window]  =>  dx[argmax] += dy (each window's gradient goes to the
        pixel that won it; a pixel that wins several overlapping windows sums their gradients).
        dy: (C, H_out, W_out, batch), the shape of the last forward's y."""
        _check_grad(dy, self._out, self.name, self.ops)
        if not need_dx:
            return None
        self.ops.maxpool_backward(dy, self._argmax, self._dx)
        return self._dx

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size}, stride {self.stride}, padding {self.padding!r})"


def _channels_first(x, who: str, ops):
    """Validate a (C, ..., batch) activation at a layer's boundary; return it C-contiguous."""
    _check_array(x, ops, who)
    if x.ndim < 2:
        raise ValueError(f"{who}: input must be an array (C, H, W, batch), got shape {x.shape}")
    return ops.asarray(x)


class LocalResponseNorm(Layer):
    """Local response normalisation across channels, as TensorFlow's ``tf.nn.lrn``:

        y[c] = x[c] / (bias + alpha * sum_{c' = c-r}^{c+r} x[c']^2) ** beta

    at each (h, w, b), channels outside [0, C) left out of the sum. Note that TensorFlow's alpha
    multiplies the plain sum (Caffe and PyTorch divide alpha by the window size 2r+1). The
    defaults are those of TensorFlow's CIFAR-10 tutorial: r = 4, bias 1, alpha 0.001/9, beta 0.75.
    x: (C, H, W, batch) (or any (C, ...) array) -> y of the same shape.
    """

    def __init__(self, depth_radius: int = 4, bias: float = 1.0, alpha: float = 0.001 / 9.0,
                 beta: float = 0.75, name: str = "lrn"):
        if int(depth_radius) != depth_radius or depth_radius < 0:
            raise ValueError(f"{name}: depth_radius must be an int >= 0, got {depth_radius!r}")
        if not bias > 0 or alpha < 0 or beta < 0:
            raise ValueError(f"{name}: need bias > 0, alpha >= 0, beta >= 0, got {bias}, {alpha}, {beta}")
        self.name = name
        self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), float(bias), float(alpha), float(beta)
        self._reset_buffers()

    def _reset_buffers(self):
        self._out = None

    def forward(self, x):
        """x: (C, ...) -> y = x * d^(-beta), d = bias + alpha * windowed sum of x^2 over channels."""
        ops = self.ops
        x = _channels_first(x, self.name, ops)
        if self._out is None or self._out.shape != x.shape or self._out.dtype != x.dtype:
            self._out, self._d, self._dpow, self._t, self._dx = (ops.empty(x.shape, x.dtype) for _ in range(5))
        C = x.shape[0]
        ops.lrn_forward(x.reshape(C, -1), self.depth_radius, self.bias, self.alpha, self.beta,
                    self._d.reshape(C, -1), self._dpow.reshape(C, -1), self._out.reshape(C, -1))
        self._x = x
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y[c] = x[c] d[c]^(-beta)  =>
        dx[j] = dy[j] d[j]^(-beta) - 2 alpha beta x[j] sum_{|c - j| <= r} dy[c] y[c] / d[c].
        dy: the shape of the last forward's y."""
        _check_grad(dy, self._out, self.name, self.ops)
        if not need_dx:
            return None
        C = self._x.shape[0]
        v = lambda a: a.reshape(C, -1)  # noqa: E731 - (C, H*W*batch) views for the kernel
        self.ops.lrn_backward(v(self._x), v(self._out), v(self._d), v(self._dpow), v(dy),
                     self.depth_radius, self.alpha, self.beta, v(self._t), v(self._dx))
        return self._dx

    def __repr__(self):
        return (f"LocalResponseNorm(depth_radius={self.depth_radius}, bias={self.bias:g}, "
                f"alpha={self.alpha:.4g}, beta={self.beta:g})")


class Flatten(Layer):
    """(C, H, W, batch) -> (C*H*W, batch): a free reshape in the batch-last layout (a view).

    Feature f of the output is the row-major index (c, h, w), the order of ``sparsenn.data``'s
    flattened images and of PyTorch's ``flatten`` on (batch, C, H, W).
    """

    def __init__(self, name: str = "flatten"):
        self.name = name
        self._reset_buffers()

    def _reset_buffers(self):
        self._shape = self._out = None

    def forward(self, x):
        x = _channels_first(x, self.name, self.ops)
        self._shape = x.shape
        # kept (a view, no copy) so that backward can check dy against it
        self._out = x.reshape(-1, x.shape[x.ndim - 1])  # (not shape[-1]: the CUDA simulator's arrays lack it)
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = reshape(x)  =>  dx = reshape(dy) back to (C, H, W, batch). dy: (C*H*W, batch)."""
        _check_grad(dy, self._out, self.name, self.ops)
        return dy.reshape(self._shape) if need_dx else None

    def __repr__(self):
        return "Flatten()"
