"""The kernel contract: one class, documented once, that every backend instantiates.

A backend is an array module (``xp``) plus a ``KernelSet`` of functions on that module's arrays.
``Backend`` owns everything that is the same on every backend: argument checks with clear errors,
output allocation, and the shape conventions below. A backend module only supplies its kernels,
so layers call ``backend.linear_forward(...)`` and never ask which backend is active.

Conventions (all backends, checked by ``tests/test_conformance.py``):

- Weights follow PyTorch's ``nn.Linear``: ``weight (out, in)``, ``bias (out,)``,
  ``z = x @ weight.T + bias`` for ``x (*, in)``; gradients reduce over every leading dim.
- Floating kernels accept float32 and float64; all floating array operands of a call share one
  dtype (``TypeError`` otherwise: nothing is promoted silently) and the result has that dtype.
  Lists, tuples and numbers are converted to the call's dtype (float64 when no array sets it).
- ``out=`` buffers and arrays updated in place, when given, must be C-contiguous arrays of this
  backend of the result's shape and dtype (``TypeError``/``ValueError`` otherwise); the layers
  pass reused workspaces so a training step allocates nothing in steady state.
- Every public entry point checks shapes, sizes, dtypes and label ranges before a kernel runs,
  so no argument can make a kernel read or write out of bounds. ``Backend.kernels`` is the
  unchecked layer below, for callers (layers, ``fit``) that checked once up front.
- Kernels never synchronise with a device: values such as a loss are returned as 0-d arrays.
  (The checked ``softmax_cross_entropy`` entry reads the labels' min and max back to check them.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..activations import ACTIVATIONS
from ..shapes import matmul_result_shape

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_PAGE = 4096


@dataclass(frozen=True)
class KernelSet:
    """The functions a backend supplies, each writing into caller-provided outputs.

    Signatures (arrays are the backend's native arrays, already checked by ``Backend``):

    - ``forward[name](z, out, alpha) -> out`` and ``backward[name](dy, z, y, out, alpha) -> out``
      for every name in ``fastnn.activations.ACTIVATIONS``.
    - ``softmax(z, out)``, ``softmax_backward(dy, y, out)`` over the last axis.
    - ``matmul(a, b, out)``: NumPy matmul semantics. ``bias_add(x, bias, out)``.
    - ``bias_activation(z, bias | None, activation, alpha, y) -> (z, y)``: the pass after a GEMM,
      ``z += bias`` in place and ``y = g(z)`` (``y is z`` for the identity activation).
    - ``linear_forward(x, weight, bias | None, activation, alpha, z, y) -> (z, y)``; ``y is z``
      for the identity activation.
    - ``linear_backward(x, weight, dz, dx | None, dweight, dbias | None)``.
    - ``mse / bce / bce_with_logits / softmax_cross_entropy(pred, target, grad) -> (value, grad)``.
    - ``dropout(x, out, seed, step, p) -> out``: ``x`` times the Philox4x32-10 mask of
      ``kernels/numpy/dropout.py`` (the same bits on every backend) times ``1 / (1 - p)``.
    - ``layer_norm(x, weight | None, bias | None, eps, y, mean, rstd) -> y`` on rows ``x (rows, n)``
      and ``layer_norm_backward(dy, x, weight | None, mean, rstd, dx | None, dweight | None,
      dbias | None)`` (``kernels/numpy/normalization.py`` states the maths).
    - ``batch_norm(x, weight | None, bias | None, eps, y, mean, rstd, var) -> y`` over the rows of
      ``x (rows, n)`` (per-column statistics, ``var`` biased) and ``batch_norm_backward(dy, x,
      weight | None, mean, rstd, dx | None, dweight | None, dbias | None)``, one fused pass.
    - ``sgd(param, grad, velocity, scratch, *, lr, momentum, nesterov, weight_decay, first_step)``
      and ``adam(param, grad, m, v, scratch, scratch2, *, step, lr, beta1, beta2, eps,
      weight_decay, decoupled)``, updating ``param`` in place.
    """

    forward: Mapping[str, Callable[..., Any]]
    backward: Mapping[str, Callable[..., Any]]
    softmax: Callable[..., Any]
    softmax_backward: Callable[..., Any]
    matmul: Callable[..., Any]
    bias_add: Callable[..., Any]
    bias_activation: Callable[..., Any]
    linear_forward: Callable[..., Any]
    linear_backward: Callable[..., Any]
    mse: Callable[..., Any]
    bce: Callable[..., Any]
    bce_with_logits: Callable[..., Any]
    softmax_cross_entropy: Callable[..., Any]
    sgd: Callable[..., Any]
    adam: Callable[..., Any]
    dropout: Callable[..., Any]
    layer_norm: Callable[..., Any]
    layer_norm_backward: Callable[..., Any]
    batch_norm: Callable[..., Any]
    batch_norm_backward: Callable[..., Any]

    def __post_init__(self) -> None:
        for table in ("forward", "backward"):
            missing = set(ACTIVATIONS) - set(getattr(self, table))
            if missing:
                raise TypeError(f"KernelSet.{table} lacks activations {sorted(missing)}")


def _from_dlpack(xp: ModuleType, x: Any) -> Any:
    """``x`` viewed as an ``xp`` array through DLPack where it offers the protocol on a device
    ``xp`` can read (zero copy); otherwise ``x`` unchanged, for ``xp.asarray`` to convert."""
    if isinstance(x, xp.ndarray) or not hasattr(x, "__dlpack__") or not hasattr(x, "__dlpack_device__"):
        return x
    try:
        return xp.from_dlpack(x)
    except (BufferError, TypeError, ValueError, RuntimeError):  # another device, a tensor needing grad, ...
        return x


def to_dlpack(x: Any) -> Any:
    """A DLPack capsule of ``x`` (a fastnn result: a NumPy or CuPy array) for libraries that still
    take capsules; newer ones take the array itself: ``torch.from_dlpack(net.predict(X))``."""
    return x.__dlpack__()


def to_numpy(x: Any) -> np.ndarray:
    """A fastnn result (any backend's array) as a NumPy array on the host: a device array is
    copied back (NumPy may not read a CuPy array: ``np.asarray`` raises ``TypeError``), a NumPy
    array is returned as it is, anything else goes through ``np.asarray``."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "get"):  # CuPy's arrays (and the tests' stand-in)
        return x.get()
    return np.asarray(x)


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


def _check_norm_arguments(kernel: str, x: Any, n: int, weight: Any, bias: Any, eps: Any) -> None:
    """A normalisation's affine parameters (``(n,)`` or None) and its ``eps`` (> 0)."""
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.shape != (n,):
            raise ValueError(f"{kernel}: {name} must have shape ({n},) for x {x.shape}, got {value.shape}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{kernel}: eps must be a positive number, got {eps!r}")


class Backend:
    """One backend: an array module plus its kernels, behind the checked public contract.

    Subclasses set ``name``, ``xp`` and ``kernels``; they override nothing else unless the array
    module needs it (``asarray``/``to_numpy`` for device arrays, ``empty`` for device memory).
    """

    name: str = "abstract"
    xp: ModuleType = np
    kernels: KernelSet
    # True where reading a value back to the host stalls a device queue: training then checks
    # for NaN/inf on the device and looks at the result once per epoch, not once per step.
    defers_checks: bool = False
    # True where kernels are compiled on first use (a JIT backend): the CLI then says so, with
    # ``compile_estimate``, how long a first fit's compilation roughly takes
    compiles: bool = False
    compile_estimate: str = ""
    # True where each dtype's kernels compile apart (Numba: a build per signature), so that
    # ``fastnn warmup`` can have a helper process compile float64's while it compiles float32's
    compiles_each_dtype: bool = False
    # True where ``capture`` records a training step as one replayable graph (``fastnn.graph_step``)
    captures_steps: bool = False

    def __repr__(self) -> str:
        return f"<fastnn backend {self.name!r}>"

    # A backend is one per process: copies of a network share it, and a pickled network finds
    # the unpickling process's own (layers on different instances refuse to combine).
    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        return self

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        from . import backend_for

        return backend_for, (self.name,)

    def dense_trainer(self, plan: Any, params: Any, batch_size: int) -> Any:
        """An object that trains a whole stack of dense layers a chunk of batches per call, or
        None (the default) for the per-layer path. ``plan`` is a ``fastnn.dense_plan.DensePlan``
        over the flat buffer ``params``. Its ``run(X, targets, order, first, count, batch_size,
        optimizer, state, grads, snapshot, batch_losses, batch_correct)`` must do exactly what the
        per-layer loop in ``fastnn.training.fit`` does for those batches (same loss, gradients to
        rounding, same optimizer rule, same NaN/inf guard) and return ``(done, failure, batch)``.
        It is a context manager, entered for the duration of ``fit``'s loop; its
        ``inputs(X, target)`` gives the arrays in the layout ``run`` wants; and ``release()``,
        which ``fit`` calls when it is done with it, lets the backend hand its buffers to the next
        trainer of the same shape (the object is not used again). Data-parallel
        training uses it where it also has ``gradients(X, targets, rows, grads, loss,
        correct)``: one batch's gradients, parameters untouched (see ``kernels/numba/trainer.py``)."""
        return None

    def capture(self, step: Callable[[], Any]) -> Any:
        """Record ``step()`` (device work only: no host read, no synchronisation) as one graph,
        without running it. Returns an object with ``launch()`` (run the recorded work once more,
        on the same buffers) and ``result`` (what ``step`` returned: arrays the graph writes).
        Only backends with ``captures_steps`` implement it."""
        raise NotImplementedError(f"the {self.name} backend does not capture steps")

    def allreduce(self, world: Any, buffer: Any) -> Any:
        """Sum ``buffer`` (a contiguous array of this backend) over the ranks of ``world`` (a
        ``fastnn.distributed.World``), in place, and return it. Host arrays go to MPI; a device
        backend overrides this with its own engine (the CuPy backend: NCCL)."""
        return world.allreduce(buffer)

    def kernel_builds(self) -> Iterator[str]:
        """Iterate over every build of the kernels a call can select (a JIT backend compiles one
        per build); ``fastnn warmup`` runs the kernels once inside each."""
        yield "default"

    def whole_step_builds(self) -> Iterator[str]:
        """Compile every build of the whole-step trainer's kernel (``dense_trainer``), if it has
        builds of its own, naming each group as it is ready (``fastnn warmup``)."""
        yield from ()

    # --- arrays --------------------------------------------------------------------------------

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """``x`` as this backend's array (no copy when it already is one of that dtype). Arrays of
        other libraries on this backend's device (PyTorch, JAX, CuPy, ...) come in through
        DLPack, without a copy where the dtype already fits."""
        return self.xp.asarray(_from_dlpack(self.xp, x), dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """``x`` as a NumPy array on the host."""
        return np.asarray(x)

    def empty(self, shape: tuple[int, ...] | int, dtype: Any) -> Any:
        """A C-contiguous, page-aligned uninitialised array (aligned so that kernels' outputs
        never share a 4 KiB page offset pattern with their inputs by accident)."""
        return self._page_aligned(self.xp.empty, shape, dtype)

    def zeros(self, shape: tuple[int, ...] | int, dtype: Any) -> Any:
        """As ``empty``, filled with zeros: allocated zeroed (``calloc``), so that pages nothing
        touches cost nothing (an SGD without momentum never reads its velocity buffer; filling
        it was 27 ms of a 784-1024-1024-10 epoch's 0.56 s on an AMD EPYC, Zen 4)."""
        return self._page_aligned(self.xp.zeros, shape, dtype)

    @staticmethod
    def _page_aligned(allocate: Any, shape: tuple[int, ...] | int, dtype: Any) -> Any:
        """A page-aligned ``shape`` array of ``dtype`` cut from bytes ``allocate`` gives."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize  # (np.prod: ~3 us a call)
        raw = allocate(nbytes + _PAGE, dtype=np.uint8)
        start = (-raw.ctypes.data) % _PAGE
        return raw[start : start + nbytes].view(dtype).reshape(shape)

    def take_rows(self, x: Any, indices: Any, out: Any) -> Any:
        """``out[i] = x[indices[i]]`` (gathers a shuffled mini-batch into a reused buffer)."""
        return self.xp.take(x, indices, axis=0, out=out)

    # --- checks (cheap: attribute reads only, so they stay on in the hot path) --------------------

    def _is_array(self, x: Any) -> bool:
        return isinstance(x, self.xp.ndarray)

    def _operands(self, *values: Any) -> list[Any]:
        """The operands as this backend's arrays: arrays pass as they are, and arrays of other
        libraries (PyTorch, JAX, ...) come in with their own dtype (either way dtypes are then
        checked strictly); anything else (a list, a tuple, a number) is converted to the dtype of
        the call's first floating array, or float64 when there is none. ``None`` stays ``None``."""
        dtype = next((v.dtype for v in values if self._is_array(v) and v.dtype in FLOAT_DTYPES), np.float64)
        return [v if v is None or self._is_array(v) else self._convert(v, None if hasattr(v, "dtype") else dtype)
                for v in values]

    def _convert(self, value: Any, dtype: Any) -> Any:
        try:
            return self.asarray(value, dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"expected an array or a nested sequence of numbers, got {type(value).__name__} "
                            f"({exc})") from None

    def _in_place(self, what: str, **arrays: Any) -> None:
        """Arguments updated in place must be this backend's arrays (a list cannot be updated)."""
        for name, value in arrays.items():
            if not self._is_array(value):
                raise TypeError(f"{what}: {name} is updated in place and must be a {self.name} array "
                                f"({self.xp.__name__}.ndarray), got {type(value).__name__}")

    @staticmethod
    def _float_dtype(*arrays: Any) -> np.dtype:
        dtype = arrays[0].dtype
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"expected float32 or float64 arrays, got {dtype}")
        for other in arrays[1:]:
            if other is not None and other.dtype != dtype:
                raise TypeError(
                    "all floating operands must share one dtype (fastnn never promotes silently); "
                    f"got {', '.join(_dtype_name(a) for a in arrays if a is not None)}"
                )
        return dtype

    def _out(self, out: Any, shape: tuple[int, ...], dtype: np.dtype, what: str) -> Any:
        """``out`` checked (or a new array): this backend's C-contiguous array of ``shape`` and
        ``dtype``, since kernels write through flat views of it."""
        if out is None:
            return self.empty(shape, dtype)
        if not self._is_array(out):
            raise TypeError(f"{what}: out= must be a {self.name} array, got {type(out).__name__}")
        if out.shape != shape or out.dtype != dtype:
            raise ValueError(
                f"{what}: out= must have shape {shape} and dtype {dtype}, got {out.shape} {out.dtype}"
            )
        if not out.flags.c_contiguous:
            raise ValueError(f"{what}: out= must be C-contiguous (kernels write it as one flat block); got a "
                             f"non-contiguous view with strides {out.strides}: pass a contiguous array")
        return out

    @staticmethod
    def _same_shape(what: str, reference: tuple[str, Any], **others: Any) -> None:
        name, array = reference
        for other_name, other in others.items():
            if other.shape != array.shape:
                raise ValueError(f"{what}: {other_name} must have the shape of {name} {array.shape}, "
                                 f"got {other.shape}")

    def _check_labels(self, labels: Any, classes: int, what: str) -> None:
        """Integer labels in ``[0, classes)``: one min and one max (on a device backend that reads
        two numbers back; the loss objects check a whole dataset once, and ``fit`` calls the
        kernels directly)."""
        if labels.size == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ValueError(f"{what}: labels must be integers in [0, {classes}) for {classes} classes, "
                             f"got values from {low} to {high}")

    @staticmethod
    def _activation_table(table: Mapping[str, Callable[..., Any]], name: str) -> Callable[..., Any]:
        try:
            return table[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
            ) from None

    @staticmethod
    def _alpha(name: str, alpha: float | None) -> float | None:
        spec = ACTIVATIONS[name]
        if spec.alpha_name is None:
            return None
        return spec.alpha_default if alpha is None else alpha

    # --- matrix core ---------------------------------------------------------------------------

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b`` with NumPy's ``matmul`` semantics: 1-D operands promoted (and the added axis
        dropped), batch dims broadcast, zero-sized dims allowed. Incompatible shapes raise
        ``ValueError`` naming both."""
        a, b = self._operands(a, b)
        dtype = self._float_dtype(a, b)
        shape = matmul_result_shape(a.shape, b.shape)
        out = None if out is None else self._out(out, shape, dtype, "matmul")
        return self.kernels.matmul(a, b, out)

    def bias_add(self, x: Any, bias: Any, out: Any = None) -> Any:
        """``x (*, n) + bias (n,)``."""
        x, bias = self._operands(x, bias)
        dtype = self._float_dtype(x, bias)
        if bias.ndim != 1 or x.ndim == 0 or x.shape[-1] != bias.shape[0]:
            raise ValueError(f"bias_add: expected x (*, n) and bias (n,), got {x.shape} and {bias.shape}")
        return self.kernels.bias_add(x, bias, self._out(out, x.shape, dtype, "bias_add"))

    def bias_activation(self, z: Any, bias: Any, activation: str = "identity", alpha: float | None = None,
                        out: Any = None) -> tuple[Any, Any]:
        """What follows the GEMM of a linear layer, in one pass where the backend can fuse it:
        ``z (*, n) += bias (n,)`` in place (``bias`` may be ``None``), then ``y = g(z)`` into
        ``out``. Returns ``(z, y)``; ``y is z`` for the identity activation."""
        self._in_place("bias_activation", z=z)
        bias = self._operands(z, bias)[1]
        dtype = self._float_dtype(z, bias)
        if z.ndim == 0 or (bias is not None and (bias.ndim != 1 or bias.shape[0] != z.shape[-1])):
            raise ValueError(f"bias_activation: expected z (*, n) and bias (n,), got {z.shape} and "
                             f"{None if bias is None else bias.shape}")
        if not z.flags.c_contiguous:
            raise ValueError("bias_activation: z is written in place and must be C-contiguous")
        self._activation_table(self.kernels.forward, activation)
        y = z if activation == "identity" else self._out(out, z.shape, dtype, "bias_activation")
        return self.kernels.bias_activation(z, bias, activation, self._alpha(activation, alpha), y)

    # --- activations ---------------------------------------------------------------------------

    def activation(self, name: str, z: Any, alpha: float | None = None, out: Any = None) -> Any:
        """``y = g(z)`` elementwise; ``alpha`` is the activation's parameter (leaky slope, ELU
        alpha), defaulting as in PyTorch."""
        kernel = self._activation_table(self.kernels.forward, name)
        (z,) = self._operands(z)
        dtype = self._float_dtype(z)
        return kernel(z, self._out(out, z.shape, dtype, name), self._alpha(name, alpha))

    def activation_backward(self, name: str, dy: Any, z: Any, y: Any, alpha: float | None = None,
                            out: Any = None) -> Any:
        """Fused ``dz = dy * g'(z)`` in one pass; ``z`` is the cached pre-activation and
        ``y = g(z)`` the cached output (one convention for every activation)."""
        kernel = self._activation_table(self.kernels.backward, name)
        dy, z, y = self._operands(dy, z, y)
        dtype = self._float_dtype(dy, z, y)
        if not (dy.shape == z.shape == y.shape):
            raise ValueError(
                f"{name} backward: dy, z and y must have one shape, got {dy.shape}, {z.shape}, {y.shape}"
            )
        return kernel(dy, z, y, self._out(out, z.shape, dtype, name), self._alpha(name, alpha))

    def softmax(self, z: Any, out: Any = None) -> Any:
        """Softmax over the last axis (max-shifted)."""
        (z,) = self._operands(z)
        dtype = self._float_dtype(z)
        if z.ndim == 0:
            raise ValueError("softmax: expected z of shape (*, classes), got a scalar")
        return self.kernels.softmax(z, self._out(out, z.shape, dtype, "softmax"))

    def softmax_backward(self, dy: Any, y: Any, out: Any = None) -> Any:
        """``dz = y * (dy - sum(dy * y, -1))`` for ``y = softmax(z)``."""
        dy, y = self._operands(dy, y)
        dtype = self._float_dtype(dy, y)
        if dy.shape != y.shape or y.ndim == 0:
            raise ValueError(f"softmax backward: dy {dy.shape} and y {y.shape} must share one shape (*, classes)")
        return self.kernels.softmax_backward(dy, y, self._out(out, y.shape, dtype, "softmax"))

    # --- fused linear layer ----------------------------------------------------------------------

    def linear_forward(self, x: Any, weight: Any, bias: Any, activation: str = "identity",
                       alpha: float | None = None, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        """``z = x @ weight.T + bias`` (one GEMM) then ``y = g(z)`` in one fused pass.

        ``x (*, in)``, ``weight (out, in)``, ``bias (out,)`` or ``None`` -> ``(z, y)``, both
        ``(*, out)``; ``y is z`` for the identity activation."""
        x, weight, bias = self._operands(x, weight, bias)
        dtype = self._float_dtype(x, weight, bias)
        if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
                f"(expected x (*, {weight.shape[-1] if weight.ndim else '?'}))"
            )
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
        self._activation_table(self.kernels.forward, activation)
        shape = (*x.shape[:-1], weight.shape[0])
        z_out, y_out = (None, None) if out is None else out
        z = self._out(z_out, shape, dtype, "linear z")
        y = z if activation == "identity" else self._out(y_out, shape, dtype, "linear y")
        return self.kernels.linear_forward(x, weight, bias, activation, self._alpha(activation, alpha), z, y)

    def linear_backward(self, x: Any, weight: Any, dz: Any, need_dx: bool = True, has_bias: bool = True,
                        out: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any, Any]:
        """Gradients of ``z = x @ weight.T + bias`` given ``dz (*, out)``:
        ``dx = dz @ weight (*, in)``, ``dweight = dz^T x (out, in)``, ``dbias = sum(dz) (out,)``,
        summed over every leading dim. ``dx`` is ``None`` unless ``need_dx``; ``dbias`` is
        ``None`` unless ``has_bias``."""
        x, weight, dz = self._operands(x, weight, dz)
        dtype = self._float_dtype(x, weight, dz)
        if x.ndim == 0 or dz.ndim == 0 or x.shape[:-1] != dz.shape[:-1] \
                or weight.shape != (dz.shape[-1], x.shape[-1]):
            raise ValueError(
                f"linear backward: x {x.shape}, weight {weight.shape} and dz {dz.shape} do not fit "
                "x (*, in), weight (out, in), dz (*, out)"
            )
        dx_out, dw_out, db_out = (None, None, None) if out is None else out
        dx = self._out(dx_out, x.shape, dtype, "linear dx") if need_dx else None
        dweight = self._out(dw_out, weight.shape, dtype, "linear dweight")
        dbias = self._out(db_out, (weight.shape[0],), dtype, "linear dbias") if has_bias else None
        return self.kernels.linear_backward(x, weight, dz, dx, dweight, dbias)

    # --- losses (value, grad) ----------------------------------------------------------------------

    def _loss_operands(self, pred: Any, target: Any, grad: Any, what: str) -> tuple[Any, Any, Any]:
        pred, target = self._operands(pred, target)
        self._float_dtype(pred, target)
        if pred.shape != target.shape:
            raise ValueError(f"{what}: prediction {pred.shape} and target {target.shape} must match")
        return pred, target, self._out(grad, pred.shape, pred.dtype, what)

    def mse(self, pred: Any, target: Any, grad: Any = None) -> tuple[Any, Any]:
        """Mean over all elements of ``(pred - target)^2``; grad ``2 (pred - target) / n``. The sum
        is accumulated in float64 for both dtypes."""
        return self.kernels.mse(*self._loss_operands(pred, target, grad, "mse"))

    def bce(self, prob: Any, target: Any, grad: Any = None) -> tuple[Any, Any]:
        """Binary cross-entropy on probabilities, logs clamped at -100 (PyTorch). A probability
        outside [0, 1] (or NaN) makes the loss and its gradient NaN on every backend (PyTorch
        raises; the ``BCE`` loss object and ``fit`` refuse such inputs before they get here)."""
        return self.kernels.bce(*self._loss_operands(prob, target, grad, "bce"))

    def bce_with_logits(self, logits: Any, target: Any, grad: Any = None) -> tuple[Any, Any]:
        """Binary cross-entropy of ``sigmoid(logits)``, exact for any finite logit;
        grad ``(sigmoid(logits) - target) / n``."""
        return self.kernels.bce_with_logits(*self._loss_operands(logits, target, grad, "bce_with_logits"))

    def softmax_cross_entropy(self, logits: Any, target: Any, grad: Any = None) -> tuple[Any, Any]:
        """Cross-entropy of ``softmax(logits)`` over the last axis, mean over samples.

        ``target``: integer labels of shape ``logits.shape[:-1]`` with values in ``[0, classes)``
        (checked: ``ValueError`` otherwise), or probabilities of ``logits.shape``: then
        ``loss_i = sum_c t_ic (lse_i - z_ic)`` and its gradient ``(sum_c t_ic) softmax_i - t_i``,
        divided by the number of samples, for any non-negative targets (soft, multi-hot or not
        summing to 1)."""
        if not self._is_array(target) and np.asarray(target).dtype.kind in "iu":
            target = self.asarray(np.asarray(target))  # a list of labels stays integer
        if self._is_array(target) and target.dtype.kind in "iu":
            (logits,) = self._operands(logits)
            self._float_dtype(logits)
            if logits.ndim == 0 or target.shape != logits.shape[:-1]:
                raise ValueError(
                    f"cross-entropy: integer labels must have shape {logits.shape[:-1]} for logits "
                    f"{logits.shape}, got {target.shape}"
                )
            self._check_labels(target, logits.shape[-1], "cross-entropy")
            grad = self._out(grad, logits.shape, logits.dtype, "cross-entropy")
        else:
            logits, target, grad = self._loss_operands(logits, target, grad, "cross-entropy")
            if logits.ndim == 0:
                raise ValueError("cross-entropy: expected logits of shape (*, classes), got a scalar")
        return self.kernels.softmax_cross_entropy(logits, target, grad)

    # --- dropout ----------------------------------------------------------------------------------

    def dropout(self, x: Any, p: float, seed: int, step: int, out: Any = None) -> Any:
        """Inverted dropout: ``x * mask / (1 - p)``, each element kept with probability ``1 - p``.
        The mask is a pure function of ``(seed, step, element index)`` (Philox4x32-10), the same
        bits on every backend; the backward of a dropout is this same call on ``dy``."""
        (x,) = self._operands(x)
        dtype = self._float_dtype(x)
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
        for name, value in (("seed", seed), ("step", step)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < 2**64:
                raise ValueError(f"dropout: {name} must be an integer in [0, 2**64), got {value!r}")
        return self.kernels.dropout(x, self._out(out, x.shape, dtype, "dropout"), int(seed), int(step), float(p))

    # --- normalisation ----------------------------------------------------------------------------

    def layer_norm(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5,
                   out: Any = None) -> tuple[Any, Any, Any]:
        """``nn.LayerNorm`` over the last axis of ``x (*, n)``: ``(y, mean, rstd)``, ``y`` of
        ``x``'s shape and the statistics of shape ``x.shape[:-1]`` (what the backward takes)."""
        x, weight, bias = self._operands(x, weight, bias)
        dtype = self._float_dtype(x, weight, bias)
        if x.ndim == 0:
            raise ValueError("layer_norm: expected x of shape (*, n), got a scalar")
        n = x.shape[-1]
        _check_norm_arguments("layer_norm", x, n, weight, bias, eps)
        y = self._out(out, x.shape, dtype, "layer_norm")
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        mean, rstd = self.empty(x.shape[:-1], dtype), self.empty(x.shape[:-1], dtype)
        if x.size == 0:
            return y, mean, rstd
        x2 = x.reshape(rows, n) if x.flags.c_contiguous else self.xp.ascontiguousarray(x).reshape(rows, n)
        self.kernels.layer_norm(x2, weight, bias, float(eps), y.reshape(rows, n), mean.reshape(rows),
                                rstd.reshape(rows))
        return y, mean, rstd

    def layer_norm_backward(self, dy: Any, x: Any, weight: Any, mean: Any, rstd: Any,
                            affine: bool = True) -> tuple[Any, Any, Any]:
        """``(dx, dweight, dbias)`` of ``layer_norm`` given ``dy`` and the forward's statistics;
        the parameter gradients are ``None`` unless ``affine``."""
        dy, x, weight, mean, rstd = self._operands(dy, x, weight, mean, rstd)
        dtype = self._float_dtype(dy, x, weight, mean, rstd)
        if x.ndim == 0 or dy.shape != x.shape or mean.shape != x.shape[:-1] or rstd.shape != x.shape[:-1]:
            raise ValueError(f"layer_norm backward: dy {dy.shape}, x {x.shape}, mean {mean.shape} and rstd "
                             f"{rstd.shape} do not fit dy, x (*, n), mean, rstd (*)")
        n = x.shape[-1]
        if weight is not None and weight.shape != (n,):
            raise ValueError(f"layer_norm backward: weight must have shape ({n},), got {weight.shape}")
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        dx = self.empty(x.shape, dtype)
        dweight = self.zeros((n,), dtype) if affine else None
        dbias = self.zeros((n,), dtype) if affine else None
        if x.size:
            flat = [a if a.flags.c_contiguous else self.xp.ascontiguousarray(a) for a in (dy, x, mean, rstd)]
            self.kernels.layer_norm_backward(flat[0].reshape(rows, n), flat[1].reshape(rows, n), weight,
                                             flat[2].reshape(rows), flat[3].reshape(rows), dx.reshape(rows, n),
                                             dweight, dbias)
        return dx, dweight, dbias

    def batch_norm(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5,
                   out: Any = None) -> tuple[Any, Any, Any, Any]:
        """``nn.BatchNorm1d``'s training forward on ``x (N, C)``, statistics over the batch:
        ``(y, mean, rstd, var)``, the last three of shape ``(C,)`` (``var`` biased; the layer turns
        it into the unbiased running estimate). ``N`` may be 0 (statistics then undefined)."""
        x, weight, bias = self._operands(x, weight, bias)
        dtype = self._float_dtype(x, weight, bias)
        if x.ndim != 2:
            raise ValueError(f"batch_norm: expected x of shape (N, C), got shape {x.shape}")
        n = x.shape[1]
        _check_norm_arguments("batch_norm", x, n, weight, bias, eps)
        y = self._out(out, x.shape, dtype, "batch_norm")
        mean, rstd, var = (self.empty((n,), dtype) for _ in range(3))
        if x.shape[0] and n:
            self.kernels.batch_norm(x if x.flags.c_contiguous else self.xp.ascontiguousarray(x), weight, bias,
                                    float(eps), y, mean, rstd, var)
        return y, mean, rstd, var

    def batch_norm_backward(self, dy: Any, x: Any, weight: Any, mean: Any, rstd: Any,
                            affine: bool = True, need_dx: bool = True) -> tuple[Any, Any, Any]:
        """``(dx, dweight, dbias)`` of ``batch_norm`` (training mode) given ``dy (N, C)`` and the
        forward's statistics, in one fused pass; ``dx`` is None unless ``need_dx``, the parameter
        gradients None unless ``affine``."""
        dy, x, weight, mean, rstd = self._operands(dy, x, weight, mean, rstd)
        dtype = self._float_dtype(dy, x, weight, mean, rstd)
        if x.ndim != 2 or dy.shape != x.shape or mean.shape != x.shape[1:] or rstd.shape != x.shape[1:]:
            raise ValueError(f"batch_norm backward: dy {dy.shape}, x {x.shape}, mean {mean.shape} and rstd "
                             f"{rstd.shape} do not fit dy, x (N, C), mean, rstd (C,)")
        n = x.shape[1]
        if weight is not None and weight.shape != (n,):
            raise ValueError(f"batch_norm backward: weight must have shape ({n},), got {weight.shape}")
        dx = self.empty(x.shape, dtype) if need_dx else None
        dweight = self.zeros((n,), dtype) if affine else None
        dbias = self.zeros((n,), dtype) if affine else None
        if x.shape[0] and n:
            flat = [a if a.flags.c_contiguous else self.xp.ascontiguousarray(a) for a in (dy, x, mean, rstd)]
            self.kernels.batch_norm_backward(*flat[:2], weight, *flat[2:], dx, dweight, dbias)
        return dx, dweight, dbias

    # --- optimizers (in place) ---------------------------------------------------------------------

    def sgd_update(self, param: Any, grad: Any, velocity: Any, scratch: Any, *, lr: float,
                   momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                   first_step: bool = False) -> Any:
        """One ``torch.optim.SGD`` step on ``param`` in place (``velocity``: momentum buffer).
        Every array has ``param``'s shape and dtype."""
        self._in_place("sgd_update", param=param, velocity=velocity, scratch=scratch)
        grad = self._operands(param, grad)[1]
        self._float_dtype(param, grad, velocity, scratch)
        self._same_shape("sgd_update", ("param", param), grad=grad, velocity=velocity, scratch=scratch)
        return self.kernels.sgd(param, grad, velocity, scratch, lr=lr, momentum=momentum,
                                nesterov=nesterov, weight_decay=weight_decay, first_step=first_step)

    def adam_update(self, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, scratch: Any,
                    scratch2: Any, *, step: int, lr: float, beta1: float, beta2: float, eps: float,
                    weight_decay: float = 0.0, decoupled: bool = False) -> Any:
        """One ``torch.optim.Adam`` (or ``AdamW`` when ``decoupled``) step in place; ``step`` is
        the 1-based step count used for bias correction. Every array has ``param``'s shape and
        dtype."""
        self._in_place("adam_update", param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, scratch=scratch,
                       scratch2=scratch2)
        grad = self._operands(param, grad)[1]
        self._float_dtype(param, grad, exp_avg, exp_avg_sq, scratch, scratch2)
        self._same_shape("adam_update", ("param", param), grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                         scratch=scratch, scratch2=scratch2)
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 1:
            raise ValueError(f"adam_update: step is the 1-based step count, got {step!r}")
        return self.kernels.adam(param, grad, exp_avg, exp_avg_sq, scratch, scratch2, step=step,
                                 lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                 weight_decay=weight_decay, decoupled=decoupled)
