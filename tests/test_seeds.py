"""The lecture notes' worked examples (../shared/seeds), reproduced number for number."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from reference import host


def test_seed000_xor_single_backprop_step(backend):
    """2-2-1 net, ReLU hidden, sigmoid output, BCE, SGD lr 0.1, input (0, 1), target 1."""
    hidden = fastnn.Linear(2, 2, "relu", dtype=np.float64)
    output = fastnn.Linear(2, 1, "sigmoid", dtype=np.float64)
    hidden.weight = [[0.4, -0.2], [0.1, 0.6]]  # (out, in): w_ij, i receives, j sends
    hidden.bias = [0.3, -0.4]
    output.weight = [[-0.5, 0.8]]
    output.bias = [-0.7]
    net = fastnn.Network([hidden, output])
    x, y = np.array([[0.0, 1.0]]), np.array([[1.0]])

    y_hat = net.forward(x)
    np.testing.assert_allclose(host(hidden._slot[0]), [[0.1, 0.2]], atol=1e-12)  # z1, z2
    np.testing.assert_allclose(host(output._slot[0]), [[-0.59]], atol=1e-12)  # z3
    assert float(y_hat[0, 0]) == pytest.approx(0.3566, abs=5e-5)

    loss, dloss = fastnn.losses.BCE()(y_hat, y)
    assert float(loss) == pytest.approx(1.0310, abs=5e-5)
    net.backward(dloss)
    dz3 = float(output._slot[2][0, 0])
    assert dz3 == pytest.approx(-0.6434, abs=5e-5)  # y_hat - y
    np.testing.assert_allclose(host(output.grads["weight"]), [[-0.06434, -0.1287]], atol=5e-5)
    np.testing.assert_allclose(host(output.grads["bias"]), [-0.6434], atol=5e-5)
    np.testing.assert_allclose(host(hidden._slot[2]), [[0.3217, -0.5147]], atol=5e-5)  # dz_hidden
    np.testing.assert_allclose(host(hidden.grads["weight"]), [[0, 0.3217], [0, -0.5147]], atol=5e-5)

    fastnn.SGD(lr=0.1).step(net)
    np.testing.assert_allclose(host(output.weight), [[-0.4936, 0.8129]], atol=5e-5)
    assert float(output.bias[0]) == pytest.approx(-0.6357, abs=5e-5)
    np.testing.assert_allclose(host(hidden.weight), [[0.4, -0.23217], [0.1, 0.65147]], atol=5e-5)
    np.testing.assert_allclose(host(hidden.bias), [0.26783, -0.34853], atol=5e-5)


def test_seed000_bce_with_logits_gives_the_same_step(backend):
    """The same step with the fused, logits-based loss: identical gradients."""
    hidden = fastnn.Linear(2, 2, "relu", dtype=np.float64)
    output = fastnn.Linear(2, 1, dtype=np.float64)
    hidden.weight, hidden.bias = [[0.4, -0.2], [0.1, 0.6]], [0.3, -0.4]
    output.weight, output.bias = [[-0.5, 0.8]], [-0.7]
    net = fastnn.Network([hidden, output])
    logits = net.forward([[0.0, 1.0]])
    loss, grad = fastnn.losses.BCEWithLogits()(logits, [[1.0]])
    assert float(loss) == pytest.approx(1.0310, abs=5e-5)
    assert float(grad[0, 0]) == pytest.approx(-0.6434, abs=5e-5)


def test_seed001_linear_3_4_then_sigmoid_layer(backend):
    """Linear(3, 4) with weights 1..12 and ReLU; then a zero-initialised Linear(4, 2) + sigmoid."""
    layer1 = fastnn.Linear(3, 4, "relu", dtype=np.float64)
    layer1.weight = np.arange(1, 13).reshape(4, 3)
    layer1.bias = np.zeros(4)
    assert layer1.weight.shape == (4, 3)  # nn.Linear(3, 4).weight is 4x3
    z = layer1.forward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(host(z), [14, 32, 50, 68])
    dx = layer1.backward(np.full(4, 0.5))
    np.testing.assert_array_equal(host(dx), [11, 13, 15])
    np.testing.assert_array_equal(host(layer1.grads["weight"]), np.tile([0.5, 1.0, 1.5], (4, 1)))
    np.testing.assert_array_equal(host(layer1.grads["bias"]), [0.5] * 4)

    layer2 = fastnn.Linear(4, 2, "sigmoid", init="zeros", dtype=np.float64)
    a2 = layer2.forward(z)
    np.testing.assert_array_equal(host(a2), [0.5, 0.5])
    layer2.backward(np.full(2, 0.5))  # dz2 = 0.5 * sigmoid'(0) = 0.125
    np.testing.assert_array_equal(host(layer2.grads["bias"]), [0.125, 0.125])
    np.testing.assert_array_equal(host(layer2.grads["weight"]), np.tile([1.75, 4, 6.25, 8.5], (2, 1)))


def test_seed001_parameter_count_2_3_1():
    net = fastnn.Network([fastnn.Linear(2, 3, "sigmoid"), fastnn.Linear(3, 1, "sigmoid")])
    assert net.parameter_count() == 13
    assert "total parameters: 13" in net.summary()


# seed 000's batched-matmul table: (A shape, B shape, result shape or None for an error)
MATMUL_TABLE = [
    ((3,), (3, 4), (4,)),
    ((1, 3), (3, 4), (1, 4)),
    ((10, 2, 3), (3, 4), (10, 2, 4)),
    ((2, 2, 3), (2, 3, 4), (2, 2, 4)),
    ((2, 2, 3), (3, 3, 4), None),
    ((2, 2, 3), (1, 3, 4), (2, 2, 4)),
    ((1, 2, 2, 3), (1, 3, 4), (1, 2, 2, 4)),
    ((1, 2, 2, 3), (4, 1, 3, 4), (4, 2, 2, 4)),
    ((2, 2, 2, 3), (4, 1, 3, 4), None),
    ((1, 2, 2, 3), (4, 3, 4), None),
    ((1, 2, 2, 3), (3, 4), (1, 2, 2, 4)),
]


@pytest.mark.parametrize("a_shape,b_shape,result", MATMUL_TABLE)
def test_seed000_batched_matmul_table(backend, a_shape, b_shape, result):
    a = backend.asarray(np.ones(a_shape))
    b = backend.asarray(np.ones(b_shape))
    if result is None:
        with pytest.raises(ValueError, match="not compatible"):
            backend.matmul(a, b)
    else:
        assert backend.matmul(a, b).shape == result


def test_seed000_batched_matmul_values(backend):
    A = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], dtype=np.float64)
    B = np.array([[[2] * 4, [3] * 4, [4] * 4]] * 2, dtype=np.float64)
    C = backend.to_numpy(backend.matmul(backend.asarray(A), backend.asarray(B)))
    np.testing.assert_array_equal(host(C), [[[20] * 4, [47] * 4], [[74] * 4, [101] * 4]])


def test_seed000_linear_over_leading_dims(backend):
    """Linear(3, 4) on X of shape (10, 2, 3): y = X @ W.T + b with shape (10, 2, 4)."""
    layer = fastnn.Linear(3, 4, dtype=np.float64, seed=0)
    X = np.random.default_rng(0).random((10, 2, 3))
    Y = layer.forward(X)
    assert Y.shape == (10, 2, 4)
    np.testing.assert_allclose(host(Y), X @ host(layer.weight).T + host(layer.bias), rtol=1e-12)


def test_seed002_xor_net_classifies_all_four_points(backend):
    """One hidden layer of 2 sigmoid units, BCE, full batch of 4 (seed 002's set-up)."""
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 2, "sigmoid", init="xavier", seed=3), fastnn.Linear(2, 1, seed=4)])
    history = net.fit(X, y, "bce_with_logits", fastnn.SGD(lr=2.0, momentum=0.9), epochs=1500,
                      batch_size=4, shuffle=False, progress=False)
    predictions = (host(net.predict(X)) > 0).astype(np.float32)
    np.testing.assert_array_equal(host(predictions), y)
    assert history["loss"][-1] < 0.05 < history["loss"][0]


@pytest.mark.slow
def test_seed003_digits_network_reaches_097(backend):
    """64-128-64-10 on scikit-learn's digits, 1437/360 split: at least 0.97 test accuracy."""
    X_train, X_test, y_train, y_test = fastnn.datasets.digits()
    assert (len(X_train), len(X_test)) == (1437, 360)
    net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0), fastnn.Linear(128, 64, "relu", seed=1),
                          fastnn.Linear(64, 10, seed=2)])
    net.fit(X_train, y_train, "cross_entropy", fastnn.SGD(0.05, momentum=0.9), epochs=40, batch_size=64,
            seed=0, progress=False)
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.97
