"""LeNet-5: architecture and topologies, checkpoints of sparse convolutions, a short real-MNIST
training run whose loss must fall, and examples/lenet5.py end to end on real MNIST (a subset) and
on tiny CIFAR-10 files written in the real format (CI sets SPARSENN_DATA=../shared/datasets)."""

import dataclasses
import importlib.util
import json
import os
import urllib.request

import numpy as np
import pytest

from sparsenn import checkpoint, data, schedules
from sparsenn.conv import Conv2d, SparseConv2d
from sparsenn.io import save_masks
from sparsenn.layers import Linear, SparseLinear
from sparsenn.models import lenet5, lenet5_spec
from sparsenn.optim import SGD
from sparsenn.train import ArrayData, fit, model_nnz
from tests.conftest import REPO
from tests.test_data import write_cifar_dir

spec = importlib.util.spec_from_file_location("lenet5_example", os.path.join(REPO, "examples", "lenet5.py"))
lenet5_example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lenet5_example)


@pytest.fixture
def mnist_root(monkeypatch):
    # The real MNIST must be there: no skip (CI fails if ../shared/datasets is missing).
    root = os.path.abspath(os.path.join(REPO, os.environ.get("SPARSENN_DATA") or os.path.join("..", "shared", "datasets")))
    monkeypatch.setenv("SPARSENN_DATA", root)
    return root


@pytest.mark.parametrize("dataset,variant,shapes", [
    ("mnist", "tf", [(20, 25), (50, 500), (384, 2450), (10, 384)]),
    ("cifar10", "tf", [(20, 75), (50, 500), (384, 1800), (10, 384)]),
    ("mnist", "caffe", [(20, 25), (50, 500), (500, 800), (10, 500)]),
])
def test_architectures(dataset, variant, shapes):
    s = lenet5_spec(dataset, variant)
    assert s["shapes"] == shapes
    model = lenet5(dataset, "dense", np.random.default_rng(0), variant=variant)
    assert [l.shape for l in model.weight_layers()] == shapes
    assert [type(l) for l in model.weight_layers()] == [Conv2d, Conv2d, Linear, Linear]
    c, h, w = s["input_shape"]
    x = np.random.default_rng(1).standard_normal((c * h * w, 3)).astype(np.float32)  # as fit feeds it
    assert model.forward(x).shape == (10, 3)


def test_random_topology_sparsifies_conv2_and_fc1_only():
    model = lenet5("mnist", "random", np.random.default_rng(0), density=0.1)
    conv1, conv2, fc1, fc2 = model.weight_layers()
    assert type(conv1) is Conv2d and type(fc2) is Linear
    assert type(conv2) is SparseConv2d and type(fc1) is SparseLinear
    for layer in (conv2, fc1):
        assert abs(layer.pattern.density - 0.1) < 0.01
    nnz, full = model_nnz(model)
    assert nnz == 500 + conv2.nnz + fc1.nnz + 3840 and full == 500 + 25_000 + 940_800 + 3840


def test_masks_full_ones_stay_dense_and_bad_shapes_are_named():
    rng = np.random.default_rng(0)
    s = lenet5_spec("mnist")["shapes"]
    masks = [np.ones(s[0], bool), rng.random(s[1]) < 0.3, np.ones(s[2], bool), rng.random(s[3]) < 0.5]
    model = lenet5("mnist", rng=rng, masks=masks)
    assert [type(l).__name__ for l in model.weight_layers()] == ["Conv2d", "SparseConv2d", "Linear", "SparseLinear"]
    with pytest.raises(ValueError, match=r"mask for conv2 has shape \(50, 499\).*needs \(50, 500\)"):
        lenet5("mnist", rng=rng, masks=[masks[0], np.ones((50, 499), bool), *masks[2:]])
    with pytest.raises(ValueError, match="needs 4 masks"):
        lenet5("mnist", rng=rng, masks=masks[:3])
    with pytest.raises(ValueError, match="unknown topology 'radix' for LeNet-5"):
        lenet5("mnist", "radix", rng)


def test_checkpoint_restores_sparse_conv_patterns(tmp_path):
    model = lenet5("cifar10", "random", np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    conv2 = model.weight_layers()[1]
    opt.compact(conv2.weight, conv2.prune(np.abs(conv2.weight.value) > 0.05))  # a pattern no seed gives
    checkpoint.save_checkpoint(tmp_path / "c.npz", model, opt, step=3)
    fresh = lenet5("cifar10", "random", np.random.default_rng(1))  # other masks
    fresh_opt = SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    checkpoint.restore(checkpoint.read_checkpoint(tmp_path / "c.npz"), fresh, fresh_opt)
    sparse = lambda m: [l for l in m.weight_layers() if isinstance(l, SparseLinear)]  # noqa: E731
    assert [type(l) for l in sparse(model)] == [SparseConv2d, SparseLinear]
    for a, b in zip(sparse(model), sparse(fresh)):
        assert (a.mask() != b.mask()).nnz == 0
    x = np.random.default_rng(2).standard_normal((3 * 24 * 24, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), fresh.forward(x))


def test_short_mnist_training_loss_falls(mnist_root):
    ds = data.load("mnist", root=mnist_root)
    ds = dataclasses.replace(ds, train_images=ds.train_images[:800], train_labels=ds.train_labels[:800],
                             test_images=ds.test_images[:500], test_labels=ds.test_labels[:500])
    arrays = ArrayData.from_dataset(ds)
    model = lenet5("mnist", "random", np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    summary = fit(model, arrays, opt, schedules.Cosine(0.05, 48, warmup=8), epochs=3, batch_size=50, seed=0,
                  progress=False, log=lambda *a: None)
    losses = [r["train_loss"] for r in summary["history"]]
    assert losses[2] < losses[1] < losses[0]
    assert summary["test_acc"] > 0.7  # 48 steps on 800 images


def test_cli_mnist_subset_saves_and_resumes(tmp_path, capsys, mnist_root):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "c.npz"
    args = ["--topology", "random", "--limit", "400", "--epochs", "1", "--no-progress",
            "--metrics", str(metrics), "--save", str(ckpt)]
    assert lenet5_example.main(args) == 0
    out = capsys.readouterr().out
    assert "SparseConv2d(20 -> 50" in out and "conv2" in out and "csr" in out and "time per epoch" in out
    assert lenet5_example.main(["--resume", str(ckpt), "--epochs", "2", "--no-progress", "--metrics", str(metrics)]) == 0
    assert "at step 4" in capsys.readouterr().out
    assert [json.loads(l)["step"] for l in open(metrics)] == [4, 8]


def test_cli_cifar10_on_tiny_files(tmp_path, capsys, monkeypatch):
    def no_network(*a, **k):
        raise OSError("tests never download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    write_cifar_dir(tmp_path / "cifar-10-batches-py", np.random.default_rng(0), n=8)  # 40 train, 8 test
    base = ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--batch-size", "10", "--no-progress",
            "--schedule", "constant"]  # so that a 1-epoch run is the first half of a 2-epoch one
    with pytest.raises(data.DatasetError, match="MD5"):  # tiny files are not the real batches
        lenet5_example.main(base + ["--epochs", "1"])
    base.append("--no-verify")
    m_straight, m_resumed = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert lenet5_example.main(base + ["--epochs", "2", "--metrics", str(m_straight)]) == 0
    out = capsys.readouterr().out
    assert "(40 train, 8 test" in out and "Linear(1800 -> 384)" in out
    # one epoch, stop, resume for the second: the same crops, so the same losses
    ckpt = tmp_path / "c.npz"
    assert lenet5_example.main(base + ["--epochs", "1", "--metrics", str(m_resumed), "--save", str(ckpt)]) == 0
    assert lenet5_example.main(["--resume", str(ckpt), "--epochs", "2", "--no-progress", "--no-verify",
                                "--data-dir", str(tmp_path), "--metrics", str(m_resumed)]) == 0
    a = [json.loads(l) for l in open(m_straight)]
    b = [json.loads(l) for l in open(m_resumed)]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-5)


def test_cli_trains_on_a_saved_mask_file(tmp_path, capsys, mnist_root):
    rng = np.random.default_rng(0)
    s = lenet5_spec("mnist", "caffe")["shapes"]
    save_masks(tmp_path / "m.npz", [rng.random(shape) < d for shape, d in zip(s, (1.0, 0.2, 0.05, 0.5))])
    args = ["--variant", "caffe", "--mask", str(tmp_path / "m.npz"), "--limit", "200", "--epochs", "1", "--no-progress"]
    assert lenet5_example.main(args) == 0
    out = capsys.readouterr().out
    assert "Conv2d(1 -> 20" in out and "SparseConv2d(20 -> 50" in out and "SparseLinear(800 -> 500" in out
