"""The CUDA twins in sparsenn.cuda_im2col equal the CPU kernels in sparsenn.im2col.

Without a GPU, tests/conftest.py turns on Numba's CUDA simulator, which runs every GPU thread
as a Python thread: shapes stay tiny (a few hundred to ~1500 threads a launch). On a GPU
machine the same tests run the real kernels. tests/test_cuda_compile.py compiles every kernel
to PTX for an sm_90 GPU, which the simulator never does.
"""

import numba
import numpy as np
import pytest
from numba import cuda

import sparsenn.cuda_im2col as gpu
from sparsenn import im2col as cpu
from sparsenn.im2col import conv_geometry


RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _run(launcher, *args):
    """Call a GPU launcher with every NumPy array moved to the device; return the host copies
    of all array arguments afterwards (inputs included, to check that they were not written)."""
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    launcher(*dev)
    return [d.copy_to_host() if isinstance(a, np.ndarray) else None for a, d in zip(args, dev)]


def _nan_like(a):
    """An output buffer full of NaN: the kernels must overwrite every element."""
    return np.full_like(a, np.nan)


# (H, W, kh, kw, sh, sw, padding, dtype): valid and TensorFlow 'same' (asymmetric) padding,
# strides 1, 2 and mixed, non-square windows, overlapping windows (3x3 stride 2), a stride
# larger than the window (pixels no window reads: col2im must write 0 there), and float64.
CONV_CASES = [
    (5, 5, 3, 3, 1, 1, "valid", np.float32),
    (5, 5, 3, 3, 1, 1, "same", np.float32),
    (5, 6, 2, 3, 2, 2, "same", np.float32),
    (6, 5, 3, 2, 2, 1, "valid", np.float32),
    (5, 5, 3, 3, 2, 2, 1, np.float32),
    (7, 5, 2, 1, 3, 2, "valid", np.float32),
    (5, 4, 3, 2, 2, 1, "same", np.float64),
]
C, B = 2, 3


@pytest.mark.parametrize("H, W, kh, kw, sh, sw, padding, dtype", CONV_CASES)
def test_im2col_and_col2im_equal_cpu(H, W, kh, kw, sh, sw, padding, dtype):
    rng = np.random.default_rng(0)
    out_h, out_w, ph, pw = conv_geometry(H, W, kh, kw, sh, sw, padding)
    geom = (kh, kw, sh, sw, ph, pw, out_h, out_w)
    x = rng.standard_normal((C, H, W, B)).astype(dtype)

    cols = np.empty((C * kh * kw, out_h * out_w * B), dtype)
    cpu.im2col(x, *geom, cols)
    res = _run(gpu.im2col, x, *geom, _nan_like(cols))
    x_after, got = res[0], res[-1]
    np.testing.assert_array_equal(got, cols)  # a copy: exact
    np.testing.assert_array_equal(x_after, x)

    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = np.empty_like(x)
    cpu.col2im(dcols, *geom, dx)
    got = _run(gpu.col2im, dcols, *geom, _nan_like(x))[-1]
    np.testing.assert_allclose(got, dx, rtol=RTOL[dtype], atol=RTOL[dtype])


# Overlapping windows (3x3 stride 2, valid and 'same'), non-overlapping, non-square with
# stride 1. Inputs are negative integers: many ties (the first maximum in window order must
# win, as on the CPU), and padding treated as 0 instead of skipped would win every border
# window.
POOL_CASES = [
    (5, 5, 3, 3, 2, 2, "valid", np.float32),
    (5, 5, 3, 3, 2, 2, "same", np.float32),
    (6, 5, 2, 2, 2, 2, "valid", np.float32),
    (5, 6, 3, 2, 1, 2, "same", np.float32),
    (5, 5, 3, 3, 2, 2, "same", np.float64),
]


@pytest.mark.parametrize("H, W, kh, kw, sh, sw, padding, dtype", POOL_CASES)
def test_maxpool_equals_cpu(H, W, kh, kw, sh, sw, padding, dtype):
    rng = np.random.default_rng(1)
    out_h, out_w, ph, pw = conv_geometry(H, W, kh, kw, sh, sw, padding)
    x = rng.integers(-4, 0, size=(C, H, W, B)).astype(dtype)
    out = np.empty((C, out_h, out_w, B), dtype)
    argmax = np.empty(out.shape, np.int32)
    cpu.maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax)
    got_out, got_arg = _run(gpu.maxpool_forward, x, kh, kw, sh, sw, ph, pw, _nan_like(out),
                            np.full_like(argmax, -1))[-2:]
    np.testing.assert_array_equal(got_out, out)
    np.testing.assert_array_equal(got_arg, argmax)

    # the same windows summed in the same (oh, ow) order: bit for bit
    dy = rng.standard_normal(out.shape).astype(dtype)
    dx = np.empty_like(x)
    cpu.maxpool_backward(dy, argmax, dx)
    got = _run(gpu.maxpool_backward, dy, argmax, _nan_like(x))[-1]
    np.testing.assert_array_equal(got, dx)
    if kh > sh:  # overlapping windows: some pixel must have collected two gradients
        assert (np.bincount(argmax[0, :, :, 0].ravel()) > 1).any()


# (C, radius, beta, dtype): radius below C, radius larger than C (every window is all
# channels), beta 0.75 (the square-root path) and 0.5 (the pow path), float64.
LRN_CASES = [
    (5, 1, 0.75, np.float32),
    (4, 2, 0.5, np.float32),
    (3, 5, 0.75, np.float32),
    (4, 2, 0.75, np.float64),
]


@pytest.mark.parametrize("Cn, radius, beta, dtype", LRN_CASES)
def test_lrn_equals_cpu(Cn, radius, beta, dtype):
    rng = np.random.default_rng(2)
    N = 2 * 4 * B  # (C, H*W*B) with H, W = 2, 4
    # alpha large enough that the window sum moves d well away from bias: a wrong window
    # would not hide under the tolerance
    bias, alpha = 1.5, 0.3
    rtol = RTOL[dtype]
    x = rng.standard_normal((Cn, N)).astype(dtype)
    d, dpow, y = (np.empty_like(x) for _ in range(3))
    cpu.lrn_forward(x, radius, bias, alpha, beta, d, dpow, y)
    got_d, got_dpow, got_y = _run(gpu.lrn_forward, x, radius, bias, alpha, beta, _nan_like(x),
                                  _nan_like(x), _nan_like(x))[-3:]
    np.testing.assert_allclose(got_d, d, rtol=rtol)
    np.testing.assert_allclose(got_dpow, dpow, rtol=rtol)
    np.testing.assert_allclose(got_y, y, rtol=rtol, atol=rtol)

    dy = rng.standard_normal(x.shape).astype(dtype)
    t, dx = np.empty_like(x), np.empty_like(x)
    cpu.lrn_backward(x, y, d, dpow, dy, radius, alpha, beta, t, dx)
    got_t, got_dx = _run(gpu.lrn_backward, x, y, d, dpow, dy, radius, alpha, beta,
                         _nan_like(x), _nan_like(x))[-2:]
    np.testing.assert_allclose(got_t, t, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got_dx, dx, rtol=rtol, atol=rtol)


def test_grid_stride_loop(monkeypatch):
    """With a single block of 128 threads, each thread loops over several elements."""
    monkeypatch.setattr(gpu, "_MAX_BLOCKS", 1)
    rng = np.random.default_rng(3)
    H = W = 6
    out_h, out_w, ph, pw = conv_geometry(H, W, 3, 3, 2, 2, "same")
    geom = (3, 3, 2, 2, ph, pw, out_h, out_w)
    x = rng.standard_normal((C, H, W, B)).astype(np.float32)  # 216 pixels, 648 patch entries
    cols = np.empty((C * 9, out_h * out_w * B), np.float32)
    cpu.im2col(x, *geom, cols)
    np.testing.assert_array_equal(_run(gpu.im2col, x, *geom, _nan_like(cols))[-1], cols)
    dx = np.empty_like(x)
    cpu.col2im(cols, *geom, dx)
    np.testing.assert_allclose(_run(gpu.col2im, cols, *geom, _nan_like(x))[-1], dx, rtol=1e-5)

    # maxpool_backward has a thread per (c, b) column: 200 of them, more than the 128 threads
    x = rng.standard_normal((40, 4, 4, 5)).astype(np.float32)
    out = np.empty((40, 2, 2, 5), np.float32)
    argmax = np.empty(out.shape, np.int32)
    cpu.maxpool_forward(x, 2, 2, 2, 2, 0, 0, out, argmax)
    got = _run(gpu.maxpool_forward, x, 2, 2, 2, 2, 0, 0, _nan_like(out), np.full_like(argmax, -1))
    np.testing.assert_array_equal(got[-1], argmax)
    dx = np.empty_like(x)
    cpu.maxpool_backward(out, argmax, dx)
    np.testing.assert_array_equal(_run(gpu.maxpool_backward, out, argmax, _nan_like(x))[-1], dx)

    x = rng.standard_normal((3, 60)).astype(np.float32)
    d, dpow, y, t, dx = (np.empty_like(x) for _ in range(5))
    cpu.lrn_forward(x, 1, 1.0, 0.3, 0.75, d, dpow, y)
    got_y = _run(gpu.lrn_forward, x, 1, 1.0, 0.3, 0.75, _nan_like(x), _nan_like(x), _nan_like(x))
    np.testing.assert_allclose(got_y[-1], y, rtol=1e-5)
    cpu.lrn_backward(x, y, d, dpow, x, 1, 0.3, 0.75, t, dx)
    got_dx = _run(gpu.lrn_backward, x, y, d, dpow, x, 1, 0.3, 0.75, _nan_like(x), _nan_like(x))
    np.testing.assert_allclose(got_dx[-1], dx, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Compiling for a real GPU
# ---------------------------------------------------------------------------------------------


def test_ptx_examples_match_launchers(monkeypatch):
    """ptx_examples() covers every raw kernel, with the argument types its launcher passes, so
    the PTX test below compiles exactly what a GPU would run. The launchers are called with
    NumPy integers and floats to check that they normalise scalars to Python int / float."""
    launched = {}
    monkeypatch.setattr(gpu, "_launch", lambda kernel, n, *args: launched.setdefault(kernel, args))
    f = np.float32
    x, cols = np.zeros((2, 5, 5, 3), f), np.zeros((18, 75), f)
    pooled, argmax = np.zeros((2, 3, 3, 3), f), np.zeros((2, 3, 3, 3), np.int32)
    v = np.zeros((2, 75), f)  # (C, N)
    i, r = np.int64, np.float64
    geom = (i(3), i(3), i(1), i(1), i(1), i(1), i(5), i(5))
    gpu.im2col(x, *geom, cols)
    gpu.col2im(cols, *geom, x)
    gpu.maxpool_forward(x, *geom[:6], pooled, argmax)
    gpu.maxpool_backward(pooled, argmax, x)
    gpu.lrn_forward(v, i(2), r(1.0), f(1e-4), 0.75, v, v, v)
    gpu.lrn_backward(v, v, v, v, v, i(2), f(1e-4), r(0.75), v, v)

    examples = dict(gpu.ptx_examples())
    kernels = {getattr(gpu, name) for name in dir(gpu) if name.endswith("_kernel")}
    assert set(examples) == kernels == set(launched)
    for kernel, args in launched.items():
        want = [numba.typeof(a) for a in examples[kernel]]
        assert [numba.typeof(a) for a in args] == want, kernel.py_func.__name__
