"""Small data sets for examples and tests (no downloads)."""

from __future__ import annotations

from typing import Any

import numpy as np


def xor(dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points ``X (4, 2)`` and targets ``y (4, 1)`` in {0, 1}."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    y = np.array([[0], [1], [1], [0]], dtype=dtype)
    return X, y


def digits(test_size: float = 0.2, seed: int = 0, dtype: Any = np.float32
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images), pixels scaled to [0, 1].

    Returns ``X_train (n, 64), X_test (m, 64), y_train (n,), y_test (m,)`` with integer labels
    0-9; the default split is seed 003's 1437/360. Needs the ``data`` extra (scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("fastnn.datasets.digits needs scikit-learn: pip install 'fastnn[data]'") from None
    data = load_digits()
    X = (data.data / 16.0).astype(dtype)
    y = data.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed)
    return X_train, X_test, y_train, y_test


def one_hot(labels: Any, classes: int, dtype: Any = np.float32) -> np.ndarray:
    """``(N,)`` integer labels in ``[0, classes)`` -> ``(N, classes)`` one-hot rows (for MSE, as in
    seed 003). Labels that are not integers, or out of range, raise ``ValueError`` (NumPy's
    indexing would encode -1 as the last class)."""
    labels = np.asarray(labels)
    if not isinstance(classes, (int, np.integer)) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"one_hot: classes must be a positive integer, got {classes!r}")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels))):
        raise ValueError(f"one_hot: labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"one_hot: labels must lie in [0, {classes}), got values from {labels.min()} to "
                         f"{labels.max()}")
    labels = labels.astype(np.intp)
    out = np.zeros((labels.size, classes), dtype=dtype)
    out[np.arange(labels.size), labels.reshape(-1)] = 1
    return out
