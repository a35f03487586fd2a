"""Layers with hand-written forward and backward passes: Linear, SparseLinear, ReLU, Sequential.

Every activation is features-major, ``(n_features, batch)``, C-contiguous. A layer keeps what
its backward needs from the forward (its input, or a mask) and reuses its output buffers from
step to step: the array a ``forward`` returns is overwritten by the next ``forward`` of that
layer, so copy it if you need to keep it.

Gradients are *overwritten* by each ``backward`` (not accumulated): one backward per step.
Each ``backward(dy)`` checks dy against the output of the layer's last forward (same shape,
so the same batch; same dtype; C-contiguous; on the layer's device) and refuses to run before
a forward: the kernels size their loops from the forward's buffers, so a dy of another shape
would be read out of bounds rather than rejected.

Devices. A layer does its arithmetic through ``self.ops``, the backend of the device its
parameters live on: :mod:`sparsenn.backend_cpu` (NumPy and Numba kernels) by default, or
:mod:`sparsenn.backend_cuda` after ``layer.to("cuda")`` (numba.cuda kernels, every array on
the GPU). Both backends offer the same operations, so each forward and backward below is
written once and reads the same on either device.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparsenn import backend_cpu
from sparsenn import init as initializers
from sparsenn.csr import CSRPattern
from sparsenn.device import backend, to_host


class Parameter:
    """A trainable array, its gradient (same shape), whether weight decay applies to it, and a
    factor on the optimiser's learning rate for it (``lr_scale``, 1 unless a model builder says
    otherwise, e.g. the wide readout of :func:`sparsenn.models.sparse_mlp`)."""

    def __init__(self, value: np.ndarray, name: str, decay: bool = True, lr_scale: float = 1.0):
        self.value = value
        self.grad = np.zeros_like(value)
        self.name = name
        self.decay = decay
        self.lr_scale = float(lr_scale)

    def to(self, ops) -> None:
        """Move the value to the backend ``ops`` (a copy); the gradient starts at zero there."""
        self.value = ops.asarray(self.host())
        self.grad = ops.zeros(self.value.shape, self.value.dtype)

    def host(self) -> np.ndarray:
        """The value as a NumPy array (the array itself on the CPU, a copy from a GPU)."""
        return to_host(self.value)

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.value.shape}, dtype={self.value.dtype})"


def _check_array(x, ops, who: str, what: str = "input"):
    """``x`` (the layer's input, or the ``dy`` of a backward) must live where the layer's
    parameters live."""
    if not ops.is_array(x):
        kind = "a numpy.ndarray" if ops.name == "cpu" else "a CUDA device array"
        raise TypeError(f"{who}: the layer is on device {ops.name!r}, so its {what} must be {kind}, "
                        f"got {type(x).__name__} (move the model and its data together: model.to(device))")


def _contiguous(x) -> bool:
    return x.flags.c_contiguous if isinstance(x, np.ndarray) else x.is_c_contiguous()


def _check_input(x, n_in: int, dtype, who: str, ops=backend_cpu):
    """Validate a features-major activation at a public boundary (never inside a kernel)."""
    _check_array(x, ops, who)
    if x.ndim != 2:
        raise ValueError(f"{who}: input must be 2-D (n_features, batch), got shape {x.shape}")
    if x.shape[0] != n_in:
        raise ValueError(
            f"{who}: input has {x.shape[0]} features (shape {x.shape}), layer expects "
            f"n_in = {n_in}; activations are features-major (n_features, batch)"
        )
    if x.dtype != dtype:
        raise TypeError(f"{who}: input dtype must be {np.dtype(dtype).name}, got {x.dtype}")
    if not _contiguous(x):
        raise ValueError(f"{who}: input must be C-contiguous (use np.ascontiguousarray)")


def _check_grad(dy, out, who: str, ops=backend_cpu):
    """Validate the ``dy`` a backward receives against ``out``, the output of the forward it
    inverts (the layer's output buffer; None when no forward has run).

    dy = d loss / d out must match that output exactly: same shape (so the same batch), same
    dtype, C-contiguous, on the layer's device. The kernels take their loop bounds from the
    forward's buffers, so a dy of another batch size would be read past its end, or only in
    part, without an error. Shape, dtype and flag comparisons only: this runs at every step.
    """
    if out is None:
        raise RuntimeError(f"{who}: backward called before forward (there is no forward output "
                           f"to take the gradient of)")
    _check_array(dy, ops, who, what="dy")
    want, got = tuple(out.shape), tuple(dy.shape)
    if got != want:
        raise ValueError(f"{who}: dy has shape {got}, expected {want}, the shape of the last forward's "
                         f"output (batch {want[-1]}); dy is d loss / d output")
    if dy.dtype != out.dtype:
        raise TypeError(f"{who}: dy dtype must be {np.dtype(out.dtype).name}, the forward output's, got {dy.dtype}")
    if not _contiguous(dy):
        raise ValueError(f"{who}: dy must be C-contiguous (use np.ascontiguousarray)")


def as_mask(mask, name: str = "mask") -> sp.csr_matrix:
    """Check that ``mask`` is a connection mask ``(n_out, n_in)`` and return it as a canonical
    boolean ``scipy.sparse.csr_matrix`` (sorted, no duplicates, no stored False).

    The one check of a mask given to a layer or a model builder (SparseLinear, SparseConv2d
    and the builders of ``sparsenn.models`` all call it). Accepted:

    - a dense array of bool, or of integers that are all 0 or 1 (1 = connection);
    - a scipy.sparse matrix of bool or of 0/1 integers (the values decide, as for dense);
    - a scipy.sparse matrix of floats read as a *pattern*: every stored entry is a
      connection, so every stored value must be nonzero and not NaN (a stored 0 would be
      ambiguous: a connection with weight 0, or none?).

    Refused: dense floats, even 0.0/1.0 (TypeError; ``rng.random((30, 50))`` must not become
    a full layer without a word: pass ``m != 0`` or ``m.astype(bool)`` if you meant the
    nonzeros), other dtypes (object, complex, strings), integers other than 0/1, and
    anything but 2-D (ValueError). Cost O(n_out * n_in) for a dense mask, O(nnz) for a sparse
    one; it runs once, when a layer is built.
    """
    sparse = sp.issparse(mask)
    if sparse:
        m = sp.csr_matrix(mask, copy=True)  # a copy: the calls below change m in place
        m.sum_duplicates()
        values, what = m.data, f"a scipy.sparse matrix of dtype {m.dtype}"
    else:
        m = np.asarray(mask)
        values, what = m, f"an array of dtype {m.dtype}"
    kind = m.dtype.kind
    if kind not in ("biuf" if sparse else "biu"):
        hint = ("; if you meant its nonzeros as the pattern, pass `m != 0` (or `m.astype(bool)`)"
                if kind == "f" else "")
        raise TypeError(f"{name}: mask must be boolean (or 0/1 integers, or a scipy.sparse pattern), "
                        f"got {what}, shape {m.shape}{hint}")
    if m.ndim != 2 or min(m.shape) < 1:
        raise ValueError(f"{name}: mask must be 2-D (n_out, n_in) with n_out, n_in >= 1, got shape {m.shape}")
    if kind in "iu" and values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"{name}: an integer mask must hold only 0 and 1, got {what} with values in "
                         f"[{values.min()}, {values.max()}]; pass `m != 0` if you meant its nonzeros")
    if kind == "f":  # a sparse float pattern: the stored positions are the connections
        bad = int(np.count_nonzero(values == 0)), int(np.count_nonzero(np.isnan(values)))
        if any(bad):
            raise ValueError(f"{name}: {what} is read as a pattern (its stored entries are the connections), "
                             f"so its stored values must be nonzero and not NaN; it stores {bad[0]} zeros and "
                             f"{bad[1]} NaNs (m.eliminate_zeros() drops stored zeros)")
    m = sp.csr_matrix(m, dtype=bool)
    m.eliminate_zeros()  # stored False / 0: no connection
    m.sort_indices()
    return m


class Layer:
    """Base class: ``forward(x) -> y``, ``backward(dy, need_dx=True) -> dx``, ``parameters()``,
    ``to(device)``."""

    ops = backend_cpu  # the operations of the device this layer is on; see the module docstring

    def parameters(self) -> list:
        return []

    @property
    def device(self) -> str:
        return self.ops.name

    def to(self, device: str):
        """Move the parameters to ``device`` ("cpu" or "cuda") and compute there from now on.
        Buffers from earlier steps are dropped; an optimiser must be created (or its state
        moved) after the move. Returns the layer."""
        ops = backend(device)
        for p in self.parameters():
            p.to(ops)
        self.ops = ops
        self._reset_buffers()
        return self

    def _reset_buffers(self):
        """Forget the buffers kept between steps (the next forward reallocates them)."""

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
        self._reset_buffers()

    def _reset_buffers(self):
        self._x = None
        self._out = self._dx = None

    @property
    def nnz(self) -> int:
        return self.shape[0] * self.shape[1]

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x):
        """x: (n_in, batch) -> y = W x + b: (n_out, batch)."""
        ops = self.ops
        _check_input(x, self.shape[1], self.dtype, self.name, ops)
        if self._out is None or self._out.shape[1] != x.shape[1]:
            self._out = ops.empty((self.shape[0], x.shape[1]), self.dtype)
        ops.matmul(self.weight.value, x, self._out)
        if self.bias is not None:
            ops.add_bias(self._out, self.bias.value)  # out[r, :] += b[r]
        self._x = x
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = W x + b  =>  dW = dy x^T,  db = sum_batch dy,  dx = W^T dy.

        dy: (n_out, batch), the batch of the last forward -> dx: (n_in, batch), or None when
        ``need_dx`` is False.
        """
        ops, x = self.ops, self._x
        _check_grad(dy, self._out, self.name, ops)
        ops.matmul(dy, x, self.weight.grad, tb=True)  # dW = dy x^T
        if self.bias is not None:
            ops.sum_batch(dy, self.bias.grad)
        if not need_dx:
            return None
        if self._dx is None or self._dx.shape != x.shape:
            self._dx = ops.empty(x.shape, self.dtype)
        ops.matmul(self.weight.value, dy, self._dx, ta=True)  # dx = W^T dy
        return self._dx

    def __repr__(self):
        return f"Linear({self.shape[1]} -> {self.shape[0]})"


class SparseLinear(Layer):
    """Sparse fully connected layer ``y = W x + b`` with ``W`` stored in CSR on a fixed pattern.

    mask: boolean ``(n_out, n_in)`` (dense array or scipy.sparse): where connections exist;
    0/1 integers and scipy.sparse patterns are accepted too, floats are not (see :func:`as_mask`).
    Only those connections have weights, gradients, optimiser state and weight decay.
    ``fan="actual"`` initialises each weight by its neuron's real fan-in (see ``sparsenn.init``).

    A mask with no connections at all is refused (ValueError): such a layer passes on only its
    bias, so the network would train at chance without a word. Pass ``allow_empty=True`` if
    that is what you want. Outputs without inputs, or inputs feeding nothing, are allowed
    (pruning and random topologies make them); ``sparsenn.models.layer_table`` counts them.
    """

    def __init__(self, mask, rng, init: str = "kaiming_normal", fan: str = "actual",
                 bias: bool = True, dtype=np.float32, name: str = "sparse_linear", allow_empty: bool = False):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.pattern = CSRPattern.from_mask(as_mask(mask, name), name=f"{name} mask")
        if self.pattern.nnz == 0 and not allow_empty:
            n_out, n_in = self.pattern.shape
            raise ValueError(f"{name}: the mask has no connections (0 of {n_out}x{n_in}); "
                             f"pass allow_empty=True if this is intended")
        self.weight = Parameter(
            initializers.sparse_weights(init, self.pattern, rng, fan=fan, dtype=dtype), f"{name}.weight"
        )
        n_out = self.pattern.shape[0]
        self.bias = Parameter(np.zeros(n_out, dtype=dtype), f"{name}.bias", decay=False) if bias else None
        self._reset_buffers()

    def _reset_buffers(self):
        self._x = None
        self._out = self._dx = None

    @property
    def shape(self):
        return self.pattern.shape

    @property
    def nnz(self) -> int:
        return self.pattern.nnz

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x):
        """x: (n_in, batch) -> y = W x + b: (n_out, batch). Cost O(nnz * batch)."""
        ops, p = self.ops, self.pattern
        _check_input(x, p.shape[1], self.dtype, self.name, ops)
        if self._out is None or self._out.shape[1] != x.shape[1]:
            self._out = ops.empty((p.shape[0], x.shape[1]), self.dtype)
        # y[r] = sum over the stored k of row r of W[k] x[indices[k]], plus b[r]
        ops.spmm(p, self.weight.value, x, self._out, None if self.bias is None else self.bias.value)
        self._x = x
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = W x + b  =>  dx = W^T dy,  dW[k] = dy[row_k] . x[col_k] for stored k only,
        db = sum over the batch of dy.

        dy: (n_out, batch), the batch of the last forward -> dx: (n_in, batch), or None when
        ``need_dx`` is False (the first layer: nothing upstream needs it, and skipping it saves
        a third of the layer's work).
        """
        ops, p, x = self.ops, self.pattern, self._x
        _check_grad(dy, self._out, self.name, ops)
        # in the forward pass y[r] += W[r, c] * x[c], so dW[r, c] = sum_b dy[r, b] * x[c, b]
        ops.sddmm(p, dy, x, self.weight.grad)
        if self.bias is not None:
            ops.sum_batch(dy, self.bias.grad)
        if not need_dx:
            return None
        # ... and dx[c] += W[r, c] * dy[r]: a product with W^T, whose CSR arrays are the
        # transpose index of W and whose values are W's data read through t_perm.
        if self._dx is None or self._dx.shape != x.shape:
            self._dx = ops.empty(x.shape, self.dtype)
        ops.spmm_t(p, self.weight.value, dy, self._dx)
        return self._dx

    def mask(self):
        """The current pattern as a boolean ``scipy.sparse.csr_matrix`` (n_out, n_in)."""
        return self.pattern.to_scipy()

    def to_dense(self) -> np.ndarray:
        """The weights as a dense ``(n_out, n_in)`` array (zeros where no connection exists)."""
        return self.pattern.to_scipy(self.weight.host()).toarray()

    def set_pattern(self, pattern: CSRPattern, weights: np.ndarray) -> None:
        """Replace the pattern and its weights (nnz,), e.g. when loading a checkpoint."""
        if pattern.shape != self.shape:
            raise ValueError(f"{self.name}: pattern shape {pattern.shape} != layer shape {self.shape}")
        weights = np.asarray(weights)
        if weights.shape != (pattern.nnz,):
            raise ValueError(f"{self.name}: weights must have shape ({pattern.nnz},), got {weights.shape}")
        self.pattern = pattern
        self.weight.value = self.ops.asarray(weights, dtype=self.dtype)
        self.weight.grad = self.ops.zeros(self.weight.value.shape, self.dtype)
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
        self.set_pattern(pattern, self.weight.host()[kept])
        return kept

    def __repr__(self):
        return f"SparseLinear({self.shape[1]} -> {self.shape[0]}, nnz={self.nnz}, density={self.pattern.density:.4f})"


class ReLU(Layer):
    """y = max(x, 0), elementwise; any shape.

    ``inplace=True`` writes y over x and, in the backward, dx over dy, as PyTorch's
    ``nn.ReLU(inplace=True)`` does: the same values, and no buffers of its own, so a hidden layer
    of a wide network keeps two activation-sized arrays fewer (105 MB each at 262,144 neurons and
    batch 100). The array given to ``forward`` then holds y, and the dy given to ``backward``
    holds dx. That is safe after a layer whose backward does not read its own output (Linear and
    SparseLinear keep their input, not their output), and not on a caller's array that must stay
    as it is. :func:`sparsenn.models.sparse_mlp` builds its ReLUs this way.
    """

    def __init__(self, name: str = "relu", inplace: bool = False):
        self.name = name
        self.inplace = bool(inplace)
        self._reset_buffers()

    def _reset_buffers(self):
        self._out = self._dx = None

    def forward(self, x):
        _check_array(x, self.ops, self.name)
        if self.inplace:
            self._out = x
        elif self._out is None or self._out.shape != x.shape or self._out.dtype != x.dtype:
            self._out = self.ops.empty(x.shape, x.dtype)
            self._dx = self.ops.empty(x.shape, x.dtype)
        self.ops.relu(x, self._out)
        return self._out

    def backward(self, dy, need_dx: bool = True):
        """y = max(x, 0)  =>  dx = dy where y > 0, else 0. dy: the shape of the last forward's y."""
        _check_grad(dy, self._out, self.name, self.ops)
        if not need_dx:
            return None
        dx = dy if self.inplace else self._dx
        self.ops.relu_backward(self._out, dy, dx)
        return dx

    def __repr__(self):
        return "ReLU(inplace=True)" if self.inplace else "ReLU()"


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
        dy: the shape of the last forward's output. Each layer checks the dy it is handed, so
        a wrong dy is refused by the last layer, by name; the dx each layer hands down is, by
        construction, the dy the layer below expects.
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

    def to(self, device: str):
        """Move every layer to ``device`` ("cpu" or "cuda"); returns the model."""
        for layer in self.layers:
            layer.to(device)
        self.ops = backend(device)
        return self

    def weight_layers(self):
        """The layers that hold a weight matrix, in order."""
        return [l for l in self.layers if isinstance(l, (Linear, SparseLinear))]

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential(\n  {inner}\n)"
