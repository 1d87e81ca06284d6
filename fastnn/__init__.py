"""fastnn: dense neural networks with explicit backpropagation on NumPy, Numba or CuPy.

Quick start::

    import fastnn
    net = fastnn.Network([fastnn.Linear(64, 128, "relu"), fastnn.Linear(128, 10)])
    net.fit(X, y, loss="cross_entropy", optimizer=fastnn.SGD(0.1), epochs=10, batch_size=64)
"""

from __future__ import annotations

from . import datasets, init, interop, losses, plots, schedules
from .activations import ACTIVATIONS
from .backends import available_backends, get_backend, set_backend, use_backend
from .backends.base import to_dlpack, to_numpy
from .early_stopping import EarlyStopping
from .errors import BackendUnavailable
from .gradcheck import gradcheck
from .layers import (
    ELU,
    GELU,
    Activation,
    BatchNorm1d,
    Dropout,
    Identity,
    Layer,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from .network import Network
from .optimizers import SGD, Adam, AdamW, Optimizer
from .training import History

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Adam", "AdamW", "BackendUnavailable", "BatchNorm1d", "Dropout", "ELU",
    "EarlyStopping", "GELU", "History", "Identity", "Layer", "LayerNorm", "LeakyReLU", "Linear", "Network",
    "Optimizer", "ReLU", "SGD", "SiLU", "Sigmoid", "Softmax", "Softplus", "Tanh", "available_backends",
    "datasets", "get_backend", "gradcheck", "init", "interop", "losses", "plots", "schedules", "set_backend",
    "to_dlpack", "to_numpy", "use_backend",
]
