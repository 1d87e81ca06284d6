"""Per-element maths, inlined into the kernels: a vectorisable exp and every activation.

All functions take and return float64. Activations are selected by an integer code (a jitted
kernel cannot take a table of functions and still be cached on disk); LLVM hoists the switch out
of the element loop, so each activation runs as its own vectorised loop. The codes are the
positions of the names in ``fastnn.activations.ACTIVATIONS`` (checked by the backend).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .jit import int64_as_float64

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, SOFTPLUS, ELU = range(10)
CODES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "softplus", "elu")

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6
# Cephes' exp: e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) on |r| <= ln(2)/2
_P0, _P1, _P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
_Q0, _Q1, _Q2, _Q3 = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
                      2.00000000000000000009e0)
_EXP_MAX = 709.782712893384
_EXP_MIN = -745.1332191019412
_BIG = np.finfo(np.float64).max
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@njit(inline="always", cache=True)
def fast_exp(x):
    """e^x to within 1 ulp, branch-free so loops calling it vectorise (libm's exp does not)."""
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    n = math.floor(_LOG2E * xc + 0.5)
    r = xc - n * _LN2_HI - n * _LN2_LO
    rr = r * r
    px = r * ((_P0 * rr + _P1) * rr + _P2)
    q = ((_Q0 * rr + _Q1) * rr + _Q2) * rr + _Q3
    e = 1.0 + 2.0 * px / (q - px)
    k = np.int64(n)
    half = k >> 1  # 2^k as two normal powers of two, so that results down to 2^-1074 stay exact
    e = e * int64_as_float64((half + 1023) << 52) * int64_as_float64((k - half + 1023) << 52)
    if x > _EXP_MAX:
        e = math.inf
    if x < _EXP_MIN:
        e = 0.0
    if x != x:
        e = x
    return e


@njit(inline="always", cache=True)
def sigmoid(x):
    return 1.0 / (1.0 + fast_exp(-x))


@njit(inline="always", cache=True)
def softplus(x):
    return max(x, 0.0) + math.log1p(fast_exp(-abs(x)))


@njit(inline="always", cache=True)
def finite(x):
    """x with +-inf clamped to the largest finite double (NaN kept): gated forms like
    x * sigmoid(x) then reach their limits instead of inf * 0 = NaN."""
    return min(max(x, -_BIG), _BIG) if x == x else x


@njit(inline="always", cache=True)
def gelu_tanh_gate(x):
    return sigmoid(2.0 * _GELU_K * x * (1.0 + _GELU_C * x * x))


@njit(inline="always", cache=True)
def activation(code, z, alpha):
    """g(z)."""
    if code == RELU:
        return z if (z > 0.0 or z != z) else 0.0
    if code == LEAKY_RELU:
        return z if z > 0.0 else alpha * z
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == GELU:
        zf = max(z, -_BIG)
        return zf * 0.5 * math.erfc(-zf * _SQRT_HALF)
    if code == GELU_TANH:
        zf = max(z, -_BIG)
        return zf * gelu_tanh_gate(zf)
    if code == SILU:
        zf = max(z, -_BIG)
        return zf * sigmoid(zf)
    if code == SOFTPLUS:
        return softplus(z)
    if code == ELU:
        return z if z > 0.0 else alpha * math.expm1(z)
    return z


@njit(inline="always", cache=True)
def activation_backward(code, dy, z, y, alpha):
    """dy * g'(z), given z and y = g(z); NaN in z gives NaN (identity excepted)."""
    if code == RELU:
        return dy * (1.0 if y > 0.0 else (y if y != y else 0.0))
    if code == LEAKY_RELU:
        return dy * (1.0 if z > 0.0 else (alpha if z <= 0.0 else z))
    if code == SIGMOID:
        return dy * (y * (1.0 - y))
    if code == TANH:
        return dy * (1.0 - y * y)
    if code == GELU:
        zf = finite(z)
        return dy * (0.5 * math.erfc(-zf * _SQRT_HALF) + zf * _INV_SQRT_2PI * fast_exp(-0.5 * zf * zf))
    if code == GELU_TANH:
        zc = min(max(z, -10.0), 10.0) if z == z else z
        gate = gelu_tanh_gate(zc)
        return dy * gate * (1.0 + 2.0 * _GELU_K * zc * (1.0 - gate) * (1.0 + 3.0 * _GELU_C * zc * zc))
    if code == SILU:
        zf = finite(z)
        s = sigmoid(zf)
        return dy * s * (1.0 + zf * (1.0 - s))
    if code == SOFTPLUS:
        return dy * sigmoid(z)
    if code == ELU:
        return dy * (1.0 if z > 0.0 else alpha * fast_exp(z))
    return dy
