"""Finite-difference gradient checks for layers, networks and losses (float64 only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends.base import to_numpy
from .losses import Loss


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| scaled by the gradient's magnitude (floored so all-zero gradients compare
    absolutely)."""
    if analytic.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(analytic))), float(np.max(np.abs(numeric))), 1e-8)
    return float(np.max(np.abs(analytic - numeric))) / scale


def _numeric_grad(objective, values: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of ``objective()`` w.r.t. every element of ``values`` (perturbed in place)."""
    grad = np.zeros(values.shape, dtype=np.float64)
    flat_values, flat_grad = values.reshape(-1), grad.reshape(-1)
    for i in range(flat_values.size):
        original = flat_values[i]
        flat_values[i] = original + eps
        plus = objective()
        flat_values[i] = original - eps
        minus = objective()
        flat_values[i] = original
        flat_grad[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(target: Any, x: Any, y: Any = None, eps: float = 1e-6, seed: int = 0) -> float:
    """Compare analytic and central-difference gradients; return the largest relative error.

    - A ``Loss``: ``gradcheck(loss, pred, target)`` checks ``d loss / d pred``.
    - A layer or ``Network``: ``gradcheck(model, x)`` uses the scalar ``sum(forward(x) * r)``
      for a fixed random ``r`` and checks ``dx`` and every parameter's gradient.

    Runs in float64 (models must be float64; a float32 check cannot resolve ``eps``).
    Errors below about 1e-6 mean the gradients agree.
    """
    if isinstance(target, Loss):
        pred = np.array(to_numpy(x), dtype=np.float64)
        _, analytic = target(pred, y)
        analytic = np.array(to_numpy(analytic), dtype=np.float64)
        numeric = _numeric_grad(lambda: float(target(pred, y)[0]), pred, eps)
        return _relative_error(analytic, numeric)

    dtype = getattr(target, "dtype", None)
    if dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 model to resolve eps={eps}; got {dtype}")
    backend = target.backend
    if hasattr(target, "flat_parameters"):
        target.flat_parameters()
    x = np.array(to_numpy(x), dtype=np.float64)
    out = backend.to_numpy(target.forward(backend.asarray(x)))
    weights = np.random.default_rng(seed).standard_normal(out.shape)

    def objective() -> float:
        return float(np.sum(backend.to_numpy(target.forward(backend.asarray(x))) * weights))

    target.forward(backend.asarray(x))
    dx = np.array(backend.to_numpy(target.backward(backend.asarray(weights))), dtype=np.float64)
    layers = target.layers if hasattr(target, "layers") else [target]
    analytic_params = [(layer, name, np.array(backend.to_numpy(layer.grads[name])))
                       for layer in layers for name in layer.params]
    errors = [_relative_error(dx, _numeric_grad(objective, x, eps))]
    for layer, name, analytic in analytic_params:
        host = np.array(backend.to_numpy(layer.params[name]))

        def objective_param(layer=layer, name=name, host=host) -> float:
            layer.params[name][...] = backend.asarray(host)
            return objective()

        numeric = _numeric_grad(objective_param, host, eps)
        layer.params[name][...] = backend.asarray(host)
        errors.append(_relative_error(analytic, numeric))
    return max(errors)
