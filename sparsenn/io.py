"""Files on disk: atomic ``.npz`` writes and the mask file format.

A mask file is an ``.npz`` holding one CSR sparsity pattern per weight layer, in sparsenn's
``(n_out, n_in)`` orientation::

    n_layers            int64 scalar
    mask{i}_indptr      int32 (n_out+1,)
    mask{i}_indices     int32 (nnz,)   sorted and unique within each row
    mask{i}_shape       int64 (2,)     (n_out, n_in)

Every file sparsenn writes goes through :func:`atomic_savez`: it writes a temporary file in
the same directory and renames it over the target, so a run killed mid-write never leaves a
half-written checkpoint or mask behind. The temporary file is named after its target and its
writer (``.run.npz.tmp-<pid>-<random>``): one left by a killed writer is removed by the next
successful write of the same target. Files get the permissions of the user's other files
(``0666`` less the umask), not the ``0600`` of a bare ``mkstemp``.

Every ``.npz`` sparsenn reads goes through :func:`read_npz`, which never unpickles and says
which file is not what it should be.
"""

from __future__ import annotations

import glob
import os
import tempfile
import zipfile

import numpy as np
import scipy.sparse as sp


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it ...
    os.umask(mask)  # ... and put it back
    return mask


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(path: str) -> None:
    """Delete ``.<name>.tmp-<pid>-*`` files beside ``path`` whose writer is no longer running
    (a kill during a write leaves them); never another file, nor a live writer's."""
    directory, name = os.path.split(path)
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.tmp-*")):
        pid = os.path.basename(tmp)[len(name) + 6:].split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _writer_alive(int(pid))):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def atomic_savez(path, **arrays) -> None:
    """Write ``arrays`` to ``path`` (an ``.npz``) atomically: temporary file, fsync, rename."""
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-{os.getpid()}-", suffix=".npz", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the user's usual mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_output_path(path, flag: str, kind: str = "file") -> None:
    """Raise ValueError naming ``flag`` (e.g. ``"--save"``) unless ``path`` can be written as a
    ``kind`` ("file" or "dir"): a file must not be an existing directory, a directory not an
    existing file, and the nearest existing parent must be a writable directory. Creates
    nothing. Called before long work starts, so that its results are not lost at the end."""
    if path is None:
        return
    path = os.path.abspath(os.fspath(path))
    if kind == "file" and os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory; give a file name (e.g. {os.path.join(path, 'run.npz')})")
    if kind == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: exists and is not a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path}: not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the directories a write would create
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: cannot be created, {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot be created, {parent} is not writable")
    try:  # os.access answers yes to root everywhere, also where nothing can be created (/proc, /sys)
        with tempfile.TemporaryFile(dir=parent):  # gone again on closing: no name is left behind
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot be created in {parent} ({e.strerror or e})") from None


def read_npz(path, what: str = "sparsenn file") -> dict:
    """All arrays of an ``.npz`` as a dict, never unpickling. A missing file is a
    FileNotFoundError, anything unreadable a ValueError: "<path>: not a <what> (<reason>)"."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: not a {what} (it is a directory)")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it, and suggest doing so unsafely
        raise ValueError(f"{path}: not a {what} (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e):
            reason = "it holds Python objects, which sparsenn never writes nor loads"
        else:
            reason = str(e)
        raise ValueError(f"{path}: not a {what} ({reason})") from None
    except Exception as e:  # zip or format errors of a truncated or foreign file
        raise ValueError(f"{path}: not a {what} ({type(e).__name__}: {e})") from None


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
    n_layers = np.asarray(arrays["n_layers"])
    if n_layers.shape != () or n_layers.dtype.kind not in "iu" or int(n_layers) < 1:
        raise ValueError(f"{source}: not a sparsenn mask file (n_layers must be an integer >= 1, "
                         f"got {n_layers.tolist()!r})")
    masks = []
    for i in range(int(n_layers)):
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
    return arrays_to_masks(read_npz(path, "sparsenn mask file"), source=path)
