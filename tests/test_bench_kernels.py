"""examples/bench_kernels.py: a tiny quick run writes consistent records; its patterns are what
they claim to be. No timing assertions: timings on a shared machine say nothing about bugs."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "examples", "bench_kernels.py")
KEYS = {"op", "rows", "cols", "density", "batch", "impl", "median_s", "gflops", "of_sgemm"}
OPS = {"forward", "backward_input", "weight_grad"}
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def load_script():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One subprocess run on the 100x300 case only (a few seconds), as a user would start it.

    A subprocess, not main() in-process: the run may import torch, whose thread pool would
    then stay in the test process beside Numba's.
    """
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--cases", "100x300", "--json", str(path),
                           "--plot", str(path.with_suffix(".png"))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(path.read_text())


def kernel_records(records):
    return [r for r in records if r["op"] != "sgemm"]


def test_one_sgemm_record_and_every_fraction_relative_to_it(quick_run):
    _, records = quick_run
    (sgemm,) = [r for r in records if r["op"] == "sgemm"]
    assert (sgemm["rows"], sgemm["cols"], sgemm["batch"], sgemm["impl"]) == (4096, 4096, 128, "dense_numpy")
    assert sgemm["gflops"] > 0
    for r in kernel_records(records):
        assert r["of_sgemm"] == pytest.approx(r["gflops"] / sgemm["gflops"], rel=1e-9), r


def test_records_have_the_documented_keys_and_values(quick_run):
    _, records = quick_run
    assert records, "no records written"
    for r in kernel_records(records):
        assert set(r) == KEYS, r
        assert r["op"] in OPS
        assert (r["rows"], r["cols"], r["density"], r["batch"]) == (100, 300, 0.1, 128)
        assert r["median_s"] > 0


def test_gflops_is_useful_flops_over_median_time(quick_run):
    _, records = quick_run
    for r in kernel_records(records):
        nnz = round(r["density"] * r["rows"] * r["cols"])  # the benchmark stores exactly this many
        expected = 2 * nnz * r["batch"] / r["median_s"] / 1e9  # the same for dense and sparse
        assert r["gflops"] == pytest.approx(expected, rel=1e-9), r


def test_every_implementation_times_every_op_except_scipy_weight_grad(quick_run):
    _, records = quick_run
    records = kernel_records(records)
    got = {(r["op"], r["impl"]) for r in records}
    impls = {"sparsenn", "plain", "scipy", "dense_numpy"} | ({"torch"} if HAVE_TORCH else set())
    expected = {(op, impl) for op in OPS for impl in impls} - {("weight_grad", "scipy")}
    assert got == expected
    assert len(records) == len(expected), "a (op, impl) pair was recorded twice"


def test_report_prints_threads_table_and_targets(quick_run):
    out, _ = quick_run
    assert "numba_num_threads" in out
    assert "100x300 d=0.1" in out
    assert "dense SGEMM 4096x4096 @ 4096x128 through NumPy:" in out
    assert any(line.startswith(("PASS  forward: sparsenn >= 0.3x the dense SGEMM rate",
                                "FAIL  forward: sparsenn >= 0.3x the dense SGEMM rate")) for line in out.splitlines())
    # only the 100x300 targets are run; the 4096x4096 ones are reported as skipped
    assert "SKIP  forward: sparsenn >= 10x faster than dense W @ x" in out
    assert any(line.startswith(("PASS  forward", "FAIL  forward")) for line in out.splitlines())
    if not HAVE_TORCH:
        assert "PyTorch is not installed" in out


PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_is_written_by_the_run(quick_run):
    out, _ = quick_run
    (line,) = [ln for ln in out.splitlines() if ln.startswith("plot: ")]
    with open(line.split("plot: ", 1)[1], "rb") as f:
        assert f.read(8) == PNG


def test_the_figure_draws_the_records_numbers(quick_run, tmp_path):
    """What plot_results draws is the records' own: every sparsenn bar is its record's GFLOP/s,
    the SGEMM line the run's rate, the sweep each density's median time; nothing invented."""
    _, records = quick_run
    bench = load_script()
    sweep = [dict(op="forward", rows=300, cols=784, density=d, batch=128, impl=impl, median_s=t, gflops=1.0)
             for d, t_sp, t_dense in ((0.01, 1e-5, 3e-4), (0.5, 3e-4, 3e-4), (1.0, 5e-4, 3e-4))
             for impl, t in (("sparsenn", t_sp), ("dense_numpy", t_dense))]
    drawn = bench.plot_results(records + sweep, str(tmp_path / "f.svg"))
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")  # the extension picks the format
    sgemm = next(r for r in records if r["op"] == "sgemm")["gflops"]
    assert drawn["sgemm"] == sgemm
    mine = {(r["op"]): r["gflops"] for r in records if r["op"] != "sgemm" and r["impl"] == "sparsenn"}
    assert drawn["bars"] == {("100x300 d=0.1", op): g for op, g in mine.items()}
    assert drawn["sweep"] == {"sparsenn": [(0.01, 1e-2), (0.5, 0.3), (1.0, 0.5)],
                              "dense_numpy": [(0.01, 0.3), (0.5, 0.3), (1.0, 0.3)]}


def test_replot_draws_a_saved_run_without_timing(quick_run, tmp_path):
    _, records = quick_run
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(records))
    proc = subprocess.run([sys.executable, SCRIPT, "--replot", str(saved), "--plot", str(tmp_path / "again.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "timing" not in proc.stdout + proc.stderr  # nothing was timed
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("content, argv_tail, message", [
    (None, ["--plot", "x.png"], "--replot: cannot read"),
    ("not json", ["--plot", "x.png"], "is not JSON"),
    ('{"op": "sgemm"}', ["--plot", "x.png"], "expected a list of records"),
    ('[{"op": "forward"}]', ["--plot", "x.png"], "expected one dense SGEMM record"),
    ('[{"op": "sgemm", "gflops": 1}, {"op": "forward", "rows": 1}]', ["--plot", "x.png"], "a record lacks"),
    ("[]", [], "--replot draws to --plot PATH"),
])
def test_replot_refuses_what_it_cannot_draw(tmp_path, capsys, content, argv_tail, message):
    bench = load_script()
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    tail = [a if a != "x.png" else str(tmp_path / a) for a in argv_tail]
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--replot", str(path), *tail])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_is_for_the_benchmark_and_scale_only(capsys):
    bench = load_script()
    with pytest.raises(SystemExit):
        bench.parse_args(["--asm", "--plot", "x.png"])
    assert "have no figure" in capsys.readouterr().err


def test_scale_records_plot_and_replot(tmp_path, monkeypatch, capsys):
    """--scale at two small sizes, in process: one record per (topology, size, product) whose
    rate is 2 nnz batch / its median and whose fraction is of the same product at the smallest
    size; the figure draws those numbers; --json's file replots."""
    bench = load_script()
    monkeypatch.setattr(bench, "SCALE_SIZES", (1024, 4096))
    failed, records = bench.scale_study(dict(min_time=0.0, max_calls=3, min_calls=3))
    assert len(records) == 2 * 2 * 3 and failed == sum(
        r["vs_smallest"] < bench.SCALE_TARGET for r in records if r["neurons"] == 4096)
    for r in records:
        assert r["nnz"] == 32 * r["neurons"] and r["batch"] == bench.SCALE_BATCH
        assert r["gflops"] == pytest.approx(2 * r["nnz"] * r["batch"] / r["median_s"] / 1e9)
        small = next(s for s in records if (s["topology"], s["op"], s["neurons"]) == (r["topology"], r["op"], 1024))
        assert r["vs_smallest"] == pytest.approx(r["gflops"] / small["gflops"])
    drawn = bench.plot_scale(records, str(tmp_path / "s.png"))
    assert drawn == {(t, op): [(r["neurons"], r["gflops"], r["vs_smallest"]) for r in records
                               if (r["topology"], r["op"]) == (t, op)]
                     for t in ("radix", "random") for op in bench.OPS}
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(records + [dict(kind="machine", machine=None)]))
    assert bench.main(["--replot", str(saved), "--plot", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG
    del records[0]["vs_smallest"]
    saved.write_text(json.dumps(records))
    with pytest.raises(SystemExit):
        bench.parse_args(["--replot", str(saved), "--plot", str(tmp_path / "x.png")])
    assert "a --scale record lacks vs_smallest" in capsys.readouterr().err


def test_fixed_fan_in_case_has_exactly_that_many_sorted_columns_per_row():
    bench = load_script()
    p, data, x, dy = bench.make_operands(bench.Case(64, 128, 8 / 128, per_row=8))
    assert np.all(np.diff(p.indptr) == 8)
    assert (data.shape, x.shape, dy.shape) == ((64 * 8,), (128, bench.BATCH), (64, bench.BATCH))
    again = bench.make_operands(bench.Case(64, 128, 8 / 128, per_row=8))[0]
    np.testing.assert_array_equal(p.indices, again.indices)  # seeded: the same pattern every run


def test_density_case_has_exact_nnz_and_canonical_rows():
    bench = load_script()
    case = bench.Case(30, 40, 0.25)
    p = bench.make_operands(case)[0]  # CSRPattern.from_arrays has checked canonical form
    assert p.nnz == case.nnz == 300


def test_unknown_case_shape_is_refused_with_the_choices():
    bench = load_script()
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--cases", "7x7"])
    assert e.value.code == 2


def _asm_rows(env=None, blocks_only=False):
    """{kernel: (zmm, ymm, xmm, gathers)} from ``bench_kernels.py --asm`` (``blocks_only``: its
    report of the register-block kernels alone, in a fresh process as well)."""
    cmd = [SCRIPT, "--asm"] if not blocks_only else [
        "-c", f"import sys; sys.path.insert(0, {os.path.dirname(SCRIPT)!r}); import bench_kernels; "
              "bench_kernels.asm_report(blocks_only=True)"]
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\s+(\S.*?)\s+zmm\s+(\d+)\s+ymm\s+(\d+)\s+xmm\s+(\d+)\s+gathers\s+(\d+)\s*$", line)
        if m:
            rows[m.group(1)] = tuple(int(v) for v in m.groups()[1:])
    return rows, proc.stdout


def test_asm_report_counts_512_bit_multiply_adds_and_no_gathers(tmp_path):
    rows, out = _asm_rows()
    blocks = {k: v for k, v in rows.items() if "register block" in k or "one pass" in k}
    explicit = {k: v for k, v in rows.items() if "explicit vectors" in k}
    assert len(blocks) == 3 and len(explicit) == 4, out
    for name, (zmm, ymm, xmm, gathers) in explicit.items():  # written with 16-lane vectors: always zmm
        assert zmm >= 12 and gathers == 0, (name, out)
    for name, (zmm, ymm, xmm, gathers) in blocks.items():  # vectorised by LLVM: one FMA per 16 (or 8) columns
        assert zmm + ymm >= 12 and gathers == 0, (name, out)
    if any(zmm == 0 for zmm, *_ in blocks.values()):  # LLVM tunes this CPU for 256-bit vectors:
        assert "LLVM tunes this CPU" in out, out  # the report says so, and without that tuning ...
        from numba.core.codegen import get_host_cpu_features

        env = dict(os.environ, NUMBA_CPU_FEATURES=get_host_cpu_features() + ",-prefer-256-bit",
                   NUMBA_CACHE_DIR=str(tmp_path))
        rows, out = _asm_rows(env, blocks_only=True)
        for name in blocks:  # ... the same kernels are 512-bit
            assert rows[name][0] >= 12 and rows[name][3] == 0, (name, out)

def test_bandwidth_mode_reads_every_level_and_states_the_ceiling():
    """--bandwidth: one row per working set, the ceiling half the all-thread load rate (0.5 flop
    per byte), its fraction of this run's SGEMM; the sweep's sum is every element read."""
    bk = load_script()
    a = np.arange(256, dtype=np.float32)
    assert bk._read_sweep(a, 3) == pytest.approx(3 * a.sum())
    assert bk._read_sweep_threads(np.stack([a, 2 * a]), 2) == pytest.approx(2 * 3 * a.sum())
    proc = subprocess.run([sys.executable, SCRIPT, "--bandwidth", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sgemm = float(proc.stdout.split("through NumPy:")[1].split()[0])
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].replace(",", "") in
            {str(kb) for kb in bk.BANDWIDTH_KB}]
    assert len(rows) == len(bk.BANDWIDTH_KB), proc.stdout
    for kb, one, every, ceiling, of_sgemm in rows:
        assert float(one) > 0 and float(every) > 0
        assert float(ceiling) == pytest.approx(0.5 * float(every), abs=0.06)
        assert float(of_sgemm.rstrip("x")) == pytest.approx(float(ceiling) / sgemm, abs=0.006)
