"""Pictures of training: loss curves, 2-D decision boundaries, confusion matrices.

Needs matplotlib (``pip install 'fastnn[plot]'``); it is imported only when a plot is drawn, with
the non-interactive Agg backend, so plotting works on machines without a display.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastnn[plot]'") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def history(history: Any, path: str | os.PathLike, title: str = "training") -> str:
    """Loss (and accuracy, where recorded) per epoch, train and validation; returns ``path``."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if history.epochs and "accuracy" in history.epochs[0]
                                    else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (metric, label) in zip(axes[0], panels):
        axis.plot(epochs, history[metric], label=f"train {label}", marker="." if len(epochs) < 50 else None)
        if history.epochs and f"val_{metric}" in history.epochs[0]:
            axis.plot(epochs, history[f"val_{metric}"], label=f"validation {label}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def decision_boundary(network: Any, X: Any, y: Any, path: str | os.PathLike, resolution: int = 200,
                      title: str = "decision boundary") -> str:
    """For 2-D inputs: the network's output probability over the plane, the 0.5 contour and the
    points coloured by their label (seed 002's XOR picture). Binary outputs of one unit are read
    as logits if they leave [0, 1], else as probabilities; several outputs by softmax class 1."""
    plt = _pyplot()
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y).reshape(len(X), -1)[:, 0] if np.asarray(y).ndim > 1 else np.asarray(y)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"decision_boundary needs 2-D inputs (N, 2), got X of shape {X.shape}")
    margin = 0.5
    xs = np.linspace(X[:, 0].min() - margin, X[:, 0].max() + margin, resolution)
    ys = np.linspace(X[:, 1].min() - margin, X[:, 1].max() + margin, resolution)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    out = np.asarray(network.backend.to_numpy(network.predict(grid)), dtype=np.float64)
    if out.shape[-1] == 1:
        out = out[:, 0]
        prob = out if (out.min() >= 0 and out.max() <= 1) else 1 / (1 + np.exp(-np.clip(out, -60, 60)))
    else:
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        prob = (shifted / shifted.sum(axis=1, keepdims=True))[:, 1]
    fig, axis = plt.subplots(figsize=(5, 4.5))
    surface = axis.contourf(grid_x, grid_y, prob.reshape(grid_x.shape), levels=np.linspace(0, 1, 21), cmap="RdBu_r")
    axis.contour(grid_x, grid_y, prob.reshape(grid_x.shape), levels=[0.5], colors="k", linewidths=1.5)
    for value, marker, colour in ((0, "o", "#2166ac"), (1, "s", "#b2182b")):
        chosen = labels == value
        axis.scatter(X[chosen, 0], X[chosen, 1], marker=marker, c=colour, edgecolors="white", linewidths=2,
                     s=140, label=f"label {value}", zorder=3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.colorbar(surface, ax=axis, label="P(class 1)")
    axis.set_xlabel("x1")
    axis.set_ylabel("x2")
    axis.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion_counts(predicted: Any, actual: Any, classes: int) -> np.ndarray:
    """``counts[i, j]`` = samples of class ``i`` predicted as ``j``."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(actual).reshape(-1), np.asarray(predicted).reshape(-1)), 1)
    return counts


def confusion_matrix(network: Any, X: Any, y: Any, path: str | os.PathLike, title: str = "confusion matrix") -> str:
    """Predicted against true class for a classifier (integer labels ``y``); returns ``path``."""
    plt = _pyplot()
    scores = np.asarray(network.backend.to_numpy(network.predict(X)))
    labels = np.asarray(y).reshape(-1)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"confusion_matrix needs class scores (N, classes), got outputs of shape {scores.shape}")
    classes = scores.shape[1]
    counts = confusion_counts(scores.argmax(axis=1), labels, classes)
    fig, axis = plt.subplots(figsize=(5.5, 5))
    image = axis.imshow(counts, cmap="Blues")
    for i in range(classes):
        for j in range(classes):
            if counts[i, j]:
                axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                          color="white" if counts[i, j] > counts.max() / 2 else "black")
    axis.set_xticks(range(classes))
    axis.set_yticks(range(classes))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axis.set_title(f"{title} (accuracy {accuracy:.3f})")
    fig.colorbar(image, ax=axis, label="test samples")
    fig.tight_layout()
    return _save(fig, path)
