"""Tests for sparsenn.topology's size limits: every generator estimates its memory and refuses,
before allocating, what int32 CSR indices or the machine cannot hold; slow builds show progress;
path counting skips stacks too deep to count; the command line turns all of it into one
`error:` line and exit code 2.

No test here allocates more than a few MB. Refusals of big requests run with a pretend-small
machine (`available_memory` monkeypatched), and the functions that would allocate are replaced
by ones that fail, so a missing check shows up as a failure instead of gigabytes. The
subprocess tests also cap the address space (RLIMIT_AS) for the same reason.
"""

import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from sparsenn import topology as T

from tests.conftest import REPO

MiB = 2**20
_LIMITED_AS = 2**30  # address-space cap of CLI subprocesses: a missing check dies, not swaps


@pytest.fixture
def machine(monkeypatch):
    """``machine(n_bytes)``: pretend that ``n_bytes`` of memory are available."""
    def pretend(n_bytes):
        monkeypatch.setattr(T, "available_memory", lambda: n_bytes, raising=False)
    return pretend


@pytest.fixture
def no_allocation(monkeypatch):
    """Make the generators' allocating steps fail, to prove a refusal came before them."""
    def fail(*args, **kwargs):
        raise AssertionError("the generator started allocating before refusing")
    for name in ("_radix_layer", "_radix_input_layer", "_random_rows", "_random_subsets",
                 "_subsets_into"):
        monkeypatch.setattr(T, name, fail)


def _cli(args, *, preamble=""):
    """Run ``python -m sparsenn.topology ARGS`` (optionally after ``preamble``, Python code run
    with ``T`` = sparsenn.topology) under a 1 GiB address-space cap; returns CompletedProcess."""
    code = ("import sys\nfrom sparsenn import topology as T\n" + preamble
            + "\nsys.exit(T.main(sys.argv[1:]))")
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (_LIMITED_AS, _LIMITED_AS))  # noqa: E731
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, preexec_fn=limit)


# --------------------------------------------------------------------------------------------
# available memory
# --------------------------------------------------------------------------------------------


def test_available_memory_reads_meminfo_and_falls_back(monkeypatch):
    avail = T.available_memory()
    if os.path.exists("/proc/meminfo"):
        total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
                     if line.startswith("MemTotal:"))
        assert isinstance(avail, int) and 0 < avail <= total

    def no_files(*args, **kwargs):  # no /proc, no cgroup files: os.sysconf must answer
        raise OSError("no such file")

    monkeypatch.setattr(T, "open", no_files, raising=False)
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        assert T.available_memory() == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------
# generators refuse before allocating
# --------------------------------------------------------------------------------------------


def test_radix_net_states_its_estimate_and_refuses_before_allocating(machine, no_allocation):
    # radix_net([[4096]]): N' = 4096, one layer of 4096 * 4096 = 16,777,216 connections.
    # kept  = 5 nnz + 4 (n_out + 1) + 2048 = 83,904,516 bytes
    # extra = 4 N' (one block of int32 row numbers) = 16,384 bytes
    # need  = 83,920,900 bytes = 80.0 MiB, the docstring's formula
    machine(64 * MiB)
    with pytest.raises(ValueError, match="available") as e:
        T.radix_net([[4096]])
    assert isinstance(e.value, T.TopologyTooLarge)
    msg = str(e.value)
    assert "about 80.0 MiB of memory (64.0 MiB available)" in msg
    assert "16,777,216 connections" in msg and "smaller radices" in msg and "smaller B" in msg
    machine(81 * MiB)  # just enough: the check lets it through (to the patched builder)
    with pytest.raises(AssertionError, match="started allocating"):
        T.radix_net([[4096]])


def test_radix_net_int32_refusal_also_states_memory(machine, no_allocation):
    machine(64 * MiB)
    with pytest.raises(T.TopologyTooLarge, match="int32") as e:
        T.radix_net([[2] * 16], B=[2**15] * 17)
    assert "PiB of memory (64.0 MiB available)" in str(e.value)  # 2**47 connections


def test_random_sparse_refuses_before_allocating(machine, no_allocation, rng):
    # 4000 x 4000 at density 0.5: 8,000,000 expected connections; from density 0.4 up every row
    # counts as drawn by complement, so one chunk of draws holds max(2**20, n_in) candidates:
    # kept 5 nnz + 4 (4000 + 1) + 2 KiB, extra 64 * 2**20 + 96 * 4000 + 48 * 4000 bytes.
    machine(64 * MiB)
    with pytest.raises(T.TopologyTooLarge, match="lower density") as e:
        T.random_sparse(4000, 4000, 0.5, rng)
    need = 5 * 8_000_000 + 4 * 4001 + 2048 + 64 * 2**20 + 144 * 4000
    assert f"about {need / MiB:.1f} MiB of memory (64.0 MiB available)" in str(e.value)


def test_xnet_refuses_before_allocating(machine, no_allocation, rng):
    machine(1 * MiB)
    with pytest.raises(T.TopologyTooLarge, match="lower in-degree") as e:
        T.xnet(20000, 1000, 100, rng)  # 2,000,000 connections, ~85 bytes each while drawing
    assert "2,000,000 connections" in str(e.value) and "(1.0 MiB available)" in str(e.value)


@pytest.mark.parametrize("build", [
    lambda rng: T.xnet(2**16, 2**16, 2**15 + 1, rng),  # 2**31 + 2**16 connections
    lambda rng: T.random_sparse(2**16, 2**16, 0.6, rng),  # ~2.6e9 expected connections
])
def test_int32_refusal_of_random_layers(build, machine, no_allocation, rng):
    machine(2**50)  # memory is no object: the int32 CSR indices still are
    with pytest.raises(T.TopologyTooLarge, match=r"int32 CSR indices allow \(2\*\*31 - 1\)"):
        build(rng)


@pytest.mark.parametrize("fixed_fan_in", [False, True])
def test_random_equivalent_checks_the_whole_stack_first(fixed_fan_in, machine, monkeypatch, rng):
    masks = T.radix_net([[32, 32]], B=[4, 4, 4])  # two 4096 x 4096 layers, 524,288 nnz each
    machine(8 * MiB)
    monkeypatch.setattr(T, "_random_rows", lambda *a: pytest.fail("drew before refusing"))
    with pytest.raises(T.TopologyTooLarge, match="2 layers with 1,048,576 connections"):
        T.random_equivalent(masks, rng, fixed_fan_in=fixed_fan_in)


def test_trim_refuses_when_the_trimmed_masks_do_not_fit(machine):
    masks = T.radix_net([[32, 32]], B=[4, 4, 4])
    machine(1 * MiB)
    with pytest.raises(T.TopologyTooLarge, match="trim to smaller widths"):
        T.trim(masks, [4096, 4000, 4096])
    machine(64 * MiB)
    assert [m.shape for m in T.trim(masks, [4096, 4000, 4096])] == [(4000, 4096), (4096, 4000)]


def test_describe_does_not_copy_canonical_masks():
    masks = T.radix_net([[2, 2, 2]])
    assert T._check_stack(masks)[0] is masks[0]  # describing must not double the memory
    dense = T._check_stack([np.eye(3)])[0]
    assert dense.dtype == bool and dense.nnz == 3


# --------------------------------------------------------------------------------------------
# progress and path-counting work
# --------------------------------------------------------------------------------------------


def test_slow_builds_show_per_layer_progress_on_stderr(monkeypatch, capsys, rng):
    T.radix_net([[2, 2, 2]])
    assert capsys.readouterr().err == ""  # quick builds stay quiet
    monkeypatch.setattr(T, "PROGRESS_DELAY_S", 0, raising=False)  # every build counts as slow
    T.radix_net([[2, 2, 2]])
    err = capsys.readouterr().err
    assert "radix_net" in err and "3/3" in err
    T.random_equivalent(T.radix_net([[2, 2]], progress=False), rng)
    err = capsys.readouterr().err
    assert "random_equivalent" in err and "radix_net" not in err


def test_path_stats_skips_stacks_beyond_max_work():
    # radix_net([[2, 2, 2]]): 3 layers of 16 connections, in-degree 2, so bits_k = 1, 2, 3 and
    # work = 3 * 2**15 + 16 * (1 + 1/64) + 16 * (1 + 2/64) + 16 * (1 + 3/64) = 98,353.5
    masks = T.radix_net([[2, 2, 2]])
    assert T.path_stats(masks, max_work=98_354)["min"] == 1
    stats = T.path_stats(masks, max_work=98_353)
    assert stats["min"] is None and stats["method"] == "skipped"
    assert "3 layers" in stats["note"] and "word additions > max_work" in stats["note"]
    assert T.describe(masks, max_work=98_353)["paths"]["min"] is None


def test_deep_stack_with_huge_path_counts_is_skipped_quickly():
    masks = T.radix_net([[2] * 6] * 200)  # 1200 layers: counts of ~1200 bits, cheap to count
    assert T.path_stats(masks)["min"] == 64**199
    t0 = time.perf_counter()  # but the work grows with layers x bits: 120,000 layers are skipped
    stats = T.path_stats(masks * 100)  # at least 1.8e10 word additions, about 30 s: skipped
    assert stats["min"] is None and "120,000 layers" in stats["note"]
    assert time.perf_counter() - t0 < 20


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _one_error_line(err):
    assert err.count("\n") == 1 and "error: " in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    # the commands of the issue that hit int32 CSR indices: refused on any machine
    (["xnet", "--widths", "100000000,100000000", "--in-degree", "100"],
     "layer 0 would be 100,000,000 x 100,000,000 with 10,000,000,000 connections"),
    (["random", "--widths", "100000,100000", "--density", "0.5"],
     "layer 0 would be 100,000 x 100,000 with 5,000,000,000 connections"),
])
def test_cli_refuses_layers_beyond_int32_in_a_subprocess(argv, expected):
    res = _cli(argv)
    assert res.returncode == 2, res.stderr
    err = _one_error_line(res.stderr)
    assert expected in err and "int32" in err and "GiB available" in err


def test_cli_refuses_radix_over_memory_in_a_subprocess():
    # 2 * (5 * 10**9 + 4 * (10**6 + 1) + 2048) kept + 4 * 1000 extra = 10,008,008,104 bytes
    res = _cli(["radix", "--radices", "1000,1000"],
               preamble="T.available_memory = lambda: 8 * 2**30")
    assert res.returncode == 2, res.stderr
    err = _one_error_line(res.stderr)
    assert "2 layers with 2,000,000,000 connections would need about 9.3 GiB of memory " \
           "(8.0 GiB available)" in err and "smaller radices" in err


def test_cli_checks_a_whole_xnet_stack_before_building(machine, no_allocation, capsys):
    machine(64 * MiB)
    assert T.main(["xnet", "--widths", "1000,20000,20000", "--in-degree", "500"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "X-Net with in-degree 500: 2 layers" in err and "--in-degree" in err


def test_cli_out_of_memory_is_an_error_line_not_a_traceback(monkeypatch, capsys):
    def out_of_memory(*args):
        raise MemoryError
    monkeypatch.setattr(T, "_radix_layer", out_of_memory)
    assert T.main(["radix", "--radices", "2,2"]) == 2
    assert "ran out of memory" in _one_error_line(capsys.readouterr().err)


def test_cli_deep_radix_shows_progress_and_skips_path_counts(monkeypatch, capsys):
    monkeypatch.setattr(T, "PROGRESS_DELAY_S", 0, raising=False)
    assert T.main(["radix", "--radices", "2x6", "--repeat", "20", "--max-path-work", "1e5"]) == 0
    out, err = capsys.readouterr()
    assert "radix_net" in err and "120/120" in err and "degrees" in err
    assert "path counts not computed" in out and "max_work = 1e+05" in out


@pytest.mark.parametrize("argv, expected", [
    (["radix", "--radices", "-2,2"], "--radices: radix -2 must be >= 1 (in '-2,2')"),
    (["radix", "--radices=-2,2"], "--radices: radix -2 must be >= 1 (in '-2,2')"),
    (["radix", "--radices", "2,2", "--B", "-1,1,1"], "--B: width -1 must be >= 1"),
    (["radix", "--radices", "2x0"], "--radices: count 0 must be >= 1"),
    (["xnet", "--widths", "-5,3", "--in-degree", "1"], "--widths: width -5 must be >= 1"),
    (["xnet", "--widths", "5,3", "--in-degree", "6"], "--in-degree must be in [1, 5], got 6"),
])
def test_cli_negative_list_values_reach_validation(argv, expected, capsys):
    assert T.main(argv) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("seed", ["-1", "abc"])
def test_cli_seed_must_be_non_negative(seed, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["xnet", "--widths", "5,3", "--in-degree", "2", "--seed", seed])
    assert e.value.code == 2
    err = _one_error_line(capsys.readouterr().err)
    assert f"--seed must be a non-negative integer, got {seed}" in err
    assert "argument --seed" not in err  # said once, not twice


def test_bench_topology_help_exits_at_once():
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, os.path.join(REPO, "examples", "bench_topology.py"),
                          "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage" in res.stdout and "--skip-big" in res.stdout
    assert "radix_net" not in res.stdout  # it did not run the benchmark
    assert time.perf_counter() - t0 < 20
    res = subprocess.run([sys.executable, os.path.join(REPO, "examples", "bench_topology.py"),
                          "--repeats", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--repeats must be >= 1" in res.stderr
