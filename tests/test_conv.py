"""Convolutional layers: kernels against their NumPy twins, col2im as im2col's adjoint, float64
gradient checks of every layer and of a small network, sparse-with-full-mask equals dense, and
the CIFAR-10 input pipeline.

To step through a kernel in a debugger: NUMBA_DISABLE_JIT=1 pytest tests/test_conv.py -k twin
"""

import numpy as np
import pytest
import scipy.sparse as sp

from sparsenn import augment
from sparsenn.conv import Conv2d, Flatten, LocalResponseNorm, MaxPool2d, SparseConv2d
from sparsenn.gradcheck import check_layer, check_model
from sparsenn.im2col import (
    col2im,
    col2im_ref,
    conv_geometry,
    im2col,
    im2col_ref,
    lrn_backward,
    LRN_BLOCK,
    lrn_backward_plain,
    lrn_backward_ref,
    lrn_forward,
    lrn_forward_plain,
    lrn_forward_ref,
    maxpool_backward,
    maxpool_backward_ref,
    maxpool_forward,
    maxpool_forward_ref,
    sparse_conv_backward,
    sparse_conv_forward,
    sparse_conv_ref,
)
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.optim import SGD
from tests.conftest import random_mask

F64 = dict(dtype=np.float64)

# (C, H, W, batch, kh, kw, sh, sw, padding): odd sizes, batch 1, strides 2 and 3, every padding kind
GEOMETRIES = [
    (2, 5, 7, 3, 3, 3, 1, 1, "same"),
    (3, 7, 6, 1, 3, 2, 2, 2, "same"),
    (2, 9, 8, 2, 5, 5, 2, 3, "valid"),
    (1, 4, 4, 2, 3, 3, 1, 2, (1, 2)),
    (2, 5, 5, 1, 2, 2, 2, 2, "same"),
    (3, 12, 12, 2, 3, 3, 2, 2, "same"),  # TF's 3x3/2 'same' pooling: pads only bottom/right
    (1, 6, 5, 1, 5, 5, 1, 1, 3),  # padding larger than needed: whole windows of zeros
]


def _geom(C, H, W, B, kh, kw, sh, sw, pad):
    out_h, out_w, ph, pw = conv_geometry(H, W, kh, kw, sh, sw, pad)
    return (kh, kw, sh, sw, ph, pw, out_h, out_w)


def test_conv_geometry_follows_tensorflow():
    assert conv_geometry(28, 28, 5, 5, 1, 1, "same") == (28, 28, 2, 2)
    assert conv_geometry(24, 24, 3, 3, 2, 2, "same") == (12, 12, 0, 0)  # total pad 1: bottom/right
    assert conv_geometry(25, 25, 3, 3, 2, 2, "same") == (13, 13, 1, 1)
    assert conv_geometry(28, 28, 5, 5, 1, 1, "valid") == (24, 24, 0, 0)
    assert conv_geometry(7, 7, 3, 3, 2, 2, 1) == (4, 4, 1, 1)
    with pytest.raises(ValueError, match="does not fit a 3x3 input"):
        conv_geometry(3, 3, 5, 5, 1, 1, "valid")


@pytest.mark.parametrize("g", GEOMETRIES)
def test_im2col_and_col2im_equal_their_twins_and_are_adjoint(rng, g):
    C, H, W, B = g[:4]
    geom = _geom(*g)
    x = rng.standard_normal((C, H, W, B))
    cols = np.full((C * g[4] * g[5], geom[6] * geom[7] * B), np.nan)  # every entry must be written
    im2col(x, *geom, cols)
    np.testing.assert_array_equal(cols, im2col_ref(x, *geom))
    c = rng.standard_normal(cols.shape)
    dx = np.full_like(x, np.nan)
    col2im(c, *geom, dx)
    np.testing.assert_allclose(dx, col2im_ref(c, C, H, W, B, *geom), rtol=1e-12, atol=1e-12)
    # col2im is the transpose of im2col: <im2col(x), c> == <x, col2im(c)>
    assert np.isclose(np.vdot(cols, c), np.vdot(x, dx), rtol=1e-12)


@pytest.mark.parametrize("g", [g for g in GEOMETRIES if not isinstance(g[8], int)][:6])
def test_maxpool_kernels_equal_their_twins(rng, g):
    C, H, W, B = g[:4]
    kh, kw, sh, sw, ph, pw, out_h, out_w = _geom(*g)
    x = rng.standard_normal((C, H, W, B)).astype(np.float32)
    x[0, 0, :2] = 1.5  # a tie: both pick the first maximum in window order
    out = np.empty((C, out_h, out_w, B), np.float32)
    arg = np.empty(out.shape, np.int32)
    maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, arg)
    ref_out, ref_arg = maxpool_forward_ref(x, kh, kw, sh, sw, ph, pw, out_h, out_w)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.full_like(x, np.nan)
    maxpool_backward(dy, arg, dx)
    np.testing.assert_allclose(dx, maxpool_backward_ref(dy, arg, H, W), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])  # the running window, and the plain loops beside it
@pytest.mark.parametrize("beta", [0.75, 0.5])  # 0.75 takes the square-root path
@pytest.mark.parametrize("radius", [0, 2, 4, 9])  # 9: every window holds every channel
@pytest.mark.parametrize("N", [3 * 2 * 5, 2 * LRN_BLOCK + 37])  # one block; several, the last partial
def test_lrn_kernels_equal_their_twins(rng, beta, radius, fast, N):
    fwd, bwd = (lrn_forward, lrn_backward) if fast else (lrn_forward_plain, lrn_backward_plain)
    x = rng.standard_normal((7, N))
    dy = rng.standard_normal(x.shape)
    d, dpow, y, t, dx = (np.full_like(x, np.nan) for _ in range(5))
    fwd(x, radius, 1.5, 0.3, beta, d, dpow, y)
    ref_y, ref_d = lrn_forward_ref(x, radius, 1.5, 0.3, beta)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12)
    np.testing.assert_allclose(d, ref_d, rtol=1e-12)
    np.testing.assert_allclose(dpow, ref_d ** -beta, rtol=1e-12)
    bwd(x, y, d, dpow, dy, radius, 0.3, beta, t, dx)
    np.testing.assert_allclose(t, dy * ref_y / ref_d, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, lrn_backward_ref(x, dy, radius, 1.5, 0.3, beta), rtol=1e-10, atol=1e-12)
    # float32, as in training: the running sums stay within float32 rounding of the twin
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    d, dpow, y, t, dx = (np.full_like(x32, np.nan) for _ in range(5))
    fwd(x32, radius, 1.5, 0.3, beta, d, dpow, y)
    bwd(x32, y, d, dpow, dy32, radius, 0.3, beta, t, dx)
    np.testing.assert_allclose(y, ref_y, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(dx, lrn_backward_ref(x, dy, radius, 1.5, 0.3, beta), rtol=2e-4, atol=2e-5)


def test_conv2d_computes_a_cross_correlation(rng):
    """Against the definition, pixel by pixel: y[o,h,w] = b[o] + sum W[o,c,i,j] x[c,h+i-p,w+j-p]."""
    layer = Conv2d(2, 3, (3, 2), rng, padding=(1, 0), **F64)
    layer.bias.value[:] = rng.standard_normal(3)
    x = rng.standard_normal((2, 4, 5, 2))
    y = layer.forward(x)
    w = layer.weight.value.reshape(3, 2, 3, 2)  # (C_out, C_in, kh, kw)
    xp = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    want = np.empty((3, 4, 4, 2))
    for h in range(4):
        for v in range(4):
            want[:, h, v] = np.einsum("ocij,cijb->ob", w, xp[:, h:h + 3, v:v + 2]) + layer.bias.value[:, None]
    np.testing.assert_allclose(y, want, rtol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, "same"), (1, "valid"), (2, "same"), (2, 1), ((2, 1), (0, 2))])
def test_conv2d_gradients(rng, stride, padding):
    layer = Conv2d(2, 3, 3, rng, stride=stride, padding=padding, **F64)
    layer.bias.value[:] = rng.standard_normal(3)
    report = check_layer(layer, rng.standard_normal((2, 5, 6, 2)), rng)
    report.raise_if_failed()
    assert report.checked == 3 * 18 + 3 + 2 * 5 * 6 * 2


@pytest.mark.parametrize("empty_rows", [(), (1,)])
def test_sparse_conv2d_gradients(rng, empty_rows):
    mask = random_mask(rng, 3, 2 * 3 * 2, 0.5, empty_rows, (4,))
    layer = SparseConv2d(2, 3, (3, 2), mask, rng, stride=(2, 1), padding="same", **F64)
    layer.bias.value[:] = rng.standard_normal(3)
    check_layer(layer, rng.standard_normal((2, 5, 6, 2)), rng).raise_if_failed()


def test_flat_input_is_viewed_through_input_shape(rng):
    layer = Conv2d(2, 3, 3, rng, padding="same", input_shape=(2, 4, 5), **F64)
    x = rng.standard_normal((2 * 4 * 5, 3))
    y = layer.forward(x)
    assert y.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(y, layer.forward(x.reshape(2, 4, 5, 3)))
    check_layer(layer, x, rng).raise_if_failed()  # dx comes back (40, 3), as x was given
    assert layer.backward(np.ones_like(y)).shape == (40, 3)


def test_pooling_lrn_flatten_gradients(rng):
    # distinct values 0.1 apart: a perturbation of 1e-6 can never change which pixel wins
    x = rng.permutation(2 * 7 * 5 * 2).reshape(2, 7, 5, 2) * 0.1
    check_layer(MaxPool2d(3, 2, "same"), x, rng).raise_if_failed()
    check_layer(MaxPool2d(2), x, rng).raise_if_failed()
    check_layer(MaxPool2d((2, 3), (1, 2), (1, 1)), x, rng).raise_if_failed()
    check_layer(LocalResponseNorm(2, 1.0, 0.3, 0.75), rng.standard_normal((7, 3, 2, 2)), rng).raise_if_failed()
    check_layer(LocalResponseNorm(1, 2.0, 0.5, 0.6), rng.standard_normal((4, 3, 2, 2)), rng).raise_if_failed()
    check_layer(Flatten(), rng.standard_normal((3, 2, 2, 2)), rng).raise_if_failed()


def test_small_conv_network_gradients(rng):
    model = Sequential(
        Conv2d(1, 4, 3, rng, padding="same", input_shape=(1, 8, 8), **F64), ReLU(),
        MaxPool2d(3, 2, "same"), LocalResponseNorm(2, 1.0, 0.2),
        SparseConv2d(4, 5, 3, random_mask(rng, 5, 36, 0.4), rng, padding="same", **F64), ReLU(),
        LocalResponseNorm(2, 1.0, 0.2), MaxPool2d(2), Flatten(),
        SparseLinear(random_mask(rng, 8, 20, 0.5), rng, **F64), ReLU(), Linear(8, 3, rng, **F64),
    )
    for p in model.parameters():  # non-zero biases: no activation sits on ReLU's kink
        p.value[...] += 0.1 * rng.standard_normal(p.value.shape)
    report = check_model(model, SoftmaxCrossEntropy(), rng.standard_normal((64, 4)), rng.integers(0, 3, 4), rng)
    report.raise_if_failed()
    assert report.checked == sum(p.value.size for p in model.parameters())


@pytest.mark.parametrize("batch,stride,padding", [(1, 1, "same"), (7, 2, "valid"), (31, (1, 2), 1)])
def test_full_mask_sparse_conv_equals_dense(rng, batch, stride, padding):
    kw = dict(stride=stride, padding=padding)
    dense = Conv2d(3, 8, 3, rng, **kw)
    sparse = SparseConv2d(3, 8, 3, np.ones((8, 3, 3, 3), bool), rng, **kw)  # 4-D mask accepted
    sparse.weight.value[:] = dense.weight.value.ravel()  # row-major CSR of a full matrix
    dense.bias.value[:] = sparse.bias.value[:] = rng.standard_normal(8).astype(np.float32)
    x = rng.standard_normal((3, 9, 10, batch)).astype(np.float32)
    y = dense.forward(x)
    np.testing.assert_allclose(sparse.forward(x), y, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(sparse.backward(dy), dense.backward(dy), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse.weight.grad, dense.weight.grad.ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sparse.bias.grad, dense.bias.grad, rtol=1e-4, atol=1e-4)


# ---- SparseConv2d one window position at a time (float32, batches of 16 to 143) -------------

# (C, H, W, batch, kh, kw, sh, sw, padding, density, parts): LeNet-5's conv2, strides, every
# padding kind, batch tails of 0, 1, 2 and 15 columns, whole windows of zeros, more parts than
# rows. The batches need only three of the eight compiled kernels (16 NV + tail for NV = 1, 3,
# 6: about 20 s of compilation each on a cold cache), the ones training at batch 16-31, 50 and
# 100 uses anyway.
PATCHWISE = [
    (20, 14, 14, 100, 5, 5, 1, 1, "same", 0.1, 2),
    (3, 9, 7, 16, 3, 3, 2, 2, "valid", 0.5, 3),
    (3, 9, 7, 111, 3, 2, 2, 3, (1, 2), 0.3, 1),
    (2, 5, 5, 50, 5, 5, 1, 1, "same", 0.9, 4),
    (1, 6, 5, 17, 5, 5, 1, 1, 3, 0.7, 2),
]


def _patchwise_case(rng, g):
    C, H, W, B, kh, kw, sh, sw, pad, density, parts = g
    geom = _geom(C, H, W, B, kh, kw, sh, sw, pad)
    c_out = 6 if C < 20 else 50
    mask = random_mask(rng, c_out, C * kh * kw, density, empty_rows=(1,))  # a filter with no weights
    x = rng.standard_normal((C, H, W, B)).astype(np.float32)
    dy = rng.standard_normal((c_out, geom[6] * geom[7] * B)).astype(np.float32)
    return geom, mask, x, dy, parts


@pytest.mark.parametrize("g", PATCHWISE)
@pytest.mark.parametrize("with_bias,need_dx", [(True, True), (False, False)])
def test_patchwise_sparse_conv_kernels_equal_their_twin(rng, g, with_bias, need_dx):
    geom, mask, x, dy, parts = _patchwise_case(rng, g)
    layer = SparseConv2d(x.shape[0], mask.shape[0], geom[:2], mask, rng)  # for its pattern and weights
    pat, w = layer.pattern, layer.weight.value
    bias = rng.standard_normal(mask.shape[0]).astype(np.float32) if with_bias else None
    y = np.full(dy.shape, np.nan, np.float32)  # every entry must be written
    sparse_conv_forward(x, *geom, pat.indptr, pat.indices, w, bias, y, parts)
    dw = np.full(pat.nnz, np.nan, np.float32)
    dx = np.full(x.shape, np.nan, np.float32) if need_dx else None
    sparse_conv_backward(x, *geom, pat.indptr, pat.indices, pat.t_indptr, pat.t_rows, pat.t_perm, w, dy, dw, dx,
                         parts)
    dense = layer.to_dense().astype(np.float64)
    y_ref, dw_ref, dx_ref = sparse_conv_ref(x.astype(np.float64), *geom, dense,
                                            None if bias is None else bias.astype(np.float64), dy.astype(np.float64))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    rows = np.repeat(np.arange(mask.shape[0]), np.diff(pat.indptr))
    dw_ref = dw_ref[rows, pat.indices]  # the twin's dW at the stored entries
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())
    if need_dx:
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * np.abs(dx_ref).max())


@pytest.mark.parametrize("g", PATCHWISE)
def test_sparse_conv2d_patchwise_equals_the_patch_matrix(rng, g):
    """The layer's patch-by-patch path against its im2col path (``patchwise = False``), over two
    steps (buffers reused) and as a first layer (flat input, no input gradient)."""
    geom, mask, x, dy, _ = _patchwise_case(rng, g)
    C, H, W, B = x.shape
    kw = dict(stride=geom[2:4], padding=g[8])
    a = SparseConv2d(C, mask.shape[0], geom[:2], mask, rng, **kw)
    b = SparseConv2d(C, mask.shape[0], geom[:2], mask, rng, **kw)
    b.patchwise = False
    b.weight.value[:] = a.weight.value
    b.bias.value[:] = a.bias.value
    for step in range(2):
        xs = x if step == 0 else rng.standard_normal(x.shape).astype(np.float32)
        ya = a.forward(xs)
        yb = b.forward(xs)
        assert a._x4 is not None and b._x4 is None  # a went patch by patch, b through the patch matrix
        np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-5 * np.abs(yb).max())
        dya = (dy if step == 0 else rng.standard_normal(dy.shape).astype(np.float32)).reshape(ya.shape)
        np.testing.assert_allclose(a.backward(dya), b.backward(dya), rtol=1e-4, atol=1e-5 * np.abs(dya).max())
        for pa, pb in ((a.weight, b.weight), (a.bias, b.bias)):
            np.testing.assert_allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-5 * np.abs(pb.grad).max())
    # the first layer of a model: a flat (C*H*W, batch) input, and no input gradient
    first = [SparseConv2d(C, mask.shape[0], geom[:2], mask, rng, input_shape=(C, H, W), **kw) for _ in range(2)]
    first[1].patchwise = False
    first[1].weight.value[:] = first[0].weight.value
    first[1].bias.value[:] = first[0].bias.value
    flat = x.reshape(C * H * W, B)
    outs = [layer.forward(flat) for layer in first]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5 * np.abs(outs[1]).max())
    assert [layer.backward(dy.reshape(outs[0].shape), need_dx=False) for layer in first] == [None, None]
    np.testing.assert_allclose(first[0].weight.grad, first[1].weight.grad, rtol=1e-4,
                               atol=1e-5 * np.abs(first[1].weight.grad).max())


def test_patchwise_is_taken_only_where_its_kernels_run(rng):
    mask = random_mask(rng, 4, 2 * 9, 0.5)
    for batch, dtype, taken in ((100, np.float32, True), (16, np.float32, True), (15, np.float32, False),
                                (144, np.float32, False), (100, np.float64, False)):
        layer = SparseConv2d(2, 4, 3, mask, rng, padding="same", dtype=dtype)
        layer.forward(rng.standard_normal((2, 6, 6, batch)).astype(dtype))
        assert (layer._x4 is not None) == taken, (batch, dtype)


def test_sparse_conv_prunes_like_sparse_linear(rng):
    layer = SparseConv2d(2, 4, 3, random_mask(rng, 4, 18, 0.6), rng, padding="same")
    assert isinstance(layer, SparseLinear) and layer.shape == (4, 18)  # the filter bank
    optim = SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    layer.forward(x)  # buffers exist before the pattern changes
    kept = layer.prune(np.abs(layer.weight.value) > np.median(np.abs(layer.weight.value)))
    optim.compact(layer.weight, kept)
    dense = Conv2d(2, 4, 3, rng, padding="same")
    dense.weight.value[:] = layer.to_dense()
    dense.bias.value[:] = layer.bias.value
    np.testing.assert_allclose(layer.forward(x), dense.forward(x), rtol=1e-5, atol=1e-5)
    dy = np.ones((4, 5, 5, 3), np.float32)
    np.testing.assert_allclose(layer.backward(dy), dense.backward(dy), rtol=1e-5, atol=1e-5)
    assert optim.state[0]["velocity"].shape == (layer.nnz,)


def test_dense_conv_to_sparse_keeps_the_function(rng):
    dense = Conv2d(2, 4, 3, rng, stride=2, padding="same")
    mask = rng.random(dense.shape) < 0.5
    dense.weight.value[~mask] = 0
    sparse = dense.to_sparse(mask)
    assert isinstance(sparse, SparseConv2d) and sparse.nnz == mask.sum() and sparse.bias is dense.bias
    assert (sparse.mask() != sp.csr_matrix(mask)).nnz == 0 and dense.mask().nnz == 4 * 18
    x = rng.standard_normal((2, 6, 7, 2)).astype(np.float32)
    np.testing.assert_allclose(sparse.forward(x), dense.forward(x), rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_problem(rng):
    layer = Conv2d(2, 3, 3, rng, input_shape=(2, 5, 5))
    with pytest.raises(ValueError, match=r"input has 3 channels .* expects 2"):
        layer.forward(np.zeros((3, 5, 5, 1), np.float32))
    with pytest.raises(ValueError, match=r"flat input has 49 features .* C\*H\*W = 50"):
        layer.forward(np.zeros((49, 2), np.float32))
    with pytest.raises(TypeError, match="dtype must be float32, got float64"):
        layer.forward(np.zeros((2, 5, 5, 1)))
    with pytest.raises(ValueError, match="C-contiguous"):
        layer.forward(np.zeros((1, 5, 5, 2), np.float32).T)
    with pytest.raises(ValueError, match="does not fit a 2x2 input"):
        Conv2d(2, 3, 3, rng).forward(np.zeros((2, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"mask must have shape \(C_out, C_in\*kh\*kw\) = \(3, 18\)"):
        SparseConv2d(2, 3, 3, np.ones((3, 9), bool), rng)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid'"):
        Conv2d(2, 3, 3, rng, padding="full")
    with pytest.raises(ValueError, match="smaller than the window"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        Conv2d(2, 3, 0, rng)


# ------------------------------------------------------------------ CIFAR-10 input pipeline


def test_crop_flip_standardize_equals_its_twin(rng):
    images = rng.integers(0, 256, (5, 3, 9, 8), dtype=np.uint8)
    images[4] = 7  # a flat image: std 0, divided by the floor 1/sqrt(n) instead, giving zeros
    oy, ox = rng.integers(0, 4, 5), rng.integers(0, 3, 5)
    flip = np.array([True, False, True, False, True])
    out = np.empty((5, 3 * 6 * 6), np.float32)
    augment.crop_flip_standardize(images, oy, ox, flip, 6, out)
    np.testing.assert_allclose(out, augment.crop_flip_standardize_ref(images, oy, ox, flip, 6), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:4].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:4].std(axis=1), 1, rtol=1e-4)
    assert np.all(out[4] == 0)
    # the flip mirrors columns: image 0's first crop column is the source's last one
    crop = images[0, :, oy[0]:oy[0] + 6, ox[0]:ox[0] + 6].astype(np.float64)
    first_col = out[0].reshape(3, 6, 6)[:, :, 0]
    np.testing.assert_allclose(first_col, (crop[:, :, -1] - crop.mean()) / crop.std(), rtol=1e-4, atol=1e-5)


def test_crops_are_seeded_and_centre_crops_are_centred(rng):
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    a = augment.random_crops(images, augment.epoch_rng(3, 1))
    b = augment.random_crops(images, augment.epoch_rng(3, 1))
    c = augment.random_crops(images, augment.epoch_rng(3, 2))
    assert a.shape == (6, 3 * 24 * 24) and np.array_equal(a, b) and not np.array_equal(a, c)
    centre = augment.center_crops(images)
    want = augment.per_image_standardization(images[:, :, 4:28, 4:28].reshape(6, -1))
    np.testing.assert_allclose(centre, want, rtol=1e-5, atol=1e-5)
    x_train = np.empty((6, 3 * 24 * 24), np.float32)
    crops = augment.EpochCrops(images, x_train, seed=3, steps_per_epoch=2)
    crops.fill(1)
    np.testing.assert_array_equal(x_train, a)
    crops.on_step_end(3, None, None)  # mid-epoch: nothing changes
    np.testing.assert_array_equal(x_train, a)
    crops.on_step_end(4, None, None)  # end of epoch 1 (0-based): epoch 2's crops
    np.testing.assert_array_equal(x_train, c)
