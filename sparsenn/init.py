"""Weight initialisers: He/Kaiming, Xavier/Glorot (normal and uniform), truncated normal.

Each scheme draws values with a standard deviation set by the fan-in and/or fan-out.
``fan_in`` and ``fan_out`` may be scalars (a dense layer) or arrays with one value per weight
(a sparse layer initialised by its *actual* fans): a 90%-sparse layer whose neurons see only a
tenth of the inputs then gets weights sqrt(10) times larger, so its outputs start with the
same variance as a dense layer's.

    kaiming_normal    std   = gain / sqrt(fan_in)                   (gain sqrt(2) for ReLU)
    kaiming_uniform   bound = gain * sqrt(3 / fan_in)
    xavier_normal     std   = gain * sqrt(2 / (fan_in + fan_out))
    xavier_uniform    bound = gain * sqrt(6 / (fan_in + fan_out))
    truncated_normal  kaiming std, values beyond 2 std redrawn, then rescaled so the
                      variance is still gain**2 / fan_in (truncation alone shrinks it by 0.774)
    FixedTruncatedNormal(std)
                      std (the normal's, before truncation) fixed whatever the fans, values
                      beyond 2 std redrawn and *not* rescaled: TensorFlow's
                      ``truncated_normal_initializer(stddev=std)``, as the 2019 study used
                      (0.04 for fully connected layers, 0.05 for convolutions). Pass an
                      instance where a scheme name goes: ``Linear(..., init=FixedTruncatedNormal(0.04))``.

Every function takes an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "truncated_normal")

# Variance of a standard normal truncated to [-2, 2]; dividing by its square root restores 1.
_TRUNC2_STD = 0.8796256610342398


@dataclass(frozen=True)
class FixedTruncatedNormal:
    """A scheme whose standard deviation is ``std`` for every weight (fans ignored): a normal
    of that std with values beyond 2 std redrawn (the result's std is 0.88 ``std``)."""

    std: float

    def __post_init__(self):
        if not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"FixedTruncatedNormal: std must be finite and > 0, got {self.std}")


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def truncated_standard_normal(size, rng, bound: float = 2.0) -> np.ndarray:
    """Standard normal values with anything beyond ``bound`` redrawn (float64)."""
    _check_rng(rng)
    out = rng.standard_normal(size)
    bad = np.abs(out) > bound
    while np.any(bad):
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > bound
    return out


def draw(scheme: str, size, fan_in, fan_out, rng, gain=None, dtype=np.float32) -> np.ndarray:
    """Draw ``size`` weights with ``scheme``; ``fan_in``/``fan_out`` broadcast against ``size``."""
    _check_rng(rng)
    if isinstance(scheme, FixedTruncatedNormal):
        return np.asarray(truncated_standard_normal(size, rng) * scheme.std, dtype=dtype)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown initialiser {scheme!r}; choose one of {', '.join(SCHEMES)}")
    fan_in = np.maximum(np.asarray(fan_in, dtype=np.float64), 1.0)
    fan_out = np.maximum(np.asarray(fan_out, dtype=np.float64), 1.0)
    if scheme.startswith("kaiming") or scheme == "truncated_normal":
        gain = np.sqrt(2.0) if gain is None else gain
        std = gain / np.sqrt(fan_in)
    else:
        gain = 1.0 if gain is None else gain
        std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    if scheme.endswith("uniform"):
        bound = np.sqrt(3.0) * std  # a uniform on [-a, a] has std a / sqrt(3)
        w = rng.uniform(-1.0, 1.0, size) * bound
    elif scheme == "truncated_normal":
        w = truncated_standard_normal(size, rng) * (std / _TRUNC2_STD)
    else:
        w = rng.standard_normal(size) * std
    return np.asarray(w, dtype=dtype)


def dense_weights(scheme: str, shape, rng, gain=None, dtype=np.float32) -> np.ndarray:
    """Weights for a dense ``(n_out, n_in)`` matrix: fan_in = n_in, fan_out = n_out."""
    n_out, n_in = shape
    return draw(scheme, (n_out, n_in), n_in, n_out, rng, gain=gain, dtype=dtype)


def sparse_weights(scheme: str, pattern, rng, fan: str = "actual", gain=None, dtype=np.float32):
    """Weights for the stored entries of a :class:`sparsenn.csr.CSRPattern`: (nnz,).

    ``fan="actual"``: each weight uses its own neuron's fans (fan_in = nnz of its row, fan_out =
    nnz of its column), so a sparse layer starts with the activation variance of a dense one.
    ``fan="dense"``: the fans of the full matrix (n_in, n_out), as if the mask were applied to a
    dense initialisation (what the 2019 study did).
    """
    n_out, n_in = pattern.shape
    if fan == "actual":
        fan_in = np.diff(pattern.indptr)[pattern.row_of_entry()]
        fan_out = np.diff(pattern.t_indptr)[pattern.indices]
    elif fan == "dense":
        fan_in, fan_out = n_in, n_out
    else:
        raise ValueError(f"fan must be 'actual' or 'dense', got {fan!r}")
    return draw(scheme, pattern.nnz, fan_in, fan_out, rng, gain=gain, dtype=dtype)
