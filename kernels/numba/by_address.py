"""Kernels the whole-step kernel calls by address: compiled apart, once each.

Two kinds. The elementwise passes and the small GEMM are C functions (``numba.cfunc``), called
with pointers; the kernel's own tasks, which take some thirty arrays, are jitted functions called
through their native entry points (``native_address``, ``native_caller``, below).

``dense_step`` runs each layer's bias + activation pass and its activation backward (the
``elementwise`` kernels of the per-layer path) and the register-tiled ``small_gemm``. Called as
jitted functions, all ten activations' passes and three inlined copies of the GEMM were compiled
into the whole-step kernel, and LLVM optimised that code again in each caller that linked it
(``_rows_forward_backward``, ``_block_task``, the parallel loop of ``train_batches``). As C
functions (``numba.cfunc``, each cached on disk) each is compiled once, only for the activations
a network uses, and the kernel calls them through the addresses in its layer table. A cold
float32 digits fit compiled in 27.7 s instead of 42.2 s (`NUMBA_CACHE_DIR=$(mktemp -d) fastnn
train digits --backend numba --epochs 1`, AMD EPYC Zen 4), with no loss of speed (a digits fit
1.11x the inlined build's, median of 8 A/B rounds).

``forward_address(name, dtype)``: ``f(z, bias, y, rows, cols, alpha)``, z += bias then y = g(z)
on ``(rows, cols)`` C arrays. ``backward_address(name, dtype)``: ``f(dy, z, y, dz, size, alpha)``,
dz = dy * g'(z) on ``size`` elements. ``small_gemm_address(dtype)``: ``small_gemm.gemm`` without
its last argument. Arrays are passed as addresses (int64), ``alpha`` in the arrays' float type.
"""

from __future__ import annotations

import functools
import types as pytypes
from typing import Any

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import elementwise, small_gemm
from .jit import SOURCE_STAMP, stamped

# The pass of one table entry, bound as a global of each build (not a closure cell: see
# ``jit.serial_and_parallel``).
run_pass = elementwise.bias_activation["identity"][0]


def _forward(z, bias, y, rows, cols, alpha):
    run_pass(carray(z, (rows, cols)), carray(bias, (cols,)), carray(y, (rows, cols)), alpha)


def _backward(dy, z, y, dz, size, alpha):
    run_pass(carray(dy, (size,)), carray(z, (size,)), carray(y, (size,)), carray(dz, (size,)), alpha)


# Every C function built in this process, by qualified name (each has ``cache_hits``).
BUILT: dict[str, Any] = {}


def _compile(fn, signature) -> int:
    built = BUILT[fn.__qualname__] = cfunc(signature, cache=True, error_model="numpy")(fn)
    return built.address


def _build(template, table, name: str, dtype: np.dtype) -> int:
    scalar = types.float32 if dtype == np.float32 else types.float64
    pointer = types.CPointer(scalar)
    signature = types.void(pointer, pointer, pointer, pointer if template is _backward else types.int64,
                           types.int64, scalar)
    fn = pytypes.FunctionType(template.__code__, {**template.__globals__, "run_pass": table[name][0]},
                              template.__name__)
    fn.__module__ = __name__
    fn.__qualname__ = f"{template.__name__}_{name}_{dtype.name}_{SOURCE_STAMP}"
    return _compile(fn, signature)


@functools.cache
def forward_address(name: str, dtype: np.dtype) -> int:
    """The address of the bias + activation pass of activation ``name`` for ``dtype`` (compiled,
    or loaded from the cache, on first use)."""
    return _build(_forward, elementwise.bias_activation, name, np.dtype(dtype))


@functools.cache
def backward_address(name: str, dtype: np.dtype) -> int:
    """The address of the activation backward of ``name`` for ``dtype`` (likewise)."""
    return _build(_backward, elementwise.backward, name, np.dtype(dtype))


def _call_by_address(context, builder, signature, args):
    """Codegen of the intrinsics below: call the C function at ``args[0]`` with the rest, each
    as its LLVM value type. Arrays go as int64 addresses, which travel as pointers do in the C
    calling convention (x86-64, AArch64); taking the function's address as an argument, not a
    constant, keeps the callers cacheable on disk."""
    fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in signature.args[1:]])
    builder.call(builder.inttoptr(args[0], fnty.as_pointer()), list(args[1:]))
    return context.get_dummy_value()


@intrinsic
def _call(typingctx, address, a, b, c, d, e, alpha):
    """``(*address)(a, b, c, d, e, alpha)``: five int64 arguments (addresses or sizes) and a float."""
    return types.void(address, a, b, c, d, e, alpha), _call_by_address


@njit(inline="always", cache=True)
@stamped
def call_forward(address, z, bias, y, alpha):
    """z += bias, y = g(z) through the pass at ``address``; z, y C-contiguous ``(rows, cols)``."""
    rows, cols = z.shape
    _call(address, z.ctypes.data, bias.ctypes.data, y.ctypes.data, rows, cols, alpha)


@njit(inline="always", cache=True)
@stamped
def call_backward(address, dy, z, y, dz, alpha):
    """dz = dy * g'(z) through the pass at ``address``; all C-contiguous, of one size."""
    _call(address, dy.ctypes.data, z.ctypes.data, y.ctypes.data, dz.ctypes.data, dz.size, alpha)


# --- the small GEMM -------------------------------------------------------------------------------

one = np.float32(1)  # bound per dtype, as ``run_pass``


def _small_gemm(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k):
    small_gemm.gemm(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k, one)


@functools.cache
def small_gemm_address(dtype: np.dtype) -> int:
    """The address of ``small_gemm.gemm`` for ``dtype``: ``f(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k)``."""
    dtype = np.dtype(dtype)
    fn = pytypes.FunctionType(_small_gemm.__code__, {**_small_gemm.__globals__, "one": dtype.type(1)},
                              _small_gemm.__name__)
    fn.__module__ = __name__
    fn.__qualname__ = f"_small_gemm_{dtype.name}_{SOURCE_STAMP}"
    return _compile(fn, types.void(*[types.int64] * 10))


@intrinsic
def call_small_gemm(typingctx, address, a, sa_i, sa_k, b, ldb, c, ldc, m, n, k):
    """``small_gemm.gemm(a, sa_i, sa_k, b, ldb, c, ldc, m, n, k)`` through ``small_gemm_address``."""
    return types.void(address, a, sa_i, sa_k, b, ldb, c, ldc, m, n, k), _call_by_address


# --- jitted functions by address, in Numba's own calling convention -------------------------------
#
# The whole-step kernel's two tasks (a row block's forward and backward, a parameter slice's sum
# and update) take some thirty arrays each, too many to pass as C pointers. They stay jitted
# functions, each compiled once for the one signature the kernel calls it with, and the kernel's
# parallel loop calls their native entry points (arrays as Numba's own array structs) by address.
# Called as jitted functions, their code was linked into the parallel loop's module and optimised
# again there: 8 of the 24 s of a cold digits fit.

# Every jitted function compiled for a call by address, by qualified name (each has ``stats``).
NATIVE: dict[str, Any] = {}


def native_address(dispatcher: Any, signature: Any) -> int:
    """The address of ``dispatcher``'s native entry point for ``signature`` (a Numba signature),
    compiled, or loaded from the on-disk cache, on first use; for ``native_caller``."""
    args = tuple(signature.args)
    address = _ADDRESSES.get((dispatcher, args))
    if address is None:
        dispatcher.compile(args)
        NATIVE[dispatcher.py_func.__qualname__] = dispatcher
        built = dispatcher.overloads[args]
        address = _ADDRESSES[dispatcher, args] = built.library.get_pointer_to_function(built.fndesc.llvm_func_name)
    return address


_ADDRESSES: dict[tuple[Any, tuple], int] = {}  # (dispatcher, argument types): its address in this process


def in_cache(dispatcher: Any, signature: Any) -> bool | None:
    """Whether Numba's on-disk cache holds ``dispatcher``'s build for ``signature`` (as
    ``native_address`` compiles it), read from the cache's index without loading the build; None
    where that cannot be told (caching off, or Numba's cache internals not as in 0.5x-0.6x)."""
    if tuple(signature.args) in dispatcher.overloads:  # built or loaded already: no need to look
        return True
    try:
        cache = dispatcher._cache
        key = cache._index_key(tuple(signature.args), dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 (any difference in the internals: cannot tell)
        return None


def _writable(t: types.Type) -> types.Type:
    # a read-only array has the same layout: the callee only reads what it is given read-only
    return t.copy(readonly=False) if isinstance(t, types.Array) and not t.mutable else t


def native_caller(signature_of):
    """An intrinsic ``call(address, args)`` that calls the jitted function at ``address``
    (``native_address(fn, signature_of(args))``) with the tuple ``args`` and returns its result.
    ``signature_of(arg_types)`` gives the signature the callee was compiled for; where the caller's
    argument types differ from it (but for read-only arrays), the caller fails to compile, naming
    the argument, instead of passing the callee arrays of another layout."""

    @intrinsic
    def call(typingctx, address, args):
        expected = signature_of(args.types)
        given = tuple(_writable(t) for t in args.types)
        if given != tuple(expected.args):
            wrong = [f"argument {k}: {g} (expected {e})" for k, (g, e) in enumerate(zip(given, expected.args))
                     if g != e] or [f"{len(given)} arguments (expected {len(expected.args)})"]
            raise TypingError(f"call by address: {', '.join(wrong)}")

        def codegen(context, builder, signature, llargs):
            arg_types = list(expected.args)
            fnty = context.call_conv.get_function_type(expected.return_type, arg_types)
            values = [builder.extract_value(llargs[1], k) for k in range(len(arg_types))]
            result = cgutils.alloca_once(builder, fnty.args[0].pointee)
            builder.store(cgutils.get_null_value(fnty.args[0].pointee), result)
            exception = cgutils.alloca_once(builder, fnty.args[1].pointee)
            packed = list(context.call_conv._get_arg_packer(arg_types).as_arguments(builder, values))
            # the status is not read: the callees are built with the NumPy error model and
            # without bounds checks, and a parallel loop has nowhere to raise to
            builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), [result, exception] + packed)
            return context.get_returned_value(builder, expected.return_type, builder.load(result))

        return expected.return_type(address, args), codegen

    return call
