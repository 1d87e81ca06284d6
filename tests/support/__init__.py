"""Test support code: the NumPy-backed stand-in for CuPy and the host build of the CUDA kernels."""
