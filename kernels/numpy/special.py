"""Special functions on NumPy arrays, NumPy only: stable sigmoid and softplus, and erfc.

NumPy has no erf; SciPy's is a scalar (non-SIMD) loop that is slower than the vectorised form
here, and fastnn's core depends on NumPy alone.

``erfc`` (relative error about 1e-13 in float64, 2e-7 in float32, checked against ``math.erfc``
by ``tests/test_special.py``):

- ``|x| < 0.5``: ``erfc(x) = 1 - erf(x)`` with erf's Taylor series (11 terms).
- ``x >= 0.5``: ``erfc(x) = exp(-x^2) R(x)`` where ``R(x) = erfc(x) exp(x^2)`` is smooth and
  slowly varying; ``R`` is a Chebyshev series in ``u = 1 / (1 + x)`` fitted by least squares to
  ``math.erfc(x) * exp(x^2)`` on ``x in [0.5, 26]`` (beyond that ``erfc`` underflows anyway).
  float32 evaluates the first 13 terms only, and ``exp(-x^2)`` in float64.
- ``x <= -0.5``: ``erfc(x) = 2 - erfc(-x)``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import chebyshev

_R_DOMAIN = (1.0 / 27.0, 1.0 / 1.5)
_R_COEFFICIENTS = np.array([
    0.2963131281028794, 0.2996511695184976, 0.022662741529133883, -0.0027341308340514104,
    -0.00028774759342942575, 8.915639830437769e-05, -1.6704086546772718e-06, -2.8394556397357678e-06,
    5.417454394307146e-07, 1.8711109791243605e-08, -2.908612239451763e-08, 5.6907042026037134e-09,
    1.488131535097604e-10, -3.5575532502029925e-10, 8.841004646318984e-11, -3.577951106768996e-12,
    -4.539568746414577e-12, 1.638904090399714e-12, -2.163379272512509e-13, -4.353093773787631e-14,
    3.013421909131834e-14, -7.31311719553793e-15, 4.781254684689397e-16, 1.8455384754460758e-16,
    -2.9347284064924992e-16,
])
_R_TERMS = {np.dtype(np.float32): 13, np.dtype(np.float64): len(_R_COEFFICIENTS)}
# erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), as a polynomial in x^2
_ERF_SERIES = np.array([2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                        for n in range(11)])


def sigmoid(z, out):
    """1 / (1 + e^-z): exact to rounding for every z (e^-z may overflow to inf, giving 0)."""
    with np.errstate(over="ignore"):
        np.negative(z, out=out)
        np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def softplus(z, out):
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|): no overflow for any z."""
    np.abs(z, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(z, 0)
    return out


def erfc(x, out):
    """The complementary error function, elementwise (NaN -> NaN, +inf -> 0, -inf -> 2).
    ``out`` may be ``x``."""
    a = np.abs(x)
    # x >= 0.5 branch, evaluated everywhere and selected below
    low, high = _R_DOMAIN
    u = np.add(a, 1.0)
    np.reciprocal(u, out=u)
    u -= (low + high) / 2
    u *= 2 / (high - low)  # map the fitted domain onto [-1, 1]
    tail = chebyshev.chebval(u, _R_COEFFICIENTS[: _R_TERMS[np.dtype(x.dtype)]]).astype(x.dtype, copy=False)
    # exp(-x^2) in float64: in float32 the rounding of x^2 alone costs 1e-5 relative at x = 9
    a64 = a.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):
        square = np.multiply(a64, a64)
    np.negative(square, out=square)
    np.exp(square, out=square)
    tail *= square  # erfc(|x|) for |x| >= 0.5
    # |x| < 0.5 branch: 1 - erf(|x|) by the Taylor series in x^2 (Horner)
    small = np.minimum(a, 0.5)  # the series is only used there; no overflow elsewhere
    x2 = np.multiply(small, small)
    series = np.full_like(a, _ERF_SERIES[-1])
    for coefficient in _ERF_SERIES[-2::-1]:
        series *= x2
        series += coefficient
    series *= small
    np.subtract(1, series, out=series)
    np.copyto(tail, series, where=a < 0.5)
    # erfc(-|x|) = 2 - erfc(|x|); the mask is taken before ``out`` (which may be x) is written
    negative = x < 0
    np.copyto(out, tail)
    np.subtract(2, tail, out=out, where=negative)
    return out
