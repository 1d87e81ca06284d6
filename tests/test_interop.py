"""state_dict with PyTorch's key names, and networks to and from ``torch.nn.Sequential``."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn


def _net(backend, dtype=np.float64):
    return fastnn.Network([fastnn.Linear(5, 8, "tanh", dtype=dtype, seed=0, backend=backend),
                           fastnn.ReLU(dtype=dtype, backend=backend),
                           fastnn.Linear(8, 3, bias=False, dtype=dtype, seed=1, backend=backend)])


def test_state_dict_round_trip_and_checks(backend):
    net, other = _net(backend), _net(backend)
    other.layers[0].weight = np.ones((8, 5))
    state = net.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight"]
    assert all(isinstance(v, np.ndarray) for v in state.values()) and state["0.weight"].shape == (8, 5)
    state["0.weight"][...] = 7  # a copy: the network is untouched
    assert float(backend.to_numpy(net.layers[0].weight).max()) < 7
    other.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(backend.to_numpy(other.flat_parameters()[0]),
                                  backend.to_numpy(net.flat_parameters()[0]))
    before = backend.to_numpy(other.flat_parameters()[0]).copy()
    bad_shape = {**net.state_dict(), "2.weight": np.zeros((3, 9))}
    with pytest.raises(ValueError, match=r"'2.weight' has shape \(3, 9\)"):
        other.load_state_dict(bad_shape)
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\], unexpected keys \['1.weight'\]"):
        other.load_state_dict({"0.weight": np.zeros((8, 5)), "1.weight": np.zeros(1), "2.weight": np.zeros((3, 8))})
    np.testing.assert_array_equal(backend.to_numpy(other.flat_parameters()[0]), before)  # unchanged
    other.load_state_dict({"0.bias": np.full(8, 0.5)}, strict=False)
    assert backend.to_numpy(other.layers[0].bias).tolist() == [0.5] * 8


try:
    import torch
except ImportError:  # the state_dict test above needs no PyTorch; the ones below are skipped
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="interop with PyTorch needs it: pip install torch==2.13.0")
DTYPES = [] if torch is None else [(torch.float64, 1e-12), (torch.float32, 2e-6)]


def _torch_model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.GELU(), torch.nn.Linear(10, 10),
                               torch.nn.LeakyReLU(0.2), torch.nn.Linear(10, 7, bias=False), torch.nn.ELU(0.5),
                               torch.nn.Linear(7, 4), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(4, 4),
                               torch.nn.SiLU(), torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1)).to(dtype)


@needs_torch
@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["float64", "float32"][:len(DTYPES)])
def test_from_torch_computes_what_torch_computes(backend, dtype, tol):
    model = _torch_model(dtype)
    net = fastnn.interop.from_torch(model, backend=backend)
    assert net.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    assert list(net.state_dict()) == list(model.state_dict())  # PyTorch's keys, module for module
    x = np.random.default_rng(0).standard_normal((9, 6)) * 3
    expected = model(torch.from_numpy(x).to(dtype)).detach().numpy()
    np.testing.assert_allclose(backend.to_numpy(net.predict(x)), expected, rtol=tol, atol=tol)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})  # and back
    net.load_state_dict(model.state_dict())


@needs_torch
def test_to_torch_round_trips_a_trained_network(backend):
    X = np.random.default_rng(1).standard_normal((64, 5))
    y = (X.sum(axis=1) > 0).astype(np.int64) + (X[:, 0] > 1)
    net = _net(backend)
    net.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=3, batch_size=16, progress=False)
    model = fastnn.interop.to_torch(net)  # the fused tanh becomes its own module
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "ReLU", "Linear"]
    expected = model(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(backend.to_numpy(net.predict(X)), expected, rtol=1e-12, atol=1e-12)
    again = fastnn.interop.from_torch(model, backend=backend)
    np.testing.assert_allclose(backend.to_numpy(again.predict(X)), expected, rtol=1e-12, atol=1e-12)


@needs_torch
def test_unsupported_modules_are_named():
    with pytest.raises(ValueError, match=r"module 1 \(Flatten\) has no fastnn counterpart"):
        fastnn.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Flatten()))
    with pytest.raises(ValueError, match="only beta=1"):
        fastnn.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Softplus(beta=2)))


# --- arrays across libraries through DLPack -------------------------------------------------------

@needs_torch
def test_torch_tensors_come_in_and_results_go_out_without_copies():
    net = _net("numpy")
    X = torch.randn(7, 5, dtype=torch.float64)
    backend = net.backend
    assert np.shares_memory(backend.asarray(X), X.numpy())  # in: a view through DLPack
    np.testing.assert_array_equal(net.predict(X), net.predict(X.numpy()))
    out = net.predict(X)
    shared = torch.from_dlpack(out)  # out: the result is a NumPy array, which speaks DLPack
    assert np.shares_memory(shared.numpy(), out)
    legacy = torch.utils.dlpack.from_dlpack(fastnn.to_dlpack(out))
    assert np.shares_memory(legacy.numpy(), out)
    X32 = torch.randn(3, 5)  # float32 into a float64 network: converted (a copy, as it must be)
    np.testing.assert_allclose(net.predict(X32), net.predict(X32.numpy().astype(np.float64)))


def test_jax_arrays_come_in_through_dlpack():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is optional: pip install jax")
    net = _net("numpy")
    X = jnp.linspace(-1.0, 1.0, 35, dtype=jnp.float32).reshape(7, 5)
    np.testing.assert_allclose(net.predict(X), net.predict(np.asarray(X)), rtol=1e-12)


@needs_torch
def test_foreign_arrays_keep_their_dtype_in_backend_calls(backend):
    """A float32 tensor given to a backend call was converted like a list, to float64."""
    y = backend.activation("relu", torch.tensor([-1.0, 2.0]))
    assert y.dtype == np.float32 and backend.to_numpy(y).tolist() == [0.0, 2.0]
    with pytest.raises(TypeError, match="share one dtype"):
        backend.mse(backend.asarray(np.ones(2)), torch.ones(2))  # float64 with float32: never promoted


_CUDA_REASON = fastnn.available_backends()["cupy"]


@pytest.mark.gpu
@pytest.mark.skipif(_CUDA_REASON is not None, reason=f"needs a usable CUDA device: {_CUDA_REASON}")
def test_cuda_tensors_come_in_and_go_out_without_copies_on_the_device():
    """PyTorch CUDA tensors into the CuPy backend through DLPack: the same device memory, no copy;
    results back to PyTorch the same way. (Runs where a GPU and a CUDA build of PyTorch are.)"""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA (the project's test extra installs the CPU build)")
    import cupy

    net = _net("cupy")
    X = torch.randn(7, 5, dtype=torch.float64, device="cuda")
    inside = net.backend.asarray(X)
    assert isinstance(inside, cupy.ndarray) and inside.data.ptr == X.data_ptr()  # a view, on the device
    out = net.predict(X)
    back = torch.from_dlpack(out)
    assert back.device.type == "cuda" and back.data_ptr() == out.data.ptr
    np.testing.assert_allclose(cupy.asnumpy(out), _net("numpy").predict(X.cpu().numpy()), rtol=1e-12)
