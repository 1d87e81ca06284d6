"""The NumPy backend: the reference every other backend is checked against."""

from __future__ import annotations

import numpy as np

from ..kernels.numpy import activations, dropout, linear, losses, normalization, optimizers
from .base import Backend, KernelSet

NUMPY_KERNELS = KernelSet(
    forward=activations.FORWARD,
    backward=activations.BACKWARD,
    softmax=activations.softmax,
    softmax_backward=activations.softmax_backward,
    matmul=linear.matmul,
    bias_add=linear.bias_add,
    bias_activation=linear.bias_activation,
    linear_forward=linear.linear_forward,
    linear_backward=linear.linear_backward,
    mse=losses.mse,
    bce=losses.bce,
    bce_with_logits=losses.bce_with_logits,
    softmax_cross_entropy=losses.softmax_cross_entropy,
    sgd=optimizers.sgd,
    adam=optimizers.adam,
    dropout=dropout.dropout,
    layer_norm=normalization.layer_norm,
    layer_norm_backward=normalization.layer_norm_backward,
    batch_norm=normalization.batch_norm,
    batch_norm_backward=normalization.batch_norm_backward,
)


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    kernels = NUMPY_KERNELS

    def take_rows(self, x, indices, out):
        # mode="clip" lets NumPy gather straight into ``out``; "raise" would buffer a copy.
        # The indices come from a permutation, so they are always in range.
        return np.take(x, indices, axis=0, out=out, mode="clip")
