"""``EarlyStopping``: stop ``fit`` when a monitored metric stops improving, keeping the best."""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Stop training after ``patience`` epochs in which ``monitor`` did not improve on its best by
    more than ``min_delta``; with ``restore_best`` the network ends with the parameters of its
    best epoch, buffers such as BatchNorm's running statistics included (else those of the last).

    ``monitor`` is any key of an epoch's record: ``"val_loss"`` (the default), ``"loss"``,
    ``"val_accuracy"``, ``"accuracy"``. ``mode`` is ``"min"`` or ``"max"``; ``None`` picks
    ``"max"`` for accuracies and ``"min"`` otherwise (Keras's ``EarlyStopping`` semantics).
    ``fit`` records the outcome in ``History.stopped_early`` and ``History.best_epoch``, and
    checkpoints carry the tracking state (best value, epochs waited, best parameters), so a
    resumed run stops where the uninterrupted one would have.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str | None = None, restore_best: bool = True) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name, got {monitor!r}")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a non-negative number, got {min_delta!r}")
        mode = mode or ("max" if "accuracy" in monitor else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, float(min_delta), mode
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.waited = 0
        self.best_parameters: Any = None
        self.best_buffers: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"mode={self.mode!r}, restore_best={self.restore_best})")

    def config(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta, "mode": self.mode,
                "restore_best": self.restore_best}

    def check_metric(self, available: set[str]) -> None:
        """Raise if the records ``fit`` will write lack the monitored metric."""
        if self.monitor not in available:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not record; it records "
                             f"{sorted(available)} (val_* needs validation_data, accuracy a classifier)")

    def update(self, epoch: int, record: dict[str, float], parameters: Any,
               buffers: dict[str, Any] | None = None) -> bool:
        """Take one epoch's record; True when training should stop. ``parameters`` is the
        network's flat parameter buffer and ``buffers`` its named buffers (both copied when the
        epoch is the best so far)."""
        value = record[self.monitor]
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            if self.restore_best:
                self.best_parameters = parameters.copy()
                self.best_buffers = {key: buffer.copy() for key, buffer in (buffers or {}).items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, parameters: Any, buffers: dict[str, Any] | None = None) -> bool:
        """Put the best epoch's parameters and buffers back (in place); True if it did."""
        if not self.restore_best or self.best_parameters is None:
            return False
        parameters[...] = self.best_parameters
        for key, buffer in (buffers or {}).items():
            buffer[...] = self.best_buffers[key]
        return True

    def state(self) -> dict[str, Any]:
        """The tracking state for a checkpoint (the best parameters and buffers travel as arrays)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited}

    def load_state(self, state: dict[str, Any], best_parameters: Any, best_buffers: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.waited = float(state["best"]), int(state["best_epoch"]), int(state["waited"])
        self.best_parameters, self.best_buffers = best_parameters, best_buffers
