"""Numba-JIT CPU kernels: fused, one pass over memory, parallel over rows where it pays.

Importing this package imports numba but compiles nothing: every kernel is compiled on first
call (and cached on disk, ``cache=True``, so a second process loads it instead). Maths is done in
float64 registers for both dtypes and rounded once on store, so float32 results are at least as
accurate as the NumPy reference's.
"""

from .threading_layer import prepare as _prepare_threading_layer

_prepare_threading_layer()  # before any kernel can start Numba's threads: see threading_layer.py
