import numpy as np
import pytest

from sparsenn import init
from sparsenn.csr import CSRPattern
from sparsenn.layers import Linear, SparseLinear


@pytest.mark.parametrize("scheme, expected_std", [
    ("kaiming_normal", np.sqrt(2 / 400)),
    ("kaiming_uniform", np.sqrt(2 / 400)),
    ("truncated_normal", np.sqrt(2 / 400)),
    ("xavier_normal", np.sqrt(2 / (400 + 300))),
    ("xavier_uniform", np.sqrt(2 / (400 + 300))),
])
def test_scheme_standard_deviations(rng, scheme, expected_std):
    w = init.dense_weights(scheme, (300, 400), rng)
    assert w.dtype == np.float32 and w.shape == (300, 400)
    assert w.std() == pytest.approx(expected_std, rel=0.02)


def test_truncated_normal_is_truncated(rng):
    w = init.truncated_standard_normal(100_000, rng)
    assert np.abs(w).max() <= 2.0


def test_actual_fan_in_keeps_activation_variance(rng):
    # A 90%-sparse layer scaled by its real fan-in gives outputs with the variance of a dense
    # layer; scaled by the dense fan-in (mask applied afterwards) the variance drops ~10x.
    n_in, n_out, batch = 1000, 500, 200
    x = rng.standard_normal((n_in, batch)).astype(np.float32)
    mask = rng.random((n_out, n_in)) < 0.1
    dense_var = Linear(n_in, n_out, rng).forward(x).var()
    actual_var = SparseLinear(mask, rng, fan="actual").forward(x).var()
    masked_var = SparseLinear(mask, rng, fan="dense").forward(x).var()
    assert actual_var == pytest.approx(dense_var, rel=0.1)
    assert masked_var == pytest.approx(dense_var / 10, rel=0.15)


def test_per_entry_fans_follow_rows(rng):
    mask = np.zeros((2, 100), bool)
    mask[0, :4] = True  # fan-in 4
    mask[1, :] = True  # fan-in 100
    p = CSRPattern.from_mask(mask)
    w = np.concatenate([init.sparse_weights("kaiming_uniform", p, rng) for _ in range(2000)]).reshape(2000, -1)
    bound_row0 = np.sqrt(3) * np.sqrt(2 / 4)
    assert np.abs(w[:, :4]).max() <= bound_row0 + 1e-6
    assert np.abs(w[:, :4]).max() > 0.9 * bound_row0
    assert np.abs(w[:, 4:]).max() <= np.sqrt(6 / 100) + 1e-6


def test_init_errors(rng):
    with pytest.raises(ValueError, match="unknown initialiser 'he'"):
        init.dense_weights("he", (2, 2), rng)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        init.dense_weights("kaiming_normal", (2, 2), 0)
    with pytest.raises(ValueError, match="fan must be 'actual' or 'dense'"):
        init.sparse_weights("kaiming_normal", CSRPattern.from_mask(np.ones((2, 2), bool)), rng, fan="x")
