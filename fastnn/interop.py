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

# PyTorch module class name -> fastnn activation name (parameterless, or the one parameter below)
_TORCH_ACTIVATIONS = {"Identity": "identity", "ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
                      "SiLU": "silu", "Softplus": "softplus", "LeakyReLU": "leaky_relu", "ELU": "elu", "GELU": "gelu"}


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs PyTorch: pip install torch") from None
    return torch


def _activation_from_torch(module: Any, dtype: Any, backend: Any) -> Layer:
    kind = type(module).__name__
    name = _TORCH_ACTIVATIONS[kind]
    alpha = None
    if kind == "LeakyReLU":
        alpha = module.negative_slope
    elif kind == "ELU":
        alpha = module.alpha
    elif kind == "GELU" and module.approximate == "tanh":
        name = "gelu_tanh"
    elif kind == "Softplus" and module.beta != 1:
        raise ValueError(f"{module!r}: only beta=1 is supported (fastnn's Softplus is log(1 + exp(x)))")
    layer = Activation(name, alpha, dtype=dtype, backend=backend)
    named = ACTIVATION_LAYERS.get(name)
    if named is not None:
        layer.__class__ = named
    return layer


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
        kind = type(part).__name__
        if isinstance(part, torch.nn.Linear):
            layer = Linear(part.in_features, part.out_features, bias=part.bias is not None, init="zeros",
                           dtype=dtype, backend=backend)
            layer.weight = part.weight.detach().cpu().numpy()
            if part.bias is not None:
                layer.bias = part.bias.detach().cpu().numpy()
        elif isinstance(part, torch.nn.Softmax):
            if part.dim not in (-1, None) and part.dim != 1:
                raise ValueError(f"module {index} {part!r}: only a softmax over the last dimension is supported")
            layer = Softmax(dtype=dtype, backend=backend)
        elif isinstance(part, torch.nn.LayerNorm):
            if len(part.normalized_shape) != 1:
                raise ValueError(f"module {index} {part!r}: only a LayerNorm over the last dimension is supported")
            layer = LayerNorm(part.normalized_shape[0], part.eps, part.elementwise_affine, dtype=dtype,
                              backend=backend)
            if part.elementwise_affine:
                layer.params["weight"][...] = layer.backend.asarray(part.weight.detach().cpu().numpy(), layer.dtype)
                layer.params["bias"][...] = layer.backend.asarray(part.bias.detach().cpu().numpy(), layer.dtype)
        elif isinstance(part, torch.nn.BatchNorm1d):
            if part.momentum is None:
                raise ValueError(f"module {index} {part!r}: momentum=None (a cumulative average) is not supported")
            layer = BatchNorm1d(part.num_features, part.eps, part.momentum, part.affine, part.track_running_stats,
                                dtype=dtype, backend=backend)
            for name, tensor in (*part.named_parameters(), *part.named_buffers()):
                store = layer.params if name in layer.params else layer.buffers
                store[name][...] = layer.backend.asarray(tensor.detach().cpu().numpy(), store[name].dtype)
        elif isinstance(part, torch.nn.Dropout):
            layer = Dropout(part.p, dtype=dtype, backend=backend)  # a mask stream of its own (Philox)
        elif kind in _TORCH_ACTIVATIONS:
            layer = _activation_from_torch(part, dtype, backend)
        else:
            raise ValueError(f"module {index} ({kind}) has no fastnn counterpart; supported: Linear, Softmax, Dropout, "
                             f"{', '.join(sorted(_TORCH_ACTIVATIONS))}")
        layers.append(layer)
    return Network(layers)


def _activation_to_torch(torch: Any, name: str, alpha: float | None) -> Any:
    nn = torch.nn
    table = {"identity": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU,
             "softplus": nn.Softplus, "gelu": nn.GELU}
    if name in table:
        return table[name]()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "leaky_relu":
        return nn.LeakyReLU(alpha)
    if name == "elu":
        return nn.ELU(alpha)
    raise ValueError(f"activation {name!r} has no PyTorch module")


def to_torch(network: Network) -> Any:
    """A ``torch.nn.Sequential`` computing what ``network`` computes, with copies of its weights
    (on the CPU, in the network's dtype)."""
    torch = _torch()
    dtype = torch.float64 if network.dtype == np.float64 else torch.float32
    modules = []
    for layer in network.layers:
        if isinstance(layer, Linear):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.has_bias, dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.asarray(layer.backend.to_numpy(layer.weight))))
                if layer.has_bias:
                    linear.bias.copy_(torch.from_numpy(np.asarray(layer.backend.to_numpy(layer.bias))))
            modules.append(linear)
            if layer.activation != "identity":
                modules.append(_activation_to_torch(torch, layer.activation, layer.alpha))
        elif isinstance(layer, Softmax):
            modules.append(torch.nn.Softmax(dim=-1))
        elif isinstance(layer, Dropout):
            modules.append(torch.nn.Dropout(layer.p))
        elif isinstance(layer, BatchNorm1d):
            norm = torch.nn.BatchNorm1d(layer.in_features, layer.eps, layer.momentum, layer.affine,
                                        layer.track_running_stats, dtype=dtype)
            norm.load_state_dict({name: torch.from_numpy(np.array(layer.backend.to_numpy(value)))
                                  for name, value in (*layer.params.items(), *layer.buffers.items())})
            modules.append(norm)
        elif isinstance(layer, LayerNorm):
            norm = torch.nn.LayerNorm(layer.in_features, layer.eps, layer.elementwise_affine, dtype=dtype)
            if layer.elementwise_affine:
                with torch.no_grad():
                    norm.weight.copy_(torch.from_numpy(np.asarray(layer.backend.to_numpy(layer.params["weight"]))))
                    norm.bias.copy_(torch.from_numpy(np.asarray(layer.backend.to_numpy(layer.params["bias"]))))
            modules.append(norm)
        elif isinstance(layer, Activation):
            modules.append(_activation_to_torch(torch, layer.activation, layer.alpha))
        else:
            raise ValueError(f"{layer!r} has no PyTorch counterpart")
    return torch.nn.Sequential(*modules)
