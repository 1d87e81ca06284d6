"""Activation forward and fused backward kernels on NumPy arrays.

Every kernel writes its result into ``out`` (same shape and dtype as ``z``) and returns it.
Forward: ``f(z, out, alpha)``. Backward: ``b(dy, z, y, out, alpha)`` computes ``dy * g'(z)``.
Kernels may use ``out`` as scratch, so ``out`` must not alias an input unless noted.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import special

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715
# Beyond |z| = 10 the tanh-GELU's sech^2 term is below 1e-35, so clipping there is exact to
# float64 and keeps z^3 from overflowing into an inf * 0.
_GELU_TANH_CLIP = 10.0


def _finite(z: np.ndarray) -> np.ndarray:
    """z with +-inf replaced by the largest finite value (NaN kept), so gated formulas like
    ``z * sigmoid(z)`` reach their limits instead of ``inf * 0 = NaN``."""
    big = np.finfo(z.dtype).max
    return np.clip(z, -big, big)


# --- forward -------------------------------------------------------------------------------


def identity(z, out, alpha=None):
    np.copyto(out, z)
    return out


_ZEROS_MAX_SIZE = 1 << 20


@functools.lru_cache(maxsize=8)
def _flat_zeros(size: int, dtype: np.dtype) -> np.ndarray:
    zeros = np.zeros(size, dtype)
    zeros.flags.writeable = False
    return zeros


def _zero_operand(z: np.ndarray):
    """A zero to compare against: NumPy's array-array maximum is SIMD and about 4x faster than
    array-scalar on small arrays, so small batches use a cached zero array of z's shape."""
    if z.size <= _ZEROS_MAX_SIZE:
        return _flat_zeros(z.size, z.dtype).reshape(z.shape)
    return z.dtype.type(0)


def relu(z, out, alpha=None):
    return np.maximum(z, _zero_operand(z), out=out)  # np.maximum propagates NaN


def leaky_relu(z, out, alpha):
    # max(z, a z) for a <= 1, min(z, a z) for a > 1; both propagate NaN.
    np.multiply(z, alpha, out=out)
    return (np.maximum if alpha <= 1 else np.minimum)(z, out, out=out)


def sigmoid(z, out, alpha=None):
    return special.sigmoid(z, out)


def tanh(z, out, alpha=None):
    return np.tanh(z, out=out)


def gelu(z, out, alpha=None):
    zf = np.maximum(z, -np.finfo(z.dtype).max)  # -inf -> -max so that -max * Phi = -0
    np.multiply(zf, -_SQRT_HALF, out=out)
    special.erfc(out, out)  # 2 * Phi(z)
    out *= 0.5
    return np.multiply(out, zf, out=out)


def _gelu_tanh_gate(z, out):
    """out = (1 + tanh(u)) / 2 = sigmoid(2u), u = k (z + c z^3). The sigmoid form has no
    cancellation for negative z, where 1 + tanh(u) would lose every digit."""
    with np.errstate(over="ignore"):  # z^3 overflow -> +-inf -> sigmoid 0 or 1: the right limit
        np.multiply(z, z, out=out)
        out *= _GELU_TANH_C
        out += 1
        out *= z
    out *= 2 * _GELU_TANH_K
    return special.sigmoid(out, out)


def gelu_tanh(z, out, alpha=None):
    zf = np.maximum(z, -np.finfo(z.dtype).max)
    _gelu_tanh_gate(zf, out)
    return np.multiply(out, zf, out=out)


def silu(z, out, alpha=None):
    zf = np.maximum(z, -np.finfo(z.dtype).max)
    special.sigmoid(zf, out)
    return np.multiply(out, zf, out=out)


def softplus(z, out, alpha=None):
    return special.softplus(z, out)


def elu(z, out, alpha):
    # alpha * expm1(min(z, 0)) + max(z, 0): expm1 of the non-positive part never overflows.
    np.minimum(z, 0, out=out)
    np.expm1(out, out=out)
    out *= alpha
    out += np.maximum(z, 0)
    return out


# --- fused backward: dz = dy * g'(z) ----------------------------------------------------------


def identity_backward(dy, z, y, out, alpha=None):
    np.copyto(out, dy)
    return out


def relu_backward(dy, z, y, out, alpha=None):
    # y = max(z, 0) >= 0, so sign(y) is relu'(z): 1 for z > 0, 0 for z <= 0, NaN for NaN.
    # (np.sign is a fast SIMD loop; np.heaviside is ~8x slower.)
    np.sign(y, out=out)
    return np.multiply(out, dy, out=out)


def _positive_step(z, out):
    """out = 1 where z > 0, 0 where z <= 0, NaN where z is NaN."""
    np.maximum(z, 0, out=out)
    return np.sign(out, out=out)


def leaky_relu_backward(dy, z, y, out, alpha):
    _positive_step(z, out)
    out *= 1.0 - alpha
    out += alpha
    return np.multiply(out, dy, out=out)


def sigmoid_backward(dy, z, y, out, alpha=None):
    np.subtract(1, y, out=out)
    out *= y
    return np.multiply(out, dy, out=out)


def tanh_backward(dy, z, y, out, alpha=None):
    np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)
    return np.multiply(out, dy, out=out)


def gelu_backward(dy, z, y, out, alpha=None):
    # g' = Phi(z) + z * phi(z)
    zf = _finite(z)
    with np.errstate(over="ignore"):
        pdf = np.multiply(zf, zf)
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI
    pdf *= zf
    np.multiply(zf, -_SQRT_HALF, out=out)
    special.erfc(out, out)
    out *= 0.5
    out += pdf
    return np.multiply(out, dy, out=out)


def gelu_tanh_backward(dy, z, y, out, alpha=None):
    # With s = sigmoid(2u): (1 + t)/2 = s and 1 - t^2 = 4 s (1 - s), so
    # g' = s + 2 z s (1 - s) k (1 + 3c z^2) = s * (1 + 2k z (1 - s)(1 + 3c z^2)).
    zc = np.clip(z, -_GELU_TANH_CLIP, _GELU_TANH_CLIP)
    gate = _gelu_tanh_gate(zc, np.empty_like(out))
    np.multiply(zc, zc, out=out)
    out *= 3 * _GELU_TANH_C
    out += 1
    out *= zc
    out *= 2 * _GELU_TANH_K
    out *= 1 - gate
    out += 1
    out *= gate
    return np.multiply(out, dy, out=out)


def silu_backward(dy, z, y, out, alpha=None):
    # g' = s * (1 + z * (1 - s)), s = sigmoid(z)
    zf = _finite(z)
    s = special.sigmoid(zf, np.empty_like(out))
    np.subtract(1, s, out=out)
    out *= zf
    out += 1
    out *= s
    return np.multiply(out, dy, out=out)


def softplus_backward(dy, z, y, out, alpha=None):
    special.sigmoid(z, out)
    return np.multiply(out, dy, out=out)


def elu_backward(dy, z, y, out, alpha):
    # g' = 1 for z > 0, alpha e^z otherwise = alpha e^min(z, 0) + (1 - alpha) step(z)
    step = _positive_step(z, np.empty_like(out))
    step *= 1.0 - alpha
    np.minimum(z, 0, out=out)
    np.exp(out, out=out)
    out *= alpha
    out += step
    return np.multiply(out, dy, out=out)


FORWARD = {
    "identity": identity,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "silu": silu,
    "softplus": softplus,
    "elu": elu,
}

BACKWARD = {
    "identity": identity_backward,
    "relu": relu_backward,
    "leaky_relu": leaky_relu_backward,
    "sigmoid": sigmoid_backward,
    "tanh": tanh_backward,
    "gelu": gelu_backward,
    "gelu_tanh": gelu_tanh_backward,
    "silu": silu_backward,
    "softplus": softplus_backward,
    "elu": elu_backward,
}


def softmax(z, out):
    """Softmax over the last axis, max-shifted (log-sum-exp stable)."""
    np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def softmax_backward(dy, y, out):
    """dz = y * (dy - sum(dy * y, axis=-1))."""
    np.multiply(dy, y, out=out)
    dot = out.sum(axis=-1, keepdims=True)
    np.subtract(dy, dot, out=out)
    out *= y
    return out
