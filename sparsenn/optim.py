"""Optimisers: SGD (momentum, Nesterov, weight decay) and Adam.

Each optimiser keeps its state in arrays aligned with each parameter's ``value``: for a sparse
layer that is the ``data`` array of its CSR weights, so a connection that does not exist has
no momentum, no Adam moments and no weight decay, and can never come into existence.
When pruning removes entries, ``compact(param, kept)`` drops the matching state.

The updates are fused Numba kernels (one pass over memory per parameter:
:func:`sparsenn.kernels.sgd_update`, :func:`sparsenn.kernels.adam_update`) with NumPy twins, run
through the parameters' backend, and numba.cuda twins in :mod:`sparsenn.cuda_kernels` for
parameters on a GPU: the state lives where the parameters live (create the optimiser after
``model.to(device)``).
"""

from __future__ import annotations

import numpy as np

from sparsenn.device import backend_of


def _flat(a):
    return a.reshape(-1)  # a view: parameters and their state are always contiguous


class Optimizer:
    """Common parts: the parameter list, per-parameter state, checkpointing, compaction."""

    state_names: tuple = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got no parameters")
        if not 0 < lr < float("inf"):  # (written so that NaN fails too)
            raise ValueError(f"learning rate must be > 0 and finite, got {lr}")
        if not 0 <= weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.ops = backend_of(self.params[0].value)
        for p in self.params:
            if not self.ops.is_array(p.value):
                raise ValueError(f"{p.name} is not on device {self.ops.name!r} like {self.params[0].name}; "
                                 "move the whole model with model.to(device) before creating the optimizer")
        self.state = [self._zeros(p) for p in self.params]

    def _zeros(self, p) -> dict:
        return {n: self.ops.zeros(p.value.shape, p.value.dtype) for n in self.state_names}

    def _index(self, param) -> int:
        for i, p in enumerate(self.params):
            if p is param:
                return i
        raise ValueError(f"{param!r} is not managed by this optimizer")

    def compact(self, param, kept: np.ndarray) -> None:
        """After ``param.value`` was compacted to the entries ``kept``, drop the others' state."""
        i = self._index(param)
        for n, arr in self.state[i].items():
            self.state[i][n] = self.ops.asarray(self.ops.to_host(arr)[kept])

    def state_dict(self) -> dict:
        """Flat dict of arrays for a checkpoint (keys ``optim.{i}.{name}``, plus ``optim.steps``)."""
        out = {"optim.steps": np.int64(self.steps)}
        for i, st in enumerate(self.state):
            for n, arr in st.items():
                out[f"optim.{i}.{n}"] = self.ops.to_host(arr)
        return out

    def load_state_dict(self, d) -> None:
        self.steps = int(d["optim.steps"])
        for i, (p, st) in enumerate(zip(self.params, self.state)):
            for n in st:
                arr = np.asarray(d[f"optim.{i}.{n}"])
                if arr.shape != p.value.shape:
                    raise ValueError(f"optimizer state {n} of {p.name}: shape {arr.shape} != parameter {p.value.shape}")
                st[n] = self.ops.asarray(arr.astype(p.value.dtype, copy=True))

    def zero_state(self) -> None:
        self.state = [self._zeros(p) for p in self.params]

    def _pieces(self, part):
        """``(param, state, a, b)`` for each parameter with positions in ``part``: ``(lo, hi)``
        counts the positions of all parameters laid end to end, in order, and ``[a, b)`` are
        the positions of ``param`` (flattened) that fall in ``[lo, hi)``. Every position of
        every parameter when ``part`` is None."""
        lo, hi = (0, float("inf")) if part is None else part
        start = 0
        for p, st in zip(self.params, self.state):
            n = p.value.size
            a, b = max(lo - start, 0), min(hi - start, n)
            if a < b:
                yield p, st, a, b
            start += n


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    Weight decay applies only to parameters with ``decay=True`` (weights, not biases); each
    parameter's step uses ``lr * p.lr_scale``.
    """

    state_names = ("velocity",)

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def step(self, part=None) -> None:
        """One update of every parameter, or only of the positions ``part`` = ``(lo, hi)`` of
        all parameters laid end to end (data-parallel ranks that share one copy of the weights
        each update their own part: :class:`sparsenn.distributed.DataParallel`)."""
        self.steps += 1
        for p, st, a, b in self._pieces(part):
            wd = self.weight_decay if p.decay else 0.0
            self.ops.sgd_update(_flat(p.value)[a:b], _flat(p.grad)[a:b], _flat(st["velocity"])[a:b],
                                self.lr * p.lr_scale, self.momentum, wd, self.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay on parameters with ``decay=True``."""

    state_names = ("m", "v")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def step(self, part=None) -> None:
        """One update of every parameter, or only of the positions ``part`` (see :meth:`SGD.step`)."""
        self.steps += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for p, st, a, b in self._pieces(part):
            wd = self.weight_decay if p.decay else 0.0
            self.ops.adam_update(_flat(p.value)[a:b], _flat(p.grad)[a:b], _flat(st["m"])[a:b], _flat(st["v"])[a:b],
                                 self.lr * p.lr_scale, b1, b2, self.eps, wd, bc1, bc2)
