"""Compute kernels, one sub-package per backend (installed as ``fastnn.kernels``).

``numpy/`` is the reference implementation of the kernel contract documented in
``fastnn.backends.base.Backend``; every other backend's kernels are checked against it by the
conformance suite. Non-Python kernel sources (CUDA) are package data, found with
``kernel_source(relative_path)`` whether fastnn runs from a checkout or from an installed wheel.
"""

from __future__ import annotations

from importlib import resources


def kernel_source(relative_path: str) -> str:
    """Return the text of a kernel source file under ``kernels/``, e.g. ``"numpy/activations.py"``."""
    node = resources.files(__name__)
    for part in relative_path.split("/"):
        node = node / part
    if not node.is_file():
        raise FileNotFoundError(f"no kernel source {relative_path!r} in {resources.files(__name__)}")
    return node.read_text(encoding="utf-8")
