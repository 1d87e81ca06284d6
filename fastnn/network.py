"""``Network``: a sequence of layers with one flat parameter buffer, trained by ``fit``."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import checkpoint, training
from .backends import backend_for, get_backend
from .backends.base import Backend
from .data_parallel import MESSAGE_SLOTS
from .layers import Layer
from .losses import Loss

_ALIGN = 16  # parameter views start on 64-byte boundaries (16 float32s) in the flat buffer


class Network:
    """Layers applied in order: ``y = layers[-1](...layers[0](x))``.

    Every parameter lives in one flat buffer (and every gradient in another) that the layers'
    ``params``/``grads`` entries view into, so an optimizer step is one fused update. Arrays
    returned by ``forward``/``predict`` are fresh; the layers' intermediate arrays are reused
    workspaces.

    Threads: ``predict`` and ``evaluate`` may run on one network from any number of threads at
    once (each thread computes in workspaces of its own, and neither touches what ``backward``
    needs). ``forward``/``backward`` and ``fit`` train: one thread at a time, with no thread
    predicting while another changes the parameters; a second concurrent ``fit`` on one
    network raises ``RuntimeError``.
    """

    def __init__(self, layers: Iterable[Layer] | None = None) -> None:
        self.layers: list[Layer] = []
        self._flat: tuple[Any, Any] | None = None
        self._message: Any = None  # the flat gradients and MESSAGE_SLOTS more (``gradient_message``)
        self._offsets: dict[tuple[int, str], int] = {}
        self.loss: Loss | None = None  # the loss of the last ``fit``, used by ``evaluate``
        self._training = threading.Lock()  # held by ``fit``: one training run at a time
        for layer in layers or ():
            self.add(layer)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_training"]  # a copy (copy.deepcopy, pickle) is not in training
        # Copying arrays one by one does not keep views views: the copy's layers would hold
        # parameters apart from its flat buffer, and training the copy would not change them.
        # The copy packs its own flat buffers from the layers' values when first asked.
        state["_flat"] = state["_message"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._training = threading.Lock()

    # --- structure -----------------------------------------------------------------------------

    def add(self, layer: Layer) -> Network:
        """Append a layer (its dtype and backend must match the network's); returns ``self``."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Network.add expects a fastnn Layer, got {type(layer).__name__}")
        if self.layers:
            if layer.dtype != self.dtype:
                raise TypeError(f"{layer!r} has dtype {layer.dtype} but the network is {self.dtype}")
            if layer.backend is not self.backend:
                raise ValueError(f"{layer!r} lives on backend {layer.backend.name!r} but the network "
                                 f"on {self.backend.name!r}; use layer.to({self.backend.name!r})")
            features = self._features_after(len(self.layers))
            needed = getattr(layer, "in_features", None)
            if features is not None and needed is not None and features != needed:
                raise ValueError(f"{layer!r} expects {needed} input features but the previous layers "
                                 f"produce {features}")
        self.layers.append(layer)
        self._flat = None
        return self

    def _features_after(self, count: int) -> int | None:
        features = None
        for layer in self.layers[:count]:
            features = getattr(layer, "out_features", features)
        return features

    @property
    def backend(self) -> Backend:
        return self.layers[0].backend if self.layers else get_backend()

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].dtype if self.layers else np.dtype(np.float32)

    @property
    def in_features(self) -> int | None:
        return next((layer.in_features for layer in self.layers if hasattr(layer, "in_features")), None)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def to(self, backend: Backend | str) -> Network:
        """Move every layer to another backend (in place; returns ``self``)."""
        target = backend_for(backend)
        for layer in self.layers:
            layer.to(target)
        self._flat = None
        return self

    # --- parameters -----------------------------------------------------------------------------

    def named_parameters(self) -> dict[str, Any]:
        """``"{layer index}.{name}" -> array`` for every parameter, in layer order."""
        self.flat_parameters()
        return {f"{i}.{name}": value for i, layer in enumerate(self.layers)
                for name, value in layer.params.items()}

    def parameters(self) -> list[Any]:
        """Every parameter array (views into the flat buffer), in layer order."""
        return list(self.named_parameters().values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter as a host NumPy copy under PyTorch's key names (``"0.weight"``,
        ``"0.bias"``, ``"2.weight"``, ...: the layer's index in the network, then the name), so a
        network built layer for layer like a ``torch.nn.Sequential`` exchanges weights with it."""
        return {key: np.array(self.backend.to_numpy(value), copy=True) for key, value in self._named_state().items()}

    def _named_state(self) -> dict[str, Any]:
        """Parameters then buffers of each layer, in PyTorch's order and names."""
        self.flat_parameters()
        return {f"{i}.{name}": value for i, layer in enumerate(self.layers)
                for name, value in (*layer.params.items(), *layer.buffers.items())}

    def named_buffers(self) -> dict[str, Any]:
        """``"{layer index}.{name}" -> array`` for every buffer (state saved but not trained, such
        as BatchNorm's running statistics), in layer order."""
        return {f"{i}.{name}": value for i, layer in enumerate(self.layers) for name, value in layer.buffers.items()}

    def _copy_buffers(self) -> dict[str, Any]:
        return {key: value.copy() for key, value in self.named_buffers().items()}

    def _restore_buffers(self, saved: dict[str, Any]) -> None:
        for key, value in self.named_buffers().items():
            value[...] = saved[key]

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy parameters in from ``state`` (``state_dict()``'s form; values may be NumPy, CuPy
        or PyTorch arrays, converted to the network's dtype). Every key is checked before anything
        is copied: a missing or unexpected key (with ``strict``) or a wrong shape raises
        ``ValueError`` naming it, and the network is left unchanged."""
        mine = self._named_state()
        missing = [key for key in mine if key not in state]
        unexpected = [key for key in state if key not in mine]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}; this network "
                             f"has {list(mine)}")
        values = {}
        for key in mine:
            if key not in state:
                continue
            value = state[key]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a PyTorch tensor, on any device
                value = value.detach().cpu().numpy()
            value = self.backend.asarray(value, mine[key].dtype)
            if value.shape != mine[key].shape:
                raise ValueError(f"load_state_dict: {key!r} has shape {tuple(value.shape)}, this network's "
                                 f"{tuple(mine[key].shape)}")
            values[key] = value
        for key, value in values.items():
            mine[key][...] = value

    def flat_parameters(self) -> tuple[Any, Any]:
        """``(params, grads)``: the two flat buffers every layer's parameters and gradients view."""
        if self._flat is None:
            self._flat = self._pack()
        return self._flat

    def gradient_message(self) -> Any:
        """The flat gradients followed by ``MESSAGE_SLOTS`` more elements: what data-parallel
        training sums over its ranks once a step (``fastnn.data_parallel``)."""
        self.flat_parameters()
        return self._message

    def parameter_offsets(self) -> dict[tuple[int, str], int]:
        """``{(layer index, parameter name): offset}`` of each parameter in the flat buffers."""
        self.flat_parameters()
        return dict(self._offsets)

    def _pack(self) -> tuple[Any, Any]:
        slots, total = [], 0
        self._offsets = {}
        for index, layer in enumerate(self.layers):
            for name, value in layer.params.items():
                slots.append((layer, name, total, value.shape))
                self._offsets[index, name] = total
                total += -(-value.size // _ALIGN) * _ALIGN
        flat_params = self.backend.zeros(total, self.dtype)
        # the gradients, then a few slots that data-parallel training sends in the same message
        self._message = self.backend.zeros(total + MESSAGE_SLOTS, self.dtype)
        flat_grads = self._message[:total]
        for layer, name, offset, shape in slots:
            size = int(np.prod(shape, dtype=np.int64))
            view = flat_params[offset : offset + size].reshape(shape)
            view[...] = layer.params[name]
            layer.params[name] = view
            layer.grads[name] = flat_grads[offset : offset + size].reshape(shape)
        return flat_params, flat_grads

    def parameter_count(self) -> int:
        return sum(int(value.size) for layer in self.layers for value in layer.params.values())

    # --- forward / backward -----------------------------------------------------------------------

    def check_input(self, x: Any, what: str = "input") -> Any:
        """``x`` as a backend array of the network's dtype with the right feature count."""
        if not self.layers:
            raise ValueError("the network has no layers; add some with Network.add")
        x = self.backend.asarray(x, self.dtype)
        features = self.in_features
        if x.ndim == 0 or (features is not None and x.shape[-1] != features):
            raise ValueError(f"the network expects {what} of shape (*, {features}) ({features} features), "
                             f"got {what} of shape {x.shape}")
        return x

    def _forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    @property
    def training(self) -> bool:
        """True in training mode (the default), False after ``eval()``."""
        return all(layer.training for layer in self.layers) if self.layers else True

    def train(self, mode: bool = True) -> Network:
        """Training mode (``mode=False``: evaluation mode) for every layer; returns ``self``.
        ``fit`` trains in training mode and restores the mode it found; ``predict`` and
        ``evaluate`` always compute in evaluation mode (``Layer.infer``)."""
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self) -> Network:
        """Evaluation mode: dropout is the identity in ``forward`` too."""
        return self.train(False)

    def _infer(self, x: Any) -> Any:
        """The output for a checked ``x``, caching nothing, in this thread's workspaces."""
        for layer in self.layers:
            x = layer.infer(x)
        return x

    def _backward(self, dy: Any, need_input_grad: bool) -> Any:
        last = len(self.layers) - 1
        for index in range(last, -1, -1):
            dy = self.layers[index].backward(dy, need_input_grad or index > 0)
        return dy

    def forward(self, x: Any) -> Any:
        """The network's output for ``x (*, in)`` (a fresh array); caches for ``backward``."""
        return self.backend.xp.array(self._forward(self.check_input(x)), copy=True)

    __call__ = forward

    def backward(self, dy: Any) -> Any:
        """Backpropagate ``dy`` (the gradient of a scalar w.r.t. the last output): fills every
        layer's ``grads`` and returns ``dx`` for the input of the last ``forward``."""
        self.flat_parameters()
        return self._backward(dy, need_input_grad=True)

    def predict(self, X: Any, batch_size: int = 1024) -> Any:
        """Outputs for ``X (N, ..., in)`` computed ``batch_size`` samples at a time, as a fresh
        array. Thread-safe, and leaves the state ``backward`` uses as the last ``forward`` left it."""
        X = self.check_input(X, "X")
        if X.ndim == 1:
            return self.backend.xp.array(self._infer(X), copy=True)
        training.check_batch_size(batch_size)
        out = self.backend.empty(self.output_shape(X.shape), self.dtype)
        for start in range(0, X.shape[0], batch_size):
            out[start : start + batch_size] = self._infer(X[start : start + batch_size])
        return out

    # --- training ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, loss: str | Loss, optimizer: Any = None, epochs: int = 10,
            batch_size: int = 32, shuffle: bool = True, seed: int | None = None,
            validation_data: tuple[Any, Any] | None = None, progress: bool = True,
            metrics: bool | None = None, checkpoint: str | None = None, checkpoint_every: int = 1,
            resume: str | None = None, on_epoch: Any = None, schedule: Any = None, early_stopping: Any = None,
            clip_grad_norm: float | None = None, distributed: Any = False) -> training.History:
        """Train with mini-batches; see ``fastnn.training.fit`` for every argument (NaN guard,
        checkpoints and resume, Ctrl-C, schedules, early stopping, gradient clipping, data-parallel
        training on MPI with ``distributed=True``)."""
        return training.fit(self, X, y, loss, optimizer=optimizer, epochs=epochs,
                            batch_size=batch_size, shuffle=shuffle, seed=seed,
                            validation_data=validation_data, progress=progress, metrics=metrics,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                            on_epoch=on_epoch, schedule=schedule, early_stopping=early_stopping,
                            clip_grad_norm=clip_grad_norm, distributed=distributed)

    def evaluate(self, X: Any, y: Any, loss: str | Loss | None = None,
                 batch_size: int = 1024) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` over ``(X, y)`` (accuracy for classifiers only)."""
        return training.evaluate(self, X, y, loss, batch_size)

    # --- persistence and display --------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write an ``.npz`` checkpoint atomically (temporary file + rename)."""
        checkpoint.save(self, path)

    @classmethod
    def load(cls, path: str, backend: Backend | str | None = None) -> Network:
        """Rebuild a network from ``save``'s file on ``backend`` (default: the current one);
        a truncated, foreign or tampered file raises ``ValueError``."""
        return checkpoint.load(cls, path, backend)

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of layers, output shapes and parameter counts."""
        shape: tuple[Any, ...] = input_shape or ("N", self.in_features)
        rows = [("#", "layer", "output shape", "params")]
        for index, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            count = sum(int(v.size) for v in layer.params.values())
            rows.append((str(index), repr(layer), "(" + ", ".join(map(str, shape)) + ")", f"{count:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                           enumerate(zip(row, widths))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.parameter_count():,}   dtype: {self.dtype}   "
                     f"backend: {self.backend.name}   mode: {'train' if self.training else 'eval'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "Network([" + ", ".join(repr(layer) for layer in self.layers) + "])"
