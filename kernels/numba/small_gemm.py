"""A register-tiled GEMM for the small matrices of one thread's share of a training step.

``gemm(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k, one)``: ``c[:m, :n] = A @ B`` (beta 0), arrays given
by address; ``A[i, k]`` is read at ``a + (i * sa_i + k * sa_k) * itemsize`` (so a transposed
operand is just other strides), ``B`` is row-major ``(k, n)`` with leading dimension ``ldb``,
``c`` row-major with ``ldc``. ``one`` (1 in the element type) picks float32 or float64.

Why not BLAS here: on 32-row blocks of a small MLP, an OpenBLAS call spends much of its time on
packing and buffer bookkeeping, and OpenBLAS's kernel choice is fixed per process (this project's
machines pin it to AVX2 with ``OPENBLAS_CORETYPE=Haswell``), while a JIT kernel is compiled for
the CPU it runs on. Measured on this project's machine, one thread, float32: the eight GEMMs of
one half-batch of the digits network in ~14 us against ~40 us on OpenBLAS
(``python benchmarks/step_anatomy.py``), 32 rows times 64x128 weights at 208 against 84 GFLOP/s
(``python benchmarks/crossover.py``). It has no cache blocking, so large operands (``B`` beyond
L2, or rows 4 KiB apart) stay with BLAS: ``SMALL_GEMM_MAX_BYTES``.

The micro-kernel is written in LLVM IR (Numba cannot name vector types; helpers in ``simd``): an
``MR x 2`` tile of vector accumulators (``MR`` rows, two vectors of columns) lives in registers
for the whole ``k`` loop; each step loads two vectors of a row of ``B``, broadcasts ``MR``
elements of ``A`` and issues ``2 MR`` fused multiply-adds. Columns past ``n`` are masked
(``llvm.masked.load/store``), so any ``n`` works and nothing past the matrices is read or
written. Sums run in ``k`` order per element (one rounding per FMA): results differ from BLAS's
only by rounding.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .jit import stamped
from .simd import I64, VECTOR_BYTES, declare, lane_mask, lanes, masked_load, masked_store, splat, suffix

MR = 4  # rows per tile (4 x 2 vectors: 8 accumulators + 2 operand vectors + broadcasts)
# The largest weight matrix whose layer gets this kernel rather than BLAS. Measured float32, one
# thread, 32 / 128 rows, GFLOP/s JIT vs OpenBLAS (Haswell kernels): weights 64x128 (32 KiB)
# 210 vs 83 / 203 vs 103; 256x256 181 vs 89 / 196 vs 107; 512x512 (1 MiB) 142 vs 90 / 176 vs 111;
# 784x1024 (3 MiB, rows 4 KiB apart) 85 vs 99 / 90 vs 113. (`python benchmarks/crossover.py`)
SMALL_GEMM_MAX_BYTES = 1024 * 1024


def _tile_intrinsic(rows: int):
    """The micro-kernel for a tile of ``rows`` (1..MR) rows and up to two vectors of columns."""

    @intrinsic
    def tile(typingctx, a, sa_i, sa_k, b, ldb, c, ldc, k, n, one):
        sig = types.void(a, sa_i, sa_k, b, ldb, c, ldc, k, n, one)

        def codegen(context, builder, signature, args):
            a, sa_i, sa_k, b, ldb, c, ldc, k, n, _ = args
            scalar = context.get_value_type(signature.args[-1])
            count = lanes(scalar)
            vec = ir.VectorType(scalar, count)
            fma = declare(builder.module, f"llvm.fma.{suffix(scalar)}", vec, [vec, vec, vec])
            a_ptr, b_ptr, c_ptr = (builder.inttoptr(p, scalar.as_pointer()) for p in (a, b, c))
            masks = [lane_mask(builder, count, v * count, n) for v in range(2)]
            zero = ir.Constant(vec, [0.0] * count)

            entry = builder.block
            loop = builder.append_basic_block("tile.loop")
            done = builder.append_basic_block("tile.done")
            builder.cbranch(builder.icmp_signed(">", k, ir.Constant(I64, 0)), loop, done)

            builder.position_at_end(loop)
            kk = builder.phi(I64)
            kk.add_incoming(ir.Constant(I64, 0), entry)
            acc = [[builder.phi(vec) for _ in range(2)] for _ in range(rows)]
            for row in acc:
                for phi in row:
                    phi.add_incoming(zero, entry)
            b_row = builder.mul(kk, ldb)
            b_vectors = [masked_load(builder, builder.gep(b_ptr, [builder.add(b_row, ir.Constant(I64, v * count))]),
                                     masks[v], zero) for v in range(2)]
            a_col = builder.mul(kk, sa_k)
            updated = []
            for r in range(rows):
                a_at = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(ir.Constant(I64, r), sa_i), a_col)]))
                broadcast = splat(builder, a_at, vec)
                updated.append([builder.call(fma, [broadcast, b_vectors[v], acc[r][v]]) for v in range(2)])
            k_next = builder.add(kk, ir.Constant(I64, 1))
            kk.add_incoming(k_next, loop)
            for r in range(rows):
                for v in range(2):
                    acc[r][v].add_incoming(updated[r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k), loop, done)

            builder.position_at_end(done)
            results = []
            for r in range(rows):
                for v in range(2):
                    result = builder.phi(vec)
                    result.add_incoming(zero, entry)
                    result.add_incoming(updated[r][v], loop)
                    results.append(result)
            for r in range(rows):
                for v in range(2):
                    at = builder.add(builder.mul(ir.Constant(I64, r), ldc), ir.Constant(I64, v * count))
                    masked_store(builder, results[2 * r + v], builder.gep(c_ptr, [at]), masks[v])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile1, _tile2, _tile3, _tile4 = (_tile_intrinsic(rows) for rows in range(1, MR + 1))


@intrinsic
def _itemsize(typingctx, x):
    """The size in bytes of the float type of ``x``, as a compile-time constant."""

    def codegen(context, builder, signature, args):
        return ir.Constant(ir.IntType(64), x.bitwidth // 8)

    return types.int64(x), codegen


@njit(inline="always", cache=True, error_model="numpy", boundscheck=False)
@stamped
def gemm(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k, one):
    """c[:m, :n] = A @ B; see the module docstring for the arguments."""
    itemsize = _itemsize(one)
    width = 2 * VECTOR_BYTES // itemsize
    for j0 in range(0, n, width):
        cols = min(width, n - j0)
        b_at = b + j0 * itemsize
        i0 = 0
        while i0 + MR <= m:
            _tile4(a + i0 * sa_i * itemsize, sa_i, sa_k, b_at, ldb, c + (i0 * ldc + j0) * itemsize, ldc, k, cols, one)
            i0 += MR
        left = m - i0
        a_at, c_at = a + i0 * sa_i * itemsize, c + (i0 * ldc + j0) * itemsize
        if left == 3:
            _tile3(a_at, sa_i, sa_k, b_at, ldb, c_at, ldc, k, cols, one)
        elif left == 2:
            _tile2(a_at, sa_i, sa_k, b_at, ldb, c_at, ldc, k, cols, one)
        elif left == 1:
            _tile1(a_at, sa_i, sa_k, b_at, ldb, c_at, ldc, k, cols, one)
