"""Per-element maths, inlined into the kernels: a vectorisable exp and every activation.

Functions follow their argument's precision: float32 data is computed in float32 (twice the
SIMD lanes of float64), float64 in float64. Constants go through ``like(x, c)``, which types
``c`` as ``x``'s type at compile time (a bare Python float would promote float32 maths to float64).

Activations are selected by an integer code; each kernel is built for one code (see
``elementwise``) and inlines that activation's function alone, so the loop vectorises. The codes are
the positions of the names in ``fastnn.activations.ACTIVATIONS`` (checked by ``kernelset``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.core import types
from numba.extending import overload

from .jit import int32_as_float32, int64_as_float64

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, SOFTPLUS, ELU = range(10)
CODES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "softplus", "elu")


def like(x, c):
    """``c`` as a value of ``x``'s floating type (compile-time in jitted code)."""
    return type(x)(c)


@overload(like, inline="always")
def _like(x, c):
    if x == types.float32:
        return lambda x, c: np.float32(c)
    return lambda x, c: np.float64(c)


# --- exp ------------------------------------------------------------------------------------------
# Cody-Waite range reduction x = n ln2 + r, |r| <= ln(2)/2, then 2^n built from its bits.
# n is rounded by adding and subtracting 1.5 * 2^(mantissa bits): math.floor, math.ldexp and
# libm's exp are calls that stop LLVM from vectorising the loop (measured 3x slower).


def fast_exp(x):
    """e^x: within 1 ulp in float64 and 2 ulp in float32; inf, 0 and NaN where libm gives them."""
    return math.exp(x)


@overload(fast_exp)
def _fast_exp(x):
    if x == types.float32:
        return _exp32
    return _exp64


# Taylor to degree 13 (< 0.1 ulp left out), highest coefficient first for Horner's rule
_T64_HORNER = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))


def _exp64(x):
    xc = min(max(x, -745.1332191019412), 709.782712893384)
    n = (1.4426950408889634 * xc + 6755399441055744.0) - 6755399441055744.0
    r = xc - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
    e = _T64_HORNER[0]
    for coefficient in _T64_HORNER[1:]:  # Horner's rule; a constant 13-step loop LLVM unrolls
        e = e * r + coefficient
    k = np.int64(n)
    half = k >> 1  # 2^k as two normal powers of two, so results down to 2^-1074 stay exact
    e = e * int64_as_float64((half + 1023) << 52) * int64_as_float64((k - half + 1023) << 52)
    e = math.inf if x > 709.782712893384 else e
    e = 0.0 if x < -745.1332191019412 else e
    return x if x != x else e


def _exp32(x):
    xc = min(max(x, np.float32(-103.97)), np.float32(88.72283))
    n = (np.float32(1.44269504) * xc + np.float32(12582912.0)) - np.float32(12582912.0)
    # Cephes' expf: ln 2 = 0.693359375 - 2.12194440e-4, and its degree-7 polynomial
    r = xc - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * r * r + r + np.float32(1.0)
    k = np.int32(n)
    half = k >> np.int32(1)
    e = e * int32_as_float32((half + np.int32(127)) << np.int32(23)) \
        * int32_as_float32((k - half + np.int32(127)) << np.int32(23))
    e = np.float32(math.inf) if x > np.float32(88.72283) else e
    e = np.float32(0.0) if x < np.float32(-103.97) else e
    return x if x != x else e


# --- building blocks --------------------------------------------------------------------------


@njit(inline="always", cache=True)
def sigmoid(x):
    one = like(x, 1.0)
    return one / (one + fast_exp(-x))


@njit(inline="always", cache=True)
def tanh(x):
    """(1 - e) / (1 + e) with e = e^(-2|x|), and the series below 0.01 where 1 - e cancels."""
    one = like(x, 1.0)
    a = abs(x)
    e = fast_exp(like(x, -2.0) * a)
    t = (one - e) / (one + e)
    a2 = a * a
    small = a * (one - a2 * (like(x, 1.0 / 3.0) - a2 * (like(x, 2.0 / 15.0) - a2 * like(x, 17.0 / 315.0))))
    t = small if a < like(x, 0.01) else t
    return -t if x < like(x, 0.0) else (t if x == x else x)


@njit(inline="always", cache=True)
def softplus(x):
    return max(x, like(x, 0.0)) + math.log1p(fast_exp(-abs(x)))


@njit(inline="always", cache=True)
def largest(x):
    """The largest finite value of x's type."""
    big = like(x, np.finfo(np.float64).max)  # rounds to inf in float32
    return big if big != like(x, math.inf) else like(x, np.finfo(np.float32).max)


@njit(inline="always", cache=True)
def finite(x):
    """x with +-inf clamped to the type's largest finite value (NaN kept), so gated forms like
    x * g'(x) reach their limits instead of inf * 0 = NaN."""
    big = largest(x)
    return min(max(x, -big), big) if x == x else x


@njit(inline="always", cache=True)
def no_minus_inf(x):
    """x with -inf raised to the most negative finite value (NaN and +inf kept), for forward
    gates: x * sigmoid(x) at -inf is then -big * 0 = -0, and +inf * 1 stays +inf."""
    big = largest(x)
    return x if (x != x or x > -big) else -big


@njit(inline="always", cache=True)
def gelu_phi(x):
    """The standard normal CDF, via libm's erfc (in double)."""
    return like(x, 0.5 * math.erfc(-np.float64(x) * 0.7071067811865476))


@njit(inline="always", cache=True)
def gelu_tanh_gate(x):
    return sigmoid(like(x, 2.0 * math.sqrt(2.0 / math.pi)) * x * (like(x, 1.0) + like(x, 0.044715) * x * x))


# --- activations: one function per activation and direction -----------------------------------
# Chosen by code in Python when a kernel is built (``FORWARD[code]``), so a kernel inlines only its
# own activation: inlining one switch over all ten and pruning it afterwards made every kernel
# copy all ten bodies (six float32 bias+activation kernels compiled in 4.5 s; now 2.3 s).


@njit(inline="always", cache=True)
def _identity(z, alpha):
    return z


@njit(inline="always", cache=True)
def _relu(z, alpha):
    zero = like(z, 0.0)
    return z if (z > zero or z != z) else zero


@njit(inline="always", cache=True)
def _leaky_relu(z, alpha):
    return z if z > like(z, 0.0) else alpha * z


@njit(inline="always", cache=True)
def _sigmoid(z, alpha):
    return sigmoid(z)


@njit(inline="always", cache=True)
def _tanh(z, alpha):
    return tanh(z)


@njit(inline="always", cache=True)
def _gelu(z, alpha):
    zf = no_minus_inf(z)
    return zf * gelu_phi(zf)


@njit(inline="always", cache=True)
def _gelu_tanh(z, alpha):
    zf = no_minus_inf(z)
    return zf * gelu_tanh_gate(zf)


@njit(inline="always", cache=True)
def _silu(z, alpha):
    zf = no_minus_inf(z)
    return zf * sigmoid(zf)


@njit(inline="always", cache=True)
def _softplus(z, alpha):
    return softplus(z)


@njit(inline="always", cache=True)
def _elu(z, alpha):
    return z if z > like(z, 0.0) else alpha * math.expm1(z)


# dy * g'(z), given z and y = g(z); NaN in z gives NaN (identity excepted)


@njit(inline="always", cache=True)
def _identity_backward(dy, z, y, alpha):
    return dy


@njit(inline="always", cache=True)
def _relu_backward(dy, z, y, alpha):
    zero, one = like(z, 0.0), like(z, 1.0)
    return dy * (one if y > zero else (y if y != y else zero))


@njit(inline="always", cache=True)
def _leaky_relu_backward(dy, z, y, alpha):
    zero, one = like(z, 0.0), like(z, 1.0)
    return dy * (one if z > zero else (alpha if z <= zero else z))


@njit(inline="always", cache=True)
def _sigmoid_backward(dy, z, y, alpha):
    return dy * (y * (like(z, 1.0) - y))


@njit(inline="always", cache=True)
def _tanh_backward(dy, z, y, alpha):
    return dy * (like(z, 1.0) - y * y)


@njit(inline="always", cache=True)
def _gelu_backward(dy, z, y, alpha):
    zf = finite(z)
    return dy * (gelu_phi(zf) + zf * like(z, 1.0 / math.sqrt(2.0 * math.pi)) * fast_exp(like(z, -0.5) * zf * zf))


@njit(inline="always", cache=True)
def _gelu_tanh_backward(dy, z, y, alpha):
    one = like(z, 1.0)
    zc = min(max(z, like(z, -10.0)), like(z, 10.0)) if z == z else z
    gate = gelu_tanh_gate(zc)
    k2 = like(z, 2.0 * math.sqrt(2.0 / math.pi))
    return dy * gate * (one + k2 * zc * (one - gate) * (one + like(z, 3.0 * 0.044715) * zc * zc))


@njit(inline="always", cache=True)
def _silu_backward(dy, z, y, alpha):
    one = like(z, 1.0)
    zf = finite(z)
    s = sigmoid(zf)
    return dy * s * (one + zf * (one - s))


@njit(inline="always", cache=True)
def _softplus_backward(dy, z, y, alpha):
    return dy * sigmoid(z)


@njit(inline="always", cache=True)
def _elu_backward(dy, z, y, alpha):
    return dy * (like(z, 1.0) if z > like(z, 0.0) else alpha * fast_exp(z))


# g(z, alpha) and dy * g'(z) as (dy, z, y, alpha), by code; ``alpha`` has z's type
FORWARD = (_identity, _relu, _leaky_relu, _sigmoid, _tanh, _gelu, _gelu_tanh, _silu, _softplus, _elu)
BACKWARD = (_identity_backward, _relu_backward, _leaky_relu_backward, _sigmoid_backward, _tanh_backward,
            _gelu_backward, _gelu_tanh_backward, _silu_backward, _softplus_backward, _elu_backward)
