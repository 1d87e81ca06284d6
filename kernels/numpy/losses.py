"""Loss kernels on NumPy: each returns ``(value, grad)`` in one call, ``grad`` written into ``grad``.

Reductions follow PyTorch's ``reduction="mean"``: MSE and both BCEs average over every element;
cross-entropy averages over samples (every position of the leading dims); the mean of nothing
(an empty batch) is NaN, as in PyTorch. ``value`` is a 0-d array of the input dtype (so a
device backend need not synchronise to return it).
"""

from __future__ import annotations

import functools

import numpy as np

from . import special

# PyTorch clamps BCE's logs at -100 and its gradient's denominator at 1e-12.
_BCE_LOG_FLOOR = -100.0
_BCE_GRAD_EPS = 1e-12


def _mean(total, n: int, dtype) -> np.ndarray:
    with np.errstate(over="ignore"):  # a float32 loss may overflow to inf: the guard reports it
        return np.asarray(total / n if n else np.nan, dtype=dtype)


def _sum(values) -> float:
    """Sum in float64 whatever the dtype (as PyTorch and the numba backend accumulate): a float32
    BLAS dot or a float32 sum of 1e8 terms loses ~1 % (MSE of 1e8 elements of 100.1: 10172.9
    instead of 10020.0)."""
    return float(np.add.reduce(values.reshape(-1), dtype=np.float64))


def mse(pred, target, grad):
    n = pred.size
    np.subtract(pred, target, out=grad)
    value = _mean(_sum(np.square(grad)), n, pred.dtype)
    grad *= 2.0 / max(n, 1)
    return value, grad


def bce_with_logits(logits, target, grad):
    """l = max(x, 0) - x t + log1p(exp(-|x|)), per element (no cancellation between two large
    sums: confident, correct logits give ~exp(-|x|), not rounding noise); grad = sigmoid(x) - t."""
    n = logits.size
    tail = np.abs(logits)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    np.log1p(tail, out=tail)
    np.maximum(logits, 0, out=grad)
    grad -= logits * target  # exactly 0 for a confident, correct logit: then the tail is all
    grad += tail
    value = _mean(_sum(grad), n, logits.dtype)
    special.sigmoid(logits, grad)
    grad -= target
    grad *= 1.0 / max(n, 1)
    return value, grad


def bce(prob, target, grad):
    """Binary cross-entropy on probabilities, logs clamped at -100 as in PyTorch. A probability
    outside [0, 1] (or NaN) gives NaN in the loss and its gradient, as on every backend."""
    n = prob.size
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, then clamped; log(<0) = NaN
        log_p = np.maximum(np.log(prob), _BCE_LOG_FLOOR)
        log_q = np.maximum(np.log1p(-prob), _BCE_LOG_FLOOR)
    # -(t log p + (1 - t) log q) = -(log q + t (log p - log q)), per element, summed in float64
    log_p -= log_q
    log_p *= target
    log_p += log_q
    value = _mean(-_sum(log_p), n, prob.dtype)
    np.subtract(1, prob, out=grad)
    grad *= prob
    np.maximum(grad, _BCE_GRAD_EPS, out=grad)
    np.divide(np.subtract(prob, target), grad, out=grad)
    grad *= 1.0 / max(n, 1)
    outside = (prob < 0) | (prob > 1)
    if outside.any():
        grad[outside] = np.nan
    return value, grad


@functools.lru_cache(maxsize=16)
def _row_starts(rows: int, classes: int) -> np.ndarray:
    starts = np.arange(rows, dtype=np.intp) * classes
    starts.flags.writeable = False
    return starts


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(n, dtype)
    ones.flags.writeable = False
    return ones


# Largest logit spread for which one shift for the whole batch is as exact as per-row shifts:
# then every exp(z - max) is >= exp(-spread), far above the dtype's smallest normal number, so
# no row's sum can underflow. (log(tiny) is about -87 for float32 and -708 for float64.)
_GLOBAL_SHIFT_SPREAD = {np.dtype(np.float32): 60.0, np.dtype(np.float64): 600.0}


def softmax_cross_entropy(logits, target, grad):
    """Cross-entropy of softmax(logits) over the last axis, log-sum-exp stable.

    ``target`` is integer class labels of shape ``logits.shape[:-1]`` (a label outside
    ``[0, classes)`` makes its row and the loss NaN) or probabilities of ``logits.shape``.
    grad = (softmax(logits) - onehot) / n_samples, or (sum(t) softmax(logits) - t) / n_samples.
    """
    classes = logits.shape[-1]
    z = logits.reshape(-1, classes)
    g = grad.reshape(-1, classes)
    n = z.shape[0]
    if z.size == 0:
        return _mean(0.0, 0, logits.dtype), grad
    # Reductions along a short last axis are slow in NumPy, so the common case uses one shift
    # for the whole batch (exact when the spread is moderate) and a GEMV for the row sums.
    top, bottom = z.max(), z.min()
    global_shift = top - bottom <= _GLOBAL_SHIFT_SPREAD[z.dtype]  # False for NaN
    shift = top if global_shift else z.max(axis=1, keepdims=True)
    np.subtract(z, shift, out=g)
    np.exp(g, out=g)
    total = np.matmul(g, _ones(classes, g.dtype))[:, None]
    g /= total  # softmax
    if target.dtype.kind in "iu":
        labels = target.reshape(-1)
        bad = (labels < 0) | (labels >= classes)
        any_bad = bool(bad.any())
        if any_bad:  # never index outside a row: such rows become NaN
            labels = np.where(bad, 0, labels)
        # Flat positions row * classes + label: cheaper than z[rows, labels] on small batches.
        flat = _row_starts(z.shape[0], classes) + labels
        g_flat = g.reshape(-1)
        if global_shift:
            # Every probability is >= exp(-spread) / classes, far from underflow: -log(p) is exact.
            total_loss = -_sum(np.log(np.take(g_flat, flat)))
        else:
            log_total = np.log(total, out=total)
            log_total += shift  # log-sum-exp per sample
            total_loss = _sum(log_total) - _sum(np.take(z.reshape(-1), flat))
        g_flat[flat] -= 1
        if any_bad:
            g[bad] = np.nan
            total_loss = np.nan
    else:
        probs = target.reshape(-1, classes)
        log_total = np.log(total, out=total)
        log_total += shift
        # loss_i = sum_c t_c (lse - z_c) = lse * mass - sum_c t_c z_c, with mass = sum_c t_c (not
        # always 1: soft, multi-hot or partial targets), so its gradient is mass * softmax - t
        mass = np.add.reduce(probs, axis=1, dtype=np.float64)
        total_loss = float(np.dot(log_total[:, 0].astype(np.float64), mass)) - _sum(probs * z)
        g *= mass.astype(g.dtype)[:, None]
        g -= probs
    g *= 1.0 / n
    return _mean(total_loss, n, logits.dtype), grad
