"""Topologies and models at scale: generators check their degree and sparsity properties on
layers of millions of connections without ever forming a dense matrix; the reduced-format
RadiX-Net equals radix_net; and a sparse MLP with 200,000-wide hidden layers goes through
building, a training step, describing, checkpointing and pruning in a few seconds, under an
address-space cap that any dense (n_out, n_in) array would break."""

import math
import resource
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, settings

from sparsenn import checkpoint, models, pruning
from sparsenn import topology as T
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.optim import SGD

from tests.test_topology import radix_setups

MiB = 2**20


# --------------------------------------------------------------------------------------------
# helpers: canonical form and degrees, vectorised (no loop over rows, no dense matrix)
# --------------------------------------------------------------------------------------------


def assert_canonical(m):
    """Boolean CSR, int32 arrays, every row's columns strictly increasing and in range."""
    assert m.dtype == bool and m.indices.dtype == np.int32 and m.indptr.dtype == np.int32
    assert m.indptr[0] == 0 and m.indptr[-1] == m.nnz == len(m.indices)
    if m.nnz:
        assert 0 <= m.indices.min() and m.indices.max() < m.shape[1]
        step = np.diff(m.indices.astype(np.int64))
        row_start = np.zeros(m.nnz, dtype=bool)
        row_start[m.indptr[:-1][np.diff(m.indptr) > 0]] = True
        assert np.all((step > 0) | row_start[1:]), "a row is unsorted or repeats a column"
    assert m.data.all()


def in_degrees(m):
    return np.diff(m.indptr)


def out_degrees(m):
    return np.bincount(m.indices, minlength=m.shape[1])


def peak_extra(build):
    """(mask, bytes traced at the peak beyond the finished mask's CSR arrays)."""
    tracemalloc.start()
    try:
        m = build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return m, peak - (m.indptr.nbytes + m.indices.nbytes + m.data.nbytes)


# --------------------------------------------------------------------------------------------
# generators at large sizes
# --------------------------------------------------------------------------------------------


def test_random_fan_in_every_row_exact_distinct_sorted():
    rng = np.random.default_rng(0)
    n_out, n_in, k = 300_000, 200_000, 16  # 4.8M connections
    m = T.random_fan_in(n_out, n_in, k, rng)
    assert m.shape == (n_out, n_in)
    assert_canonical(m)
    assert np.all(in_degrees(m) == k)
    # out-degrees ~ Binomial(n_out, k / n_in): mean 24, sd ~4.9
    out = out_degrees(m)
    assert out.mean() == pytest.approx(n_out * k / n_in)
    assert out.std() == pytest.approx(math.sqrt(n_out * k / n_in * (1 - k / n_in)), rel=0.02)
    # per-row counts, and rows over half full (drawn as complements)
    counts = rng.integers(0, 21, size=50_000)
    m = T.random_fan_in(50_000, 20, counts, rng)
    assert_canonical(m)
    assert np.array_equal(in_degrees(m), counts)


def test_random_sparse_density_within_binomial_tolerance():
    rng = np.random.default_rng(1)
    n_out, n_in, p = 200_000, 250_000, 4e-5  # 2,000,000 expected connections
    m = T.random_sparse(n_out, n_in, p, rng)
    assert_canonical(m)
    mean, sd = n_out * n_in * p, math.sqrt(n_out * n_in * p * (1 - p))
    assert abs(m.nnz - mean) < 6 * sd  # P(fail) < 2e-9
    rows = in_degrees(m)  # Binomial(n_in, p): mean 10, variance ~10
    assert rows.var() == pytest.approx(n_in * p * (1 - p), rel=0.03)


def test_xnet_large_exact_in_degree_and_every_input_used():
    m = T.xnet(100_000, 400_000, 8, np.random.default_rng(2))
    assert_canonical(m)
    assert np.all(in_degrees(m) == 8)
    assert out_degrees(m).min() >= 1  # 800,000 slots >= 400,000 inputs: all dealt


def test_radix_net_large_degrees_as_the_theory_says():
    lists, B = [[64, 64, 16]], [1, 2, 2, 1]  # N' = 65536; 3 layers of 4-8M connections
    masks = T.radix_net(lists, B=B, progress=False)
    radices = lists[0]
    for i, m in enumerate(masks):
        assert_canonical(m)
        assert m.shape == (B[i + 1] * 65536, B[i] * 65536)
        assert np.all(in_degrees(m) == B[i] * radices[i])
        assert np.all(out_degrees(m) == B[i + 1] * radices[i])
    # row r of layer 1 (place 64): columns b N' + (r + 64 n) mod N', sorted; spot-check rows
    for r in (0, 1, 65535 - 64 * 63, 65535, 65536 + 7):
        expected = np.sort([b * 65536 + (r % 65536 + 64 * n) % 65536 for b in range(2) for n in range(64)])
        assert np.array_equal(masks[1].indices[masks[1].indptr[r]:masks[1].indptr[r + 1]], expected)
    t0 = time.perf_counter()  # path statistics of such layers are skipped at once, with a note
    desc = T.describe(masks, progress=False)
    assert desc["paths"]["min"] is None and "max_entries" in desc["paths"]["note"]
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("build, cost", [
    (lambda: T._radix_layer(2**20, 8, 2**17, 1, 1), lambda m: T._radix_cost(2**20, 8, 1, 1)),
    (lambda: T.random_fan_in(100_000, 100_000, 100, np.random.default_rng(3)),
     lambda m: T._drawn_cost(*m.shape, m.nnz, False)),
    (lambda: T.random_sparse(2_000, 100_000, 0.05, np.random.default_rng(4)),
     lambda m: T._bernoulli_cost(*m.shape, 0.05)),
    (lambda: T.random_sparse(400, 20_000, 0.7, np.random.default_rng(5)),  # complements
     lambda m: T._bernoulli_cost(*m.shape, 0.7)),
    (lambda: T.xnet(20_000, 100_000, 200, np.random.default_rng(6)),
     lambda m: T._drawn_cost(*m.shape, m.nnz, False)),
])
def test_peak_memory_is_the_mask_plus_the_estimated_temporaries(build, cost):
    # tracemalloc sees NumPy's buffers; the estimate _check_fits uses must bound what is measured
    m, extra = peak_extra(build)
    assert m.nnz >= 4_000_000
    assert extra <= cost(m).extra + 64 * 1024
    assert extra <= 0.2 * m.nnz * 5 + 80 * MiB  # far below the old 40-80 bytes per connection


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_size_changes_no_draw(chunk, monkeypatch):
    """A round draws for all rows, chunk after chunk, before the next round: same stream."""
    def draw_all():
        rng = np.random.default_rng(7)
        return [T.random_sparse(300, 80, 0.1, rng), T.random_sparse(60, 40, 0.8, rng),
                T.random_fan_in(500, 12, 5, rng), T.random_fan_in(200, 10, rng.integers(0, 11, 200), rng),
                T.xnet(300, 40, 30, rng), T.xnet(50, 700, 3, rng)]

    expected = draw_all()
    monkeypatch.setattr(T, "_CHUNK", chunk)
    for a, b in zip(expected, draw_all()):
        assert a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
        assert np.array_equal(a.indices, b.indices)


def test_random_fan_in_matches_random_equivalent_fixed_fan_in():
    base = T.radix_net([[4, 8]], B=[2, 3, 1], progress=False)  # mean in-degree 8 and 12
    eq = T.random_equivalent(base, np.random.default_rng(8), fixed_fan_in=True, progress=False)
    rng = np.random.default_rng(8)
    for m, e in zip(base, eq):
        f = T.random_fan_in(*m.shape, m.nnz // m.shape[0], rng)
        assert np.array_equal(f.indices, e.indices) and np.array_equal(f.indptr, e.indptr)


@pytest.mark.parametrize("args, match", [
    ((10, 5, 6), r"fan_in must be in \[1, 5\], got 6"),
    ((10, 5, 0), r"fan_in must be in \[1, 5\], got 0"),
    ((3, 5, np.array([1, 2])), r"shape \(3,\)"),
    ((3, 5, np.array([1, 6, 2])), r"fan_in\[1\] = 6 is outside \[0, n_in = 5\]"),
    ((3, 5, np.array([1.0, 2.0, 3.0])), "integer"),
])
def test_random_fan_in_errors(args, match):
    with pytest.raises(ValueError, match=match):
        T.random_fan_in(*args, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# the reduced format and the sparse-MLP RadiX-Net
# --------------------------------------------------------------------------------------------


def _same(a, b):
    return all(x.shape == y.shape and (x != y).nnz == 0 for x, y in zip(a, b)) and len(a) == len(b)


def test_radix_widths_examples():
    # LeNet-300-100's RadiX-Net: N' = gcd(800, 300, 100) = 100, B = 8, 3, 1; r = 30/3, 10/1
    assert _same(T.radix_widths([800, 300, 100], [30, 10], progress=False),
                 T.radix_net([[10, 10]], B=[8, 3, 1], progress=False))
    # two lists: 4 * 2 = 8 closes the first; [2, 2] divides 8
    assert _same(T.radix_widths([8, 16, 8, 8, 8], [8, 2, 2, 2], progress=False),
                 T.radix_net([[4, 2], [2, 2]], B=[1, 2, 1, 1, 1], progress=False))


@settings(max_examples=40, deadline=None)
@given(radix_setups())
def test_radix_widths_equals_radix_net(setup):
    lists, B = setup
    assume(math.gcd(*B) == 1)  # else gcd(widths) is a multiple of N' and names another net
    n_prime = math.prod(lists[0])
    radices = [r for radix_list in lists for r in radix_list]
    widths = [b * n_prime for b in B]
    out_degrees = [B[i + 1] * r for i, r in enumerate(radices)]
    assert _same(T.radix_widths(widths, out_degrees, progress=False), T.radix_net(lists, B=B, progress=False))


@pytest.mark.parametrize("widths, degrees, match", [
    ([16, 32, 16], [3, 4], r"out_degrees\[0\] = 3 is not a multiple of B\[1\] = widths\[1\] / N' = "
                           r"32 / 16 = 2 \(N' = gcd\(widths\) = 16\)"),
    ([16, 16, 16], [3, 2], r"radix 0 \(out_degrees\[0\] / B\[1\] = 3 / 1\) = 3 does not divide N' / 1 = 16"),
    ([16, 16, 16], [4, 8], r"radix 1 \(out_degrees\[1\] / B\[2\] = 8 / 1\) = 8 does not divide N' / 4 = 4"),
    ([16, 16, 16], [2, 2], r"multiply to 4, not N' = 16"),
    ([16, 16, 16], [4], "one out-degree per layer, 2 for 3 widths"),
    ([16], [], "at least two"),
    ([16, 0], [1], r"widths\[1\] must be >= 1"),
])
def test_radix_widths_errors(widths, degrees, match):
    with pytest.raises(ValueError, match=match):
        T.radix_widths(widths, degrees)


def _keep_columns_reference(n_prime, radix, b_in, b_out, n_inputs):
    """The padded first layer from _radix_layer, then the kept columns selected by SciPy."""
    full = T._radix_layer(n_prime, radix, 1, b_in, b_out)
    m = full[:, np.arange(n_inputs) * (b_in * n_prime) // n_inputs]
    m.sort_indices()
    return m


@pytest.mark.parametrize("n_prime, radix, b_in, b_out, n_inputs", [
    (64, 8, 1, 1, 50), (64, 8, 1, 3, 64), (12, 4, 3, 2, 31), (12, 12, 2, 1, 13), (16, 1, 2, 2, 5),
])
def test_radix_input_layer_equals_its_padded_reference(n_prime, radix, b_in, b_out, n_inputs):
    a = T._radix_input_layer(n_prime, radix, b_in, b_out, n_inputs)
    b = _keep_columns_reference(n_prime, radix, b_in, b_out, n_inputs)
    assert_canonical(a)
    assert a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def test_radix_mlp_degrees_paths_and_no_dead_neurons():
    masks = T.radix_mlp(784, [4096] * 4, 32, progress=False)
    assert [m.shape for m in masks] == [(4096, 784)] + [(4096, 4096)] * 3
    for m in masks:
        assert_canonical(m)
    assert set(np.unique(in_degrees(masks[0]))) == {24, 25}  # 784 / 32 = 24.5 on average
    assert masks[0].nnz == 784 * 128  # every kept input keeps out-degree r_0 = N' / 32 = 128
    assert out_degrees(masks[0]).min() == 128
    for m in masks[1:]:
        assert np.all(in_degrees(m) == 32) and np.all(out_degrees(m) == 32)
    paths = T.describe(masks, progress=False)["paths"]  # radices [[128, 32], [32, 32]]
    assert paths["all_equal"] and paths["min"] == 32 * 32 and paths["all_reachable"]
    # 262,144-wide, the study's top model: O(nnz), well under a second
    t0 = time.perf_counter()
    big = T.radix_mlp(784, [2**18] * 4, 32, progress=False)
    assert time.perf_counter() - t0 < 10
    assert sum(m.nnz for m in big) == 784 * 8192 + 3 * 2**18 * 32
    assert in_degrees(big[0]).min() == 24 and out_degrees(big[0]).min() >= 1


def test_radix_mlp_with_kronecker_widths_and_small_inputs():
    masks = T.radix_mlp(100, [64, 128, 64], 8, progress=False)  # N' = 64, B = 1, 2, 1
    assert [m.shape for m in masks] == [(64, 100), (128, 64), (64, 128)]
    assert np.all(in_degrees(masks[1]) == 8) and np.all(in_degrees(masks[2]) == 8)
    assert in_degrees(masks[0]).min() >= 1
    assert T.describe(masks, progress=False)["paths"]["all_equal"]


@pytest.mark.parametrize("widths, fan_in, match", [
    ([1024], 32, "at least two hidden widths"),
    ([4096, 1024], 6, r"fan_in = 6 is not a multiple of B\[0\] = widths\[0\] / N' = 4096 / 1024 = 4"),
    ([1000, 1000], 32, r"radices \[32\].*no first-layer radix r_0 \(a divisor of N' = gcd\(widths\) = 1000\)"),
    ([1024, 1024], 0, "fan_in must be >= 1"),
])
def test_radix_mlp_errors(widths, fan_in, match):
    with pytest.raises(ValueError, match=match):
        T.radix_mlp(784, widths, fan_in)


def test_radix_mlp_refuses_before_allocating(monkeypatch):
    monkeypatch.setattr(T, "available_memory", lambda: 64 * MiB)
    for name in ("_radix_layer", "_radix_input_layer"):
        monkeypatch.setattr(T, name, lambda *a: pytest.fail("built before refusing"))
    with pytest.raises(T.TopologyTooLarge, match="RadiX-Net MLP 784-262144-262144"):
        T.radix_mlp(784, [2**18] * 2, 32)


# --------------------------------------------------------------------------------------------
# a sparse MLP 200,000 wide: nothing on its path may be O(neurons^2)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def address_space_cap():
    """Cap this process's address space at its current size + 3 GiB for the test: a dense
    (200,000 x 200,000) array, even of bools (40 GB), cannot be allocated, so an O(n^2) step
    fails at once with MemoryError instead of swapping or passing unnoticed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    cap = size + 3 * 2**30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _step(model, opt, x, y):
    loss = SoftmaxCrossEntropy()
    value = loss(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()
    return value


def test_sparse_mlp_200k_wide_build_train_describe_checkpoint_prune(address_space_cap, tmp_path):
    t0 = time.perf_counter()
    widths = [200_000, 200_000]
    build = lambda: models.sparse_mlp(widths, "random", fan_in=8, rng=np.random.default_rng(0))  # noqa: E731
    model = build()
    fc1, fc2, fc3 = model.weight_layers()
    assert (fc1.shape, fc2.shape, fc3.shape) == ((200_000, 784), (200_000, 200_000), (10, 200_000))
    assert fc1.nnz == fc2.nnz == 1_600_000 and fc3.nnz == 2_000_000  # dense logits

    rng = np.random.default_rng(1)
    x = rng.standard_normal((784, 4)).astype(np.float32)
    y = np.array([0, 3, 7, 9])
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    w0 = pruning.initial_weights(model)  # sparse layers as CSR: no dense 200,000^2 copy
    before = fc2.weight.value.copy()
    assert np.isfinite(_step(model, opt, x, y))
    assert not np.array_equal(before, fc2.weight.value)

    table = models.layer_table(model)
    assert "(200000, 200000)" in table and "1,600,000" in table
    assert models.dead_neurons(fc2)[0] == 0
    desc = T.describe([fc1.mask(), fc2.mask()], progress=False)
    assert desc["nnz"] == 3_200_000 and desc["paths"]["min"] is None

    path = tmp_path / "big.npz"
    checkpoint.save_checkpoint(path, model, opt, step=1)
    other = models.sparse_mlp(widths, "random", fan_in=8, rng=np.random.default_rng(99))
    other_opt = SGD(other.parameters(), lr=0.01, momentum=0.9)
    checkpoint.restore(checkpoint.read_checkpoint(path), other, other_opt)
    for a, b in zip(model.weight_layers(), other.weight_layers()):
        assert np.array_equal(a.weight.value, b.weight.value)
    assert np.array_equal(fc2.pattern.indices, other.weight_layers()[1].pattern.indices)

    # prune half of the sparse layers' connections (sparsity counts against the dense size)
    full = sum(l.shape[0] * l.shape[1] for l in (fc1, fc2))
    report = pruning.prune_once(model, 1 - 1_600_000 / full, layers=["fc1", "fc2"], optimizer=opt)
    assert sum(r["nnz"] for r in report) == pytest.approx(1_600_000, abs=10)
    assert np.isfinite(_step(model, opt, x, y))
    fc2 = model.weight_layers()[1]
    pruning.rewind(model, w0)  # the lottery-ticket rewind, looked up in the CSR copy
    rows, cols = fc2.pattern.row_of_entry(), fc2.pattern.indices
    expected = np.asarray(w0[1][0][rows[:1000], cols[:1000]]).ravel()  # SciPy's own lookup
    np.testing.assert_array_equal(fc2.weight.value[:1000], expected)
    assert time.perf_counter() - t0 < 60  # a few seconds; minutes would mean O(n^2) work


def test_sparse_mlp_radix_and_random_equivalent_have_the_same_connections():
    rng = np.random.default_rng(2)
    radix = models.sparse_mlp([4096] * 3, "radix", fan_in=32, rng=rng)
    twin = models.sparse_mlp([4096] * 3, "random-equivalent", fan_in=32, rng=rng)
    for a, b in zip(radix.weight_layers(), twin.weight_layers()):
        assert a.nnz == b.nnz
        if hasattr(a, "pattern"):
            assert np.array_equal(np.diff(a.pattern.indptr), np.diff(b.pattern.indptr))
            assert not np.array_equal(a.pattern.indices, b.pattern.indices)
    # actual-fan-in initialisation, as in LeNet: std sqrt(2 / in-degree) per row
    fc2 = radix.weight_layers()[1]
    assert fc2.weight.value.std() == pytest.approx(math.sqrt(2 / 32), rel=0.02)
    bern = models.sparse_mlp([1000, 500], "random", density=0.01, rng=rng)
    assert bern.weight_layers()[1].nnz == pytest.approx(5000, abs=300)
    xnet = models.sparse_mlp([1000, 500], "xnet", fan_in=4, rng=rng)
    assert np.all(np.diff(xnet.weight_layers()[0].pattern.indptr) == 4)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(topology="radix"), ValueError, "exactly one of fan_in"),
    (dict(topology="radix", fan_in=8, density=0.1), ValueError, "exactly one of fan_in"),
    (dict(topology="radix", density=0.1), ValueError, "density applies to the 'random' topology"),
    (dict(topology="dense", fan_in=8), ValueError, "unknown sparse MLP topology 'dense'"),
    (dict(topology="random", fan_in=2.5), ValueError, "fan_in must be an integer >= 1"),
    (dict(topology="random", fan_in=900), ValueError, r"fan_in = 900 exceeds the 784 inputs of layer fc1"),
    (dict(topology="random", fan_in=8, rng=0), TypeError, "numpy.random.Generator"),
])
def test_sparse_mlp_errors(kwargs, exc, match):
    kwargs.setdefault("rng", np.random.default_rng(0))
    with pytest.raises(exc, match=match):
        models.sparse_mlp([1024, 1024], **kwargs)
    if exc is ValueError:  # the check alone raises the same, building nothing
        check = {k: v for k, v in kwargs.items() if k in ("fan_in", "density")}
        with pytest.raises(ValueError, match=match):
            models.check_sparse_mlp([1024, 1024], kwargs["topology"], **check)


@pytest.mark.parametrize("widths, fan_in, match", [
    ([1000, 1000], 7, "no first-layer radix r_0"),
    ([3 * 2**10, 2**11], 32, r"not a multiple of B\[0\]"),
    ([10**8] * 2, 32, "int32 CSR indices"),
])
def test_check_sparse_mlp_refuses_what_radix_mlp_refuses_without_building(widths, fan_in, match):
    tracemalloc.start()
    try:
        for name in ("radix", "random-equivalent"):
            with pytest.raises(ValueError, match=match):
                models.check_sparse_mlp(widths, name, fan_in=fan_in)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20  # nothing built
    with pytest.raises(ValueError, match=match):
        T.radix_mlp(784, widths, fan_in, progress=False)
    models.check_sparse_mlp([4096] * 4, "radix", fan_in=32)  # the study's models pass
    models.check_sparse_mlp([2**18] * 4, "random-equivalent", fan_in=32)


def test_a_random_equivalent_model_that_cannot_be_built_says_why_in_its_own_terms(rng):
    # its in-degrees are a RadiX-Net's: the error names that, and the topology that has no such limit
    for call in (lambda: models.check_sparse_mlp([7] * 4, "random-equivalent", fan_in=32),
                 lambda: models.sparse_mlp([7] * 4, "random-equivalent", fan_in=32, rng=rng)):
        with pytest.raises(ValueError, match="random-equivalent takes each neuron's in-degree from the RadiX-Net.*"
                                             "no first-layer radix r_0.*topology 'random' draws"):
            call()
    with pytest.raises(ValueError) as radix:
        models.check_sparse_mlp([7] * 4, "radix", fan_in=32)
    assert "random-equivalent" not in str(radix.value)


def test_cli_widths_and_mlp(capsys):
    assert T.main(["widths", "--widths", "800,300,100", "--out-degrees", "30,10"]) == 0
    out = capsys.readouterr().out
    assert "N' = 100, B = [8, 3, 1]" in out and "3 for every input/output pair" in out
    assert T.main(["mlp", "--widths", "4096x3", "--fan-in", "32"]) == 0
    out = capsys.readouterr().out
    assert "4096 x 784" in out and "24..25" in out and "32 for every input/output pair" in out
    assert T.main(["widths", "--widths", "16,16,16", "--out-degrees", "3,2"]) == 2
    assert "3 does not divide N' / 1 = 16" in capsys.readouterr().err
