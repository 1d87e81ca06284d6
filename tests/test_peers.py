"""The benchmark peers (``fastnn.bench.peers``): each trains the recipe it is given, from the same
weights, so that their speeds compare like with like."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fastnn
from fastnn.bench import peers

pytestmark = pytest.mark.own_backends  # fastnn's side runs on the NumPy backend, whatever the default

# torch.compile is left out: compiling its model takes ~30 s, and it runs the eager model's maths
INSTALLED = [name for name in peers.PEERS if peers.missing(name) is None and name != "torch.compile"]
RECIPES = [peers.Recipe((5, 7, 3), batch=40, lr=0.3),
           peers.Recipe((5, 7, 3), batch=40, lr=0.5, hidden="sigmoid", output="sigmoid", loss="mse", init="half")]


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def _fastnn_after_one_full_batch_epoch(recipe, X, y):
    """The same recipe trained by fastnn (NumPy backend, float64) from the peers' weights."""
    with fastnn.use_backend("numpy"):
        layers = []
        for k, (W, b) in enumerate(peers._initial(recipe)):
            last = k == len(recipe.sizes) - 2
            layer = fastnn.Linear(W.shape[1], W.shape[0], recipe.output if last else recipe.hidden,
                                  dtype=np.float64)
            layer.weight, layer.bias = W.astype(np.float64), b.astype(np.float64)
            layers.append(layer)
        net = fastnn.Network(layers)
        target = y if recipe.loss == "cross_entropy" else fastnn.datasets.one_hot(y, recipe.sizes[-1])
        net.fit(X.astype(np.float64), target, recipe.loss, fastnn.SGD(recipe.lr), epochs=1, batch_size=len(X),
                progress=False)
        return fastnn.to_numpy(net.predict(X.astype(np.float64)))


@pytest.mark.parametrize("recipe", RECIPES, ids=["relu-CE", "sigmoid-MSE"])
@pytest.mark.parametrize("name", INSTALLED)
def test_each_peer_trains_the_recipe_as_fastnn_does(name, recipe):
    """From the same weights, one full-batch epoch (the shuffle then changes nothing but the
    order of a sum) gives the outputs fastnn's float64 NumPy backend gives, to float32 rounding."""
    X, y = _data()
    session = peers.start(name, recipe, X, y)
    expected_start = peers.start(INSTALLED[0], recipe, X, y).predict(X)
    np.testing.assert_allclose(session.predict(X), expected_start, rtol=1e-5, atol=1e-6)
    session.epoch()
    np.testing.assert_allclose(session.predict(X), _fastnn_after_one_full_batch_epoch(recipe, X, y),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", INSTALLED)
def test_train_times_each_epoch_and_reports_compiling_apart(name):
    X, y = _data(100)
    trained = peers.train(name, peers.Recipe((5, 7, 3), batch=16, lr=0.1), X, y, epochs=3)
    assert len(trained.seconds) == 3 and all(s > 0 for s in trained.seconds)
    assert (trained.compile_s is None) == (name == "torch")  # eager PyTorch compiles nothing
    assert trained.predict(X).shape == (100, 3)


def test_a_peer_that_is_not_installed_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == "jax" else real(module, *a))
    assert peers.missing("jax jit+scan") == "jax is not installed (pip install jax)"
    with pytest.raises(RuntimeError, match="jax jit/step: jax is not installed"):
        peers.start("jax jit/step", RECIPES[0], *_data())
