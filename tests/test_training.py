"""Network behaviour around training: history, determinism, batching, fresh outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    return X, y


def _net(seed=0, dtype=np.float32):
    return fastnn.Network([fastnn.Linear(5, 16, "tanh", seed=seed, dtype=dtype),
                           fastnn.Linear(16, 2, seed=seed + 1, dtype=dtype)])


def test_fit_returns_history_and_learns(backend):
    X, y = _data()
    net = _net()
    history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.2, momentum=0.9), epochs=30, batch_size=16,
                      seed=0, validation_data=_data(100, seed=1), progress=False)
    assert len(history) == 30
    assert set(history.epochs[0]) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_s"}
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9 and history["val_accuracy"][-1] > 0.8
    assert all(rate > 0 for rate in history["samples_per_s"])
    with pytest.raises(KeyError, match="no metric 'f1'"):
        history["f1"]


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses(backend):
    X, y = _data(50)
    a, b = _net(), _net()
    history = a.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=1, batch_size=16, shuffle=False,
                    progress=False)
    expected, loss, opt = 0.0, fastnn.losses.CrossEntropy(), fastnn.SGD(0.1)
    for start in range(0, 50, 16):
        out = b.forward(X[start:start + 16])
        value, grad = loss(out, y[start:start + 16])
        b.backward(grad)
        opt.step(b)
        expected += float(value) * len(X[start:start + 16])
    assert history["loss"][0] == pytest.approx(expected / 50, rel=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(backend.to_numpy(p), backend.to_numpy(q), rtol=1e-6, atol=1e-7)


def test_same_seed_same_run_different_seed_different_run(backend):
    X, y = _data()
    runs = []
    for seed in (7, 7, 8):
        net = _net()
        net.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=3, batch_size=32, seed=seed, progress=False)
        runs.append(np.concatenate([backend.to_numpy(p).ravel() for p in net.parameters()]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_predict_is_batched_and_returns_fresh_arrays(backend):
    X, _ = _data(300)
    net = _net(dtype=np.float64)
    whole = backend.to_numpy(net.forward(X))
    batched = net.predict(X, batch_size=7)
    np.testing.assert_allclose(backend.to_numpy(batched), whole, rtol=1e-12)
    first = net.forward(X[:10])
    snapshot = backend.to_numpy(first).copy()
    net.forward(X[10:20])  # same batch shape: the layers reuse their workspaces
    np.testing.assert_array_equal(backend.to_numpy(first), snapshot)
    assert net.predict(X[0]).shape == (2,)  # a single 1-D sample


def test_evaluate_matches_the_loss_and_needs_one(backend):
    X, y = _data(64)
    net = _net(dtype=np.float64)
    with pytest.raises(ValueError, match="evaluate needs a loss"):
        net.evaluate(X, y)
    result = net.evaluate(X, y, loss="cross_entropy", batch_size=10)
    value, _ = fastnn.losses.CrossEntropy()(net.forward(X), y)
    assert result["loss"] == pytest.approx(float(value), rel=1e-10)
    predictions = np.argmax(backend.to_numpy(net.forward(X)), axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(predictions == y))


def test_regression_has_no_accuracy(backend):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 3))
    y = X @ np.array([[1.0], [-2.0], [0.5]])
    net = fastnn.Network([fastnn.Linear(3, 1, dtype=np.float64, seed=0)])
    history = net.fit(X, y[:, 0], "mse", fastnn.SGD(0.1), epochs=100, batch_size=16, progress=False)
    assert "accuracy" not in history.epochs[0]
    np.testing.assert_allclose(backend.to_numpy(net.layers[0].weight), [[1.0, -2.0, 0.5]], atol=1e-3)


def test_divergence_is_reported(backend):
    X, y = _data(64)
    net = fastnn.Network([fastnn.Linear(5, 1, seed=0)])
    with pytest.raises(FloatingPointError, match="epoch"):
        net.fit(X * 1e3, y.astype(np.float32) * 1e3, "mse", fastnn.SGD(10.0), epochs=20, progress=False)


def test_progress_stays_quiet_when_not_a_terminal(backend, capsys):
    X, y = _data(32)
    _net().fit(X, y, "cross_entropy", epochs=2, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_network_backward_and_parameters(backend):
    net = _net(dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((4, 5))
    net.forward(X)
    dx = net.backward(np.ones((4, 2)))
    assert dx.shape == (4, 5)
    names = list(net.named_parameters())
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert net.parameter_count() == 5 * 16 + 16 + 16 * 2 + 2
    params, grads = net.flat_parameters()
    assert params.size >= net.parameter_count() and grads.shape == params.shape
    # parameter arrays are views of the flat buffer: one optimizer step updates them all
    before = [backend.to_numpy(p).copy() for p in net.parameters()]
    fastnn.SGD(0.5).step(net)
    assert all(not np.array_equal(b, backend.to_numpy(p)) for b, p in zip(before, net.parameters()))


def test_summary_lists_layers_shapes_and_counts():
    text = _net().summary()
    assert "Linear(5, 16, activation='tanh')" in text and "(N, 16)" in text and "(N, 2)" in text
    assert "total parameters: 130" in text


def test_empty_network_and_zero_epochs():
    with pytest.raises(ValueError, match="no layers"):
        fastnn.Network().forward(np.zeros((1, 2)))
    history = _net().fit(*_data(8), "cross_entropy", epochs=0, progress=False)
    assert len(history) == 0 and history.history == {}
    assert math.isfinite(_net().evaluate(*_data(8), loss="cross_entropy")["loss"])
