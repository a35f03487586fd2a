"""Thread pools: keep OpenBLAS and Numba from fighting over the cores.

The problem (measured on a 2-core machine): after a threaded BLAS call (every dense
``W @ x``), OpenBLAS's worker threads keep spinning for a while, waiting for more work. A
Numba parallel kernel started in that window finds both cores busy with spinning threads,
and a kernel that takes 90 microseconds alone took 4-7 *milliseconds* when alternated with
dense matmuls. Numba's OpenMP workers spin the same way after a kernel, hurting BLAS next.

The fixes applied when ``sparsenn`` is imported. First, tell OpenBLAS to put idle workers to sleep
almost at once (``OPENBLAS_THREAD_TIMEOUT=4``, i.e. 2**4 cycles of spinning). OpenBLAS reads
that variable when its thread pool starts, so we set it in the environment (for any OpenBLAS
loaded later, e.g. SciPy's own copy) and, for each copy already loaded (NumPy's), re-read the
environment and restart its pool. Measured after the fix: 92 us for the kernel and 282 us for
the dense product when alternated, the same as each alone. Dense BLAS keeps all its threads.

Second, the other direction: Numba's OpenMP workers spin after each parallel kernel (libgomp's
default spin count) and would take the cores from the BLAS threads of the next dense product.
So the large dense products do not use BLAS's threads at all: they run on Numba's, each thread
a one-thread BLAS call on its band of the output (:func:`matmul`, "Dense products on Numba's
threads" below). Then the OpenMP workers may spin a while between kernels, and should: waking
a sleeping one cost 29-53 us on an Intel Xeon host, several times a LeNet-300-100 step.
``GOMP_SPINCOUNT=50000`` must be in the environment before Numba starts its OpenMP pool, i.e.
before the first parallel kernel runs. Measured there (rocketlake to Numba, 2 cores; one
LeNet-300-100 epoch, `examples/bench_train.py`, radix / dense, seconds, two runs each): with
the dense products on BLAS's threads, spin count 2000 (the value before): 0.243 / 0.572;
20000: 0.177 / 0.688 (the BLAS threads now wait for the spinning workers); 100000: 0.173 /
1.008. With the dense products on Numba's threads: 2000: 0.248 / 0.647; 5000: 0.21-0.20 /
0.61-0.59; 10000: 0.19-0.18 / 0.58-0.57; 20000: 0.18 / 0.61-0.58; 50000: 0.19-0.18 / 0.55-0.53.
On the first host of this project (AMD Zen 5) the old scheme measured (dense / radix, with older
kernels): libgomp's default spin count 1.13 s dense; 10000: 0.645 / 0.175; 2000: 0.52 / 0.178;
100: 0.67 / 0.57 (every kernel then waits for its threads to wake).

A second measure: :func:`matmul` runs *small* dense products (under ``SMALL_GEMM_FLOPS``) on a
single BLAS thread. Waking the sleeping pool costs more than a second core saves there: in a
LeNet-300-100 training step the 100x300 @ 300x100 product took 450 us on two threads, 74 us on
one. Large products keep every thread.

Set ``SPARSENN_THREAD_CONFIG=0`` to leave the thread pools exactly as you configured them
(dense products then all go to ``np.matmul``); ``SPARSENN_DENSE_ON_NUMBA=0`` keeps only the
large dense products on BLAS's own threads, to compare. A value you set yourself for
``OPENBLAS_THREAD_TIMEOUT`` or ``GOMP_SPINCOUNT`` is always respected.
"""

from __future__ import annotations

import ctypes
import logging
import os

import numpy as np
from llvmlite import ir
from numba import get_num_threads, get_thread_id, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

logger = logging.getLogger("sparsenn")

_state = {"blas_libs": [], "configured": False, "reason": "", "set_local": None, "gemm": None,
          "set_local_addr": 0, "ilp64": False}

# Below this many floating-point operations (2*m*k*n) a dense product runs on one BLAS thread.
SMALL_GEMM_FLOPS = 16e6
# How long Numba's OpenMP workers spin before they sleep (libgomp's unit: iterations of its wait loop)
GOMP_SPINCOUNT = 50000


def _loaded_openblas_paths() -> list[str]:
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6:
                    p = parts[-1]
                    name = os.path.basename(p).lower()
                    if "openblas" in name and ".so" in name and p not in paths:
                        paths.append(p)
    except OSError:  # not Linux: nothing we can inspect this way
        pass
    return paths


def _find_set_threads_local():
    """OpenBLAS's ``openblas_set_num_threads_local(n) -> previous n`` from NumPy's BLAS, or None."""
    import numpy  # noqa: F401  (loads NumPy's OpenBLAS, if that is its BLAS)

    for path in _loaded_openblas_paths():
        if "numpy" not in path:
            continue
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


def set_blas_threads(n: int) -> bool:
    """From now on let NumPy's OpenBLAS use at most ``n`` threads (``openblas_set_num_threads``);
    False when NumPy's BLAS is not an OpenBLAS this can find. For several processes on one
    machine (MPI ranks): each with a full BLAS pool, two ranks on two cores ran a 262,144-wide
    model's steps 10x slower than one process."""
    for path in _loaded_openblas_paths():
        if "numpy" not in path:
            continue
        lib = ctypes.CDLL(path)
        # the name depends on the build: NumPy's scipy-openblas wheels prefix and suffix it
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads_64_", "scipy_openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = None, [ctypes.c_int]
                fn(int(n))
                return True
    return False


def matmul(a, b, out):
    """out = a @ b with NumPy's BLAS. Products under SMALL_GEMM_FLOPS run on one BLAS thread, the
    calling one; larger ones on Numba's threads, each a one-thread BLAS call on a band of ``out``
    (:func:`_gemm_bands`: one pool for the sparse kernels and the dense products, see "Dense
    products on Numba's threads" below), or on BLAS's own threads where that cannot be done.

    a: (m, k), b: (k, n), out: (m, n) preallocated. Transposed views are fine (BLAS takes them
    as flags, no copy).
    """
    set_local = _state["set_local"]
    if set_local is not None and 2.0 * a.shape[0] * a.shape[1] * b.shape[1] < SMALL_GEMM_FLOPS:
        previous = set_local(1)
        try:
            return np.matmul(a, b, out=out)
        finally:
            set_local(previous)
    gemm = _state["gemm"].get(out.dtype.char) if _state["gemm"] else None
    if gemm is not None and a.dtype == b.dtype == out.dtype and out.flags.c_contiguous:
        ta, lda = _blas_operand(a)
        tb, ldb = _blas_operand(b)
        threads = get_num_threads()
        if ta and tb and threads > 1:
            _gemm_bands(gemm, _state["set_local_addr"], _state["ilp64"], np.int32(ta), np.int32(tb),
                        a, lda, b, ldb, out, threads)
            return out
    return np.matmul(a, b, out=out)


# ------------------------------------------------------------------ dense products on Numba's threads
#
# The two pools of threads (OpenBLAS's and Numba's OpenMP workers) would take turns in a training
# step, each wanting the other asleep, which is why the OpenMP workers once spun only briefly
# (GOMP_SPINCOUNT=2000). But waking a sleeping OpenMP worker is not free. Measured on an Intel Xeon host (rocketlake to Numba, 2 cores): an empty
# parallel kernel takes 1.8 us when called back to back, 29 us after 50 us of serial work and
# 53 us after 200 us, and a LeNet-300-100 RadiX step has several such gaps (the batch gather, the
# loss, the small dense layer). So the large dense products now run on Numba's workers too:
# each thread makes one single-threaded BLAS call (``openblas_set_num_threads_local(1)``) on its
# band of the output's rows (or columns, when it has more of those), so no BLAS worker runs
# beside an OpenMP one and the OpenMP workers may spin longer (``GOMP_SPINCOUNT``, above).
# The addresses of NumPy's OpenBLAS ``cblas_sgemm``/``cblas_dgemm`` are found once, by name
# (NumPy's wheels prefix and suffix them; ``USE64BITINT`` in its config means 64-bit ints).
# Where they are not found (another BLAS), the products go to ``np.matmul`` as before.

_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112


def _blas_operand(m):
    """(CBLAS transpose flag, leading dimension) of a 2-D operand for a row-major call, or (0, 0)
    when BLAS cannot read it in place (neither C- nor Fortran-contiguous)."""
    if m.ndim != 2:
        return 0, 0
    if m.flags.c_contiguous:
        return _CBLAS_NO_TRANS, max(m.shape[1], 1)
    if m.flags.f_contiguous:  # the transpose of a C-contiguous array
        return _CBLAS_TRANS, max(m.shape[0], 1)
    return 0, 0


def _find_gemm() -> None:
    """Record the addresses of NumPy's OpenBLAS cblas_sgemm/dgemm and of the
    openblas_set_num_threads_local that :func:`_find_set_threads_local` found."""
    _state["gemm"] = {}
    from numba import config

    setl = _state["set_local"]
    if os.environ.get("SPARSENN_DENSE_ON_NUMBA", "1") == "0" or config.DISABLE_JIT or setl is None:
        return  # (to compare; plain Python; no thread-local BLAS setting to make the calls one-thread)
    for path in _loaded_openblas_paths():
        if "numpy" not in path:
            continue
        try:
            lib = ctypes.CDLL(path)
            get_config = next((getattr(lib, n) for n in ("openblas_get_config", "scipy_openblas_get_config64_",
                                                          "scipy_openblas_get_config") if hasattr(lib, n)), None)
        except (OSError, AttributeError):
            continue
        if get_config is None:
            continue
        get_config.restype = ctypes.c_char_p
        ilp64 = b"USE64BITINT" in (get_config() or b"")  # 64-bit integer arguments
        found = {}
        for char, name in (("f", "sgemm"), ("d", "dgemm")):
            for sym in (f"scipy_cblas_{name}64_", f"scipy_cblas_{name}_64_", f"scipy_cblas_{name}", f"cblas_{name}"):
                fn = getattr(lib, sym, None)
                if fn is not None:
                    if sym.endswith("64_") == ilp64 or not sym.startswith("scipy_"):
                        found[char] = ctypes.cast(fn, ctypes.c_void_p).value
                    break  # a name that contradicts the config: not this library's entry point
        if len(found) != 2:
            continue
        _state["ilp64"] = ilp64
        _state["set_local_addr"] = ctypes.cast(setl, ctypes.c_void_p).value
        _state["gemm"] = found
        return


@intrinsic
def _call_gemm(typingctx, fn, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """cblas_?gemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) at address ``fn``;
    ``a``, ``b``, ``c`` are addresses (integers), ints as the caller typed them (32 or 64 bits)."""
    sig = types.void(fn, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        pointers = {8, 10, 13}  # a, b, c
        lltys = [i8p if i in pointers else context.get_value_type(t)
                 for i, t in enumerate(signature.args) if i > 0]
        vals = [builder.inttoptr(v, i8p) if i in pointers else v for i, v in enumerate(args) if i > 0]
        fnty = ir.FunctionType(ir.VoidType(), lltys)
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), vals)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _call_int_int(typingctx, fn, v):
    """int f(int) at address ``fn`` (openblas_set_num_threads_local)."""
    sig = types.int32(fn, types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(i32, [i32])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1]])

    return sig, codegen


@njit(parallel=True, cache=True)
def _gemm_bands(gemm, set_local, ilp64, ta, tb, a, lda, b, ldb, c, threads):
    """c = op(a) @ op(b) on ``threads`` of Numba's threads, each a one-thread BLAS call on one band
    of c's rows (or of its columns, when c has more columns than rows).

    a: (m, k) and b: (k, n) as given to :func:`matmul` (C- or Fortran-contiguous: ``ta``/``tb``
    are the CBLAS flags and ``lda``/``ldb`` the leading dimensions of the row-major arrays behind
    them), c: (m, n) C-contiguous. gemm, set_local: addresses of cblas_?gemm and
    openblas_set_num_threads_local; ilp64: whether that BLAS takes 64-bit ints."""
    m, n = c.shape
    k = a.shape[1]
    isz = np.int64(c.itemsize)
    one, zero = c.dtype.type(1), c.dtype.type(0)
    by_rows = m >= n
    length = m if by_rows else n
    for t in prange(threads):
        lo, hi = length * t // threads, length * (t + 1) // threads
        if hi <= lo:
            continue
        # addresses as int64 (uintp plus int64 would make Numba compute them in float64)
        pa, pb, pc = np.int64(a.ctypes.data), np.int64(b.ctypes.data), np.int64(c.ctypes.data)
        if by_rows:  # rows lo..hi of op(a) and of c; all of op(b)
            pa += lo * (lda if ta == _CBLAS_NO_TRANS else 1) * isz
            pc += lo * n * isz
            mm, nn = hi - lo, n
        else:  # columns lo..hi of op(b) and of c; all of op(a)
            pb += lo * (1 if tb == _CBLAS_NO_TRANS else ldb) * isz
            pc += lo * isz
            mm, nn = m, hi - lo
        previous = _call_int_int(set_local, np.int32(1))
        if ilp64:
            _call_gemm(gemm, np.int32(_CBLAS_ROW_MAJOR), ta, tb, np.int64(mm), np.int64(nn), np.int64(k), one,
                       pa, np.int64(lda), pb, np.int64(ldb), zero, pc, np.int64(n))
        else:
            _call_gemm(gemm, np.int32(_CBLAS_ROW_MAJOR), ta, tb, np.int32(mm), np.int32(nn), np.int32(k), one,
                       pa, np.int32(lda), pb, np.int32(ldb), zero, pc, np.int32(n))
        _call_int_int(set_local, previous)


def configure_blas_threads() -> None:
    """Set up OpenBLAS and Numba's OpenMP pool so that neither steals the cores from the other.

    Values the user set in the environment are respected. Called once, on ``import sparsenn``.
    """
    if _state["configured"]:
        return
    _state["configured"] = True
    if os.environ.get("SPARSENN_THREAD_CONFIG", "1") == "0":
        _state["reason"] = "disabled by SPARSENN_THREAD_CONFIG=0"
        return
    notes = []
    _state["set_env"] = [k for k in ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT") if k not in os.environ]
    if "GOMP_SPINCOUNT" in os.environ:
        notes.append(f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']} set by user")
    else:
        os.environ["GOMP_SPINCOUNT"] = str(GOMP_SPINCOUNT)  # read by libgomp when Numba first loads it
        notes.append(f"GOMP_SPINCOUNT={GOMP_SPINCOUNT}")
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        notes.append(f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']} set by user")
    else:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"
        notes.append("OPENBLAS_THREAD_TIMEOUT=4")
        # A BLAS loaded before this point (numpy imported first) started its pool with the old
        # timeout: re-read the environment and restart the pool.
        for path in _loaded_openblas_paths():
            try:
                lib = ctypes.CDLL(path)
                read_env, shutdown, init = lib.openblas_read_env, lib.blas_thread_shutdown_, lib.blas_thread_init
            except (OSError, AttributeError):
                continue  # a BLAS build without these entry points: leave it alone
            read_env()
            shutdown()
            init()
            _state["blas_libs"].append(path)
    _state["set_local"] = _find_set_threads_local()
    _find_gemm()
    _state["reason"] = ", ".join(notes)


def user_environ() -> dict:
    """The environment as the user gave it: ``os.environ`` without the variables that importing
    sparsenn set (for a child process that times another library, PyTorch say, whose own OpenMP
    runtime would otherwise start with Numba's spin count)."""
    return {k: v for k, v in os.environ.items() if k not in _state.get("set_env", ())}


def thread_info() -> dict:
    """Which thread pools are in use: Numba's threading layer and thread count, BLAS settings.

    Runs a tiny parallel kernel first, because Numba only picks its threading layer then.
    """
    import numba
    import numpy as np

    from sparsenn.kernels import spmm

    indptr = np.zeros(2, dtype=np.int32)
    x = np.zeros((1, 1), dtype=np.float32)
    spmm(indptr, indptr[:0], x[0, :0], x, np.zeros((1, 1), np.float32), np.array([0, 1]))
    info = {
        "numba_threading_layer": numba.threading_layer(),
        "numba_num_threads": numba.get_num_threads(),
        "blas_thread_config": _state["reason"],
        "blas_libs_reconfigured": [os.path.basename(p) for p in _state["blas_libs"]],
    }
    logger.info(
        "Numba threading layer %s with %d threads; BLAS: %s",
        info["numba_threading_layer"],
        info["numba_num_threads"],
        info["blas_thread_config"] or "unchanged",
    )
    return info


# ------------------------------------------------------------------ denormal numbers: flushed to zero
#
# A float32 below 1.2e-38 in magnitude (a denormal, or subnormal) is stored without the hidden
# leading bit, and on Intel cores an arithmetic instruction that reads or produces one takes a
# slow path (a microcode assist, of the order of a hundred cycles). Training makes them: the
# softmax of a large logit gives the other classes probabilities like exp(-90), which round to
# denormals in the loss gradient, and the backward carries them into every layer's gradients.
# Measured on an Intel Xeon host (rocketlake to Numba), the scaling study's 4 x 65,536 RadiX model
# at batch 128: 141 ms per step for the first steps, then 970-1,312 ms once up to 35 thousand
# gradient entries per layer were denormal; a full epoch took 464.5 s where 20 steps on one fixed
# batch (examples/profile_step.py) predicted 73 s; flushed, the steps take 144-150 ms. The usual cure: set the two MXCSR
# bits that make the core treat denormal inputs as zero (DAZ) and round denormal results to zero
# (FTZ), in every thread that computes. TensorFlow does it in its CPU threads; PyTorch has
# ``torch.set_flush_denormal(True)``. A value under 1.2e-38 is then 0: far below what float32
# rounding of the values beside it (7 significant digits) already loses.

MXCSR_FTZ_DAZ = 0x8040  # bit 15: flush to zero; bit 6: denormals are zero
_X86 = __import__("platform").machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _swap_mxcsr(typingctx, keep, add):
    """mxcsr = (mxcsr & keep) | add in this thread; returns the old value (x86 only)."""
    def codegen(context, builder, signature, args):
        i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p])
        store = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
        load = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
        slot = cgutils.alloca_once(builder, i32)
        ptr = builder.bitcast(slot, i8p)
        builder.call(store, [ptr])
        old = builder.load(slot)
        builder.store(builder.or_(builder.and_(old, args[0]), args[1]), slot)
        builder.call(load, [ptr])
        return old
    return types.uint32(types.uint32, types.uint32), codegen


@njit(cache=True)
def _set_mxcsr_here(keep, add):
    """This thread's MXCSR = (MXCSR & keep) | add; returns the old value."""
    return _swap_mxcsr(keep, add)


@njit(parallel=True, cache=True)
def _set_mxcsr_pool(keep, add, old, done):
    """For every thread t of Numba's pool, once: old[t] = its MXCSR; MXCSR = (old & keep) | add[t].
    Many more iterations than threads, so that every thread gets some (done[t] marks it)."""
    for i in prange(64 * old.shape[0]):
        t = get_thread_id()
        if done[t] == 0:
            old[t] = _swap_mxcsr(keep, add[t])
            done[t] = 1


def _set_pool_mxcsr(keep: int, add) -> np.ndarray:
    """Every pool thread's MXCSR = (MXCSR & keep) | add[thread]; their old values."""
    n = len(add)
    old, done = np.zeros(n, np.uint32), np.zeros(n, np.uint8)
    for _ in range(10):  # a work-stealing pool (TBB) may leave a thread out of one loop
        _set_mxcsr_pool(np.uint32(keep), np.asarray(add, np.uint32), old, done)
        if done.all():
            break
    return old


class denormals_flushed:
    """``with denormals_flushed(): ...``: denormal floats are read and written as zero (the MXCSR
    FTZ and DAZ bits) in this thread and in every thread of Numba's pool inside the block; each
    thread's previous mode is restored after it. On a CPU other than x86, or with Numba's JIT
    disabled, it does nothing. :func:`sparsenn.train.fit` trains inside one.

    The pool is set first and the calling thread second, and restored in the opposite order, so
    that whether or not the calling thread is one of the pool's, every thread ends as it began.
    """

    def __enter__(self):
        from numba import config, get_num_threads

        self._pool = self._here = None
        if not _X86 or config.DISABLE_JIT or _state.get("no_flush"):
            return self
        pool = None
        try:
            pool = _set_pool_mxcsr(0xFFFFFFFF, np.full(get_num_threads(), MXCSR_FTZ_DAZ, np.uint32))
            self._here = _set_mxcsr_here(np.uint32(0xFFFFFFFF), np.uint32(MXCSR_FTZ_DAZ))
        except Exception as e:  # a speed measure only: never the reason a run stops
            if pool is not None:
                _set_pool_mxcsr(0, pool)
            _state["no_flush"] = True
            logger.warning("denormal floats are not flushed to zero (%s: %s); training may run slower on "
                           "Intel CPUs once its gradients hold denormals", type(e).__name__, e)
            return self
        self._pool = pool
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            _set_mxcsr_here(np.uint32(0), np.uint32(self._here))
            _set_pool_mxcsr(0, self._pool)
        return False


# ------------------------------------------------------------------ the machine a timing ran on
#
# Two machines of this project's kind (2 cores, AVX-512, same software) ran the same code at
# very different speeds: on the one drawn on 2026-12-01 the sparse kernels took 2-3x and a
# training step of the 65,536-wide scaling-study model 2.8-3.7x as long as on the one before,
# while dense SGEMM ran at the same 190-230 GFLOP/s. The load average does not show this (it
# counts only this machine's own processes), so the benchmarks print two quick readings of the
# host's speed beside it, and timings from different logs are comparable only when those agree.

COPY_PROBE_BYTES = 64 << 20  # beyond any L3 here (32-105 MB L3 seen): the copy runs from DRAM
LOOP_PROBE_STEPS = 1_000_000


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_report(probe: bool = True) -> dict:
    """What a timing depends on besides the code: the CPU, the number of CPUs, the 1-minute load
    average of this machine's processes and, with ``probe``, two readings of the host's speed
    taken now (about 0.2 s): ``copy_gb_s``, one core copying a 64 MB float64 array (read and
    write counted, best of 3: memory bandwidth), and ``loop_ms``, a Python loop of a million
    additions (the core's speed on scalar code; 2-3x apart on hosts of one machine kind)."""
    import time

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rep = {"cpu": _cpu_model(), "cpus": os.cpu_count(), "load_average": round(load, 2)}
    try:
        import llvmlite.binding as llvm

        rep["llvm_cpu"] = llvm.get_host_cpu_name()  # what Numba compiles for
    except Exception:  # noqa: BLE001  (llvmlite comes with Numba; the report stays useful without)
        pass
    if probe:
        src = np.ones(COPY_PROBE_BYTES // 8)
        dst = np.empty_like(src)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t0)
        rep["copy_gb_s"] = round(2 * src.nbytes / best / 1e9, 1)
        t0 = time.perf_counter()
        s = 0
        for i in range(LOOP_PROBE_STEPS):
            s += i
        rep["loop_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    return rep


def describe_machine(rep: dict) -> str:
    """One line for a log: ``machine_report``'s readings."""
    line = f"{rep['cpu']} ({rep.get('llvm_cpu', '?')} to Numba), {rep['cpus']} CPUs, load average {rep['load_average']:.2f}"
    if "copy_gb_s" in rep:
        line += (f"; host speed now: one core copies {rep['copy_gb_s']:.1f} GB/s, a 1e6-step Python loop takes "
                 f"{rep['loop_ms']:.0f} ms (compare timings across logs only where these agree)")
    return line
