"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as uint8 arrays, and where they become floats.

Loaders return a :class:`Dataset` of **uint8** arrays, exactly as stored on disk::

    MNIST, Fashion-MNIST   train_images (60000, 28, 28)     train_labels (60000,)
                           test_images  (10000, 28, 28)     test_labels  (10000,)
    CIFAR-10               train_images (50000, 3, 32, 32)  train_labels (50000,)
                           test_images  (10000, 3, 32, 32)  test_labels  (10000,)

CIFAR-10 images are channels-first ``(n, channel, row, col)`` with channels R, G, B, because
that is the order of the 3072 bytes of a CIFAR row (1024 red, 1024 green, 1024 blue): the
reshape is free and the flattened features stay in the file's order.

:func:`to_features_major` is the single place where pixels become float32 and are normalised,
into sparsenn's activation layout ``(n_features, batch)``::

    x = to_features_major(ds.train_images, ds.mean, ds.std)   # (784, 60000) float32

Where data is looked for, in order (the first directory holding every file wins):

1. ``root``, when the caller passes one (if the data then comes from a later place, a line on
   stderr says so);
2. ``$SPARSENN_DATA``;
3. the project's ``data/`` directory (``<repo>/data``; see ``data/README.md``);
4. the user cache ``$XDG_CACHE_HOME/sparsenn`` (default ``~/.cache/sparsenn``), where downloads
   go when ``data/`` cannot be written (a non-editable install);
5. ``/usr/share/datasets``, where Debian's ``dataset-*`` packages install (``apt-get install
   dataset-fashion-mnist`` gives ``/usr/share/datasets/fashion-mnist/*.gz``).

Within a root: ``mnist/`` and ``fashion-mnist/`` hold the four IDX files (gzip or raw);
CIFAR-10 is ``cifar-10-batches-py/`` or the official ``cifar-10-python.tar.gz``.

When nothing is found and ``download=True`` the files are fetched from public mirrors into
``root`` if given, else ``data/``, else the user cache (``$SPARSENN_DATA`` is only read, never
written). Each file is downloaded to a temporary name, verified, then renamed into place, so
an interrupted download never leaves a half file where the loader looks.

Integrity: with ``verify=True`` (the default) the SHA-256 of each *decompressed* IDX file and
the MD5 of each CIFAR-10 batch are checked against the published contents before anything is
parsed. Hashing is cheap next to decompression (about 0.03 s for the 47 MB MNIST training
images, against 0.3 s to gunzip them), so it is done on every load rather than cached.
``verify=False`` exists for the tests' tiny files.

CIFAR-10 batches are Python pickles, and unpickling can run arbitrary code. They are only
unpickled after their MD5 matches (when verifying) and always through
:class:`_CifarUnpickler`, which resolves exactly the globals a pickled uint8 array needs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# What the datasets are: file names, checksums, mirrors, statistics.
# --------------------------------------------------------------------------------------------

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# SHA-256 of the decompressed IDX files. Hashing the decompressed bytes makes the check
# independent of how a mirror or a distribution re-gzipped them (the gzip header stores a
# timestamp, so Debian's .gz files differ byte-wise from Zalando's).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1; the contents are the
# canonical 60000/10000 images with 6000/1000 per class, and these digests agree with ones
# published independently for Zalando's files.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TAR = "cifar-10-python.tar.gz"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
DOWNLOAD_TIMEOUT_S = 10.0  # per connect and per read; a dead mirror should fail fast

# Per-pixel statistics of the training images after scaling to [0, 1] (per channel for CIFAR).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# Where to look; module attributes so that tests (and unusual installs) can repoint them.
PROJECT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SYSTEM_DATA_DIRS = (Path("/usr/share/datasets"),)  # Debian's dataset-* packages


def user_cache_dir() -> Path:
    """Download target when data/ is read-only: ``${XDG_CACHE_HOME:-~/.cache}/sparsenn``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsenn"


# --------------------------------------------------------------------------------------------
# Errors and the result type.
# --------------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A dataset file exists but is not what it should be (corrupt, truncated, wrong checksum)."""


class DatasetNotFoundError(FileNotFoundError):
    """No location held the dataset and downloading failed; the message lists where we looked."""


@dataclass
class Dataset:
    """A labelled image dataset as uint8 arrays (shapes in the module docstring).

    ``source`` is the directory (or archive) the arrays were read from; ``verified`` is True
    when every file's checksum was checked. ``mean``/``std`` are the normalisation constants
    to hand to :func:`to_features_major` (scalars, or one per channel for CIFAR-10).
    """

    name: str
    source: Path
    train_images: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    test_images: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    classes: tuple = field(repr=False)
    mean: float | tuple
    std: float | tuple
    verified: bool

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_images.shape}, "
            f"test={self.test_images.shape}, source='{self.source}', verified={self.verified})"
        )


# --------------------------------------------------------------------------------------------
# uint8 images -> float32 features-major: the one place pixels become floats.
# --------------------------------------------------------------------------------------------


def normalisation(image_shape, mean=0.0, std=1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)``, float32 ``(n_features,)`` each, such that a pixel ``p`` of feature
    ``f`` becomes ``p * scale[f] + shift[f]`` = ``(p / 255 - mean[channel of f]) / std[channel of f]``.

    ``image_shape``: one image's shape, e.g. ``(28, 28)`` or ``(3, 32, 32)``. ``mean``, ``std``:
    scalars, or one value per channel for channels-first ``(C, H, W)`` images.
    """
    n_features = int(np.prod(image_shape))
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != std.shape or mean.ndim > 1:
        raise ValueError(
            f"mean and std must be two scalars or two 1-D sequences of equal length, "
            f"got shapes {mean.shape} and {std.shape}"
        )
    if np.any(~np.isfinite(std)) or np.any(std <= 0) or np.any(~np.isfinite(mean)):
        raise ValueError(f"std must be finite and > 0 and mean finite, got mean={mean}, std={std}")
    if mean.ndim == 1:
        n_channels = mean.shape[0]
        if len(image_shape) != 3 or image_shape[0] != n_channels:
            raise ValueError(
                f"{n_channels} per-channel means need images of shape (n, {n_channels}, H, W), "
                f"got (n, {', '.join(map(str, image_shape))})"
            )
        # Channels-first images flatten channel by channel: one (mean, std) per block of H*W.
        per_pixel = n_features // n_channels
        scale = np.repeat(1.0 / (255.0 * std), per_pixel)
        shift = np.repeat(-mean / std, per_pixel)
    else:
        scale = np.full(n_features, 1.0 / (255.0 * std))
        shift = np.full(n_features, -mean / std)
    # (p/255 - mean)/std == p * (1/(255 std)) + (-mean/std): one multiply-add
    return scale.astype(np.float32), shift.astype(np.float32)


def to_features_major(images, mean=0.0, std=1.0) -> np.ndarray:
    """Scale uint8 images to [0, 1], normalise, and lay them out as ``(n_features, n)``.

    ``images``: uint8 ``(n, ...)``, e.g. ``(n, 28, 28)`` or ``(n, 3, 32, 32)``.
    ``mean``, ``std``: scalars, or one value per channel when ``images`` is ``(n, C, H, W)``.
    Returns float32 ``(n_features, n)``, C-contiguous, with
    ``x[f, i] = (images[i].ravel()[f] / 255 - mean[channel of f]) / std[channel of f]``
    computed as ``p * scale[f] + shift[f]`` in float32 (:func:`normalisation`).
    Feature ``f`` is the row-major index into one image, so for CIFAR the 1024 red pixels come
    first, then green, then blue.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (as loaded), got {images.dtype}")
    if images.ndim < 2:
        raise ValueError(f"images must be (n, ...) with at least 2 dimensions, got {images.shape}")
    n = images.shape[0]
    n_features = int(np.prod(images.shape[1:]))
    flat = images.reshape(n, n_features)  # (n, n_features); -1 would fail for n == 0
    scale, shift = normalisation(images.shape[1:], mean, std)

    # Assigning the transposed view into a preallocated C-order array is several times faster
    # than np.ascontiguousarray(flat.T) for this uint8 -> float32 cast.
    x = np.empty((n_features, n), dtype=np.float32)  # (n_features, n)
    x[...] = flat.T
    x *= scale[:, None]
    x += shift[:, None]
    return x


# --------------------------------------------------------------------------------------------
# Where to look.
# --------------------------------------------------------------------------------------------


def search_roots(root=None) -> list[tuple[Path, str]]:
    """The roots searched, in order, each with why it is on the list."""
    roots = []
    if root is not None:
        roots.append((Path(root).expanduser(), "root argument"))
    env = os.environ.get("SPARSENN_DATA")
    if env:
        roots.append((Path(env).expanduser(), "$SPARSENN_DATA"))
    roots.append((Path(PROJECT_DATA_DIR), "project data/ directory"))
    roots.append((user_cache_dir(), "user cache"))
    for d in SYSTEM_DATA_DIRS:
        roots.append((Path(d), "Debian dataset-* packages"))
    return roots


def _download_roots(root) -> list[Path]:
    # An explicit root is where the caller wants the files; otherwise the project cache,
    # then the user cache. $SPARSENN_DATA is deliberately absent: it often points at a shared,
    # read-only copy (CI's ../shared/datasets) that the project must not write into.
    if root is not None:
        return [Path(root).expanduser()]
    return [Path(PROJECT_DATA_DIR), user_cache_dir()]


def _writable_dir(path: Path) -> bool:
    """Create ``path`` if needed; True if files can be written into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST).
# --------------------------------------------------------------------------------------------

_IDX_UBYTE = 0x08  # the only IDX element type these datasets use


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    if path.suffix != ".gz":
        return raw
    if raw[:2] != b"\x1f\x8b":
        raise DatasetError(f"{path}: not a gzip file (starts with {raw[:2].hex() or 'nothing'})")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: gzip data is corrupt or truncated ({e})") from None


def _check_digest(path, payload: bytes, algorithm: str, expected: str, what: str) -> None:
    got = hashlib.new(algorithm, payload, usedforsecurity=False).hexdigest()
    if got != expected:
        raise DatasetError(
            f"{path}: {algorithm.upper()} of the {what} is {got}, expected {expected}: the file is "
            f"corrupt, truncated or not the canonical dataset; delete it and load again to "
            f"re-download, or pass verify=False for your own files"
        )


def parse_idx(payload: bytes, source="IDX data") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file of uint8 elements.

    Layout: ``00 00 08 ndim``, then ``ndim`` big-endian uint32 sizes, then the elements
    row-major. Returns a writable uint8 array of those sizes. ``source`` names the file in errors.
    """
    if len(payload) < 4:
        raise DatasetError(f"{source}: too short for an IDX header ({len(payload)} bytes)")
    if payload[0] != 0 or payload[1] != 0:
        raise DatasetError(
            f"{source}: bad IDX magic number {payload[:4].hex()} (expected 0000 08 <ndim>)"
        )
    if payload[2] != _IDX_UBYTE:
        raise DatasetError(
            f"{source}: IDX element type 0x{payload[2]:02x} is not unsigned byte (0x08)"
        )
    ndim = payload[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(payload) < header:
        raise DatasetError(
            f"{source}: IDX header for {ndim} dimensions needs {header} bytes, "
            f"file has {len(payload)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    n_bytes = int(np.prod(dims, dtype=np.int64))
    if len(payload) != header + n_bytes:
        raise DatasetError(
            f"{source}: IDX header says {dims} = {n_bytes} bytes of data, file has "
            f"{len(payload) - header} (truncated or trailing garbage)"
        )
    # frombuffer over bytes is read-only; the copy makes the array the caller's to modify.
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) as uint8; check ``sha256`` of the raw bytes if given."""
    path = Path(path)
    payload = _read_maybe_gzip(path)
    if sha256 is not None:
        _check_digest(path, payload, "sha256", sha256, "decompressed contents")
    return parse_idx(payload, source=path)


def _idx_file(directory: Path, name: str) -> Path | None:
    # Prefer the raw file: it needs no decompression.
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _check_labels(labels: np.ndarray, n_images: int, source, n_classes: int = 10) -> None:
    if labels.shape[0] != n_images:
        raise DatasetError(f"{source}: {labels.shape[0]} labels for {n_images} images")
    if labels.size and labels.max() >= n_classes:
        bad = int(np.argmax(labels >= n_classes))
        raise DatasetError(
            f"{source}: label {labels[bad]} at index {bad} is outside 0..{n_classes - 1}"
        )


def _load_idx_dir(directory: Path, name: str, checksums: dict, verify: bool):
    """Read the four IDX files of ``directory``; returns (train_x, train_y, test_x, test_y)."""
    arrays = {}
    for stem in IDX_FILES:
        path = _idx_file(directory, stem)
        arrays[stem] = read_idx(path, checksums[stem] if verify else None)
        want_ndim = 3 if "images" in stem else 1
        got = arrays[stem].shape
        if len(got) != want_ndim or (want_ndim == 3 and got[1:] != (28, 28)):
            want = "(n, 28, 28)" if want_ndim == 3 else "(n,)"
            raise DatasetError(f"{path}: {name} {stem} must have shape {want}, got {got}")
    for split in ("train", "t10k"):
        labels_path = _idx_file(directory, f"{split}-labels-idx1-ubyte")
        _check_labels(
            arrays[f"{split}-labels-idx1-ubyte"],
            arrays[f"{split}-images-idx3-ubyte"].shape[0],
            labels_path,
        )
    return (
        arrays["train-images-idx3-ubyte"],
        arrays["train-labels-idx1-ubyte"],
        arrays["t10k-images-idx3-ubyte"],
        arrays["t10k-labels-idx1-ubyte"],
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches.
# --------------------------------------------------------------------------------------------

# ndarray.__reduce__ names numpy's array-reconstruction function; asking numpy for it avoids
# importing numpy.core vs numpy._core by name (the module moved in NumPy 2).
_NP_RECONSTRUCT = np.empty(0).__reduce__()[0]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str, bytes, ints and uint8 arrays, and nothing callable else.

    A pickle runs code by naming a global (``os.system``) and calling it. The CIFAR batches
    name only the three globals numpy needs to rebuild an array; any other name is refused
    before it is imported. Both module spellings of ``_reconstruct`` are accepted: the files
    were written by NumPy 1 (``numpy.core``), NumPy 2 writes ``numpy._core``.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch only needs "
                f"numpy's array reconstruction"
            ) from None


def parse_cifar_batch(payload: bytes, source="CIFAR-10 batch"):
    """Unpickle one CIFAR-10 python batch safely.

    Returns ``images`` uint8 ``(n, 3, 32, 32)`` (channels R, G, B) and ``labels`` uint8 ``(n,)``.
    The batch is a dict with (bytes or str) keys ``data``: uint8 ``(n, 3072)`` and ``labels``:
    a list of n ints in 0..9.
    """
    try:
        # encoding="bytes": the batches were pickled by Python 2, whose str becomes bytes here.
        batch = _CifarUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{source}: not a valid CIFAR-10 batch pickle ({e})") from None
    except Exception as e:  # noqa: BLE001 - garbage bytes can raise almost anything in pickle
        raise DatasetError(
            f"{source}: not a valid CIFAR-10 batch pickle ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{source}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")
    keys = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in keys]
    if missing:
        raise DatasetError(
            f"{source}: CIFAR-10 batch lacks {missing} (has {sorted(map(str, keys))})"
        )
    data = keys["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(f"{source}: 'data' must be a uint8 (n, 3072) array, got {desc}")
    try:
        labels = np.asarray(keys["labels"])
    except Exception:  # noqa: BLE001 - ragged or odd label lists
        labels = np.asarray([None])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{source}: 'labels' must be a list of ints, got {keys['labels']!r:.80}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{source}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    labels = labels.astype(np.uint8)
    _check_labels(labels, data.shape[0], source)
    # Each row is 1024 R, 1024 G, 1024 B bytes, each a row-major 32x32 plane: a pure reshape.
    images = np.ascontiguousarray(data).reshape(-1, 3, 32, 32)  # (n, 3, 32, 32)
    return images, labels


def _cifar_members_from_tar(tar_path: Path, verify: bool) -> dict[str, bytes]:
    """The six batch files of an official ``cifar-10-python.tar.gz``, read into memory.

    Only members named exactly ``cifar-10-batches-py/<batch>`` and that are regular files are
    read; everything else in the archive is ignored, so no member name can steer a write.
    """
    if verify:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with open(tar_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as e:
            raise DatasetError(f"{tar_path}: cannot read: {e}") from None
        if digest.hexdigest() != CIFAR10_TAR_MD5:
            raise DatasetError(
                f"{tar_path}: MD5 of the archive is {digest.hexdigest()}, expected "
                f"{CIFAR10_TAR_MD5}: the archive is corrupt, truncated or not the official "
                f"CIFAR-10; delete it and load again, or pass verify=False for your own files"
            )
    wanted = {f"{CIFAR10_DIR}/{b}": b for b in CIFAR10_MD5}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tf:
            for member in tf:
                batch = wanted.get(member.name.removeprefix("./"))
                if batch is None or batch in found:
                    continue
                if not member.isfile():
                    raise DatasetError(
                        f"{tar_path}: member {member.name!r} is not a regular file "
                        f"(a link or device); refusing to read it"
                    )
                found[batch] = tf.extractfile(member).read()
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{tar_path}: not a readable .tar.gz archive ({e})") from None
    missing = [f"{CIFAR10_DIR}/{b}" for b in CIFAR10_MD5 if b not in found]
    if missing:
        raise DatasetError(f"{tar_path}: archive lacks {missing}")
    return found


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_cifar(batches: dict[str, bytes | Path], verify: bool):
    """Parse the six batches (bytes, or paths to read); returns the four arrays."""
    images, labels = {}, {}
    for batch, item in batches.items():
        if isinstance(item, Path):
            source = item
            try:
                payload = item.read_bytes()
            except OSError as e:
                raise DatasetError(f"{item}: cannot read: {e}") from None
        else:
            source, payload = f"{CIFAR10_DIR}/{batch}", item
        # The MD5 is checked before unpickling: a file that is not the published batch is
        # never handed to the unpickler when verifying.
        if verify:
            _check_digest(source, payload, "md5", CIFAR10_MD5[batch], "batch file")
        images[batch], labels[batch] = parse_cifar_batch(payload, source)
    train_x = np.concatenate([images[b] for b in CIFAR10_TRAIN_BATCHES])  # (50000, 3, 32, 32)
    train_y = np.concatenate([labels[b] for b in CIFAR10_TRAIN_BATCHES])  # (50000,)
    return train_x, train_y, images[CIFAR10_TEST_BATCH], labels[CIFAR10_TEST_BATCH]


# --------------------------------------------------------------------------------------------
# Downloading.
# --------------------------------------------------------------------------------------------


def _download(url: str, dest: Path, check) -> None:
    """Fetch ``url`` into ``dest`` atomically: temporary file, ``check(tmp_path)``, rename.

    ``check`` raises :class:`DatasetError` if the bytes are wrong; the temporary is removed
    then, so a bad or partial download never sits under the name the loader looks for.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        check(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fetch(urls, dest: Path, check, failures: list[str]) -> bool:
    """Try each URL in turn; True on the first that downloads and checks. Records failures."""
    for url in urls:
        print(f"sparsenn.data: downloading {url} -> {dest}", file=sys.stderr)
        try:
            _download(url, dest, check)
            return True
        except (urllib.error.URLError, OSError, ValueError) as e:
            # URLError/HTTPError/timeouts are OSErrors; a DatasetError from check is a ValueError.
            reason = getattr(e, "reason", None) or e
            failures.append(f"{url}: {type(e).__name__}: {reason}")
    return False


# --------------------------------------------------------------------------------------------
# Loaders.
# --------------------------------------------------------------------------------------------

_IDX_DATASETS = {
    # name: (subdirectory, checksums, mirrors, classes, mean, std)
    "mnist": ("mnist", MNIST_SHA256, MNIST_MIRRORS, MNIST_CLASSES, MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (
        "fashion-mnist", FASHION_MNIST_SHA256, FASHION_MNIST_MIRRORS,
        FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
    ),
}


def _not_found(name, searched, expected, failures, download, target_hint) -> DatasetNotFoundError:
    lines = [f"{name} not found. Searched, in order:"]
    lines += [f"  {where}" for where in searched]
    lines.append(f"Expected files: {', '.join(expected)}")
    if not download:
        lines.append("Nothing was downloaded (download=False).")
    elif failures:
        lines.append("Downloads tried:")
        lines += [f"  {f}" for f in failures]
    lines.append(
        f"To supply the data, put {target_hint} in a directory D and set SPARSENN_DATA=D, "
        f"or pass root=D (scripts: --data-dir D), or copy it into {Path(PROJECT_DATA_DIR)}/"
    )
    return DatasetNotFoundError("\n".join(lines))


def _note_fallback(name: str, root, searched: list[str], found, why: str) -> None:
    """Say so on stderr when the caller named a ``root`` but the data came from a later place
    on the search list (a mistyped --data-dir would otherwise go unnoticed)."""
    if root is not None and searched:
        print(f"sparsenn.data: {name} is not under the root given ({searched[0]}); "
              f"using {found} [{why}]", file=sys.stderr)


def _load_idx_dataset(name: str, root, download: bool, verify: bool) -> Dataset:
    subdir, checksums, mirrors, classes, mean, std = _IDX_DATASETS[name]
    expected = [f"{subdir}/{f}[.gz]" for f in IDX_FILES]
    searched = []
    for base, why in search_roots(root):
        directory = base / subdir
        if not directory.is_dir():
            hint = ""
            if base.is_dir() and _idx_file(base, IDX_FILES[0]) is not None:
                hint = f" (the IDX files are directly in {base}; pass its parent instead)"
            searched.append(f"{directory}  [{why}]: no such directory{hint}")
            continue
        missing = [f for f in IDX_FILES if _idx_file(directory, f) is None]
        if missing:
            searched.append(f"{directory}  [{why}]: missing {', '.join(missing)}")
            continue
        _note_fallback(name, root, searched, directory, why)
        arrays = _load_idx_dir(directory, name, checksums, verify)
        return Dataset(name, directory, *arrays, classes=classes, mean=mean, std=std,
                       verified=verify)

    failures: list[str] = []
    if download:
        directory = _download_idx(subdir, root, checksums if verify else None, mirrors, failures)
        if directory is not None:
            arrays = _load_idx_dir(directory, name, checksums, verify)
            return Dataset(name, directory, *arrays, classes=classes, mean=mean, std=std,
                           verified=verify)
    raise _not_found(name, searched, expected, failures, download, f"{subdir}/")


def _download_idx(subdir, root, checksums, mirrors, failures) -> Path | None:
    """Download the missing IDX files into the first writable target; its directory, or None."""
    for base in _download_roots(root):
        directory = base / subdir
        existed = directory.exists()
        if not _writable_dir(directory):
            failures.append(f"{directory}: cannot create or write the directory")
            continue
        for stem in IDX_FILES:
            if _idx_file(directory, stem) is None:
                urls = [m + f"{stem}.gz" for m in mirrors]
                check = _idx_download_check(stem, checksums)
                if not _fetch(urls, directory / f"{stem}.gz", check, failures):
                    # Every mirror failed for this file; another target directory would not
                    # change that, so stop here, leaving no empty directory behind.
                    if not existed and not any(directory.iterdir()):
                        directory.rmdir()
                    return None
        return directory
    return None


def _idx_download_check(stem: str, checksums: dict | None):
    """A check for a downloaded ``<stem>.gz``: it gunzips, parses, and matches the SHA-256."""

    def check(tmp: Path) -> None:
        try:
            payload = gzip.decompress(tmp.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"downloaded {stem}.gz is not valid gzip ({e})") from None
        if checksums is not None:
            _check_digest(f"downloaded {stem}", payload, "sha256", checksums[stem],
                          "decompressed contents")
        parse_idx(payload, source=f"downloaded {stem}")

    return check


def load_mnist(root=None, download: bool = True, verify: bool = True) -> Dataset:
    """MNIST digits: uint8 images ``(60000, 28, 28)``/``(10000, 28, 28)``, labels 0..9."""
    return _load_idx_dataset("mnist", root, download, verify)


def load_fashion_mnist(root=None, download: bool = True, verify: bool = True) -> Dataset:
    """Fashion-MNIST (Zalando): shapes and format as MNIST; class names in ``ds.classes``."""
    return _load_idx_dataset("fashion-mnist", root, download, verify)


def _cifar_in(base: Path, verify: bool):
    """The arrays and source if ``base`` holds CIFAR-10 (directory or archive), else a reason."""
    directory = base / CIFAR10_DIR
    batch_paths = {b: directory / b for b in CIFAR10_MD5}
    if all(p.is_file() for p in batch_paths.values()):
        return _load_cifar(batch_paths, verify), directory
    tar_path = base / CIFAR10_TAR
    if tar_path.is_file():
        members = _cifar_members_from_tar(tar_path, verify)
        if _writable_dir(directory):
            # "Extracting" = writing the six known batches under names we choose, so the
            # archive's own member names never become paths (no traversal possible).
            for batch, payload in members.items():
                _atomic_write_bytes(directory / batch, payload)
            return _load_cifar(batch_paths, verify), directory
        return _load_cifar(members, verify), tar_path  # read-only location: parse in memory
    if directory.is_dir():
        missing = [b for b, p in batch_paths.items() if not p.is_file()]
        return None, f"{CIFAR10_DIR}/ lacks {', '.join(missing)} and there is no {CIFAR10_TAR}"
    return None, f"neither {CIFAR10_DIR}/ nor {CIFAR10_TAR}"


def load_cifar10(root=None, download: bool = True, verify: bool = True) -> Dataset:
    """CIFAR-10: uint8 images ``(50000, 3, 32, 32)``/``(10000, 3, 32, 32)``, labels 0..9.

    Images are channels-first, channels R, G, B (the byte order of a CIFAR row).
    """
    searched = []

    def dataset(arrays, source):
        return Dataset("cifar10", source, *arrays, classes=CIFAR10_CLASSES, mean=CIFAR10_MEAN,
                       std=CIFAR10_STD, verified=verify)

    for base, why in search_roots(root):
        arrays, where = _cifar_in(base, verify)
        if arrays is not None:
            _note_fallback("cifar10", root, searched, where, why)
            return dataset(arrays, where)
        searched.append(f"{base}  [{why}]: {where}")

    failures: list[str] = []
    if download:
        for base in _download_roots(root):
            if not _writable_dir(base):
                failures.append(f"{base}: cannot create or write the directory")
                continue

            def check(tmp: Path) -> None:
                _cifar_members_from_tar(tmp, verify)  # raises DatasetError if unusable

            if _fetch(CIFAR10_URLS, base / CIFAR10_TAR, check, failures):
                arrays, where = _cifar_in(base, verify)
                return dataset(arrays, where)
            break  # a writable target whose downloads failed: other targets would fail alike
    expected = [f"{CIFAR10_DIR}/{b}" for b in CIFAR10_MD5] + [f"or {CIFAR10_TAR}"]
    raise _not_found("cifar10", searched, expected, failures, download,
                     f"{CIFAR10_DIR}/ or {CIFAR10_TAR}")


_LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}


def load(name: str, root=None, download: bool = True, verify: bool = True) -> Dataset:
    """Load a dataset by name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.

    Case, ``_`` for ``-`` and ``cifar-10`` are accepted too.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(_LOADERS)}")
    return _LOADERS[key](root=root, download=download, verify=verify)


def hold_out(ds: Dataset, train_size: int) -> Dataset:
    """``ds`` training on its *last* ``train_size`` training images only; the first
    ``n_train - train_size`` are held back (the test set is unchanged).

    This is TensorFlow's ``mnist.input_data.read_data_sets(validation_size=5000)``, which the
    2019 study used: images [0, 5000) become the validation set and [5000, 60000) train, so
    ``hold_out(mnist, 55_000)`` trains on the same 55,000 images. The arrays are views.
    """
    n = len(ds.train_images)
    if not 1 <= int(train_size) <= n:
        raise ValueError(f"train_size must be in [1, {n}] for {ds.name}, got {train_size}")
    start = n - int(train_size)
    return replace(ds, train_images=ds.train_images[start:], train_labels=ds.train_labels[start:])
