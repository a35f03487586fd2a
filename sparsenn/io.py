"""Files on disk: atomic ``.npz`` writes and the mask file format.

A mask file is an ``.npz`` holding one CSR sparsity pattern per weight layer, in sparsenn's
``(n_out, n_in)`` orientation::

    n_layers            int64 scalar
    mask{i}_indptr      int32 (n_out+1,)
    mask{i}_indices     int32 (nnz,)   sorted and unique within each row
    mask{i}_shape       int64 (2,)     (n_out, n_in)

Every file sparsenn writes goes through :func:`atomic_savez`: it writes a temporary file in
the same directory and renames it over the target, so a run killed mid-write never leaves a
half-written checkpoint or mask behind.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import scipy.sparse as sp


def atomic_savez(path, **arrays) -> None:
    """Write ``arrays`` to ``path`` (an ``.npz``) atomically: temporary file, fsync, rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def masks_to_arrays(masks, prefix: str = "mask") -> dict:
    """Flatten a list of boolean sparse masks into the named arrays of the mask format."""
    out = {"n_layers": np.int64(len(masks))}
    for i, m in enumerate(masks):
        m = sp.csr_matrix(m, dtype=bool)
        m.eliminate_zeros()
        m.sum_duplicates()
        m.sort_indices()
        out[f"{prefix}{i}_indptr"] = m.indptr.astype(np.int32)
        out[f"{prefix}{i}_indices"] = m.indices.astype(np.int32)
        out[f"{prefix}{i}_shape"] = np.asarray(m.shape, dtype=np.int64)
    return out


def arrays_to_masks(arrays, prefix: str = "mask", source: str = "mask file") -> list:
    """Inverse of :func:`masks_to_arrays`; ``arrays`` is a dict or an open ``NpzFile``."""
    if "n_layers" not in arrays:
        raise ValueError(f"{source}: not a sparsenn mask file (no 'n_layers' entry)")
    masks = []
    for i in range(int(arrays["n_layers"])):
        try:
            indptr = np.asarray(arrays[f"{prefix}{i}_indptr"])
            indices = np.asarray(arrays[f"{prefix}{i}_indices"])
            shape = tuple(int(s) for s in arrays[f"{prefix}{i}_shape"])
        except KeyError as e:
            raise ValueError(f"{source}: layer {i} is incomplete (missing {e.args[0]!r})") from None
        from sparsenn.csr import check_csr

        check_csr(indptr, indices, None, shape, name=f"{source} layer {i}")
        data = np.ones(len(indices), dtype=bool)
        masks.append(sp.csr_matrix((data, indices, indptr), shape=shape))
    return masks


def save_masks(path, masks, **extra) -> None:
    """Save a list of ``(n_out, n_in)`` boolean masks (anything ``scipy.sparse`` accepts).

    ``extra`` arrays (e.g. ``sparsity=0.9``) are stored beside the masks.
    """
    arrays = masks_to_arrays(masks)
    for k, v in extra.items():
        arrays[k] = np.asarray(v)
    atomic_savez(path, **arrays)


def load_masks(path) -> list:
    """Load the masks saved by :func:`save_masks` as boolean ``scipy.sparse.csr_matrix``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"mask file not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        return arrays_to_masks(f, source=path)
