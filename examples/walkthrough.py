"""Backpropagation through one sparse layer, step by step, on numbers small enough to check by hand.

    python examples/walkthrough.py            # prints every step; docs/backprop_through_csr.md explains it
    python examples/walkthrough.py --seed 3   # other numbers, the same checks

One SparseLinear layer, 4 outputs x 6 inputs with 9 connections, a batch of 3, in float64.
Every step is computed twice, by the project's kernel (through the layer) and by a plain
Python loop over the CSR arrays, and every gradient is checked against central differences.
Reads top to bottom: pattern, forward, loss, dx, dW, db, the project's own gradient check, SGD.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import sparsenn  # noqa: F401  (configures the thread pools before any kernel runs)
from sparsenn import cli, gradcheck
from sparsenn.layers import SparseLinear
from sparsenn.optim import SGD

# ---- defaults: each chosen so the printed numbers stay few and easy to follow -------------------
DEFAULTS = dict(
    seed=0,             # fixes every number printed; the doc shows the output for seed 0
    batch=3,            # three samples: enough to see that a row of x holds one feature of each
    lr=0.1,             # SGD learning rate
    momentum=0.9,       # so the second step differs from plain SGD
    weight_decay=0.01,  # on the stored weights only; biases and missing connections get none
    eps=1e-6,           # central-difference step; the loss is quadratic, so only rounding (~1e-10) remains
    tol_fd=1e-8,        # analytic gradient vs central difference
    tol_exact=1e-12,    # kernel vs hand loop: the same sums, at most in another order
)

# Where connections exist: row r is output neuron r, column c is input feature c (the PyTorch
# orientation, W: (n_out, n_in)). 9 of the 24 possible connections; input 4 feeds nothing.
MASK = np.array([
    [1, 0, 1, 0, 0, 1],
    [0, 1, 0, 1, 0, 0],
    [1, 0, 0, 1, 0, 1],
    [0, 0, 1, 0, 0, 0],
], dtype=bool)


# ---- the three products of a sparse layer, written as plain loops over the CSR arrays -----------


def spmm_by_hand(indptr, indices, data, x):
    """y = W x for CSR W (n_out, n_in); x: (n_in, batch) -> y: (n_out, batch)."""
    y = np.zeros((len(indptr) - 1, x.shape[1]))
    for r in range(len(indptr) - 1):             # one output neuron = one row of W = one row of y
        for k in range(indptr[r], indptr[r + 1]):  # the stored connections of row r
            y[r] += data[k] * x[indices[k]]        # x[c] is one contiguous row: feature c of each sample
    return y


def spmm_t_by_hand(t_indptr, t_rows, t_perm, data, dy):
    """dx = W^T dy through the transpose index; dy: (n_out, batch) -> dx: (n_in, batch)."""
    dx = np.zeros((len(t_indptr) - 1, dy.shape[1]))
    for c in range(len(t_indptr) - 1):           # one input feature = one row of dx: its only writer
        for j in range(t_indptr[c], t_indptr[c + 1]):
            r, k = t_rows[j], t_perm[j]            # entry k of data sits at W[r, c]
            dx[c] += data[k] * dy[r]
    return dx


def sddmm_by_hand(indptr, indices, dy, x):
    """dW[k] = dy[row_k] . x[col_k] for each stored entry k; dy: (n_out, batch), x: (n_in, batch)."""
    dW = np.zeros(len(indices))
    for r in range(len(indptr) - 1):
        for k in range(indptr[r], indptr[r + 1]):
            dW[k] = dy[r] @ x[indices[k]]          # a dot product over the batch
    return dW


def central_difference(loss, arr, eps):
    """d loss / d arr, one entry at a time: (loss(a + eps) - loss(a - eps)) / (2 eps).

    arr (C-contiguous) is changed in place and restored; loss() must read it."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)  # views of the same memory
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


# ---- printing ------------------------------------------------------------------------------------


def section(n, title):
    print(f"\n---- {n}. {title} " + "-" * max(4, 72 - len(title)))


def num(v) -> str:
    """A number to 4 decimals (rounding first, so a tiny negative prints 0.0000, not -0.0000)."""
    return f"{np.round(float(v), 4) + 0.0:.4f}"


def show(name, a, keep=None, absent="."):
    """Print a vector or matrix to 4 decimals. Where ``keep`` is False: ``absent`` if it is a
    string, else the value in parentheses (computed, then thrown away)."""
    a = np.atleast_2d(a)
    keep = np.ones(a.shape, dtype=bool) if keep is None else np.atleast_2d(keep)
    cells = [[num(v) if k else (f"({num(v)})" if absent is None else absent) for v, k in zip(row, krow)]
             for row, krow in zip(a, keep)]
    width = max(len(c) for row in cells for c in row) + 2
    print(f"  {name} =")
    for row in cells:
        print("    " + "".join(c.rjust(width) for c in row))


def nums(values) -> str:
    return "[" + ", ".join(num(v) for v in values) + "]"


def ints(name, a):
    print(f"  {name:<9}= {np.array2string(np.asarray(a), separator=' ')}")


def check(checks, what, got, want, tol):
    """Record and print max |got - want| against tol."""
    d = float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) if np.size(got) else 0.0
    checks.append((what, d <= tol))
    print(f"  check {what:<38} max|diff| = {d:.1e} (tol {tol:.0e}) {'OK' if d <= tol else 'FAIL'}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--seed", type=cli.nonneg_int, default=DEFAULTS["seed"],
                   help="seed of the weights, bias, inputs and targets (the doc shows seed 0)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = {**DEFAULTS, "seed": args.seed}
    checks = []  # (what, passed) for every comparison printed

    section(0, "Configuration")
    for key, value in config.items():
        print(f"  {key:<13}= {value}")
    # One decimal per number, so any entry below can be recomputed with pencil and paper.
    rng = np.random.default_rng(config["seed"])
    n_out, n_in = MASK.shape
    nnz, batch = int(MASK.sum()), config["batch"]
    w = rng.integers(-9, 10, nnz) / 10         # one weight per connection, in CSR order
    b = rng.integers(-9, 10, n_out) / 10       # the bias
    x = rng.integers(-9, 10, (n_in, batch)) / 10  # features-major: x[c, s] = feature c of sample s
    t = rng.integers(-9, 10, (n_out, batch)) / 10  # targets of a squared-error loss
    layer = SparseLinear(MASK, rng, dtype=np.float64, name="layer")  # float64: tight finite differences
    layer.weight.value[:] = w                  # replace the random initial weights by the tidy ones
    layer.bias.value[:] = b
    p = layer.pattern
    print(f"  layer        = {layer}")

    # ------------------------------------------------------------------------------------------
    section(1, "The CSR arrays and the matrix they stand for")
    print("  code: sparsenn/csr.py: CSRPattern.from_mask, check_csr")
    print("  mask (1 = connection, the argument of SparseLinear) =")
    for row in MASK.astype(int):
        print("    " + "  ".join(map(str, row)))
    ints("indptr", p.indptr)
    ints("indices", p.indices)
    ints("row_k", p.row_of_entry())
    show("data", layer.weight.value)
    for r in range(n_out):
        k0, k1 = p.indptr[r], p.indptr[r + 1]
        print(f"  row {r}: entries k = {k0}..{k1 - 1}, columns {p.indices[k0:k1].tolist()}, "
              f"weights {nums(layer.weight.value[k0:k1])}")
    show("W (dense view, '.' = no connection)", layer.to_dense(), MASK)
    show("b", layer.bias.value)

    # ------------------------------------------------------------------------------------------
    section(2, "Forward: y = W x + b, SpMM over the rows of W")
    print("  code: sparsenn/layers.py: SparseLinear.forward -> sparsenn/backend_cpu.py: spmm"
          " -> sparsenn/kernels.py: spmm")
    show("x (n_in, batch)", x)
    y = layer.forward(x).copy()                # copy: the layer reuses its output buffer
    show("y = layer.forward(x)", y)
    y_hand = spmm_by_hand(p.indptr, p.indices, layer.weight.value, x) + b[:, None]
    check(checks, "forward: kernel == hand loop", y, y_hand, config["tol_exact"])
    check(checks, "forward: kernel == dense W @ x + b", y, layer.to_dense() @ x + b[:, None], config["tol_exact"])
    k0, k1 = p.indptr[0], p.indptr[1]
    terms = " + ".join(f"({num(layer.weight.value[k])})({num(x[p.indices[k], 0])})" for k in range(k0, k1))
    print(f"  y[0, 0] = {' + '.join(f'data[{k}] x[{p.indices[k]}, 0]' for k in range(k0, k1))} + b[0]")
    print(f"          = {terms} + ({num(b[0])}) = {num(y[0, 0])}")

    # ------------------------------------------------------------------------------------------
    section(3, "Loss L = 0.5 sum (y - t)^2, so dy = dL/dy = y - t")
    show("t", t)

    def loss():  # reads the layer's weight and bias and x, whatever they hold now
        return 0.5 * float(np.sum((layer.forward(x) - t) ** 2))

    dy = y - t
    print(f"  L = {num(loss())}")
    show("dy = y - t", dy)
    dx = layer.backward(dy).copy()             # fills weight.grad and bias.grad, returns dx
    dW, db = layer.weight.grad.copy(), layer.bias.grad.copy()
    print("  layer.backward(dy) computes all three gradients below.")

    # ------------------------------------------------------------------------------------------
    section(4, "dx = W^T dy through the transpose index")
    print("  code: sparsenn/layers.py: SparseLinear.backward -> sparsenn/backend_cpu.py: spmm_t"
          " -> sparsenn/kernels.py: spmm (with perm)")
    print("  index: sparsenn/csr.py: transpose_index (built once per pattern, in CSRPattern.from_arrays)")
    ints("t_indptr", p.t_indptr)
    ints("t_rows", p.t_rows)
    ints("t_perm", p.t_perm)
    for c in range(n_in):
        j0, j1 = p.t_indptr[c], p.t_indptr[c + 1]
        print(f"  column {c}: rows {p.t_rows[j0:j1].tolist()}, entries k = {p.t_perm[j0:j1].tolist()}, "
              f"weights {nums(layer.weight.value[p.t_perm[j0:j1]])}")
    show("dx = layer.backward(dy)", dx)
    col0 = list(zip(p.t_perm[p.t_indptr[0]:p.t_indptr[1]], p.t_rows[p.t_indptr[0]:p.t_indptr[1]]))  # (k, r)
    print("  dx[0, 0] = " + " + ".join(f"data[{k}] dy[{r}, 0]" for k, r in col0))
    print("           = " + " + ".join(f"({num(layer.weight.value[k])})({num(dy[r, 0])})" for k, r in col0)
          + f" = {num(dx[0, 0])}")
    check(checks, "dx: kernel == hand loop", dx,
          spmm_t_by_hand(p.t_indptr, p.t_rows, p.t_perm, layer.weight.value, dy), config["tol_exact"])
    check(checks, "dx: kernel == dense W^T dy", dx, layer.to_dense().T @ dy, config["tol_exact"])
    check(checks, "dx: central difference", dx, central_difference(loss, x, config["eps"]), config["tol_fd"])
    # Who would write each row of dx if we scattered from W's rows instead, with the rows split
    # between 2 threads as the forward splits them?
    w_bounds, t_bounds = p.splits(2)
    thread_of_row = np.searchsorted(w_bounds, np.arange(n_out), side="right") - 1
    print(f"  2 threads, rows of W split at {w_bounds.tolist()}; rows of W^T (= rows of dx) split at "
          f"{t_bounds.tolist()}")
    for c in range(n_in):
        writers = sorted(set(thread_of_row[p.t_rows[p.t_indptr[c]:p.t_indptr[c + 1]]].tolist()))
        owner = int(np.searchsorted(t_bounds, c, side="right") - 1)
        print(f"  dx[{c}]: scattered from W's rows: written by {f'threads {writers}' if writers else 'no thread'}; "
              f"through W^T: by thread {owner} alone")

    # ------------------------------------------------------------------------------------------
    section(5, "dW: SDDMM, dW[k] = dy[row_k] . x[col_k] on the stored entries only")
    print("  code: sparsenn/layers.py: SparseLinear.backward -> sparsenn/backend_cpu.py: sddmm"
          " -> sparsenn/kernels.py: sddmm")
    show("dW = layer.weight.grad (one per stored entry)", dW)
    check(checks, "dW: kernel == hand loop", dW, sddmm_by_hand(p.indptr, p.indices, dy, x), config["tol_exact"])
    r, c = p.row_of_entry()[0], p.indices[0]  # entry k = 0 sits at W[r, c]
    print(f"  dW[0] = dy[{r}] . x[{c}] = " + " + ".join(f"({num(dy[r, s])})({num(x[c, s])})" for s in range(batch))
          + f" = {num(dW[0])}")
    dense = dy @ x.T                           # what a dense layer computes: every (r, c)
    show("dy x^T (dense), (.) = thrown away: no such connection", dense, MASK, absent=None)
    check(checks, "dW == (dy x^T)[row_k, col_k]", dW, dense[p.row_of_entry(), p.indices], config["tol_exact"])
    print(f"  multiply-adds: SDDMM nnz*batch = {nnz * batch}; dense dy x^T n_out*n_in*batch = "
          f"{n_out * n_in * batch}, of which {(n_out * n_in - nnz) * batch} for the "
          f"{n_out * n_in - nnz} entries thrown away")
    check(checks, "dW: central difference", dW,
          central_difference(loss, layer.weight.value, config["eps"]), config["tol_fd"])

    # ------------------------------------------------------------------------------------------
    section(6, "db = sum over the batch of dy")
    print("  code: sparsenn/layers.py: SparseLinear.backward -> sparsenn/backend_cpu.py: sum_batch")
    show("db = layer.bias.grad", db)
    check(checks, "db == dy.sum(axis=1)", db, dy.sum(axis=1), config["tol_exact"])
    check(checks, "db: central difference", db,
          central_difference(loss, layer.bias.value, config["eps"]), config["tol_fd"])

    # ------------------------------------------------------------------------------------------
    section(7, "The project's own check: gradcheck.check_layer")
    print("  code: sparsenn/gradcheck.py: check_layer (loss sum(y * R), R random, so dy = R)")
    report = gradcheck.check_layer(layer, x, np.random.default_rng(config["seed"]), eps=config["eps"])
    checks.append(("gradcheck.check_layer", report.ok))
    print(f"  entries checked: {report.checked} ({nnz} weights + {n_out} biases + {n_in * batch} inputs), "
          f"failures: {len(report.failures)} {'OK' if report.ok else 'FAIL'}")

    # ------------------------------------------------------------------------------------------
    section(8, "SGD with momentum and weight decay, on the stored entries only")
    print("  code: sparsenn/optim.py: SGD.step -> sparsenn/kernels.py: sgd_update")
    lr, mu, wd = config["lr"], config["momentum"], config["weight_decay"]
    opt = SGD(layer.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    print(f"  velocity of the weight: shape {opt.state[0]['velocity'].shape} (one per stored entry; "
          f"a dense layer would keep {n_out} x {n_in} = {n_out * n_in})")
    print(f"  velocity of the bias:   shape {opt.state[1]['velocity'].shape} (no weight decay: decay="
          f"{layer.bias.decay})")
    for step in (1, 2):
        L = loss()                             # forward ...
        layer.backward(layer.forward(x) - t)   # ... and backward at the current weights
        w_old, v_old = layer.weight.value.copy(), opt.state[0]["velocity"].copy()
        b_old, vb_old = layer.bias.value.copy(), opt.state[1]["velocity"].copy()
        g = layer.weight.grad + wd * w_old     # weight decay: only weights that exist decay
        v_hand = mu * v_old + g
        vb_hand = mu * vb_old + layer.bias.grad
        opt.step()
        print(f"  step {step}: L = {num(L)} before the step")
        show(f"velocity after step {step}", opt.state[0]["velocity"])
        check(checks, f"step {step}: velocity == hand", opt.state[0]["velocity"], v_hand, config["tol_exact"])
        check(checks, f"step {step}: w == w - lr v", layer.weight.value, w_old - lr * v_hand, config["tol_exact"])
        check(checks, f"step {step}: b == b - lr v_b", layer.bias.value, b_old - lr * vb_hand, config["tol_exact"])
    show("W after 2 steps ('.' = still no connection)", layer.to_dense(), MASK)
    for k in np.flatnonzero(w == 0):           # a stored zero is a connection: it moves
        print(f"  entry {k}, W[{p.row_of_entry()[k]}, {p.indices[k]}]: stored as {num(w[k])}, "
              f"now {num(layer.weight.value[k])}")
    print(f"  L = {num(loss())} after 2 steps; nnz = {layer.nnz}, the pattern never changes")

    # ------------------------------------------------------------------------------------------
    section(9, "Summary")
    failed = [what for what, ok in checks if not ok]
    if failed:
        print(f"  {len(failed)} of {len(checks)} checks FAILED: {', '.join(failed)}")
        return 1
    print(f"  all {len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
