"""Pruning: the schedule's golden values, one-time and gradual magnitude pruning, dense -> CSR
conversion, rewinding, saving, and the prune-and-retrain study command on real MNIST."""

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest

from sparsenn import pruning, schedules
from sparsenn.io import load_masks, save_masks
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.models import sequential_from_masks
from sparsenn.optim import SGD, Adam
from sparsenn.pruning import GradualPruner, PolynomialSchedule, prune_once
from sparsenn.train import ArrayData, evaluate, fit
from tests.conftest import REPO, random_mask


def mlp(seed=0, sizes=(20, 48, 32, 4)):
    """Dense Linear layers with ReLUs between; continuous random weights (no magnitude ties)."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(ReLU())
        layers.append(Linear(n_in, n_out, rng, name=f"fc{i + 1}"))
    return Sequential(*layers)


def blobs(seed=0, n=600, n_features=20, n_classes=4):
    """A small learnable problem: Gaussian blobs, 500 training and 100 test samples."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, n_features)) * 2
    y = rng.integers(0, n_classes, n)
    x = (centers[y] + rng.standard_normal((n, n_features))).astype(np.float32)
    return ArrayData(x[:500], y[:500], x[500:], y[500:].astype(np.int64))


def dense_pattern(layer, pruner=None, position=None):
    """The connections of a weight layer as a dense bool (n_out, n_in) array."""
    if isinstance(layer, SparseLinear):
        return layer.mask().toarray()
    if pruner is not None and position in pruner.dense_masks:
        return pruner.dense_masks[position].copy()
    return np.ones(layer.shape, dtype=bool)


# ---- the schedule ---------------------------------------------------------------------------


def test_schedule_golden_values():
    s = PolynomialSchedule(final=0.9, initial=0.0, begin=100, end=300, frequency=50)
    assert s(0) == 0.0 and s(99) == 0.0 and s(100) == 0.0
    assert s(150) == pytest.approx(0.9 - 0.9 * 0.75**3) == pytest.approx(0.5203125)
    assert s(200) == pytest.approx(0.7875)  # 0.9 - 0.9 * 0.5^3
    assert s(250) == pytest.approx(0.8859375)  # 0.9 - 0.9 * 0.25^3
    assert s(300) == 0.9 and s(301) == 0.9 and s(10**6) == 0.9
    assert s.pruning_steps() == [100, 150, 200, 250, 300]
    assert [t for t in range(0, 400) if s.is_pruning_step(t)] == [100, 150, 200, 250, 300]
    ragged = PolynomialSchedule(0.9, begin=100, end=300, frequency=80)
    assert ragged.pruning_steps() == [100, 180, 260, 300]  # end is always a pruning step


def test_schedule_exponent_and_initial_sparsity():
    assert PolynomialSchedule(0.9, begin=100, end=300, exponent=1)(200) == pytest.approx(0.45)  # linear
    assert PolynomialSchedule(0.9, begin=100, end=300, exponent=2)(150) == pytest.approx(0.39375)
    s = PolynomialSchedule(0.9, initial=0.5, begin=0, end=100, exponent=3)
    assert s(0) == 0.5 and s(50) == pytest.approx(0.85) and s(100) == 0.9  # 0.9 - 0.4 / 8
    # monotone, and s_f reached exactly at the end
    values = [s(t) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(final=1.0), r"final sparsity must be in \[0, 1\), got 1.0"),
    (dict(final=-0.1), r"final sparsity must be in \[0, 1\)"),
    (dict(final=float("nan")), r"final sparsity must be in \[0, 1\)"),
    (dict(final=0.5, initial=0.6), r"initial sparsity 0.6 must be <= final sparsity 0.5"),
    (dict(final=0.5, begin=300, end=300), r"begin must be < end, got begin=300, end=300"),
    (dict(final=0.5, begin=-1, end=300), r"begin must be >= 0"),
    (dict(final=0.5, frequency=0), r"frequency must be > 0, got 0"),
    (dict(final=0.5, exponent=0), r"exponent must be a finite number > 0"),
])
def test_schedule_validation(kwargs, match):
    kwargs = {"begin": 0, "end": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        PolynomialSchedule(**kwargs)


def test_pruner_and_prune_once_validation():
    model = mlp()
    with pytest.raises(ValueError, match="crossover must be a density in"):
        GradualPruner(model, 0.5, begin=0, end=10, crossover=1.5)
    with pytest.raises(ValueError, match="scope must be one of"):
        GradualPruner(model, 0.5, begin=0, end=10, scope="neuron")
    with pytest.raises(ValueError, match="scope='global' takes one final sparsity"):
        GradualPruner(model, [0.5, 0.5, 0.5], begin=0, end=10, scope="global")
    with pytest.raises(ValueError, match="final sparsity has 2 values for 3 pruned layers"):
        GradualPruner(model, [0.5, 0.5], begin=0, end=10)
    with pytest.raises(ValueError, match="begin must be < end"):
        GradualPruner(model, 0.5, begin=10, end=5)
    with pytest.raises(ValueError, match="exactly one of sparsity and threshold"):
        prune_once(model)
    with pytest.raises(ValueError, match="exactly one of sparsity and threshold"):
        prune_once(model, 0.5, threshold=0.1)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1"):
        prune_once(model, 1)
    with pytest.raises(ValueError, match=r"sparsity\[1\] must be in \[0, 1\)"):
        prune_once(model, [0.5, 2.0, 0.5], scope="layer")
    with pytest.raises(ValueError, match="no weight layer named 'fc9'"):
        prune_once(model, 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match="no layers left to prune"):
        prune_once(mlp(sizes=(5, 3)), 0.5, keep_last_dense=True)


# ---- one-time pruning -----------------------------------------------------------------------


def test_one_time_global_hits_the_target_and_removes_the_smallest():
    model = mlp()
    before = [np.abs(l.weight.value).ravel() for l in model.weight_layers()]
    full = sum(b.size for b in before)
    report = prune_once(model, 0.8)
    assert all(isinstance(l, SparseLinear) for l in model.weight_layers())
    assert sum(l.nnz for l in model.weight_layers()) == round(0.2 * full)
    assert sum(r["nnz"] for r in report) == round(0.2 * full)
    # one threshold: everything removed is smaller than everything kept, in every layer
    kept = np.concatenate([np.abs(l.weight.value) for l in model.weight_layers()])
    everything = np.sort(np.concatenate(before))
    assert kept.min() == everything[full - round(0.2 * full)]
    assert len({r["threshold"] for r in report}) == 1


def test_one_time_per_layer_and_keep_first_last_dense():
    model = mlp()
    full = [l.shape[0] * l.shape[1] for l in model.weight_layers()]
    prune_once(model, [0.5, 0.75, 0.9], scope="layer")
    assert [l.nnz for l in model.weight_layers()] == [round(0.5 * full[0]), round(0.25 * full[1]), round(0.1 * full[2])]

    model = mlp()
    prune_once(model, 0.9, scope="layer", keep_first_dense=True, keep_last_dense=True)
    first, middle, last = model.weight_layers()
    assert isinstance(first, Linear) and isinstance(last, Linear) and isinstance(middle, SparseLinear)
    assert middle.nnz == round(0.1 * full[1])

    model = mlp()
    prune_once(model, 0.9, layers=["fc2"])  # only the named layer
    assert [type(l).__name__ for l in model.weight_layers()] == ["Linear", "SparseLinear", "Linear"]


def test_threshold_semantics_strictly_below_is_pruned():
    rng = np.random.default_rng(0)
    layer = Linear(4, 2, rng, bias=False)
    # exactly representable values, so |w| == t really is equality in float32
    layer.weight.value[...] = [[0.125, -0.25, 0.375, -0.1875], [0.25, 0.0625, -0.3125, 0.25]]
    model = Sequential(layer)
    report = prune_once(model, threshold=0.25)
    kept = model.weight_layers()[0]
    np.testing.assert_array_equal(kept.mask().toarray(), [[False, True, True, False], [True, False, True, True]])
    np.testing.assert_array_equal(kept.weight.value, np.float32([-0.25, 0.375, 0.25, -0.3125, 0.25]))
    assert report[0]["nnz_before"] == 8 and report[0]["nnz"] == 5
    # a sparse layer obeys the same rule
    prune_once(model, threshold=0.3125)
    np.testing.assert_array_equal(model.weight_layers()[0].weight.value, np.float32([0.375, -0.3125]))


def test_magnitude_threshold_edges():
    m = np.array([0.5, 0.1, 0.3, 0.3, 0.2])
    assert pruning.magnitude_threshold(m, 0) == 0.0  # |w| < 0 prunes nothing
    assert pruning.magnitude_threshold(m, 2) == 0.3  # 0.1 and 0.2 go
    assert pruning.magnitude_threshold(m, 3) == 0.3  # a tie: both 0.3s stay, only 2 go
    assert pruning.magnitude_threshold(m, 5) == math.inf


def test_compaction_shrinks_arrays_and_optimizer_state():
    rng = np.random.default_rng(1)
    layer = SparseLinear(random_mask(rng, 30, 40, 0.5), rng)
    model = Sequential(layer, ReLU(), Linear(30, 3, rng))
    opt = Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape)
    opt.step()
    nnz0 = layer.nnz
    w, m = layer.weight.value.copy(), opt.state[0]["m"].copy()
    prune_once(model, 0.9, layers=[0], optimizer=opt)
    assert layer.nnz == round(0.1 * 1200) < nnz0
    for arr in (layer.weight.value, layer.weight.grad, layer.pattern.indices, layer.pattern.t_rows,
                layer.pattern.t_perm, opt.state[0]["m"], opt.state[0]["v"]):
        assert arr.shape == (layer.nnz,)
    kept = np.abs(w) >= np.abs(layer.weight.value).min()
    np.testing.assert_array_equal(opt.state[0]["m"], m[kept])  # state follows its weight
    opt.step()  # and the optimiser still runs on the compacted arrays


# ---- dense -> sparse ------------------------------------------------------------------------


def test_to_sparse_preserves_the_function_and_the_optimizer_state():
    rng = np.random.default_rng(2)
    model = mlp(2)
    x = rng.standard_normal((20, 7)).astype(np.float32)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape)
    opt.step()
    old = model.weight_layers()[1]
    old.weight.value[np.abs(old.weight.value) < 0.1] = 0  # some weights pruned by zeroing
    mask = old.weight.value != 0
    velocity, bias = opt.state[2]["velocity"].copy(), old.bias
    y_before = model.forward(x).copy()
    new = pruning.to_sparse(model, 1, optimizer=opt)
    assert isinstance(new, SparseLinear) and model.weight_layers()[1] is new and new.nnz == mask.sum()
    np.testing.assert_allclose(model.forward(x), y_before, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new.to_dense(), old.weight.value)
    assert opt.params[2] is new.weight and new.bias is bias and opt.params[3] is bias
    np.testing.assert_array_equal(opt.state[2]["velocity"], velocity[mask])
    opt.step()  # optimiser arrays line up with the new parameter
    with pytest.raises(TypeError, match="already a SparseLinear"):
        pruning.to_sparse(model, 1)


# ---- gradual pruning ------------------------------------------------------------------------


class Watch:
    """Runs after the pruner: checks every step that patterns only shrink and that pruned
    weights are zero, and at pruning steps that each layer sits at the schedule's target."""

    def __init__(self, pruner):
        self.pruner, self.previous, self.checked = pruner, None, 0

    def on_step_end(self, step, model, optimizer):
        pr = self.pruner
        patterns = [dense_pattern(l, pr, p) for p, l in enumerate(model.weight_layers())]
        for l, pat in zip(model.weight_layers(), patterns):
            dense = l.to_dense() if isinstance(l, SparseLinear) else l.weight.value
            assert not np.any(dense[~pat]), f"step {step}: a pruned weight of {l.name} came back"
        if self.previous is not None:
            for pat, prev in zip(patterns, self.previous):
                assert not np.any(pat & ~prev), f"step {step}: a connection reappeared"
        self.previous = patterns
        if pr.schedule.is_pruning_step(step):
            for l, pat, target in zip(model.weight_layers(), patterns, pr.targets(step)):
                assert pat.sum() == round((1 - target) * pat.size), (step, l.name)
            self.checked += 1


def train_with_pruner(crossover, scope="layer", epochs=8, **kw):
    data = blobs()
    model = mlp(3)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = GradualPruner(model, kw.pop("final", 0.9), begin=10, end=60, frequency=10, scope=scope,
                           crossover=crossover, **kw)
    watch = Watch(pruner)
    fit(model, data, opt, schedules.Cosine(0.05, 80), epochs=epochs, batch_size=50, seed=0,
        callbacks=[pruner, watch] if scope == "layer" else [pruner], progress=False, log=lambda *a: None)
    return model, opt, pruner, watch, data


def test_gradual_pruning_follows_the_schedule_and_never_regrows():
    model, opt, pruner, watch, data = train_with_pruner(crossover=0.5)
    assert watch.checked == 6  # steps 10, 20, ..., 60
    # the history records target and achieved sparsity per layer at each pruning step
    h = [r for r in pruner.history if r["layer"] == "fc1"]
    assert [r["step"] for r in h] == [10, 20, 30, 40, 50, 60]
    for r in h:
        assert r["target"] == pytest.approx(pruner.schedules[0](r["step"]))
        assert abs(r["achieved"] - r["target"]) <= 1 / (20 * 48)
    # the layers turned CSR at the first pruning step below the crossover density
    first_csr = next(r for r in h if r["kind"] == "csr")
    assert 1 - first_csr["achieved"] < 0.5 and all(1 - r["achieved"] >= 0.5 for r in h if r["kind"] == "dense")
    assert all(isinstance(l, SparseLinear) for l in model.weight_layers())
    # compaction: stored arrays and optimiser state have the pruned size
    for i, l in enumerate(model.weight_layers()):
        assert l.nnz == round(0.1 * l.shape[0] * l.shape[1])
        assert opt.state[2 * i]["velocity"].shape == (l.nnz,) and opt.params[2 * i] is l.weight
    assert evaluate(model, data.x_test, data.y_test)[0] > 0.8  # a 90%-sparse network still learns blobs


def test_gradual_pruning_stays_dense_above_the_crossover_then_finalize_converts():
    model, opt, pruner, watch, _ = train_with_pruner(crossover=0.0, final=0.6)
    assert all(isinstance(l, Linear) for l in model.weight_layers())  # masked, never converted
    assert pruner.sparsity(model) == pytest.approx(0.6, abs=1e-3)
    masks = pruner.masks(model)
    assert [m.nnz for m in masks] == [round(0.4 * m.shape[0] * m.shape[1]) for m in masks]
    pruner.finalize(model, opt, convert=True)
    assert all(isinstance(l, SparseLinear) for l in model.weight_layers())
    assert [m.nnz for m in pruning.model_masks(model)] == [m.nnz for m in masks]


def test_gradual_global_scope_and_finalize_after_an_early_stop():
    # training stops at step 40, before the schedule's end (60): finalize prunes to the final target
    model, opt, pruner, _, _ = train_with_pruner(crossover=0.3, scope="global", epochs=4)
    assert pruner.sparsity(model) < 0.9
    pruner.finalize(model, opt)
    assert pruner.sparsity(model) == pytest.approx(0.9, abs=1e-3)
    assert pruner.history[-1]["step"] is None  # the finalize records
    # one threshold: layers end at different sparsities
    assert len({round(r["achieved"], 3) for r in pruner.history[-3:]}) > 1


# ---- retraining on a structure: rewinding, saving --------------------------------------------


def test_rewind_sets_surviving_weights_to_their_initial_values():
    model = mlp(4)
    w0 = pruning.initial_weights(model)
    for l in model.weight_layers():  # "training"
        l.weight.value += 1.0
        l.bias.value += 0.5
    prune_once(model, 0.7)
    masks = pruning.model_masks(model)
    fresh = sequential_from_masks(masks, np.random.default_rng(9))
    pruning.rewind(fresh, w0)
    for l, m, (w, b) in zip(fresh.weight_layers(), masks, w0):
        rows, cols = m.nonzero()
        np.testing.assert_array_equal(l.to_dense()[rows, cols], w[rows, cols])
        assert l.nnz == m.nnz
        np.testing.assert_array_equal(l.bias.value, b)
    with pytest.raises(ValueError, match="initial weights are for 3 weight layers"):
        pruning.rewind(Sequential(Linear(20, 4, np.random.default_rng(0))), w0)


def test_masks_and_sparse_models_round_trip(tmp_path):
    model = mlp(5)
    prune_once(model, 0.9, keep_last_dense=True)  # a mixed model: CSR layers and a dense one
    masks = pruning.model_masks(model)
    save_masks(tmp_path / "m.npz", masks, sparsity=0.9)
    for a, b in zip(masks, load_masks(tmp_path / "m.npz")):
        assert a.shape == b.shape and (a != b).nnz == 0
    size = pruning.save_sparse_model(tmp_path / "model.npz", model)
    assert size == os.path.getsize(tmp_path / "model.npz")
    loaded = pruning.load_sparse_model(tmp_path / "model.npz",
                                       lambda m: sequential_from_masks(m[:2], np.random.default_rng(0), n_classes=4))
    x = np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    b = pruning.storage_bytes(model)
    assert b["stored_bytes"] < b["dense_bytes"] / 3 and b["nnz"] == sum(m.nnz for m in masks)
    # the model file is also a mask file
    assert [m.nnz for m in load_masks(tmp_path / "model.npz")] == [m.nnz for m in masks]


# ---- the study command on real MNIST ---------------------------------------------------------

spec = importlib.util.spec_from_file_location("prune_retrain_example",
                                              os.path.join(REPO, "examples", "prune_retrain.py"))
prune_retrain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prune_retrain)


@pytest.fixture
def real_data(monkeypatch):
    # The real MNIST must be there: no skip (CI fails if ../shared/datasets is missing).
    root = os.environ.get("SPARSENN_DATA") or os.path.join(REPO, "..", "shared", "datasets")
    monkeypatch.setenv("SPARSENN_DATA", os.path.abspath(os.path.join(REPO, root)))


def test_cli_quick_writes_records(tmp_path, capsys, real_data):
    out = tmp_path / "r.json"
    assert prune_retrain.main(["--quick", "--json", str(out), "--csv", str(tmp_path / "t.csv"),
                               "--speed", str(tmp_path / "speed.md"), "--gradual-log", str(tmp_path / "g.json"),
                               "--sparsities", "0.5", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "one-time pruned" in printed and "gradual retrained" in printed and "dense" in printed
    records = json.load(open(out))
    assert len(records) == 1 + 2 * 6  # dense; per sparsity, 2 methods x (pruned, retrained, rewound)
    for r in records:
        assert {"sparsity", "method", "stage", "seed", "test_acc", "nnz"} <= set(r)
        assert r["method"] in ("dense", "one-time", "gradual")
        assert r["stage"] in ("trained", "pruned", "retrained", "rewound")
        assert 0.0 <= r["test_acc"] <= 1.0 and isinstance(r["nnz"], int) and r["seed"] == 0
    assert [r["sparsity"] for r in records if r["method"] == "dense"] == [0.0]
    assert records[0]["nnz"] == 784 * 300 + 300 * 100 + 100 * 10 and records[0]["test_acc"] > 0.7
    for r in records[1:]:
        assert r["sparsity"] in (0.5, 0.9)
        assert abs(r["nnz"] - (1 - r["sparsity"]) * 266_200) <= 2  # global pruning, exact-ish
    lines = open(tmp_path / "t.csv").read().splitlines()
    assert lines[0].startswith("sparsity,dense_trained_mean") and len(lines) == 3
    speed = open(tmp_path / "speed.md").read()
    assert "| 0.9 | 26,620 |" in speed and "CSR vs dense" in speed and "Through one gradual run" in speed
    log = json.load(open(tmp_path / "g.json"))["runs"]
    assert [r["sparsity"] for r in log] == [0.5, 0.9]
    for rec in log[1]["pruning"]:  # target and achieved sparsity logged per layer at each pruning step
        assert {"step", "layer", "kind", "target", "achieved", "nnz"} <= set(rec)
    assert all("epoch_seconds" in e and "nnz" in e for e in log[1]["epochs"])


def test_cli_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit):
        prune_retrain.parse_args(["--plot", "x.png"])
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_cli_registry_and_bad_sparsity(capsys):
    assert "lenet300" in prune_retrain.MODELS
    with pytest.raises(SystemExit):
        prune_retrain.parse_args(["--sparsities", "1.0"])
    assert "must be in [0, 1)" in capsys.readouterr().err
