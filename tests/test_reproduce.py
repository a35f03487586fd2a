"""The 2019 study's recipe (sparsenn.recipes) reaching the models, optimiser, data and run
length; the width-scaled networks of its table (c); examples/reproduce.py end to end (--quick)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from sparsenn import augment, data, pruning, recipes, schedules, topology
from sparsenn.conv import Conv2d, SparseConv2d
from sparsenn.init import FixedTruncatedNormal, dense_weights
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.models import lenet300, lenet5
from sparsenn.optim import SGD
from sparsenn.train import ArrayData, fit
from tests.conftest import REPO


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"{name}_example", os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lenet300_example = load_example("lenet300")
prune_retrain = load_example("prune_retrain")
reproduce = load_example("reproduce")


@pytest.fixture
def real_data(monkeypatch):
    # The real MNIST must be there: no skip (CI fails if ../shared/datasets is missing).
    root = os.environ.get("SPARSENN_DATA") or os.path.join(REPO, "..", "shared", "datasets")
    monkeypatch.setenv("SPARSENN_DATA", os.path.abspath(os.path.join(REPO, root)))


def resolved(argv):
    """lenet300.py's flags under their recipe, as its main resolves them."""
    args, given = lenet300_example.parse_args(argv)
    return recipes.resolve(vars(args), given, args.dataset)


# ---- the recipe: values, and flags that override single ones ---------------------------------
def test_paper_recipe_values_and_overrides():
    cfg = resolved(["--recipe", "paper"])
    assert (cfg["optimizer"], cfg["momentum"], cfg["lr"], cfg["schedule"], cfg["batch_size"]) == ("sgd", 0.0, 0.2, "step", 100)
    assert (cfg["steps"], cfg["epochs"], cfg["weight_decay"]) == (10_000, None, 0.004)
    assert (cfg["init"], cfg["relu_logits"], cfg["standardize"], cfg["train_size"]) == ("paper", True, False, 55_000)
    default = resolved([])
    assert (default["lr"], default["momentum"], default["steps"], default["epochs"], default["init"],
            default["relu_logits"], default["standardize"], default["train_size"]) == \
        (None, 0.9, None, 30, "kaiming", False, True, None)  # lr None: 0.05 for sgd, set by main
    mixed = resolved(["--recipe", "paper", "--lr", "0.1", "--no-relu-logits", "--momentum", "0.5"])
    assert (mixed["lr"], mixed["relu_logits"], mixed["momentum"], mixed["steps"], mixed["init"]) == \
        (0.1, False, 0.5, 10_000, "paper")
    by_epochs = resolved(["--recipe", "paper", "--epochs", "3"])  # an explicit --epochs sets the length
    assert (by_epochs["epochs"], by_epochs["steps"]) == (3, None)
    assert recipes.resolve({"recipe": "paper", "train_size": None}, set(), "cifar10")["train_size"] is None


def test_paper_schedule_is_0_2_throughout_10k_steps():
    cfg = resolved(["--recipe", "paper"])
    s = schedules.make(cfg["schedule"], cfg["lr"], cfg["steps"], milestones=cfg["milestones"])
    assert [s(0), s(9_999), s(10_000), s(20_000)] == [0.2, 0.2, 0.1, 0.05]


# ---- the recipe reaching the model and the optimiser -----------------------------------------
def decay_after_one_step(model, weight_decay):
    """Each parameter's relative change after one SGD step with zero gradients: the decay."""
    before = [p.value.copy() for p in model.parameters()]
    opt = SGD(model.parameters(), lr=1.0, weight_decay=weight_decay)
    for p in model.parameters():
        p.grad[...] = 0
    opt.step()
    return {p.name: float(np.mean(1 - p.value / b)) if np.all(b != 0) else float(np.max(np.abs(p.value - b)))
            for p, b in zip(model.parameters(), before)}


def test_paper_lenet300_relu_logits_biases_init_and_decay(rng):
    cfg = resolved(["--recipe", "paper"])
    model = lenet300("dense", rng, **recipes.model_options(cfg))
    assert isinstance(model.layers[-1], ReLU) and isinstance(model.layers[-2], Linear)  # ReLU after the logits
    for layer in model.weight_layers():
        assert np.all(layer.bias.value == np.float32(0.1))
        assert layer.weight.value.std() == pytest.approx(0.04 * 0.8796, rel=0.05)  # truncated at 2 std
        assert np.abs(layer.weight.value).max() <= 0.08 + 1e-6
    decay = decay_after_one_step(model, cfg["weight_decay"])
    assert decay["fc1.weight"] == pytest.approx(0.004) and decay["fc3.weight"] == pytest.approx(0.004)
    assert decay["fc1.bias"] == 0  # no decay on biases
    logits = model.forward(rng.standard_normal((784, 5)).astype(np.float32))
    assert logits.min() >= 0
    # the default recipe: no ReLU after the logits, biases 0, He init by actual fan-in
    plain = lenet300("radix", rng, **recipes.model_options(resolved([])))
    assert isinstance(plain.layers[-1], Linear) and all(np.all(l.bias.value == 0) for l in plain.weight_layers())


def test_paper_lenet5_conv_init_and_no_decay_on_conv_kernels(rng):
    cfg = resolved(["--recipe", "paper"])
    cfg["conv_weight_decay"] = False  # lenet5.py's and prune_retrain.py's flag; the paper value
    model = lenet5("mnist", "random", rng, density=0.5, **recipes.model_options(cfg, convolutional=True))
    conv1, conv2, fc1, fc2 = model.weight_layers()
    assert isinstance(conv1, Conv2d) and isinstance(conv2, SparseConv2d) and isinstance(fc1, SparseLinear)
    assert conv1.weight.value.std() == pytest.approx(0.05 * 0.8796, rel=0.1)
    assert fc1.weight.value.std() == pytest.approx(0.04 * 0.8796, rel=0.05)
    assert np.all(conv1.bias.value == 0) and np.all(conv2.bias.value == 0)
    assert np.all(fc1.bias.value == np.float32(0.1)) and np.all(fc2.bias.value == np.float32(0.1))
    assert isinstance(model.layers[-1], ReLU)
    decay = decay_after_one_step(model, 0.004)
    assert decay["conv1.weight"] == 0 and decay["conv2.weight"] == 0
    assert decay["fc1.weight"] == pytest.approx(0.004) and decay["fc2.weight"] == pytest.approx(0.004)


def test_fixed_truncated_normal_ignores_the_fans(rng):
    a = dense_weights(FixedTruncatedNormal(0.05), (400, 1000), rng)
    b = dense_weights(FixedTruncatedNormal(0.05), (400, 10), rng)
    assert a.std() == pytest.approx(b.std(), rel=0.05) and np.abs(a).max() <= 0.1
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        FixedTruncatedNormal(0.0)


def test_hold_out_trains_on_the_last_images(real_data):
    ds = data.load("mnist")
    held = data.hold_out(ds, 55_000)
    assert len(held.train_images) == 55_000 and len(held.test_images) == 10_000
    np.testing.assert_array_equal(held.train_images[0], ds.train_images[5_000])
    arrays = ArrayData.from_dataset(held, standardize=False)
    # float32 features, or (once ArrayData keeps uint8 pixels) its features() with scale and shift
    x = arrays.features() if hasattr(arrays, "features") else arrays.x_train
    assert x.min() == 0.0 and x.max() == 1.0
    with pytest.raises(ValueError, match=r"train_size must be in \[1, 60000\]"):
        data.hold_out(ds, 60_001)


def test_fit_runs_a_step_count_that_ends_mid_epoch(rng):
    x = rng.standard_normal((250, 8)).astype(np.float32)
    arrays = ArrayData(x, (x[:, 0] > 0).astype(np.int64), x[:50].copy(), (x[:50, 0] > 0).astype(np.int64))
    model = Sequential(Linear(8, 2, rng))
    opt = SGD(model.parameters(), lr=0.1)
    summary = fit(model, arrays, opt, schedules.Constant(0.1), steps=7, batch_size=100, seed=0,
                  progress=False, log=lambda *a: None)  # 3 steps per epoch: 3 + 3 + 1
    assert summary["steps"] == 7 and opt.steps == 7 and [r["step"] for r in summary["history"]] == [3, 6, 7]
    with pytest.raises(ValueError, match="not both or neither"):
        fit(model, arrays, opt, schedules.Constant(0.1), epochs=1, steps=7, batch_size=100, seed=0)


# ---- scripts: the recipe printed, saved, resumed ---------------------------------------------
def test_lenet300_paper_run_resumes_under_its_recipe(tmp_path, capsys, real_data):
    ckpt = tmp_path / "c.npz"
    base = ["--recipe", "paper", "--topology", "radix", "--no-progress"]
    assert lenet300_example.main(base + ["--steps", "60", "--save", str(ckpt)]) == 0
    out = capsys.readouterr().out
    config = json.loads(out.split("configuration: ", 1)[1].splitlines()[0])
    assert (config["recipe"], config["lr"], config["momentum"], config["steps"], config["train_size"]) == \
        ("paper", 0.2, 0.0, 60, 55_000)
    assert "(55,000 train, 10,000 test" in out
    assert lenet300_example.main(["--resume", str(ckpt), "--steps", "120", "--no-progress"]) == 0
    assert "at step 60" in capsys.readouterr().out and int(np.load(ckpt)["step"]) == 120
    with pytest.raises(ValueError, match=r"--recipe default \(the checkpoint's run has paper\)"):
        lenet300_example.main(["--resume", str(ckpt), "--recipe", "default"])


# ---- table (c): networks by factor f -----------------------------------------------------------
def test_lenet300_by_factor_shapes_and_densities(rng):
    def hidden(model):
        return [(l.shape, l.nnz / (l.shape[0] * l.shape[1]), type(l)) for l in model.weight_layers()]

    narrow = hidden(lenet300("random", rng, factor=0.1))
    assert [s for s, _, _ in narrow] == [(300, 784), (100, 300), (10, 100)]
    assert narrow[0][1] == pytest.approx(0.1, rel=0.05) and narrow[1][1] == pytest.approx(0.1, rel=0.15)
    assert narrow[2][1] == 1 and narrow[2][2] is Linear  # logits dense
    wide = hidden(lenet300("random", rng, factor=10))
    assert [s for s, _, _ in wide] == [(3000, 784), (100, 3000), (10, 100)]
    assert wide[0][1] == pytest.approx(0.1, rel=0.02) and wide[1][1] == pytest.approx(0.1, rel=0.05)
    assert all(t is Linear for _, _, t in hidden(lenet300("random", rng, factor=1)))
    # the RadiX-Nets at f = 0.1 and 10 are the presets: same widths, density 0.1 exactly
    for preset, width in (("radix", 300), ("radix-wide", 3000)):
        masks = topology.PRESETS[preset]()
        assert [m.shape for m in masks] == [(width, 784), (100, width)]
        assert [m.nnz / (m.shape[0] * m.shape[1]) for m in masks] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="factor applies to the 'random' topology"):
        lenet300("radix", rng, factor=2)


def test_lenet5_by_factor_scales_conv2_and_fc1(rng):
    model = lenet5("mnist", "random", rng, factor=2)
    conv1, conv2, fc1, fc2 = model.weight_layers()
    assert isinstance(conv1, Conv2d) and isinstance(fc2, Linear)  # conv1 and the logits dense
    assert conv2.shape == (100, 20 * 25) and fc1.shape == (384, 100 * 7 * 7)
    assert conv2.pattern.density == pytest.approx(0.5, rel=0.05) and fc1.pattern.density == pytest.approx(0.5, rel=0.02)
    narrow = lenet5("mnist", "random", rng, factor=0.05)
    assert narrow.weight_layers()[1].shape == (50, 500)
    assert narrow.weight_layers()[2].pattern.density == pytest.approx(0.05, rel=0.05)
    assert model.forward(rng.random((784, 3), dtype=np.float32)).shape == (10, 3)
    assert all(not isinstance(l, SparseLinear) for l in lenet5("mnist", "random", rng, factor=1).weight_layers())


# ---- prune_retrain.py on CIFAR-10's crops (tiny fake images; the real ones may be absent) ------
def test_cifar_runs_redraw_their_crops(rng):
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    arrays = prune_retrain.CroppedData(images, rng.integers(0, 10, 40), augment.center_crops(test),
                                       rng.integers(0, 10, 10))
    args = vars(prune_retrain.parse_args(["--model", "lenet5-cifar10", "--recipe", "paper", "--steps", "8",
                                          "--batch-size", "10"]))
    cfg = prune_retrain.study_config(args, len(images))
    model = prune_retrain.build(cfg, np.random.default_rng(0))
    summary, _ = prune_retrain.train(model, arrays, cfg, seed=0)
    assert summary["steps"] == 8 and np.all(np.isfinite(arrays.x_train)) and arrays.x_train.std() > 0.5


def test_retraining_on_a_mask_that_pruning_emptied(rng):
    """One global threshold can take every weight of a layer (it did: LeNet-5 at 0.99 after a
    collapsed dense run, He init, seed 2, lost all of fc1). Retraining then trains a network
    that passes on only that layer's biases, and says so, instead of stopping the whole table."""
    images = rng.integers(0, 256, (40, 784), dtype=np.uint8)
    arrays = ArrayData(images, rng.integers(0, 10, 40), images[:10], rng.integers(0, 10, 10),
                       np.full(784, 1 / 255, np.float32), np.zeros(784, np.float32))
    args = vars(prune_retrain.parse_args(["--model", "lenet300", "--recipe", "paper", "--steps", "4",
                                          "--batch-size", "10", "--no-rewind"]))
    cfg = prune_retrain.study_config(args, len(images))
    masks = pruning.model_masks(prune_retrain.build(cfg, np.random.default_rng(0)))
    masks[0] = masks[0] * False  # fc1: every connection pruned
    said = []
    (rec,) = prune_retrain.retrain(masks, 0.99, "one-time", 0, arrays, cfg, None, said.append)
    assert rec["empty_layers"] == ["fc1"] and rec["nnz"] == masks[1].nnz + masks[2].nnz
    assert "pruning left fc1 with no connections" in said[0] and 0 <= rec["test_acc"] <= 1
    with pytest.raises(ValueError, match="no connections"):  # a model built by hand still refuses it
        lenet300("dense", rng, masks=masks)


# ---- examples/reproduce.py ------------------------------------------------------------------
REQUIRED = {"table", "model", "dataset", "recipe", "stage", "seed", "test_acc"}


def test_reproduce_quick_writes_tables_and_skips_finished_runs(tmp_path, capsys, real_data):
    out = tmp_path / "paper"
    argv = ["--table", "a", "c", "--models", "lenet300", "--recipe", "paper", "--quick", "--out", str(out),
            "--json", str(tmp_path / "all.json")]
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 already in" in printed and "ETA" in printed
    md = (out / "table_a.md").read_text()
    assert "| LeNet-300-100 | 0.9 | 95.32 |" in md and "ours, paper recipe (%)" in md
    assert "| LeNet-300-100 | radix | 10 | 93.98 |" in (out / "table_c.md").read_text()
    records = json.load(open(out / "table_a.json"))
    assert len(records) == 9  # sparsity 0 (the dense run) and 8 pruned
    for r in records:
        assert REQUIRED <= set(r) and ("method" in r or "topology" in r) and "sparsity" in r
        assert r["table"] == "a" and r["recipe"] == "paper" and 0 <= r["test_acc"] <= 1
    c = json.load(open(out / "table_c.json"))
    assert {r["f"] for r in c if "f" in r} == {0.01, 0.05, 0.1, 0.5, 2, 10, 100}
    assert all(REQUIRED <= set(r) and "topology" in r for r in c if r["run"] != "dense")
    assert len(json.load(open(tmp_path / "all.json"))) == len(records) + len(c)
    assert (out / "table_a.csv").read_text().startswith("model,sparsity,paper_2019,paper_mean")
    if reproduce.plot_lib() is not None or os.environ.get("CI"):  # CI installs the plot extra: there it must run
        assert (out / "table_a.png").stat().st_size > 1000 and (out / "table_c.png").exists()

    # rerun: every run is in the store, nothing trains; a lost run (killed) is redone alone
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert reproduce.main(argv) == 0
    assert "0 to do" in capsys.readouterr().out
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    last = json.loads(lines[-1])["key"]
    (out / "runs.jsonl").write_text("\n".join(l for l in lines if json.loads(l)["key"] != last) + "\n")
    # --report-only trains nothing: the tables come from the store, the missing run's cell says so
    before = (out / "runs.jsonl").read_text()
    assert reproduce.main(argv + ["--report-only"]) == 0
    assert "1 to do (not now: --report-only)" in capsys.readouterr().out
    assert (out / "runs.jsonl").read_text() == before
    assert "| LeNet-300-100 | radix | 10 | 93.98 | – |" in (out / "table_c.md").read_text()
    assert reproduce.main(argv) == 0
    assert "1 to do" in capsys.readouterr().out


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(tmp_path, capsys, real_data,
                                                                              monkeypatch):
    """Runs take up to an hour each: one killed part-way (here: an exception after the first
    epoch's checkpoint, in the dense training of table (a)) resumes from its last epoch end when
    the command is run again, and stores exactly the records of a run never stopped."""
    argv = ["--table", "a", "--models", "lenet300", "--recipe", "paper", "--quick", "--seeds", "1"]
    assert reproduce.main(argv + ["--out", str(tmp_path / "straight")]) == 0
    real_fit = reproduce.prune_retrain.fit

    class Killed(Exception):
        pass

    class KillAt:
        def __init__(self, step):
            self.step = step

        def on_step_end(self, step, model, optimizer):
            if step == self.step:
                raise Killed

    def fit_then_killed(model, data, *args, **kw):
        spe = -(-len(data.x_train) // kw["batch_size"])  # steps per epoch: killed 2 steps after the first end
        return real_fit(model, data, *args, **{**kw, "callbacks": [*kw["callbacks"], KillAt(spe + 2)]})

    out = tmp_path / "killed"
    monkeypatch.setattr(reproduce.prune_retrain, "fit", fit_then_killed)
    with pytest.raises(Killed):
        reproduce.main(argv + ["--out", str(out)])
    assert len(list((out / "models").glob("*.checkpoint-1.npz"))) == 1
    assert not (out / "runs.jsonl").exists()
    resumed = []

    def fit_seen(*args, **kw):
        resumed.append(kw["resume"])
        return real_fit(*args, **kw)

    monkeypatch.setattr(reproduce.prune_retrain, "fit", fit_seen)
    capsys.readouterr()
    assert reproduce.main(argv + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resuming lenet300 paper dense seed 0 from" in printed, printed
    assert len(resumed) == 1 and resumed[0].endswith(".checkpoint-1.npz")  # it continued, not restarted
    assert not list((out / "models").glob("*.checkpoint*"))  # done: removed

    def stored(path):
        return sorted((r["key"], r["stage"], r["sparsity"], r["test_acc"], r["nnz"])
                      for r in map(json.loads, open(path / "runs.jsonl")))

    assert stored(out) == stored(tmp_path / "straight")  # 9 records: the dense run and 8 prunings
    (dense,) = [r for r in map(json.loads, open(out / "runs.jsonl")) if r["run"] == "dense"]
    assert len(dense["resumed_from_steps"]) == 1 and dense["resumed_from_steps"][0] > 0  # its seconds are partial


def test_reproduce_run_keys_follow_the_full_configuration(tmp_path, real_data):
    args = reproduce.parse_args(["--table", "b", "--quick", "--out", str(tmp_path)])
    study = reproduce.Study(args)
    paper, default = study.cfg("lenet300", "paper"), study.cfg("lenet300", "default")
    momentum = study.cfg("lenet300", "paper", ("--momentum", "0.9"))
    keys = {reproduce.run_key("dense", c, 0) for c in (paper, default, momentum)}
    assert len(keys) == 3
    assert reproduce.run_key("dense", paper, 0) != reproduce.run_key("dense", paper, 1)
    assert reproduce.run_key("one-time", paper, 0, sparsity=0.5) != reproduce.run_key("one-time", paper, 0, sparsity=0.9)
    assert reproduce.run_key("dense", dict(paper, json="x.json", verbose=True), 0) == reproduce.run_key("dense", paper, 0)


def test_store_sees_runs_another_invocation_stored(tmp_path):
    # Two invocations fill one store (one per recipe, both with --ablation): each re-reads it
    # before a run, so a run the other finished meanwhile is skipped, not trained twice.
    mine, theirs = reproduce.Store(str(tmp_path)), reproduce.Store(str(tmp_path))
    theirs.add("k1", [{"stage": "trained", "test_acc": 0.9}])
    assert "k1" not in mine
    with open(mine.path, "a") as f:
        f.write('{"key": "k2", "stage": "pru')  # a line cut short by a kill is ignored
    mine.refresh()
    assert "k1" in mine and mine.by_key["k1"][0]["test_acc"] == 0.9 and "k2" not in mine
    mine.add("k3", [{"stage": "trained", "test_acc": 0.5}])
    mine.refresh()
    assert mine.by_key["k3"] == [{"stage": "trained", "test_acc": 0.5, "key": "k3"}]
    # the run stored after the cut line starts a line of its own, so a fresh read finds it
    assert reproduce.Store(str(tmp_path)).by_key["k3"] == mine.by_key["k3"]


def test_a_run_another_live_invocation_trains_is_left_to_it(tmp_path, capsys, real_data):
    # Both recipes' invocations share the ablation's runs: a run claimed by a live process
    # is skipped (not trained twice at once); a claim left by a dead process is taken over.
    path = str(tmp_path / "k.claim")
    assert reproduce.claim(path) is None  # taken
    assert reproduce.claim(path) is None  # ours already
    reproduce.release(path)
    assert not os.path.exists(path)
    import socket
    import subprocess
    import sys

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    held = f"{sleeper.pid} {reproduce._start_time(sleeper.pid)} {socket.gethostname()}"
    try:
        with open(path, "w") as f:  # its id, but another start time: a process that reused the id
            f.write(f"{sleeper.pid} 1 {socket.gethostname()}")
        assert reproduce.claim(path) is None  # stale: taken over
        reproduce.release(path)
        with open(path, "w") as f:  # an older format ("pid host"): stale, not held forever
            f.write(f"{sleeper.pid} {socket.gethostname()}")
        assert reproduce.claim(path) is None
        reproduce.release(path)
        with open(path, "w") as f:
            f.write(held)
        assert reproduce.claim(path) == sleeper.pid
        reproduce.release(path)  # not ours: kept
        assert os.path.exists(path)

        out = tmp_path / "paper"
        argv = ["--table", "a", "--models", "lenet300", "--recipe", "paper", "--quick", "--seeds", "1",
                "--out", str(out)]
        args = reproduce.parse_args(argv)
        study = reproduce.Study(args)
        rows = reproduce.table_rows(study, "a")
        (dense_key,) = [run[0] for run in reproduce.needed_runs(study, rows, [0]) if run[1] == "dense"]
        os.makedirs(study.models_dir)
        with open(study.checkpoints(dense_key) + ".claim", "w") as f:
            f.write(held)
        capsys.readouterr()
        assert reproduce.main(argv) == 0
        printed = capsys.readouterr().out
        # the dense run is left to its holder, and so is the pruning run that starts from it
        assert f"dense seed 0: it is being trained by process {sleeper.pid}: left to it" in printed, printed
        assert f"prune seed 0: its dense model is being trained by process {sleeper.pid}" in printed, printed
        assert "2 runs were being trained by another invocation" in printed
        assert not os.path.exists(out / "runs.jsonl")
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone: the claim is stale, the next invocation takes the run over
    assert reproduce.claim(path) is None
    assert open(path).read().split()[0] == str(os.getpid())
    reproduce.release(path)


def test_ablation_shows_the_dense_start_of_the_one_time_cells_without_training_more(tmp_path, real_data):
    """The ablation's first rows: the dense model under each factor, the one the one-time cells
    prune (LeNet-5's paper-recipe dense model collapses on one seed too). They are runs the
    one-time cells need anyway: no run is added."""
    args = reproduce.parse_args(["--ablation", "--models", "lenet300", "lenet5", "--out", str(tmp_path)])
    study = reproduce.Study(args)
    rows = reproduce.table_rows(study, "ablation")
    dense = [r for r in rows if "dense" in r[0][0]]
    assert [r[0] for r in dense[:2]] == [("LeNet-300-100 dense (the one-time runs' start)", "none (paper recipe)"),
                                         ("LeNet-300-100 dense (the one-time runs' start)",
                                          "init: He by actual fan-in, biases 0")]
    assert len(dense) == 2 * len(reproduce.ABLATION_FACTORS)
    assert {r[1] for r in dense} == {97.03, 99.25}  # the study's dense (orig) values
    assert all(r[2]["paper"].kind == "dense" and r[2]["paper"].stage == "trained" for r in dense)
    keys = lambda rs: {run[0] for run in reproduce.needed_runs(study, rs, [0, 1, 2])}  # noqa: E731
    assert keys(dense) <= keys([r for r in rows if "one-time" in r[0][0]])


def test_store_skips_lines_that_are_not_its_records(tmp_path, capsys):
    store = reproduce.Store(str(tmp_path))
    store.add("abc", [{"acc": 0.9}])
    with open(store.path, "a") as f:  # someone else's lines: a metrics line, a list, a cut line
        f.write(json.dumps({"kind": "epoch", "test_acc": 0.5}) + "\n[1, 2]\n{\"key\": \"d")
    again = reproduce.Store(str(tmp_path))
    assert "abc" in again and list(again.by_key) == ["abc"]
    assert "skipped 2 line(s) that are not records of runs" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "runs.jsonl").mkdir()
    with pytest.raises(ValueError, match="runs.jsonl: the store of runs is not a file"):
        reproduce.Store(str(tmp_path / "other"))
