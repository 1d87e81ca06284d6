"""A strict model of CuPy's device arrays, for the CuPy stand-in (``fake_cupy``).

NumPy holds the data, but NumPy code may not read it: ``np.asarray(device_array)`` raises
``TypeError`` as CuPy's does, mixing a host array into a device operation raises, and every
value that reaches the host does so through an explicit copy (``cupy.asnumpy``, ``.get()``) or a
scalar read (``float(x)``, ``bool(x)``, ``.item()``). Reductions give 0-d device arrays, integer
array indices wrap around as CuPy's do, and only names the real CuPy has are offered.

During a stream capture (``Stream.begin_capture``) the rules of CUDA graph capture hold: no
synchronisation, no host read or host-to-device copy, allocations only from a private pool;
operations are recorded rather than run, and ``Graph.launch`` replays them on the same buffers.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
import os
import subprocess
import sys
from typing import Any

import numpy as np

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
            "array explicitly.")


class CaptureError(RuntimeError):
    """What CUDA answers to an operation that stream capture forbids."""


class _Capture:
    """The process's capture state: None, or the operations the open capture recorded; and the
    allocator ``cupy.cuda.using_allocator`` made current (None: CuPy's shared pool)."""

    recording: list | None = None
    allocator: Any = None
    operations = 0  # device operations run (kernels, CuPy's own, copies; a graph launch is one)

    @classmethod
    def forbid(cls, what: str) -> None:
        if cls.recording is not None:
            raise CaptureError(f"cudaErrorStreamCaptureUnsupported: {what} while the stream is capturing a graph")

    @classmethod
    def run(cls, operation, *args, _writes: bool = False, **kwargs):
        """One device operation. While capturing, nothing runs, as in CUDA: an operation that
        writes into existing memory (``_writes``: a kernel, an ``out=``, a ``copyto``, a ``fill``)
        is recorded; one that allocates its result runs once, for the result's shape and memory,
        and is recorded to compute into that memory at each replay. An allocation must come from
        a private pool (``using_allocator``): a block of the shared pool freed after the capture
        would be handed to other arrays while the graph still writes it."""
        if cls.recording is not None and _writes:
            cls.recording.append(functools.partial(operation, *args, **kwargs))
            return None
        result = operation(*args, **kwargs)
        if cls.recording is None:
            cls.operations += _writes or isinstance(result, np.generic) or (isinstance(result, np.ndarray)
                                                                             and result.base is None)
        else:
            if isinstance(result, np.generic):
                result = np.asarray(result)
            if isinstance(result, np.ndarray) and result.base is None:
                if cls.allocator is None:
                    raise CaptureError(f"allocating {result.nbytes} bytes ({result.dtype}{list(result.shape)}) from "
                                       "the shared memory pool while capturing a graph: the block goes back to the "
                                       "pool after the capture and other arrays reuse it while the graph writes it "
                                       "(capture under cupy.cuda.using_allocator(a private pool's malloc))")
                cls.recording.append(functools.partial(_compute_into, result, operation, args, kwargs))
        return result


def _compute_into(result: np.ndarray, operation, args, kwargs) -> None:
    np.copyto(result, operation(*args, **kwargs))


@functools.lru_cache(maxsize=1)
def real_cupy_names() -> frozenset[str]:
    """The public names of the installed CuPy, read in a child process without the stand-in
    (so this process's ``cupy`` stays whatever the tests put there), and kept in
    ``$FASTNN_CUPY_STANDIN/cupy-names.txt`` where a stand-in run has that folder; NumPy's, less
    those CuPy lacks, where CuPy is absent."""
    folder = os.environ.get("FASTNN_CUPY_STANDIN")
    kept = os.path.join(folder, "cupy-names.txt") if folder else None
    if kept and os.path.exists(kept):
        with open(kept) as handle:
            return frozenset(handle.read().split())
    env = {k: v for k, v in os.environ.items() if k not in ("FASTNN_CUPY_STANDIN", "PYTHONPATH")}
    found = subprocess.run([sys.executable, "-c", "import cupy; print(' '.join(dir(cupy)))"], capture_output=True,
                           text=True, env=env) if importlib.util.find_spec("cupy") is not None else None
    if found is None or found.returncode != 0:
        return frozenset(dir(np)) - {"errstate", "seterr", "geterr", "matrix", "ma", "char", "rec", "memmap",
                                     "object_", "str_", "bytes_", "datetime64", "timedelta64", "nditer"}
    if kept:
        os.makedirs(folder, exist_ok=True)
        with open(f"{kept}.{os.getpid()}", "w") as handle:
            handle.write(found.stdout)
        os.replace(f"{kept}.{os.getpid()}", kept)
    return frozenset(found.stdout.split())


def _unwrap(value: Any, allow_host: bool = False) -> Any:
    """A device operation's argument as NumPy sees it; a host array is refused as CuPy does."""
    if isinstance(value, DeviceArray):
        return value._data
    if isinstance(value, np.ndarray) and not allow_host:
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):  # (a list, not a generator: tracemalloc tests count those)
        return type(value)([_unwrap(v, allow_host) for v in value])
    return value


def _wrap(value: Any) -> Any:
    """A NumPy result as the device value CuPy would give (0-d arrays for scalars)."""
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):
        return DeviceArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple([_wrap(v) for v in value])
    return value


def _wrap_index(key: Any, shape: tuple[int, ...]) -> Any:
    """An index with integer arrays wrapped around each axis, as CuPy does (NumPy would raise)."""
    parts = key if isinstance(key, tuple) else (key,)
    out, axis = [], 0
    for part in parts:
        if isinstance(part, DeviceArray):
            part = part._data
        if isinstance(part, np.ndarray) and part.dtype.kind in "iu" and axis < len(shape) and shape[axis]:
            part = np.mod(part, shape[axis])
        out.append(part)
        axis += 0 if part is None or part is Ellipsis else 1
    return tuple(out) if isinstance(key, tuple) else out[0]


def _method(name: str, reads_host: bool = False):
    def method(self, *args, **kwargs):
        if reads_host:
            _Capture.forbid(f"reading a device value on the host (.{name})")
        out = kwargs.get("out")
        args, kwargs = _unwrap(args, allow_host=True), {k: _unwrap(v) for k, v in kwargs.items()}
        result = _Capture.run(getattr(self._data, name), *args, _writes=out is not None, **kwargs)
        return out if out is not None else _wrap(result)

    method.__name__ = name
    return method


def _binary(ufunc: np.ufunc, reflected: bool = False):
    def operation(self, other):
        return ufunc(other, self) if reflected else ufunc(self, other)

    return operation


def _in_place(ufunc: np.ufunc):
    def operation(self, other):
        ufunc(self, other, out=self)
        return self

    return operation


class DeviceArray:
    """``cupy.ndarray`` in the stand-in: data on the "device", out of NumPy's reach."""

    __slots__ = ("_data",)

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    # NumPy may dispatch to a device array, never read one
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ not in real_cupy_names() or method not in ("__call__", "reduce", "accumulate", "outer"):
            return NotImplemented
        inputs = _unwrap(inputs)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        if "where" in kwargs:
            kwargs["where"] = _unwrap(kwargs["where"])
        out = kwargs.get("out")
        result = _Capture.run(getattr(ufunc, method), *inputs, _writes=out is not None, **kwargs)
        if out is not None:
            return DeviceArray(out[0]) if isinstance(out, tuple) and len(out) == 1 else DeviceArray(out)
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ not in real_cupy_names():
            return NotImplemented
        out = kwargs.get("out")
        result = _Capture.run(func, *_unwrap(args), _writes=out is not None or func.__name__ == "copyto",
                              **{k: _unwrap(v) for k, v in kwargs.items()})
        return out if out is not None else _wrap(result)

    @property
    def __cuda_array_interface__(self) -> dict:
        interface = dict(self._data.__array_interface__)
        interface["version"] = 3
        return interface

    # attributes (no data read)
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    strides = property(lambda self: self._data.strides)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    flags = property(lambda self: self._data.flags)
    T = property(lambda self: DeviceArray(self._data.T))
    base = property(lambda self: None if self._data.base is None else DeviceArray(self._data.base))
    data = property(lambda self: type("MemoryPointer", (), {"ptr": self._data.__array_interface__["data"][0]})())

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self):
        return (DeviceArray(row) if isinstance(row, np.ndarray) else _wrap(row) for row in self._data)

    def __getitem__(self, key):
        key = _wrap_index(key, self._data.shape)
        if isinstance(self._data[key], np.generic):  # CuPy gives a 0-d view where NumPy gives a scalar
            key = (*(key if isinstance(key, tuple) else (key,)), Ellipsis)
        return _wrap(_Capture.run(operator.getitem, self._data, key))

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            _Capture.forbid("copying a host array to the device")
        _Capture.run(operator.setitem, self._data, _wrap_index(key, self._data.shape), _unwrap(value, allow_host=True),
                     _writes=True)

    # host reads: a synchronisation each, forbidden while capturing
    def _host(self, what: str) -> np.ndarray:
        _Capture.forbid(f"reading a device value on the host ({what})")
        return self._data

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        return np.array(self._host(".get()"), order=order)

    def set(self, array: np.ndarray, stream=None) -> None:
        _Capture.forbid("copying a host array to the device (.set)")
        if not isinstance(array, np.ndarray) or array.shape != self.shape:
            raise ValueError(f"set needs a numpy array of shape {self.shape}")
        self._data[...] = array

    def item(self):
        return self._host(".item()").item()

    def tolist(self):
        return self._host(".tolist()").tolist()

    def __bool__(self) -> bool:
        return bool(self._host("bool()"))

    def __float__(self) -> float:
        return float(self._host("float()"))

    def __int__(self) -> int:
        return int(self._host("int()"))

    def __complex__(self) -> complex:
        return complex(self._host("complex()"))

    def __format__(self, spec: str) -> str:
        return format(self._host("format()")[()] if self.ndim == 0 else self._host("format()"), spec)

    def __repr__(self) -> str:
        return repr(self._host("repr()")).replace("array(", "array(", 1)

    __str__ = __repr__

    __hash__ = None  # as CuPy's (and NumPy's) arrays

    def fill(self, value) -> None:
        _Capture.run(self._data.fill, value, _writes=True)

    def reshape(self, *shape, order="C"):
        return DeviceArray(self._data.reshape(*shape, order=order))

    def view(self, dtype=None):
        return DeviceArray(self._data.view(dtype) if dtype is not None else self._data.view())

    def transpose(self, *axes):
        return DeviceArray(self._data.transpose(*axes))

    def ravel(self, order="C"):
        return _wrap(self._data.ravel(order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _wrap(_Capture.run(self._data.astype, dtype, order=order))

    def copy(self, order="C"):
        return _wrap(_Capture.run(self._data.copy, order))

    def __reduce__(self):  # as CuPy's: pickled through a host copy, unpickled onto the device
        return DeviceArray, (self.get(),)

    def __deepcopy__(self, memo):
        return self.copy()


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "all", "any", "prod", "var", "std", "dot", "clip",
              "squeeze", "take", "cumsum", "nonzero", "flatten", "swapaxes", "diagonal", "round"):
    setattr(DeviceArray, _name, _method(_name))

_OPERATORS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
              "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
              "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}
for _name, _ufunc in _OPERATORS.items():
    setattr(DeviceArray, f"__{_name}__", _binary(_ufunc))
    setattr(DeviceArray, f"__r{_name}__", _binary(_ufunc, reflected=True))
    if _name != "matmul":
        setattr(DeviceArray, f"__i{_name}__", _in_place(_ufunc))
for _name, _ufunc in {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                      "eq": np.equal, "ne": np.not_equal}.items():
    setattr(DeviceArray, f"__{_name}__", _binary(_ufunc))
DeviceArray.__neg__ = lambda self: np.negative(self)
DeviceArray.__pos__ = lambda self: np.positive(self)
DeviceArray.__abs__ = lambda self: np.absolute(self)
DeviceArray.__invert__ = lambda self: np.invert(self)
