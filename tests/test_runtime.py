import json
import os
import subprocess
import sys

import numpy as np
import numba
import pytest
from numba import njit, prange

import sparsenn  # noqa: F401
from sparsenn import runtime, schedules
from sparsenn.optim import SGD
from sparsenn.train import fit


def test_thread_pools_are_configured_and_reported():
    info = runtime.thread_info()
    assert info["numba_num_threads"] >= 1
    assert info["numba_threading_layer"] in ("omp", "tbb", "workqueue")
    if "set by user" not in info["blas_thread_config"]:
        assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert "GOMP_SPINCOUNT" in os.environ


def _config_in_subprocess(env):
    code = "import sparsenn, json, os; from sparsenn import runtime; " \
           "print(json.dumps([runtime._state['reason'], os.environ.get('OPENBLAS_THREAD_TIMEOUT')]))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_user_settings_are_respected():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
    reason, timeout = _config_in_subprocess({**env, "OPENBLAS_THREAD_TIMEOUT": "7"})
    assert timeout == "7" and "OPENBLAS_THREAD_TIMEOUT=7 set by user" in reason
    reason, _ = _config_in_subprocess({"SPARSENN_THREAD_CONFIG": "0"})
    assert reason == "disabled by SPARSENN_THREAD_CONFIG=0"


def test_user_environ_drops_only_what_sparsenn_set():
    code = ("import os, json, sparsenn; from sparsenn.runtime import user_environ; "
            "print(json.dumps([os.environ['GOMP_SPINCOUNT'], user_environ().get('GOMP_SPINCOUNT'), "
            "'OPENBLAS_THREAD_TIMEOUT' in user_environ()]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
    for given, expect in [({}, [str(runtime.GOMP_SPINCOUNT), None, False]), ({"GOMP_SPINCOUNT": "7"}, ["7", "7", False])]:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                             check=True)
        assert json.loads(out.stdout) == expect, out.stdout


def test_matmul_small_and_large_products(rng):
    for m, k, n in [(10, 100, 100), (300, 784, 100)]:  # one under SMALL_GEMM_FLOPS, one over
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32).T  # a transposed view, as in backward
        out = np.empty((m, n), np.float32)
        runtime.matmul(a, b, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_products_on_numbas_threads_equal_numpys(rng, dtype):
    """runtime.matmul's large products: one one-thread BLAS call per band of the output, on
    Numba's threads. Every layout the layers pass (transposed views of either operand), bands
    of rows (m >= n) and of columns (m < n), equal to NumPy's product."""
    if not runtime._state["gemm"]:
        # NumPy's wheels bring OpenBLAS: in CI the entry points must be found, or this path is untested
        assert not os.environ.get("CI"), "runtime found no cblas_?gemm in NumPy's OpenBLAS"
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose cblas_?gemm sparsenn can find")
    gemm = runtime._state["gemm"][np.dtype(dtype).char]
    for m, k, n in [(300, 784, 100), (64, 800, 1960), (7, 5, 3), (1, 3, 2)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                a, b = (a.T if ta else a), (b.T if tb else b)
                ref = a.astype(np.float64) @ b.astype(np.float64)
                for threads in (1, 2, 3):
                    out = np.full((m, n), np.nan, dtype)
                    fa, lda = runtime._blas_operand(a)
                    fb, ldb = runtime._blas_operand(b)
                    runtime._gemm_bands(gemm, runtime._state["set_local_addr"], runtime._state["ilp64"],
                                        np.int32(fa), np.int32(fb), a, lda, b, ldb, out, threads)
                    np.testing.assert_allclose(out, ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                               atol=1e-3 if dtype == np.float32 else 1e-10)
    # through matmul, with the calling thread's BLAS thread count as it was
    set_local = runtime._state["set_local"]
    before = set_local(2)
    set_local(before)
    a, b = rng.standard_normal((784, 300)).astype(dtype), rng.standard_normal((784, 100)).astype(dtype)
    out = np.empty((300, 100), dtype)
    runtime.matmul(a.T, b, out)
    np.testing.assert_allclose(out, a.T.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert set_local(before) == before


def test_set_blas_threads_reaches_numpys_openblas():
    """The MPI ranks' share of the cores must reach BLAS too (distributed.share_cores)."""
    code = ("import ctypes, sparsenn; from sparsenn import runtime; "
            "paths = [p for p in runtime._loaded_openblas_paths() if 'numpy' in p]; "
            "ok = runtime.set_blas_threads(1); "
            "lib = ctypes.CDLL(paths[0]) if paths else None; "
            "get = next((getattr(lib, n) for n in ('openblas_get_num_threads', 'scipy_openblas_get_num_threads64_', "
            "'scipy_openblas_get_num_threads_64_') if lib is not None and hasattr(lib, n)), None); "
            "print(bool(paths), ok, get() if get else -1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    found, ok, n = out.stdout.split()
    assert ok == found, out.stdout + out.stderr  # set whenever NumPy's BLAS is an OpenBLAS
    if found == "True":
        assert n == "1"


def test_machine_report_reads_the_host():
    from sparsenn.runtime import describe_machine, machine_report

    quick = machine_report(probe=False)
    assert quick["cpus"] == os.cpu_count() and quick["cpu"] and quick["load_average"] >= 0
    assert "copy_gb_s" not in quick and "host speed" not in describe_machine(quick)
    rep = machine_report()
    assert 0.1 < rep["copy_gb_s"] < 1000, rep  # GB/s of one core copying 64 MB
    assert 1 < rep["loop_ms"] < 10_000, rep  # ms for a million Python additions
    line = describe_machine(rep)
    assert f"{rep['copy_gb_s']:.1f} GB/s" in line and f"{rep['loop_ms']:.0f} ms" in line


@njit(parallel=True)
def _times_one(a, out):
    for i in prange(a.shape[0]):
        out[i] = a[i] * np.float32(1.0)


def denormal_products():
    """How many of 4,096 products denormal x 1 stay denormal, computed by Numba's threads and
    by NumPy in this thread: (threads, here)."""
    a = np.full(4096, 1e-39, np.float32)  # a denormal: under float32's smallest normal, 1.18e-38
    out = np.empty_like(a)
    _times_one(a, out)
    return int(np.count_nonzero(out)), int(np.count_nonzero(a * np.float32(1.0)))


x86 = pytest.mark.skipif(not runtime._X86 or numba.config.DISABLE_JIT, reason="MXCSR is x86's, set by compiled code")


@x86
def test_denormals_are_zero_inside_the_block_and_back_after():
    assert denormal_products() == (4096, 4096)
    with runtime.denormals_flushed():
        assert denormal_products() == (0, 0)  # every thread of the pool, and this one
        with runtime.denormals_flushed():  # nested: the inner block restores the outer one's mode
            pass
        assert denormal_products() == (0, 0)
    assert denormal_products() == (4096, 4096)


@x86
def test_training_flushes_denormals_and_gives_the_mode_back():
    from tests.test_train import small_model, small_problem

    seen = []

    class Probe:
        def on_step_end(self, step, model, optimizer):
            seen.append(denormal_products())

    model = small_model()
    fit(model, small_problem(), SGD(model.parameters(), lr=0.05), schedules.Constant(0.05), steps=3, batch_size=50, seed=0,
        progress=False, callbacks=[Probe()], log=lambda *a: None)
    assert seen == [(0, 0)] * 3
    assert denormal_products() == (4096, 4096)


@x86
def test_training_goes_on_when_the_mode_cannot_be_set(monkeypatch, caplog):
    from tests.test_train import small_model, small_problem

    def broken(keep, add):
        raise RuntimeError("no MXCSR here")

    monkeypatch.setattr(runtime, "_set_mxcsr_here", broken)
    monkeypatch.setitem(runtime._state, "no_flush", False)
    model = small_model()
    with caplog.at_level("WARNING", logger="sparsenn"):
        summary = fit(model, small_problem(), SGD(model.parameters(), lr=0.05), schedules.Constant(0.05), steps=3,
                      batch_size=50, seed=0, progress=False, log=lambda *a: None)
    assert summary["steps"] == 3
    assert "denormal floats are not flushed to zero (RuntimeError: no MXCSR here)" in caplog.text
    assert denormal_products() == (4096, 4096)  # the pool threads set before the failure are back
