"""The Numba backend's kernels against the NumPy backend (and PyTorch where it is the bar).

    pytest benchmarks/test_numba_kernels.py --benchmark-only [--quick]
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from conftest import target
from fastnn.backends import backend_for

pytestmark = pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable")
BACKENDS = ["numpy", "numba"]


def _size(quick, full, small):
    return small if quick else full


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


for name in ("sigmoid", "relu", "gelu"):
    target(f"activation backward {name}", "numpy", "numba", 3.0)
    target(f"bias+activation forward {name}", "numpy", "numba", 2.0)
target("softmax cross-entropy loss+grad", "numpy", "numba", 3.0)
target("batched matmul (N,2,3)@(3,4)", "numpy", "numba", 5.0)
target("batched matmul (N,8,16)@(N,16,8)", "torch", "numba", 1.0)
target("GEMM 1024 float32", "numpy", "numba", 0.95)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "gelu"])
def test_activation_backward(benchmark, rng, quick, backend_name, activation):
    backend = backend_for(backend_name)
    shape = _size(quick, (4096, 1024), (256, 256))
    z = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = backend.activation(activation, z)
    out = backend.empty(shape, np.float32)
    kernel = backend.kernels.backward[activation]
    benchmark.group = f"activation backward {activation}"
    benchmark.extra_info["contender"] = backend_name
    benchmark(kernel, dy, z, y, out, None)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("activation", ["sigmoid", "relu", "gelu"])
def test_bias_activation_forward(benchmark, rng, quick, backend_name, activation):
    """The pass linear_forward makes after its GEMM: z += bias, y = g(z) (NumPy: two passes)."""
    shape = _size(quick, (4096, 1024), (256, 256))
    z = rng.standard_normal(shape).astype(np.float32)
    bias = np.zeros(shape[1], np.float32)  # zero, so repeated rounds see the same z
    y = np.empty_like(z)
    benchmark.group = f"bias+activation forward {activation}"
    benchmark.extra_info["contender"] = backend_name
    benchmark(backend_for(backend_name).kernels.bias_activation, z, bias, activation, None, y)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_softmax_cross_entropy(benchmark, rng, quick, backend_name):
    backend = backend_for(backend_name)
    rows, classes = _size(quick, (4096, 1000), (256, 100))
    logits = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    grad = backend.empty(logits.shape, np.float32)
    benchmark.group = "softmax cross-entropy loss+grad"
    benchmark.extra_info["contender"] = backend_name
    benchmark(backend.kernels.softmax_cross_entropy, logits, labels, grad)


def _torch_matmul():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install torch==2.13.0")
    return torch


@pytest.mark.parametrize("contender", ["numpy", "numba"])
def test_batched_small_matmul(benchmark, rng, quick, contender):
    a = rng.standard_normal((_size(quick, 100000, 2000), 2, 3)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    benchmark.group = "batched matmul (N,2,3)@(3,4)"
    benchmark.extra_info["contender"] = contender
    benchmark(backend_for(contender).matmul, a, b)


@pytest.mark.parametrize("contender", ["numpy", "numba", "torch"])
def test_batched_8x16x8(benchmark, rng, quick, contender):
    n = _size(quick, 20000, 500)
    a = rng.standard_normal((n, 8, 16)).astype(np.float32)
    b = rng.standard_normal((n, 16, 8)).astype(np.float32)
    benchmark.group = "batched matmul (N,8,16)@(N,16,8)"
    benchmark.extra_info["contender"] = contender
    if contender == "torch":
        torch = _torch_matmul()
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        benchmark(torch.matmul, ta, tb)
    else:
        benchmark(backend_for(contender).matmul, a, b)


@pytest.mark.parametrize("contender", ["numpy", "numba"])
def test_gemm_1024(benchmark, rng, quick, contender):
    n = _size(quick, 1024, 128)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    benchmark.group = "GEMM 1024 float32"
    benchmark.extra_info["contender"] = contender
    benchmark(backend_for(contender).matmul, a, b)
