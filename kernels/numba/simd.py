"""Vector code written as LLVM IR, for the loops LLVM's vectorisers leave scalar.

Numba has no vector types, so these are ``@intrinsic``s that emit IR with explicit vectors of the
widest width the host's code generator targets (``VECTOR_BYTES``). LLVM legalises any width on
any x86-64 CPU (a 64-byte vector becomes two 32-byte ones without AVX-512), so the choice only
affects speed, never results. Shared by ``small_gemm`` (its micro-kernel) and ``losses`` (the
row maximum and the prefetch of the next row in the softmax kernels).
"""

from __future__ import annotations

from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


def _vector_bytes() -> int:
    """64 with AVX-512, else 32."""
    return 64 if llvm.get_host_cpu_features().get("avx512f") else 32


VECTOR_BYTES = _vector_bytes()
I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


def lanes(scalar: ir.Type) -> int:
    """Elements of ``scalar`` (float or double) in one vector."""
    return VECTOR_BYTES * 8 // (32 if isinstance(scalar, ir.FloatType) else 64)


def suffix(scalar: ir.Type) -> str:
    """The overload suffix of LLVM's vector intrinsics, e.g. ``v16f32``."""
    return f"v{lanes(scalar)}f{32 if isinstance(scalar, ir.FloatType) else 64}"


def declare(module: ir.Module, name: str, ret: ir.Type, params: list[ir.Type]) -> ir.Function:
    """The function ``name`` of ``module``, declared on first use."""
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(ret, params), name)


def splat(builder: ir.IRBuilder, value: ir.Value, vector_type: ir.VectorType) -> ir.Value:
    """``value`` in every lane."""
    count = vector_type.count
    one_lane = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one_lane, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, count), [0] * count))


def lane_mask(builder: ir.IRBuilder, count: int, first: int, n: ir.Value) -> ir.Value:
    """Lanes ``first + j < n`` of a ``count``-lane vector (``n`` an i64)."""
    index_type = ir.VectorType(I64, count)
    return builder.icmp_signed("<", ir.Constant(index_type, [first + j for j in range(count)]),
                               splat(builder, n, index_type))


def masked_load(builder: ir.IRBuilder, pointer: ir.Value, mask: ir.Value, passthru: ir.Value) -> ir.Value:
    """Load a vector from ``pointer`` (element-typed); masked-off lanes read nothing and give
    ``passthru``."""
    vector_type = passthru.type
    scalar = vector_type.element
    function = declare(builder.module, f"llvm.masked.load.{suffix(scalar)}.p0", vector_type,
                       [vector_type.as_pointer(), I32, mask.type, vector_type])
    return builder.call(function, [builder.bitcast(pointer, vector_type.as_pointer()),
                                   ir.Constant(I32, 4 if isinstance(scalar, ir.FloatType) else 8), mask, passthru])


def masked_store(builder: ir.IRBuilder, value: ir.Value, pointer: ir.Value, mask: ir.Value) -> None:
    """Store the lanes of ``value`` selected by ``mask`` at ``pointer`` (element-typed)."""
    vector_type = value.type
    scalar = vector_type.element
    function = declare(builder.module, f"llvm.masked.store.{suffix(scalar)}.p0", ir.VoidType(),
                       [vector_type, vector_type.as_pointer(), I32, mask.type])
    builder.call(function, [value, builder.bitcast(pointer, vector_type.as_pointer()),
                            ir.Constant(I32, 4 if isinstance(scalar, ir.FloatType) else 8), mask])


def _larger(builder: ir.IRBuilder, candidate: ir.Value, current: ir.Value) -> ir.Value:
    """``candidate if candidate > current else current``: a NaN candidate never wins."""
    return builder.select(builder.fcmp_ordered(">", candidate, current), candidate, current)


@intrinsic
def max_skipping_nan(typingctx, address, n, first):
    """The largest of the ``n`` (>= 1) floats at ``address`` whose first is ``first``, with NaNs
    skipped unless ``first`` is NaN (then NaN): the value of folding ``m = v if v > m else m``
    over the elements from ``m = first`` (only the sign of a zero maximum may differ, as the
    lanes see the elements in another order). One vector compare-and-select per ``lanes``
    elements; the scalar fold stays scalar (LLVM vectorises a max reduction only with
    fastmath's no-NaN flag, which would drop the NaN rule)."""
    sig = first(address, n, first)

    def codegen(context, builder, signature, args):
        address, n, first = args
        scalar = first.type
        count = lanes(scalar)
        vector_type = ir.VectorType(scalar, count)
        pointer = builder.inttoptr(address, scalar.as_pointer())
        start = splat(builder, first, vector_type)

        entry = builder.block
        loop = builder.append_basic_block("rowmax.loop")
        done = builder.append_basic_block("rowmax.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        at = builder.phi(I64)
        at.add_incoming(ir.Constant(I64, 0), entry)
        best = builder.phi(vector_type)
        best.add_incoming(start, entry)
        left = builder.sub(n, at)
        values = masked_load(builder, builder.gep(pointer, [at]), lane_mask(builder, count, 0, left), start)
        updated = _larger(builder, values, best)
        at_next = builder.add(at, ir.Constant(I64, count))
        at.add_incoming(at_next, loop)
        best.add_incoming(updated, loop)
        builder.cbranch(builder.icmp_signed("<", at_next, n), loop, done)

        builder.position_at_end(done)
        result = builder.extract_element(updated, ir.Constant(I32, 0))
        for lane in range(1, count):
            result = _larger(builder, builder.extract_element(updated, ir.Constant(I32, lane)), result)
        return result

    return sig, codegen


@intrinsic
def prefetch(typingctx, address):
    """Ask for the cache line at ``address`` to be loaded (a hint: never faults, any address)."""

    def codegen(context, builder, signature, args):
        byte_pointer = ir.IntType(8).as_pointer()
        function = declare(builder.module, "llvm.prefetch.p0", ir.VoidType(), [byte_pointer, I32, I32, I32])
        # read, keep in all cache levels, data cache
        builder.call(function, [builder.inttoptr(args[0], byte_pointer), ir.Constant(I32, 0), ir.Constant(I32, 3),
                                ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return types.void(address), codegen


def _transpose_lanes(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The transpose of the square matrix whose rows are the ``len(rows)``-lane vectors ``rows``:
    at stage ``b`` (1, 2, 4, ...) each pair of rows ``i``, ``i + b`` swaps the ``b``-wide blocks
    off their diagonal, one two-input shuffle per new row."""
    count = len(rows)
    b = 1
    while b < count:
        new = list(rows)
        for i in range(count):
            if i & b:
                continue
            low = [j if not j & b else count + j - b for j in range(count)]
            high = [j + b if not j & b else count + j for j in range(count)]
            new[i] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(ir.VectorType(I32, count), low))
            new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(ir.VectorType(I32, count), high))
        rows = new
        b *= 2
    return rows


@intrinsic
def transpose_tile(typingctx, source, source_stride, destination, destination_stride, rows, cols, like):
    """``destination[j, i] = source[i, j]`` for ``i < rows``, ``j < cols``, both at most one
    vector's lanes of ``like``'s type (16 float32 with AVX-512); addresses, strides in elements.
    The tile is read a row per (masked) vector load, transposed in registers with shuffles and
    written a row per masked store: nothing outside the tile is read or written."""
    sig = types.void(source, source_stride, destination, destination_stride, rows, cols, like)

    def codegen(context, builder, signature, args):
        source, source_stride, destination, destination_stride, rows, cols, like = args
        scalar = like.type
        count = lanes(scalar)
        vector_type = ir.VectorType(scalar, count)
        source_pointer = builder.inttoptr(source, scalar.as_pointer())
        destination_pointer = builder.inttoptr(destination, scalar.as_pointer())
        zero = ir.Constant(vector_type, [0.0] * count)
        mask_type = ir.VectorType(I1, count)

        def row_masks(width: ir.Value, height: ir.Value) -> list[ir.Value]:
            lanes_in_row = lane_mask(builder, count, 0, width)
            return [builder.and_(lanes_in_row, splat(builder, builder.icmp_signed("<", ir.Constant(I64, i), height),
                                                     mask_type)) for i in range(count)]

        loaded = [masked_load(builder, builder.gep(source_pointer, [builder.mul(source_stride, ir.Constant(I64, i))]),
                              mask, zero) for i, mask in enumerate(row_masks(cols, rows))]
        for j, (row, mask) in enumerate(zip(_transpose_lanes(builder, loaded), row_masks(rows, cols))):
            masked_store(builder, row, builder.gep(destination_pointer,
                                                   [builder.mul(destination_stride, ir.Constant(I64, j))]), mask)
        return context.get_dummy_value()

    return sig, codegen
