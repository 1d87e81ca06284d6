"""Loss objects: ``loss(pred, target) -> (value, grad)`` with PyTorch's ``mean`` reductions.

- ``MSE``: mean over all elements of ``(pred - target)^2``.
- ``BCE``: binary cross-entropy on probabilities in [0, 1], mean over all elements.
- ``BCEWithLogits``: the same on logits, exact for any finite logit (prefer it to Sigmoid + BCE).
- ``CrossEntropy``: softmax cross-entropy on logits ``(*, classes)`` with integer labels ``(*)``
  or probability targets ``(*, classes)``, mean over samples.

``value`` is a 0-d array (``float(value)`` for a Python number); ``grad`` is ``dvalue/dpred``.
Calling a loss checks its arguments; ``fit`` checks the whole target array once and then calls
``compute`` per batch, which checks nothing and writes into a reused gradient buffer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .backends import get_backend
from .backends.base import Backend


class Loss:
    """Base class: subclasses name their backend kernel and how targets are checked."""

    name: ClassVar[str]
    kernel: ClassVar[str]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __call__(self, pred: Any, target: Any) -> tuple[Any, Any]:
        backend = get_backend()
        pred = backend.asarray(pred)
        if pred.dtype.kind != "f":
            pred = backend.asarray(pred, np.float64)
        target = self.check_target(backend, pred.shape, pred.dtype, target)
        self.check_pred(backend, pred)
        return getattr(backend, self.kernel)(pred, target)  # the checked entry point

    def compute(self, backend: Backend, pred: Any, target: Any, grad: Any = None) -> tuple[Any, Any]:
        """Value and gradient straight from the backend's kernel, no checks: ``target`` has
        passed ``check_target`` and ``grad`` (if given) is a buffer of ``pred``'s shape."""
        if grad is None:
            grad = backend.empty(pred.shape, pred.dtype)
        return getattr(backend.kernels, self.kernel)(pred, target, grad)

    def check_pred(self, backend: Backend, pred: Any) -> None:
        """Raise if ``pred`` is outside the loss's domain (only BCE has one)."""

    def check_target(self, backend: Backend, pred_shape: tuple[int, ...], dtype: Any, target: Any) -> Any:
        """``target`` converted for the kernel, or a ``ValueError`` that says what was expected."""
        target = backend.asarray(target, dtype)
        if target.shape != tuple(pred_shape):
            if len(pred_shape) >= 1 and pred_shape[-1] == 1 and target.shape == tuple(pred_shape[:-1]):
                target = target.reshape(pred_shape)  # (N,) targets for a (N, 1) output
            else:
                raise ValueError(
                    f"{self!r}: target shape {target.shape} does not match prediction shape {tuple(pred_shape)}"
                )
        _check_finite(backend, target, f"{self!r} target")
        return target

    def correct(self, xp: Any, pred: Any, target: Any) -> Any | None:
        """Correctly classified samples in a batch, or ``None`` if the loss and output do not
        make a classifier. A sample with several positions (``pred (N, P, classes)``) counts as
        the fraction of its positions that are right, so that summed over batches and divided
        by the number of samples this is an accuracy in [0, 1]."""
        return None

    def check_network(self, network: Any) -> None:
        """Raise if ``network``'s outputs cannot be this loss's input (only BCE has a domain)."""


def _per_sample(count: Any, pred: Any, positions_from: int) -> Any:
    """``count`` of correct positions in units of samples: divided by the positions a sample of
    ``pred`` has (the product of ``pred.shape[1:positions_from]``)."""
    positions = int(np.prod(pred.shape[1:positions_from], dtype=np.int64)) if pred.ndim > 1 else 1
    return count if positions == 1 else count / positions


def _check_finite(backend: Backend, values: Any, what: str) -> None:
    if values.dtype.kind == "f" and not bool(backend.xp.isfinite(values).all()):
        raise ValueError(f"{what} contains NaN or infinite values")


def _argmax_correct(xp: Any, pred: Any, target: Any) -> Any | None:
    """Positions whose largest output is the target's largest entry (one-hot or probability
    targets); None for fewer than two outputs, where there is no class to pick."""
    if pred.ndim == 0 or pred.shape[-1] < 2:
        return None
    return _per_sample(xp.count_nonzero(xp.argmax(pred, axis=-1) == xp.argmax(target, axis=-1)), pred, -1)


class MSE(Loss):
    name = "mse"
    kernel = "mse"

    def correct(self, xp: Any, pred: Any, target: Any) -> Any | None:
        return _argmax_correct(xp, pred, target)  # one-hot targets, as in seed 003


class _Binary(Loss):
    threshold: ClassVar[float]

    def check_target(self, backend: Backend, pred_shape: tuple[int, ...], dtype: Any, target: Any) -> Any:
        target = super().check_target(backend, pred_shape, dtype, target)
        if target.size and not bool(((target >= 0) & (target <= 1)).all()):
            raise ValueError(f"{self!r}: targets must lie in [0, 1], got values from "
                             f"{float(target.min())} to {float(target.max())}")
        return target

    def correct(self, xp: Any, pred: Any, target: Any) -> Any | None:
        # every output is a binary decision: a sample's share of right ones
        return _per_sample(xp.count_nonzero((pred > self.threshold) == (target > 0.5)), pred, pred.ndim)


class BCE(_Binary):
    name = "bce"
    kernel = "bce"
    threshold = 0.5

    def check_pred(self, backend: Backend, pred: Any) -> None:
        if pred.size and not bool(((pred >= 0) & (pred <= 1)).all()):
            raise ValueError(f"BCE() expects probabilities in [0, 1]; got values from "
                             f"{float(pred.min())} to {float(pred.max())} (use BCEWithLogits for logits)")

    def check_network(self, network: Any) -> None:
        """The last layer must produce probabilities (a sigmoid or a softmax): any other output
        can leave [0, 1] during training, where the loss is undefined (NaN)."""
        last = network.layers[-1] if network.layers else None
        if not getattr(last, "outputs_probabilities", False):
            raise ValueError(f"BCE() expects probabilities in [0, 1], but the network ends in {last!r}, whose "
                             "outputs are not confined to [0, 1]: end it in a sigmoid, or train its logits "
                             "with loss='bce_with_logits' (exact, and what PyTorch recommends)")


class BCEWithLogits(_Binary):
    name = "bce_with_logits"
    kernel = "bce_with_logits"
    threshold = 0.0


class CrossEntropy(Loss):
    name = "cross_entropy"
    kernel = "softmax_cross_entropy"

    def check_target(self, backend: Backend, pred_shape: tuple[int, ...], dtype: Any, target: Any) -> Any:
        if len(pred_shape) == 0:
            raise ValueError("CrossEntropy() expects logits of shape (*, classes), got a scalar")
        raw = np.asarray(backend.to_numpy(backend.asarray(target)))
        if raw.dtype.kind in "iub":
            classes = pred_shape[-1]
            if raw.shape != tuple(pred_shape[:-1]):
                raise ValueError(f"CrossEntropy(): integer labels must have shape {tuple(pred_shape[:-1])} "
                                 f"for logits {tuple(pred_shape)}, got {raw.shape}")
            if raw.size and (raw.min() < 0 or raw.max() >= classes):
                raise ValueError(f"CrossEntropy(): labels must be integers in [0, {classes}), got values "
                                 f"from {raw.min()} to {raw.max()}")
            return backend.asarray(raw, np.intp)
        if raw.dtype.kind == "f" and raw.shape == tuple(pred_shape[:-1]):
            raise ValueError(f"CrossEntropy(): class labels must be integers, got {raw.dtype} "
                             "(cast them, or pass one-hot/probability targets of the logits' shape)")
        return super().check_target(backend, pred_shape, dtype, target)

    def correct(self, xp: Any, pred: Any, target: Any) -> Any | None:
        if target.dtype.kind in "iu":
            return _per_sample(xp.count_nonzero(xp.argmax(pred, axis=-1) == target), pred, -1)
        return _argmax_correct(xp, pred, target)


LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in (MSE, BCE, BCEWithLogits, CrossEntropy)}


def get(loss: str | Loss) -> Loss:
    """A loss object from a name in ``LOSSES`` or a ``Loss`` instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    cls = LOSSES.get(loss) if isinstance(loss, str) else None
    if cls is None:
        raise ValueError(f"unknown loss {loss!r}; expected a Loss or one of {sorted(LOSSES)}")
    return cls()
