"""Layer normalisation over the last axis, rows in parallel: the maths of
``kernels/numpy/normalization.py`` in one pass per row (float64 statistics, rounded on store)."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import serial_and_parallel


def _layer_norm(x, weight, bias, has_weight, has_bias, eps, y, mean, rstd):
    """x, y (rows, n); weight, bias (n,) (ignored unless has_*); mean, rstd (rows,)."""
    rows, n = x.shape
    for i in prange(rows):
        s = 0.0
        for j in range(n):
            s += np.float64(x[i, j])
        m = s / n
        v = 0.0
        for j in range(n):
            d = np.float64(x[i, j]) - m
            v += d * d
        r = 1.0 / math.sqrt(v / n + eps)
        for j in range(n):
            out = (np.float64(x[i, j]) - m) * r
            if has_weight:
                out *= np.float64(weight[j])
            if has_bias:
                out += np.float64(bias[j])
            y[i, j] = out
        mean[i] = m
        rstd[i] = r


def _layer_norm_dx(dy, x, weight, has_weight, mean, rstd, dx):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)) per row, g = dy * weight."""
    rows, n = x.shape
    for i in prange(rows):
        m, r = np.float64(mean[i]), np.float64(rstd[i])
        sum_g = 0.0
        sum_gx = 0.0
        for j in range(n):
            g = np.float64(dy[i, j]) * (np.float64(weight[j]) if has_weight else 1.0)
            sum_g += g
            sum_gx += g * (np.float64(x[i, j]) - m) * r
        mean_g, mean_gx = sum_g / n, sum_gx / n
        for j in range(n):
            g = np.float64(dy[i, j]) * (np.float64(weight[j]) if has_weight else 1.0)
            dx[i, j] = r * (g - mean_g - (np.float64(x[i, j]) - m) * r * mean_gx)


def _layer_norm_params(dy, x, mean, rstd, dweight, dbias, has_dweight, has_dbias):
    """dweight[j] = sum_i dy xhat, dbias[j] = sum_i dy: columns in parallel, rows in order."""
    rows, n = x.shape
    for j in prange(n):
        sw = 0.0
        sb = 0.0
        for i in range(rows):
            d = np.float64(dy[i, j])
            sw += d * (np.float64(x[i, j]) - np.float64(mean[i])) * np.float64(rstd[i])
            sb += d
        if has_dweight:
            dweight[j] = sw
        if has_dbias:
            dbias[j] = sb


layer_norm = serial_and_parallel(_layer_norm)
layer_norm_dx = serial_and_parallel(_layer_norm_dx)
layer_norm_params = serial_and_parallel(_layer_norm_params)


def _batch_norm(x, weight, bias, has_weight, has_bias, eps, y, mean, rstd, var):
    """Per column of ``x (rows, n)``: the statistics in float64, swept row by row (each sweep reads
    rows in memory order and keeps one sum per column), then the rows in parallel."""
    rows, n = x.shape
    s = np.zeros(n)
    for i in range(rows):
        for j in range(n):
            s[j] += np.float64(x[i, j])
    m = s / rows
    v = np.zeros(n)
    for i in range(rows):
        for j in range(n):
            d = np.float64(x[i, j]) - m[j]
            v[j] += d * d
    v /= rows
    r = 1.0 / np.sqrt(v + eps)
    for i in prange(rows):
        for j in range(n):
            out = (np.float64(x[i, j]) - m[j]) * r[j]
            if has_weight:
                out *= np.float64(weight[j])
            if has_bias:
                out += np.float64(bias[j])
            y[i, j] = out
    for j in range(n):
        mean[j], rstd[j], var[j] = m[j], r[j], v[j]


def _batch_norm_backward(dy, x, weight, has_weight, mean, rstd, dx, has_dx, dweight, dbias, has_dweight, has_dbias):
    """One sweep for the column sums of dy and dy * xhat, one (rows in parallel) for dx."""
    rows, n = x.shape
    sum_dy = np.zeros(n)
    sum_dy_xhat = np.zeros(n)
    for i in range(rows):
        for j in range(n):
            d = np.float64(dy[i, j])
            sum_dy[j] += d
            sum_dy_xhat[j] += d * (np.float64(x[i, j]) - np.float64(mean[j])) * np.float64(rstd[j])
    for j in range(n):
        if has_dweight:
            dweight[j] = sum_dy_xhat[j]
        if has_dbias:
            dbias[j] = sum_dy[j]
    if has_dx:
        for i in prange(rows):
            for j in range(n):
                r = np.float64(rstd[j])
                scale = r * np.float64(weight[j]) if has_weight else r
                xhat = (np.float64(x[i, j]) - np.float64(mean[j])) * r
                dx[i, j] = scale * (np.float64(dy[i, j]) - sum_dy[j] / rows - xhat * (sum_dy_xhat[j] / rows))


batch_norm = serial_and_parallel(_batch_norm)
batch_norm_backward = serial_and_parallel(_batch_norm_backward)
