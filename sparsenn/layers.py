"""Layers with hand-written forward and backward passes: Linear, SparseLinear, ReLU, Sequential.

Every activation is features-major, ``(n_features, batch)``, C-contiguous. A layer keeps what
its backward needs from the forward (its input, or a mask) and reuses its output buffers from
step to step: the array a ``forward`` returns is overwritten by the next ``forward`` of that
layer, so copy it if you need to keep it.

Gradients are *overwritten* by each ``backward`` (not accumulated): one backward per step.
"""

from __future__ import annotations

import numba
import numpy as np

from sparsenn import init as initializers
from sparsenn.csr import CSRPattern, balanced_row_splits
from sparsenn.kernels import sddmm, spmm
from sparsenn.runtime import matmul


class Parameter:
    """A trainable array, its gradient (same shape) and whether weight decay applies to it."""

    def __init__(self, value: np.ndarray, name: str, decay: bool = True):
        self.value = value
        self.grad = np.zeros_like(value)
        self.name = name
        self.decay = decay

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.value.shape}, dtype={self.value.dtype})"


def _check_input(x, n_in: int, dtype, who: str):
    """Validate a features-major activation at a public boundary (never inside a kernel)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: input must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{who}: input must be 2-D (n_features, batch), got shape {x.shape}")
    if x.shape[0] != n_in:
        raise ValueError(
            f"{who}: input has {x.shape[0]} features (shape {x.shape}), layer expects "
            f"n_in = {n_in}; activations are features-major (n_features, batch)"
        )
    if x.dtype != dtype:
        raise TypeError(f"{who}: input dtype must be {np.dtype(dtype).name}, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{who}: input must be C-contiguous (use np.ascontiguousarray)")


class Layer:
    """Base class: ``forward(x) -> y``, ``backward(dy, need_dx=True) -> dx``, ``parameters()``."""

    def parameters(self) -> list:
        return []

    def __call__(self, x):
        return self.forward(x)


class Linear(Layer):
    """Dense fully connected layer ``y = W x + b``; ``W: (n_out, n_in)``, ``b: (n_out,)``."""

    def __init__(self, n_in: int, n_out: int, rng, init: str = "kaiming_normal",
                 bias: bool = True, dtype=np.float32, name: str = "linear"):
        if n_in < 1 or n_out < 1:
            raise ValueError(f"{name}: n_in and n_out must be >= 1, got {n_in}, {n_out}")
        self.shape = (int(n_out), int(n_in))
        self.dtype = np.dtype(dtype)
        self.name = name
        self.weight = Parameter(initializers.dense_weights(init, self.shape, rng, dtype=dtype), f"{name}.weight")
        self.bias = Parameter(np.zeros(n_out, dtype=dtype), f"{name}.bias", decay=False) if bias else None
        self._x = None
        self._out = self._dx = None

    @property
    def nnz(self) -> int:
        return self.shape[0] * self.shape[1]

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x):
        """x: (n_in, batch) -> y = W x + b: (n_out, batch)."""
        _check_input(x, self.shape[1], self.dtype, self.name)
        if self._out is None or self._out.shape[1] != x.shape[1]:
            self._out = np.empty((self.shape[0], x.shape[1]), dtype=self.dtype)
        matmul(self.weight.value, x, self._out)
        if self.bias is not None:
            self._out += self.bias.value[:, None]
        self._x = x
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = W x + b  =>  dW = dy x^T,  db = sum_batch dy,  dx = W^T dy.

        dy: (n_out, batch) -> dx: (n_in, batch), or None when ``need_dx`` is False.
        """
        x = self._x
        matmul(dy, x.T, self.weight.grad)
        if self.bias is not None:
            np.sum(dy, axis=1, out=self.bias.grad)
        if not need_dx:
            return None
        if self._dx is None or self._dx.shape != x.shape:
            self._dx = np.empty_like(x)
        matmul(self.weight.value.T, dy, self._dx)
        return self._dx

    def __repr__(self):
        return f"Linear({self.shape[1]} -> {self.shape[0]})"


class SparseLinear(Layer):
    """Sparse fully connected layer ``y = W x + b`` with ``W`` stored in CSR on a fixed pattern.

    mask: boolean ``(n_out, n_in)`` (dense array or scipy.sparse): where connections exist.
    Only those connections have weights, gradients, optimiser state and weight decay.
    ``fan="actual"`` initialises each weight by its neuron's real fan-in (see ``sparsenn.init``).
    """

    def __init__(self, mask, rng, init: str = "kaiming_normal", fan: str = "actual",
                 bias: bool = True, dtype=np.float32, name: str = "sparse_linear"):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.pattern = CSRPattern.from_mask(mask, name=f"{name} mask")
        self.weight = Parameter(
            initializers.sparse_weights(init, self.pattern, rng, fan=fan, dtype=dtype), f"{name}.weight"
        )
        n_out = self.pattern.shape[0]
        self.bias = Parameter(np.zeros(n_out, dtype=dtype), f"{name}.bias", decay=False) if bias else None
        self._reset_buffers()

    def _reset_buffers(self):
        self._x = None
        self._out = self._dx = None
        self._splits = None  # (n_threads, bounds of W rows, bounds of W^T rows)

    @property
    def shape(self):
        return self.pattern.shape

    @property
    def nnz(self) -> int:
        return self.pattern.nnz

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def _bounds(self):
        """Row chunks balanced by nonzeros, for W and for W^T; rebuilt if the thread count changes."""
        n = numba.get_num_threads()
        if self._splits is None or self._splits[0] != n:
            p = self.pattern
            self._splits = (n, balanced_row_splits(p.indptr, n), balanced_row_splits(p.t_indptr, n))
        return self._splits[1], self._splits[2]

    def forward(self, x):
        """x: (n_in, batch) -> y = W x + b: (n_out, batch). Cost O(nnz * batch)."""
        p = self.pattern
        _check_input(x, p.shape[1], self.dtype, self.name)
        if self._out is None or self._out.shape[1] != x.shape[1]:
            self._out = np.empty((p.shape[0], x.shape[1]), dtype=self.dtype)
        bounds, _ = self._bounds()
        spmm(p.indptr, p.indices, self.weight.value, x, self._out, bounds)
        if self.bias is not None:
            self._out += self.bias.value[:, None]
        self._x = x
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = W x + b  =>  dx = W^T dy,  dW[k] = dy[row_k] . x[col_k] for stored k only,
        db = sum over the batch of dy.

        dy: (n_out, batch) -> dx: (n_in, batch), or None when ``need_dx`` is False (the first
        layer: nothing upstream needs it, and skipping it saves a third of the layer's work).
        """
        p = self.pattern
        x = self._x
        bounds, t_bounds = self._bounds()
        # in the forward pass y[r] += W[r, c] * x[c], so dW[r, c] = sum_b dy[r, b] * x[c, b]
        sddmm(p.indptr, p.indices, dy, x, self.weight.grad, bounds)
        if self.bias is not None:
            np.sum(dy, axis=1, out=self.bias.grad)
        if not need_dx:
            return None
        # ... and dx[c] += W[r, c] * dy[r]: a product with W^T, whose CSR arrays are the
        # transpose index of W and whose values are W's data read through t_perm.
        if self._dx is None or self._dx.shape != x.shape:
            self._dx = np.empty_like(x)
        spmm(p.t_indptr, p.t_rows, self.weight.value, dy, self._dx, t_bounds, p.t_perm)
        return self._dx

    def mask(self):
        """The current pattern as a boolean ``scipy.sparse.csr_matrix`` (n_out, n_in)."""
        return self.pattern.to_scipy()

    def to_dense(self) -> np.ndarray:
        """The weights as a dense ``(n_out, n_in)`` array (zeros where no connection exists)."""
        return self.pattern.to_scipy(self.weight.value).toarray()

    def set_pattern(self, pattern: CSRPattern, weights: np.ndarray) -> None:
        """Replace the pattern and its weights (nnz,), e.g. when loading a checkpoint."""
        if pattern.shape != self.shape:
            raise ValueError(f"{self.name}: pattern shape {pattern.shape} != layer shape {self.shape}")
        weights = np.asarray(weights)
        if weights.shape != (pattern.nnz,):
            raise ValueError(f"{self.name}: weights must have shape ({pattern.nnz},), got {weights.shape}")
        self.pattern = pattern
        self.weight.value = np.ascontiguousarray(weights, dtype=self.dtype)
        self.weight.grad = np.zeros_like(self.weight.value)
        self._reset_buffers()

    def prune(self, keep: np.ndarray) -> np.ndarray:
        """Remove the stored entries where ``keep`` (bool, (nnz,)) is False.

        Compacts the CSR arrays and weights and rebuilds the transpose index, so the layer's
        cost falls with its nnz. Returns the int64 indices of the kept entries, which the
        optimiser uses to compact its state (``optimizer.compact(param, kept)``).
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.nnz,):
            raise ValueError(f"{self.name}: keep must have shape ({self.nnz},), got {keep.shape}")
        kept = np.flatnonzero(keep)
        p = self.pattern
        row_counts = np.bincount(p.row_of_entry()[kept], minlength=p.shape[0])
        indptr = np.concatenate(([0], np.cumsum(row_counts))).astype(np.int32)
        pattern = CSRPattern.from_arrays(indptr, p.indices[kept], p.shape, name=f"{self.name} pattern")
        self.set_pattern(pattern, self.weight.value[kept])
        return kept

    def __repr__(self):
        return f"SparseLinear({self.shape[1]} -> {self.shape[0]}, nnz={self.nnz}, density={self.pattern.density:.4f})"


class ReLU(Layer):
    """y = max(x, 0), elementwise; any shape."""

    def __init__(self, name: str = "relu"):
        self.name = name
        self._out = self._dx = self._on = None

    def forward(self, x):
        if self._out is None or self._out.shape != x.shape or self._out.dtype != x.dtype:
            self._out = np.empty_like(x)
            self._dx = np.empty_like(x)
            self._on = np.empty(x.shape, dtype=bool)
        np.maximum(x, 0, out=self._out)
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = max(x, 0)  =>  dx = dy where y > 0, else 0."""
        if not need_dx:
            return None
        np.greater(self._out, 0, out=self._on)
        np.multiply(dy, self._on, out=self._dx)
        return self._dx

    def __repr__(self):
        return "ReLU()"


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse and skips the first layer's dx."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy, need_dx: bool = False):
        """Chain rule: each layer maps d(loss)/d(its output) to d(loss)/d(its input).

        The first layer with parameters gets ``need_dx=False`` (no one upstream needs dx).
        """
        first = next((i for i, l in enumerate(self.layers) if l.parameters()), 0)
        for i in range(len(self.layers) - 1, -1, -1):
            want = need_dx or i > first
            dy = self.layers[i].backward(dy, need_dx=want)
            if dy is None:
                break
        return dy

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def weight_layers(self):
        """The layers that hold a weight matrix, in order."""
        return [l for l in self.layers if isinstance(l, (Linear, SparseLinear))]

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential(\n  {inner}\n)"
