"""One training epoch of seed 003's digits network (the lecture's recipe: sigmoid + MSE, SGD
lr 0.5, batch 64) per backend, against the lecture's per-sample loop and PyTorch eager.

    pytest benchmarks/test_training_throughput.py --benchmark-only [--quick]
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from conftest import target
from fastnn.bench import baselines

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
