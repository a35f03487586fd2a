"""Magnitude pruning: learn a sparse structure by training dense and removing small weights.

Two ways to prune, both by weight magnitude (the smallest ``|w|`` go first):

    one-time   prune_once(model, sparsity=0.9)    after training: zero every w with |w| < t,
               prune_once(model, threshold=0.01)  t given, or chosen so the pruned layers
                                                  reach the target sparsity; one threshold
                                                  over all pruned layers ("global") or one
                                                  per layer ("layer")
    gradual    fit(..., callbacks=[GradualPruner(model, 0.9, begin=600, end=8000)])
               during training, every ``frequency`` steps, prune each layer to

                   s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** exponent

               for t0 <= t <= t1 (Zhu & Gupta, 2017, with t1 = t0 + n * dt; exponent 3),
               removing the smallest-magnitude weights still present. Pruned weights never
               come back.

Sparsity is always measured against the dense matrix: a (300, 784) layer at sparsity 0.9
keeps round(0.1 * 235200) = 23520 weights, whatever it stored before.

Where the pruned weights go (this is what makes pruning pay off):

* A :class:`SparseLinear` layer is pruned by ``SparseLinear.prune``: its CSR arrays and
  weights are compacted, its transpose index rebuilt, and ``optimizer.compact`` drops the
  optimiser state of the removed entries. Each step then costs O(nnz) less.
* A dense :class:`Linear` layer cannot drop entries, so one-time pruning swaps it for a
  SparseLinear holding the surviving weights (:func:`to_sparse`, which also swaps the
  parameter and its state in the optimiser).
* Gradual pruning starts from dense layers because dense BLAS is about 3x faster than our CSR
  kernels at density 1 and still faster down to roughly 20-30% density. Until a layer's
  density first falls below ``crossover`` (default 0.3) it stays a dense Linear with a
  boolean *mask*: pruning zeroes the weights and clears the mask, and after every optimiser
  step the mask is applied again (``W *= mask``). The optimiser still computes an update for
  a masked weight (its gradient is not zero) but the update is wiped before the next forward
  pass, so a pruned weight never comes back and never affects the output. At the first
  pruning step where the density is below ``crossover``, the layer becomes a SparseLinear on
  its mask and from then on is pruned by compaction.

Retraining on a learned structure (the 2019 study's method) takes the final masks
(:func:`model_masks`, :meth:`GradualPruner.masks`) and builds a fresh network on them
(``sparsenn.models.lenet300(masks=...)``), with new random weights, or with each surviving
connection's weight rewound to its value before dense training (:func:`initial_weights`,
:func:`rewind`; the lottery-ticket variant of Frankle & Carbin, 2019).

:func:`save_sparse_model` / :func:`load_sparse_model` store a pruned model on its own: a mask
file (``sparsenn.io`` format, readable by ``load_masks``) plus each layer's CSR weights.
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.sparse as sp

from sparsenn.csr import CSRPattern
from sparsenn.io import atomic_savez, load_masks, masks_to_arrays
from sparsenn.layers import Linear, SparseLinear

SCOPES = ("global", "layer")


# ---- validation ----------------------------------------------------------------------------


def check_sparsity(value, name: str = "sparsity") -> float:
    """``value`` as a float in [0, 1), or a ValueError naming it."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= s < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return s


def _per_layer(value, n: int, name: str, check) -> list:
    """A scalar broadcast to ``n`` layers, or a sequence of exactly ``n`` values, each checked."""
    if np.ndim(value) == 0:
        return [check(value, name)] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} pruned layers; give one value or one per layer")
    return [check(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _check_threshold(value, name: str = "threshold") -> float:
    t = float(value)
    if not t >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return t


# ---- the schedule --------------------------------------------------------------------------


class PolynomialSchedule:
    """Target sparsity against the training step (Zhu & Gupta, 2017)::

        s(t) = s_i                                                       t <  begin
        s(t) = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** exponent
                                                                         begin <= t <= end
        s(t) = s_f                                                       t >  end

    In Zhu & Gupta's notation begin = t0 and end = t0 + n * dt. Pruning happens at the steps
    begin, begin + frequency, begin + 2 * frequency, ... up to end, and at end itself (when
    end - begin is not a multiple of frequency). ``t`` counts optimiser steps taken, as in
    ``fit``'s ``on_step_end(step, ...)``. The cubic prunes fast while there are many redundant
    weights and slowly near the end, when each weight matters more.
    """

    def __init__(self, final: float, initial: float = 0.0, *, begin: int, end: int, frequency: int = 200,
                 exponent: float = 3.0):
        self.final = check_sparsity(final, "final sparsity")
        self.initial = check_sparsity(initial, "initial sparsity")
        if self.initial > self.final:
            raise ValueError(f"initial sparsity {initial} must be <= final sparsity {final}")
        for v, name in ((begin, "begin"), (end, "end"), (frequency, "frequency")):
            if isinstance(v, bool) or not float(v).is_integer():
                raise TypeError(f"{name} must be an integer step, got {v!r}")
        self.begin, self.end, self.frequency = int(begin), int(end), int(frequency)
        if self.begin < 0:
            raise ValueError(f"begin must be >= 0, got {begin}")
        if not self.begin < self.end:
            raise ValueError(f"begin must be < end, got begin={begin}, end={end}")
        if self.frequency <= 0:
            raise ValueError(f"frequency must be > 0, got {frequency}")
        exponent = float(exponent)
        if not (exponent > 0 and math.isfinite(exponent)):
            raise ValueError(f"exponent must be a finite number > 0, got {exponent}")
        self.exponent = exponent

    def __call__(self, step: int) -> float:
        if step < self.begin:
            return self.initial
        if step >= self.end:
            return self.final
        progress = (step - self.begin) / (self.end - self.begin)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** self.exponent

    def is_pruning_step(self, step: int) -> bool:
        return self.begin <= step <= self.end and ((step - self.begin) % self.frequency == 0 or step == self.end)

    def pruning_steps(self) -> list:
        return list(range(self.begin, self.end + 1, self.frequency)) + (
            [self.end] if (self.end - self.begin) % self.frequency else [])

    def __repr__(self):
        return (f"PolynomialSchedule(final={self.final}, initial={self.initial}, begin={self.begin}, "
                f"end={self.end}, frequency={self.frequency}, exponent={self.exponent})")


# ---- which layers, how many weights --------------------------------------------------------


def select_layers(model, layers=None, keep_first_dense: bool = False, keep_last_dense: bool = False) -> list:
    """Positions in ``model.weight_layers()`` of the layers to prune.

    layers: None (all weight layers), or positions (negative counts from the end) and/or
    layer names. ``keep_first_dense`` / ``keep_last_dense`` then leave out the first / last
    weight layer (the input layer sees every pixel; the logits layer is small and decisive).
    """
    wl = model.weight_layers()
    names = [l.name for l in wl]
    if layers is None:
        chosen = list(range(len(wl)))
    else:
        chosen = []
        for item in ([layers] if isinstance(layers, (int, str)) else layers):
            if isinstance(item, str):
                if item not in names:
                    raise ValueError(f"no weight layer named {item!r}; the weight layers are {names}")
                pos = names.index(item)
            elif isinstance(item, (int, np.integer)) and -len(wl) <= item < len(wl):
                pos = int(item) % len(wl)
            else:
                raise ValueError(f"layer {item!r} is not a weight-layer position in [{-len(wl)}, {len(wl)}) "
                                 f"or a name in {names}")
            if pos not in chosen:
                chosen.append(pos)
        chosen.sort()
    if keep_first_dense:
        chosen = [p for p in chosen if p != 0]
    if keep_last_dense:
        chosen = [p for p in chosen if p != len(wl) - 1]
    if not chosen:
        raise ValueError("no layers left to prune (check layers, keep_first_dense and keep_last_dense)")
    return chosen


def _full(layer) -> int:
    return layer.shape[0] * layer.shape[1]


def _present(layer, mask=None) -> np.ndarray:
    """The weights still present in a layer, as a 1-D array (a view or copy; do not write)."""
    if isinstance(layer, SparseLinear):
        return layer.weight.value
    if mask is not None:
        return layer.weight.value[mask]
    return layer.weight.value.reshape(-1)


def magnitude_threshold(magnitudes: np.ndarray, n_prune: int) -> float:
    """The threshold t for which ``magnitudes < t`` selects the ``n_prune`` smallest values.

    magnitudes: (n,) non-negative. t is the (n_prune+1)-th smallest value, so exactly
    ``n_prune`` values fall below it unless it is tied (ties are all kept: fewer are pruned).
    0 when nothing is to be pruned, +inf when everything is. Cost O(n) (a partition).
    """
    n = len(magnitudes)
    if n_prune <= 0:
        return 0.0
    if n_prune >= n:
        return math.inf
    return float(np.partition(magnitudes, n_prune)[n_prune])


def _thresholds_for(layers, masks, targets, scope: str) -> list:
    """One threshold per layer such that |w| < t leaves each layer (or all together) at target.

    targets: per-layer sparsities (scope "layer") or one overall sparsity (scope "global").
    """
    present = [_present(l, m) for l, m in zip(layers, masks)]
    if scope == "layer":
        return [magnitude_threshold(np.abs(w), len(w) - round((1.0 - s) * _full(l)))
                for l, w, s in zip(layers, present, targets)]
    keep = round((1.0 - targets) * sum(_full(l) for l in layers))
    mags = np.abs(np.concatenate(present)) if present else np.zeros(0)
    return [magnitude_threshold(mags, len(mags) - keep)] * len(layers)


def _check_on_cpu(model, who: str) -> None:
    """Pruning reads and rewrites weights with NumPy: the model must be on the CPU."""
    if getattr(model, "device", "cpu") != "cpu":
        raise ValueError(f"{who} runs on the CPU, and this model is on {model.device!r}: prune on the CPU "
                         "(model.to('cpu'), then a new optimizer), then move the pruned model to the GPU "
                         "to retrain it")


def _check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


# ---- dense -> sparse -----------------------------------------------------------------------


def _swap_param(optimizer, old, new, select) -> None:
    """Replace parameter ``old`` by ``new`` in ``optimizer``; each state array becomes select(arr)."""
    for i, p in enumerate(optimizer.params):
        if p is old:
            optimizer.params[i] = new
            optimizer.state[i] = {n: np.ascontiguousarray(select(arr)) for n, arr in optimizer.state[i].items()}
            return
    raise ValueError(f"{old!r} is not managed by this optimizer")


def _replace_layer(model, old, new) -> None:
    for i, l in enumerate(model.layers):
        if l is old:
            model.layers[i] = new
            return
    raise ValueError(f"{old!r} is not a layer of this model")


def to_sparse(model, layer, optimizer=None, mask=None) -> SparseLinear:
    """Swap a dense ``Linear`` in ``model`` for a ``SparseLinear`` computing the same function.

    layer: the Linear itself, or its position in ``model.weight_layers()``.
    mask: bool (n_out, n_in), the connections to keep (default: the nonzero weights). The new
    layer stores ``W[mask]`` in CSR order (row-major, which is what boolean indexing gives)
    and shares the old bias Parameter. With ``optimizer``, the weight Parameter is replaced
    in ``optimizer.params`` and each state array (momentum, Adam moments) becomes the entries
    at the kept connections, so training continues as if nothing happened. Returns the new
    layer. Cost O(n_out * n_in) once.
    """
    if isinstance(layer, (int, np.integer)):
        layer = model.weight_layers()[layer]
    if isinstance(layer, SparseLinear):
        raise TypeError(f"{layer.name} is already a SparseLinear")
    if not isinstance(layer, Linear):
        raise TypeError(f"to_sparse converts a Linear layer, got {type(layer).__name__}")
    w = layer.weight.value  # (n_out, n_in)
    mask = (w != 0) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != w.shape:
        raise ValueError(f"{layer.name}: mask shape {mask.shape} != weight shape {w.shape}")
    if hasattr(layer, "to_sparse"):  # Conv2d -> SparseConv2d with the same geometry
        new = layer.to_sparse(mask)  # copies W[mask] and weight.decay, shares the bias
    else:
        # the constructor draws initial weights from this throwaway generator; they are overwritten
        # allow_empty: a conversion represents whatever pruning left, even nothing
        new = SparseLinear(mask, np.random.default_rng(0), bias=layer.bias is not None, dtype=layer.dtype,
                           name=layer.name, allow_empty=True)
        new.weight.value[...] = w[mask]
        new.weight.decay = layer.weight.decay
        if layer.bias is not None:
            new.bias = layer.bias
    if optimizer is not None:
        _swap_param(optimizer, layer.weight, new.weight, lambda arr: arr[mask])
    _replace_layer(model, layer, new)
    return new


def _prune_sparse(layer, threshold: float, optimizer) -> int:
    """Compact a SparseLinear to the entries with |w| >= threshold; returns how many went."""
    keep = np.abs(layer.weight.value) >= threshold
    n_removed = int(keep.size - np.count_nonzero(keep))
    if n_removed:
        kept = layer.prune(keep)
        if optimizer is not None:
            optimizer.compact(layer.weight, kept)
    return n_removed


# ---- one-time pruning ----------------------------------------------------------------------


def prune_once(model, sparsity=None, *, threshold=None, scope: str = "global", layers=None,
               keep_first_dense: bool = False, keep_last_dense: bool = False, optimizer=None) -> list:
    """Prune a trained model once, in place: every weight with ``|w| < t`` is removed.

    Give exactly one of
      sparsity: the fraction of each pruned layer's dense size to remove, in [0, 1). With
                ``scope="global"`` one threshold over all pruned layers brings them together
                to that sparsity (small layers with large weights keep more); with
                ``scope="layer"`` each layer gets its own threshold (a sequence gives one
                sparsity per pruned layer).
      threshold: t itself (one for all pruned layers, or one per pruned layer). ``|w| == t``
                is kept.
    layers / keep_first_dense / keep_last_dense: which layers (see :func:`select_layers`).
    Pruned dense Linear layers become SparseLinear (:func:`to_sparse`); pass the optimizer to
    keep its parameters and state aligned if training continues.

    Returns one dict per pruned layer: layer, threshold, nnz_before, nnz, full, sparsity.
    """
    if (sparsity is None) == (threshold is None):
        raise ValueError("give exactly one of sparsity and threshold")
    _check_on_cpu(model, "prune_once")
    _check_scope(scope)
    positions = select_layers(model, layers, keep_first_dense, keep_last_dense)
    chosen = [model.weight_layers()[p] for p in positions]
    no_masks = [None] * len(chosen)
    if threshold is not None:
        ts = _per_layer(threshold, len(chosen), "threshold", _check_threshold)
    elif scope == "global":
        if np.ndim(sparsity) != 0:
            raise ValueError("scope='global' takes one sparsity; use scope='layer' for one per layer")
        ts = _thresholds_for(chosen, no_masks, check_sparsity(sparsity), "global")
    else:
        ts = _thresholds_for(chosen, no_masks, _per_layer(sparsity, len(chosen), "sparsity", check_sparsity), "layer")
    report = []
    for layer, t in zip(chosen, ts):
        before = int(np.count_nonzero(_present(layer))) if isinstance(layer, Linear) else layer.nnz
        if isinstance(layer, Linear):
            layer = to_sparse(model, layer, optimizer, mask=np.abs(layer.weight.value) >= t)
        else:
            _prune_sparse(layer, t, optimizer)
        report.append({"layer": layer.name, "threshold": t, "nnz_before": before, "nnz": layer.nnz,
                       "full": _full(layer), "sparsity": 1.0 - layer.nnz / _full(layer)})
    return report


# ---- gradual pruning -----------------------------------------------------------------------


class GradualPruner:
    """A ``fit`` callback that prunes on a :class:`PolynomialSchedule` (Zhu & Gupta, 2017).

        pruner = GradualPruner(model, final_sparsity=0.9, begin=600, end=8000, frequency=200)
        fit(model, data, opt, schedule, ..., callbacks=[pruner])
        pruner.finalize(model, opt)          # prune to the final target, apply the masks once more
        masks = pruner.masks(model)          # the learned structure, one mask per weight layer

    final_sparsity: one value, or (scope "layer") one per pruned layer. scope "layer" prunes
    each layer to its own s(t); scope "global" prunes all pruned layers together to s(t) with
    one threshold. crossover: a dense layer becomes a SparseLinear at the first pruning step
    where its density is below this (0: never, 1: at the first pruning step that removes
    anything); see the module docstring for what pruning a dense layer means before that.
    log: a function called with a line of text per pruning step (None: quiet).

    ``history`` holds one record per layer per pruning step: step, layer, kind ("dense" or
    "csr", after the step), target and achieved sparsity, nnz (weights present).
    """

    def __init__(self, model, final_sparsity, begin: int, end: int, frequency: int = 200,
                 initial_sparsity: float = 0.0, exponent: float = 3.0, scope: str = "layer", layers=None,
                 keep_first_dense: bool = False, keep_last_dense: bool = False, crossover: float = 0.3, log=None):
        _check_on_cpu(model, "GradualPruner")
        _check_scope(scope)
        self.positions = select_layers(model, layers, keep_first_dense, keep_last_dense)
        if scope == "global" and np.ndim(final_sparsity) != 0:
            raise ValueError("scope='global' takes one final sparsity; use scope='layer' for one per layer")
        finals = _per_layer(final_sparsity, len(self.positions), "final sparsity", check_sparsity)
        self.schedules = [PolynomialSchedule(f, initial_sparsity, begin=begin, end=end, frequency=frequency,
                                             exponent=exponent) for f in finals]
        self.schedule = self.schedules[0]  # all share begin, end, frequency
        self.scope = scope
        crossover = float(crossover)
        if not 0.0 <= crossover <= 1.0:
            raise ValueError(f"crossover must be a density in [0, 1], got {crossover}")
        self.crossover = crossover
        self.log = log
        self.history = []
        # position in weight_layers() -> bool (n_out, n_in) mask, for each dense layer that has
        # lost weights but not yet turned CSR (a dense layer not in here has lost none)
        self.dense_masks = {}

    def targets(self, step: int) -> list:
        """The target sparsity of each pruned layer at ``step`` (one value repeated if global)."""
        return [s(step) for s in self.schedules]

    def _apply_masks(self, model) -> None:
        wl = model.weight_layers()
        for p, mask in self.dense_masks.items():
            w = wl[p].weight.value
            np.multiply(w, mask, out=w)  # pruned weights are re-zeroed after every update

    def on_step_end(self, step: int, model, optimizer) -> None:
        self._apply_masks(model)
        if self.schedule.is_pruning_step(step):
            self.prune_to(model, optimizer, self.targets(step), step)

    def prune_to(self, model, optimizer, targets, step=None) -> None:
        """Prune each pruned layer (or all together, scope "global") to ``targets``; ``step``
        labels the history records (None: outside the schedule, e.g. :meth:`finalize`)."""
        wl = model.weight_layers()
        layers = [wl[p] for p in self.positions]
        masks = [self.dense_masks.get(p) for p in self.positions]
        ts = _thresholds_for(layers, masks, targets if self.scope == "layer" else targets[0], self.scope)
        line = []
        for p, layer, mask, t, target in zip(self.positions, layers, masks, ts, targets):
            if isinstance(layer, SparseLinear):
                _prune_sparse(layer, t, optimizer)
                nnz = layer.nnz
            else:
                w = layer.weight.value
                keep = np.abs(w) >= t
                mask = keep if mask is None else np.logical_and(mask, keep, out=mask)
                nnz = int(np.count_nonzero(mask))
                if nnz < mask.size:
                    self.dense_masks[p] = mask
                    np.multiply(w, mask, out=w)
                    if optimizer is not None:  # no momentum for connections that no longer exist
                        for p_opt, st in zip(optimizer.params, optimizer.state):
                            if p_opt is layer.weight:
                                for arr in st.values():
                                    np.multiply(arr, mask, out=arr)
                if nnz / _full(layer) < self.crossover:
                    layer = to_sparse(model, layer, optimizer, mask=mask)
                    self.dense_masks.pop(p, None)
            rec = {"step": step, "layer": layer.name, "kind": "csr" if isinstance(layer, SparseLinear) else "dense",
                   "target": float(target), "achieved": 1.0 - nnz / _full(layer), "nnz": nnz}
            self.history.append(rec)
            line.append(f"{rec['layer']} {rec['kind']} {100 * rec['achieved']:.2f}%")
        if self.log is not None:
            tgt = f"{100 * targets[0]:.2f}%" if len(set(targets)) == 1 else "/".join(f"{100 * s:.1f}" for s in targets)
            self.log(f"prune {'final' if step is None else f'step {step}'}: target {tgt}; " + ", ".join(line))

    def finalize(self, model, optimizer=None, convert: bool = False) -> None:
        """After training: prune to the final sparsity (a no-op when training reached ``end``)
        and apply the final masks once more. ``convert=True`` also turns the remaining dense
        masked layers into SparseLinear layers (e.g. to save the model as CSR)."""
        self._apply_masks(model)
        self.prune_to(model, optimizer, [s.final for s in self.schedules])
        if convert:
            for p in self.positions:
                if isinstance(model.weight_layers()[p], Linear):
                    layer = model.weight_layers()[p]
                    to_sparse(model, p, optimizer, mask=self.dense_masks.pop(p, np.ones(layer.shape, dtype=bool)))

    def masks(self, model) -> list:
        """One boolean ``scipy.sparse.csr_matrix`` per weight layer: the structure learned so far."""
        return [sp.csr_matrix(self.dense_masks[p]) if p in self.dense_masks else m
                for p, m in enumerate(model_masks(model))]

    def sparsity(self, model) -> float:
        """Fraction of the pruned layers' dense weights that are gone."""
        wl = model.weight_layers()
        nnz = sum(int(np.count_nonzero(self.dense_masks[p])) if p in self.dense_masks else wl[p].nnz
                  for p in self.positions)
        return 1.0 - nnz / sum(_full(wl[p]) for p in self.positions)


# ---- structures, rewinding, storage --------------------------------------------------------


def model_masks(model) -> list:
    """One boolean ``scipy.sparse.csr_matrix`` (n_out, n_in) per weight layer: a SparseLinear's
    pattern, or a dense layer's nonzero weights (all of them, for a trained dense layer)."""
    return [l.mask() if isinstance(l, SparseLinear) else sp.csr_matrix(l.weight.value != 0)
            for l in model.weight_layers()]


def sparsity_of(model) -> float:
    """Fraction of all weight layers' dense weights that are not stored (biases excluded)."""
    masks = model_masks(model)
    return 1.0 - sum(m.nnz for m in masks) / sum(m.shape[0] * m.shape[1] for m in masks)


def initial_weights(model) -> list:
    """Copies of every weight layer's weights and its bias (or None): take this before training
    to :func:`rewind` a pruned structure to it later. A dense layer's weights come as a dense
    ``(n_out, n_in)`` array; a SparseLinear's as a ``scipy.sparse.csr_matrix`` holding its
    stored weights, so that a 262,144-wide sparse layer costs O(nnz), not a dense 275 GB copy."""
    out = []
    for l in model.weight_layers():
        if isinstance(l, SparseLinear):
            w = l.pattern.to_scipy(l.weight.host().copy())
        else:
            w = l.weight.value.copy()
        out.append((w, None if l.bias is None else l.bias.value.copy()))
    return out


def _lookup(w0: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``w0[rows[k], cols[k]]`` for every k (0 where ``w0`` stores nothing), in O((nnz + k) log nnz):
    ``w0``'s canonical CSR order is the order of the keys ``row * n_in + col``, so one searchsorted."""
    w0 = sp.csr_matrix(w0)
    w0.sum_duplicates()  # canonical: sorted, unique
    if w0.nnz == 0:
        return np.zeros(len(rows), dtype=w0.dtype)
    n_in = w0.shape[1]
    keys0 = np.repeat(np.arange(w0.shape[0], dtype=np.int64), np.diff(w0.indptr)) * n_in + w0.indices
    keys = rows.astype(np.int64) * n_in + cols
    pos = np.minimum(np.searchsorted(keys0, keys), w0.nnz - 1)
    return np.where(keys0[pos] == keys, w0.data[pos], 0)


def rewind(model, initial) -> None:
    """Set every stored weight of ``model`` to its value in ``initial`` (from
    :func:`initial_weights` of a model of the same shapes), and every bias likewise.

    For a SparseLinear entry k at (row r, column c): ``data[k] = W0[r, c]``. This is the
    lottery-ticket variant of retraining: the structure of the pruned network, the weights
    the dense network started from. ``W0`` may be dense or sparse (a sparse model's
    :func:`initial_weights`; a connection it does not store rewinds to 0).
    """
    wl = model.weight_layers()
    if len(initial) != len(wl):
        raise ValueError(f"initial weights are for {len(initial)} weight layers, the model has {len(wl)}")
    for layer, (w0, b0) in zip(wl, initial):
        if tuple(w0.shape) != tuple(layer.shape):
            raise ValueError(f"{layer.name}: initial weights have shape {w0.shape}, the layer {layer.shape}")
        if isinstance(layer, SparseLinear):
            p = layer.pattern
            if sp.issparse(w0):
                layer.weight.value[...] = _lookup(w0, p.row_of_entry(), p.indices)
            else:
                layer.weight.value[...] = w0[p.row_of_entry(), p.indices]
        else:
            layer.weight.value[...] = w0.toarray() if sp.issparse(w0) else w0
        if layer.bias is not None and b0 is not None:
            layer.bias.value[...] = b0


def storage_bytes(model) -> dict:
    """Weight storage of ``model``: dense float32 bytes against what it stores (CSR indptr +
    indices + data for a SparseLinear, the dense matrix for a Linear), and the nnz."""
    dense = stored = nnz = 0
    for l in model.weight_layers():
        dense += 4 * _full(l)
        stored += l.pattern.nbytes() if isinstance(l, SparseLinear) else 4 * _full(l)
        nnz += l.nnz
    return {"dense_bytes": dense, "stored_bytes": stored, "nnz": nnz}


def save_sparse_model(path, model, **extra) -> int:
    """Write ``model``'s weight layers as CSR to an ``.npz`` (atomically); returns its size in bytes.

    The file is a mask file (``sparsenn.io`` format: ``mask{i}_indptr/indices/shape``, one per
    weight layer, so ``load_masks`` reads it) plus ``weight{i}`` float32 (nnz,) in CSR order
    and ``bias{i}`` (n_out,) when the layer has one. A dense Linear is stored as a full mask
    (or its nonzeros, if it was pruned by masking). ``extra`` arrays are stored beside.
    """
    arrays = masks_to_arrays(model_masks(model))
    for i, layer in enumerate(model.weight_layers()):
        if isinstance(layer, SparseLinear):
            arrays[f"weight{i}"] = layer.weight.value
        else:
            w = layer.weight.value
            arrays[f"weight{i}"] = w[w != 0]  # row-major = CSR order, matching the mask
        if layer.bias is not None:
            arrays[f"bias{i}"] = layer.bias.value
    for k, v in extra.items():
        arrays[k] = np.asarray(v)
    atomic_savez(path, **arrays)
    return os.path.getsize(path)


def load_sparse_model(path, build):
    """Rebuild a model saved by :func:`save_sparse_model`.

    build: masks -> model, e.g. ``lambda m: lenet300(rng=np.random.default_rng(0), masks=m)``
    (its random weights are replaced). Each weight layer must be a SparseLinear on the saved
    mask, or a Linear (whose missing entries are set to 0).
    """
    masks = load_masks(path)
    model = build(masks)
    wl = model.weight_layers()
    if len(wl) != len(masks):
        raise ValueError(f"{path}: {len(masks)} weight layers in the file, {len(wl)} in the built model")
    with np.load(path, allow_pickle=False) as f:
        for i, (layer, m) in enumerate(zip(wl, masks)):
            data = f[f"weight{i}"]
            if isinstance(layer, SparseLinear):
                layer.set_pattern(CSRPattern.from_mask(m, name=f"{path} layer {i}"), data)
            else:
                if tuple(layer.shape) != m.shape:
                    raise ValueError(f"{path}: layer {i} is {m.shape} in the file, {layer.shape} in the model")
                layer.weight.value[...] = sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape).toarray()
            if layer.bias is not None:
                layer.bias.value[...] = f[f"bias{i}"]
    return model
