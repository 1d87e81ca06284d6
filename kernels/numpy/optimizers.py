"""In-place optimizer updates on NumPy, with PyTorch's update rules.

Each kernel updates one flat parameter vector (every parameter of a network lives in one buffer,
so an update is a handful of passes over memory, not one Python call per tensor). ``scratch``
and ``scratch2`` are caller-owned buffers of the parameter's shape, reused between steps; nothing
here allocates.
"""

from __future__ import annotations

import math

import numpy as np


def _with_l2(param, grad, weight_decay, scratch):
    """grad + weight_decay * param (in ``scratch``), or grad itself when there is no decay."""
    if not weight_decay:
        return grad
    np.multiply(param, weight_decay, out=scratch)
    scratch += grad
    return scratch


def sgd(param, grad, velocity, scratch, *, lr, momentum, nesterov, weight_decay, first_step):
    """torch.optim.SGD (dampening 0): g = grad + wd p; v = g on the first step, else mu v + g;
    p -= lr (g + mu v) with Nesterov, lr v with momentum, lr g without."""
    g = _with_l2(param, grad, weight_decay, scratch)
    if momentum:
        if first_step:
            np.copyto(velocity, g)
        else:
            velocity *= momentum
            velocity += g
        if nesterov:
            np.multiply(g, lr, out=scratch)  # g may be scratch: in place is fine
            param -= scratch
            np.multiply(velocity, lr * momentum, out=scratch)
        else:
            np.multiply(velocity, lr, out=scratch)
    else:
        np.multiply(g, lr, out=scratch)
    param -= scratch
    return param


def adam(param, grad, exp_avg, exp_avg_sq, scratch, scratch2, *, step, lr, beta1, beta2, eps,
         weight_decay, decoupled):
    """torch.optim.Adam (L2 penalty added to the gradient) or AdamW (``decoupled``: p *= 1 - lr wd).

    m += (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), t = ``step`` (1-based)."""
    if decoupled:
        if weight_decay:
            param *= 1.0 - lr * weight_decay
        g = grad
    else:
        g = _with_l2(param, grad, weight_decay, scratch2)
    np.subtract(g, exp_avg, out=scratch)
    scratch *= 1.0 - beta1
    exp_avg += scratch
    exp_avg_sq *= beta2
    np.multiply(g, g, out=scratch)
    scratch *= 1.0 - beta2
    exp_avg_sq += scratch
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    np.sqrt(exp_avg_sq, out=scratch)
    scratch *= 1.0 / bias_correction2_sqrt
    scratch += eps
    np.divide(exp_avg, scratch, out=scratch)
    scratch *= lr / bias_correction1
    param -= scratch
    return param
