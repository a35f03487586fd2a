"""Checkpoints: everything needed to continue a run exactly where it stopped.

One ``.npz`` (written atomically by ``sparsenn.io.atomic_savez``) holds::

    param.{j}                the j-th parameter of model.parameters() (weights, biases)
    pattern.{i}.indptr/...   the CSR pattern of the i-th sparse weight layer (indptr, indices, shape)
    optim.{j}.{name}         optimiser state aligned with param.{j}; optim.steps
    step, epoch              progress counters
    rng_state                JSON of the training Generator's bit-generator state
    config                   JSON of the run's configuration
    meta                     JSON of anything else (e.g. metrics so far)
"""

from __future__ import annotations

import json
import os

import numpy as np

from sparsenn.csr import CSRPattern
from sparsenn.device import backend_of
from sparsenn.io import atomic_savez, read_npz
from sparsenn.layers import SparseLinear


def sparse_layers(model):
    return [l for l in model.layers if isinstance(l, SparseLinear)]


def model_arrays(model) -> dict:
    """Weights and sparsity patterns of a Sequential model as named arrays."""
    out = {}
    for i, layer in enumerate(sparse_layers(model)):
        p = layer.pattern
        out[f"pattern.{i}.indptr"] = p.indptr
        out[f"pattern.{i}.indices"] = p.indices
        out[f"pattern.{i}.shape"] = np.asarray(p.shape, dtype=np.int64)
    for j, param in enumerate(model.parameters()):
        out[f"param.{j}"] = param.host()
    return out


def load_model_arrays(model, arrays, source: str = "checkpoint") -> None:
    """Restore patterns then weights into a model of the same architecture."""
    layers = sparse_layers(model)
    for i, layer in enumerate(layers):
        try:
            pattern = CSRPattern.from_arrays(
                arrays[f"pattern.{i}.indptr"], arrays[f"pattern.{i}.indices"], arrays[f"pattern.{i}.shape"],
                name=f"{source} pattern {i}",
            )
        except KeyError as e:
            raise ValueError(f"{source}: no sparsity pattern for sparse layer {i} ({layer.name}); "
                             f"was it saved from a different model? (missing {e.args[0]!r})") from None
        # the pattern first, with placeholder weights; the real ones come with the parameters
        layer.set_pattern(pattern, np.zeros(pattern.nnz, dtype=layer.dtype))
    for j, param in enumerate(model.parameters()):
        key = f"param.{j}"
        if key not in arrays:
            raise ValueError(f"{source}: no value for parameter {j} ({param.name}); different model?")
        value = np.asarray(arrays[key])
        if value.shape != param.value.shape:
            raise ValueError(f"{source}: parameter {param.name} has shape {value.shape} in the file, "
                             f"{param.value.shape} in the model; different model?")
        backend_of(param.value).assign(param.value, value)


def save_checkpoint(path, model, optimizer=None, step: int = 0, epoch: int = 0, rng=None,
                    config: dict | None = None, meta: dict | None = None) -> None:
    arrays = model_arrays(model)
    if optimizer is not None:
        arrays.update(optimizer.state_dict())
    arrays["step"] = np.int64(step)
    arrays["epoch"] = np.int64(epoch)
    if rng is not None:
        arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    arrays["config"] = np.array(json.dumps(config or {}))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    atomic_savez(path, **arrays)


def read_checkpoint(path) -> dict:
    """All arrays of a checkpoint, with ``config``/``meta``/``rng_state`` decoded from JSON."""
    path = os.fspath(path)
    d = read_npz(path, "sparsenn checkpoint")
    for k in ("config", "meta", "rng_state"):
        if k in d:
            try:
                d[k] = json.loads(str(d[k]))
            except ValueError:
                raise ValueError(f"{path}: not a sparsenn checkpoint (its {k!r} entry is not JSON)") from None
    if "step" not in d:
        raise ValueError(f"{path}: not a sparsenn checkpoint (no 'step' entry)")
    return d


def restore(ckpt: dict, model, optimizer=None, rng=None, source: str = "checkpoint") -> None:
    """Load a checkpoint read by :func:`read_checkpoint` into model, optimiser and generator."""
    load_model_arrays(model, ckpt, source=source)
    if optimizer is not None:
        # optimiser state must follow the (possibly re-patterned) parameters
        optimizer.zero_state()
        optimizer.load_state_dict(ckpt)
    if rng is not None and "rng_state" in ckpt:
        rng.bit_generator.state = ckpt["rng_state"]
