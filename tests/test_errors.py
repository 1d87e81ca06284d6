"""Bad input gets an error that names what was expected and what was given."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn


@pytest.fixture
def digits_net():
    return fastnn.Network([fastnn.Linear(64, 16, "relu", seed=0), fastnn.Linear(16, 10, seed=1)])


def test_wrong_feature_count_names_both_shapes(digits_net):
    with pytest.raises(ValueError, match=r"\(\*, 64\).*\(5, 63\)"):
        digits_net.forward(np.zeros((5, 63)))
    with pytest.raises(ValueError, match=r"\(\*, 64\).*\(8, 63\)"):
        digits_net.fit(np.zeros((8, 63)), np.zeros(8, int), "cross_entropy", progress=False)
    with pytest.raises(ValueError, match=r"Linear\(3, 2\) expects inputs of shape \(\*, 3\), got \(4,\)"):
        fastnn.Linear(3, 2).forward(np.zeros(4))


def test_x_y_length_mismatch(digits_net):
    with pytest.raises(ValueError, match="X has 10 samples but its targets have 9"):
        digits_net.fit(np.zeros((10, 64)), np.zeros(9, int), "cross_entropy", progress=False)


def test_empty_training_set(digits_net):
    with pytest.raises(ValueError, match=r"at least one sample; X has shape \(0, 64\)"):
        digits_net.fit(np.zeros((0, 64)), np.zeros(0, int), "cross_entropy", progress=False)
    assert np.isnan(digits_net.evaluate(np.zeros((0, 64)), np.zeros(0, int), loss="cross_entropy")["loss"])


def test_labels_out_of_range(digits_net):
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 10\), got values from 0 to 10"):
        digits_net.fit(np.zeros((3, 64)), np.array([0, 5, 10]), "cross_entropy", progress=False)
    with pytest.raises(ValueError, match=r"from -1 to 2"):
        fastnn.losses.CrossEntropy()(np.zeros((2, 3)), np.array([-1, 2]))
    with pytest.raises(ValueError, match="class labels must be integers"):
        fastnn.losses.CrossEntropy()(np.zeros((2, 3)), np.array([0.0, 2.0]))


def test_binary_targets_and_probabilities_checked():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        fastnn.losses.BCEWithLogits()(np.zeros((2, 1)), np.array([[0.0], [2.0]]))
    with pytest.raises(ValueError, match=r"expects probabilities in \[0, 1\].*BCEWithLogits"):
        fastnn.losses.BCE()(np.array([[1.5]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match prediction shape \(2, 1\)"):
        fastnn.losses.MSE()(np.zeros((2, 1)), np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_to_fit(digits_net, bad):
    X = np.zeros((6, 64))
    X[4, 7] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinite values .first in sample 4"):
        digits_net.fit(X, np.zeros(6, int), "cross_entropy", progress=False)
    y = np.zeros((6, 10))
    y[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        digits_net.fit(np.zeros((6, 64)), y, "mse", progress=False)


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown activation 'relu6'; expected one of \[.*'relu'"):
        fastnn.Linear(2, 2, "relu6")
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; expected a Loss or one of \["):
        fastnn.Network([fastnn.Linear(2, 1)]).fit(np.zeros((2, 2)), np.zeros((2, 1)), "hinge", progress=False)
    expected = r"unknown backend 'tpu'; expected one of \['numpy', 'numba', 'cupy', 'auto'\]"
    with pytest.raises(ValueError, match=expected):
        fastnn.set_backend("tpu")
    with pytest.raises(ValueError, match="unknown init 'orthogonal'"):
        fastnn.Linear(2, 2, init="orthogonal")


def test_bad_constructor_and_training_arguments():
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        fastnn.Linear(0, 3)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got 'int32'"):
        fastnn.Linear(2, 3, dtype="int32")
    with pytest.raises(ValueError, match="lr must be > 0.0, got -0.1"):
        fastnn.SGD(lr=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires momentum > 0"):
        fastnn.SGD(0.1, nesterov=True)
    net = fastnn.Network([fastnn.Linear(2, 1)])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        net.fit(np.zeros((2, 2)), np.zeros((2, 1)), "mse", batch_size=0, progress=False)


def test_assigning_parameters_checks_shape():
    layer = fastnn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 3\) \(out, in\), got \(3, 4\)"):
        layer.weight = np.zeros((3, 4))
    with pytest.raises(ValueError, match="bias=False"):
        fastnn.Linear(3, 4, bias=False).bias = np.zeros(4)


def test_network_structure_errors():
    with pytest.raises(ValueError, match=r"Linear\(5, 2\) expects 5 input features but the previous layers produce 4"):
        fastnn.Network([fastnn.Linear(3, 4), fastnn.ReLU(), fastnn.Linear(5, 2)])
    with pytest.raises(TypeError, match="dtype float64 but the network is float32"):
        fastnn.Network([fastnn.Linear(3, 4), fastnn.Linear(4, 2, dtype=np.float64)])
    with pytest.raises(TypeError, match="expects a fastnn Layer, got int"):
        fastnn.Network().add(3)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        fastnn.Linear(2, 2).backward(np.zeros((1, 2)))
    layer = fastnn.Linear(2, 3)
    layer.forward(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(4, 3\), got \(4, 2\)"):
        layer.backward(np.zeros((4, 2)))


def test_activation_layer_parameters_by_position_or_pytorch_name():
    assert fastnn.LeakyReLU(0.2).alpha == fastnn.LeakyReLU(negative_slope=0.2).alpha == 0.2
    assert fastnn.ELU(alpha=0.5).alpha == 0.5
    with pytest.raises(TypeError, match="its parameter is 'negative_slope'"):
        fastnn.LeakyReLU(slope=0.2)
