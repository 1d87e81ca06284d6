"""Fused optimizer updates over one flat parameter vector: one pass, in place."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import serial_and_parallel


def _sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay, first_step):
    """torch.optim.SGD (dampening 0) for every element in one pass."""
    for i in prange(param.size):
        p = np.float64(param[i])
        g = np.float64(grad[i]) + weight_decay * p
        if momentum != 0.0:
            v = g if first_step else momentum * np.float64(velocity[i]) + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        param[i] = p - lr * g


def _adam(param, grad, exp_avg, exp_avg_sq, step_size, bias_correction2_sqrt, beta1, beta2, eps,
          weight_decay, decay_factor):
    """torch.optim.Adam/AdamW in one pass; ``decay_factor`` = 1 - lr wd for AdamW (else 1) and
    ``weight_decay`` the L2 term for Adam (else 0)."""
    for i in prange(param.size):
        p = np.float64(param[i]) * decay_factor
        g = np.float64(grad[i]) + weight_decay * p
        m = beta1 * np.float64(exp_avg[i]) + (1.0 - beta1) * g
        v = beta2 * np.float64(exp_avg_sq[i]) + (1.0 - beta2) * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = p - step_size * m / (math.sqrt(v) / bias_correction2_sqrt + eps)


sgd = serial_and_parallel(_sgd)
adam = serial_and_parallel(_adam)
