"""Probe (not part of the package): LeNet-300-100's RadiX layers have rows in groups that share
all their inputs (fc1: 100 groups of 3 rows; fc2: 10 groups of 10), so one load of a row of x
could serve every row of a group. Two ways, against the package's kernels, batch 100, float32,
2 threads, alternating in one process (median us of warm calls):

- forward, rows in pairs: two rows' accumulators (2 x 7 vectors) in registers, each vector of
  x loaded once for both (triples spill registers at batch 100; a group of 3 is a pair + 1);
- weight gradient, the group's rows taken chunk by chunk: eight entries of each row of the
  group in turn, so the eight rows of x stay in L1 while the group's rows use them.

Then what the package's forwards of both layers are of a whole training step (gather, forward,
loss, backward, optimiser) of the RadiX LeNet-300-100 on MNIST, in the same process.

    python examples/results/group_rows_probe.py > examples/results/group_rows_probe.log
"""
import time

import numpy as np
from numba import njit, prange

import sparsenn.backend_cpu as B
from sparsenn import data, models
from sparsenn.loss import SoftmaxCrossEntropy
from sparsenn.optim import SGD
from sparsenn.runtime import denormals_flushed
from sparsenn.train import ArrayData, epoch_permutation
from sparsenn.csr import CSRPattern
from sparsenn.kernels import _dot16
from sparsenn.runtime import describe_machine, machine_report
from sparsenn.simd import hsum, hsum8_store, vbroadcast, vfma, vload, vmask_tail, vstore


def row_groups(indptr, indices):
    """(gptr, grows): the rows grouped by identical column lists."""
    d = {}
    for r in range(len(indptr) - 1):
        d.setdefault(indices[indptr[r]:indptr[r + 1]].tobytes(), []).append(r)
    groups = list(d.values())
    gptr = np.zeros(len(groups) + 1, np.int64)
    gptr[1:] = np.cumsum([len(g) for g in groups])
    return gptr, np.array([r for g in groups for r in g], np.int64)


@njit(inline="always")
def _pair(indptr, indices, data, x, out, ra, rb, two):
    """out[ra] (and out[rb] if two) = W x for two rows with the same columns; batch 100."""
    k0, n, kb, tb = indptr[ra], indptr[ra + 1] - indptr[ra], indptr[rb], x.shape[1] - 16
    a0 = a1 = a2 = a3 = a4 = a5 = at = b0 = b1 = b2 = b3 = b4 = b5 = bt = vbroadcast(np.float32(0))
    for j in range(n):
        xr = x[indices[k0 + j]]
        v0, v1, v2, v3 = vload(xr, 0), vload(xr, 16), vload(xr, 32), vload(xr, 48)
        v4, v5, vt = vload(xr, 64), vload(xr, 80), vload(xr, tb)
        w = vbroadcast(data[k0 + j])
        a0, a1, a2, a3 = vfma(v0, w, a0), vfma(v1, w, a1), vfma(v2, w, a2), vfma(v3, w, a3)
        a4, a5, at = vfma(v4, w, a4), vfma(v5, w, a5), vfma(vt, w, at)
        if two:
            w = vbroadcast(data[kb + j])
            b0, b1, b2, b3 = vfma(v0, w, b0), vfma(v1, w, b1), vfma(v2, w, b2), vfma(v3, w, b3)
            b4, b5, bt = vfma(v4, w, b4), vfma(v5, w, b5), vfma(vt, w, bt)
    y = out[ra]
    vstore(y, tb, at)
    vstore(y, 0, a0); vstore(y, 16, a1); vstore(y, 32, a2); vstore(y, 48, a3); vstore(y, 64, a4); vstore(y, 80, a5)
    if two:
        y = out[rb]
        vstore(y, tb, bt)
        vstore(y, 0, b0); vstore(y, 16, b1); vstore(y, 32, b2); vstore(y, 48, b3); vstore(y, 64, b4); vstore(y, 80, b5)


@njit(parallel=True, fastmath=True)
def spmm_pairs(indptr, indices, data, x, out, gptr, grows, gbounds):
    for p in prange(len(gbounds) - 1):
        for g in range(gbounds[p], gbounds[p + 1]):
            i, e = gptr[g], gptr[g + 1]
            while e - i >= 2:
                _pair(indptr, indices, data, x, out, grows[i], grows[i + 1], True)
                i += 2
            if i < e:
                _pair(indptr, indices, data, x, out, grows[i], grows[i], False)


@njit(parallel=True, fastmath=True)
def sddmm_chunks(indptr, indices, dy, x, out, gptr, grows, gbounds, NV):
    batch = x.shape[1]
    tail = batch - 16 * NV
    for p in prange(len(gbounds) - 1):
        for g in range(gbounds[p], gbounds[p + 1]):
            s, e = gptr[g], gptr[g + 1]
            n = indptr[grows[s] + 1] - indptr[grows[s]]
            j = 0
            while j + 8 <= n:
                for i in range(s, e):
                    r = grows[i]
                    k, gg = indptr[r] + j, dy[r]
                    gt = vmask_tail(vload(gg, batch - 16), tail)
                    hsum8_store(_dot16(x[indices[k]], gg, NV, gt), _dot16(x[indices[k + 1]], gg, NV, gt),
                                _dot16(x[indices[k + 2]], gg, NV, gt), _dot16(x[indices[k + 3]], gg, NV, gt),
                                _dot16(x[indices[k + 4]], gg, NV, gt), _dot16(x[indices[k + 5]], gg, NV, gt),
                                _dot16(x[indices[k + 6]], gg, NV, gt), _dot16(x[indices[k + 7]], gg, NV, gt), out, k)
                j += 8
            for i in range(s, e):
                r, gg = grows[i], dy[grows[i]]
                gt = vmask_tail(vload(gg, batch - 16), tail)
                for k in range(indptr[r] + j, indptr[r + 1]):
                    out[k] = hsum(_dot16(x[indices[k]], gg, NV, gt))


def median_us(f, n=300):
    for _ in range(20):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e6


def main():
    print(describe_machine(machine_report()))
    batch, rng = 100, np.random.default_rng(0)
    for name, m in zip(("fc1", "fc2"), models.lenet300_masks("radix", rng)):
        m = m.tocsr()
        m.sort_indices()
        pat = CSRPattern.from_arrays(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.shape)
        data = rng.standard_normal(pat.nnz).astype(np.float32)
        x = B.empty((m.shape[1], batch), np.float32)
        x[:] = rng.standard_normal(x.shape)
        dy = B.empty((m.shape[0], batch), np.float32)
        dy[:] = rng.standard_normal(dy.shape)
        y1, y2 = B.empty((m.shape[0], batch), np.float32), B.empty((m.shape[0], batch), np.float32)
        g1, g2 = np.empty(pat.nnz, np.float32), np.empty(pat.nnz, np.float32)
        gptr, grows = row_groups(pat.indptr, pat.indices)
        gb = np.array([0, (len(gptr) - 1) // 2, len(gptr) - 1], np.int64)
        runs = {"forward": (lambda: B.spmm(pat, data, x, y1),
                            lambda: spmm_pairs(pat.indptr, pat.indices, data, x, y2, gptr, grows, gb)),
                "weight gradient": (lambda: B.sddmm(pat, dy, x, g1),
                                    lambda: sddmm_chunks(pat.indptr, pat.indices, dy, x, g2, gptr, grows, gb, batch // 16))}
        print(f"{name} {m.shape[0]}x{m.shape[1]}, {pat.nnz:,} weights, {len(gptr) - 1} groups of "
              f"{'/'.join(map(str, sorted(set(np.diff(gptr).tolist()))))} rows")
        for what, (package, grouped) in runs.items():
            package(), grouped()
            a, b = (y1, y2) if what == "forward" else (g1, g2)
            assert np.allclose(a, b, rtol=1e-5, atol=1e-4 * np.abs(a).max())
            times = [(median_us(package), median_us(grouped)) for _ in range(3)]
            print(f"  {what:16s} package " + " ".join(f"{t[0]:6.1f}" for t in times)
                  + "   grouped " + " ".join(f"{t[1]:6.1f}" for t in times) + " us")
    step_share(batch)


def step_share(batch=100, n=200):
    """Median over rounds of (step us, [forward us of each sparse layer]) for the RadiX LeNet-300-100."""
    arrays = ArrayData.from_dataset(data.load("mnist"))
    model = models.lenet300("radix", np.random.default_rng(0))
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn, ops = SoftmaxCrossEntropy(), model.ops
    x, y = B.empty((784, batch), np.float32), np.empty(batch, arrays.y_train.dtype)
    perm = epoch_permutation(0, 0, len(arrays.x_train))
    sparse = [layer for layer in model.layers if hasattr(layer, "pattern")]
    xs = [B.empty((layer.pattern.shape[1], batch), np.float32) for layer in sparse]
    outs = [B.empty((layer.pattern.shape[0], batch), np.float32) for layer in sparse]
    for a in xs:
        a[:] = np.random.default_rng(0).random(a.shape)

    def steps():
        t = time.perf_counter()
        for b in range(n):
            idx = perm[b * batch:(b + 1) * batch]
            ops.gather_batch(arrays.x_train, idx, arrays.scale, arrays.shift, x)
            ops.take(arrays.y_train, idx, y)
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        return (time.perf_counter() - t) / n * 1e6

    with denormals_flushed():
        steps()
        for _ in range(4):
            step = steps()
            fwd = [median_us(lambda: B.spmm(layer.pattern, layer.weight.value, a, o), n)
                   for layer, a, o in zip(sparse, xs, outs)]
            print(f"training step {step:.0f} us; the forwards of fc1 and fc2 " + ", ".join(f"{v:.1f}" for v in fwd)
                  + f" us: {sum(fwd) / step:.0%} of it")


if __name__ == "__main__":
    main()
