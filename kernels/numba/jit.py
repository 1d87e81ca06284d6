"""JIT helpers: serial and parallel builds of one kernel source, and bit casts."""

from __future__ import annotations

import hashlib
import types as pytypes
from pathlib import Path

from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

# Below this many elements a parallel launch (waking the workers, ~2 us here) costs more than it
# saves: `python benchmarks/crossover.py` on the project's 2-core machines had serial winning at
# 65,536 elements (4.0 vs 5.3 us) and parallel from 131,072 (8.1 vs 14.2 us).
PARALLEL_MIN_ELEMENTS = 1 << 17


def _source_stamp() -> str:
    """A digest of every kernel source in this folder. Numba's on-disk cache only notices edits to
    the file that defines a kernel, not to the files whose functions it inlines (``scalar.py``);
    naming every build after this digest makes any edit here start a fresh cache entry."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


SOURCE_STAMP = _source_stamp()


def stamped(fn):
    """``fn`` named after ``SOURCE_STAMP`` (put it under ``@njit(cache=True)``): its cache entry
    then changes with any kernel source, not only with its own file."""
    fn.__qualname__ = f"{fn.__qualname__}_{SOURCE_STAMP}"
    return fn


def serial_and_parallel(fn, suffix: str = "", bind: dict | None = None, **options):
    """Two cached builds of ``fn``: plain, and ``parallel=True`` (where ``prange`` splits the
    loop across threads).

    ``bind`` specialises ``fn``: the builds read these names as globals of their own (a jitted
    function there is a compile-time constant, so each specialisation compiles to its own
    tight, vectorised loop). Not closure cells: the on-disk cache key pickles those, and a
    jitted function pickles differently in every process. ``suffix`` names the specialisation;
    every build gets its own qualified name so none shares an on-disk cache entry with another."""
    if bind:
        fn = specialised(fn, suffix, bind)
    else:
        fn.__qualname__ = f"{fn.__name__}_{suffix}_{SOURCE_STAMP}" if suffix else f"{fn.__qualname__}_{SOURCE_STAMP}"
    # error_model="numpy": x / 0 gives inf or NaN as in NumPy instead of raising, which also
    # drops the zero check before every division that kept serial loops from vectorising
    # (a float32 sigmoid loop: 49 us -> 1 us on 8192 elements). Parallel builds already use it.
    options = {"error_model": "numpy", **options}
    serial = njit(cache=True, **options)(fn)
    twin = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                                fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    parallel = njit(cache=True, parallel=True, **options)(twin)
    return serial, parallel


def specialised(fn, suffix: str, bind: dict):
    """A copy of the plain function ``fn`` that reads the names in ``bind`` as globals of its own,
    named ``<name>_<suffix>_<SOURCE_STAMP>``, to be jitted (see ``serial_and_parallel`` for why
    globals and not closure cells, and why a name of its own)."""
    copy = pytypes.FunctionType(fn.__code__, {**fn.__globals__, **bind}, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__module__ = fn.__globals__["__name__"]
    copy.__qualname__ = f"{fn.__name__}_{suffix}_{SOURCE_STAMP}"
    copy.__doc__ = fn.__doc__
    return copy


def pick(variants, size: int):
    """The serial build for small problems, the parallel one for large."""
    return variants[1] if size >= PARALLEL_MIN_ELEMENTS else variants[0]


@intrinsic
def int64_as_float64(typingctx, bits):
    """Reinterpret an int64's bits as a float64 (used to build powers of two without ldexp,
    which is a libm call that stops LLVM from vectorising the loop)."""
    signature = types.float64(types.int64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return signature, codegen


@intrinsic
def int32_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return signature, codegen
