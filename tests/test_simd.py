"""The hand-written vector code of ``kernels/numba/simd.py``: the NaN-skipping row maximum the
softmax kernels use, against the scalar fold it replaces, and the register-tile transpose the
whole-step trainer refreshes its transposed weights with."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn

pytestmark = [pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable"),
              pytest.mark.own_backends]  # the Numba kernels themselves

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30]


def _fold(row):
    m = row[0]
    for v in row[1:]:
        m = v if v > m else m
    return m


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 70), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16),
       specials=st.lists(st.tuples(st.integers(0, 69), st.sampled_from(SPECIAL)), max_size=4),
       strided=st.booleans())
def test_row_max_is_the_scalar_fold(n, dtype, seed, specials, strided):
    """Contiguous rows take the vector path, strided ones the scalar loop; both give the fold's
    value (NaN skipped unless it is the first element; inf and -inf as they are)."""
    from fastnn.kernels.numba.losses import row_max

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((3, 2 * n)).astype(dtype)
    view = z[:, ::2] if strided else z[:, :n]
    for at, value in specials:
        view[1, at % n] = value
    got = row_max(view, 1)
    want = _fold(list(view[1]))
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert dtype(got) == want  # (a zero maximum may differ in sign only)


def test_a_nan_first_element_gives_nan_and_a_later_one_is_skipped():
    from fastnn.kernels.numba.losses import row_max

    z = np.arange(40, dtype=np.float32).reshape(1, 40)
    z[0, 17] = np.nan
    assert row_max(z, 0) == 39
    z[0, 0] = np.nan
    assert np.isnan(row_max(z, 0))


@functools.cache
def _jit_transpose():
    """The tile transpose behind a jitted call, compiled once per dtype for all the examples (a
    wrapper made per example recompiled every time: ~0.4 s each)."""
    from numba import njit

    from fastnn.kernels.numba import simd

    @njit
    def transpose(source, destination, rows, cols, one):
        simd.transpose_tile(source.ctypes.data, source.shape[1], destination.ctypes.data, destination.shape[1],
                            rows, cols, one)

    return transpose


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_transpose_tile_writes_the_transpose_and_nothing_else(dtype, data):
    """Any tile up to a vector's lanes on each side, between arrays wider than it (row strides
    of their own); the cells around the tile on both sides stay as they were."""
    from fastnn.kernels.numba import simd

    transpose = _jit_transpose()
    lanes = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rows, cols = data.draw(st.integers(0, lanes)), data.draw(st.integers(0, lanes))
    source = np.random.default_rng(rows * 31 + cols).standard_normal((lanes + 2, lanes + data.draw(st.integers(0, 9))))
    source = source.astype(dtype)
    source[0, 0] = np.nan  # carried like any value
    destination = np.full((lanes + 3, lanes + data.draw(st.integers(0, 9))), -7.0, dtype)
    transpose(source, destination, rows, cols, dtype(1))
    want = np.full_like(destination, -7.0)
    want[:cols, :rows] = source[:rows, :cols].T
    np.testing.assert_array_equal(destination, want)
