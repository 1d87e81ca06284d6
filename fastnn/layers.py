"""Layers: ``Linear`` (with an optional fused activation), activation layers and ``Softmax``.

Protocol shared by every layer:

- ``forward(x) -> y`` caches what backward needs. Inputs are converted to the layer's dtype.
- ``backward(dy, need_input_grad=True) -> dx`` (``None`` when not needed) and *overwrites*
  ``layer.grads`` (no accumulation, so no ``zero_grad``).
- ``params`` / ``grads``: dicts name -> array (empty for parameter-free layers).

The arrays ``forward`` and ``backward`` return are the layer's workspaces, reused by the next call
with the same batch shape; copy them to keep them. ``Network.forward`` and ``predict`` return
fresh arrays.

- ``infer(x) -> y``: the output alone, for inference. It caches nothing (a later ``backward``
  still sees the last ``forward``) and works in buffers of the calling thread's own, so any
  number of threads may call it on one layer at once. Training (``forward``/``backward``,
  ``fit``) uses the layer's single set of workspaces: one thread at a time, and not while
  another thread changes the parameters.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np

from . import activations as _activations
from . import init as _init
from .backends import get_backend
from .backends.base import FLOAT_DTYPES, Backend
from .workspace import Workspace


def as_float_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


class Layer:
    """Base class of every layer; subclasses implement ``forward``, ``backward``, ``config``."""

    kind: ClassVar[str] = "Layer"

    def __init__(self, dtype: Any = np.float32, backend: Backend | str | None = None) -> None:
        from .backends import backend_for

        self.dtype = as_float_dtype(dtype)
        self.backend: Backend = get_backend() if backend is None else backend_for(backend)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        # state that is saved but not trained (BatchNorm's running statistics)
        self.buffers: dict[str, Any] = {}
        self._workspace = Workspace()
        self._per_thread = threading.local()  # inference workspaces, one set per thread
        self.training = True  # Network.train() / eval() switch it; only stochastic layers care

    # True where every output lies in [0, 1] (what BCE needs as its input)
    outputs_probabilities: bool = False
    # config() keys that are run state rather than architecture (a resume restores them)
    state_keys: ClassVar[tuple[str, ...]] = ()

    def at_step(self, step: int) -> None:
        """``fit`` tells every layer the global training step before each batch (a stochastic
        layer keys its randomness on it, so a resumed run draws what the uninterrupted one did)."""

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def infer(self, x: Any) -> Any:
        """The output for ``x`` without caching anything for ``backward``, in this thread's own
        workspace (safe to call from many threads at once). Every fastnn layer overrides it; a
        layer of your own that does not falls back to ``forward`` (correct, but then neither
        thread-safe nor free of side effects on the forward cache)."""
        return self.forward(x)

    def __getstate__(self) -> dict[str, Any]:
        # per-thread workspaces are neither copied nor pickled: a copy starts with its own
        state = self.__dict__.copy()
        del state["_per_thread"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._per_thread = threading.local()

    def _inference_workspace(self) -> Workspace:
        workspace = getattr(self._per_thread, "workspace", None)
        if workspace is None:
            workspace = self._per_thread.workspace = Workspace()
        return workspace

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (parameters excluded), for checkpoints."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: Backend | str | None = None) -> Layer:
        """The inverse of ``config()`` (parameters are loaded separately)."""
        return cls(**config, backend=backend)

    @classmethod
    def parameter_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter a layer built from ``config`` has, without building it
        (a checkpoint's arrays are checked against these before any memory is allocated)."""
        return {}

    @classmethod
    def buffer_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer (saved, not trained) a layer built from ``config`` has."""
        return {}

    def to(self, backend: Backend | str) -> Layer:
        """Move parameters to another backend (in place; returns ``self``)."""
        from .backends import backend_for

        target = backend_for(backend)
        for store in (self.params, self.grads, self.buffers):
            for name, value in store.items():
                store[name] = target.asarray(self.backend.to_numpy(value), value.dtype)
        self.backend = target
        self._workspace = Workspace()
        self._per_thread = threading.local()
        return self

    def _new_pair(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """Output and input-gradient workspaces of a shape-preserving layer."""
        return self.backend.empty(shape, self.dtype), self.backend.empty(shape, self.dtype)

    def _new_output(self, shape: tuple[int, ...]) -> Any:
        """The output workspace of a shape-preserving layer, for ``infer``."""
        return self.backend.empty(shape, self.dtype)

    def _input(self, x: Any) -> Any:
        return self.backend.asarray(x, self.dtype)

    def _check_dy(self, dy: Any, expected_shape: tuple[int, ...]) -> Any:
        dy = self.backend.asarray(dy, self.dtype)
        if dy.shape != expected_shape:
            raise ValueError(
                f"{self!r}.backward: dy must have the forward output's shape {expected_shape}, "
                f"got {dy.shape}"
            )
        return dy

    def _require_forward(self, cached: Any) -> None:
        if cached is None:
            raise RuntimeError(f"{self!r}.backward called before forward")


class Linear(Layer):
    """``y = g(x @ weight.T + bias)``: ``x (*, in)`` -> ``y (*, out)``, PyTorch's ``nn.Linear``
    convention with an optional activation fused into the same pass as the bias-add.

    ``weight (out, in)`` and ``bias (out,)`` are assignable: values are copied into the layer's
    storage after a shape check. ``init`` is one of ``fastnn.init.INITIALIZERS``; ``seed`` (an int
    or a ``numpy.random.Generator``) makes it reproducible.
    """

    kind = "Linear"

    def __init__(self, in_features: int, out_features: int, activation: str | None = None,
                 bias: bool = True, init: str = "default", dtype: Any = np.float32,
                 alpha: float | None = None, seed: int | np.random.Generator | None = None,
                 backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {value!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation, self.alpha = _activations.resolve(activation, alpha)
        self.has_bias = bool(bias)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        weight, bias_values = _init.get(init)(self.in_features, self.out_features, rng)
        self.params["weight"] = self.backend.asarray(weight, self.dtype)
        self.grads["weight"] = self.backend.zeros(weight.shape, self.dtype)
        if self.has_bias:
            self.params["bias"] = self.backend.asarray(bias_values, self.dtype)
            self.grads["bias"] = self.backend.zeros(bias_values.shape, self.dtype)
        self._x = self._slot = None

    def __repr__(self) -> str:
        act = "" if self.activation == "identity" else f", activation={self.activation!r}"
        return f"Linear({self.in_features}, {self.out_features}{act})"

    @property
    def weight(self) -> Any:
        return self.params["weight"]

    @weight.setter
    def weight(self, value: Any) -> None:
        self._assign("weight", value, (self.out_features, self.in_features))

    @property
    def bias(self) -> Any:
        return self.params.get("bias")

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self.has_bias:
            raise ValueError(f"{self!r} was built with bias=False; it has no bias to assign")
        self._assign("bias", value, (self.out_features,))

    def _assign(self, name: str, value: Any, shape: tuple[int, ...]) -> None:
        value = self.backend.asarray(value, self.dtype)
        if value.shape != shape:
            raise ValueError(f"{self!r}.{name} must have shape {shape} (out, in), got {value.shape}")
        self.params[name][...] = value  # in place: the network's flat parameter buffer stays valid

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:-1], self.out_features)

    def _new_slot(self, lead: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
        """Workspaces for one batch shape: ``z``, ``y`` (``z`` itself without an activation),
        ``dz`` and ``dx``."""
        empty, shape = self.backend.empty, (*lead, self.out_features)
        z = empty(shape, self.dtype)
        identity = self.activation == "identity"
        return (z, z if identity else empty(shape, self.dtype), None if identity else empty(shape, self.dtype),
                empty((*lead, self.in_features), self.dtype))

    @property
    def outputs_probabilities(self) -> bool:  # type: ignore[override]
        return self.activation == "sigmoid"

    def _checked_input(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r} expects inputs of shape (*, {self.in_features}), got {x.shape}"
            )
        return x

    def forward(self, x: Any) -> Any:
        x = self._checked_input(x)
        slot = self._workspace.slot(x.shape[:-1], self._new_slot)
        # Shapes and dtypes are settled above and at construction: call the kernel directly.
        self.backend.kernels.linear_forward(x, self.params["weight"], self.params.get("bias"),
                                            self.activation, self.alpha, slot[0], slot[1])
        self._x, self._slot = x, slot
        return slot[1]

    def infer(self, x: Any) -> Any:
        x = self._checked_input(x)
        z, y = self._inference_workspace().slot(x.shape[:-1], self._new_inference_slot)
        return self.backend.kernels.linear_forward(x, self.params["weight"], self.params.get("bias"),
                                                   self.activation, self.alpha, z, y)[1]

    def _new_inference_slot(self, lead: tuple[int, ...]) -> tuple[Any, Any]:
        z = self.backend.empty((*lead, self.out_features), self.dtype)
        return z, z if self.activation == "identity" else self.backend.empty(z.shape, self.dtype)

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._x)
        z, y, dz, dx = self._slot
        dy = self._check_dy(dy, z.shape)
        kernels = self.backend.kernels
        if dz is None:
            dz = dy
        else:
            kernels.backward[self.activation](dy, z, y, dz, self.alpha)
        dx = dx if need_input_grad else None
        kernels.linear_backward(self._x, self.params["weight"], dz, dx, self.grads["weight"],
                                self.grads.get("bias"))
        return dx

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "activation": self.activation, "alpha": self.alpha, "bias": self.has_bias,
                "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: Backend | str | None = None) -> Linear:
        return cls(**config, init="zeros", backend=backend)  # parameters are loaded next

    @classmethod
    def parameter_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        sizes = (config.get("in_features"), config.get("out_features"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
            raise ValueError(f"Linear needs positive integer in_features and out_features, got {sizes}")
        shapes = {"weight": (sizes[1], sizes[0])}
        if config.get("bias", True):
            shapes["bias"] = (sizes[1],)
        return shapes


class Activation(Layer):
    """An elementwise activation as a layer of its own (seed 003's ``ActivationLayer`` style)."""

    kind = "Activation"
    activation_name: ClassVar[str | None] = None

    def __init__(self, name: str | None = None, alpha: float | None = None, dtype: Any = np.float32,
                 backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        self.activation, self.alpha = _activations.resolve(name or self.activation_name, alpha)
        self._z = self._y = None

    def __repr__(self) -> str:
        alpha = "" if self.alpha is None else f"{self.alpha!r}"
        if type(self) is Activation:
            return f"Activation({self.activation!r}{', ' + alpha if alpha else ''})"
        return f"{type(self).__name__}({alpha})"

    @property
    def outputs_probabilities(self) -> bool:  # type: ignore[override]
        return self.activation == "sigmoid"

    def forward(self, x: Any) -> Any:
        z = self._input(x)
        y, self._dz = self._workspace.slot(z.shape, self._new_pair)
        self._z, self._y = z, self.backend.kernels.forward[self.activation](z, y, self.alpha)
        return y

    def infer(self, x: Any) -> Any:
        z = self._input(x)
        y = self._inference_workspace().slot(z.shape, self._new_output)
        return self.backend.kernels.forward[self.activation](z, y, self.alpha)

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._z)
        dy = self._check_dy(dy, self._z.shape)
        return self.backend.kernels.backward[self.activation](dy, self._z, self._y, self._dz, self.alpha)

    def config(self) -> dict[str, Any]:
        return {"name": self.activation, "alpha": self.alpha, "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict[str, Any], backend: Backend | str | None = None) -> Activation:
        layer = Activation(**config, backend=backend)
        named = ACTIVATION_LAYERS.get(layer.activation)
        if named is not None:  # a ReLU() comes back as a ReLU
            layer.__class__ = named
        return layer


def _activation_layer(class_name: str, name: str, doc: str) -> type[Activation]:
    spec = _activations.ACTIVATIONS[name]

    if spec.alpha_name is None:
        def __init__(self, dtype: Any = np.float32, backend: Backend | str | None = None) -> None:
            Activation.__init__(self, name, None, dtype, backend)
    else:
        def __init__(self, alpha: float = spec.alpha_default, dtype: Any = np.float32,
                     backend: Backend | str | None = None, **named: float) -> None:
            # the parameter may also be passed by its PyTorch name (negative_slope=, alpha=)
            if named:
                if set(named) != {spec.alpha_name}:
                    raise TypeError(f"{class_name}() got unexpected keyword arguments {sorted(named)}; "
                                    f"its parameter is {spec.alpha_name!r}")
                alpha = named[spec.alpha_name]
            Activation.__init__(self, name, alpha, dtype, backend)

    return type(class_name, (Activation,), {"__init__": __init__, "__doc__": doc,
                                            "activation_name": name, "__module__": __name__})


Identity = _activation_layer("Identity", "identity", "y = x.")
ReLU = _activation_layer("ReLU", "relu", "y = max(x, 0).")
LeakyReLU = _activation_layer("LeakyReLU", "leaky_relu", "y = x if x > 0 else slope * x; LeakyReLU(slope=0.01).")
Sigmoid = _activation_layer("Sigmoid", "sigmoid", "y = 1 / (1 + exp(-x)), overflow-free.")
Tanh = _activation_layer("Tanh", "tanh", "y = tanh(x).")
GELU = _activation_layer("GELU", "gelu", "y = x * Phi(x) (exact; use Activation('gelu_tanh') for the tanh form).")
SiLU = _activation_layer("SiLU", "silu", "y = x * sigmoid(x).")
Softplus = _activation_layer("Softplus", "softplus", "y = log(1 + exp(x)), overflow-free.")
ELU = _activation_layer("ELU", "elu", "y = x if x > 0 else alpha * (exp(x) - 1).")

ACTIVATION_LAYERS: dict[str, type[Activation]] = {
    cls.activation_name: cls for cls in (Identity, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Softplus, ELU)
}


class Softmax(Layer):
    """Softmax over the last axis. For classification prefer logits with ``CrossEntropy``, which
    fuses softmax and its gradient stably; this layer is for when probabilities are the output."""

    kind = "Softmax"

    def __init__(self, dtype: Any = np.float32, backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        self._y = None

    def __repr__(self) -> str:
        return "Softmax()"

    outputs_probabilities = True

    def _checked_input(self, x: Any) -> Any:
        z = self._input(x)
        if z.ndim == 0:
            raise ValueError("Softmax expects inputs of shape (*, classes), got a scalar")
        return z

    def forward(self, x: Any) -> Any:
        z = self._checked_input(x)
        y, self._dz = self._workspace.slot(z.shape, self._new_pair)
        self._y = self.backend.kernels.softmax(z, y)
        return y

    def infer(self, x: Any) -> Any:
        z = self._checked_input(x)
        return self.backend.kernels.softmax(z, self._inference_workspace().slot(z.shape, self._new_output))

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._y)
        dy = self._check_dy(dy, self._y.shape)
        return self.backend.kernels.softmax_backward(dy, self._y, self._dz)

    def config(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name}


class Dropout(Layer):
    """Inverted dropout, PyTorch's ``nn.Dropout(p)``: while training, each element is zeroed with
    probability ``p`` and the others scaled by ``1 / (1 - p)``; in evaluation mode, and always in
    ``infer`` (``predict``, ``evaluate``), the identity.

    The mask is Philox4x32-10 keyed by ``(seed, step, element)`` (``Backend.dropout``): the same
    seed gives the same masks on the numpy, numba and cupy backends, and ``backward`` regenerates
    the mask instead of storing it. ``step`` is the global training step under ``fit`` (so a
    resumed run draws the masks of the uninterrupted one), else a count of training forwards.
    ``seed=None`` draws one at random; it is saved with the network and restored on resume.
    """

    kind = "Dropout"
    state_keys = ("seed",)

    def __init__(self, p: float = 0.5, seed: int | None = None, dtype: Any = np.float32,
                 backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        if not (isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0):
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise ValueError(f"Dropout: seed must be an integer in [0, 2**64), got {seed!r}")
        self.p, self.seed, self.steps = float(p), int(seed), 0
        self._shape = self._step = None

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"

    def at_step(self, step: int) -> None:
        self.steps = step

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        y, self._dx = self._workspace.slot(x.shape, self._new_pair)
        self._shape = x.shape
        if self.training and self.p > 0:
            self._step = self.steps
            self.steps += 1
            return self.backend.kernels.dropout(x, y, self.seed, self._step, self.p)
        self._step = None
        y[...] = x
        return y

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._shape)
        dy = self._check_dy(dy, self._shape)
        if self._step is None:
            self._dx[...] = dy
            return self._dx
        return self.backend.kernels.dropout(dy, self._dx, self.seed, self._step, self.p)

    def infer(self, x: Any) -> Any:
        return self._input(x)

    def config(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed, "dtype": self.dtype.name}


def _config_size(config: dict[str, Any], key: str, kind: str) -> int:
    """A feature count from a saved config, checked before anything is allocated for it."""
    n = config.get(key)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{kind} needs a positive integer {key}, got {n!r}")
    return n


class LayerNorm(Layer):
    """PyTorch's ``nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True)`` over the
    last dimension: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per row of ``x (*, n)``,
    with the biased variance; ``weight`` (ones) and ``bias`` (zeros) of shape ``(n,)`` live in the
    network's flat parameter buffer. The backward is one fused pass per row
    (``Backend.layer_norm_backward``)."""

    kind = "LayerNorm"

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype: Any = np.float32, backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        if len(shape) != 1 or not isinstance(shape[0], (int, np.integer)) or isinstance(shape[0], bool) \
                or shape[0] < 1:
            raise ValueError(f"LayerNorm normalises the last dimension: normalized_shape must be a positive integer "
                             f"(or a 1-tuple), got {normalized_shape!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"LayerNorm: eps must be a positive number, got {eps!r}")
        self.in_features = self.out_features = int(shape[0])
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)
        if self.elementwise_affine:
            for name, fill in (("weight", 1.0), ("bias", 0.0)):
                self.params[name] = self.backend.asarray(np.full(self.in_features, fill), self.dtype)
                self.grads[name] = self.backend.zeros(self.in_features, self.dtype)
        self._x = self._slot = None

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else ", elementwise_affine=False"
        return f"LayerNorm({self.in_features}{', eps=' + repr(self.eps) if self.eps != 1e-5 else ''}{extra})"

    def _rows(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self!r} expects inputs of shape (*, {self.in_features}), got {x.shape}")
        if not x.flags.c_contiguous:
            x = self.backend.xp.ascontiguousarray(x)
        return x

    def _new_buffers(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
        """Output, input gradient, and the rows' mean and rstd."""
        empty = self.backend.empty
        return (empty(shape, self.dtype), empty(shape, self.dtype), empty(shape[:-1], self.dtype),
                empty(shape[:-1], self.dtype))

    def _normalise(self, x: Any, buffers: tuple[Any, Any, Any, Any]) -> Any:
        y, _, mean, rstd = buffers
        rows = int(np.prod(x.shape[:-1], dtype=np.int64))
        if rows:
            self.backend.kernels.layer_norm(x.reshape(rows, -1), self.params.get("weight"), self.params.get("bias"),
                                            self.eps, y.reshape(rows, -1), mean.reshape(rows), rstd.reshape(rows))
        return y

    def forward(self, x: Any) -> Any:
        x = self._rows(x)
        self._slot = self._workspace.slot(x.shape, self._new_buffers)
        self._x = x
        return self._normalise(x, self._slot)

    def infer(self, x: Any) -> Any:
        x = self._rows(x)
        return self._normalise(x, self._inference_workspace().slot(x.shape, self._new_buffers))

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._x)
        _, dx, mean, rstd = self._slot
        dy = self._check_dy(dy, self._x.shape)
        if not dy.flags.c_contiguous:
            dy = self.backend.xp.ascontiguousarray(dy)
        rows = int(np.prod(self._x.shape[:-1], dtype=np.int64))
        n = self.in_features
        if rows:
            self.backend.kernels.layer_norm_backward(
                dy.reshape(rows, n), self._x.reshape(rows, n), self.params.get("weight"), mean.reshape(rows),
                rstd.reshape(rows), dx.reshape(rows, n) if need_input_grad else None, self.grads.get("weight"),
                self.grads.get("bias"))
        else:
            for grad in self.grads.values():
                grad[...] = 0
        return dx if need_input_grad else None

    def config(self) -> dict[str, Any]:
        return {"normalized_shape": self.in_features, "eps": self.eps, "elementwise_affine": self.elementwise_affine,
                "dtype": self.dtype.name}

    @classmethod
    def parameter_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        n = _config_size(config, "normalized_shape", cls.kind)
        return {"weight": (n,), "bias": (n,)} if config.get("elementwise_affine", True) else {}


class BatchNorm1d(Layer):
    """PyTorch's ``nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)`` on ``x (N, C)``.

    Training: each feature normalised by the batch's mean and biased variance, then ``* weight +
    bias``, by the backends' batch-norm kernel (one fused pass back: ``Backend.batch_norm``); the
    running estimates move by ``momentum`` towards the batch mean and the *unbiased* variance, as
    PyTorch's do, and ``num_batches_tracked`` counts. Evaluation (``eval()``, and always in
    ``infer``: ``predict``, ``evaluate``): the running estimates, where tracked. The running
    statistics are buffers: saved with the network and in checkpoints, in ``state_dict`` under
    PyTorch's names. A batch of one sample cannot be normalised in training (``ValueError``, as in
    PyTorch). The whole-step Numba trainer does not take it (the per-layer path does)."""

    kind = "BatchNorm1d"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = np.float32,
                 backend: Backend | str | None = None) -> None:
        super().__init__(dtype, backend)
        if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"BatchNorm1d: num_features must be a positive integer, got {num_features!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"BatchNorm1d: eps must be a positive number, got {eps!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm1d: momentum must be a number in [0, 1], got {momentum!r}")
        self.in_features = self.out_features = int(num_features)
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        n = self.in_features
        if self.affine:
            for name, fill in (("weight", 1.0), ("bias", 0.0)):
                self.params[name] = self.backend.asarray(np.full(n, fill), self.dtype)
                self.grads[name] = self.backend.zeros(n, self.dtype)
        if self.track_running_stats:
            self.buffers = {"running_mean": self.backend.asarray(np.zeros(n), self.dtype),
                            "running_var": self.backend.asarray(np.ones(n), self.dtype),
                            "num_batches_tracked": self.backend.asarray(np.zeros((), np.int64))}
        self._cache: tuple[Any, ...] | None = None

    def __repr__(self) -> str:
        return f"BatchNorm1d({self.in_features})"

    def _checked(self, x: Any) -> Any:
        x = self._input(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_features}), got {x.shape}")
        return x

    def _affine(self, xhat: Any) -> Any:
        if not self.affine:
            return xhat
        return xhat * self.params["weight"] + self.params["bias"]

    def _running(self, x: Any) -> tuple[Any, Any]:
        xp = self.backend.xp
        rstd = (1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)).astype(self.dtype)
        return (x - self.buffers["running_mean"]) * rstd, rstd

    def _new_slot(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any, Any, Any]:
        """Per batch shape: the output, the input gradient, and the batch's mean, rstd, var."""
        empty, n = self.backend.empty, shape[1]
        return empty(shape, self.dtype), empty(shape, self.dtype), *(empty(n, self.dtype) for _ in range(3))

    def forward(self, x: Any) -> Any:
        x = self._checked(x)
        if self.training or not self.track_running_stats:
            if self.training and x.shape[0] < 2:
                raise ValueError(f"{self!r}: expected more than 1 sample per feature when training, got input "
                                 f"of shape {x.shape}")
            x = x if x.flags.c_contiguous else self.backend.xp.ascontiguousarray(x)
            y, dx, mean, rstd, var = self._workspace.slot(x.shape, self._new_slot)
            self.backend.kernels.batch_norm(x, self.params.get("weight"), self.params.get("bias"), self.eps, y,
                                            mean, rstd, var)
            if self.training and self.track_running_stats:
                self._update_running(x.shape[0], mean, var)
            self._cache = ("batch", x, mean, rstd, dx)
            return y
        xhat, rstd = self._running(x)
        self._cache = ("running", xhat, rstd)
        return self._affine(xhat)

    def _update_running(self, n: int, mean: Any, biased_variance: Any) -> None:
        """PyTorch's update: running = (1 - momentum) running + momentum stat, with the unbiased
        variance (the batch's biased one, computed in float64 by the kernel, times n / (n - 1))."""
        m = self.momentum
        variance = biased_variance * (n / (n - 1))
        self.buffers["running_mean"][...] = (1 - m) * self.buffers["running_mean"] + m * mean
        self.buffers["running_var"][...] = (1 - m) * self.buffers["running_var"] + m * variance
        self.buffers["num_batches_tracked"][...] = self.buffers["num_batches_tracked"] + 1

    def infer(self, x: Any) -> Any:
        x = self._checked(x)
        if self.track_running_stats:
            return self._affine(self._running(x)[0])
        weight, bias = self.params.get("weight"), self.params.get("bias")
        stats = [self.backend.empty(self.in_features, self.dtype) for _ in range(3)]
        return self.backend.kernels.batch_norm(self.backend.xp.ascontiguousarray(x), weight, bias, self.eps,
                                               self.backend.empty(x.shape, self.dtype), *stats)

    def backward(self, dy: Any, need_input_grad: bool = True) -> Any:
        self._require_forward(self._cache)
        kind, first = self._cache[0], self._cache[1]
        dy = self._check_dy(dy, first.shape)
        if kind == "running":  # the statistics are constants here
            xhat, rstd = first, self._cache[2]
            if self.affine:
                self.grads["weight"][...] = (dy * xhat).sum(axis=0)
                self.grads["bias"][...] = dy.sum(axis=0)
            g = dy * self.params["weight"] if self.affine else dy
            return g * rstd if need_input_grad else None
        _, x, mean, rstd, dx = self._cache
        dy = dy if dy.flags.c_contiguous else self.backend.xp.ascontiguousarray(dy)
        dx = dx if need_input_grad else None
        # one fused pass: dweight, dbias (straight into the flat gradient buffer) and dx
        self.backend.kernels.batch_norm_backward(dy, x, self.params.get("weight"), mean, rstd, dx,
                                                 self.grads.get("weight"), self.grads.get("bias"))
        return dx

    def config(self) -> dict[str, Any]:
        return {"num_features": self.in_features, "eps": self.eps, "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats, "dtype": self.dtype.name}

    @classmethod
    def parameter_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        n = _config_size(config, "num_features", cls.kind)
        return {"weight": (n,), "bias": (n,)} if config.get("affine", True) else {}

    @classmethod
    def buffer_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        n = _config_size(config, "num_features", cls.kind)
        if not config.get("track_running_stats", True):
            return {}
        return {"running_mean": (n,), "running_var": (n,), "num_batches_tracked": ()}


LAYER_KINDS: dict[str, type[Layer]] = {cls.kind: cls for cls in (Linear, Activation, Softmax, Dropout, LayerNorm,
                                                                  BatchNorm1d)}


def layer_from_config(kind: str, config: dict[str, Any], backend: Backend | str | None = None) -> Layer:
    """Rebuild a layer from ``(kind, config)`` as written by ``Network.save``."""
    cls = LAYER_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {sorted(LAYER_KINDS)}")
    return cls.from_config(config, backend)
