"""Learning-rate schedules with PyTorch's names and formulas, for ``fit(..., schedule=...)``.

A schedule is a pure function of the step count ``t`` (epochs or batches done so far, from 0) and
the optimizer's base learning rate (the ``lr`` it was built with), so it carries no state of its
own: a resumed run recomputes the learning rate from the epoch it resumes at, bit for bit.

- ``StepLR(step_size, gamma=0.1)``: ``lr = base * gamma ** (t // step_size)``
  (``torch.optim.lr_scheduler.StepLR``).
- ``CosineAnnealingLR(T_max, eta_min=0)``: ``lr = eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2``
  (the closed form PyTorch documents; its recursive update gives the same values to rounding).
- ``LinearWarmup(warmup_steps, then=None)``: ``lr = base * (t + 1) / warmup_steps`` for the first
  ``warmup_steps`` steps (``torch.optim.lr_scheduler.LinearLR(start_factor=1 / warmup_steps,
  total_iters=warmup_steps - 1)``), then ``then``'s schedule counted from 0 (``SequentialLR``), or
  the base rate.

``interval`` is ``"epoch"`` (the default: the rate changes between epochs) or ``"batch"`` (before
every step). In ``LinearWarmup`` the ``then`` schedule shares the warm-up's interval.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

INTERVALS = ("epoch", "batch")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class Schedule:
    """Base class: ``lr(base_lr, t)`` for step ``t`` (0-based) and ``config()`` for checkpoints."""

    kind: ClassVar[str] = "Schedule"

    def __init__(self, interval: str = "epoch") -> None:
        if interval not in INTERVALS:
            raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
        self.interval = interval

    def lr(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items() if key != "kind")
        return f"{type(self).__name__}({arguments})"


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""

    kind = "StepLR"

    def __init__(self, step_size: int, gamma: float = 0.1, interval: str = "epoch") -> None:
        super().__init__(interval)
        self.step_size = _positive_int("step_size", step_size)
        if not (isinstance(gamma, (int, float)) and 0 < gamma):
            raise ValueError(f"gamma must be a positive number, got {gamma!r}")
        self.gamma = float(gamma)

    def lr(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "step_size": self.step_size, "gamma": self.gamma, "interval": self.interval}


class CosineAnnealingLR(Schedule):
    """Half a cosine from the base rate down to ``eta_min`` over ``T_max`` steps."""

    kind = "CosineAnnealingLR"

    def __init__(self, T_max: int, eta_min: float = 0.0, interval: str = "epoch") -> None:  # noqa: N803 (PyTorch's name)
        super().__init__(interval)
        self.T_max = _positive_int("T_max", T_max)
        if not (isinstance(eta_min, (int, float)) and eta_min >= 0):
            raise ValueError(f"eta_min must be a non-negative number, got {eta_min!r}")
        self.eta_min = float(eta_min)

    def lr(self, base_lr: float, t: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "T_max": self.T_max, "eta_min": self.eta_min, "interval": self.interval}


class LinearWarmup(Schedule):
    """Ramp the rate linearly up to the base over ``warmup_steps`` steps, then follow ``then``."""

    kind = "LinearWarmup"

    def __init__(self, warmup_steps: int, then: Schedule | None = None, interval: str = "epoch") -> None:
        super().__init__(interval)
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps)
        if then is not None and not isinstance(then, Schedule):
            raise TypeError(f"then must be a fastnn.schedules.Schedule, got {type(then).__name__}")
        self.then = then

    def lr(self, base_lr: float, t: int) -> float:
        if t < self.warmup_steps:
            return base_lr * (t + 1) / self.warmup_steps
        return base_lr if self.then is None else self.then.lr(base_lr, t - self.warmup_steps)

    def __repr__(self) -> str:
        return f"LinearWarmup(warmup_steps={self.warmup_steps}, then={self.then!r}, interval={self.interval!r})"

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "warmup_steps": self.warmup_steps,
                "then": None if self.then is None else self.then.config(), "interval": self.interval}


SCHEDULES: dict[str, type[Schedule]] = {cls.kind: cls for cls in (StepLR, CosineAnnealingLR, LinearWarmup)}


def from_config(config: dict[str, Any]) -> Schedule:
    """The inverse of ``Schedule.config()``."""
    config = dict(config)
    cls = SCHEDULES[config.pop("kind")]
    if cls is LinearWarmup and config.get("then") is not None:
        config["then"] = from_config(config["then"])
    return cls(**config)
