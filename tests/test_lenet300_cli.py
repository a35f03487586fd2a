"""examples/lenet300.py end to end on the real MNIST (CI sets SPARSENN_DATA=../shared/datasets)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from sparsenn import topology
from sparsenn.io import save_masks
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("lenet300_example", os.path.join(REPO, "examples", "lenet300.py"))
lenet300_example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lenet300_example)


@pytest.fixture(autouse=True)
def real_data(monkeypatch):
    # The real MNIST must be there: no skip (CI fails if ../shared/datasets is missing).
    root = os.environ.get("SPARSENN_DATA") or os.path.join(REPO, "..", "shared", "datasets")
    monkeypatch.setenv("SPARSENN_DATA", os.path.abspath(os.path.join(REPO, root)))


def test_radix_one_epoch_then_resume(tmp_path, capsys):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "c.npz"
    args = ["--topology", "radix", "--epochs", "1", "--no-progress", "--metrics", str(metrics), "--save", str(ckpt)]
    assert lenet300_example.main(args) == 0
    out = capsys.readouterr().out
    assert "configuration:" in out and "fc1" in out and "csr" in out and "time per epoch" in out
    first = [json.loads(l) for l in open(metrics)]
    assert len(first) == 1 and first[0]["test_acc"] > 0.9  # one epoch of real MNIST learns
    assert first[0]["nnz"] == 23_520 + 3_000 + 1_000
    # resume the saved run for one more epoch: continues at step 600 with the same masks
    assert lenet300_example.main(["--resume", str(ckpt), "--epochs", "2", "--no-progress", "--metrics", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 600" in out
    lines = [json.loads(l) for l in open(metrics)]
    assert [l["step"] for l in lines] == [600, 1200]
    assert lines[1]["test_acc"] >= lines[0]["test_acc"] - 0.01


def test_train_on_a_saved_mask(tmp_path, capsys):
    rng = np.random.default_rng(0)
    masks = [topology.random_sparse(50, 784, 0.05, rng), topology.random_sparse(20, 50, 0.5, rng),
             topology.random_sparse(10, 20, 0.5, rng)]
    save_masks(tmp_path / "m.npz", masks)
    assert lenet300_example.main(["--mask", str(tmp_path / "m.npz"), "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(50, 784)" in out and "(10, 20)" in out  # all three layers sparse, as in the file


def test_bad_mask_chain_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    save_masks(tmp_path / "bad.npz", [topology.random_sparse(50, 784, 0.1, rng), topology.random_sparse(10, 40, 0.5, rng)])
    with pytest.raises(ValueError, match="masks do not chain"):
        lenet300_example.main(["--mask", str(tmp_path / "bad.npz"), "--epochs", "1", "--no-progress"])
