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


# --- argument checks: no input reaches a kernel that could read or write out of bounds ----------

def test_cross_entropy_with_targets_that_do_not_sum_to_one(backend, dtype):
    """Soft, multi-hot and partial targets: the gradient of sum_c t_c (lse - z_c) is
    sum(t) softmax - t (the NumPy backend once returned softmax - t: 0.29 off)."""
    rng = np.random.default_rng(21)
    logits = (rng.standard_normal((6, 4)) * 2).astype(dtype)
    for targets in (rng.random((6, 4)), (rng.random((6, 4)) > 0.5) * 1.0, np.full((6, 4), 0.125)):
        _loss_check(backend, dtype, "softmax_cross_entropy", ref.cross_entropy, logits, targets.astype(dtype),
                    "CE unnormalised targets")


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 1, 2, -1], [0, 1, 2, 10**12]], ids=["classes", "-1", "1e12"])
def test_cross_entropy_refuses_labels_out_of_range(backend, labels):
    logits = backend.asarray(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        backend.softmax_cross_entropy(logits, backend.asarray(np.array(labels)))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        backend.softmax_cross_entropy(logits, labels)  # as a list too


def test_cross_entropy_kernel_never_writes_outside_a_bad_labels_row(backend, dtype):
    """Below the checked entry point, a label out of range makes its own row NaN and touches no
    other row (label 3 of 3 classes in row 0 used to write row 1)."""
    rng = np.random.default_rng(22)
    logits = rng.standard_normal((4, 3)).astype(dtype)
    for bad in (3, -1, 10**12):
        labels = np.array([bad, 1, 2, 0])
        grad = backend.empty((4, 3), dtype)
        value, grad = backend.kernels.softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), grad)
        grad = backend.to_numpy(grad)
        assert math.isnan(float(value)) and np.isnan(grad[0]).all()
        _, expected = ref.cross_entropy(logits[1:], labels[1:])
        np.testing.assert_allclose(grad[1:], expected * 3 / 4, **tolerance(dtype))


def test_optimizer_updates_refuse_mismatched_buffers(backend, dtype):
    """sgd_update with a short gradient, adam_update with short moments: ValueError naming the
    argument (the numba kernels read and wrote past the short arrays: SIGSEGV)."""
    def arrays(*sizes):
        return [backend.zeros(size, dtype) for size in sizes]

    big = 1 << 20
    param, velocity, scratch = arrays(big, big, big)
    with pytest.raises(ValueError, match="grad must have the shape of param"):
        backend.sgd_update(param, backend.zeros(4, dtype), velocity, scratch, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="velocity must have the shape of param"):
        backend.sgd_update(param, backend.zeros(big, dtype), backend.zeros(4, dtype), scratch, lr=0.1,
                           momentum=0.9)
    for short in ("exp_avg", "exp_avg_sq"):
        buffers = dict(zip(("param", "grad", "exp_avg", "exp_avg_sq", "scratch", "scratch2"), arrays(*[big] * 6)))
        buffers[short] = backend.zeros(4, dtype)
        with pytest.raises(ValueError, match=f"{short} must have the shape of param"):
            backend.adam_update(*buffers.values(), step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match="step"):
        backend.adam_update(*arrays(*[8] * 6), step=0, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(TypeError, match="param is updated in place"):
        backend.sgd_update([0.0, 1.0], [0.0, 1.0], *arrays(2, 2), lr=0.1)


def test_public_kernels_take_python_lists(backend):
    """Lists are converted to the call's dtype (float64 without an array) instead of failing with
    "'list' has no attribute 'dtype'"."""
    y = backend.activation("relu", [-1.0, 2.0])
    assert backend.to_numpy(y).tolist() == [0.0, 2.0] and y.dtype == np.float64
    assert backend.to_numpy(backend.matmul([[1.0, 2.0]], [[3.0], [4.0]])).tolist() == [[11.0]]
    value, _ = backend.mse(backend.asarray(np.array([1.0, 3.0], np.float32)), [0, 1])
    assert float(value) == 2.5 and value.dtype == np.float32
    z, _ = backend.linear_forward([1.0, 2.0, 3.0], np.arange(1.0, 13.0).reshape(4, 3), [0.0, 0, 0, 0])
    assert backend.to_numpy(z).tolist() == [14.0, 32.0, 50.0, 68.0]  # seed 001
    with pytest.raises(TypeError, match="expected an array or a nested sequence of numbers"):
        backend.activation("relu", [[1.0], [2.0, 3.0]])


def test_bce_outside_the_unit_interval_is_nan_on_every_backend(backend):
    """Probabilities below 0 or above 1 have no binary cross-entropy: NaN loss and gradient
    everywhere (it was NaN on numpy and a finite -0.405 on numba)."""
    value, grad = backend.bce([-0.5, 1.5], [0, 1])
    assert math.isnan(float(value)) and np.isnan(backend.to_numpy(grad)).all()
    value, grad = backend.bce([0.25, 1.5], [0, 1])
    assert math.isnan(float(value)) and not np.isnan(backend.to_numpy(grad)[0])


def test_out_buffers_must_be_c_contiguous(backend, dtype):
    """A non-contiguous out= was accepted and then written through a temporary copy, so the
    caller's buffer never saw the result."""
    x = backend.asarray(np.ones((4, 3), dtype))
    w = backend.asarray(np.ones((5, 3), dtype))
    z_t = backend.empty((5, 4), dtype).T  # (4, 5), transposed
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.linear_forward(x, w, None, out=(z_t, None))
    dz = backend.asarray(np.ones((4, 5), dtype))
    dx = backend.empty((4, 6), dtype)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.linear_backward(x, w, dz, out=(dx, None, None))
    grad = backend.empty((4, 10), dtype)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.softmax_cross_entropy(dz, backend.asarray(np.array([0, 1, 2, 3])), grad)
    with pytest.raises(TypeError, match="out= must be a"):
        backend.activation("relu", x, out=[[0.0] * 3] * 4)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 0), (2, 0, 4)), ((2, 0, 3), (3, 4)), ((3, 4), (2, 4, 0)),
                                             ((0, 2, 3), (3, 4))])
def test_matmul_with_zero_sized_dimensions(backend, a_shape, b_shape):
    a, b = np.ones(a_shape), np.ones(b_shape)
    result = backend.to_numpy(backend.matmul(backend.asarray(a), backend.asarray(b)))
    np.testing.assert_array_equal(result, np.matmul(a, b))


def test_float32_loss_sums_are_accumulated_in_float64(backend):
    """Float32 sums of a million terms lost ~1e-4 (and a confident BCE-with-logits went negative):
    every backend now matches the float64 value to ~1e-6."""
    n = 1 << 21
    pred = np.full(n, 100.1, np.float32)
    value, _ = backend.mse(backend.asarray(pred), backend.asarray(np.zeros(n, np.float32)))
    truth = float(np.float64(np.float32(100.1)) ** 2)
    assert abs(float(value) - truth) <= 1e-6 * truth
    prob = np.full(n, 0.3, np.float32)
    value, _ = backend.bce(backend.asarray(prob), backend.asarray(np.ones(n, np.float32)))
    truth = -math.log(float(np.float32(0.3)))
    assert abs(float(value) - truth) <= 1e-6 * truth
    rng = np.random.default_rng(23)
    targets = (rng.random(n) > 0.5).astype(np.float32)
    logits = (rng.uniform(12, 30, n) * np.where(targets > 0, 1, -1)).astype(np.float32)  # confident, right
    value, _ = backend.bce_with_logits(backend.asarray(logits), backend.asarray(targets))
    truth = float(np.mean(np.log1p(np.exp(-np.abs(logits.astype(np.float64))))))
    assert float(value) >= 0 and abs(float(value) - truth) <= 1e-9 + 1e-4 * truth
