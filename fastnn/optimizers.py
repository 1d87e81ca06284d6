"""Optimizers with PyTorch's update rules, applied to all of a network's parameters at once.

A ``Network`` keeps every parameter (and every gradient) in one flat buffer, so ``step`` is one
fused kernel call however many layers there are. State (momentum, Adam moments) is kept per
network and starts afresh if the network's parameter set changes.
"""

from __future__ import annotations

from typing import Any


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
        self.steps = 0

    def step(self, network: Any) -> None:
        param, grad = network.flat_parameters()
        if self._owner is not param:
            backend = network.backend
            self._state = {name: backend.zeros(param.shape, param.dtype) for name in self._buffers}
            self._owner = param
            self.steps = 0
        self.steps += 1
        self._update(network.backend, param, grad, self._state)

    _buffers: tuple[str, ...] = ()

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError


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

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        backend.kernels.sgd(param, grad, state["velocity"], state["scratch"], lr=self.lr,
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

    def _update(self, backend: Any, param: Any, grad: Any, state: dict[str, Any]) -> None:
        backend.kernels.adam(param, grad, state["exp_avg"], state["exp_avg_sq"], state["scratch"],
                             state["scratch2"], step=self.steps, lr=self.lr, beta1=self.betas[0],
                            beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay,
                            decoupled=self.decoupled)


class AdamW(Adam):
    """``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * wd`` (default wd 0.01)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
