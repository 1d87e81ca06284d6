"""A network described as a plain stack of dense layers, for backends that train one whole step
in a single call (``Backend.dense_trainer``).

The plan is data only: per layer its sizes, activation and where its weight and bias sit in
the network's flat parameter buffer. ``Linear`` layers qualify, each optionally followed by an
``Activation`` layer (folded into it when the ``Linear`` has none), with a ``LayerNorm`` between
the two (``Linear`` without activation, ``LayerNorm``, activation: the usual pre-activation
norm), and then a ``Dropout`` (not after the last layer: the loss reads the logits), trained with softmax
cross-entropy on integer labels or with mean squared error on targets shaped like the output
(seed 003's recipe). Any other layer or loss gives no plan, and ``fit`` keeps the per-layer
path. Layers know nothing of this: the plan reads their public attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import losses as _losses
from .layers import Activation, Dropout, LayerNorm, Linear


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
    dropout: float = 0.0  # a Dropout(p) after the activation (0: none)
    dropout_seed: int = 0
    # a LayerNorm between the affine map and the activation: y = g(LN(x @ W.T + b))
    norm: bool = False
    norm_eps: float = 1e-5
    norm_weight_offset: int | None = None
    norm_bias_offset: int | None = None


@dataclass(frozen=True)
class DensePlan:
    layers: tuple[DenseLayer, ...]
    loss: str  # "cross_entropy" (softmax on the last layer's output, integer labels) or "mse"
    dtype: np.dtype


def dense_plan(network: Any, loss: _losses.Loss, X: Any, target: Any) -> DensePlan | None:
    """The plan of ``network`` trained with ``loss`` on ``X (N, in)`` and ``target`` (as
    ``prepare`` checked them), or None."""
    if X.ndim != 2:
        return None
    if isinstance(loss, _losses.CrossEntropy) and target.ndim == 1 and target.dtype.kind in "iu":
        kind = "cross_entropy"
    elif type(loss) is _losses.MSE and target.ndim == 2:
        kind = "mse"
    else:
        return None
    offsets = network.parameter_offsets()
    stack: list[DenseLayer] = []
    for index, layer in enumerate(network.layers):
        if isinstance(layer, Linear):
            stack.append(DenseLayer(layer.in_features, layer.out_features, layer.activation, layer.alpha,
                                    offsets[index, "weight"], offsets.get((index, "bias"))))
        elif isinstance(layer, LayerNorm) and stack and stack[-1].activation == "identity" \
                and stack[-1].dropout == 0 and not stack[-1].norm:
            stack[-1] = replace(stack[-1], norm=True, norm_eps=layer.eps,
                                norm_weight_offset=offsets.get((index, "weight")),
                                norm_bias_offset=offsets.get((index, "bias")))
        elif isinstance(layer, Activation) and stack and stack[-1].activation == "identity" \
                and stack[-1].dropout == 0:
            stack[-1] = replace(stack[-1], activation=layer.activation, alpha=layer.alpha)
        elif isinstance(layer, Dropout) and stack and stack[-1].dropout == 0 and index < len(network.layers) - 1:
            if layer.p > 0:
                stack[-1] = replace(stack[-1], dropout=layer.p, dropout_seed=layer.seed)
        else:
            return None
    if not stack:
        return None
    if kind == "mse" and target.shape[1] != stack[-1].out_features:
        return None
    return DensePlan(tuple(stack), kind, network.dtype)
