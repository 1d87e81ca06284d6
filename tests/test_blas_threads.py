"""BLAS threads by GEMM size (``fastnn.blas_threads``): one thread for a fit of small products,
NumPy's own count for large ones and after every fit; the choice never depends on the load."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import blas_threads
from fastnn.kernels import blas

FOUND = blas.find()
pytestmark = pytest.mark.skipif(FOUND is None, reason="NumPy's BLAS is not an OpenBLAS threadpoolctl finds")


def _threads_seen_during_fit(sizes, X, y, batch_size):
    """The BLAS thread count each forward of the first layer saw."""
    net = fastnn.Network([fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=k, backend="numpy")
                          for k, (i, o) in enumerate(zip(sizes, sizes[1:]))])
    seen = []
    first = net.layers[0]
    forward = first.forward

    def spying(x):
        seen.append(FOUND.get_num_threads())
        return forward(x)

    first.forward = spying
    net.fit(X, y, "cross_entropy", fastnn.SGD(0.01), epochs=1, batch_size=batch_size, progress=False)
    return seen


def test_a_fit_of_small_products_runs_blas_on_one_thread_and_restores_it():
    before = FOUND.get_num_threads()
    X, _, y, _ = fastnn.datasets.digits()
    seen = _threads_seen_during_fit((64, 128, 64, 10), X[:256], y[:256], 64)
    assert blas_threads.largest_gemm(fastnn.Network([fastnn.Linear(64, 128)]), (64,), 64) == 64 * 64 * 128
    assert seen and set(seen) == {1}
    assert FOUND.get_num_threads() == before


def test_a_fit_of_large_products_keeps_numpys_threads():
    before = FOUND.get_num_threads()
    rng = np.random.default_rng(0)
    X, y = rng.random((512, 784), dtype=np.float32), rng.integers(0, 10, 512)
    assert blas_threads.largest_gemm(fastnn.Network([fastnn.Linear(784, 1024)]), (784,), 256) >= \
        blas_threads.SMALL_GEMM
    seen = _threads_seen_during_fit((784, 1024, 10), X, y, 256)
    assert seen and set(seen) == {before}


def test_leading_dimensions_count_as_rows():
    net = fastnn.Network([fastnn.Linear(8, 4), fastnn.ReLU(), fastnn.Linear(4, 2)])
    assert blas_threads.largest_gemm(net, (5, 8), 3) == 3 * 5 * 8 * 4
    assert blas_threads.largest_gemm(fastnn.Network([fastnn.ReLU()]), (8,), 3) == 0
