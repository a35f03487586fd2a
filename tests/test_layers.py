import numpy as np
import pytest
import scipy.sparse as sp

from sparsenn.gradcheck import check_layer, check_model
from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.optim import SGD, Adam
from tests.conftest import random_mask

F64 = dict(dtype=np.float64)


@pytest.mark.parametrize("empty_rows", [(), (0, 3)])
def test_sparse_linear_gradients(rng, empty_rows):
    layer = SparseLinear(random_mask(rng, 6, 9, 0.4, empty_rows, (5,)), rng, **F64)
    layer.bias.value[:] = rng.standard_normal(6)
    check_layer(layer, rng.standard_normal((9, 4)), rng).raise_if_failed()


def test_linear_gradients(rng):
    layer = Linear(7, 5, rng, **F64)
    check_layer(layer, rng.standard_normal((7, 3)), rng).raise_if_failed()


def test_relu_gradient(rng):
    x = rng.standard_normal((5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where the derivative is undefined
    check_layer(ReLU(), x, rng).raise_if_failed()


def test_inplace_relu_gives_the_same_values_in_the_arrays_it_is_given(rng):
    x = rng.standard_normal((7, 33)).astype(np.float32)
    x[0, :5] = 0.0  # on the kink: y = 0 and no gradient, both ways
    dy = rng.standard_normal(x.shape).astype(np.float32)
    plain, inplace = ReLU(), ReLU(inplace=True)
    y = plain.forward(x.copy())
    x_in = x.copy()
    assert inplace.forward(x_in) is x_in
    np.testing.assert_array_equal(x_in, y)
    dx = plain.backward(dy.copy())
    dy_in = dy.copy()
    assert inplace.backward(dy_in) is dy_in
    np.testing.assert_array_equal(dy_in, dx)
    assert inplace._dx is None and repr(inplace) == "ReLU(inplace=True)"
    with pytest.raises(ValueError, match="dy has shape"):  # still checked against the forward's y
        inplace.backward(np.zeros((7, 32), np.float32))


@pytest.mark.parametrize("inplace", [False, True])
def test_whole_network_gradients(rng, inplace):
    model = Sequential(
        SparseLinear(random_mask(rng, 8, 10, 0.3), rng, **F64), ReLU(inplace=inplace),
        SparseLinear(random_mask(rng, 6, 8, 0.5, (2,)), rng, **F64), ReLU(inplace=inplace),
        Linear(6, 4, rng, **F64),
    )
    for p in model.parameters():  # non-zero biases: an empty row's output must not sit on ReLU's kink
        p.value[:] = rng.standard_normal(p.value.shape)
    x = rng.standard_normal((10, 5))
    report = check_model(model, SoftmaxCrossEntropy(), x, rng.integers(0, 4, 5), rng)
    report.raise_if_failed()
    assert report.checked == sum(p.value.size for p in model.parameters())


def test_gradient_checker_reports_the_wrong_entry(rng):
    layer = SparseLinear(random_mask(rng, 4, 5, 0.6), rng, **F64)
    real_backward = layer.backward

    def broken_backward(dy, need_dx=True):
        dx = real_backward(dy, need_dx)
        layer.weight.grad[2] += 0.5  # a bug in one entry
        return dx

    layer.backward = broken_backward
    report = check_layer(layer, rng.standard_normal((5, 3)), rng)
    assert not report.ok
    assert [(w, i) for w, i, _, _ in report.failures] == [("sparse_linear.weight", 2)]
    with pytest.raises(AssertionError, match=r"sparse_linear.weight\[2\]"):
        report.raise_if_failed()


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_full_mask_sparse_equals_dense(rng, batch):
    n_out, n_in = 30, 47
    dense = Linear(n_in, n_out, rng)
    sparse = SparseLinear(np.ones((n_out, n_in), bool), rng)
    sparse.weight.value[:] = dense.weight.value.ravel()  # row-major CSR of a full matrix
    dense.bias.value[:] = sparse.bias.value[:] = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((n_in, batch)).astype(np.float32)
    dy = rng.standard_normal((n_out, batch)).astype(np.float32)
    np.testing.assert_allclose(sparse.forward(x), dense.forward(x), rtol=1e-5, atol=1e-5)
    dx_s = sparse.backward(dy).copy()
    dx_d = dense.backward(dy)
    np.testing.assert_allclose(dx_s, dx_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse.weight.grad, dense.weight.grad.ravel(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sparse.bias.grad, dense.bias.grad, rtol=1e-5, atol=1e-5)


def test_first_layer_skips_dx(rng):
    model = Sequential(SparseLinear(random_mask(rng, 5, 6, 0.5), rng), ReLU(), Linear(5, 3, rng))
    x = rng.standard_normal((6, 4)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x), np.array([0, 1, 2, 0]))
    assert model.backward(loss.backward()) is None
    assert model.layers[0]._dx is None  # never computed


@pytest.mark.parametrize("opt", ["sgd", "nesterov", "adam"])
def test_training_never_creates_connections(rng, opt):
    mask = random_mask(rng, 20, 30, 0.2, (3,), (7,))
    model = Sequential(SparseLinear(mask, rng), ReLU(), SparseLinear(random_mask(rng, 5, 20, 0.3), rng))
    pattern_before = [l.mask().copy() for l in model.weight_layers()]
    params = model.parameters()
    if opt == "adam":
        optim = Adam(params, lr=1e-2, weight_decay=1e-2)
    else:
        optim = SGD(params, lr=0.05, momentum=0.9, nesterov=(opt == "nesterov"), weight_decay=1e-2)
    loss = SoftmaxCrossEntropy()
    x = rng.standard_normal((30, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 16)
    first = None
    for _ in range(100):
        value = loss.forward(model.forward(x), labels)
        first = value if first is None else first
        model.backward(loss.backward())
        optim.step()
    assert value < first  # it learned
    for layer, before in zip(model.weight_layers(), pattern_before):
        assert (layer.mask() != before).nnz == 0  # same pattern, entry for entry
        dense = layer.to_dense()
        assert np.all(dense[~before.toarray()] == 0)  # nothing outside the mask
        assert layer.weight.value.shape == (before.nnz,)
        for st in optim.state[optim._index(layer.weight)].values():
            assert st.shape == (before.nnz,)  # optimiser state only for stored entries


def test_prune_compacts_weights_and_optimizer_state(rng):
    layer = SparseLinear(random_mask(rng, 8, 10, 0.5, (6,)), rng)
    optim = SGD(layer.parameters(), lr=0.1, momentum=0.9)
    optim.state[0]["velocity"][:] = np.arange(layer.nnz)
    dense_before = layer.to_dense()
    keep = np.abs(layer.weight.value) > np.median(np.abs(layer.weight.value))
    kept = layer.prune(keep)
    optim.compact(layer.weight, kept)
    assert layer.nnz == keep.sum()
    expected = np.where(np.abs(dense_before) > np.median(np.abs(dense_before[dense_before != 0])), dense_before, 0)
    np.testing.assert_array_equal(layer.to_dense(), expected)
    np.testing.assert_array_equal(optim.state[0]["velocity"], kept)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), expected @ x, rtol=1e-5, atol=1e-5)  # transpose rebuilt too
    dx = layer.backward(np.ones((8, 3), np.float32))
    np.testing.assert_allclose(dx, expected.T @ np.ones((8, 3)), rtol=1e-5, atol=1e-5)


def test_bad_inputs_name_the_problem(rng):
    layer = SparseLinear(random_mask(rng, 4, 6, 0.5), rng)
    with pytest.raises(ValueError, match=r"input has 5 features .* n_in = 6"):
        layer.forward(np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="dtype must be float32, got float64"):
        layer.forward(np.zeros((6, 2)))
    with pytest.raises(ValueError, match="C-contiguous"):
        layer.forward(np.zeros((2, 6), np.float32).T)
    with pytest.raises(ValueError, match=r"must be 2-D \(n_features, batch\)"):
        layer.forward(np.zeros(6, np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        layer.forward([[0.0] * 2] * 6)
    with pytest.raises(ValueError, match="must be 2-D"):
        SparseLinear(np.ones(6, bool), rng)
    with pytest.raises(TypeError, match="Generator"):
        SparseLinear(np.ones((2, 2), bool), rng=42)
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        loss.forward(np.zeros((3, 2), np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        loss.forward(np.zeros((3, 2), np.float32), np.array([0, 1, 2]))


def test_sparse_mask_from_scipy(rng):
    m = sp.random(5, 7, density=0.4, format="coo", random_state=1) != 0
    layer = SparseLinear(m, rng)
    assert layer.nnz == m.nnz and layer.shape == (5, 7)


def test_activations_start_on_cache_lines(rng):
    """The CPU backend allocates every activation and gradient buffer on a 64-byte boundary
    (backend_cpu.empty: at batch 128 a row is then 8 whole cache lines, not parts of 9)."""
    from sparsenn import backend_cpu
    from sparsenn.models import lenet300

    for shape, dtype in [((784, 128), np.float32), ((3,), np.float64), ((2, 3, 4), np.int32), (5, np.uint8)]:
        for make in (backend_cpu.empty, backend_cpu.zeros):
            a = make(shape, dtype)
            assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
            assert a.dtype == dtype and a.shape == ((shape,) if np.isscalar(shape) else shape)
        assert not backend_cpu.zeros(shape, dtype).any()
    model = lenet300("radix", rng)
    x = backend_cpu.empty((784, 128), np.float32)
    x[...] = rng.random((784, 128))
    out = model.forward(x)
    model.backward(np.ones_like(out))
    for layer in model.layers:
        for buf in (getattr(layer, "_out", None), getattr(layer, "_dx", None)):
            if buf is not None:
                assert buf.ctypes.data % 64 == 0, type(layer).__name__


def test_sparse_mlp_relus_work_in_place_and_train_as_separate_buffers_do():
    """sparse_mlp's ReLUs write over the layer's output and over dy (two buffers fewer per
    hidden layer); a model whose ReLUs keep their own buffers ends three SGD steps with the same
    bits."""
    from sparsenn.models import sparse_mlp

    def build(inplace):
        model = sparse_mlp([64, 64, 64], "random", fan_in=8, rng=np.random.default_rng(3))
        relus = [l for l in model.layers if isinstance(l, ReLU)]
        assert len(relus) == 3 and all(r.inplace for r in relus)
        for r in relus:
            r.inplace = inplace
        return model

    data = np.random.default_rng(4)
    xs = [data.standard_normal((784, 50)).astype(np.float32) for _ in range(3)]
    ys = [data.integers(0, 10, 50) for _ in range(3)]
    params = []
    for inplace in (False, True):
        model, loss = build(inplace), SoftmaxCrossEntropy()
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for x, y in zip(xs, ys):
            loss.forward(model.forward(x.copy()), y)
            model.backward(loss.backward())
            opt.step()
        params.append([p.value.copy() for p in model.parameters()])
        buffers = {id(getattr(l, name)) for l in model.layers for name in ("_out", "_dx")
                   if getattr(l, name, None) is not None}
        if inplace:  # each ReLU's y is its layer's output buffer, and it has no dx of its own
            assert len(buffers) == len(separate) - 2 * 3
        separate = buffers
    for a, b in zip(*params):
        np.testing.assert_array_equal(a, b)
