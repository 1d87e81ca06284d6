"""Training throughput: fastnn ``fit`` vs PyTorch eager, JAX (a whole epoch in one ``jax.jit``
with ``lax.scan``) and a hand-vectorised NumPy loop, as ratios measured in one run.

``--net digits`` (default): seed 003's network 64-128-64-10 on scikit-learn's digits, batch 64.
``--net large``: a 784-1024-1024-10 MLP on 8192 synthetic MNIST-sized samples, batch 256.
ReLU, softmax cross-entropy, SGD (lr 0.1), float32, shuffled each epoch. Each contender trains
``--epochs`` epochs per repeat; the median samples/s of the repeats is reported after one
warm-up repeat. The peers are those of ``fastnn.bench.peers``, each optional and in a process of
its own, started (and compiled) before the first round; PyTorch uses the same thread count as
NumPy's BLAS, JAX (XLA) its own thread pool over every core.

The contenders take turns: each round runs one repeat of every contender, one after the other,
so that a slow spell of the machine (these are VMs sharing their host: the same fit runs at
420k or 800k samples/s from one second to the next) falls on all of them alike. Besides the
medians, each ratio to fastnn is given as its range over the rounds.

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
import time
from collections.abc import Callable, Iterator

import numpy as np

import fastnn
from fastnn.bench import peers
from fastnn.bench.measure import busy_neighbour, settle, time_call  # a 20-epoch digits run is shorter than the spin

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


def _serve_peer(connection, name, X, y, epochs, threads, net, dropout, layer_norm) -> None:
    """A peer's process: start its session (compiling what it compiles, in an untimed run of
    ``epochs`` epochs), say so, then time ``epochs`` epochs each time it is asked, until None."""
    sizes, batch = NETS[net]
    session = peers.start(name, peers.Recipe(sizes, batch, LR, dropout=dropout, layer_norm=layer_norm,
                                             threads=threads), X, y)
    for _ in range(epochs):
        session.epoch()
    connection.send("ready")
    while connection.recv() is not None:
        started = time.perf_counter()
        for _ in range(epochs):
            session.epoch()
        connection.send(len(X) * epochs / (time.perf_counter() - started))


@contextlib.contextmanager
def peer_processes(names, X, y, epochs, threads, net, dropout=0.0,
                   layer_norm=False) -> Iterator[dict[str, Callable[[], float]]]:
    """For each peer of ``names`` (see ``fastnn.bench.peers``), a process of its own, started
    and compiled one after the other; yields ``{name: run}``, where ``run()`` times one repeat
    there (samples/s) while this process waits."""
    context = multiprocessing.get_context("spawn")
    started = []
    try:
        runs = {}
        for name in names:
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve_peer, args=(theirs, name, X, y, epochs, threads, net, dropout,
                                                                layer_norm), daemon=True)
            process.start()
            started.append((process, ours))
            if ours.recv() != "ready":
                raise RuntimeError(f"{name} did not start")

            def run(connection=ours) -> float:
                connection.send(epochs)
                return connection.recv()

            runs[name] = run
        yield runs
    finally:
        for process, connection in started:
            with contextlib.suppress(OSError):
                connection.send(None)
            process.join(10)
            if process.is_alive():
                process.kill()


def step_flops_per_sample(sizes) -> int:
    """FLOPs a training step spends per sample in its GEMMs: forward, weight gradients and the
    gradients of every layer's input but the first's (2 per multiply-add)."""
    products = [fan_in * fan_out for fan_in, fan_out in zip(sizes, sizes[1:])]
    return 2 * (3 * sum(products) - products[0])


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate on n x n operands through NumPy's BLAS (best of repeats)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    _, rounds = time_call(lambda: np.matmul(a, b, out=out), repeats, min_seconds=0.2)
    return 2 * n ** 3 / min(rounds) / 1e9


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
    # Each peer in a process of its own that waits while the others run: PyTorch's OpenMP
    # workers keep spinning after each op and XLA keeps a pool over every core, and either would
    # steal the second core from anything run beside them.
    labels = {"torch": "torch eager", "torch.compile": "torch.compile", "jax jit+scan": "jax jit+scan",
              "jax jit/step": "jax jit/step"}
    wanted = [name for name in labels if peers.missing(name) is None
              and not (name in peers.SLOW_TO_COMPILE and not args.compiled)
              and not (name.startswith("jax") and not plain)]
    final = {}

    def fastnn_run() -> float:
        rate, final["loss"] = fastnn_samples_per_s(X, y, args.epochs, args.backend)
        return rate

    contenders: dict[str, Callable[[], float]] = {"fastnn": fastnn_run}
    if plain:
        contenders["numpy loop"] = lambda: numpy_loop_samples_per_s(X, y, args.epochs)
    if args.backend != "numpy":  # the NumPy backend, the bar the other backends must clear
        contenders["fastnn numpy"] = lambda: fastnn_samples_per_s(X, y, args.epochs, "numpy")[0]
    results: dict[str, list[float]] = {name: [] for name in [*contenders, *(labels[n] for n in wanted)]}
    with busy_neighbour(args.busy), peer_processes(wanted, X, y, args.epochs, threads, args.net, DROPOUT,
                                                   LAYER_NORM) as peer_runs:
        contenders.update({labels[name]: run for name, run in peer_runs.items()})
        peaks: list[float] = []  # the machine's own GEMM rate, in each round (large net)
        for repeat in range(args.repeats + 1):  # round 0 warms up (BLAS threads, caches, JIT)
            for name, run in contenders.items():
                settle()
                rate = run()
                if repeat:
                    results[name].append(rate)
                if repeat and name == "fastnn" and args.net == "large":
                    # right after fastnn, so that a slow spell of the VM slows both alike
                    settle()
                    peaks.append(gemm_gflops(repeats=3))
    loss = final["loss"]
    medians = {name: statistics.median(v) for name, v in results.items() if v}

    def ratio(name: str) -> str:
        """fastnn's median over ``name``'s, and the range of the ratio within each round."""
        rounds = [f / o for f, o in zip(results["fastnn"], results[name])]
        return f"{medians['fastnn'] / medians[name]:.2f}x (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"

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
        print(f"  fastnn / torch eager  = {ratio('torch eager')}")
        if "numpy loop" in medians:
            print(f"  numpy loop / torch    = {medians['numpy loop'] / medians['torch eager']:.2f}x")
    else:
        print(f"  PyTorch comparison skipped: {peers.missing('torch')}")
    if "jax jit+scan" in medians:
        print(f"  fastnn / jax jit+scan = {ratio('jax jit+scan')}")
    elif plain:
        print(f"  JAX comparison skipped: {peers.missing('jax jit+scan')}")
    for name in ("torch.compile", "jax jit/step"):
        if name in medians:
            print(f"  fastnn / {name:12s}= {ratio(name)}")
    if "numpy loop" in medians:
        print(f"  fastnn / numpy loop   = {ratio('numpy loop')}")
    if "fastnn numpy" in medians:
        print(f"  fastnn / numpy backend = {ratio('fastnn numpy')}")
    if args.net == "large":  # issue 13: the step's arithmetic rate against the machine's own GEMM
        flops = step_flops_per_sample(LAYERS)
        shares = [100 * flops * rate / 1e9 / peak for rate, peak in zip(results["fastnn"], peaks)]
        print(f"  fastnn's GEMM arithmetic {flops * medians['fastnn'] / 1e9:.0f} GFLOP/s = "
              f"{statistics.median(shares):.0f}% (rounds {min(shares):.0f}-{max(shares):.0f}%) of this machine's "
              f"1024x1024 float32 GEMM ({statistics.median(peaks):.0f} GFLOP/s, NumPy's BLAS, timed after fastnn "
              f"in each round; target >= 80%)")
    return medians


if __name__ == "__main__":
    main()
