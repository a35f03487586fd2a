"""sparsenn.data: parsers on tiny files in the real formats, every error path, search order,
downloads through a fake URL opener, and the real MNIST from ../shared/datasets.

No test touches the network: the autouse fixture replaces ``urllib.request.urlopen`` with one
that refuses, and the download tests install their own fake that serves local bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import sparsenn.data as data
from sparsenn.data import (
    CIFAR10_MD5,
    IDX_FILES,
    DatasetError,
    DatasetNotFoundError,
    load,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    parse_idx,
    read_idx,
    to_features_major,
)

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers: the real formats


def idx_bytes(arr: np.ndarray) -> bytes:
    """An uncompressed IDX file: 00 00 08 ndim, big-endian uint32 dims, uint8 data."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


def write_idx_dataset(directory: Path, rng, n_train=5, n_test=3, gz=(True, False, True, False)):
    """Write the four IDX files (gzip or raw per file) and return their arrays by stem."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for (stem, arr), compress in zip(arrays.items(), gz, strict=True):
        payload = idx_bytes(arr)
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)
    return arrays


def as_python2_pickle(payload: bytes) -> bytes:
    """Rewrite a protocol-3 pickle into what Python 2's cPickle (protocol 2) writes.

    Python 2 has no bytes type: its str is pickled with (SHORT_)BINSTRING, and NumPy 1 names
    ``numpy.core.multiarray``. Loading these is what the real CIFAR-10 batches require.
    """
    payload = payload.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    ops = list(pickletools.genops(payload))
    out = bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(payload)
        if op.name == "PROTO":
            out += b"\x80\x02"
        elif op.name in ("SHORT_BINBYTES", "SHORT_BINUNICODE"):
            b = arg if isinstance(arg, bytes) else arg.encode("latin1")
            out += b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
        elif op.name in ("BINBYTES", "BINUNICODE"):
            b = arg if isinstance(arg, bytes) else arg.encode("latin1")
            out += b"T" + struct.pack("<I", len(b)) + b  # BINSTRING
        else:
            out += payload[pos:end]
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in out
    return bytes(out)


def cifar_batch_bytes(data_arr, labels, python2=True) -> bytes:
    """A CIFAR-10 python batch: a pickled dict with keys data (uint8 (n, 3072)) and labels (list).

    ``python2=True`` writes it as the real files are (see :func:`as_python2_pickle`);
    otherwise as NumPy 2 under Python 3 pickles it at protocol 3.
    """
    batch = {b"batch_label": b"tiny batch", b"data": data_arr, b"labels": list(labels),
             b"filenames": [b"x.png"] * len(labels)}
    payload = pickle.dumps(batch, protocol=3)
    return as_python2_pickle(payload) if python2 else payload


def write_cifar_dir(directory: Path, rng, n=4):
    """Six tiny batches of ``n`` images; returns {batch: (data (n, 3072), labels (n,))}."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for batch in CIFAR10_MD5:
        d = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        (directory / batch).write_bytes(cifar_batch_bytes(d, y.tolist()))
        out[batch] = (d, y)
    return out


def add_bytes_member(tf: tarfile.TarFile, name: str, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def make_cifar_tar(tar_path: Path, src_dir: Path, extra=()):
    """Pack ``src_dir``'s batches as cifar-10-batches-py/<batch>, plus ``extra`` (name, bytes)."""
    with tarfile.open(tar_path, "w:gz") as tf:
        for batch in CIFAR10_MD5:
            add_bytes_member(tf, f"cifar-10-batches-py/{batch}", (src_dir / batch).read_bytes())
        for name, payload in extra:
            add_bytes_member(tf, name, payload)


class FakeWeb:
    """Stands in for urllib.request.urlopen: serves ``pages[url]``, else fails like no network."""

    def __init__(self, pages):
        self.pages = dict(pages)
        self.requested = []

    def __call__(self, url, timeout=None):
        self.requested.append((url, timeout))
        if url not in self.pages:
            raise urllib.error.URLError(f"test network: no route to {url}")
        return io.BytesIO(self.pages[url])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point every default location into tmp_path and cut the network off."""
    monkeypatch.delenv("SPARSENN_DATA", raising=False)
    monkeypatch.setattr(data, "PROJECT_DATA_DIR", tmp_path / "project-data")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (tmp_path / "usr-share-datasets",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(urllib.request, "urlopen", FakeWeb({}))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------ IDX parsing


def test_idx_roundtrip_gzip_and_raw(tmp_path, rng):
    arr = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (tmp_path / "raw").write_bytes(idx_bytes(arr))
    (tmp_path / "z.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    for name in ("raw", "z.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (3, 28, 28)
        np.testing.assert_array_equal(got, arr)
        got[0, 0, 0] = 7  # the caller owns a writable copy


def test_load_mnist_tiny(tmp_path, rng):
    arrays = write_idx_dataset(tmp_path / "mnist", rng)
    ds = load_mnist(root=tmp_path, download=False, verify=False)
    assert ds.name == "mnist" and ds.source == tmp_path / "mnist" and not ds.verified
    np.testing.assert_array_equal(ds.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_images, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert ds.train_images.dtype == ds.train_labels.dtype == np.uint8
    assert "(5, 28, 28)" in repr(ds)


def test_fashion_mnist_tiny_and_load_by_name(tmp_path, rng):
    arrays = write_idx_dataset(tmp_path / "fashion-mnist", rng, gz=(False,) * 4)
    for ds in (load_fashion_mnist(tmp_path, download=False, verify=False),
               load("Fashion_MNIST", root=tmp_path, download=False, verify=False)):
        assert ds.name == "fashion-mnist" and ds.classes[9] == "Ankle boot"
        np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load("svhn")


def _labels(n=3):
    return idx_bytes(np.zeros(n, np.uint8))


@pytest.mark.parametrize(
    "name, payload, match",
    [
        ("short", b"\x00\x00", "too short for an IDX header"),
        ("magic", b"\x12\x34\x08\x01" + b"\x00" * 8, "bad IDX magic number 12340801"),
        ("dtype", b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", "element type 0x0d is not unsigned"),
        ("header", b"\x00\x00\x08\x03\x00\x00\x00\x01", "needs 16 bytes"),
        ("truncated", idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-10], "truncated or trailing"),
        ("trailing", idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"xx", "truncated or trailing"),
    ],
)
def test_idx_format_errors_name_file_and_problem(tmp_path, name, payload, match):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=match) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_gzip_errors(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "plain.gz").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    (tmp_path / "crc.gz").write_bytes(good[:-8] + b"\x00" * 8)
    with pytest.raises(DatasetError, match="cut.gz: gzip data is corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetError, match="plain.gz: not a gzip file"):
        read_idx(tmp_path / "plain.gz")
    with pytest.raises(DatasetError, match="crc.gz: gzip data is corrupt"):
        read_idx(tmp_path / "crc.gz")


@pytest.mark.parametrize(
    "stem, arr, match",
    [
        ("train-images-idx3-ubyte", np.zeros((5, 27, 28), np.uint8), r"shape \(n, 28, 28\)"),
        ("train-images-idx3-ubyte", np.zeros((5, 784), np.uint8), r"shape \(n, 28, 28\)"),
        ("train-labels-idx1-ubyte", np.zeros((5, 1), np.uint8), r"shape \(n,\)"),
        ("train-labels-idx1-ubyte", np.zeros(4, np.uint8), "4 labels for 5 images"),
        ("t10k-labels-idx1-ubyte", np.array([1, 12, 3], np.uint8), "label 12 at index 1 .* 0..9"),
    ],
)
def test_mnist_dimension_and_label_errors(tmp_path, rng, stem, arr, match):
    directory = tmp_path / "mnist"
    write_idx_dataset(directory, rng, gz=(False,) * 4)
    (directory / stem).write_bytes(idx_bytes(arr))
    with pytest.raises(DatasetError, match=match) as e:
        load_mnist(tmp_path, download=False, verify=False)
    assert stem in str(e.value)


def test_checksum_mismatch_is_reported(tmp_path, rng):
    write_idx_dataset(tmp_path / "mnist", rng)
    with pytest.raises(DatasetError, match="SHA256 of the decompressed contents") as e:
        load_mnist(tmp_path, download=False, verify=True)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and data.MNIST_SHA256[IDX_FILES[0]] in msg


def test_parse_idx_is_the_reference_for_the_header():
    payload = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(parse_idx(payload), [[0, 1, 2], [3, 4, 5]])


# ------------------------------------------------------------------ search order


def test_search_order_root_then_env_then_project_then_cache_then_system(tmp_path, monkeypatch, rng):
    places = {
        "root": tmp_path / "explicit",
        "env": tmp_path / "env",
        "project": data.PROJECT_DATA_DIR,
        "cache": tmp_path / "xdg-cache" / "sparsenn",
        "system": data.SYSTEM_DATA_DIRS[0],
    }
    # Each location holds a different tiny MNIST: the first train label tells them apart.
    for i, base in enumerate(places.values()):
        arrays = write_idx_dataset(base / "mnist", rng, gz=(False,) * 4)
        arrays["train-labels-idx1-ubyte"][0] = i
        (base / "mnist" / "train-labels-idx1-ubyte").write_bytes(
            idx_bytes(arrays["train-labels-idx1-ubyte"]))
    monkeypatch.setenv("SPARSENN_DATA", str(places["env"]))

    def first_label(root=None):
        ds = load_mnist(root, download=False, verify=False)
        return ds.source, int(ds.train_labels[0])

    assert first_label(places["root"]) == (places["root"] / "mnist", 0)
    assert first_label() == (places["env"] / "mnist", 1)
    monkeypatch.delenv("SPARSENN_DATA")
    assert first_label() == (places["project"] / "mnist", 2)
    (places["project"] / "mnist" / "t10k-images-idx3-ubyte").unlink()  # incomplete: skipped
    assert first_label() == (places["cache"] / "mnist", 3)
    for f in (places["cache"] / "mnist").iterdir():
        f.unlink()
    assert first_label() == (places["system"] / "mnist", 4)


def test_debian_layout_is_found(rng):
    # dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist/<name>.gz.
    system = data.SYSTEM_DATA_DIRS[0]
    write_idx_dataset(system / "fashion-mnist", rng, gz=(True,) * 4)
    assert load_fashion_mnist(download=False, verify=False).source == system / "fashion-mnist"


# ------------------------------------------------------------------ not found / downloads


def test_offline_without_data_lists_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENN_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as e:
        load_mnist(root=tmp_path / "explicit", download=True)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    for place in ("explicit", "env", "project-data", "xdg-cache", "usr-share-datasets"):
        assert str(tmp_path / place) in msg
    for stem in IDX_FILES:
        assert stem in msg
    for mirror in data.MNIST_MIRRORS:
        assert f"{mirror}train-images-idx3-ubyte.gz: URLError" in msg
    assert "no route" in msg and "SPARSENN_DATA" in msg and "--data-dir" in msg
    # Nothing half-downloaded, not even an empty directory, is left where the loader looks.
    assert not (tmp_path / "explicit" / "mnist").exists()

    with pytest.raises(DatasetNotFoundError, match=r"download=False"):
        load_cifar10(root=tmp_path / "explicit", download=False)


def test_a_root_without_the_data_is_reported_when_another_place_has_it(tmp_path, monkeypatch, capsys, rng):
    # a mistyped --data-dir must not go unnoticed: the data then comes from $SPARSENN_DATA,
    # and stderr says so, naming both places
    write_idx_dataset(tmp_path / "env" / "mnist", rng, gz=(False,) * 4)
    monkeypatch.setenv("SPARSENN_DATA", str(tmp_path / "env"))
    ds = load_mnist(tmp_path / "typo", download=False, verify=False)
    assert ds.source == tmp_path / "env" / "mnist"
    err = capsys.readouterr().err
    assert "not under the root given" in err and str(tmp_path / "typo") in err and str(tmp_path / "env") in err
    load_mnist(tmp_path / "env", download=False, verify=False)  # found where asked: nothing said
    load_mnist(download=False, verify=False)  # no root given: nothing said
    assert capsys.readouterr().err == ""


def test_hint_when_files_sit_directly_in_root(tmp_path, rng):
    write_idx_dataset(tmp_path / "flat", rng)
    with pytest.raises(DatasetNotFoundError, match="pass its parent instead"):
        load_mnist(tmp_path / "flat", download=False)


def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch, rng):
    arrays = {stem: idx_bytes(a) for stem, a in write_idx_dataset(tmp_path / "src", rng).items()}
    second = data.MNIST_MIRRORS[1]
    web = FakeWeb({second + f"{s}.gz": gzip.compress(p) for s, p in arrays.items()})
    # The first mirror answers with something that is not gzip: rejected, next mirror tried.
    web.pages.update({data.MNIST_MIRRORS[0] + f"{s}.gz": b"<html>" for s in arrays})
    monkeypatch.setattr(urllib.request, "urlopen", web)

    ds = load_mnist(download=True, verify=False)
    target = data.PROJECT_DATA_DIR / "mnist"
    assert ds.source == target
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)
    assert all(timeout == data.DOWNLOAD_TIMEOUT_S for _, timeout in web.requested)
    np.testing.assert_array_equal(ds.test_labels, parse_idx(arrays["t10k-labels-idx1-ubyte"]))


def test_download_goes_to_user_cache_when_project_dir_unwritable(tmp_path, monkeypatch, rng):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file, so data/ cannot be created under it")
    monkeypatch.setattr(data, "PROJECT_DATA_DIR", blocker / "data")
    arrays = {stem: idx_bytes(a) for stem, a in write_idx_dataset(tmp_path / "src", rng).items()}
    pages = {data.FASHION_MNIST_MIRRORS[0] + f"{s}.gz": gzip.compress(p) for s, p in arrays.items()}
    monkeypatch.setattr(urllib.request, "urlopen", FakeWeb(pages))
    ds = load_fashion_mnist(verify=False)
    assert ds.source == tmp_path / "xdg-cache" / "sparsenn" / "fashion-mnist"
    # The next load finds the cached copy without the network.
    monkeypatch.setattr(urllib.request, "urlopen", FakeWeb({}))
    assert load_fashion_mnist(download=False, verify=False).source == ds.source


def test_downloaded_file_with_wrong_checksum_is_not_kept(tmp_path, monkeypatch, rng):
    arrays = {stem: idx_bytes(a) for stem, a in write_idx_dataset(tmp_path / "src", rng).items()}
    pages = {m + f"{s}.gz": gzip.compress(p) for m in data.MNIST_MIRRORS for s, p in arrays.items()}
    monkeypatch.setattr(urllib.request, "urlopen", FakeWeb(pages))
    with pytest.raises(DatasetNotFoundError, match="SHA256 of the decompressed contents") as e:
        load_mnist(root=tmp_path / "dl", verify=True)
    assert "DatasetError" in str(e.value)
    assert not (tmp_path / "dl" / "mnist").exists()  # the bad file was not kept


# ------------------------------------------------------------------ CIFAR-10


def test_cifar_batches_dir(tmp_path, rng):
    written = write_cifar_dir(tmp_path / "cifar-10-batches-py", rng, n=4)
    ds = load_cifar10(tmp_path, download=False, verify=False)
    assert ds.source == tmp_path / "cifar-10-batches-py"
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == ds.train_labels.dtype == np.uint8
    d1, y1 = written["data_batch_1"]
    # Row layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major.
    np.testing.assert_array_equal(ds.train_images[1, 0, 2, 5], d1[1, 2 * 32 + 5])
    np.testing.assert_array_equal(ds.train_images[1, 2, 31, 0], d1[1, 2048 + 31 * 32])
    np.testing.assert_array_equal(ds.train_labels[:4], y1)
    np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])
    assert ds.train_images.flags.c_contiguous


def test_cifar_md5_checked_before_unpickling(tmp_path, rng):
    write_cifar_dir(tmp_path / "cifar-10-batches-py", rng, n=2)
    with pytest.raises(DatasetError, match="data_batch_1: MD5 of the batch file"):
        load_cifar10(tmp_path, download=False, verify=True)


def _side_effect(marker):
    Path(marker).touch()


class _RunsCode:
    """Pickles as a call to a function with side effects, as a malicious batch would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_side_effect, (self.marker,))


def _cifar_errors(tmp_path):
    ok = np.zeros((2, 3072), np.uint8)
    return [
        (pickle.dumps({b"data": ok, b"labels": [0, 1], b"x": _RunsCode(tmp_path / "pwned")},
                      protocol=3), r"refusing to load global \S*_side_effect"),
        (pickle.dumps([1, 2, 3], protocol=3), "is a dict, got list"),
        (pickle.dumps({b"data": ok}, protocol=3), r"lacks \['labels'\]"),
        (cifar_batch_bytes(np.zeros((2, 100), np.uint8), [0, 1]), r"uint8 \(n, 3072\) array"),
        (cifar_batch_bytes(ok.astype(np.int16), [0, 1]), "got int16 array"),
        (cifar_batch_bytes(ok, [0, 1, 2]), "3 labels for 2 images"),
        (cifar_batch_bytes(ok, [0, 10]), r"labels must lie in 0..9, got 0..10"),
        (cifar_batch_bytes(ok, ["a", "b"]), "'labels' must be a list of ints"),
        (cifar_batch_bytes(ok, [0, 1])[:-30], "not a valid CIFAR-10 batch pickle"),
        (b"definitely not a pickle", "not a valid CIFAR-10 batch pickle"),
    ]


def test_cifar_bad_batches(tmp_path, rng):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_dir(directory, rng, n=2)
    for payload, match in _cifar_errors(tmp_path):
        (directory / "data_batch_3").write_bytes(payload)
        with pytest.raises(DatasetError, match=match) as e:
            load_cifar10(tmp_path, download=False, verify=False)
        assert "data_batch_3" in str(e.value)
    assert not (tmp_path / "pwned").exists()  # the forbidden global was never called


def test_cifar_numpy2_module_name_also_accepted(tmp_path, rng):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar_dir(directory, rng, n=2)
    d = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    (directory / "test_batch").write_bytes(cifar_batch_bytes(d, [3, 4], python2=False))
    ds = load_cifar10(tmp_path, download=False, verify=False)
    np.testing.assert_array_equal(ds.test_images.reshape(2, -1), d)


def test_cifar_tar_is_extracted_next_to_itself(tmp_path, rng):
    written = write_cifar_dir(tmp_path / "src", rng, n=3)
    root = tmp_path / "root"
    root.mkdir()
    make_cifar_tar(root / "cifar-10-python.tar.gz", tmp_path / "src")
    ds = load_cifar10(root, download=False, verify=False)
    assert ds.source == root / "cifar-10-batches-py"
    assert sorted(p.name for p in ds.source.iterdir()) == sorted(CIFAR10_MD5)
    np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])


def test_cifar_tar_read_in_memory_when_location_unwritable(tmp_path, monkeypatch, rng):
    write_cifar_dir(tmp_path / "src", rng, n=3)
    root = tmp_path / "root"
    root.mkdir()
    make_cifar_tar(root / "cifar-10-python.tar.gz", tmp_path / "src")
    monkeypatch.setattr(data, "_writable_dir", lambda path: False)
    ds = load_cifar10(root, download=False, verify=False)
    assert ds.source == root / "cifar-10-python.tar.gz"
    assert ds.train_images.shape == (15, 3, 32, 32)
    assert not (root / "cifar-10-batches-py").exists()


def test_cifar_tar_members_cannot_escape(tmp_path, rng):
    write_cifar_dir(tmp_path / "src", rng, n=1)
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    evil = [("../evil", b"x"), ("cifar-10-batches-py/../../evil2", b"x"),
            (str(tmp_path / "evil3"), b"x"), ("cifar-10-batches-py/readme.html", b"<html>")]
    make_cifar_tar(root / "cifar-10-python.tar.gz", tmp_path / "src", extra=evil)
    load_cifar10(root, download=False, verify=False)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if p.is_file() and "src" not in p.parts)
    assert written == ["deep/root/cifar-10-batches-py/" + b for b in sorted(CIFAR10_MD5)] + [
        "deep/root/cifar-10-python.tar.gz"]


def test_cifar_tar_errors(tmp_path, rng):
    write_cifar_dir(tmp_path / "src", rng, n=1)
    root = tmp_path / "root"
    root.mkdir()
    tar_path = root / "cifar-10-python.tar.gz"

    make_cifar_tar(tar_path, tmp_path / "src")
    with pytest.raises(DatasetError, match="MD5 of the archive"):
        load_cifar10(root, download=False, verify=True)

    tar_path.write_bytes(tar_path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="not a readable .tar.gz archive"):
        load_cifar10(root, download=False, verify=False)

    with tarfile.open(tar_path, "w:gz") as tf:  # a link where a batch should be
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DatasetError, match="is not a regular file"):
        load_cifar10(root, download=False, verify=False)

    with tarfile.open(tar_path, "w:gz") as tf:
        add_bytes_member(tf, "cifar-10-batches-py/data_batch_1", b"")
    with pytest.raises(DatasetError, match="archive lacks"):
        load_cifar10(root, download=False, verify=False)


def test_cifar_download(tmp_path, monkeypatch, rng):
    write_cifar_dir(tmp_path / "src", rng, n=2)
    make_cifar_tar(tmp_path / "served.tar.gz", tmp_path / "src")
    web = FakeWeb({data.CIFAR10_URLS[0]: (tmp_path / "served.tar.gz").read_bytes()})
    monkeypatch.setattr(urllib.request, "urlopen", web)
    ds = load_cifar10(root=tmp_path / "dl", verify=False)
    assert ds.source == tmp_path / "dl" / "cifar-10-batches-py"
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()
    assert ds.train_images.shape == (10, 3, 32, 32)


def test_cifar_download_failure_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load("cifar-10", root=tmp_path / "dl")
    msg = str(e.value)
    assert data.CIFAR10_URLS[0] in msg and "cifar-10-python.tar.gz" in msg and "data_batch_5" in msg


# ------------------------------------------------------------------ uint8 -> float32 features-major


def test_to_features_major_scalar(rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = to_features_major(images, data.MNIST_MEAN, data.MNIST_STD)
    assert x.shape == (784, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    ref = (images.reshape(5, 784).T / 255.0 - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)


def test_to_features_major_per_channel(rng):
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    x = to_features_major(images, data.CIFAR10_MEAN, data.CIFAR10_STD)
    assert x.shape == (3072, 4) and x.flags.c_contiguous
    mean = np.asarray(data.CIFAR10_MEAN)[None, :, None, None]
    std = np.asarray(data.CIFAR10_STD)[None, :, None, None]
    ref = ((images / 255.0 - mean) / std).reshape(4, 3072).T
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
    assert to_features_major(images[:0]).shape == (3072, 0)


def test_to_features_major_rejects_bad_input():
    with pytest.raises(TypeError, match="must be uint8"):
        to_features_major(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        to_features_major(np.zeros((2, 28, 28), np.uint8), 0.1, 0.0)
    with pytest.raises(ValueError, match=r"3 per-channel means need images of shape \(n, 3, H,"):
        to_features_major(np.zeros((2, 28, 28), np.uint8), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="equal length"):
        to_features_major(np.zeros((2, 3, 4, 4), np.uint8), (0, 0, 0), (1, 1))


# ------------------------------------------------------------------ the real data


def shared_datasets() -> Path:
    """$SPARSENN_DATA as CI sets it (relative to the repo root), else <repo>/../shared/datasets."""
    env = os.environ.get("SPARSENN_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "datasets"
    return path if path.is_absolute() else (REPO / path).resolve()


# Read at import, before the autouse fixture removes SPARSENN_DATA from the environment.
SHARED_DATASETS = shared_datasets()


def test_real_mnist(monkeypatch):
    # No skip: CI must fail if the real MNIST is missing.
    monkeypatch.setenv("SPARSENN_DATA", str(SHARED_DATASETS))
    ds = load_mnist(download=False, verify=True)
    assert ds.source == SHARED_DATASETS / "mnist" and ds.verified
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    for a in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        assert a.dtype == np.uint8
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    assert ds.test_labels.min() == 0 and ds.test_labels.max() == 9
    # Independent facts about canonical MNIST, beyond the checksums the loader verified.
    np.testing.assert_array_equal(ds.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    assert np.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                     974, 1009]
    x = to_features_major(ds.test_images, ds.mean, ds.std)
    assert x.shape == (784, 10000)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason="optional: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (DEBIAN_FASHION.parent,))
    ds = load_fashion_mnist(download=False, verify=True)
    assert ds.source == DEBIAN_FASHION and ds.verified
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
