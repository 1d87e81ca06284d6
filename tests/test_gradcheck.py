"""Finite-difference gradient checks (float64) for every layer, activation and loss."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.activations import ACTIVATIONS

TOL = 1e-6


def _inputs(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the ReLU-family kinks at 0
    return x


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_linear_with_each_fused_activation(backend, activation):
    layer = fastnn.Linear(4, 3, activation, dtype=np.float64, seed=1)
    assert fastnn.gradcheck(layer, _inputs((5, 4))) < TOL


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_layers(backend, activation):
    layer = fastnn.Activation(activation, dtype=np.float64)
    assert fastnn.gradcheck(layer, _inputs((3, 4), seed=2)) < TOL


def test_named_activation_layers_and_softmax(backend):
    for layer in (fastnn.ReLU(dtype=np.float64), fastnn.LeakyReLU(0.1, dtype=np.float64),
                  fastnn.Sigmoid(dtype=np.float64), fastnn.Tanh(dtype=np.float64), fastnn.GELU(dtype=np.float64),
                  fastnn.SiLU(dtype=np.float64), fastnn.Softplus(dtype=np.float64), fastnn.ELU(0.7, dtype=np.float64),
                  fastnn.Softmax(dtype=np.float64)):
        assert fastnn.gradcheck(layer, _inputs((3, 5), seed=3)) < TOL, layer


def test_linear_over_leading_dims_and_without_bias(backend):
    layer = fastnn.Linear(3, 2, "tanh", bias=False, dtype=np.float64, seed=4)
    assert fastnn.gradcheck(layer, _inputs((2, 3, 3), seed=5)) < TOL


def test_network_seed003_style(backend):
    """Linear + separate activation layers, as in seed 003's ActivationLayer design."""
    net = fastnn.Network([fastnn.Linear(6, 5, dtype=np.float64, seed=6), fastnn.Sigmoid(dtype=np.float64),
                          fastnn.Linear(5, 4, "relu", dtype=np.float64, seed=7),
                          fastnn.Linear(4, 3, dtype=np.float64, seed=8), fastnn.Softmax(dtype=np.float64)])
    assert fastnn.gradcheck(net, _inputs((4, 6), seed=9)) < TOL


def test_losses():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((4, 5))
    assert fastnn.gradcheck(fastnn.losses.CrossEntropy(), logits, rng.integers(0, 5, 4)) < TOL
    assert fastnn.gradcheck(fastnn.losses.CrossEntropy(), logits, rng.dirichlet(np.ones(5), 4)) < TOL
    targets = rng.random((4, 5))
    assert fastnn.gradcheck(fastnn.losses.BCEWithLogits(), logits, targets) < TOL
    assert fastnn.gradcheck(fastnn.losses.BCE(), rng.uniform(0.05, 0.95, (4, 5)), targets) < TOL
    assert fastnn.gradcheck(fastnn.losses.MSE(), logits, targets) < TOL


def test_gradcheck_catches_a_wrong_gradient():
    """The checker itself must be able to fail: a layer whose backward is off by 10 %."""

    class WrongTanh(fastnn.Tanh):
        def backward(self, dy, need_input_grad=True):
            return super().backward(dy, need_input_grad) * 1.1

    assert fastnn.gradcheck(WrongTanh(dtype=np.float64), _inputs((3, 3))) > 0.05


def test_gradcheck_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        fastnn.gradcheck(fastnn.Linear(2, 2), np.zeros((1, 2)))
