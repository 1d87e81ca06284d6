"""BLAS threads by GEMM size: one thread for a fit whose matrix products are all small.

A second OpenBLAS thread buys nothing on small products and costs a great deal on a shared
machine: its threads spin while they wait for work and fight any other busy process for the
cores. Measured on a 2-vCPU Xeon (family 6, model 207), float32, one GEMM alone:
0.5M multiply-adds (64x64x128) took 13 us on one thread and on two; 4.2M (64x256x256) 105 us on
one and 66 us on two; 205M (256x784x1024) 4.4 ms and 2.3 ms. A digits fit on the NumPy backend
(largest product 0.5M) ran at 218,000-231,000 samples/s on one thread and 195,000-225,000 on
two, quiet, alternated in one process; beside one busy process, 57,000 on two threads and
228,000 on one (``python benchmarks/training.py --backend numpy --epochs 10 --repeats 3 --busy``
with and without ``OPENBLAS_NUM_THREADS=1``).

The threshold was measured on that Xeon only; an AMD EPYC has not been measured, and a CPU whose
second thread pays off sooner would want it lower. The choice depends only on the network and the
batch size, never on the load, so a run and its
resumed continuation use the same thread count and stay bit for bit the same (OpenBLAS's
results can differ in the last bits between thread counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

# Below this many multiply-adds per product a second BLAS thread did not pay (see above).
SMALL_GEMM = 1 << 21


def largest_gemm(network: Any, sample_shape: tuple[int, ...], batch_size: int) -> int:
    """Multiply-adds of the largest matrix product one training step of ``network`` makes on
    batches of ``batch_size`` samples of ``sample_shape`` (the products of its dense layers:
    forward, and the weight and input gradients, all ``rows x in x out``)."""
    rows = batch_size * int(np.prod(sample_shape[:-1], dtype=np.int64))
    from .layers import Linear

    return max((rows * layer.in_features * layer.out_features for layer in network.layers
                if isinstance(layer, Linear)), default=0)


@contextlib.contextmanager
def for_fit(network: Any, sample_shape: tuple[int, ...], batch_size: int) -> Iterator[bool]:
    """For the length of a fit: NumPy's BLAS on one thread when every product is small (yields
    True then). The one-thread state is ``fastnn.kernels.blas.single_threaded``'s refcounted
    section, so overlapping fits agree on who restores the count. Inert where NumPy's BLAS is
    not an OpenBLAS that threadpoolctl finds."""
    if largest_gemm(network, sample_shape, batch_size) >= SMALL_GEMM:
        yield False
        return
    from .kernels import blas  # ctypes and threadpoolctl only: no Numba

    found = blas.find()
    if found is None:
        yield False
        return
    with blas.single_threaded(found):
        yield True
