"""Training throughput: fastnn ``fit`` vs PyTorch eager, JAX (a whole epoch in one ``jax.jit``
with ``lax.scan``) and a hand-vectorised NumPy loop, as ratios measured in one run.

``--net digits`` (default): seed 003's network 64-128-64-10 on scikit-learn's digits, batch 64.
``--net large``: a 784-1024-1024-10 MLP on 8192 synthetic MNIST-sized samples, batch 256.
ReLU, softmax cross-entropy, SGD (lr 0.1), float32, shuffled each epoch. Each contender trains
``--epochs`` epochs per repeat; the median samples/s of the repeats is reported after one
warm-up repeat (which also compiles JAX's epoch). PyTorch uses the same thread count as NumPy's
BLAS; JAX (XLA) uses its own thread pool over every core. Both are optional.

    python benchmarks/training.py [--backend numpy] [--net digits] [--epochs 20] [--repeats 5] [--busy]
                                  [--dropout P] [--layer-norm] [--compiled]

``--compiled`` adds ``torch.compile`` (on the model) and JAX with one ``jax.jit`` per step.

``--busy`` runs a busy-looping process beside every contender: more runnable threads than CPUs,
as when a machine is shared, which is where waiting threads must give way rather than spin.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import fastnn
from fastnn.bench.measure import settle  # a 20-epoch digits run is shorter than the spin

NETS = {"digits": ((64, 128, 64, 10), 64), "large": ((784, 1024, 1024, 10), 256)}
LAYERS, BATCH = NETS["digits"]
LR = 0.1
DROPOUT = 0.0  # --dropout: a Dropout(p) after each hidden layer (fastnn and PyTorch only)
LAYER_NORM = False  # --layer-norm: Linear -> LayerNorm -> ReLU in each hidden layer (fastnn and PyTorch only)


def fastnn_samples_per_s(X, y, epochs, backend):
    with fastnn.use_backend(backend):
        dropout = [[fastnn.Dropout(DROPOUT, seed=10 + k)] if DROPOUT else [] for k in range(2)]

        def hidden(k):
            if LAYER_NORM:
                return [fastnn.Linear(LAYERS[k], LAYERS[k + 1], seed=k), fastnn.LayerNorm(LAYERS[k + 1]),
                        fastnn.ReLU()]
            return [fastnn.Linear(LAYERS[k], LAYERS[k + 1], "relu", seed=k)]

        net = fastnn.Network([*hidden(0), *dropout[0], *hidden(1), *dropout[1],
                              fastnn.Linear(LAYERS[2], LAYERS[3], seed=2)])
        started = time.perf_counter()
        history = net.fit(X, y, "cross_entropy", fastnn.SGD(LR), epochs=epochs, batch_size=BATCH,
                          seed=0, progress=False, metrics=False)
        elapsed = time.perf_counter() - started
    return len(X) * epochs / elapsed, history["loss"][-1]


def numpy_loop_samples_per_s(X, y, epochs):
    """The hand-vectorised NumPy loop the issue quotes: plain arrays, no framework."""
    rng = np.random.default_rng(0)
    Ws = [(rng.uniform(-1, 1, (o, i)) / np.sqrt(i)).astype(np.float32) for i, o in zip(LAYERS, LAYERS[1:])]
    bs = [np.zeros(o, np.float32) for o in LAYERS[1:]]
    n = len(X)
    started = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            a0, labels = X[idx], y[idx]
            z1 = a0 @ Ws[0].T + bs[0]
            a1 = np.maximum(z1, 0)
            z2 = a1 @ Ws[1].T + bs[1]
            a2 = np.maximum(z2, 0)
            z3 = a2 @ Ws[2].T + bs[2]
            e = np.exp(z3 - z3.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), labels] -= 1
            d3 = p / len(idx)
            d2 = (d3 @ Ws[2]) * (z2 > 0)
            d1 = (d2 @ Ws[1]) * (z1 > 0)
            grads = [(d1.T @ a0, d1.sum(0)), (d2.T @ a1, d2.sum(0)), (d3.T @ a2, d3.sum(0))]
            for (W, b), (gW, gb) in zip(zip(Ws, bs), grads):
                W -= LR * gW
                b -= LR * gb
    return n * epochs / (time.perf_counter() - started)


def torch_samples_per_s(X, y, epochs, threads, compiled=False):
    """PyTorch eager, or with ``torch.compile`` on the model (forward and backward through
    Inductor's generated C++; the first, compiling repeat is not counted)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    def hidden(k):
        norm = [torch.nn.LayerNorm(LAYERS[k + 1])] if LAYER_NORM else []
        dropout = [torch.nn.Dropout(DROPOUT)] if DROPOUT else []
        return [torch.nn.Linear(LAYERS[k], LAYERS[k + 1]), *norm, torch.nn.ReLU(), *dropout]

    model = torch.nn.Sequential(*hidden(0), *hidden(1), torch.nn.Linear(LAYERS[2], LAYERS[3]))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    if compiled:
        model = _TORCH_COMPILED.setdefault((tuple(LAYERS), DROPOUT, LAYER_NORM), torch.compile(model))
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = len(X)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return n * epochs / (time.perf_counter() - started)


_TORCH_COMPILED: dict = {}  # one compiled model per net and process: later repeats reuse its code


def torch_repeats(X, y, epochs, threads, repeats, net, dropout=0.0, layer_norm=False,
                  compiled=False) -> list[float]:
    global LAYERS, BATCH, DROPOUT, LAYER_NORM
    LAYERS, BATCH = NETS[net]  # a spawned child starts from the module defaults
    DROPOUT, LAYER_NORM = dropout, layer_norm
    rates = [torch_samples_per_s(X, y, epochs, threads, compiled) for _ in range(repeats + 1)]
    return [] if rates[0] is None else rates[1:]


def jax_samples_per_s(X, y, epochs):
    """JAX the way its users make it fastest on a CPU: a whole epoch in one ``jax.jit``, the
    batches a ``lax.scan`` (the ragged last batch one more step inside the same jit), SGD by
    hand, PyTorch's default initialisation. The jitted epoch is built once per process (the
    first repeat compiles it and is not counted). Returns None where JAX is not installed."""
    try:
        import jax
    except ImportError:
        return None
    init, epoch, _ = _jax_epoch(X, y)
    key = jax.random.PRNGKey(0)
    params = init(key)
    started = time.perf_counter()
    for _ in range(epochs):
        key, sub = jax.random.split(key)
        params = epoch(params, sub)
    jax.block_until_ready(params)
    return len(X) * epochs / (time.perf_counter() - started)


_JAX_EPOCH: dict = {}


def _jax_epoch(X, y):
    """``(init(key) -> params, jitted epoch(params, key) -> params, step(params, (xb, yb)))`` for
    this data and net (``step``, one SGD step, not jitted: the jit-per-step contender jits it)."""
    cache_key = (tuple(LAYERS), BATCH, X.shape)
    if cache_key in _JAX_EPOCH:
        return _JAX_EPOCH[cache_key]
    import jax
    import jax.numpy as jnp

    def init(key):
        params = []
        for fan_in, fan_out in zip(LAYERS, LAYERS[1:]):
            key, k_w, k_b = jax.random.split(key, 3)
            bound = 1.0 / np.sqrt(fan_in)
            params.append((jax.random.uniform(k_w, (fan_out, fan_in), minval=-bound, maxval=bound),
                           jax.random.uniform(k_b, (fan_out,), minval=-bound, maxval=bound)))
        return params

    def loss(params, xb, yb):
        a = xb
        for W, b in params[:-1]:
            a = jax.nn.relu(a @ W.T + b)
        W, b = params[-1]
        log_p = jax.nn.log_softmax(a @ W.T + b)
        return -jnp.mean(jnp.take_along_axis(log_p, yb[:, None], axis=1))

    def step(params, batch):
        grads = jax.grad(loss)(params, *batch)
        return jax.tree_util.tree_map(lambda w, g: w - LR * g, params, grads), None

    n = len(X)
    full = n // BATCH
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    @jax.jit
    def epoch(params, key):
        order = jax.random.permutation(key, n)
        Xs, ys = Xj[order], yj[order]
        batches = (Xs[:full * BATCH].reshape(full, BATCH, -1), ys[:full * BATCH].reshape(full, BATCH))
        params, _ = jax.lax.scan(step, params, batches)
        if n > full * BATCH:
            params, _ = step(params, (Xs[full * BATCH:], ys[full * BATCH:]))
        return params

    _JAX_EPOCH[cache_key] = init, epoch, step
    return init, epoch, step


def jax_step_samples_per_s(X, y, epochs):
    """JAX as most of its users write a training loop: one ``jax.jit`` step per batch, the
    batches gathered on the host side of the loop (shuffled each epoch with JAX's own key)."""
    try:
        import jax
    except ImportError:
        return None
    init, _, sgd_step = _jax_epoch(X, y)
    cache_key = (tuple(LAYERS), BATCH, X.shape)
    step = _JAX_STEP.get(cache_key)
    if step is None:
        step = _JAX_STEP[cache_key] = jax.jit(lambda params, xb, yb: sgd_step(params, (xb, yb))[0])
    Xj, yj = jax.numpy.asarray(X), jax.numpy.asarray(y)
    key = jax.random.PRNGKey(0)
    params = init(key)
    n = len(X)
    started = time.perf_counter()
    for _ in range(epochs):
        key, sub = jax.random.split(key)
        order = jax.random.permutation(sub, n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            params = step(params, Xj[idx], yj[idx])
    jax.block_until_ready(params)
    return n * epochs / (time.perf_counter() - started)


_JAX_STEP: dict = {}


def jax_repeats(X, y, epochs, repeats, net, per_step=False) -> list[float]:
    global LAYERS, BATCH
    LAYERS, BATCH = NETS[net]
    measure = jax_step_samples_per_s if per_step else jax_samples_per_s
    rates = [measure(X, y, epochs) for _ in range(repeats + 1)]  # the first compiles
    return [] if rates[0] is None else rates[1:]


@contextlib.contextmanager
def busy_process(enabled: bool):
    """A second process spinning on one CPU while the block runs (when ``enabled``)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None
    try:
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info
        return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)
    except ImportError:
        import os
        return os.cpu_count() or 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--net", choices=sorted(NETS), default="digits")
    parser.add_argument("--busy", action="store_true", help="a busy-looping process runs beside every contender")
    parser.add_argument("--dropout", type=float, default=0.0, metavar="P",
                        help="a Dropout(P) after each hidden layer, in fastnn and PyTorch (the NumPy loop and JAX "
                             "are then left out)")
    parser.add_argument("--compiled", action="store_true",
                        help="add torch.compile and JAX with one jit per step (compiling takes a minute)")
    parser.add_argument("--layer-norm", action="store_true",
                        help="Linear -> LayerNorm -> ReLU in each hidden layer, in fastnn and PyTorch (likewise)")
    args = parser.parse_args(argv)
    global LAYERS, BATCH, DROPOUT, LAYER_NORM
    LAYERS, BATCH = NETS[args.net]
    DROPOUT, LAYER_NORM = args.dropout, args.layer_norm
    plain = not (DROPOUT or LAYER_NORM)  # the NumPy loop and JAX implement the plain net only
    if args.net == "digits":
        X, _, y, _ = fastnn.datasets.digits()
    else:
        rng = np.random.default_rng(0)
        X = rng.random((8192, LAYERS[0]), dtype=np.float32)
        y = rng.integers(0, LAYERS[-1], len(X))
    threads = blas_threads()
    results: dict[str, list[float]] = {"fastnn": [], "numpy loop": []}
    if args.backend != "numpy":
        results["fastnn numpy"] = []  # the NumPy backend, the bar the other backends must clear
    with busy_process(args.busy):
        for repeat in range(args.repeats + 1):  # repeat 0 warms up (BLAS threads, caches, JIT)
            settle()
            fast, loss = fastnn_samples_per_s(X, y, args.epochs, args.backend)
            settle()
            loop = numpy_loop_samples_per_s(X, y, args.epochs) if plain else None
            if "fastnn numpy" in results:
                settle()
                reference, _ = fastnn_samples_per_s(X, y, args.epochs, "numpy")
            if repeat:
                results["fastnn"].append(fast)
                if loop is not None:
                    results["numpy loop"].append(loop)
                if "fastnn numpy" in results:
                    results["fastnn numpy"].append(reference)
        # PyTorch runs afterwards in a child process while this one waits: its OpenMP workers keep
        # spinning after each op and would steal the second core from anything run beside them.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results["torch eager"] = pool.submit(torch_repeats, X, y, args.epochs, threads, args.repeats,
                                                 args.net, DROPOUT, LAYER_NORM).result()
        if args.compiled:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results["torch.compile"] = pool.submit(torch_repeats, X, y, args.epochs, threads, args.repeats,
                                                       args.net, DROPOUT, LAYER_NORM, True).result()
        if plain:
            for name, per_step in (("jax jit+scan", False), ("jax jit/step", True)):
                if per_step and not args.compiled:
                    continue
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # as XLA's
                    results[name] = pool.submit(jax_repeats, X, y, args.epochs, args.repeats, args.net,
                                                per_step).result()
    medians = {name: statistics.median(v) for name, v in results.items() if v}
    print(f"{args.net} {'-'.join(map(str, LAYERS))}, batch {BATCH}, float32, "
          f"{args.epochs} epochs x {args.repeats} repeats, "
          f"{threads} BLAS thread(s); fastnn backend {args.backend!r}, final loss {loss:.4f}"
          + (", LayerNorm before each hidden ReLU" if LAYER_NORM else "")
          + (f", Dropout({DROPOUT}) after each hidden layer" if DROPOUT else "")
          + (", beside a busy process" if args.busy else ""))
    for name, values in results.items():
        if values:
            print(f"  {name:13s} median {medians[name]:>10,.0f} samples/s  "
                  f"(min {min(values):,.0f}, max {max(values):,.0f})")
    if "torch eager" in medians:
        print(f"  fastnn / torch eager  = {medians['fastnn'] / medians['torch eager']:.2f}x")
        if "numpy loop" in medians:
            print(f"  numpy loop / torch    = {medians['numpy loop'] / medians['torch eager']:.2f}x")
    else:
        print("  torch is not installed: PyTorch comparison skipped (pip install torch==2.13.0)")
    if "jax jit+scan" in medians:
        print(f"  fastnn / jax jit+scan = {medians['fastnn'] / medians['jax jit+scan']:.2f}x")
    elif plain:
        print("  jax is not installed: JAX comparison skipped (pip install jax)")
    for name in ("torch.compile", "jax jit/step"):
        if name in medians:
            print(f"  fastnn / {name:12s}= {medians['fastnn'] / medians[name]:.2f}x")
    if "numpy loop" in medians:
        print(f"  fastnn / numpy loop   = {medians['fastnn'] / medians['numpy loop']:.2f}x")
    if "fastnn numpy" in medians:
        print(f"  fastnn / numpy backend = {medians['fastnn'] / medians['fastnn numpy']:.2f}x")
    return medians


if __name__ == "__main__":
    main()
