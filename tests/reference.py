"""Float64 reference maths for the conformance suite, written independently of the kernels:
scalar formulas from the definitions (math.erf, math.exp, ...) applied elementwise, with the
limits at +-inf spelled out. Slow and simple on purpose."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import fastnn

GELU_C = 0.044715
GELU_K = math.sqrt(2.0 / math.pi)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _gelu_tanh_parts(z: float) -> tuple[float, float]:
    zc = max(-10.0, min(10.0, z))  # beyond 10 the tanh is +-1 to double precision
    t = math.tanh(GELU_K * (zc + GELU_C * zc**3))
    value = 0.5 * z * (1 + t) if abs(z) <= 10 else (z if z > 0 else 0.0)
    deriv = 0.5 * (1 + t) + 0.5 * zc * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * zc * zc)
    return value, deriv


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


# name -> (g(z), g'(z), alpha default); each takes (z, alpha) and handles finite z. Infinite and
# NaN inputs are handled by `forward`/`derivative` below.
SCALAR = {
    "identity": (lambda z, a: z, lambda z, a: 1.0),
    "relu": (lambda z, a: max(z, 0.0), lambda z, a: 1.0 if z > 0 else 0.0),
    "leaky_relu": (lambda z, a: z if z > 0 else a * z, lambda z, a: 1.0 if z > 0 else a),
    "sigmoid": (lambda z, a: _sigmoid(z), lambda z, a: _sigmoid(z) * (1 - _sigmoid(z))),
    "tanh": (lambda z, a: math.tanh(z), lambda z, a: 1 - math.tanh(z) ** 2),
    "gelu": (lambda z, a: z * _phi(z),
             lambda z, a: (_phi(z) + z * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)) if abs(z) < 40
             else float(z > 0)),
    "gelu_tanh": (lambda z, a: _gelu_tanh_parts(z)[0], lambda z, a: _gelu_tanh_parts(z)[1]),
    "silu": (lambda z, a: z * _sigmoid(z), lambda z, a: _sigmoid(z) * (1 + z * (1 - _sigmoid(z)))),
    "softplus": (lambda z, a: _softplus(z), lambda z, a: _sigmoid(z)),
    "elu": (lambda z, a: z if z > 0 else a * math.expm1(z), lambda z, a: 1.0 if z > 0 else a * math.exp(z)),
}

# Limits at -inf and +inf: (g(-inf), g(+inf), g'(-inf), g'(+inf)); alpha-dependent ones as callables.
LIMITS = {
    "identity": (-math.inf, math.inf, 1.0, 1.0),
    "relu": (0.0, math.inf, 0.0, 1.0),
    "leaky_relu": (lambda a: -math.inf if a > 0 else (0.0 if a == 0 else math.inf), math.inf, lambda a: a, 1.0),
    "sigmoid": (0.0, 1.0, 0.0, 0.0),
    "tanh": (-1.0, 1.0, 0.0, 0.0),
    "gelu": (0.0, math.inf, 0.0, 1.0),
    "gelu_tanh": (0.0, math.inf, 0.0, 1.0),
    "silu": (0.0, math.inf, 0.0, 1.0),
    "softplus": (0.0, math.inf, 0.0, 1.0),
    "elu": (lambda a: -a, math.inf, 0.0, 1.0),
}


def _apply(name: str, z: np.ndarray, alpha: float | None, which: int) -> np.ndarray:
    func = SCALAR[name][which]
    limits = LIMITS[name]
    out = np.empty(z.shape, dtype=np.float64)
    flat_z, flat_out = np.asarray(z, np.float64).reshape(-1), out.reshape(-1)
    for i, value in enumerate(flat_z):
        if math.isnan(value):
            # identity's derivative is 1 everywhere: its backward never reads z
            flat_out[i] = 1.0 if (name == "identity" and which == 1) else math.nan
        elif math.isinf(value):
            limit = limits[2 * which + (value > 0)]
            flat_out[i] = limit(alpha) if callable(limit) else limit
        else:
            flat_out[i] = func(float(value), alpha)
    return out


def forward(name: str, z: np.ndarray, alpha: float | None = None) -> np.ndarray:
    return _apply(name, z, alpha, 0)


def derivative(name: str, z: np.ndarray, alpha: float | None = None) -> np.ndarray:
    return _apply(name, z, alpha, 1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    classes = logits.shape[-1]
    z = np.asarray(logits, np.float64).reshape(-1, classes)
    if np.asarray(target).dtype.kind in "iu":
        t = np.zeros_like(z)
        t[np.arange(len(z)), np.asarray(target).reshape(-1)] = 1
    else:
        t = np.asarray(target, np.float64).reshape(-1, classes)
    n = len(z)
    value = float(-(t * log_softmax(z)).sum() / n) if n else math.nan
    grad = (softmax(z) * t.sum(axis=1, keepdims=True) - t) / max(n, 1)
    return value, grad.reshape(logits.shape)


def bce_with_logits(x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    sp = np.vectorize(_softplus)(x) if x.size else x
    n = x.size
    value = float((sp - x * t).sum() / n) if n else math.nan
    sig = np.vectorize(_sigmoid)(x) if x.size else x
    return value, (sig - t) / max(n, 1)


def bce(p: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100), np.maximum(np.log(1 - p), -100)
    n = p.size
    value = float(-(t * log_p + (1 - t) * log_q).sum() / n) if n else math.nan
    grad = (p - t) / np.maximum(p * (1 - p), 1e-12) / max(n, 1)
    return value, grad


def mse(p: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    n = p.size
    return (float(((p - t) ** 2).sum() / n) if n else math.nan), 2 * (p - t) / max(n, 1)


def sgd_steps(param, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's documented algorithm (dampening 0), step by step."""
    p = np.array(param, np.float64)
    buf = None
    for g in grads:
        g = np.asarray(g, np.float64) + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_steps(param, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """torch.optim.Adam / AdamW's documented algorithm, step by step."""
    p = np.array(param, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def matmul_shape_ok(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """NumPy's matmul shape rule, restated."""
    if not a or not b:
        return False
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return False
    batch_a, batch_b = a2[:-2][::-1], b2[:-2][::-1]
    for i in range(min(len(batch_a), len(batch_b))):
        if batch_a[i] != batch_b[i] and 1 not in (batch_a[i], batch_b[i]):
            return False
    return True


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b by the rule: promote 1-D operands, broadcast batch dims, multiply, drop added axes."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    A = np.broadcast_to(a2, (*batch, *a2.shape[-2:]))
    B = np.broadcast_to(b2, (*batch, *b2.shape[-2:]))
    result = np.einsum("...ij,...jk->...ik", A, B)
    if a.ndim == 1:
        result = result[..., 0, :]
    if b.ndim == 1:
        result = result[..., 0]
    return result


def host(array: Any) -> np.ndarray:
    """Any backend's array as a NumPy array for an assertion (``fastnn.to_numpy``: NumPy may not
    read a device array)."""
    return fastnn.to_numpy(array)
