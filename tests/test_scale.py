"""examples/scale.py: the scaling study's --quick run end to end, its records and its fit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "examples", "scale.py")
KEYS = {"impl", "topology", "widths", "neurons", "connections", "epochs", "seconds_per_epoch", "extrapolated",
        "peak_rss_bytes", "state_bytes", "test_acc", "dense_weight_bytes"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    # PyTorch dense is timed too where it is installed (never in CI: not a dependency)
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--no-progress",
                           "--json", str(out / "s.json"), "--plot", str(out / "s.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads((out / "s.json").read_text()), out


def test_every_run_has_the_documented_keys(quick):
    _, records, _ = quick
    runs = [r for r in records if r.get("kind") != "fit" and r["impl"] == "sparsenn"]
    assert {(r["topology"], r["widths"][0]) for r in runs} == {(t, w) for t in ("radix", "random") for w in (64, 256)}
    for r in runs:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["impl"] == "sparsenn" and r["neurons"] == sum(r["widths"]) == 2 * r["widths"][0]
        assert r["seconds_per_epoch"] > 0 and not r["extrapolated"] and 0 < r["test_acc"] <= 1
        assert r["dense_weight_bytes"] == 4 * (784 * r["widths"][0] + r["widths"][0] ** 2 + 10 * r["widths"][0])
        assert r["peak_rss_bytes"] > r["state_bytes"] > 4 * r["connections"]


def test_radix_and_random_have_the_same_connections(quick):
    _, records, _ = quick
    runs = [r for r in records if r.get("kind") != "fit" and r["impl"] == "sparsenn"]
    for w in (64, 256):
        radix, random = (next(r for r in runs if r["topology"] == t and r["widths"][0] == w) for t in ("radix", "random"))
        assert radix["connections"] == random["connections"]


def test_fit_records_give_the_least_squares_slope(quick):
    out, records, _ = quick
    for topology in ("radix", "random"):
        (fit,) = [r for r in records if r.get("kind") == "fit" and r["topology"] == topology]
        pts = [(r["connections"], r["seconds_per_epoch"]) for r in records
               if r.get("kind") != "fit" and r["impl"] == "sparsenn" and r["topology"] == topology]
        slope = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0]
        assert fit["slope"] == pytest.approx(slope)
        assert f"slope of log(s/epoch) vs log(connections), {topology}: {fit['slope']:.3f}" in out


def test_plot_written_when_matplotlib_is_installed(quick):
    out, _, path = quick
    if not os.environ.get("CI"):  # CI installs the plot extra (.ci/run): there it must run
        pytest.importorskip("matplotlib")
    assert (path / "s.png").stat().st_size > 10_000 and "plot:" in out


def test_dense_bytes_and_connection_estimates():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale", SCRIPT)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    assert scale.dense_weight_bytes(262144, 4) == 4 * (784 * 262144 + 3 * 262144 ** 2 + 262144 * 10)
    assert scale.dense_weight_bytes(262144, 4) > 8e11  # 825 GB: the dense twin of the top model cannot be built
    assert scale.connections(1024, 4, 32) == 4 * 1024 * 32 + 1024 * 10


def test_torch_dense_records_where_torch_is_installed(quick):
    out, records, _ = quick
    torch = [r for r in records if r.get("impl") == "torch"]
    try:
        import torch as _  # noqa: F401
    except ImportError:
        assert not torch and "PyTorch not installed" in out
        return
    assert {r["widths"][0] for r in torch} == {64, 256}
    assert all(r["extrapolated"] and r["test_acc"] is None and r["topology"] == "dense" for r in torch)


def test_torch_runs_in_a_child_with_the_users_thread_settings(monkeypatch):
    """PyTorch's OpenMP runtime reads GOMP_SPINCOUNT as it loads: its child must not inherit the
    value sparsenn set for Numba's (the dense epoch it times would be slower than its users')."""
    import importlib.util

    from sparsenn import runtime

    spec = importlib.util.spec_from_file_location("scale_example", SCRIPT)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    seen = []

    def fake_run(argv, **kw):
        seen.append(kw.get("env"))
        return subprocess.CompletedProcess(argv, 0, stdout='{"impl": "x"}\n')

    monkeypatch.setattr(scale.subprocess, "run", fake_run)
    monkeypatch.setitem(runtime._state, "set_env", ["GOMP_SPINCOUNT"])
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")
    assert scale.run_in_child({"impl": "torch", "width": 64}) == {"impl": "x"}
    assert scale.run_in_child({"impl": "sparsenn", "width": 64, "topology": "radix"}) == {"impl": "x"}
    torch_env, sparsenn_env = seen
    assert "GOMP_SPINCOUNT" not in torch_env and torch_env["SPARSENN_THREAD_CONFIG"] == "0"
    assert sparsenn_env is None  # inherits everything, as before


def test_profile_step_times_every_phase():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "profile_step.py"), "--width", "1024",
                           "--depth", "2", "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "radix 2 x 1,024, fan-in 32: 1 rank(s)" in out and "100 images per rank" in out
    for phase in ("forward", "backward", "exchange", "optimiser", "step"):
        assert f" {phase} " in out


def test_profile_step_layers_gives_every_layer_and_kernel_call():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "profile_step.py"), "--width", "1024",
                           "--depth", "2", "--steps", "2", "--layers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {" ".join(line.split()[:-1]): float(line.split()[-1]) for line in proc.stdout.splitlines()
            if line.startswith("  ") and line.split()[-1].replace(".", "").isdigit()}
    # 784 -> fc1 -> relu -> fc2 -> relu -> fc3 (dense logits): five layers, each both ways
    for i, name in enumerate(["fc1", "relu", "fc2", "relu", "fc3"]):
        assert f"{i} {name} forward" in rows and f"{i} {name} backward" in rows
    for call in ("spmm", "spmm_t", "sddmm", "sum_batch", "relu", "relu_backward", "matmul"):
        assert rows[f"calls: {call}"] > 0


@pytest.mark.parametrize("argv, match", [
    (["--widths", "1000", "--fan-in", "7"], "radix model of width 1,000: fan_in = 7 gives the hidden layers"),
    (["--widths", "100000000", "--depth", "2", "--fan-in", "8"], "int32 CSR indices"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
])
def test_bad_settings_and_unbuildable_models_are_refused_before_any_training(argv, match):
    """Settings, and every model of the study, are checked first: a clear error and exit
    status 2, no traceback, and no run started (no progress bar, no table)."""
    proc = subprocess.run([sys.executable, SCRIPT, "--no-torch", "--no-progress", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "scale.py: error: " in proc.stderr and match in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "s/epoch" not in proc.stdout


def test_a_records_file_that_cannot_be_written_is_an_error_naming_the_flag(tmp_path, monkeypatch, capsys):
    """--json is checked before the study starts, but a write can still fail later (a full disk,
    /proc as root): the study stops with an error naming --json and exit status 2, not a
    traceback."""
    import errno
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale_example", SCRIPT)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    record = dict(impl="sparsenn", topology="radix", widths=[64, 64], connections=7424, seconds_per_epoch=0.4,
                  extrapolated=False, peak_rss_bytes=1 << 28, test_acc=0.75)
    monkeypatch.setattr(scale, "run_in_child", lambda cfg: dict(record))  # no model trained

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(scale.os, "replace", full_disk)
    monkeypatch.setattr(sys, "argv", ["scale.py", "--quick", "--no-torch", "--json", str(tmp_path / "s.json")])
    assert scale.run() == 2
    err = capsys.readouterr().err
    assert f"error: --json {tmp_path / 's.json'}: cannot write the records (No space left on device)" in err, err
