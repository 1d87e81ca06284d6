"""A network described as a plain stack of dense layers, for backends that train one whole step
in a single call (``Backend.dense_trainer``).

The plan is data only: per layer its sizes, activation and where its weight and bias sit in
the network's flat parameter buffer. ``Linear`` layers qualify, each optionally followed by an
``Activation`` layer (folded into it when the ``Linear`` has none); any other layer, or a loss
other than softmax cross-entropy on integer labels, gives no plan and ``fit`` keeps the
per-layer path. Layers know nothing of this: the plan reads their public attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import losses as _losses
from .layers import Activation, Linear


@dataclass(frozen=True)
class DenseLayer:
    """``y = g(x @ W.T + b)`` with ``W (out, in)`` at ``weight_offset`` and ``b (out,)`` at
    ``bias_offset`` (None: no bias) in the flat parameter buffer."""

    in_features: int
    out_features: int
    activation: str
    alpha: float | None
    weight_offset: int
    bias_offset: int | None


@dataclass(frozen=True)
class DensePlan:
    layers: tuple[DenseLayer, ...]
    loss: str  # "cross_entropy": softmax cross-entropy on the last layer's output, integer labels
    dtype: np.dtype


def dense_plan(network: Any, loss: _losses.Loss, X: Any, target: Any) -> DensePlan | None:
    """The plan of ``network`` trained with ``loss`` on ``X (N, in)`` and ``target``, or None."""
    if not isinstance(loss, _losses.CrossEntropy) or X.ndim != 2 or target.ndim != 1 \
            or target.dtype.kind not in "iu":
        return None
    offsets = network.parameter_offsets()
    stack: list[DenseLayer] = []
    for index, layer in enumerate(network.layers):
        if isinstance(layer, Linear):
            stack.append(DenseLayer(layer.in_features, layer.out_features, layer.activation, layer.alpha,
                                    offsets[index, "weight"], offsets.get((index, "bias"))))
        elif isinstance(layer, Activation) and stack and stack[-1].activation == "identity":
            stack[-1] = replace(stack[-1], activation=layer.activation, alpha=layer.alpha)
        else:
            return None
    if not stack:
        return None
    return DensePlan(tuple(stack), "cross_entropy", network.dtype)
