"""The example scripts as a user runs them: subprocesses, exit codes, and what they print.

Each test of a bad input checks the message a user sees and that no traceback reaches them.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO

EXAMPLES = os.path.join(REPO, "examples")


def data_env():
    root = os.environ.get("SPARSENN_DATA") or os.path.join(REPO, "..", "shared", "datasets")
    return {**os.environ, "SPARSENN_DATA": os.path.abspath(os.path.join(REPO, root))}


def run(script, *args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *map(str, args)], cwd=cwd,
                          env=data_env(), capture_output=True, text=True, timeout=timeout)


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")))
def test_every_example_takes_help(script):
    t0 = time.perf_counter()
    proc = no_traceback(run(script, "--help", timeout=60))
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), (proc.stdout, proc.stderr)
    assert time.perf_counter() - t0 < 30  # prints and exits: it does not run the benchmark


def metrics_without_timing(path):
    timing = {"epoch_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in open(path)]


def test_readme_resume_command_continues_a_killed_run_exactly(tmp_path):
    """README: train with --save/--metrics, then `python examples/lenet300.py --resume runs/dense.npz`."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        (d / "runs").mkdir(parents=True)
    start = ["--topology", "dense", "--epochs", "4", "--metrics", "runs/dense.jsonl", "--save", "runs/dense.npz"]
    assert no_traceback(run("lenet300.py", *start, "--no-progress", cwd=straight)).returncode == 0

    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "lenet300.py"), *start, "--no-progress"],
                            cwd=killed, env=data_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "runs" / "dense.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # kill -9 in the third epoch
    proc.wait()
    step = int(np.load(killed / "runs" / "dense.npz")["step"])
    assert step in (600, 1200)

    resumed = no_traceback(run("lenet300.py", "--resume", "runs/dense.npz", cwd=killed))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from runs/dense.npz at step {step}" in resumed.stdout
    assert "resume: from the checkpoint: --epochs 4" in resumed.stdout
    assert metrics_without_timing(metrics) == metrics_without_timing(straight / "runs" / "dense.jsonl")
    a, b = np.load(straight / "runs" / "dense.npz"), np.load(killed / "runs" / "dense.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        if key != "config":  # which of the two commands wrote it (resume path, progress flag)
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert int(b["step"]) == 2400


def test_resume_refuses_flags_that_change_the_run_and_extends_on_epochs(tmp_path):
    first = run("lenet300.py", "--topology", "radix", "--epochs", "1", "--save", "c.npz", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    bad = no_traceback(run("lenet300.py", "--resume", "c.npz", "--lr", "0.1", "--topology", "dense", cwd=tmp_path))
    assert bad.returncode == 2
    assert ("error: these flags cannot change when resuming a run: --topology dense (the checkpoint's run has "
            "radix); --lr 0.1 (the checkpoint's run has 0.05)") in bad.stderr
    more = no_traceback(run("lenet300.py", "--resume", "c.npz", "--epochs", "2", "--no-progress", cwd=tmp_path))
    assert more.returncode == 0, more.stderr
    assert "resume: --epochs 2 replaces the checkpoint's 1" in more.stdout
    assert int(np.load(tmp_path / "c.npz")["step"]) == 1200  # it kept saving where it did


def test_lenet5_resume_takes_the_run_from_the_checkpoint(tmp_path):
    common = ["--limit", "200", "--no-progress"]
    first = run("lenet5.py", *common, "--epochs", "1", "--save", "c.npz", "--metrics", "m.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    bad = no_traceback(run("lenet5.py", "--resume", "c.npz", "--density", "0.5", cwd=tmp_path))
    assert bad.returncode == 2 and "--density 0.5 (the checkpoint's run has 0.1)" in bad.stderr
    more = no_traceback(run("lenet5.py", "--resume", "c.npz", "--epochs", "2", "--no-progress", cwd=tmp_path))
    assert more.returncode == 0, more.stderr
    assert [json.loads(l)["step"] for l in open(tmp_path / "m.jsonl")] == [2, 4]
    assert int(np.load(tmp_path / "c.npz")["step"]) == 4


@pytest.mark.parametrize("script,flag", [("lenet300.py", "--save"), ("lenet300.py", "--metrics"),
                                         ("lenet5.py", "--save"), ("prune_retrain.py", "--json"),
                                         ("prune_retrain.py", "--csv"), ("prune_retrain.py", "--speed"),
                                         ("bench_train.py", "--json"), ("bench_kernels.py", "--json")])
def test_an_output_path_that_is_a_directory_stops_before_any_work(tmp_path, script, flag):
    t0 = time.perf_counter()
    proc = no_traceback(run(script, flag, tmp_path, cwd=tmp_path, timeout=120))
    assert proc.returncode == 2
    assert f"{flag} {tmp_path}: is a directory; give a file name" in proc.stderr
    assert "epoch" not in proc.stdout and time.perf_counter() - t0 < 60


def test_save_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    proc = no_traceback(run("prune_retrain.py", "--save-dir", tmp_path / "f", cwd=tmp_path))
    assert proc.returncode == 2 and "--save-dir" in proc.stderr and "exists and is not a directory" in proc.stderr


@pytest.mark.parametrize("script", ["lenet300.py", "lenet5.py", "prune_retrain.py", "bench_lenet5.py"])
def test_negative_seed_names_the_flag(script):
    flag = "--first-seed" if script == "prune_retrain.py" else "--seed"
    proc = no_traceback(run(script, flag, "-1", timeout=60))
    assert proc.returncode == 2 and f"argument {flag}: must be a non-negative integer, got -1" in proc.stderr


def test_a_text_file_given_as_a_mask(tmp_path):
    (tmp_path / "m.npz").write_text("not a mask\n")
    proc = no_traceback(run("lenet300.py", "--mask", tmp_path / "m.npz", "--no-progress"))
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'm.npz'}: not a sparsenn mask file (not an .npz archive)" in proc.stderr
    assert "allow_pickle" not in proc.stderr


def test_a_learning_rate_far_too_high_stops_the_run(tmp_path):
    # radix-wide at lr 3: losses of 1e10-1e23 for a few steps, then every ReLU dead at ln(10)
    proc = no_traceback(run("lenet300.py", "--topology", "radix-wide", "--lr", "3", "--schedule", "constant",
                            "--epochs", "1", "--no-progress", cwd=tmp_path))
    assert proc.returncode == 1
    assert "error: training diverged: the loss exceeded 100 x the loss of guessing (2.3)" in proc.stderr
    assert "no checkpoint was written; try a lower learning rate" in proc.stderr


def test_divergence_names_the_last_checkpoint_written_before_it(tmp_path):
    proc = no_traceback(run("lenet300.py", "--lr", "1e6", "--save", "c.npz", "--save-every", "1", "--epochs", "1",
                            "--no-progress", cwd=tmp_path))
    assert proc.returncode == 1
    assert f"the last checkpoint written before it is {tmp_path / 'c.npz'}" in proc.stderr
    assert "resume from it with a lower learning rate" in proc.stderr


@pytest.mark.parametrize("script, args, match", [
    ("profile_step.py", ["--width", "1000", "--fan-in", "7"], "no first-layer radix r_0"),
    ("profile_step.py", ["--width", "100000000", "--depth", "2", "--fan-in", "8"], "int32 CSR indices"),
    ("bench_train.py", ["--epochs", "0"], "--epochs: must be a positive integer"),
    ("bench_train.py", ["--topologies", "lenet"], "invalid choice: 'lenet'"),
    ("bench_lenet5.py", ["--batch-size", "0"], "--batch-size: must be a positive integer"),
    ("bench_lenet5.py", ["--density", "1.5"], "--density must be in (0, 1)"),
])
def test_benchmark_scripts_refuse_bad_arguments_in_one_line(script, args, match):
    proc = no_traceback(run(script, *args, timeout=120))
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr


def test_bench_lenet5_times_every_part_of_a_convolution(tmp_path):
    """A short run of the LeNet-5 benchmark: its per-part breakdown reaches the dense
    convolution's im2col (a call into the backend) and products, and the sparse convolution's
    patch-by-patch passes, which it runs on the CPU at batch 100."""
    out = tmp_path / "bench.json"
    proc = no_traceback(run("bench_lenet5.py", "--topologies", "random", "--steps", "2", "--warmup", "1",
                            "--json", out, timeout=300))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())["quick"]["random"]
    conv1, conv2 = [row for row in rec["layers"] if "parts_ms" in row]
    assert (conv1["layer"], conv2["layer"]) == ("conv1", "conv2")
    names = {"im2col", "W@cols", "dW", "W^T dy", "col2im", "by patch", "bwd patch"}
    assert set(conv1["parts_ms"]) == set(conv2["parts_ms"]) == names
    # conv1 (dense, the first layer): im2col and two products, no input gradient, no col2im
    assert all(conv1["parts_ms"][k] > 0 for k in ("im2col", "W@cols", "dW"))
    assert conv1["parts_ms"]["W^T dy"] == conv1["parts_ms"]["col2im"] == 0
    # conv2 (sparse): patch by patch, so no patch matrix: the five parts of the other path are 0
    assert conv2["parts_ms"]["by patch"] > 0 and conv2["parts_ms"]["bwd patch"] > 0
    assert all(conv2["parts_ms"][k] == 0 for k in ("im2col", "W@cols", "dW", "W^T dy", "col2im"))


def test_seeds_study_stops_on_a_failed_run_with_one_error_and_keeps_what_finished(tmp_path):
    proc = no_traceback(run("lenet300_seeds.py", "--topologies", "dense", "--seeds", "0", "--out", tmp_path,
                            "--", "--epochs", "0", timeout=120))
    assert proc.returncode == 1
    assert "error: the run of dense seed 0 failed (exit status 2" in proc.stderr
    assert "argument --epochs: must be a positive integer" in proc.stderr  # the run's own error, passed through
    assert json.load(open(tmp_path / "summary.json"))["results"] == {}


@pytest.mark.parametrize("flag", ["--save", "--metrics", "--seed", "--topology"])
def test_seeds_study_refuses_flags_it_sets_for_each_run(tmp_path, flag):
    proc = no_traceback(run("lenet300_seeds.py", "--out", tmp_path, "--", flag, "x", timeout=60))
    assert proc.returncode == 2 and f"{flag} after '--': this script sets it for each run" in proc.stderr


def test_scaling_study_reports_a_broken_dataset_once(tmp_path):
    real = os.path.join(data_env()["SPARSENN_DATA"], "mnist")
    (tmp_path / "mnist").mkdir()
    for name in os.listdir(real):  # every file cut short
        with open(os.path.join(real, name), "rb") as f:
            (tmp_path / "mnist" / name).write_bytes(f.read(1000))
    proc = no_traceback(run("scale.py", "--quick", "--no-torch", "--data-dir", tmp_path, timeout=120))
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1, proc.stderr


def test_topology_save_into_a_directory_is_refused_before_building(tmp_path):
    proc = no_traceback(subprocess.run([sys.executable, "-m", "sparsenn.topology", "radix", "--radices", "2,2",
                                        "--save", str(tmp_path)], capture_output=True, text=True, timeout=60))
    assert proc.returncode == 2 and "--save" in proc.stderr and "is a directory" in proc.stderr
    assert proc.stdout == ""  # nothing was built and described first
