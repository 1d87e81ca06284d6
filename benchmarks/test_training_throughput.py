"""One training epoch of seed 003's digits network (the lecture's recipe: sigmoid + MSE, SGD
lr 0.5, batch 64) per backend, against the lecture's per-sample loop and PyTorch eager.

    pytest benchmarks/test_training_throughput.py --benchmark-only [--quick]
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from conftest import target
from fastnn.bench import baselines, peers
from fastnn.bench.measure import settle

BACKENDS = [name for name, why in fastnn.available_backends().items() if why is None]
SIZES = (64, 128, 64, 10)
target("training epoch digits", "lecture loop", "numpy", 10.0)


@pytest.fixture(scope="module")
def digits():
    X, _, y, _ = fastnn.datasets.digits()
    return X, fastnn.datasets.one_hot(y, 10)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fastnn_epoch(benchmark, digits, quick, backend_name):
    X, Y = digits
    X, Y = (X[:256], Y[:256]) if quick else (X, Y)
    with fastnn.use_backend(backend_name):
        net = fastnn.Network([fastnn.Linear(i, o, "sigmoid", seed=k) for k, (i, o) in enumerate(zip(SIZES, SIZES[1:]))])
        optimizer = fastnn.SGD(0.5)
        benchmark.group = "training epoch digits"
        benchmark.extra_info["contender"] = backend_name
        benchmark(net.fit, X, Y, "mse", optimizer, epochs=1, batch_size=64, progress=False)


def test_lecture_loop_epoch(benchmark, digits, quick):
    X, Y = digits
    X, Y = (X[:256], Y[:256]) if quick else (X, Y)
    net = baselines.LectureNetwork(SIZES)
    benchmark.group = "training epoch digits"
    benchmark.extra_info["contender"] = "lecture loop"
    benchmark.pedantic(net.fit, args=(X.astype(np.float64), Y.astype(np.float64)),
                       kwargs={"minibatches": len(X) // 64, "learning_rate": 0.5}, rounds=3 if quick else 5)


def test_torch_epoch(benchmark, digits, quick):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install torch==2.13.0")
    X, Y = digits
    X, Y = (X[:256], Y[:256]) if quick else (X, Y)
    layers = []
    for i, o in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(i, o), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def epoch():
        order = torch.randperm(len(Xt))
        for start in range(0, len(Xt), 64):
            idx = order[start:start + 64]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(Xt[idx]), Yt[idx]).backward()
            optimizer.step()

    benchmark.group = "training epoch digits"
    benchmark.extra_info["contender"] = "torch"
    benchmark(epoch)


# --- issue 3's end-to-end targets: ReLU + softmax cross-entropy, SGD lr 0.1, float32 ------------
# (`python benchmarks/training.py --backend numba` measures the same with a hand loop beside it.)

E2E = {"digits": ((64, 128, 64, 10), 64), "large": ((784, 1024, 1024, 10), 256)}
# issue 13: >= 5x PyTorch eager, >= 2x JAX jit+scan, >= 1.5x the NumPy backend on digits; on the
# large MLP >= 1.1x the best of PyTorch eager and JAX jit+scan
target("training e2e digits relu+CE", "torch", "numba", 5.0)
target("training e2e digits relu+CE", "jax jit+scan", "numba", 2.0)
target("training e2e digits relu+CE", "numpy", "numba", 1.5)
target("training e2e large MLP", "torch", "numba", 1.1)
target("training e2e large MLP", "jax jit+scan", "numba", 1.1)


def _e2e_data(net, quick):
    sizes, _ = E2E[net]
    if net == "digits":
        X, _, y, _ = fastnn.datasets.digits()
    else:
        rng = np.random.default_rng(0)
        X = rng.random((1024 if quick else 8192, sizes[0]), dtype=np.float32)
        y = rng.integers(0, sizes[-1], len(X))
    return (X[:256], y[:256]) if quick and net == "digits" else (X, y)


@pytest.mark.parametrize("net", sorted(E2E))
@pytest.mark.parametrize("backend_name", [b for b in ("numpy", "numba") if b in BACKENDS])
def test_e2e_fastnn(benchmark, quick, net, backend_name):
    X, y = _e2e_data(net, quick)
    sizes, batch = E2E[net]
    with fastnn.use_backend(backend_name):
        layers = [fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=k)
                  for k, (i, o) in enumerate(zip(sizes, sizes[1:]))]
        model = fastnn.Network(layers)
        optimizer = fastnn.SGD(0.1)
        fastnn.training.warm_up(model, X, y, "cross_entropy", optimizer, batch)
        benchmark.group = f"training e2e {'digits relu+CE' if net == 'digits' else 'large MLP'}"
        benchmark.extra_info["contender"] = backend_name
        settle()
        benchmark.pedantic(model.fit, args=(X, y, "cross_entropy", optimizer),
                           kwargs={"epochs": 5 if net == "digits" else 1, "batch_size": batch, "progress": False,
                                   "metrics": False}, rounds=3 if quick else 15, warmup_rounds=1)


@pytest.mark.parametrize("net", sorted(E2E))
@pytest.mark.parametrize("peer", peers.PEERS)
def test_e2e_peer(benchmark, quick, net, peer):
    """The peers of ``fastnn.bench.peers`` on the same recipe: PyTorch eager and compiled, JAX
    with a whole epoch in one jit (lax.scan) and with one jit per step. Each first trains an
    untimed epoch (where it compiles), as fastnn's contender warms up first."""
    why = peers.missing(peer)
    if why is not None:
        pytest.skip(why)
    if quick and peer in peers.SLOW_TO_COMPILE:
        pytest.skip(f"{peer}: compiling takes longer than a --quick run")
    X, y = _e2e_data(net, quick)
    sizes, batch = E2E[net]
    session = peers.start(peer, peers.Recipe(sizes, batch, 0.1), X, y)
    session.epoch()
    epochs = 5 if net == "digits" else 1

    def fit():
        for _ in range(epochs):
            session.epoch()

    benchmark.group = f"training e2e {'digits relu+CE' if net == 'digits' else 'large MLP'}"
    benchmark.extra_info["contender"] = peer
    settle()
    benchmark.pedantic(fit, rounds=3 if quick else 15, warmup_rounds=1)


# --- issue 13's steadiness target: no drift over a long fit ---------------------------------------

DRIFT_EPOCHS, DRIFT_WINDOW = 400, 40


@pytest.mark.parametrize("backend_name", [b for b in ("numpy", "numba") if b in BACKENDS])
def test_throughput_holds_over_400_epochs(benchmark, quick, backend_name):
    """A 400-epoch digits fit (ReLU + cross-entropy, SGD lr 0.1, batch 64; 100 epochs with
    --quick), one epoch at a time, each followed by one epoch of a fresh network of the same
    shape, its reference. Target >= 0.90 for the median over the last 40 epochs of each epoch's
    samples/s over its reference's, divided by the same over epochs 11-50: nothing slows a long
    run down (subnormal floats as weights settle, caches or buffers that grow with the steps).
    Against a reference a millisecond away, a spell of the VM (the same fit runs at half speed
    for a fraction of a second) slows both; the fit's raw late/early ratio, which such spells
    decide (0.62-1.87 in three runs on one machine, as are 40-epoch chunks against references
    after each), is reported beside it. A slowdown of the whole process would slow the
    references too: the memory test (tests/test_allocation.py) checks that nothing grows."""
    X, y = _e2e_data("digits", False)
    sizes, batch = E2E["digits"]
    epochs = 100 if quick else DRIFT_EPOCHS

    def network(seed):
        return fastnn.Network([fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=seed + k)
                               for k, (i, o) in enumerate(zip(sizes, sizes[1:]))])

    def epoch_rate(model, optimizer):
        history = model.fit(X, y, "cross_entropy", optimizer, epochs=1, batch_size=batch, progress=False,
                            metrics=False)
        return history["samples_per_s"][0]

    with fastnn.use_backend(backend_name):
        model, optimizer = network(0), fastnn.SGD(0.1)
        fastnn.training.warm_up(model, X, y, "cross_entropy", optimizer, batch)
        benchmark.group = "training drift digits"
        settle()

        def run():
            return np.array([(epoch_rate(model, optimizer), epoch_rate(network(100 + epoch), fastnn.SGD(0.1)))
                             for epoch in range(epochs)])

        rates = benchmark.pedantic(run, rounds=1, iterations=1)
    relative = rates[:, 0] / rates[:, 1]
    early, late = slice(10, 10 + DRIFT_WINDOW), slice(-DRIFT_WINDOW, None)
    drift = np.median(relative[late]) / np.median(relative[early])
    raw = np.median(rates[late, 0]) / np.median(rates[early, 0])
    benchmark.extra_info.update(contender=backend_name, early_samples_per_s=float(np.median(rates[early, 0])),
                                late_samples_per_s=float(np.median(rates[late, 0])), raw_late_over_early=float(raw),
                                checks=[("late/early epochs samples/s, each over a fresh net's", float(drift), 0.90)])
