"""Data-parallel training over MPI: the same run as one process, and faults that stop every rank.

These start ``mpiexec -n 2`` (the ``mpi`` extra: mpi4py and MPICH); CI installs it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from sparsenn import distributed
from tests.conftest import REPO

# the mpich wheel puts mpiexec beside the interpreter, which need not be on PATH (or rehashed)
_BESIDE = os.path.join(os.path.dirname(sys.executable), "mpiexec")
MPIEXEC = _BESIDE if os.path.exists(_BESIDE) else shutil.which("mpiexec")
# CI installs the mpi extra (.ci/run), so there these tests must run, never skip
needs_mpi = pytest.mark.skipif(MPIEXEC is None and not os.environ.get("CI"), reason="no mpiexec: pip install -e '.[mpi]'")


def env():
    root = os.environ.get("SPARSENN_DATA") or os.path.join(REPO, "..", "shared", "datasets")
    e = {**os.environ, "SPARSENN_DATA": os.path.abspath(os.path.join(REPO, root)), "PYTHONPATH": REPO}
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        e.pop(var, None)
    return e


def mpirun(*args, n=2, timeout=300, cwd=None, extra_env=None):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**env(), **(extra_env or {})}, cwd=cwd)


class FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_the_batch_split_covers_the_global_batch_once():
    from tests.test_train import small_model

    idx = np.arange(101)
    for size in (1, 2, 3, 7):
        parts = [distributed.DataParallel(FakeComm(r, size), small_model()).shard(idx) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts), idx)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_log_says_when_a_batch_splits_into_partial_vectors():
    """Units of 16 images (one AVX-512 register): 2 ranks of 50 pay 4 + 4, one process of 100 pays 7."""
    note = distributed.batch_split_note(100, 2)
    assert "each rank computes 50 of the 100 images" in note
    assert "the 2 ranks pay 8 units where one process pays 7 (1.14x" in note
    assert "multiple of 32 (96 or 128)" in note
    assert "3 ranks pay 15 units where one process pays 13 " in distributed.batch_split_note(200, 3)  # 66-67 each
    assert "each rank computes 66-67 of the 200 images" in distributed.batch_split_note(200, 3)
    assert "multiple of 48 (192 or 240)" in distributed.batch_split_note(200, 3)
    assert "4 ranks pay 8 units where one process pays 7" in distributed.batch_split_note(100, 4)  # 25 each
    assert "2 ranks pay 10 units where one process pays 9" in distributed.batch_split_note(129, 2)  # 64 and 65
    for batch, size in ((128, 2), (96, 2), (100, 1), (64, 4), (30, 2), (128, 4)):
        assert distributed.batch_split_note(batch, size) is None, (batch, size)  # whole units, or under 16 per rank


def test_gradients_live_in_one_buffer():
    from tests.test_train import small_model

    model = small_model()
    dp = distributed.DataParallel(FakeComm(0, 1), model)
    assert dp.flat.size == sum(p.value.size for p in model.parameters()) + 1  # and the loss
    assert dp.bytes_per_step == 4 * dp.flat.size
    for p in model.parameters():
        assert p.grad.base is dp.flat


def test_launched_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(RuntimeError, match=r"started by mpiexec with 2 processes, but mpi4py is not installed: "
                                           r"pip install -e \"\.\[mpi\]\""):
        distributed.world()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert distributed.world() is None


@needs_mpi
def test_two_ranks_train_the_same_network_as_one_process(tmp_path):
    """LeNet-300-100 radix, 2 epochs, seed 0, global batch 100: mpiexec -n 2 against 1 process."""
    script = os.path.join(REPO, "examples", "lenet300.py")
    common = ["--topology", "radix", "--epochs", "2", "--seed", "0", "--no-progress"]
    one = subprocess.run([sys.executable, script, *common, "--save", tmp_path / "one.npz", "--metrics",
                          tmp_path / "one.jsonl"], capture_output=True, text=True, timeout=300, env=env())
    assert one.returncode == 0, one.stderr
    two = mpirun(script, *common, "--save", tmp_path / "two.npz", "--metrics", tmp_path / "two.jsonl")
    assert two.returncode == 0, two.stderr
    assert "data-parallel over 2 ranks" in two.stdout
    assert "note: each rank computes 50 of the 100 images" in two.stdout  # 8 units of 16 where 1 process pays 7
    assert "gradients summed in shared memory, 111,724 bytes" in two.stdout
    assert "one copy of the weights" not in two.stdout  # each rank keeps its own (the default)
    assert two.stdout.count("configuration:") == 1  # rank 0 alone speaks
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    worst = 0.0
    for key in a.files:
        if key.startswith("param."):
            scale = np.abs(a[key]).max()
            worst = max(worst, float(np.abs(a[key] - b[key]).max() / scale))
        elif key.startswith("pattern."):
            np.testing.assert_array_equal(a[key], b[key])
    # float32 rounding of sums taken in another order (two halves of 50 columns, not 100),
    # compounded over 1,200 steps: measured 9.3e-5; a wrong average is off by far more
    assert 0 < worst < 1e-3, worst
    acc = [json.loads(l)["test_acc"] for l in open(tmp_path / "one.jsonl")]
    acc2 = [json.loads(l)["test_acc"] for l in open(tmp_path / "two.jsonl")]
    assert len(acc) == len(acc2) == 2 and abs(acc[-1] - acc2[-1]) <= 0.0005


@needs_mpi
def test_a_run_resumes_on_another_number_of_ranks(tmp_path):
    """The batch split depends on (seed, epoch, step, rank count) only and the checkpoint holds
    the whole state, so a run stopped at step 150 (the middle of an epoch) on 2 ranks and
    resumed for 20 steps on 1 process trains what its resumption on 2 ranks trains, to float32
    rounding; and the other way round. (Not compared with a run that never stopped: at a
    constant learning rate, float32 rounding of the 2 ranks' sums grows to 1e-2 over a few
    hundred steps, as between any two orders of the same sums, while over 20 steps it stays
    near 1e-7. A resumed run that took other batches moves by about the 20 steps' own change.)"""
    script = os.path.join(REPO, "examples", "lenet300.py")
    common = ["--topology", "radix", "--seed", "0", "--schedule", "step", "--no-progress"]

    def train(ranks, *args):
        if ranks == 1:
            proc = subprocess.run([sys.executable, script, *common, *map(str, args)], capture_output=True, text=True,
                                  timeout=300, env=env())
        else:
            proc = mpirun(script, *common, *args)
        assert proc.returncode == 0, proc.stderr
        assert ("data-parallel over 2 ranks" in proc.stdout) == (ranks == 2)

    def rel(a, b):
        a, b = np.load(tmp_path / a), np.load(tmp_path / b)
        return max(float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a.files if k.startswith("param."))

    for first in (2, 1):
        stopped = f"stopped_on_{first}.npz"
        train(first, "--steps", 150, "--save", tmp_path / stopped)
        for ranks in (1, 2):
            train(ranks, "--resume", tmp_path / stopped, "--steps", 170, "--save", tmp_path / f"{first}_then_{ranks}.npz")
        moved = rel(stopped, f"{first}_then_1.npz")
        apart = rel(f"{first}_then_1.npz", f"{first}_then_2.npz")
        # measured: moved 0.2, apart 1.3e-7 and 1.5e-7
        assert moved > 1e-2 and apart < 1e-4, (first, moved, apart)


@needs_mpi
def test_the_shared_memory_sum_and_the_allreduce_train_alike(tmp_path):
    """Ranks on one machine sum in a shared-memory window, each keeping its own weights (the
    default), or, with SPARSENN_SHARE_WEIGHTS=1, sharing one copy of them, unless a callback
    runs between steps; SPARSENN_SHM_REDUCE=0 (or ranks on several machines) takes one
    Allreduce. All four average the same gradients: float32 rounding apart."""
    runs = {}
    for how, flag, share, extra, says in (
            ("shared", "1", "1", [], "each rank updating 1/2 of it"),
            ("own weights", "1", "0", [], "summed in shared memory, 1,356 bytes"),
            ("callback", "1", "1", ["--noop-callback"], "summed in shared memory, 1,356 bytes"),
            ("allreduce", "0", "0", [], "one Allreduce of")):
        proc = mpirun("-m", "tests.mpi.worker", "--save", tmp_path / f"{how}.npz", *extra, cwd=REPO,
                      extra_env={"SPARSENN_SHM_REDUCE": flag, "SPARSENN_SHARE_WEIGHTS": share})
        assert proc.returncode == 0, proc.stderr
        assert says in proc.stdout, proc.stdout
        if how != "shared":
            assert "one copy of the weights" not in proc.stdout
        runs[how] = np.load(tmp_path / f"{how}.npz")
    for how in ("own weights", "callback", "allreduce"):
        for key in runs["shared"].files:
            a, b = runs["shared"][key], runs[how][key]
            assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), (how, key)


def test_the_shared_sum_kernel_matches_its_twin(rng):
    from sparsenn.kernels import weighted_sum_into, weighted_sum_into_ref

    bufs = tuple(rng.standard_normal(1001).astype(np.float32) for _ in range(3))
    want = tuple(b.copy() for b in bufs)
    mean = 0.25 * want[0].astype(np.float64) + 0.5 * want[1] + 0.25 * want[2]
    weights = np.array([0.25, 0.5, 0.25], np.float32)
    for lo, hi in ((0, 334), (334, 667), (667, 1001)):  # three ranks, each its slice
        weighted_sum_into(bufs, weights, lo, hi, bufs)
        weighted_sum_into_ref(want, weights, lo, hi, want)
    for b, w in zip(bufs, want):
        np.testing.assert_allclose(b, w, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b, mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(b, bufs[0])  # every buffer holds the same sum


def test_the_shared_sum_into_one_buffer_leaves_the_others(rng):
    from sparsenn.kernels import weighted_sum_into, weighted_sum_into_ref

    bufs = tuple(rng.standard_normal(100).astype(np.float32) for _ in range(2))
    before = tuple(b.copy() for b in bufs)
    weights = np.array([0.5, 0.5], np.float32)
    weighted_sum_into(bufs, weights, 50, 100, (bufs[1],))  # rank 1's slice, into rank 1's buffer only
    np.testing.assert_array_equal(bufs[0], before[0])
    np.testing.assert_array_equal(bufs[1][:50], before[1][:50])
    np.testing.assert_allclose(bufs[1][50:], 0.5 * before[0][50:] + 0.5 * before[1][50:], rtol=1e-6)
    want = tuple(b.copy() for b in before)
    weighted_sum_into_ref(want, weights, 50, 100, (want[1],))
    np.testing.assert_allclose(bufs[1], want[1], rtol=1e-6)


@needs_mpi
def test_a_rank_that_raises_stops_every_rank():
    t0 = time.time()
    proc = mpirun("-m", "tests.mpi.worker", "--fault", "raise", timeout=120, cwd=REPO)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "rank 1 of 2 failed: RuntimeError: injected failure at step 5; stopping every rank" in proc.stderr


@needs_mpi
def test_a_killed_rank_ends_the_job_and_is_named():
    t0 = time.time()
    proc = mpirun("-m", "tests.mpi.worker", "--fault", "kill", timeout=120, cwd=REPO)
    assert proc.returncode != 0 and time.time() - t0 < 60
    pids = dict(re.findall(r"rank (\d+) = pid (\d+)", proc.stdout))
    assert f"error: MPI rank 1 of 2 (pid {pids['1']} on " in proc.stderr, (proc.stdout, proc.stderr)
    assert "died from signal 9 (SIGKILL)" in proc.stderr
    deadline = time.time() + 10  # no rank left behind (a dead one may linger a moment as a zombie)
    while any(_running(pid) for pid in pids.values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in pids.values())


def _running(pid) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


@needs_mpi
def test_ranks_with_different_models_are_refused():
    proc = mpirun("-m", "tests.mpi.worker", "--seed-by-rank", timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "at the start of training: the ranks' models differ (ranks [0] have" in proc.stderr


@needs_mpi
def test_pruning_study_runs_data_parallel(tmp_path):
    """Gradual pruning turns layers into CSR mid-run: the gradient buffer follows, the ranks agree."""
    script = os.path.join(REPO, "examples", "prune_retrain.py")
    one = subprocess.run([sys.executable, script, "--quick", "--json", tmp_path / "one.json"], capture_output=True,
                         text=True, timeout=300, env=env())
    two = mpirun(script, "--quick", "--json", tmp_path / "two.json")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert [(r["method"], r["stage"], r["sparsity"], r["nnz"]) for r in a] == \
        [(r["method"], r["stage"], r["sparsity"], r["nnz"]) for r in b]
    assert max(abs(r["test_acc"] - s["test_acc"]) for r, s in zip(a, b)) <= 0.01


@needs_mpi
def test_graph_challenge_split_over_ranks_finds_the_same_categories(tmp_path):
    """The images split over 2 ranks: the categories are checked against float64 SciPy on rank
    0, as in one process."""
    script = os.path.join(REPO, "examples", "graph_challenge.py")
    proc = mpirun(script, "--images", 1500, "--block", 64, "--peers", "none", "--no-progress",
                  "--json", tmp_path / "gc.json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "gc.json").read_text())[0]
    assert rec["categories_match"] and rec["ranks"] == 2 and len(rec["rank_seconds"]) == 2, rec


@needs_mpi
def test_profile_step_under_mpi_gives_each_rank_its_share_of_the_batch():
    proc = mpirun(os.path.join(REPO, "examples", "profile_step.py"), "--width", 1024, "--depth", 2, "--steps", 2)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"2 rank\(s\) x \d+ thread\(s\), 50 images per rank", proc.stdout), proc.stdout


def test_supervise_does_nothing_in_one_process_or_when_turned_off(monkeypatch):
    def no_fork():
        raise AssertionError("supervise() forked")

    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.delenv("PMI_SIZE", raising=False)
    distributed.supervise()  # not under mpiexec
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("SPARSENN_NO_SUPERVISOR", "1")
    distributed.supervise()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the supervisor is Linux-only")
@pytest.mark.parametrize("how, status", [("kill", 128 + 9), ("exit", 3)])
def test_the_supervisor_names_a_rank_killed_by_a_signal_and_passes_exit_statuses_on(how, status):
    """No MPI needed: a process that believes it is rank 1 of 2 (the launcher's variables) runs
    supervised, then kills itself or exits; its parent reports and exits as mpiexec expects."""
    code = ("import os, signal, sys\nfrom sparsenn import distributed\ndistributed.supervise()\n"
            "print('child', os.getpid(), flush=True)\n"
            + ("os.kill(os.getpid(), signal.SIGKILL)\n" if how == "kill" else "sys.exit(3)\n"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env(), "PMI_SIZE": "2", "PMI_RANK": "1"})
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    child = re.search(r"child (\d+)", proc.stdout).group(1)
    if how == "kill":
        assert f"error: MPI rank 1 of 2 (pid {child} on " in proc.stderr
        assert "died from signal 9 (SIGKILL)" in proc.stderr
    else:
        assert "died" not in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the supervisor is Linux-only")
def test_a_supervised_rank_dies_with_its_parent():
    """mpiexec ends a job by killing the processes it started (the supervisors): the ranks they
    watch must not live on, spinning in a collective."""
    code = ("import os, time\nfrom sparsenn import distributed\ndistributed.supervise()\n"
            "print(os.getpid(), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**env(), "PMI_SIZE": "2", "PMI_RANK": "0"})
    child = int(proc.stdout.readline())
    assert child != proc.pid and _running(child)
    proc.kill()  # the supervisor, as mpiexec's cleanup does
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while _running(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(child)
