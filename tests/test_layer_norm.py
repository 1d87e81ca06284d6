"""LayerNorm: the kernels against a float64 reference on every backend, the fused backward
against finite differences and PyTorch autograd, and the layer in training, checkpoints, interop."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from conftest import tolerance


def reference(x, weight, bias, eps=1e-5):
    """nn.LayerNorm over the last axis, in float64, written from the definition."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 9), (7,), (0, 4), (3, 1), (64, 300)],
                         ids=["2d", "3d", "1d", "empty", "one-feature", "wide"])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_matches_the_reference(backend, dtype, shape, affine):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    n = shape[-1]
    weight = rng.standard_normal(n).astype(dtype) if affine else None
    bias = rng.standard_normal(n).astype(dtype) if affine else None
    y, mean, rstd = backend.layer_norm(backend.asarray(x), None if weight is None else backend.asarray(weight),
                                       None if bias is None else backend.asarray(bias))
    assert y.dtype == dtype and y.shape == shape and mean.shape == shape[:-1]
    np.testing.assert_allclose(backend.to_numpy(y), reference(x, weight, bias), **tolerance(dtype))
    if x.size:
        np.testing.assert_allclose(backend.to_numpy(mean), x.astype(np.float64).mean(axis=-1), **tolerance(dtype))


def test_edges_nan_huge_and_non_contiguous(backend):
    x = np.array([[1.0, np.nan, 3.0], [1e150, -1e150, 0.0], [2.0, 2.0, 2.0]])
    y = backend.to_numpy(backend.layer_norm(backend.asarray(x))[0])
    assert np.isnan(y[0]).all()  # a NaN spreads through its own row only
    np.testing.assert_allclose(y[1], [1.22474487, -1.22474487, 0.0], rtol=1e-7)
    np.testing.assert_array_equal(y[2], [0.0, 0.0, 0.0])  # constant row: var 0, rstd 1/sqrt(eps)
    # float32 statistics are float64: the largest float32 values do not overflow the variance
    big = np.array([[3e38, -3e38, 0.0]], np.float32)
    np.testing.assert_allclose(backend.to_numpy(backend.layer_norm(backend.asarray(big))[0]),
                               [[1.2247449, -1.2247449, 0]], rtol=1e-6)
    wide = np.random.default_rng(1).standard_normal((6, 10))
    strided = wide[:, ::2]
    np.testing.assert_allclose(backend.to_numpy(backend.layer_norm(backend.asarray(strided))[0]),
                               reference(strided, None, None), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        backend.layer_norm(backend.asarray(x), backend.asarray(np.ones(4)))


def test_backward_matches_finite_differences(backend):
    """float64: dx, dweight and dbias of sum(y * c) against central differences."""
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 6)) * 2, rng.standard_normal(6), rng.standard_normal(6)
    c = rng.standard_normal((4, 6))
    y, mean, rstd = backend.layer_norm(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    dx, dw, db = (backend.to_numpy(a) for a in backend.layer_norm_backward(
        backend.asarray(c), backend.asarray(x), backend.asarray(w), mean, rstd))

    def f(x_, w_, b_):
        return float((reference(x_, w_, b_) * c).sum())

    eps = 1e-6
    for value, grad, name in ((x, dx, "x"), (w, dw, "weight"), (b, db, "bias")):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[i] += eps
            minus[i] -= eps
            args = {"x": (x, w, b), "weight": (x, w, b), "bias": (x, w, b)}[name]
            numeric[i] = (f(*[plus if a is value else a for a in args]) -
                          f(*[minus if a is value else a for a in args])) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_matches_pytorch_autograd(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here: pip install torch==2.13.0")
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 5, 8)) * 4, rng.standard_normal((3, 5, 8))
    norm = torch.nn.LayerNorm(8, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.standard_normal(8)))
        norm.bias.copy_(torch.from_numpy(rng.standard_normal(8)))
    xt = torch.from_numpy(x).requires_grad_(True)
    norm(xt).backward(torch.from_numpy(dy))
    layer = fastnn.interop.from_torch(torch.nn.Sequential(norm), backend=backend).layers[0]
    np.testing.assert_allclose(backend.to_numpy(layer.forward(x)), norm(xt).detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(layer.backward(dy)), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["weight"]), norm.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(layer.grads["bias"]), norm.bias.grad.numpy(), rtol=1e-10)
    back = fastnn.interop.to_torch(fastnn.Network([layer]))
    assert isinstance(back[0], torch.nn.LayerNorm) and back[0].eps == 1e-3


def _net(backend):
    return fastnn.Network([fastnn.Linear(6, 16, "relu", dtype=np.float64, seed=0, backend=backend),
                           fastnn.LayerNorm(16, dtype=np.float64, backend=backend),
                           fastnn.Linear(16, 3, dtype=np.float64, seed=1, backend=backend)])


def test_a_network_with_layer_norm_trains_alike_everywhere_and_saves(backend, tmp_path):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((128, 6))
    y = X[:, :3].argmax(axis=1)
    net = _net(backend)
    history = net.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=5, batch_size=32, seed=0, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    with fastnn.use_backend("numpy"):
        reference_net = _net("numpy")
        reference_net.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=5, batch_size=32, seed=0, progress=False)
    np.testing.assert_allclose(backend.to_numpy(net.flat_parameters()[0]), reference_net.flat_parameters()[0],
                               rtol=1e-9, atol=1e-11)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    path = tmp_path / "ln.npz"
    net.save(path)
    loaded = fastnn.Network.load(path, backend=backend)
    assert repr(loaded.layers[1]) == "LayerNorm(16)"
    np.testing.assert_array_equal(backend.to_numpy(loaded.predict(X)), backend.to_numpy(net.predict(X)))


def test_layer_norm_arguments():
    with pytest.raises(ValueError, match="normalises the last dimension"):
        fastnn.LayerNorm((4, 5))
    with pytest.raises(ValueError, match="eps must be a positive number"):
        fastnn.LayerNorm(4, eps=0)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\*, 4\)"):
        fastnn.LayerNorm(4, backend="numpy").forward(np.ones((2, 5)))
    assert fastnn.LayerNorm(4, elementwise_affine=False).params == {}
