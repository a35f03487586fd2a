"""Every CUDA kernel of sparsenn.cuda_kernels against its CPU twin, and a training step on the
CUDA backend against the same step on the CPU.

Without a GPU these run on Numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1), which runs each GPU thread as a Python thread: shapes stay tiny. On a
machine with a GPU the same tests run on it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import cuda

from sparsenn import backend_cpu, backend_cuda
from sparsenn import cuda_kernels as ck
from sparsenn.csr import CSRPattern
from sparsenn.kernels import gather_batch_ref, sddmm_ref, softmax_xent_ref, spmm_ref
from sparsenn.kernels import adam_update_ref, sgd_update_ref
from tests.conftest import REPO, random_mask

dev = cuda.to_device


def _pattern(rng, n_out, n_in, density, long_row=None):
    m = random_mask(rng, n_out, n_in, density, empty_rows=(1,), empty_cols=(0,))
    if long_row is not None:  # a row with more than 32 entries: sddmm's chunk loop runs twice
        m[long_row, 1:] = True
    return CSRPattern.from_mask(m)


@pytest.mark.parametrize("bias", [False, True])
def test_spmm_forward_and_transpose_match_reference(rng, bias):
    p = _pattern(rng, 6, 9, 0.4)
    w = rng.standard_normal(p.nnz).astype(np.float32)
    x = rng.standard_normal((9, 40)).astype(np.float32)  # 40 columns: one full and one partial warp
    b = rng.standard_normal(6).astype(np.float32)
    out = cuda.device_array((6, 40), np.float32)
    backend_cuda.spmm(p, dev(w), dev(x), out, dev(b) if bias else None)
    want = spmm_ref(p.indptr, p.indices, w, x) + (b[:, None] if bias else 0)
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-5, atol=1e-5)

    dy = rng.standard_normal((6, 40)).astype(np.float32)
    dx = cuda.device_array((9, 40), np.float32)
    backend_cuda.spmm_t(p, dev(w), dev(dy), dx)
    dense = p.to_scipy(w).toarray()
    np.testing.assert_allclose(dx.copy_to_host(), dense.T @ dy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.copy_to_host(), spmm_ref(p.t_indptr, p.t_rows, w, dy, p.t_perm),
                               rtol=1e-5, atol=1e-5)


def test_sddmm_matches_reference_including_rows_longer_than_a_warp(rng):
    p = _pattern(rng, 4, 40, 0.2, long_row=2)
    assert np.diff(p.indptr).max() > 32
    dy = rng.standard_normal((4, 37)).astype(np.float32)
    x = rng.standard_normal((40, 37)).astype(np.float32)
    out = cuda.device_array(p.nnz, np.float32)
    backend_cuda.sddmm(p, dev(dy), dev(x), out)
    np.testing.assert_allclose(out.copy_to_host(), sddmm_ref(p.indptr, p.indices, dy, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_numpy_for_each_transpose(rng, ta, tb):
    m, k, n = 18, 20, 3  # 18 rows: two tiles; 20 inner: two tile steps, the second partial
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    out = cuda.device_array((m, n), np.float32)
    backend_cuda.matmul(dev(a), dev(b), out, ta=ta, tb=tb)
    want = (a.T if ta else a) @ (b.T if tb else b)
    np.testing.assert_allclose(out.copy_to_host(), want, rtol=1e-5, atol=1e-5)


def test_bias_relu_mask_and_sums_match_numpy(rng):
    y = rng.standard_normal((3, 150)).astype(np.float32)  # 150 > 128 threads of a reduction
    b = rng.standard_normal(3).astype(np.float32)
    d = dev(y)
    ck.add_bias(d, dev(b))
    np.testing.assert_allclose(d.copy_to_host(), y + b[:, None], rtol=1e-6)
    s = cuda.device_array(3, np.float32)
    ck.sum_batch(dev(y), s)
    np.testing.assert_allclose(s.copy_to_host(), y.sum(axis=1), rtol=1e-5, atol=1e-5)

    x = rng.standard_normal((4, 50)).astype(np.float32)
    out = cuda.device_array_like(x)
    ck.relu(dev(x), out)
    r = out.copy_to_host()
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    g = rng.standard_normal((4, 50)).astype(np.float32)
    dx = cuda.device_array_like(x)
    ck.relu_backward(out, dev(g), dx)
    np.testing.assert_array_equal(dx.copy_to_host(), g * (r > 0))

    mask = rng.random((4, 50)) < 0.5
    w = dev(x)
    ck.multiply(w, dev(mask))
    np.testing.assert_array_equal(w.copy_to_host(), x * mask)


def test_softmax_xent_matches_reference_and_counts_bad_labels(rng):
    logits = (5 * rng.standard_normal((10, 70))).astype(np.float64)
    labels = rng.integers(0, 10, 70)
    d = cuda.device_array_like(logits)
    result = cuda.device_array(2, np.float64)
    ck.softmax_xent(dev(logits), dev(labels), d, result)
    loss, bad = result.copy_to_host()
    want_loss, want_d = softmax_xent_ref(logits, labels)
    assert bad == 0
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(d.copy_to_host(), want_d, rtol=1e-10, atol=1e-14)

    labels[3] = 10
    labels[5] = -1
    with pytest.raises(ValueError, match=r"2 labels of the batch are outside \[0, 10\)"):
        backend_cuda.softmax_xent(dev(logits), dev(labels), d)


@pytest.mark.parametrize("nesterov,momentum", [(False, 0.0), (False, 0.9), (True, 0.9)])
def test_sgd_update_matches_reference(rng, nesterov, momentum):
    w, g, v = (rng.standard_normal(300).astype(np.float32) for _ in range(3))
    dw, dg, dv = dev(w), dev(g), dev(v)
    ck.sgd_update(dw, dg, dv, 0.1, momentum, 1e-3, nesterov)
    sgd_update_ref(w, g, v, 0.1, momentum, 1e-3, nesterov)
    np.testing.assert_allclose(dw.copy_to_host(), w, rtol=1e-6)
    np.testing.assert_allclose(dv.copy_to_host(), v, rtol=1e-6)


def test_adam_update_matches_reference(rng):
    w, g = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    m, v = 0.1 * rng.standard_normal(300).astype(np.float32), rng.random(300).astype(np.float32)
    dw, dm, dv = dev(w), dev(m), dev(v)
    ck.adam_update(dw, dev(g), dm, dv, 1e-3, 0.9, 0.999, 1e-8, 1e-4, 1 - 0.9 ** 3, 1 - 0.999 ** 3)
    adam_update_ref(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-4, 1 - 0.9 ** 3, 1 - 0.999 ** 3)
    for got, want in ((dw, w), (dm, m), (dv, v)):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-5, atol=1e-7)


def test_gather_batch_and_take_match_reference(rng):
    data = rng.standard_normal((20, 7)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    idx = rng.permutation(20)[:6]
    out = cuda.device_array((7, 6), np.float32)
    ones, zeros = np.ones(7, np.float32), np.zeros(7, np.float32)
    ck.gather_batch(dev(data), dev(idx), dev(ones), dev(zeros), out)
    np.testing.assert_array_equal(out.copy_to_host(), gather_batch_ref(data, idx))
    pixels = rng.integers(0, 256, (20, 7), dtype=np.uint8)  # uint8, normalised while gathered
    scale, shift = rng.random(7).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    ck.gather_batch(dev(pixels), dev(idx), dev(scale), dev(shift), out)
    np.testing.assert_allclose(out.copy_to_host(), gather_batch_ref(pixels, idx, scale, shift), rtol=1e-6)
    y = cuda.device_array(6, labels.dtype)
    ck.take(dev(labels), dev(idx), y)
    np.testing.assert_array_equal(y.copy_to_host(), labels[idx])


# --------------------------------------------------------------------------- whole steps


def _tiny_model(rng, bias=True):
    """12 -> 6 (sparse, one empty row) -> 3. Few rows: the simulator runs a block per row for
    the bias gradient, and each block with a barrier costs it tens of milliseconds."""
    from sparsenn.layers import Linear, ReLU, Sequential, SparseLinear

    mask = random_mask(rng, 6, 12, 0.4, empty_rows=(3,))
    return Sequential(SparseLinear(mask, rng, bias=bias, name="fc1"), ReLU(),
                      Linear(6, 3, rng, bias=bias, name="fc2"))


def test_training_steps_on_cuda_match_the_cpu(rng):
    """Two SGD steps from the same weights on both backends end at the same weights."""
    from sparsenn.loss import SoftmaxCrossEntropy
    from sparsenn.optim import SGD

    models = [_tiny_model(np.random.default_rng(7)) for _ in range(2)]
    models[1].to("cuda")
    assert models[1].layers[0].weight.value.__class__ is not np.ndarray
    opts = [SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3) for m in models]
    x = rng.standard_normal((12, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    losses = [[], []]
    for _ in range(2):
        for i, (m, opt) in enumerate(zip(models, opts)):
            loss_fn = SoftmaxCrossEntropy()
            xi = x if i == 0 else cuda.to_device(x)
            losses[i].append(loss_fn.forward(m.forward(xi), y))
            m.backward(loss_fn.backward())
            opt.step()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for p_cpu, p_gpu in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(p_gpu.host(), p_cpu.value, rtol=1e-5, atol=1e-6, err_msg=p_cpu.name)
    # and the model comes back to the CPU intact
    models[1].to("cpu")
    np.testing.assert_allclose(models[1].forward(x), models[0].forward(x), rtol=1e-5, atol=1e-6)


def test_fit_on_cuda_matches_fit_on_the_cpu_and_resumes(tmp_path, rng):
    from sparsenn.optim import SGD
    from sparsenn.train import ArrayData, fit

    data = ArrayData(rng.standard_normal((18, 12)).astype(np.float32), rng.integers(0, 3, 18),
                     rng.standard_normal((10, 12)).astype(np.float32), rng.integers(0, 3, 10))
    runs, models = [], []
    for device in ("cpu", "cuda"):
        model = _tiny_model(np.random.default_rng(3), bias=False).to(device)
        models.append(model)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs.append(fit(model, data, opt, lambda step: 0.05, epochs=2, batch_size=8, seed=1, progress=False,
                        log=lambda *a: None, save_path=tmp_path / f"{device}.npz"))
    cpu, gpu = runs
    assert gpu["steps"] == cpu["steps"] == 6  # 3 batches per epoch, the last one short
    for a, b in zip(cpu["history"], gpu["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_acc"] == a["test_acc"]
    for p_cpu, p_gpu in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(p_gpu.host(), p_cpu.value, rtol=1e-5, atol=1e-6, err_msg=p_cpu.name)
    # the checkpoint written from the GPU loads into a CPU model: the GPU run's final weights
    model = _tiny_model(np.random.default_rng(99), bias=False)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = fit(model, data, opt, lambda step: 0.05, epochs=2, batch_size=8, seed=1, progress=False,
            log=lambda *a: None, resume=tmp_path / "cuda.npz")
    assert s["steps"] == 6
    for p, p_gpu in zip(model.parameters(), models[1].parameters()):
        np.testing.assert_array_equal(p.value, p_gpu.host(), err_msg=p.name)
    assert s["test_acc"] == gpu["test_acc"]


def test_conv_model_step_on_cuda_matches_the_cpu(rng):
    """A LeNet-5-shaped miniature (sparse conv, pool, LRN, flatten, dense) on both backends."""
    from sparsenn.conv import Conv2d, Flatten, LocalResponseNorm, MaxPool2d, SparseConv2d
    from sparsenn.layers import Linear, ReLU, Sequential
    from sparsenn.loss import SoftmaxCrossEntropy
    from sparsenn.optim import SGD

    def build():
        r = np.random.default_rng(11)
        return Sequential(Conv2d(1, 2, 3, r, padding="same", input_shape=(1, 5, 5)), ReLU(),
                          MaxPool2d(3, 2, padding="same"), LocalResponseNorm(1),
                          SparseConv2d(2, 3, 2, random_mask(r, 3, 8, 0.5), r), ReLU(),
                          Flatten(), Linear(12, 3, r))

    models = [build(), build().to("cuda")]
    opts = [SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    x = rng.standard_normal((25, 2)).astype(np.float32)
    y = rng.integers(0, 3, 2)
    for _ in range(2):
        for i, (m, opt) in enumerate(zip(models, opts)):
            loss_fn = SoftmaxCrossEntropy()
            loss_fn.forward(m.forward(x if i == 0 else cuda.to_device(x)), y)
            m.backward(loss_fn.backward())
            opt.step()
    for p_cpu, p_gpu in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(p_gpu.host(), p_cpu.value, rtol=1e-4, atol=1e-6, err_msg=p_cpu.name)


# --------------------------------------------------------------------------- devices


def test_device_choice_and_clear_errors(rng):
    from sparsenn.device import backend, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda"  # a GPU, or the simulator the tests run on
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        assert resolve_device("auto") == "cpu"  # auto never picks the simulator
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda; got 'gpu'"):
        resolve_device("gpu")
    assert backend("cpu") is backend_cpu and backend("cuda") is backend_cuda

    model = _tiny_model(rng).to("cuda")
    with pytest.raises(TypeError, match="on device 'cuda', so its input must be a CUDA device array"):
        model.forward(np.zeros((12, 2), np.float32))
    cpu_model = _tiny_model(rng)
    with pytest.raises(TypeError, match="on device 'cpu', so its input must be a numpy.ndarray"):
        cpu_model.forward(cuda.to_device(np.zeros((12, 2), np.float32)))
    from sparsenn.optim import SGD

    mixed = model.parameters()[:2] + cpu_model.parameters()[2:]
    with pytest.raises(ValueError, match="is not on device 'cuda'"):
        SGD(mixed, lr=0.1)


def test_cuda_status_without_numba_cuda_names_the_extra():
    code = ("import sys; sys.modules['numba_cuda'] = None\n"
            "import importlib.util as u; u.find_spec = lambda name, *a: None\n"
            "from sparsenn.device import resolve_device\n"
            "print(resolve_device('auto'))\n"
            "resolve_device('cuda')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.stdout.strip() == "cpu"
    assert "numba-cuda is not installed" in r.stderr and 'pip install -e ".[gpu]"' in r.stderr


def test_pruning_a_model_on_cuda_says_to_prune_on_the_cpu(rng):
    from sparsenn.pruning import GradualPruner, prune_once

    model = _tiny_model(rng).to("cuda")
    with pytest.raises(ValueError, match="prune_once runs on the CPU, and this model is on 'cuda'"):
        prune_once(model, 0.5)
    with pytest.raises(ValueError, match="GradualPruner runs on the CPU"):
        GradualPruner(model, 0.9, begin=0, end=100)


def test_gpu_benchmark_script_runs_and_checks_its_kernel(tmp_path):
    """On the simulator this only proves the script works (it times nothing meaningful)."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "examples/bench_gpu.py", "--sizes", "8", "--densities", "0.5",
                        "--batch", "4", "--repeats", "1", "--inner", "1", "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    rows = json.loads(out.read_text())["results"]
    assert {(x["impl"], x["op"]) for x in rows} >= {("sparsenn", "forward W x"), ("sparsenn", "backward W^T dy"),
                                                   ("sparsenn", "backward dW (sddmm)")}
    assert all(x["nnz"] == rows[0]["nnz"] > 0 for x in rows)


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="this machine has a GPU")
def test_gpu_benchmark_without_a_gpu_says_so():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    r = subprocess.run([sys.executable, "examples/bench_gpu.py"], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 2
    assert "error: no GPU to benchmark on" in r.stderr
