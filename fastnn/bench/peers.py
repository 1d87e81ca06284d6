"""The frameworks a user would train these MLPs with instead, each written the way its users
make it fast on a CPU, for every benchmark that compares against them (``fastnn bench``,
``benchmarks/training.py`` and ``benchmarks/test_training_throughput.py``):

- ``torch``: PyTorch eager; ``torch.compile``: the same with ``torch.compile`` on the model
  (forward and backward through Inductor's generated C++);
- ``jax jit+scan``: a whole epoch in one ``jax.jit``, ``lax.scan`` over the batches (the ragged
  last batch one more step inside the same jit), SGD by hand: the strongest CPU peer we know;
- ``jax jit/step``: one ``jax.jit`` step per batch, as most JAX training loops are written.

``start(name, recipe, X, y)`` gives a ``Session`` with a fresh model (``epoch()``, ``predict``);
``train(name, recipe, X, y, epochs)`` times its epochs and returns a ``Trained``. What a
contender compiles (the jitted epoch or step, the compiled model) is built once per process and
recipe and reused, and the first epoch's compilation is reported apart (``Trained.compile_s``),
not as an epoch. ``missing(name)`` says why a contender cannot run here (not installed), or None.

Each peer runs best in a process of its own: PyTorch's OpenMP workers keep spinning after each
op, and XLA keeps a thread pool over every core, either of which steals cores from whatever runs
beside them.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INSTALL = {"torch": "pip install torch==2.13.0", "jax": "pip install jax"}
PEERS = ("torch", "torch.compile", "jax jit+scan", "jax jit/step")
# compiling these takes longer than a smoke run (torch.compile: ~30 s cold): left out of --quick runs
SLOW_TO_COMPILE = ("torch.compile", "jax jit/step")


@dataclass(frozen=True)
class Recipe:
    """What every contender trains: a dense stack ``sizes`` with ``hidden`` after each hidden
    layer and ``output`` after the last, ``loss`` ("cross_entropy" on integer labels, or "mse" on
    one-hot targets made from them), plain SGD at ``lr`` on shuffled batches of ``batch``,
    float32. ``init``: "default" (PyTorch's uniform(+-1/sqrt(fan_in))) or "half" (uniform(-0.5,
    0.5), the lecture's). ``dropout`` after and ``layer_norm`` before each hidden activation:
    PyTorch only. ``threads``: PyTorch's intra-op threads (None: its default)."""

    sizes: tuple[int, ...]
    batch: int
    lr: float
    hidden: str = "relu"
    output: str = "identity"
    loss: str = "cross_entropy"
    init: str = "default"
    dropout: float = 0.0
    layer_norm: bool = False
    threads: int | None = None


@dataclass
class Trained:
    """``seconds``: each timed epoch; ``predict(X) -> (N, classes)`` NumPy outputs; ``compile_s``:
    the seconds the first epoch took beyond the second where it compiled, else None."""

    seconds: list[float]
    predict: Callable[[np.ndarray], np.ndarray]
    compile_s: float | None = field(default=None)


def missing(name: str) -> str | None:
    """Why contender ``name`` cannot run here, or None."""
    module = "torch" if name.startswith("torch") else "jax"
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({INSTALL[module]})"
    return None


@dataclass
class Session:
    """A contender ready to train: ``epoch()`` trains one shuffled epoch and returns once it is
    done (device work included); ``predict(X) -> (N, classes)`` NumPy outputs; ``compiles``:
    its first epoch compiles (or loads this process's build)."""

    epoch: Callable[[], None]
    predict: Callable[[np.ndarray], np.ndarray]
    compiles: bool


def start(name: str, recipe: Recipe, X: np.ndarray, y: np.ndarray) -> Session:
    """Contender ``name`` (one of ``PEERS``) with a fresh model, on ``X`` float32 ``(N, sizes[0])``
    and labels ``y`` ``(N,)``."""
    why = missing(name)
    if why is not None:
        raise RuntimeError(f"{name}: {why}")
    return _START[name](recipe, np.ascontiguousarray(X, np.float32), np.ascontiguousarray(y, np.int64))


def train(name: str, recipe: Recipe, X: np.ndarray, y: np.ndarray, epochs: int) -> Trained:
    """``epochs`` timed epochs of a fresh ``start(name, ...)``; a contender that compiles first
    runs one more epoch, untimed, where it does."""
    session = start(name, recipe, X, y)

    def timed() -> float:
        started = time.perf_counter()
        session.epoch()
        return time.perf_counter() - started

    first = timed() if session.compiles else None
    seconds = [timed() for _ in range(epochs)]
    return Trained(seconds, session.predict, None if first is None else max(first - seconds[0], 0.0))


def _targets(recipe: Recipe, y: np.ndarray) -> np.ndarray:
    return y if recipe.loss == "cross_entropy" else np.eye(recipe.sizes[-1], dtype=np.float32)[y]


def _initial(recipe: Recipe) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights ``(out, in)`` and biases, float32, the same for every contender."""
    rng = np.random.default_rng(0)
    params = []
    for fan_in, fan_out in zip(recipe.sizes, recipe.sizes[1:]):
        bound = 0.5 if recipe.init == "half" else 1.0 / np.sqrt(fan_in)
        params.append((rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                       rng.uniform(-bound, bound, fan_out).astype(np.float32)))
    return params


# --- PyTorch ---------------------------------------------------------------------------------------

_TORCH_COMPILED: dict = {}  # one compiled model per recipe and process: later runs reuse its code


def _torch_start(recipe: Recipe, X: np.ndarray, y: np.ndarray, compiled: bool = False) -> Session:
    import torch

    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    activations = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}
    layers: list[Any] = []
    last = len(recipe.sizes) - 2
    for k, (W, b) in enumerate(_initial(recipe)):
        linear = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if k < last:
            layers += [torch.nn.LayerNorm(W.shape[0])] if recipe.layer_norm else []
            layers.append(activations[recipe.hidden]())
            layers += [torch.nn.Dropout(recipe.dropout)] if recipe.dropout else []
        else:
            layers.append(activations[recipe.output]())
    model = torch.nn.Sequential(*layers)
    forward = model
    if compiled:  # one compiled module per recipe and process, given this model's weights
        if recipe not in _TORCH_COMPILED:
            _TORCH_COMPILED[recipe] = torch.compile(model)
        forward = _TORCH_COMPILED[recipe]
        forward._orig_mod.load_state_dict(model.state_dict())
        model = forward._orig_mod
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    loss_fn = torch.nn.CrossEntropyLoss() if recipe.loss == "cross_entropy" else torch.nn.MSELoss()
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(_targets(recipe, y))
    generator = torch.Generator().manual_seed(0)

    def epoch() -> None:
        order = torch.randperm(len(Xt), generator=generator)
        for start in range(0, len(Xt), recipe.batch):
            idx = order[start:start + recipe.batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(forward(Xt[idx]), Yt[idx]).backward()
            optimizer.step()

    def predict(inputs: np.ndarray) -> np.ndarray:
        model.eval()
        try:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()
        finally:
            model.train()

    return Session(epoch, predict, compiled)


# --- JAX -------------------------------------------------------------------------------------------

_JAX_BUILDS: dict = {}


def _jax_functions(recipe: Recipe, n: int) -> tuple[Callable, Callable]:
    """``(epoch(params, key, X, Y) -> params, step(params, xb, yb) -> params)``, both jitted,
    built once per recipe and sample count."""
    key = (recipe, n)
    if key in _JAX_BUILDS:
        return _JAX_BUILDS[key]
    import jax
    import jax.numpy as jnp

    activations = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "identity": lambda a: a}
    hidden, output = activations[recipe.hidden], activations[recipe.output]
    batch = recipe.batch

    def forward(params, xb):
        a = xb
        for W, b in params[:-1]:
            a = hidden(a @ W.T + b)
        W, b = params[-1]
        return output(a @ W.T + b)

    def loss(params, xb, yb):
        out = forward(params, xb)
        if recipe.loss == "cross_entropy":
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), yb[:, None], axis=1))
        return jnp.mean((out - yb) ** 2)

    def sgd(params, xb, yb):
        grads = jax.grad(loss)(params, xb, yb)
        return jax.tree_util.tree_map(lambda w, g: w - recipe.lr * g, params, grads)

    full = n // batch

    @jax.jit
    def epoch(params, key, X, Y):
        order = jax.random.permutation(key, n)
        Xs, Ys = X[order], Y[order]
        batches = (Xs[:full * batch].reshape(full, batch, -1), Ys[:full * batch].reshape(full, batch, *Y.shape[1:]))
        params, _ = jax.lax.scan(lambda p, b: (sgd(p, *b), None), params, batches)
        if n > full * batch:
            params = sgd(params, Xs[full * batch:], Ys[full * batch:])
        return params

    _JAX_BUILDS[key] = epoch, jax.jit(sgd)
    return _JAX_BUILDS[key]


def _jax_start(recipe: Recipe, X: np.ndarray, y: np.ndarray, per_step: bool = False) -> Session:
    import jax

    epoch_fn, step_fn = _jax_functions(recipe, len(X))
    Xj, Yj = jax.numpy.asarray(X), jax.numpy.asarray(_targets(recipe, y))
    state = {"params": [(jax.numpy.asarray(W), jax.numpy.asarray(b)) for W, b in _initial(recipe)],
             "key": jax.random.PRNGKey(0)}
    n = len(X)

    def epoch() -> None:
        params = state["params"]
        state["key"], sub = jax.random.split(state["key"])
        if per_step:
            order = jax.random.permutation(sub, n)
            for start in range(0, n, recipe.batch):
                idx = order[start:start + recipe.batch]
                params = step_fn(params, Xj[idx], Yj[idx])
        else:
            params = epoch_fn(params, sub, Xj, Yj)
        state["params"] = jax.block_until_ready(params)

    def predict(inputs: np.ndarray) -> np.ndarray:
        activations = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
                       "identity": lambda v: v}
        a = np.ascontiguousarray(inputs, np.float32)
        params = state["params"]
        for k, (W, b) in enumerate(params):
            g = activations[recipe.hidden if k < len(params) - 1 else recipe.output]
            a = g(a @ np.asarray(W).T + np.asarray(b))
        return a

    return Session(epoch, predict, True)


_START: dict[str, Callable[..., Session]] = {
    "torch": _torch_start,
    "torch.compile": lambda *args: _torch_start(*args, compiled=True),
    "jax jit+scan": _jax_start,
    "jax jit/step": lambda *args: _jax_start(*args, per_step=True),
}
