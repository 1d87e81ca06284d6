"""Layer normalisation over the last axis (PyTorch's ``nn.LayerNorm``), forward and fused backward.

Rows are ``x (rows, n)``. Forward: ``mean = sum(x) / n``, ``var = sum((x - mean)^2) / n`` (biased,
as PyTorch normalises), ``rstd = 1 / sqrt(var + eps)``, ``y = (x - mean) rstd * weight + bias``;
``mean`` and ``rstd`` (rows,) are kept for the backward. Backward, with ``xhat = (x - mean) rstd``
and ``g = dy * weight``: ``dx = rstd (g - mean(g) - xhat mean(g xhat))`` per row, ``dweight =
sum_rows(dy xhat)``, ``dbias = sum_rows(dy)``. Statistics and sums are computed in float64 for both
dtypes (every backend does the same) and rounded once on store, so float32 rows never overflow
the variance; float64 rows with values beyond ~1e154 do (as in PyTorch), and normalise to 0.
"""

from __future__ import annotations

import numpy as np


def layer_norm(x, weight, bias, eps, y, mean, rstd):
    """``y``, ``mean``, ``rstd`` written; ``weight``/``bias`` (n,) or None."""
    if x.shape[0] == 0:
        return y
    x64 = x.astype(np.float64)
    m = x64.mean(axis=1)
    centred = x64 - m[:, None]
    r = 1.0 / np.sqrt(np.mean(centred * centred, axis=1) + eps)
    out = centred * r[:, None]
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    y[...] = out
    mean[...] = m
    rstd[...] = r
    return y


def layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
    """``dx`` (rows, n), and ``dweight``/``dbias`` (n,) when given (else None), written."""
    dy64 = dy.astype(np.float64)
    xhat = (x.astype(np.float64) - mean.astype(np.float64)[:, None]) * rstd.astype(np.float64)[:, None]
    if dweight is not None:
        dweight[...] = np.einsum("ij,ij->j", dy64, xhat) if x.shape[0] else 0
    if dbias is not None:
        dbias[...] = dy64.sum(axis=0)
    if dx is not None and x.shape[0]:
        g = dy64 * weight if weight is not None else dy64
        dx[...] = rstd.astype(np.float64)[:, None] * (g - g.mean(axis=1, keepdims=True)
                                                      - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, dweight, dbias


# --- batch normalisation (PyTorch's nn.BatchNorm1d in training mode) over the rows of (rows, n) ---
#
# Per column j of x (rows, n): mean_j, var_j = the column's mean and biased variance (float64),
# rstd_j = 1 / sqrt(var_j + eps), y = (x - mean) rstd * weight + bias; mean, rstd and var (n,) are
# kept (var for the running estimate). Backward, in one fused pass per column with xhat = (x -
# mean) rstd: dweight = sum_rows(dy xhat), dbias = sum_rows(dy), dx = weight rstd (dy - dbias /
# rows - xhat dweight / rows).


def batch_norm(x, weight, bias, eps, y, mean, rstd, var):
    """``y``, ``mean``, ``rstd``, ``var`` written; ``weight``/``bias`` (n,) or None."""
    if x.shape[0] == 0:
        return y
    x64 = x.astype(np.float64)
    m = x64.mean(axis=0)
    centred = x64 - m
    v = np.mean(centred * centred, axis=0)
    r = 1.0 / np.sqrt(v + eps)
    out = centred * r
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    y[...] = out
    mean[...], rstd[...], var[...] = m, r, v
    return y


def batch_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
    """``dx`` (rows, n), and ``dweight``/``dbias`` (n,) when given (else None), written."""
    rows = x.shape[0]
    dy64 = dy.astype(np.float64)
    xhat = (x.astype(np.float64) - mean.astype(np.float64)) * rstd.astype(np.float64)
    sum_dy = dy64.sum(axis=0)
    sum_dy_xhat = np.einsum("ij,ij->j", dy64, xhat) if rows else np.zeros(x.shape[1])
    if dweight is not None:
        dweight[...] = sum_dy_xhat
    if dbias is not None:
        dbias[...] = sum_dy
    if dx is not None and rows:
        scale = rstd.astype(np.float64) * (weight.astype(np.float64) if weight is not None else 1.0)
        dx[...] = scale * (dy64 - sum_dy / rows - xhat * (sum_dy_xhat / rows))
    return dx, dweight, dbias
