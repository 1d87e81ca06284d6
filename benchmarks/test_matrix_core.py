"""The matrix core: each backend's matmul against naive loops and a per-sample loop.

    pytest benchmarks/test_matrix_core.py --benchmark-only [--quick]
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.backends import backend_for
from fastnn.bench import baselines

BACKENDS = [name for name, why in fastnn.available_backends().items() if why is None]


def _sizes(quick):
    return (64, 128) if quick else (64, 256, 1024, 2048)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("n", [64, 128, 256, 1024, 2048])
def test_square_matmul(benchmark, quick, backend_name, dtype, n):
    if quick and n > 128:
        pytest.skip("--quick: small sizes only")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    benchmark.group = f"matmul {n}x{n} {np.dtype(dtype).name}"
    benchmark.extra_info["contender"] = backend_name
    benchmark.extra_info["gflop"] = 2 * n**3 / 1e9
    benchmark(backend_for(backend_name).matmul, a, b)


def test_naive_triple_loop(benchmark, quick):
    n = 16 if quick else 48
    a = np.random.default_rng(0).standard_normal((n, n)).tolist()
    benchmark.group = f"matmul {n}x{n} naive"
    benchmark.extra_info["contender"] = "naive loops"
    result = benchmark(baselines.naive_matmul, a, a)
    np.testing.assert_allclose(result, np.array(a) @ np.array(a), rtol=1e-10)


@pytest.mark.parametrize("contender", BACKENDS + ["per-sample loop"])
def test_batched_small(benchmark, quick, contender):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500 if quick else 20000, 2, 3)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    benchmark.group = "batched (N,2,3) @ (3,4)"
    benchmark.extra_info["contender"] = contender
    fn = baselines.per_sample_matmul if contender == "per-sample loop" else backend_for(contender).matmul
    benchmark(fn, a, b)
