"""A probe, not part of sparsenn: would storing a layer's activations in float16 (converted to
float32 as each vector is loaded, one vcvtph2ps; the sums stay float32) speed up the forward
product of a random fan-in-32 layer beyond the caches? One small kernel (batch 112 = 7 vectors,
no column blocks, no row order), run twice on the same pattern and weights, only the load
differing. Output: half_probe.log beside it (docs/kernels.md, "Beyond the caches").

    python examples/results/scale/half_probe.py > examples/results/scale/half_probe.log
"""
import time, numpy as np, numba
from numba import njit, prange, types
from numba.extending import intrinsic
from llvmlite import ir
import sparsenn  # noqa: F401  (thread set-up)
from sparsenn.simd import vzero, vbroadcast, vload, vstore, vfma, f32x16
from sparsenn import simd as S
from sparsenn.topology import random_fan_in
from sparsenn import backend_cpu

_VEC = ir.VectorType(ir.FloatType(), 16)

@intrinsic
def vload_h(typingctx, a, i):
    if not (isinstance(a, types.Array) and a.dtype == types.uint16 and a.ndim == 1):
        return None
    def codegen(context, builder, sig, args):
        h16 = ir.VectorType(ir.HalfType(), 16)
        raw = builder.load(S._address(context, builder, sig.args[0], args[0], args[1], h16), align=2)
        return builder.fpext(raw, _VEC)
    return f32x16(a, i), codegen

def make(load):
    @njit(parallel=True, fastmath=True)
    def spmm7(indptr, indices, data, x, out, r0s):
        # batch 112 (7 vectors), rows split in 2 halves
        for t in prange(2):
            for r in range(r0s[t], r0s[t + 1]):
                a0 = vzero(); a1 = vzero(); a2 = vzero(); a3 = vzero(); a4 = vzero(); a5 = vzero(); a6 = vzero()
                for k in range(indptr[r], indptr[r + 1]):
                    w = vbroadcast(data[k]); row = x[indices[k]]
                    a0 = vfma(w, load(row, 0), a0); a1 = vfma(w, load(row, 16), a1); a2 = vfma(w, load(row, 32), a2)
                    a3 = vfma(w, load(row, 48), a3); a4 = vfma(w, load(row, 64), a4); a5 = vfma(w, load(row, 80), a5)
                    a6 = vfma(w, load(row, 96), a6)
                o = out[r]
                vstore(o, 0, a0); vstore(o, 16, a1); vstore(o, 32, a2); vstore(o, 48, a3); vstore(o, 64, a4)
                vstore(o, 80, a5); vstore(o, 96, a6)
    return spmm7

k32, k16 = make(vload), make(vload_h)
from sparsenn.runtime import describe_machine, machine_report
print(describe_machine(machine_report()), '| threads', numba.get_num_threads())
rng = np.random.default_rng(0)
for n in (4096, 65536, 262144):
    m = random_fan_in(n, n, 32, rng)
    indptr, indices = m.indptr.astype(np.int64), m.indices.astype(np.int32)
    data = rng.standard_normal(len(indices)).astype(np.float32) * 0.1
    x = backend_cpu.empty((n, 112), np.float32); x[...] = rng.random((n, 112), dtype=np.float32)
    xh = x.astype(np.float16).view(np.uint16); xh = np.ascontiguousarray(xh)
    out = backend_cpu.empty((n, 112), np.float32); out2 = backend_cpu.empty((n, 112), np.float32)
    r0s = np.array([0, n // 2, n])
    res = {}
    for name, f, xx, o in (("f32", k32, x, out), ("f16", k16, xh, out2)):
        f(indptr, indices, data, xx, o, r0s)
        ts = []
        for _ in range(7 if n > 100000 else 30):
            t = time.perf_counter(); f(indptr, indices, data, xx, o, r0s); ts.append(time.perf_counter() - t)
        res[name] = np.median(ts)
    err = np.abs(out - out2).max() / np.abs(out).max()
    gf = lambda s: 2 * len(indices) * 112 / s / 1e9
    print(f"n={n}: f32 {1e3*res['f32']:.2f} ms ({gf(res['f32']):.0f} GF/s), f16 x {1e3*res['f16']:.2f} ms ({gf(res['f16']):.0f} GF/s), "
          f"speedup {res['f32']/res['f16']:.2f}x, max rel diff {err:.1e}")
