"""The training loop: learning, exact resume, divergence, metrics, checkpoints, schedules."""

import json
import os

import numpy as np
import pytest

from sparsenn import checkpoint, schedules
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.optim import SGD, Adam
from sparsenn.train import ArrayData, TrainingDiverged, epoch_permutation, evaluate, fit
from tests.conftest import random_mask


def blobs(rng, n=600, n_features=20, n_classes=4):
    """A small learnable problem: Gaussian blobs, batch-major float32."""
    centers = rng.standard_normal((n_classes, n_features)) * 2
    y = rng.integers(0, n_classes, n)
    x = (centers[y] + rng.standard_normal((n, n_features))).astype(np.float32)
    return x, y.astype(np.int64)


def small_problem(seed=0):
    rng = np.random.default_rng(seed)
    x, y = blobs(rng)
    xt, yt = blobs(np.random.default_rng(seed))  # same centres
    return ArrayData(x[:500], y[:500], xt[500:], yt[500:])


def small_model(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(SparseLinear(random_mask(rng, 32, 20, 0.3), rng), ReLU(), Linear(32, 4, rng))


def run(tmp_path, epochs, resume=None, save_every=0, seed=0, name="ckpt.npz", lr=0.05, metrics=None):
    model = small_model(seed)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    summary = fit(model, small_problem(), opt, schedules.Cosine(lr, 3 * 10), epochs=epochs, batch_size=50,
                  seed=seed, save_path=tmp_path / name, save_every=save_every, resume=resume,
                  metrics_path=metrics, progress=False, log=lambda *a: None)
    return model, opt, summary


def test_training_learns_and_reports(tmp_path):
    metrics = tmp_path / "m.jsonl"
    model, _, summary = run(tmp_path, 3, metrics=metrics)
    assert summary["test_acc"] > 0.9
    lines = [json.loads(l) for l in open(metrics)]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    for l in lines:
        for key in ("epoch", "step", "train_loss", "test_acc", "epoch_seconds", "nnz", "density"):
            assert key in l
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["nnz"] == sum(l.nnz for l in model.weight_layers())


def test_resume_continues_the_same_run(tmp_path):
    straight, _, _ = run(tmp_path, 3, name="a.npz")
    run(tmp_path, 1, name="b.npz")  # stopped after one epoch ...
    resumed, _, summary = run(tmp_path, 3, resume=tmp_path / "b.npz", name="b.npz")  # ... and resumed
    assert summary["steps"] == 30
    for p, q in zip(straight.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.value, q.value)


def test_resume_mid_epoch(tmp_path):
    straight, _, _ = run(tmp_path, 2, name="a.npz")
    # "kill" a run after step 14 by training a copy that saves every 7 steps and stops there
    model = small_model()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    class Kill(Exception):
        pass

    class KillAt:
        def on_step_end(self, step, model, optimizer):
            if step == 16:
                raise Kill

    with pytest.raises(Kill):
        fit(model, small_problem(), opt, schedules.Cosine(0.05, 30), epochs=2, batch_size=50, seed=0,
            save_path=tmp_path / "k.npz", save_every=7, callbacks=[KillAt()], progress=False, log=lambda *a: None)
    assert int(checkpoint.read_checkpoint(tmp_path / "k.npz")["step"]) == 14  # lost only 2 steps
    resumed, _, _ = run(tmp_path, 2, resume=tmp_path / "k.npz", name="k.npz")
    for p, q in zip(straight.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.value, q.value)


def test_divergence_names_the_step_and_keeps_the_checkpoint(tmp_path):
    run(tmp_path, 1, name="c.npz")
    before = (tmp_path / "c.npz").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+ .*the last checkpoint written before it is .*c.npz.*lower learning rate"):
        run(tmp_path, 3, resume=tmp_path / "c.npz", name="c.npz", lr=1e6)
    assert (tmp_path / "c.npz").read_bytes() == before


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model, opt, _ = run(tmp_path, 1, name="d.npz")
    before = (tmp_path / "d.npz").read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "d.npz", model, opt, step=99)
    assert (tmp_path / "d.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_checkpoint_restores_patterns_and_optimizer(tmp_path):
    rng = np.random.default_rng(3)
    model = small_model(3)
    opt = Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad[...] = 1
    opt.step()
    keep = np.abs(model.layers[0].weight.value) > 0.2  # prune: the pattern must come back too
    opt.compact(model.layers[0].weight, model.layers[0].prune(keep))
    checkpoint.save_checkpoint(tmp_path / "e.npz", model, opt, step=5, rng=rng)
    fresh = small_model(4)
    fresh_opt = Adam(fresh.parameters(), lr=0.01)
    rng2 = np.random.default_rng(0)
    checkpoint.restore(checkpoint.read_checkpoint(tmp_path / "e.npz"), fresh, fresh_opt, rng2)
    assert (fresh.layers[0].mask() != model.layers[0].mask()).nnz == 0
    for p, q in zip(model.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
    np.testing.assert_array_equal(fresh_opt.state[0]["m"], opt.state[0]["m"])
    assert rng2.integers(1 << 30) == rng.integers(1 << 30)


def test_checkpoint_from_other_model_is_refused(tmp_path):
    model, opt, _ = run(tmp_path, 1, name="f.npz")
    other = Sequential(Linear(20, 8, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="different model"):
        checkpoint.restore(checkpoint.read_checkpoint(tmp_path / "f.npz"), other)
    (tmp_path / "g.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="g.npz: not a sparsenn checkpoint"):
        checkpoint.read_checkpoint(tmp_path / "g.npz")


def test_data_order_depends_on_seed_and_epoch_only():
    a = epoch_permutation(1, 2, 100)
    np.testing.assert_array_equal(a, epoch_permutation(1, 2, 100))
    assert not np.array_equal(a, epoch_permutation(1, 3, 100))
    assert sorted(a) == list(range(100))


def test_array_data_rejects_nan():
    x = np.zeros((4, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x_train contains NaN"):
        ArrayData(x, np.zeros(4, np.int64), np.zeros((2, 3), np.float32), np.zeros(2, np.int64))


def test_evaluate_counts_correctly():
    model = Sequential(Linear(2, 2, np.random.default_rng(0), bias=False))
    model.layers[0].weight.value[...] = np.eye(2)
    x = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    acc, _ = evaluate(model, x, np.array([0, 1, 1]), batch_size=2)
    assert acc == pytest.approx(2 / 3)


def test_schedules_golden_values():
    s = schedules.PiecewiseConstant([10000, 20000], [0.2, 0.1, 0.05])
    assert [s(0), s(9999), s(10000), s(19999), s(20000), s(10**6)] == [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
    c = schedules.Cosine(1.0, 100)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    w = schedules.Cosine(1.0, 100, warmup=10)
    assert w(0) == pytest.approx(0.1) and w(9) == pytest.approx(1.0)
    assert schedules.make("step", 0.2, 0, milestones=[10000, 20000])(25000) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="one more value than boundaries"):
        schedules.PiecewiseConstant([1, 2], [0.1])
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.make("linear", 0.1, 10)
