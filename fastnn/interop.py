"""PyTorch interop: a ``torch.nn.Sequential`` of supported modules to a fastnn ``Network`` and back.

``from_torch(module)`` maps module for module (``nn.Linear`` to ``Linear``, ``nn.ReLU`` to ``ReLU``,
...), so layer indices, and with them ``state_dict`` keys, are the same on both sides.
``to_torch(network)`` does the reverse, a ``Linear`` with a fused activation becoming an
``nn.Linear`` followed by the activation module. Weights are copied (PyTorch's ``(out, in)``
layout is fastnn's), in the network's dtype; outputs agree to float rounding.

Supported: ``Linear``, ``LayerNorm`` (over the last dimension), ``BatchNorm1d`` (with its running
statistics), ``Dropout`` (the probability;
masks are fastnn's own Philox stream), ``Identity``, ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``GELU``
(``approximate="none"`` or ``"tanh"``), ``SiLU``, ``Softplus`` (``beta=1``; PyTorch's linear
region above ``threshold=20`` equals fastnn's overflow-free form to float rounding), ``ELU``,
``Softmax(dim=-1)``. Anything else raises ``ValueError`` naming the module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layers import ACTIVATION_LAYERS, Activation, BatchNorm1d, Dropout, Layer, LayerNorm, Linear, Softmax
from .network import Network


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs PyTorch: pip install torch") from None
    return torch


def _softplus_name(module: Any) -> tuple[str, None]:
    if module.beta != 1:
        raise ValueError(f"{module!r}: only beta=1 is supported (fastnn's Softplus is log(1 + exp(x)))")
    return "softplus", None


# PyTorch activation class name -> (module -> (fastnn activation name, its parameter or None))
_ACTIVATIONS_FROM_TORCH = {
    "Identity": lambda m: ("identity", None), "ReLU": lambda m: ("relu", None), "Sigmoid": lambda m: ("sigmoid", None),
    "Tanh": lambda m: ("tanh", None), "SiLU": lambda m: ("silu", None), "Softplus": _softplus_name,
    "LeakyReLU": lambda m: ("leaky_relu", m.negative_slope), "ELU": lambda m: ("elu", m.alpha),
    "GELU": lambda m: ("gelu_tanh" if m.approximate == "tanh" else "gelu", None),
}


def _activation_from_torch(module: Any, **layer_args: Any) -> Layer:
    name, alpha = _ACTIVATIONS_FROM_TORCH[type(module).__name__](module)
    layer = Activation(name, alpha, **layer_args)
    named = ACTIVATION_LAYERS.get(name)
    if named is not None:  # a ReLU comes back as a ReLU
        layer.__class__ = named
    return layer


def _softmax_from_torch(module: Any, **layer_args: Any) -> Layer:
    if module.dim not in (-1, 1, None):
        raise ValueError(f"{module!r}: only a softmax over the last dimension is supported")
    return Softmax(**layer_args)


def _layer_norm_from_torch(module: Any, **layer_args: Any) -> Layer:
    if len(module.normalized_shape) != 1:
        raise ValueError(f"{module!r}: only a LayerNorm over the last dimension is supported")
    return LayerNorm(module.normalized_shape[0], module.eps, module.elementwise_affine, **layer_args)


def _batch_norm_from_torch(module: Any, **layer_args: Any) -> Layer:
    if module.momentum is None:
        raise ValueError(f"{module!r}: momentum=None (a cumulative average) is not supported")
    return BatchNorm1d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       **layer_args)


# PyTorch module class name -> the fastnn layer of the same shape (its weights are copied after)
_FROM_TORCH = {
    "Linear": lambda m, **kw: Linear(m.in_features, m.out_features, bias=m.bias is not None, init="zeros", **kw),
    "Softmax": _softmax_from_torch, "LayerNorm": _layer_norm_from_torch, "BatchNorm1d": _batch_norm_from_torch,
    "Dropout": lambda m, **kw: Dropout(m.p, **kw),  # a mask stream of its own (Philox)
    **{name: _activation_from_torch for name in _ACTIVATIONS_FROM_TORCH},
}


def from_torch(module: Any, dtype: Any = None, backend: Any = None) -> Network:
    """A fastnn ``Network`` with ``module``'s layers and weights (a ``torch.nn.Sequential``, or
    a single supported module). ``dtype`` defaults to the module's (float32 or float64)."""
    torch = _torch()
    modules = list(module) if isinstance(module, torch.nn.Sequential) else [module]
    if dtype is None:
        floats = [p.dtype for p in module.parameters()]
        dtype = np.float64 if floats and floats[0] == torch.float64 else np.float32
    layers: list[Layer] = []
    for index, part in enumerate(modules):
        make = _FROM_TORCH.get(type(part).__name__)
        if make is None:
            raise ValueError(f"module {index} ({type(part).__name__}) has no fastnn counterpart; supported: "
                             f"{', '.join(sorted(_FROM_TORCH))}")
        try:
            layer = make(part, dtype=dtype, backend=backend)
        except ValueError as exc:
            raise ValueError(f"module {index}: {exc}") from None
        state = {name: tensor.detach().cpu().numpy() for name, tensor in part.state_dict().items()}
        for store in (layer.params, layer.buffers):  # PyTorch's names are fastnn's
            for name, value in store.items():
                value[...] = layer.backend.asarray(state[name], value.dtype)
        layers.append(layer)
    return Network(layers)


def _activation_to_torch(torch: Any, name: str, alpha: float | None) -> Any:
    nn = torch.nn
    factories = {"identity": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU,
                 "softplus": nn.Softplus, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                 "leaky_relu": lambda: nn.LeakyReLU(alpha), "elu": lambda: nn.ELU(alpha)}
    return factories[name]()


def _modules_for(torch: Any, layer: Layer, dtype: Any) -> list[Any]:
    """The PyTorch modules computing ``layer`` (a Linear with a fused activation is two), the first
    one shaped to take the layer's parameters and buffers."""
    nn = torch.nn
    kind = layer.kind
    makers = {
        "Activation": lambda: [_activation_to_torch(torch, layer.activation, layer.alpha)],
        "Linear": lambda: [nn.Linear(layer.in_features, layer.out_features, bias=layer.has_bias, dtype=dtype)]
        + ([] if layer.activation == "identity" else [_activation_to_torch(torch, layer.activation, layer.alpha)]),
        "Softmax": lambda: [nn.Softmax(dim=-1)],
        "Dropout": lambda: [nn.Dropout(layer.p)],
        "LayerNorm": lambda: [nn.LayerNorm(layer.in_features, layer.eps, layer.elementwise_affine, dtype=dtype)],
        "BatchNorm1d": lambda: [nn.BatchNorm1d(layer.in_features, layer.eps, layer.momentum, layer.affine,
                                               layer.track_running_stats, dtype=dtype)],
    }
    if kind not in makers:
        raise ValueError(f"{layer!r} has no PyTorch counterpart")
    return makers[kind]()


def to_torch(network: Network) -> Any:
    """A ``torch.nn.Sequential`` computing what ``network`` computes, with copies of its weights
    (on the CPU, in the network's dtype)."""
    torch = _torch()
    dtype = torch.float64 if network.dtype == np.float64 else torch.float32
    modules = []
    for layer in network.layers:
        parts = _modules_for(torch, layer, dtype)
        state = {name: torch.from_numpy(np.array(layer.backend.to_numpy(value)))
                 for name, value in (*layer.params.items(), *layer.buffers.items())}
        parts[0].load_state_dict(state)  # PyTorch's names are fastnn's
        modules += parts
    return torch.nn.Sequential(*modules)
