import numpy as np
import pytest

from sparsenn.layers import Parameter
from sparsenn.kernels import (adam_update, adam_update_ref, adam_update_serial, sgd_update, sgd_update_ref,
                              sgd_update_serial)
from sparsenn.optim import SGD, Adam


@pytest.mark.parametrize("kernel", [sgd_update, sgd_update_serial])
@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 1e-3), (0.9, True, 5e-4)])
def test_sgd_kernel_matches_twin(rng, momentum, nesterov, wd, kernel):
    w, g, v = (rng.standard_normal(101).astype(np.float32) for _ in range(3))
    w2, v2 = w.copy(), v.copy()
    for _ in range(3):
        kernel(w, g, v, 0.1, momentum, wd, nesterov)
        sgd_update_ref(w2, g, v2, 0.1, momentum, wd, nesterov)
    np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, v2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [adam_update, adam_update_serial])
def test_adam_kernel_matches_twin(rng, kernel):
    w, g = rng.standard_normal(57), rng.standard_normal(57)
    m, v = np.zeros(57), np.zeros(57)
    w2, m2, v2 = w.copy(), m.copy(), v.copy()
    for t in range(1, 4):
        bc1, bc2 = 1 - 0.9**t, 1 - 0.999**t
        kernel(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-2, bc1, bc2)
        adam_update_ref(w2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, 1e-2, bc1, bc2)
    np.testing.assert_allclose(w, w2, rtol=1e-12)


def test_plain_sgd_is_w_minus_lr_g():
    p = Parameter(np.ones(4, np.float32), "w")
    p.grad[:] = [1, 2, 3, 4]
    SGD([p], lr=0.5).step()
    np.testing.assert_allclose(p.value, [0.5, 0, -0.5, -1])


def test_weight_decay_skips_biases():
    w = Parameter(np.ones(3, np.float32), "w")
    b = Parameter(np.ones(3, np.float32), "b", decay=False)
    SGD([w, b], lr=0.1, weight_decay=0.5).step()  # zero gradients: only decay moves things
    np.testing.assert_allclose(w.value, 0.95)
    np.testing.assert_allclose(b.value, 1.0)


def test_adam_first_step_moves_by_lr():
    p = Parameter(np.zeros(3, np.float64), "w")
    p.grad[:] = [1e-3, -5.0, 2.0]
    Adam([p], lr=0.01).step()  # bias-corrected first step is lr * sign(g)
    np.testing.assert_allclose(p.value, [-0.01, 0.01, -0.01], rtol=1e-4)


def test_state_dict_round_trip(rng):
    p = Parameter(rng.standard_normal(5).astype(np.float32), "w")
    opt = Adam([p], lr=0.1)
    p.grad[:] = 1
    opt.step()
    state = opt.state_dict()
    opt2 = Adam([Parameter(p.value.copy(), "w")], lr=0.1)
    opt2.load_state_dict(state)
    assert opt2.steps == 1
    np.testing.assert_array_equal(opt2.state[0]["m"], opt.state[0]["m"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0), "learning rate must be > 0"),
    (dict(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (dict(lr=0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (dict(lr=float("nan")), "learning rate must be > 0 and finite, got nan"),
    (dict(lr=float("inf")), "learning rate must be > 0 and finite, got inf"),
    (dict(lr=0.1, weight_decay=float("nan")), "weight_decay must be >= 0 and finite, got nan"),
])
def test_sgd_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([Parameter(np.zeros(2, np.float32), "w")], **kwargs)


def test_lr_scale_multiplies_the_learning_rate_of_one_parameter():
    from sparsenn.layers import Parameter
    from sparsenn.optim import SGD

    a = Parameter(np.ones(3, np.float32), "a")
    b = Parameter(np.ones(3, np.float32), "b", lr_scale=0.25)
    a.grad[:] = b.grad[:] = 1.0
    SGD([a, b], lr=0.4).step()
    np.testing.assert_allclose(a.value, 1 - 0.4)
    np.testing.assert_allclose(b.value, 1 - 0.1)


def test_sparse_mlp_scales_only_a_readout_wider_than_65536():
    from sparsenn import models

    rng = np.random.default_rng(0)
    narrow = models.sparse_mlp([64, 64], fan_in=8, rng=rng)
    wide = models.sparse_mlp([256, 256], fan_in=8, rng=rng, readout_lr_scale=0.25)
    assert narrow.layers[-1].weight.lr_scale == 1.0 and wide.layers[-1].weight.lr_scale == 0.25
    assert models.READOUT_WIDTH == 65536
    assert all(p.lr_scale == 1.0 for p in wide.parameters() if p is not wide.layers[-1].weight)


def test_the_optimiser_steps_small_and_large_parameters_alike(rng):
    """backend_cpu runs parameters under SERIAL_BELOW entries on one thread: same arithmetic."""
    from sparsenn import backend_cpu

    for n in (backend_cpu.SERIAL_BELOW - 1, backend_cpu.SERIAL_BELOW + 1):
        w, g, v = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        w2, v2 = w.copy(), v.copy()
        backend_cpu.sgd_update(w, g, v, 0.1, 0.9, 5e-4, True)
        sgd_update_ref(w2, g, v2, 0.1, 0.9, 5e-4, True)
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)


def test_sum_batch_matches_twin(rng):
    from sparsenn.kernels import sum_batch, sum_batch_parallel, sum_batch_ref

    for kernel in (sum_batch, sum_batch_parallel):
        for shape in ((300, 100), (7, 1), (50, 19600), (0, 5), (1001, 100)):
            dy = rng.standard_normal(shape).astype(np.float32)
            out = np.full(shape[0], np.nan, np.float32)
            kernel(dy, out)
            np.testing.assert_allclose(out, sum_batch_ref(dy), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
                                  lambda ps: Adam(ps, lr=0.01, weight_decay=1e-2)])
def test_a_step_in_parts_is_the_whole_step(rng, make):
    """What data-parallel ranks sharing one copy of the weights do: each updates its part of all
    parameters laid end to end; parts that split a parameter, or skip one, give the same bits."""
    def params():
        r = np.random.default_rng(3)
        ps = [Parameter(r.standard_normal(s).astype(np.float32), n, decay=(n != "b"))
              for s, n in (((7, 5), "w"), (5, "b"), (40, "w2"))]
        return ps

    whole, parts = params(), params()
    opt_whole, opt_parts = make(whole), make(parts)
    for _ in range(3):
        g = [rng.standard_normal(p.value.shape).astype(np.float32) for p in whole]
        for p, q, gi in zip(whole, parts, g):
            p.grad[...] = gi
            q.grad[...] = gi
        opt_whole.step()
        for rank, (lo, hi) in enumerate(((0, 30), (30, 38), (38, 80))):  # three ranks, in any order
            opt_parts.step(part=(lo, hi))
            if rank < 2:
                opt_parts.steps -= 1  # one step, taken by three ranks (each counts it once)
    for p, q in zip(whole, parts):
        np.testing.assert_array_equal(p.value, q.value)
    first = params()
    opt = make(first)
    first[1].grad[...] = 1.0
    opt.step(part=(35, 40))  # only the bias (positions 35-39) moves
    np.testing.assert_array_equal(first[0].value, params()[0].value)
    assert not np.array_equal(first[1].value, params()[1].value)
