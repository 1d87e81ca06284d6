"""BatchNorm1d: PyTorch's forward (biased variance to normalise, unbiased for the running
estimate), its backward, train/eval, running statistics in checkpoints and state_dict."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from conftest import tolerance


def reference(x, weight, bias, eps=1e-5):
    x = np.asarray(x, np.float64)
    y = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    return y * weight + bias


def test_training_forward_backward_and_running_statistics(backend, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((12, 5)) * 3 + 2).astype(dtype)
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    layer = fastnn.BatchNorm1d(5, momentum=0.3, dtype=dtype, backend=backend)
    layer.params["weight"][...] = backend.asarray(w, dtype)
    layer.params["bias"][...] = backend.asarray(b, dtype)
    y = backend.to_numpy(layer.forward(x))
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, reference(x, w.astype(dtype), b.astype(dtype)), **tol)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_mean"]), 0.3 * x64.mean(axis=0), **tol)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_var"]), 0.7 + 0.3 * x64.var(axis=0, ddof=1),
                               **tol)
    assert int(layer.buffers["num_batches_tracked"]) == 1
    # the backward against central differences of sum(y * c), in float64
    if dtype == np.float64:
        c = rng.standard_normal(x.shape)
        dx = backend.to_numpy(layer.backward(c))
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[i] += 1e-6
            minus[i] -= 1e-6
            numeric[i] = ((reference(plus, w, b) - reference(minus, w, b)) * c).sum() / 2e-6
        np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(backend.to_numpy(layer.grads["bias"]), c.sum(axis=0), rtol=1e-12)


def test_evaluation_uses_the_running_statistics(backend):
    x = np.random.default_rng(1).standard_normal((8, 3)) * 2
    layer = fastnn.BatchNorm1d(3, dtype=np.float64, backend=backend)
    layer.forward(x)
    mean, var = (backend.to_numpy(layer.buffers[k]).copy() for k in ("running_mean", "running_var"))
    expected = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(backend.to_numpy(layer.infer(x)), expected, rtol=1e-12)
    layer.training = False
    np.testing.assert_allclose(backend.to_numpy(layer.forward(x)), expected, rtol=1e-12)
    dy = np.ones_like(x)
    np.testing.assert_allclose(backend.to_numpy(layer.backward(dy)), dy / np.sqrt(var + 1e-5), rtol=1e-12)
    assert int(layer.buffers["num_batches_tracked"]) == 1  # evaluation moves nothing
    with pytest.raises(ValueError, match="more than 1 sample per feature"):
        fastnn.BatchNorm1d(3, backend=backend).forward(np.ones((1, 3)))
    untracked = fastnn.BatchNorm1d(3, track_running_stats=False, affine=False, dtype=np.float64, backend=backend)
    assert untracked.buffers == {} and untracked.params == {}
    np.testing.assert_allclose(backend.to_numpy(untracked.infer(x)), reference(x, 1.0, 0.0), rtol=1e-10)


def test_matches_pytorch_in_training_and_evaluation(backend):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here: pip install torch==2.13.0")
    rng = np.random.default_rng(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6, momentum=0.2), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3)).double()
    net = fastnn.interop.from_torch(model, backend=backend)
    assert list(net.state_dict()) == list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = rng.standard_normal((10, 4))
        xt = torch.from_numpy(x).requires_grad_(True)
        out = model(xt)
        out.backward(torch.ones_like(out))
        np.testing.assert_allclose(backend.to_numpy(net.forward(x)), out.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(net.backward(np.ones(out.shape))), xt.grad.numpy(), rtol=1e-9,
                                   atol=1e-12)
        opt.step()
        opt.zero_grad()
        net.load_state_dict(model.state_dict())
    model.eval()
    x = rng.standard_normal((5, 4))
    np.testing.assert_allclose(backend.to_numpy(net.predict(x)), model(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    back = fastnn.interop.to_torch(net).eval()
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), backend.to_numpy(net.predict(x)),
                               rtol=1e-12, atol=1e-12)


def _net(backend):
    return fastnn.Network([fastnn.Linear(6, 16, dtype=np.float64, seed=0, backend=backend),
                           fastnn.BatchNorm1d(16, dtype=np.float64, backend=backend), fastnn.ReLU(np.float64, backend),
                           fastnn.Linear(16, 3, dtype=np.float64, seed=1, backend=backend)])


def test_running_statistics_are_saved_and_resumed(backend, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((96, 6))
    y = X[:, :3].argmax(axis=1)
    whole = _net(backend)
    whole.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=4, batch_size=32, seed=0, progress=False)
    with fastnn.use_backend("numpy"):
        reference_net = _net("numpy")
        reference_net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=4, batch_size=32, seed=0,
                          progress=False)
    np.testing.assert_allclose(backend.to_numpy(whole.layers[1].buffers["running_var"]),
                               reference_net.layers[1].buffers["running_var"], rtol=1e-10)
    path = str(tmp_path / "run.npz")
    _net(backend).fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=2, batch_size=32, seed=0,
                      progress=False, checkpoint=path)
    resumed = _net(backend)
    resumed.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=4, batch_size=32, seed=0,
                progress=False, resume=path)
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    saved = tmp_path / "net.npz"
    whole.save(saved)
    loaded = fastnn.Network.load(saved, backend=backend)
    assert int(loaded.layers[1].buffers["num_batches_tracked"]) == 12
    np.testing.assert_array_equal(backend.to_numpy(loaded.predict(X)), backend.to_numpy(whole.predict(X)))
    assert list(whole.state_dict())[4:7] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_warm_up_and_early_stopping_restore_the_running_statistics_too(backend):
    """warm_up undid its step's parameters but left BatchNorm's running statistics moved, and
    early stopping restored the best epoch's parameters with the last epoch's statistics."""
    from fastnn.training import warm_up

    rng = np.random.default_rng(5)
    X = rng.standard_normal((64, 6)) * 2 + 1
    y = X[:, :3].argmax(axis=1)
    net = _net(backend)
    before = net.state_dict()
    warm_up(net, X, y, "cross_entropy", fastnn.SGD(0.1), 32)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    one = _net(backend)
    one.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=1, batch_size=16, seed=0, progress=False)
    stopped = _net(backend)
    history = stopped.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=10, batch_size=16, seed=0, progress=False,
                          early_stopping=fastnn.EarlyStopping(monitor="loss", patience=2, min_delta=1e9))
    assert history.best_epoch == 1 and len(history) == 3
    for key, value in one.state_dict().items():
        np.testing.assert_array_equal(stopped.state_dict()[key], value, err_msg=key)


# --- the kernels behind it: Backend.batch_norm and its fused backward --------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (2, 3), (1, 4), (0, 4), (3, 1), (300, 64)],
                         ids=["2d", "small", "one-row", "empty", "one-feature", "tall"])
@pytest.mark.parametrize("affine", [True, False])
def test_kernel_forward_matches_the_reference(backend, dtype, shape, affine):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    n = shape[1]
    weight = rng.standard_normal(n).astype(dtype) if affine else None
    bias = rng.standard_normal(n).astype(dtype) if affine else None
    y, mean, rstd, var = backend.batch_norm(backend.asarray(x), None if weight is None else backend.asarray(weight),
                                            None if bias is None else backend.asarray(bias))
    assert y.dtype == dtype and y.shape == shape and mean.shape == rstd.shape == var.shape == (n,)
    if not shape[0]:
        return
    expected = reference(x, np.ones(n) if weight is None else weight, np.zeros(n) if bias is None else bias)
    np.testing.assert_allclose(backend.to_numpy(y), expected, **tolerance(dtype))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(backend.to_numpy(mean), x64.mean(axis=0), **tolerance(dtype))
    np.testing.assert_allclose(backend.to_numpy(var), x64.var(axis=0), **tolerance(dtype))


def test_kernel_edges_nan_huge_and_non_contiguous(backend):
    x = np.array([[1.0, 1e150, 2.0], [np.nan, -1e150, 2.0], [3.0, 0.0, 2.0]])
    y = backend.to_numpy(backend.batch_norm(backend.asarray(x))[0])
    assert np.isnan(y[:, 0]).all()  # a NaN spreads through its own feature only
    np.testing.assert_allclose(y[:, 1], [1.22474487, -1.22474487, 0.0], rtol=1e-7)
    np.testing.assert_array_equal(y[:, 2], [0.0, 0.0, 0.0])  # a constant feature: var 0
    big = np.array([[3e38], [-3e38], [0.0]], np.float32)  # float64 statistics: no overflow
    np.testing.assert_allclose(backend.to_numpy(backend.batch_norm(backend.asarray(big))[0])[:, 0],
                               [1.2247449, -1.2247449, 0], rtol=1e-6)
    wide = np.random.default_rng(1).standard_normal((10, 6))
    strided = wide[::2, ::2]
    np.testing.assert_allclose(backend.to_numpy(backend.batch_norm(backend.asarray(strided))[0]),
                               reference(strided, np.ones(3), np.zeros(3)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        backend.batch_norm(backend.asarray(x), backend.asarray(np.ones(4)))
    with pytest.raises(ValueError, match=r"expected x of shape \(N, C\)"):
        backend.batch_norm(backend.asarray(np.ones((2, 3, 4))))


def test_kernel_backward_matches_finite_differences(backend):
    """float64: dx, dweight and dbias of sum(y * c) against central differences, in one call."""
    rng = np.random.default_rng(5)
    x, w, b, c = rng.standard_normal((6, 4)) * 2, rng.standard_normal(4), rng.standard_normal(4), \
        rng.standard_normal((6, 4))
    _, mean, rstd, _ = backend.batch_norm(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    dx, dw, db = (backend.to_numpy(a) for a in backend.batch_norm_backward(
        backend.asarray(c), backend.asarray(x), backend.asarray(w), mean, rstd))
    values = {"x": x, "weight": w, "bias": b}
    for name, grad in (("x", dx), ("weight", dw), ("bias", db)):
        numeric = np.zeros_like(values[name])
        for i in np.ndindex(numeric.shape):
            shifted = []
            for sign in (1, -1):
                moved = {key: value.copy() for key, value in values.items()}
                moved[name][i] += sign * 1e-6
                shifted.append(float((reference(moved["x"], moved["weight"], moved["bias"]) * c).sum()))
            numeric[i] = (shifted[0] - shifted[1]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)
    no_dx, dw2, db2 = backend.batch_norm_backward(backend.asarray(c), backend.asarray(x), backend.asarray(w), mean,
                                                  rstd, need_dx=False)
    assert no_dx is None
    np.testing.assert_array_equal(backend.to_numpy(dw2), dw)
    np.testing.assert_array_equal(backend.to_numpy(db2), db)
