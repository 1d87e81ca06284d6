"""What fastnn is measured against when no library is: the lecture notes' own loops.

- ``naive_matmul``: seed 001's ``for i, j, k`` matrix product in pure Python.
- ``per_sample_matmul``: a batched product done one matrix at a time from Python.
- ``LectureNetwork``: seed 003's ``Network`` / ``FullyConnectedLayer`` / ``ActivationLayer``,
  re-implemented faithfully: one sample at a time, gradients accumulated over the mini-batch and
  averaged in ``step``, sigmoid activations, MSE on one-hot targets, float64.
"""

from __future__ import annotations

import numpy as np


def naive_matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    rows, inner, cols = len(a), len(b), len(b[0])
    out = [[0.0] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            total = 0.0
            for k in range(inner):
                total += a[i][k] * b[k][j]
            out[i][j] = total
    return out


def per_sample_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], a.shape[1], b.shape[-1]), dtype=a.dtype)
    for t in range(a.shape[0]):
        out[t] = a[t] @ (b[t] if b.ndim == 3 else b)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class FullyConnectedLayer:
    def __init__(self, input_size: int, output_size: int, rng: np.random.Generator):
        self.weights = rng.random((input_size, output_size)) - 0.5
        self.bias = rng.random((1, output_size)) - 0.5
        self.delta_w = np.zeros(self.weights.shape)
        self.delta_b = np.zeros(self.bias.shape)
        self.passes = 0
        self.input = None

    def forward(self, input_data):
        self.input = input_data
        return np.dot(input_data, self.weights) + self.bias

    def backward(self, output_error):
        input_error = np.dot(output_error, self.weights.T)
        weights_error = np.dot(self.input.T, output_error)
        self.delta_w += weights_error
        self.delta_b += output_error
        self.passes += 1
        return input_error

    def step(self, eta: float) -> None:
        self.weights -= eta * self.delta_w / self.passes
        self.bias -= eta * self.delta_b / self.passes
        self.delta_w = np.zeros(self.weights.shape)
        self.delta_b = np.zeros(self.bias.shape)
        self.passes = 0


class ActivationLayer:
    def forward(self, input_data):
        self.input = input_data
        return _sigmoid(input_data)

    def backward(self, output_error):
        s = _sigmoid(self.input)
        return s * (1 - s) * output_error

    def step(self, eta: float) -> None:
        return


class LectureNetwork:
    """Seed 003's network: layers of (in, out) weights, sigmoid after every layer."""

    def __init__(self, sizes: tuple[int, ...], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            self.layers += [FullyConnectedLayer(fan_in, fan_out, rng), ActivationLayer()]
        self.rng = rng

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = []
        for sample in X:
            output = sample[None, :]
            for layer in self.layers:
                output = layer.forward(output)
            out.append(output[0])
        return np.array(out)

    def fit(self, X: np.ndarray, Y: np.ndarray, minibatches: int, learning_rate: float, batch_size: int = 64):
        for _ in range(minibatches):
            idx = np.argsort(self.rng.random(X.shape[0]))[:batch_size]
            for j in idx:
                output = X[j][None, :]
                for layer in self.layers:
                    output = layer.forward(output)
                error = 2 * (output - Y[j][None, :]) / output.size  # mse_prime
                for layer in reversed(self.layers):
                    error = layer.backward(error)
            for layer in self.layers:
                layer.step(learning_rate)
