"""Issue 11, items 2-4: what the layers refuse, and the exact words they refuse it with.

(2) every backward checks its dy against the forward it inverts (shape, dtype, contiguity),
    and refuses to run before a forward;
(3) a mask is boolean, 0/1 integers or a scipy.sparse pattern, never a float array;
(4) a mask with no connections is refused unless allow_empty=True; dead neurons are counted
    by models.layer_table.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from sparsenn.conv import Conv2d, Flatten, LocalResponseNorm, MaxPool2d, SparseConv2d
from sparsenn import layers, models
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.models import layer_table, lenet5, lenet5_spec, lenet300, sequential_from_masks
from tests.conftest import random_mask

# ---------------------------------------------------------------- (2) backward checks its dy


def _layers(rng):
    """One of each layer, with the input (float32, batch 4) its forward takes."""
    img = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return [
        (Linear(6, 5, rng, name="fc1"), img(6, 4)),
        (SparseLinear(random_mask(rng, 5, 6, 0.5), rng, name="fc2"), img(6, 4)),
        (ReLU(name="relu1"), img(5, 4)),
        (Conv2d(2, 3, 3, rng, padding="same", name="conv1"), img(2, 5, 5, 4)),
        (SparseConv2d(2, 3, 3, random_mask(rng, 3, 18, 0.5), rng, padding="same", name="conv2"), img(2, 5, 5, 4)),
        (MaxPool2d(2, name="pool1"), img(2, 4, 4, 4)),
        (LocalResponseNorm(2, name="norm1"), img(3, 4, 4, 4)),
        (Flatten(name="flat"), img(2, 3, 3, 4)),
    ]


LAYER_NAMES = ["fc1", "fc2", "relu1", "conv1", "conv2", "pool1", "norm1", "flat"]


@pytest.mark.parametrize("i", range(len(LAYER_NAMES)), ids=LAYER_NAMES)
def test_backward_before_forward_is_a_clear_error(rng, i):
    layer, _ = _layers(rng)[i]
    with pytest.raises(RuntimeError, match=rf"^{LAYER_NAMES[i]}: backward called before forward"):
        layer.backward(np.zeros((5, 4), np.float32))


@pytest.mark.parametrize("i", range(len(LAYER_NAMES)), ids=LAYER_NAMES)
def test_backward_checks_dy_against_the_forward(rng, i):
    layer, x = _layers(rng)[i]
    name = LAYER_NAMES[i]
    y = layer.forward(x)
    shape = y.shape
    smaller = np.zeros(shape[:-1] + (3,), np.float32)  # another batch size
    with pytest.raises(ValueError, match=rf"^{name}: dy has shape {re_tuple(smaller.shape)}, expected "
                                         rf"{re_tuple(shape)}, the shape of the last forward's output \(batch 4\)"):
        layer.backward(smaller)
    with pytest.raises(TypeError, match=rf"^{name}: dy dtype must be float32, the forward output's, got float64"):
        layer.backward(np.zeros(shape))
    strided = np.zeros(shape[:-1] + (8,), np.float32)[..., ::2]  # right shape, not contiguous
    with pytest.raises(ValueError, match=rf"^{name}: dy must be C-contiguous"):
        layer.backward(strided)
    with pytest.raises(TypeError, match=rf"^{name}: .* its dy must be a numpy.ndarray, got list"):
        layer.backward(np.zeros(shape, np.float32).tolist())
    layer.backward(np.ones(shape, np.float32))  # the right dy still works after the refusals


def re_tuple(t) -> str:
    return str(tuple(t)).replace("(", r"\(").replace(")", r"\)")


def test_sparse_linear_smaller_dy_no_longer_reads_past_its_end(rng):
    # the case: forward at batch 8, dy for 5 samples -> dx was garbage, now an error
    layer = SparseLinear(rng.random((30, 50)) < 0.2, rng, name="fc1")
    layer.forward(rng.standard_normal((50, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=r"fc1: dy has shape \(30, 5\), expected \(30, 8\)"):
        layer.backward(np.ones((30, 5), np.float32))
    # ... and the other way round: a large forward batch, dy for one sample (grad was non-finite)
    layer.forward(rng.standard_normal((50, 2000)).astype(np.float32))
    with pytest.raises(ValueError, match=r"fc1: dy has shape \(30, 1\), expected \(30, 2000\)"):
        layer.backward(np.ones((30, 1), np.float32))


def test_backward_follows_the_latest_forward(rng):
    # an evaluation forward at another batch size changes what backward expects
    model = Sequential(SparseLinear(random_mask(rng, 5, 6, 0.5), rng, name="fc1"), ReLU(),
                       Linear(5, 3, rng, name="fc2"))
    model.forward(np.ones((6, 8), np.float32))
    model.forward(np.ones((6, 3), np.float32))
    model.backward(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"fc2: dy has shape \(3, 8\), expected \(3, 3\)"):
        model.backward(np.ones((3, 8), np.float32))


def test_move_forgets_the_forward(rng):
    layer = Linear(4, 2, rng, name="fc1")
    layer.forward(np.ones((4, 2), np.float32))
    layer.to("cpu")  # buffers dropped: the next backward needs a new forward
    with pytest.raises(RuntimeError, match="fc1: backward called before forward"):
        layer.backward(np.ones((2, 2), np.float32))


def test_sequential_backward_with_the_checks(rng):
    # every layer kind in one chain: each dx handed down is exactly the dy the layer below expects
    model = Sequential(
        Conv2d(1, 3, 3, rng, padding="same", input_shape=(1, 6, 6), name="conv1"), ReLU(),
        MaxPool2d(2, name="pool1"), LocalResponseNorm(1, name="norm1"),
        SparseConv2d(3, 4, 3, random_mask(rng, 4, 27, 0.5), rng, padding="same", name="conv2"), ReLU(),
        Flatten(), SparseLinear(random_mask(rng, 8, 36, 0.5), rng, name="fc1"), ReLU(), Linear(8, 3, rng, name="fc2"),
    )
    loss = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="^fc2: backward called before forward"):
        model.backward(np.zeros((3, 5), np.float32))
    x = rng.standard_normal((36, 5)).astype(np.float32)
    loss.forward(model.forward(x), rng.integers(0, 3, 5))
    assert model.backward(loss.backward()) is None  # the first layer's dx is skipped
    dx = model.backward(loss.backward(), need_dx=True)
    assert dx.shape == x.shape  # the flat (C*H*W, batch) shape the first conv was given
    assert all(np.isfinite(p.grad).all() for p in model.parameters())


def test_backward_checks_on_cuda(rng):
    """The same checks on device arrays (the simulator without a GPU; see tests/conftest.py)."""
    from sparsenn.device import cuda_status

    if not cuda_status()[0]:
        pytest.skip(cuda_status()[1])
    from numba import cuda

    layer = SparseLinear(random_mask(rng, 3, 4, 0.5), rng, name="fc1").to("cuda")
    with pytest.raises(RuntimeError, match="fc1: backward called before forward"):
        layer.backward(cuda.to_device(np.zeros((3, 2), np.float32)))
    layer.forward(cuda.to_device(np.ones((4, 2), np.float32)))
    with pytest.raises(TypeError, match="fc1: the layer is on device 'cuda', so its dy must be a CUDA device array"):
        layer.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"fc1: dy has shape \(3, 1\), expected \(3, 2\)"):
        layer.backward(cuda.to_device(np.zeros((3, 1), np.float32)))
    layer.backward(cuda.to_device(np.zeros((3, 2), np.float32)))


def test_loss_checks(rng):
    loss = SoftmaxCrossEntropy()
    with pytest.raises(RuntimeError, match="^loss: backward called before forward"):
        loss.backward()
    with pytest.raises(TypeError, match="^loss: logits must be float32 or float64, got int64"):
        loss.forward(np.zeros((3, 2), np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match="^loss: .* its logits must be a numpy.ndarray, got list"):
        loss.forward([[0.0, 1.0]] * 3, np.array([0, 1]))
    with pytest.raises(TypeError, match="^loss: labels must be integers, got float64"):
        loss.forward(np.zeros((3, 2), np.float32), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^loss: labels must have shape \(2,\) to match logits \(3, 2\), got \(5,\)"):
        loss.forward(np.zeros((3, 2), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"^xent: labels must be in \[0, 3\), got range \[0, 7\]"):
        SoftmaxCrossEntropy(name="xent").forward(np.zeros((3, 2), np.float32), np.array([0, 7]))


# ---------------------------------------------------------------- (3) what a mask may be


def test_float_mask_is_refused(rng):
    # the case: rng.random((30, 50)) used to become a full 1500/1500 layer
    with pytest.raises(TypeError, match=r"^fc1: mask must be boolean \(or 0/1 integers, or a scipy.sparse pattern\), "
                                        r"got an array of dtype float64, shape \(30, 50\); if you meant its "
                                        r"nonzeros as the pattern, pass `m != 0` \(or `m.astype\(bool\)`\)"):
        SparseLinear(rng.random((30, 50)), rng, name="fc1")
    with pytest.raises(TypeError, match="got an array of dtype float32"):  # 0.0/1.0 floats too: floats are weights
        SparseLinear(np.ones((3, 4), np.float32), rng)


@pytest.mark.parametrize("mask, error, match", [
    (np.array([[1, 0], [2, 1]]), ValueError, r"an integer mask must hold only 0 and 1, got an array of dtype int64 "
                                             r"with values in \[0, 2\]; pass `m != 0`"),
    (np.array([[-1, 0], [1, 1]], np.int8), ValueError, r"values in \[-1, 1\]"),
    (np.array([[True, None]], dtype=object), TypeError, "got an array of dtype object, shape"),
    (np.array([["a", "b"]]), TypeError, "got an array of dtype <U1"),
    (np.ones((2, 2), np.complex64), TypeError, "got an array of dtype complex64"),
    (np.ones(6, bool), ValueError, r"mask must be 2-D \(n_out, n_in\) with n_out, n_in >= 1, got shape \(6,\)"),
    (np.ones((2, 3, 4), bool), ValueError, r"got shape \(2, 3, 4\)"),
    (np.ones((0, 4), bool), ValueError, r"got shape \(0, 4\)"),
    (sp.csr_matrix((np.array([0.5, 0.0, 2.0]), [0, 1, 1], [0, 2, 3]), shape=(2, 2)), ValueError,
     r"a scipy.sparse matrix of dtype float64 is read as a pattern .* it stores 1 zeros and 0 NaNs"),
    (sp.csr_matrix(([np.nan, 1.0], ([0, 1], [0, 1])), shape=(2, 2)), ValueError, "stores 0 zeros and 1 NaNs"),
    (sp.csr_matrix(([3, 1], ([0, 1], [0, 1])), shape=(2, 2)), ValueError,
     r"a scipy.sparse matrix of dtype int64 with values in \[1, 3\]"),
    (sp.csr_matrix(np.ones((2, 2), np.complex128)), TypeError, "got a scipy.sparse matrix of dtype complex128"),
])
def test_bad_masks_say_what_was_given(rng, mask, error, match):
    with pytest.raises(error, match=r"^fc3: .*" + match):
        SparseLinear(mask, rng, name="fc3")


def test_accepted_masks_give_the_same_pattern(rng):
    m = random_mask(rng, 7, 9, 0.4)
    want = SparseLinear(m, rng).mask()
    weights = sp.random(7, 9, density=0.4, random_state=3, format="coo")  # float values, none zero
    for given in [m.astype(np.int64), m.astype(np.uint8), m.tolist(), sp.csr_matrix(m),
                  sp.coo_matrix(m.astype(np.int32))]:
        assert (SparseLinear(given, rng).mask() != want).nnz == 0
    # a float scipy.sparse matrix is a pattern: its stored positions are the connections
    assert (SparseLinear(weights, rng).mask() != (weights != 0)).nnz == 0
    # stored False / 0 in a bool or integer scipy.sparse mask: no connection (the values decide)
    explicit = sp.csr_matrix(([True, False, True], ([0, 0, 1], [0, 1, 2])), shape=(2, 3))
    assert SparseLinear(explicit, rng).nnz == 2 and explicit.nnz == 3  # and the user's matrix is untouched


def test_as_mask_returns_canonical_bool_csr():
    m = layers.as_mask(sp.coo_matrix(([1, 1], ([1, 0], [2, 0])), shape=(2, 3)), "m")
    assert m.dtype == bool and m.has_sorted_indices and m.nnz == 2


def test_conv_and_model_builders_check_masks(rng):
    # (a 4-D mask is reported as the filter bank (C_out, C_in*kh*kw) that it is read as)
    with pytest.raises(TypeError, match=r"^conv2: mask must be boolean .* dtype float64, shape \(3, 18\)"):
        SparseConv2d(2, 3, 3, rng.random((3, 2, 3, 3)), rng, name="conv2")
    SparseConv2d(2, 3, 3, (rng.random((3, 2, 3, 3)) < 0.5).astype(np.int8), rng)  # 4-D 0/1 integers
    with pytest.raises(TypeError, match=r"^fc2: mask must be boolean .* dtype float64, shape \(4, 6\)"):
        sequential_from_masks([np.ones((6, 5), bool), rng.random((4, 6))], rng)
    # a full float mask used to pass LeNet-5's "is it full?" test and become a dense layer
    spec = lenet5_spec("mnist", "caffe")
    masks = [np.ones(s) for s in spec["shapes"]]
    with pytest.raises(TypeError, match=r"^conv1: mask must be boolean .* dtype float64, shape \(20, 25\)"):
        lenet5("mnist", rng=rng, masks=masks, variant="caffe")


def test_project_masks_still_build(rng):
    # topology generators give boolean scipy.sparse CSR
    for name in ("radix", "random", "xnet"):
        model = lenet300(name, np.random.default_rng(0))
        assert isinstance(model.layers[0], SparseLinear) and model.layers[0].nnz > 0
    lenet5("mnist", "random", np.random.default_rng(0), variant="caffe")


# ---------------------------------------------------------------- (4) empty masks, dead neurons


def test_empty_mask_is_refused_unless_allowed(rng):
    empty = np.zeros((100, 300), bool)
    with pytest.raises(ValueError, match=r"^fc2: the mask has no connections \(0 of 100x300\); "
                                         r"pass allow_empty=True if this is intended$"):
        SparseLinear(empty, rng, name="fc2")
    layer = SparseLinear(empty, rng, name="fc2", allow_empty=True)
    layer.bias.value[:] = np.arange(100)
    y = layer.forward(np.ones((300, 4), np.float32))
    np.testing.assert_array_equal(y, np.repeat(np.arange(100, dtype=np.float32)[:, None], 4, axis=1))  # bias only
    assert not layer.backward(np.ones((100, 4), np.float32)).any()
    with pytest.raises(ValueError, match=r"^conv2: the mask has no connections \(0 of 4x18\)"):
        SparseConv2d(2, 4, 3, sp.csr_matrix((4, 18), dtype=bool), rng, name="conv2")
    SparseConv2d(2, 4, 3, sp.csr_matrix((4, 18), dtype=bool), rng, name="conv2", allow_empty=True)


def test_builders_refuse_an_empty_layer(rng):
    masks = [random_mask(rng, 300, 784, 0.1), np.zeros((100, 300), bool)]
    with pytest.raises(ValueError, match=r"^fc2: the mask has no connections \(0 of 100x300\)"):
        lenet300(rng=rng, masks=masks)
    assert lenet300(rng=rng, masks=masks, allow_empty=True).layers[2].nnz == 0
    spec = lenet5_spec("mnist", "caffe")
    masks = [np.ones(s, bool) for s in spec["shapes"]]
    masks[1] = np.zeros(spec["shapes"][1], bool)
    with pytest.raises(ValueError, match=r"^conv2: the mask has no connections \(0 of 50x500\)"):
        lenet5("mnist", rng=rng, masks=masks, variant="caffe")
    assert lenet5("mnist", rng=rng, masks=masks, variant="caffe", allow_empty=True).weight_layers()[1].nnz == 0


def test_dense_to_sparse_conversion_keeps_an_empty_mask(rng):
    # pruning's conversion represents whatever the pruning left, even nothing
    conv = Conv2d(2, 3, 3, rng, name="conv1")
    assert conv.to_sparse(np.zeros(conv.shape, bool)).nnz == 0


def test_layer_table_counts_dead_neurons(rng):
    m1 = random_mask(rng, 8, 10, 0.5, empty_rows=(0, 3), empty_cols=(5,))
    m2 = random_mask(rng, 6, 8, 0.6, empty_cols=(1, 2, 4))
    model = sequential_from_masks([m1, m2], rng, n_classes=4)
    for layer, m in zip(model.weight_layers(), [m1, m2]):
        want = int((m.sum(axis=1) == 0).sum()), int((m.sum(axis=0) == 0).sum())
        assert models.dead_neurons(layer) == want
    assert models.dead_neurons(model.weight_layers()[2]) == (0, 0)  # the dense logits layer
    table = layer_table(model)
    lines = table.splitlines()
    assert lines[0].split()[-2:] == ["dead", "out/in"]
    dead = [line.split()[-1] for line in lines[1:-1]]
    d1, d2 = models.dead_neurons(model.weight_layers()[0]), models.dead_neurons(model.weight_layers()[1])
    assert dead == [f"{d1[0]}/{d1[1]}", f"{d2[0]}/{d2[1]}", "0/0", f"{d1[0] + d2[0]}/{d1[1] + d2[1]}"]
    assert lines[-1].startswith("dead out/in: outputs with no inputs / inputs feeding no output")
