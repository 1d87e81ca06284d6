"""The whole-step trainer's register-tiled GEMM (``kernels/numba/small_gemm.py``) and the
transposed weight copies it reads, against float64 NumPy."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn

pytestmark = [pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable"),
              pytest.mark.own_backends]  # the Numba kernels themselves


@functools.cache
def _jit_gemm():
    """The kernel behind a jitted call, compiled once per dtype for every test and example (a
    wrapper made per call recompiled each time: ~1 s for each of 60 examples)."""
    from numba import njit

    from fastnn.kernels.numba import small_gemm

    @njit
    def call(a, sa_i, sa_k, b, c, m, n, k, one):
        small_gemm.gemm(a.ctypes.data, sa_i, sa_k, b.ctypes.data, b.shape[1], c.ctypes.data, c.shape[1], m, n, k, one)

    return call


def _gemm_into(a, b, c, transpose_a=False):
    """c[:m, :n] = op(a) @ b through the kernel, with a's strides swapped for a transposed a."""
    k, n = b.shape
    m = a.shape[1] if transpose_a else a.shape[0]
    sa_i, sa_k = (1, a.shape[1]) if transpose_a else (a.shape[1], 1)
    _jit_gemm()(a, sa_i, sa_k, b, c, m, n, k, a.dtype.type(1))


def _tolerance(dtype, k):
    return {"rtol": 1e-5, "atol": 1e-5 * max(k, 1) ** 0.5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 37), n=st.integers(1, 70), k=st.integers(0, 40), transpose_a=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16))
def test_any_shape_matches_numpy_and_writes_only_its_block(m, n, k, transpose_a, dtype, seed):
    """Rows past a multiple of the tile height, columns past a multiple of the vector width
    (masked), k = 0 (zeros); c's padding column and row stay untouched."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if transpose_a else (m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = np.full((m + 1, n + 1), 7.0, dtype)
    _gemm_into(a, b, c, transpose_a)
    op_a = (a.T if transpose_a else a).astype(np.float64)
    np.testing.assert_allclose(c[:m, :n], op_a @ b.astype(np.float64), **_tolerance(dtype, k))
    assert (c[m, :] == 7).all() and (c[:, n] == 7).all()


@pytest.mark.parametrize("shape", [(32, 128, 64), (32, 10, 64), (128, 64, 32), (5, 33, 17)])
def test_the_training_step_shapes(shape, dtype):
    m, n, k = shape
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = np.empty((m, n), dtype)
    _gemm_into(a, b, c)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, **_tolerance(dtype, k))


def test_nan_and_inf_propagate(dtype):
    a = np.ones((6, 3), dtype)
    b = np.ones((3, 20), dtype)
    a[1, 2] = np.nan
    b[0, 17] = np.inf
    c = np.empty((6, 20), dtype)
    _gemm_into(a, b, c)
    with np.errstate(invalid="ignore"):
        expected = a.astype(np.float64) @ b
    np.testing.assert_array_equal(c, expected.astype(dtype))
    assert np.isnan(c[1]).all() and np.isposinf(c[[0, 2, 3, 4, 5], 17]).all()


def test_every_layer_with_a_copy_gets_its_transposed_weights():
    """The copy of each layer that has one (offset >= 0) is its W.T, whatever its shape against
    the register tile; layers without a copy (offset -1) are skipped."""
    from fastnn.kernels.numba.dense_step import transpose_weights

    shapes = [(64, 128), (128, 64), (64, 10), (7, 3), (33, 17)]  # (in, out)
    rows, offset, copy = [], 0, 0
    for index, (n_in, n_out) in enumerate(shapes):
        keeps_copy = index != 3
        rows.append([n_in, n_out, 0, offset, -1, 0, 0, 0, copy if keeps_copy else -1, 0])
        offset += n_in * n_out + 5  # a bias-sized gap between weight blocks
        copy += n_in * n_out if keeps_copy else 0
    layers = np.array(rows, np.int64)
    params = np.arange(offset, dtype=np.float32)
    expected = np.concatenate([params[r[3]:r[3] + r[0] * r[1]].reshape(r[1], r[0]).T.ravel() for r in rows
                               if r[8] >= 0])
    wt = np.full(copy + 3, np.nan, np.float32)
    transpose_weights(params, wt, layers)
    np.testing.assert_array_equal(wt[:copy], expected)
    assert np.isnan(wt[copy:]).all()  # nothing written past the copies
