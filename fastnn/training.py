"""The mini-batch training loop behind ``Network.fit``, and ``evaluate``.

Everything that can be checked is checked once, before the first step: shapes, dtypes, the
feature count, non-finite inputs, labels out of range. The loop itself gathers each batch into
reused buffers, runs forward, the fused loss+grad, backward and one fused optimizer update, and
keeps per-batch losses on the backend so it never waits on a device until the epoch ends.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import losses as _losses
from .optimizers import SGD
from .workspace import Workspace


@dataclass
class History:
    """Per-epoch records: ``history.epochs[i]`` is a dict with ``loss``, ``samples_per_s``,
    ``seconds`` and, where they apply, ``accuracy``, ``val_loss``, ``val_accuracy``.
    ``history["loss"]`` is the list of one metric over the epochs."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, metric: str) -> list[float]:
        if not self.epochs or metric not in self.epochs[0]:
            known = sorted(self.epochs[0]) if self.epochs else []
            raise KeyError(f"no metric {metric!r} in this history; it has {known}")
        return [epoch[metric] for epoch in self.epochs]

    @property
    def history(self) -> dict[str, list[float]]:
        return {metric: self[metric] for metric in (self.epochs[0] if self.epochs else {})}

    def __len__(self) -> int:
        return len(self.epochs)


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_finite(network: Any, X: Any, what: str) -> None:
    xp = network.backend.xp
    if not bool(xp.isfinite(X).all()):
        bad = int(xp.argmax((~xp.isfinite(X.reshape(X.shape[0], -1))).any(axis=1)))
        raise ValueError(f"{what} contains NaN or infinite values (first in sample {bad})")


def prepare(network: Any, X: Any, y: Any, loss: _losses.Loss, what: str = "X") -> tuple[Any, Any]:
    """Check and convert one dataset: ``X (N, ..., in)`` and its targets for ``loss``."""
    X = network.check_input(X, what)
    if X.ndim < 2:
        raise ValueError(f"{what} must have a leading sample axis, shape (N, {network.in_features}); "
                         f"got shape {X.shape}")
    n_targets = len(y) if hasattr(y, "__len__") else None
    if n_targets != X.shape[0]:
        raise ValueError(f"{what} has {X.shape[0]} samples but its targets have "
                         f"{n_targets if n_targets is not None else 'no length'}")
    _check_finite(network, X, what)
    target = loss.check_target(network.backend, network.output_shape(X.shape), network.dtype, y)
    return X, target


def _use_progress_bar(progress: bool) -> bool:
    if not progress or not sys.stderr.isatty():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def fit(network: Any, X: Any, y: Any, loss: Any, optimizer: Any = None, epochs: int = 10,
        batch_size: int = 32, shuffle: bool = True, seed: int | None = None,
        validation_data: tuple[Any, Any] | None = None, progress: bool = True,
        metrics: bool | None = None) -> History:
    """Train ``network`` on ``X (N, ..., in)`` and targets ``y`` for ``epochs`` passes.

    - ``loss``: a ``fastnn.losses.Loss`` or its name (``"mse"``, ``"bce"``, ``"bce_with_logits"``,
      ``"cross_entropy"``). ``optimizer`` defaults to ``SGD(lr=0.01)``.
    - ``shuffle`` draws a new order each epoch from ``numpy.random.default_rng(seed)``.
    - ``validation_data=(X_val, y_val)`` adds ``val_loss`` (and ``val_accuracy``) each epoch.
    - ``metrics``: track accuracy; ``None`` means "if the loss is a classifier's".
    - ``progress``: a tqdm bar per epoch when stderr is a terminal (and tqdm is installed).
    """
    loss = _losses.get(loss)
    optimizer = SGD(lr=0.01) if optimizer is None else optimizer
    batch_size = check_batch_size(batch_size)
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    X, target = prepare(network, X, y, loss)
    validation = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        validation = prepare(network, *validation_data, loss, what="X_val")
    network.loss = loss
    network.flat_parameters()

    backend, xp = network.backend, network.backend.xp
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    track_accuracy = metrics if metrics is not None else _is_classifier(loss, network, X, target)
    rng = np.random.default_rng(seed)
    buffers = Workspace()
    batch_losses = backend.empty(n_batches, np.float64)
    batch_correct = backend.empty(n_batches, np.float64)
    sizes = backend.asarray(np.diff(np.minimum(np.arange(n_batches + 1) * batch_size, n)), np.float64)
    history = History()

    def new_batch_buffers(size: int) -> tuple[Any, Any, Any]:
        """Gathered inputs, gathered targets and the loss gradient for one batch size."""
        return (backend.empty((size, *X.shape[1:]), X.dtype),
                backend.empty((size, *target.shape[1:]), target.dtype),
                backend.empty(network.output_shape((size, *X.shape[1:])), network.dtype))

    bar_factory = None
    if _use_progress_bar(progress):
        from tqdm import tqdm as bar_factory

    for epoch in range(1, int(epochs) + 1):
        started = time.perf_counter()
        order = backend.asarray(rng.permutation(n)) if shuffle else None
        bar = bar_factory(total=n, desc=f"epoch {epoch}/{epochs}", unit="sample", leave=False) \
            if bar_factory else None
        for batch, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            x_buf, y_buf, grad = buffers.slot(stop - start, new_batch_buffers)
            if order is None:
                xb, yb = X[start:stop], target[start:stop]
            else:
                xb = backend.take_rows(X, order[start:stop], x_buf)
                yb = backend.take_rows(target, order[start:stop], y_buf)
            out = network._forward(xb)
            value, grad = loss.compute(backend, out, yb, grad)
            network._backward(grad, need_input_grad=False)
            optimizer.step(network)
            batch_losses[batch] = value
            if track_accuracy:
                batch_correct[batch] = loss.correct(xp, out, yb)
            if bar is not None:
                bar.update(stop - start)
        seconds = time.perf_counter() - started
        record = {"loss": float(xp.dot(batch_losses, sizes)) / n}
        if track_accuracy:
            record["accuracy"] = float(batch_correct.sum()) / n
        if validation is not None:
            record.update({f"val_{k}": v for k, v in evaluate(network, *validation, loss, prepared=True).items()})
        record["seconds"] = seconds
        record["samples_per_s"] = n / seconds if seconds > 0 else math.inf
        history.epochs.append(record)
        if bar is not None:
            bar.close()
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"the training loss became {record['loss']} in epoch {epoch}; "
                                     "lower the learning rate or check the data")
    return history


def _is_classifier(loss: _losses.Loss, network: Any, X: Any, target: Any) -> bool:
    probe = loss.correct(network.backend.xp, network.backend.zeros(network.output_shape((1, *X.shape[1:])),
                                                                     network.dtype), target[:1])
    return probe is not None


def evaluate(network: Any, X: Any, y: Any, loss: Any = None, batch_size: int = 1024,
             prepared: bool = False) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) of ``network`` on ``(X, y)``."""
    loss = _losses.get(loss if loss is not None else network.loss or _no_loss())
    if not prepared:
        X, y = prepare(network, X, y, loss)
    batch_size = check_batch_size(batch_size)
    xp = network.backend.xp
    n = X.shape[0]
    total, correct, classifier = 0.0, 0.0, True
    for start in range(0, n, batch_size):
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        out = network._forward(xb)
        value, _ = loss.compute(network.backend, out, yb)
        total += float(value) * xb.shape[0]
        count = loss.correct(xp, out, yb)
        classifier = count is not None
        correct += float(count) if classifier else 0.0
    result = {"loss": total / n if n else math.nan}
    if classifier:
        result["accuracy"] = correct / n if n else math.nan
    return result


def _no_loss() -> Any:
    raise ValueError("evaluate needs a loss: pass loss=... or call fit first")
