"""Files on disk: atomic writes leave no litter, respect the umask, and foreign files are named."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from sparsenn import checkpoint, topology
from sparsenn.io import atomic_savez, check_output_path, load_masks, read_npz, save_masks


def test_stale_temporary_of_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    target = tmp_path / "run.npz"
    # a writer killed mid-write leaves its temporary behind; its process is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".run.npz.tmp-{dead_pid}-abc123.npz"
    stale.write_bytes(b"half a file")
    other = tmp_path / f".other.npz.tmp-{dead_pid}-abc123.npz"  # another target's: not ours to touch
    other.write_bytes(b"x")
    live = tmp_path / f".run.npz.tmp-{os.getppid()}-live.npz"  # a running writer's: kept
    live.write_bytes(b"x")
    unrelated = tmp_path / ".tmp-mine.npz"
    unrelated.write_bytes(b"x")
    atomic_savez(target, a=np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run.npz", other.name, live.name, unrelated.name])
    np.testing.assert_array_equal(read_npz(target)["a"], np.arange(3))


def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_savez(tmp_path / "a.npz", a=np.zeros(2))
        assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        save_masks(tmp_path / "m.npz", [np.eye(3, dtype=bool)])
        assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_text_file_named_npz_is_not_a_mask_file(tmp_path):
    fake = tmp_path / "masks.npz"
    fake.write_text("row col value\n1 2 0.5\n")
    with pytest.raises(ValueError) as e:
        load_masks(fake)
    msg = str(e.value)
    assert f"{fake}: not a sparsenn mask file (not an .npz archive)" == msg
    assert "allow_pickle" not in msg and "unsafe" not in msg
    with pytest.raises(ValueError, match=r"not a sparsenn checkpoint \(not an .npz archive\)"):
        checkpoint.read_checkpoint(fake)


def test_an_npz_with_objects_is_refused_without_suggesting_an_unsafe_load(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, n_layers=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError) as e:
        load_masks(path)
    assert "not a sparsenn mask file (it holds Python objects" in str(e.value)
    assert "allow_pickle" not in str(e.value)


@pytest.mark.parametrize("n_layers", [0, -1, 1.5])
def test_mask_file_layer_count_must_be_positive(tmp_path, n_layers):
    path = tmp_path / "zero.npz"
    np.savez(path, n_layers=np.asarray(n_layers))
    with pytest.raises(ValueError, match=r"n_layers must be an integer >= 1"):
        load_masks(path)


def test_mask_round_trip_still_works(tmp_path):
    masks = [topology.random_sparse(20, 30, 0.2, np.random.default_rng(0))]
    save_masks(tmp_path / "m.npz", masks)
    (back,) = load_masks(tmp_path / "m.npz")
    assert (back != masks[0]).nnz == 0


def test_output_path_checks(tmp_path):
    with pytest.raises(ValueError, match=r"--save .*: is a directory; give a file name"):
        check_output_path(tmp_path, "--save")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"--save-dir .*: exists and is not a directory"):
        check_output_path(tmp_path / "f", "--save-dir", "dir")
    with pytest.raises(ValueError, match=r"--json .*: cannot be created, .*/f is a file"):
        check_output_path(tmp_path / "f" / "x.json", "--json")
    check_output_path(tmp_path / "new" / "deeper" / "x.json", "--json")  # would be created: fine
    assert not (tmp_path / "new").exists()  # and nothing was created by the check
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="not writable"):
            check_output_path(ro / "x.npz", "--save")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux's /proc")
def test_output_path_where_nothing_can_be_created_is_refused_for_root_too(tmp_path):
    """os.access says yes to root in /proc; the check tries to create (and at once drop) a
    nameless file there instead, so a study cannot run for an hour and then fail to write."""
    with pytest.raises(ValueError, match=r"--json /proc/x\.json: cannot be created"):
        check_output_path("/proc/x.json", "--json")
    before = sorted(os.listdir(tmp_path))
    check_output_path(tmp_path / "x.json", "--json")
    assert sorted(os.listdir(tmp_path)) == before  # the probe left nothing behind
