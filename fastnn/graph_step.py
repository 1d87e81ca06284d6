"""Training steps replayed as one CUDA graph each, on backends that can capture (CuPy).

A full-size batch's step (gather, forward, loss, backward, optimizer, NaN guard) is captured once
and then replayed for every full batch: per step, one device-side copy of the batch's indices into
the buffer the graph gathers from, one graph launch, and two copies of the step's loss and
correct count into the epoch's records, against 38 device operations for a digits step run eagerly.

The first full step of a fit runs eagerly: it loads every kernel, fills every workspace buffer and
takes the optimizer's first step (its state starts there). The capture follows. The graph stays
valid while the optimizer's per-step numbers stay the same (``Optimizer.capture_key``); an epoch
schedule's new learning rate makes one new capture. Steps run eagerly, as on every other backend,
where those numbers change every step (Adam's bias corrections), where a layer keys randomness on
the step (Dropout), with a per-batch schedule, gradient clipping or data-parallel training, and
for the last, shorter batch of an epoch. Should the device refuse a capture (an operation CUDA
cannot capture), the fit warns once and goes on step by step.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import numpy as np


class StepGraphs:
    """The captured step of one ``fit`` (``fastnn.training._Run``) and the buffers it reads."""

    def __init__(self, run: Any) -> None:
        self.run = weakref.proxy(run)  # the run holds this: no cycle keeping a graph and its pool alive
        self.indices = run.backend.empty(run.batch_size, np.int64)  # what the graph gathers
        self.order = None if run.shuffle else run.backend.asarray(np.arange(run.n, dtype=np.int64))
        self.captured: Any = None  # the backend's captured step: .key, .launch(), .result
        self.warm = False
        self.captures = 0
        self.refused: str | None = None  # why the device refused a capture, if it did

    @staticmethod
    def usable(run: Any) -> bool:
        """Whether ``run``'s full steps can be replayed as one graph. Layers, loss and optimizer
        must be fastnn's own classes, not subclasses, and keep their own methods: Python of the
        user's at each step would not run in a replay."""
        from . import layers, losses, optimizers

        if not (getattr(run.backend, "captures_steps", False) and run.parallel is None and not run.stepped
                and run.extras.clip is None and not run.extras.per_batch and run.trainer is None):
            return False  # (checked first: most fits end here, before the walk over the parts below)
        parts = [(layer, layers, ("forward", "backward", "_forward", "_backward")) for layer in run.network.layers]
        parts += [(run.loss, losses, ("compute", "correct")), (run.optimizer, optimizers, ("step", "_update"))]
        # fastnn's own classes, with none of the methods a step calls replaced on the instance
        return all(type(part).__module__ == module.__name__ and not any(name in vars(part) for name in names)
                   for part, module, names in parts)

    def step(self, order: Any, lo: int, hi: int, buffers: tuple[Any, Any, Any], epoch: int,
             batch: int) -> Any | None:
        """Train batch ``[lo, hi)`` of ``order`` (a full batch) by a graph launch and return its
        loss (on the device); or return None, having done nothing, where no graph can serve this
        step: the caller then runs it step by step."""
        run, optimizer = self.run, self.run.optimizer
        key = optimizer.capture_key()
        if key is None or not self.warm or self.refused is not None:
            self.warm = key is not None  # the step by step run of this key warms up the capture
            return None
        self.indices[...] = (self.order if order is None else order)[lo:hi]
        if self.captured is None or self.captured.key != key:
            steps = optimizer.steps
            try:
                self.captured = run.backend.capture(lambda: self._body(buffers, epoch, batch))
            except Exception as exc:  # the device refused the capture: this fit goes on step by step
                optimizer.steps = steps  # nothing ran: only the Python count moved
                self.refused = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"fastnn: a training step could not be captured as a CUDA graph ({self.refused}); "
                              "this fit continues step by step", RuntimeWarning, stacklevel=4)
                return None
            self.captured.key = key
            self.captures += 1
        else:
            optimizer.steps += 1  # the captured optimizer.step() counted once, at the capture
        self.captured.launch()
        value, correct = self.captured.result
        run.batch_losses[batch] = value
        if run.track_accuracy:
            run.batch_correct[batch] = correct
        return value

    def _body(self, buffers: tuple[Any, Any, Any], epoch: int, batch: int) -> tuple[Any, Any]:
        """The step as the graph records it: gathered through ``self.indices``; returns the
        device arrays the graph writes the loss and the correct count into."""
        run = self.run
        x_buf, y_buf, grad = buffers
        xb = run.backend.take_rows(run.X, self.indices, x_buf)
        yb = run.backend.take_rows(run.target, self.indices, y_buf)
        return run._step(xb, yb, grad, epoch, batch, record=False)
