"""Explicit 16-lane float32 vectors for Numba kernels: one AVX-512 register's worth.

Numba compiles loops over arrays and leaves vectorising to LLVM, which does well on a loop
that runs along contiguous memory (every kernel in :mod:`sparsenn.kernels` is written that
way). It does badly on one shape: many short dot products, each ending in a sum across the
16 lanes. There LLVM chose the loop order itself, kept a scalar loop for the last
``batch % 16`` columns and summed each result's lanes on its own. This module lets a kernel
say what it wants instead, in a handful of operations on a value type ``f32x16``::

    vzero()                 16 zeros
    vbroadcast(s)           16 copies of the float32 scalar s
    vload(a, i)             a[i:i+16] (float32 array, no bounds check: the caller's loop keeps
                            i + 16 <= len(a)); of a uint8 array, converted to float32
    vstore(a, i, v)         a[i:i+16] = v (the same)
    vmul(a, b), vadd(a, b)  a * b, a + b, rounded one at a time (never fused into an FMA)
    prefetch(a, i)          ask the memory system for the cache line of a[i] (no wait, no fault)
    transpose16(v0, ..., v15)
                            the 16 x 16 matrix whose rows are v0..v15, transposed: a tuple of
                            16 vectors (64 shuffles: four rounds that swap off-diagonal blocks
                            of 8, 4, 2 and 1 lanes between pairs of rows)
    vfma(a, b, c)           a * b + c, lane by lane (one fused multiply-add instruction)
    vmask_tail(v, keep)     v with all but its last ``keep`` lanes set to 0
    hsum(v)                 the sum of v's 16 lanes
    hsum8_store(v0, ..., v7, out, k)
                            out[k + j] = hsum(v_j) for j < 8, as one tree of shuffles and
                            adds across the eight vectors (24 instructions, against about 8
                            for each vector summed alone), stored as 8 floats

Each is a Numba ``@intrinsic`` that emits the LLVM instruction directly (``load <16 x
float>``, ``llvm.fma.v16f32``, ``shufflevector``), so a kernel built from them compiles to
what it says. Used by :func:`sparsenn.kernels.sddmm` for float32. With ``NUMBA_DISABLE_JIT=1``
the same names are plain NumPy functions, so the kernels still run as Python.
"""

from __future__ import annotations

import numpy as np
from numba import config

if config.DISABLE_JIT:  # plain Python (debugging): 16-element NumPy arrays stand in for registers

    def vzero():
        return np.zeros(16, np.float32)

    def vbroadcast(s):
        return np.full(16, s, dtype=np.float32)

    def vload(a, i):
        return np.array(a[i:i + 16], dtype=np.float32)

    def vmul(a, b):
        return a * b

    def vadd(a, b):
        return a + b

    def transpose16(*rows):
        return tuple(np.array(rows).T.copy())

    def prefetch(a, i):
        pass

    def vstore(a, i, v):
        a[i:i + 16] = v

    def vfma(a, b, c):
        return a * b + c

    def vmask_tail(v, keep):
        return np.where(np.arange(16) >= 16 - keep, v, np.float32(0))

    def hsum(v):
        return np.float32(v.sum())

    def hsum8_store(v0, v1, v2, v3, v4, v5, v6, v7, out, k):
        for j, v in enumerate((v0, v1, v2, v3, v4, v5, v6, v7)):
            out[k + j] = v.sum()

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model

    _VEC = ir.VectorType(ir.FloatType(), 16)
    _I32 = ir.IntType(32)

    class F32x16(types.Type):
        """Numba type of a 16-lane float32 vector (an LLVM ``<16 x float>`` value)."""

        def __init__(self):
            super().__init__(name="f32x16")

    f32x16 = F32x16()

    @register_model(F32x16)
    class _F32x16Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, _VEC)

    def _address(context, builder, aryty, ary, idx, vec_type):
        data = context.make_array(aryty)(context, builder, value=ary).data
        return builder.bitcast(builder.gep(data, [idx]), vec_type.as_pointer())

    def _shuffle(builder, a, b, lanes):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(lanes)), lanes))

    @intrinsic
    def vzero(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(_VEC, [0.0] * 16)

        return f32x16(), codegen

    @intrinsic
    def vbroadcast(typingctx, s):
        if s != types.float32:
            return None

        def codegen(context, builder, sig, args):
            one = builder.insert_element(ir.Constant(_VEC, None), args[0], ir.Constant(_I32, 0))
            return _shuffle(builder, one, ir.Constant(_VEC, None), [0] * 16)

        return f32x16(s), codegen

    @intrinsic
    def vstore(typingctx, a, i, v):
        if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1
                and isinstance(i, types.Integer) and isinstance(v, F32x16)):
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], _address(context, builder, sig.args[0], args[0], args[1], _VEC), align=4)
            return context.get_dummy_value()

        return types.none(a, i, v), codegen

    @intrinsic
    def vload(typingctx, a, i):
        if not (isinstance(a, types.Array) and a.dtype in (types.float32, types.uint8) and a.ndim == 1
                and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            if sig.args[0].dtype == types.uint8:
                bytes16 = ir.VectorType(ir.IntType(8), 16)
                raw = builder.load(_address(context, builder, sig.args[0], args[0], args[1], bytes16), align=1)
                return builder.uitofp(raw, _VEC)
            return builder.load(_address(context, builder, sig.args[0], args[0], args[1], _VEC), align=4)

        return f32x16(a, i), codegen

    @intrinsic
    def vmul(typingctx, a, b):
        if not (isinstance(a, F32x16) and isinstance(b, F32x16)):
            return None

        def codegen(context, builder, sig, args):
            return builder.fmul(*args)

        return f32x16(a, b), codegen

    @intrinsic
    def vadd(typingctx, a, b):
        if not (isinstance(a, F32x16) and isinstance(b, F32x16)):
            return None

        def codegen(context, builder, sig, args):
            return builder.fadd(*args)

        return f32x16(a, b), codegen

    @intrinsic
    def prefetch(typingctx, a, i):
        if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            i8p = ir.IntType(8).as_pointer()
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                                "llvm.prefetch.p0")
            data = context.make_array(sig.args[0])(context, builder, value=args[0]).data
            # read (0), keep in all cache levels (locality 3), data cache (1)
            builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p), ir.Constant(_I32, 0),
                              ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            return context.get_dummy_value()

        return types.none(a, i), codegen

    @intrinsic
    def transpose16(typingctx, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15):
        rows = (v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15)
        if not all(isinstance(t, F32x16) for t in rows):
            return None
        result = types.UniTuple(f32x16, 16)

        def codegen(context, builder, sig, args):
            v = list(args)
            for s in (8, 4, 2, 1):  # swap the off-diagonal s x s blocks of rows i and i + s
                new = [None] * 16
                for i in range(16):
                    if i & s:
                        continue
                    new[i] = _shuffle(builder, v[i], v[i + s], [j if j & s == 0 else 16 + j - s for j in range(16)])
                    new[i + s] = _shuffle(builder, v[i], v[i + s], [j + s if j & s == 0 else 16 + j for j in range(16)])
                v = new
            return context.make_tuple(builder, result, v)

        return result(*rows), codegen

    @intrinsic
    def vfma(typingctx, a, b, c):
        if not all(isinstance(t, F32x16) for t in (a, b, c)):
            return None

        def codegen(context, builder, sig, args):
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32")
            return builder.call(fma, args)

        return f32x16(a, b, c), codegen

    @intrinsic
    def vmask_tail(typingctx, v, keep):
        if not (isinstance(v, F32x16) and isinstance(keep, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v, keep = args
            i64 = ir.IntType(64)
            first = builder.sub(ir.Constant(i64, 16), builder.sext(keep, i64) if keep.type.width < 64 else keep)
            firsts = _shuffle(builder, builder.insert_element(ir.Constant(ir.VectorType(i64, 16), None), first,
                                                              ir.Constant(_I32, 0)),
                              ir.Constant(ir.VectorType(i64, 16), None), [0] * 16)
            lanes = ir.Constant(ir.VectorType(i64, 16), list(range(16)))
            return builder.select(builder.icmp_signed(">=", lanes, firsts), v, ir.Constant(_VEC, [0.0] * 16))

        return f32x16(v, keep), codegen

    @intrinsic
    def hsum(typingctx, v):
        if not isinstance(v, F32x16):
            return None

        def codegen(context, builder, sig, args):
            f32 = ir.FloatType()
            reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, _VEC]),
                                                    "llvm.vector.reduce.fadd.v16f32")
            return builder.call(reduce, [ir.Constant(ir.FloatType(), 0.0), args[0]], fastmath=("reassoc",))

        return types.float32(v), codegen

    @intrinsic
    def hsum8_store(typingctx, v0, v1, v2, v3, v4, v5, v6, v7, out, k):
        if not (all(isinstance(t, F32x16) for t in (v0, v1, v2, v3, v4, v5, v6, v7))
                and isinstance(out, types.Array) and out.dtype == types.float32 and isinstance(k, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v = list(args[:8])
            # each level adds the two halves of every vector's remaining lanes, two vectors per
            # result: 8 vectors x 16 lanes -> 4 x (2 x 8) -> 2 x (4 x 4) -> 1 x (8 x 2) -> 8 x 1
            for width in (8, 4, 2):
                lo = [base + j for base in range(0, 32, 2 * width) for j in range(width)]
                hi = [i + width for i in lo]
                v = [builder.fadd(_shuffle(builder, v[2 * i], v[2 * i + 1], lo),
                                  _shuffle(builder, v[2 * i], v[2 * i + 1], hi)) for i in range(len(v) // 2)]
            sums = builder.fadd(_shuffle(builder, v[0], v[0], list(range(0, 16, 2))),
                                _shuffle(builder, v[0], v[0], list(range(1, 16, 2))))
            eight = ir.VectorType(ir.FloatType(), 8)
            builder.store(sums, _address(context, builder, sig.args[8], args[8], args[9], eight), align=4)
            return context.get_dummy_value()

        return types.none(v0, v1, v2, v3, v4, v5, v6, v7, out, k), codegen
