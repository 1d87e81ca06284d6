"""Optimizers with PyTorch's update rules, applied to all of a network's parameters at once.

A ``Network`` keeps every parameter (and every gradient) in one flat buffer, so ``step`` is one
fused kernel call however many layers there are. State (momentum, Adam moments) is kept per
network and starts afresh if the network's parameter set changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_hyper(name: str, value: float, low: float = 0.0, high: float | None = None,
                 low_inclusive: bool = True) -> float:
    value = float(value)
    ok = (value >= low if low_inclusive else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class Optimizer:
    """Base class: ``step(network)`` applies one update from the gradients of the last backward."""

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None
        self._owner: Any = None
        self._backend: Any = None
        self.steps = 0
        # the rate a schedule has set for the coming steps (None: the base ``lr``); the base rate
        # stays the hyperparameter, so a checkpoint's optimizer matches on resume
        self.scheduled_lr: float | None = None

    @property
    def current_lr(self) -> float:
        """The learning rate the next step uses: the schedule's, or the base ``lr``."""
        return self.lr if self.scheduled_lr is None else self.scheduled_lr

    def step(self, network: Any) -> None:
        param, grad = network.flat_parameters()
        self.bind(network)
        self.steps += 1
        self._update(network.backend, param, grad, self._state)

    def bind(self, network: Any) -> dict[str, Any]:
        """The state buffers for ``network``'s parameters (fresh, with the step count reset, if
        this optimizer last updated other parameters)."""
        param, _ = network.flat_parameters()
        if self._owner is not param:
            backend = network.backend
            self._state = {name: backend.zeros(param.shape, param.dtype) for name in self._buffers}
            self._owner, self._backend = param, backend
            self.steps = 0
        return self._state

    _buffers: tuple[str, ...] = ()
    # For backends that run whole steps in one call: the update rule's name, its hyperparameters
    # as numbers in the order that rule takes them, and its state buffers in order.
    fused_rule: str | None = None

    def fused_hyperparameters(self) -> tuple[float, ...]:
        raise NotImplementedError

    fused_state: tuple[str, ...] = ()

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def capture_key(self) -> tuple[Any, ...] | None:
        """The numbers the next step's update takes from the host, or None where they change every
        step. A step captured as a CUDA graph (``fastnn.graph_step``) replays while this stays
        the same."""
        return None

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable."""
        raise NotImplementedError

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(config, buffers)``: kind, hyperparameters and step count, and the state arrays
        (momentum, moments) on the host. Scratch buffers are not state."""
        config = {"kind": type(self).__name__, "hyperparameters": self.hyperparameters(), "steps": self.steps}
        buffers = {}
        if self._state is not None and self._owner is not None:
            buffers = {name: np.asarray(self._backend.to_numpy(value)) for name, value in self._state.items()
                       if not name.startswith("scratch")}
        return config, buffers

    def load_state_dict(self, config: dict[str, Any], buffers: dict[str, Any], network: Any) -> None:
        """Continue from ``state_dict()``'s output, bound to ``network``'s parameters."""
        if config.get("kind") != type(self).__name__ or config.get("hyperparameters") != self.hyperparameters():
            raise ValueError(f"the saved optimizer is {config.get('kind')}({config.get('hyperparameters')}), "
                             f"not {self!r}: resume with the optimizer the run was started with")
        param, _ = network.flat_parameters()
        backend = network.backend
        state = {name: backend.zeros(param.shape, param.dtype) for name in self._buffers}
        for name, value in buffers.items():
            if name not in state or value.shape != param.shape:
                raise ValueError(f"optimizer state {name!r} of shape {getattr(value, 'shape', None)} does not "
                                 f"fit this network's {param.shape[0]} parameters")
            state[name][...] = backend.asarray(value, param.dtype)
        self._state, self._owner, self._backend = state, param, backend
        self.steps = int(config["steps"])


class SGD(Optimizer):
    """``torch.optim.SGD``: ``p -= lr * g`` with optional momentum (heavy-ball or Nesterov) and
    L2 weight decay added to the gradient."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = _check_hyper("lr", lr, low_inclusive=False)
        self.momentum = _check_hyper("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum requires momentum > 0")
        self._buffers = ("velocity", "scratch")

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    fused_rule = "sgd"
    fused_state = ("velocity", "velocity")  # the rule takes two state buffers; SGD uses one

    def fused_hyperparameters(self) -> tuple[float, ...]:
        return (self.current_lr, self.momentum, float(self.nesterov), self.weight_decay)

    def capture_key(self) -> tuple[Any, ...] | None:
        return (self.current_lr, self.steps == 0)  # the rate, and whether the next step is the first

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        backend.kernels.sgd(param, grad, state["velocity"], state["scratch"], lr=self.current_lr,
                            momentum=self.momentum, nesterov=self.nesterov,
                            weight_decay=self.weight_decay, first_step=self.steps == 1)


class Adam(Optimizer):
    """``torch.optim.Adam``: weight decay is an L2 term added to the gradient."""

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.lr = _check_hyper("lr", lr, low_inclusive=False)
        self.betas = (_check_hyper("betas[0]", betas[0], 0.0, 1.0), _check_hyper("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _check_hyper("eps", eps)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self._buffers = ("exp_avg", "exp_avg_sq", "scratch", "scratch2")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    fused_rule = "adam"
    fused_state = ("exp_avg", "exp_avg_sq")

    def fused_hyperparameters(self) -> tuple[float, ...]:
        return (self.current_lr, *self.betas, self.eps, self.weight_decay, float(self.decoupled))

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        backend.kernels.adam(param, grad, state["exp_avg"], state["exp_avg_sq"], state["scratch"],
                             state["scratch2"], step=self.steps, lr=self.current_lr, beta1=self.betas[0],
                            beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay,
                            decoupled=self.decoupled)


class AdamW(Adam):
    """``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * wd`` (default wd 0.01)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer: str | Optimizer | None) -> Optimizer:
    """An optimizer from an ``Optimizer`` instance, a name in ``OPTIMIZERS`` (default
    hyperparameters) or ``None`` (``SGD(lr=0.01)``)."""
    if optimizer is None:
        return SGD(lr=0.01)
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        return optimizer()
    cls = OPTIMIZERS.get(optimizer.lower()) if isinstance(optimizer, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected an Optimizer (e.g. fastnn.SGD(lr=0.1)) "
                         f"or one of {sorted(OPTIMIZERS)}")
    return cls()
