"""The kernel contract, checked on every usable backend against the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from conftest import tolerance
from fastnn.activations import ACTIVATIONS

ACTIVATION_NAMES = list(ACTIVATIONS)
ALPHAS = {"leaky_relu": [0.01, 0.2], "elu": [1.0, 0.5]}


def edge_values(dtype) -> np.ndarray:
    big = 1e30 if dtype == np.float32 else 1e300
    values = [0.0, 1e-30, 1e-7, 0.5, 1.0, 3.0, 9.9, 10.1, 20.0, 40.0, 88.0, 100.0, 700.0, 1e4, big, math.inf]
    return np.array([*values, *(-v for v in values), math.nan], dtype=dtype)


def check_close(actual, expected, dtype, what):
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: result dtype {actual.dtype}, expected {dtype}"
    np.testing.assert_allclose(actual.astype(np.float64), expected, **tolerance(dtype), equal_nan=True,
                               err_msg=what)
    # NaN exactly where the reference has NaN (assert_allclose allows NaN only where both are)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")


def activation_cases(name):
    yield from ALPHAS.get(name, [None])


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_forward_random_and_edges(backend, dtype, name):
    rng = np.random.default_rng(0)
    for z_host in (rng.standard_normal((33, 17)).astype(dtype) * 4, edge_values(dtype)):
        for alpha in activation_cases(name):
            y = backend.to_numpy(backend.activation(name, backend.asarray(z_host), alpha))
            expected_alpha = alpha if alpha is not None else ACTIVATIONS[name].alpha_default
            check_close(y, ref.forward(name, z_host, expected_alpha), dtype, f"{name}({alpha}) forward")


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_backward_is_dy_times_derivative(backend, dtype, name):
    rng = np.random.default_rng(1)
    for z_host in (rng.standard_normal((33, 17)).astype(dtype) * 4, edge_values(dtype)):
        dy_host = rng.standard_normal(z_host.shape).astype(dtype)
        for alpha in activation_cases(name):
            z = backend.asarray(z_host)
            y = backend.activation(name, z, alpha)
            dz = backend.to_numpy(backend.activation_backward(name, backend.asarray(dy_host), z, y, alpha))
            a = alpha if alpha is not None else ACTIVATIONS[name].alpha_default
            expected = dy_host.astype(np.float64) * ref.derivative(name, z_host, a)
            check_close(dz, expected, dtype, f"{name}({alpha}) backward")


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_nan_in_dy_propagates(backend, name):
    z = backend.asarray(np.array([-1.0, 0.5, 2.0]))
    dy = backend.asarray(np.array([np.nan, np.nan, np.nan]))
    dz = backend.to_numpy(backend.activation_backward(name, dy, z, backend.activation(name, z)))
    assert np.isnan(dz).all()


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
@pytest.mark.parametrize("shape", [(0, 5), (7,), (2, 3, 4)], ids=["empty-batch", "1d", "3d"])
def test_activation_shapes(backend, name, shape):
    z_host = np.random.default_rng(2).standard_normal(shape)
    z = backend.asarray(z_host)
    y = backend.activation(name, z)
    assert y.shape == shape
    dz = backend.activation_backward(name, backend.asarray(np.ones(shape)), z, y)
    assert dz.shape == shape
    np.testing.assert_allclose(backend.to_numpy(dz), ref.derivative(name, z_host, ACTIVATIONS[name].alpha_default),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_non_contiguous_input(backend, name):
    base = np.random.default_rng(3).standard_normal((12, 10))
    z_host = base[::2, ::3]  # strided view
    assert not z_host.flags.c_contiguous
    z = backend.asarray(z_host)
    y = backend.activation(name, z)
    check_close(backend.to_numpy(y), ref.forward(name, z_host, ACTIVATIONS[name].alpha_default),
                np.dtype(np.float64), f"{name} strided")
    dy_host = base.T[::3, ::2].T  # another non-contiguous layout of the same shape
    dz = backend.activation_backward(name, backend.asarray(dy_host), z, y)
    check_close(backend.to_numpy(dz), dy_host * ref.derivative(name, z_host, ACTIVATIONS[name].alpha_default),
                np.dtype(np.float64), f"{name} strided backward")


def test_activation_rejects_unknown_name_and_mixed_dtypes(backend):
    z = backend.asarray(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unknown activation 'swish'.*'relu'"):
        backend.activation("swish", z)
    with pytest.raises(TypeError, match="never promotes"):
        backend.activation_backward("relu", backend.asarray(np.zeros(3)), z, z)
    with pytest.raises(TypeError, match="float32 or float64"):
        backend.activation("relu", backend.asarray(np.zeros(3, np.int64)))


def test_softmax_and_backward(backend, dtype):
    rng = np.random.default_rng(4)
    z_host = (rng.standard_normal((6, 5)) * 3).astype(dtype)
    z_host[0] = [1e4, -1e4, 0, 5e3, 1e4]  # huge logits must not overflow
    y = backend.softmax(backend.asarray(z_host))
    check_close(backend.to_numpy(y), ref.softmax(z_host), dtype, "softmax")
    dy_host = rng.standard_normal(z_host.shape).astype(dtype)
    dz = backend.to_numpy(backend.softmax_backward(backend.asarray(dy_host), y))
    s = ref.softmax(z_host)
    expected = s * (dy_host - (dy_host * s).sum(-1, keepdims=True))
    np.testing.assert_allclose(dz, expected, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


# --- matrix core ------------------------------------------------------------------------------

shape_dims = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(a_shape=shape_dims, b_shape=shape_dims, seed=st.integers(0, 2**16))
def test_matmul_matches_numpy_rules(a_shape, b_shape, seed):
    from conftest import USABLE
    from fastnn.backends import backend_for

    rng = np.random.default_rng(seed)
    a_host, b_host = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    for name in USABLE:
        backend = backend_for(name)
        a, b = backend.asarray(a_host), backend.asarray(b_host)
        if ref.matmul_shape_ok(tuple(a_shape), tuple(b_shape)):
            result = backend.to_numpy(backend.matmul(a, b))
            expected = ref.matmul(a_host, b_host)
            assert result.shape == expected.shape
            np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
        else:
            with pytest.raises(ValueError) as info:
                backend.matmul(a, b)
            assert str(tuple(a_shape)) in str(info.value) and str(tuple(b_shape)) in str(info.value)


def test_matmul_float32_and_non_contiguous(backend):
    rng = np.random.default_rng(5)
    a_host = rng.standard_normal((3, 8, 6)).astype(np.float32).transpose(0, 2, 1)  # (3, 6, 8) strided
    b_host = rng.standard_normal((5, 8)).astype(np.float32).T  # (8, 5) transposed view
    result = backend.matmul(backend.asarray(a_host), backend.asarray(b_host))
    assert result.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(result), a_host.astype(np.float64) @ b_host, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="never promotes"):
        backend.matmul(backend.asarray(a_host), backend.asarray(b_host.astype(np.float64)))


def test_bias_add(backend, dtype):
    x_host = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    b_host = np.array([1, -2, 3, -4], dtype=dtype)
    check_close(backend.to_numpy(backend.bias_add(backend.asarray(x_host), backend.asarray(b_host))),
                x_host.astype(np.float64) + b_host, dtype, "bias_add")
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(3,\)"):
        backend.bias_add(backend.asarray(x_host), backend.asarray(b_host[:3]))


@pytest.mark.parametrize("activation", ["identity", "relu", "sigmoid", "gelu_tanh", "elu"])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 4), (4,), (0, 3)], ids=["2d", "3d", "1d", "empty"])
def test_bias_activation(backend, dtype, shape, activation):
    rng = np.random.default_rng(11)
    z_host = rng.standard_normal(shape).astype(dtype)
    bias_host = rng.standard_normal(shape[-1]).astype(dtype)
    z = backend.asarray(z_host.copy())
    z_out, y = backend.bias_activation(z, backend.asarray(bias_host), activation)
    expected_z = z_host.astype(np.float64) + bias_host
    check_close(backend.to_numpy(z_out), expected_z, dtype, f"bias_activation z ({activation})")
    check_close(backend.to_numpy(y), ref.forward(activation, expected_z, ACTIVATIONS[activation].alpha_default),
                dtype, f"bias_activation y ({activation})")
    assert (y is z_out) == (activation == "identity")
    _, y_no_bias = backend.bias_activation(backend.asarray(z_host.copy()), None, activation)
    check_close(backend.to_numpy(y_no_bias), ref.forward(activation, z_host, ACTIVATIONS[activation].alpha_default),
                dtype, f"bias_activation without bias ({activation})")
    with pytest.raises(ValueError, match="bias_activation"):
        backend.bias_activation(z, backend.asarray(bias_host[:0].copy() if shape[-1] else np.ones(1, dtype)))


@pytest.mark.parametrize("lead", [(5,), (2, 3), (), (0,)], ids=["batch", "two-leading-dims", "1d", "empty"])
@pytest.mark.parametrize("activation", ["identity", "relu", "tanh", "gelu"])
def test_linear_forward_backward(backend, dtype, lead, activation):
    rng = np.random.default_rng(6)
    x_host = rng.standard_normal((*lead, 4)).astype(dtype)
    w_host = rng.standard_normal((3, 4)).astype(dtype)
    b_host = rng.standard_normal(3).astype(dtype)
    x, w, b = backend.asarray(x_host), backend.asarray(w_host), backend.asarray(b_host)
    z, y = backend.linear_forward(x, w, b, activation)
    z_ref = x_host.astype(np.float64) @ w_host.T.astype(np.float64) + b_host
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(backend.to_numpy(z), z_ref, **tol)
    np.testing.assert_allclose(backend.to_numpy(y), ref.forward(activation, z_ref), **tol)
    assert z.shape == y.shape == (*lead, 3) and y.dtype == dtype

    dz_host = rng.standard_normal((*lead, 3)).astype(dtype)
    dx, dw, db = backend.linear_backward(x, w, backend.asarray(dz_host))
    dz2, x2 = dz_host.reshape(-1, 3).astype(np.float64), x_host.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(backend.to_numpy(dx), (dz2 @ w_host.astype(np.float64)).reshape(x_host.shape), **tol)
    np.testing.assert_allclose(backend.to_numpy(dw), dz2.T @ x2, **tol)
    np.testing.assert_allclose(backend.to_numpy(db), dz2.sum(axis=0), **tol)
    dx_none, _, db_none = backend.linear_backward(x, w, backend.asarray(dz_host), need_dx=False, has_bias=False)
    assert dx_none is None and db_none is None


def test_linear_non_contiguous_input_and_errors(backend):
    rng = np.random.default_rng(7)
    x_host = rng.standard_normal((4, 10))[:, ::2]  # (4, 5) strided
    w_host = rng.standard_normal((5, 3)).T  # (3, 5) transposed view
    z, _ = backend.linear_forward(backend.asarray(x_host), backend.asarray(w_host), None)
    np.testing.assert_allclose(backend.to_numpy(z), x_host @ w_host.T, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(3, 4\)"):
        backend.linear_forward(backend.asarray(x_host), backend.asarray(np.zeros((3, 4))), None)


# --- losses -------------------------------------------------------------------------------------

def _loss_check(backend, dtype, kernel, ref_fn, pred_host, target_host, what):
    value, grad = getattr(backend, kernel)(backend.asarray(pred_host), backend.asarray(target_host))
    ref_value, ref_grad = ref_fn(pred_host, target_host)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    assert np.asarray(backend.to_numpy(value)).shape == ()
    assert grad.dtype == dtype
    np.testing.assert_allclose(float(value), ref_value, **tol, err_msg=f"{what} value")
    np.testing.assert_allclose(backend.to_numpy(grad), ref_grad, **tol, err_msg=f"{what} grad")


def test_cross_entropy_labels_and_probabilities(backend, dtype):
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    labels = rng.integers(0, 5, 7)
    _loss_check(backend, dtype, "softmax_cross_entropy", ref.cross_entropy, logits, labels, "CE labels")
    probs = rng.dirichlet(np.ones(5), 7).astype(dtype)
    _loss_check(backend, dtype, "softmax_cross_entropy", ref.cross_entropy, logits, probs, "CE probs")
    # leading dims: (2, 3, 5) logits with (2, 3) labels average over all 6 positions
    _loss_check(backend, dtype, "softmax_cross_entropy", ref.cross_entropy,
                logits[:6].reshape(2, 3, 5), labels[:6].reshape(2, 3), "CE leading dims")


@pytest.mark.parametrize("scale", [1e2, 1e4, 3e4])
def test_cross_entropy_is_stable_for_huge_logits(backend, dtype, scale):
    logits = np.array([[scale, -scale, 0.0], [-scale, -scale, scale], [0.5, 0.25, -0.5]], dtype=dtype)
    labels = np.array([1, 2, 0])
    _loss_check(backend, dtype, "softmax_cross_entropy", ref.cross_entropy, logits, labels, f"CE {scale}")


def test_cross_entropy_nan_and_empty(backend, dtype):
    logits = np.array([[np.nan, 0.0], [1.0, 2.0]], dtype=dtype)
    value, grad = backend.softmax_cross_entropy(backend.asarray(logits), backend.asarray(np.array([0, 1])))
    assert math.isnan(float(value)) and np.isnan(backend.to_numpy(grad)[0]).all()
    value, grad = backend.softmax_cross_entropy(backend.asarray(np.zeros((0, 3), dtype)),
                                                backend.asarray(np.zeros(0, np.int64)))
    assert math.isnan(float(value)) and grad.shape == (0, 3)


def test_bce_with_logits_any_logit(backend, dtype):
    logits = np.array([-1e4, -50.0, -3.0, 0.0, 2.0, 40.0, 1e4], dtype=dtype)
    target = np.array([1.0, 0.0, 0.3, 1.0, 0.0, 1.0, 0.0], dtype=dtype)
    _loss_check(backend, dtype, "bce_with_logits", ref.bce_with_logits, logits, target, "BCE logits")
    value, _ = backend.bce_with_logits(backend.asarray(logits[:2].copy() * np.nan), backend.asarray(target[:2]))
    assert math.isnan(float(value))


def test_bce_on_probabilities_clamps_like_pytorch(backend, dtype):
    prob = np.array([[0.0, 1e-8, 0.2], [0.5, 0.9, 1.0]], dtype=dtype)
    target = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=dtype)
    _loss_check(backend, dtype, "bce", ref.bce, prob, target, "BCE")
    value, _ = backend.bce(backend.asarray(np.array([0.0], dtype)), backend.asarray(np.array([1.0], dtype)))
    assert float(value) == pytest.approx(100.0)  # log clamped at -100, not inf


def test_mse(backend, dtype):
    rng = np.random.default_rng(9)
    pred, target = rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    _loss_check(backend, dtype, "mse", ref.mse, pred, target, "MSE")
    value, grad = backend.mse(backend.asarray(np.zeros((0, 3), dtype)), backend.asarray(np.zeros((0, 3), dtype)))
    assert math.isnan(float(value)) and grad.shape == (0, 3)


def test_losses_reject_mismatched_shapes(backend):
    a = backend.asarray(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        backend.mse(a, backend.asarray(np.zeros((4, 2))))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        backend.softmax_cross_entropy(a, backend.asarray(np.zeros(5, np.int64)))


# --- optimizers -----------------------------------------------------------------------------------

OPT_CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("kind,hyper", OPT_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(OPT_CASES)])
def test_optimizer_updates_match_pytorch_rules(backend, dtype, kind, hyper):
    rng = np.random.default_rng(10)
    start = rng.standard_normal(37).astype(dtype)
    grads = [rng.standard_normal(37).astype(dtype) for _ in range(5)]
    param = backend.asarray(start.copy())
    buffers = [backend.zeros(37, dtype) for _ in range(4)]
    for step, g in enumerate(grads, start=1):
        grad = backend.asarray(g)
        if kind == "sgd":
            backend.sgd_update(param, grad, buffers[0], buffers[1], first_step=step == 1, **hyper)
        else:
            backend.adam_update(param, grad, *buffers, step=step, beta1=0.9, beta2=0.999, eps=1e-8,
                                decoupled=kind == "adamw", **hyper)
    if kind == "sgd":
        expected = ref.sgd_steps(start, grads, **hyper)
    else:
        expected = ref.adam_steps(start, grads, decoupled=kind == "adamw", **hyper)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(backend.to_numpy(param), expected, **tol)
    assert param.dtype == dtype
