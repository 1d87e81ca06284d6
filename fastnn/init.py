"""Weight initialisers for ``Linear(..., init=NAME)``, on the host with a NumPy ``Generator``.

Each returns ``(weight (out, in), bias (out,))`` in float64; the layer casts to its dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Initializer = Callable[[int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def pytorch_default(fan_in: int, fan_out: int, rng: np.random.Generator):
    """``nn.Linear``'s default: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    return rng.uniform(-bound, bound, (fan_out, fan_in)), rng.uniform(-bound, bound, fan_out)


def xavier(fan_in: int, fan_out: int, rng: np.random.Generator):
    """Glorot uniform: weight ~ U(+-sqrt(6 / (in + out))), bias 0. Suits tanh/sigmoid."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, (fan_out, fan_in)), np.zeros(fan_out)


def he(fan_in: int, fan_out: int, rng: np.random.Generator):
    """He/Kaiming normal: weight ~ N(0, 2 / in), bias 0. Suits ReLU."""
    std = math.sqrt(2.0 / fan_in) if fan_in else 0.0
    return rng.normal(0.0, std, (fan_out, fan_in)), np.zeros(fan_out)


def small_normal(fan_in: int, fan_out: int, rng: np.random.Generator):
    """The lecture notes' ``randn * 0.01``, bias 0."""
    return rng.standard_normal((fan_out, fan_in)) * 0.01, np.zeros(fan_out)


def zeros(fan_in: int, fan_out: int, rng: np.random.Generator):
    """All zeros. Every hidden unit then computes the same thing and receives the same gradient,
    so symmetry is never broken: use only for output layers or to reproduce the lecture examples."""
    return np.zeros((fan_out, fan_in)), np.zeros(fan_out)


INITIALIZERS: dict[str, Initializer] = {
    "default": pytorch_default,
    "xavier": xavier,
    "glorot": xavier,
    "he": he,
    "kaiming": he,
    "normal": small_normal,
    "zeros": zeros,
}


def get(name: str) -> Initializer:
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown init {name!r}; expected one of {sorted(INITIALIZERS)}") from None
