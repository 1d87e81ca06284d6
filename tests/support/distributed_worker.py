"""One rank of the data-parallel tests (``tests/test_distributed.py`` starts it with ``mpiexec``).

``python distributed_worker.py MODE OUTDIR``; each rank writes what it computed under OUTDIR and
prints one line per result, for the test to compare with a single process.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np

import fastnn
from fastnn import distributed
from fastnn.training import NonFiniteError

# 101 samples in batches of 20: the last global batch has one sample, so with 2 ranks rank 0's
# share of it is empty, and with 3 ranks shares of 6, 7 and 7 samples come before it.
N_SAMPLES, BATCH, EPOCHS = 101, 20, 3
BACKENDS = ("numpy", "numba")
DTYPES = ("float32", "float64")
OPTIMIZERS = {"sgd-momentum": lambda: fastnn.SGD(lr=0.05, momentum=0.9), "adam": lambda: fastnn.Adam(lr=0.01)}
CONFIGS = [f"{b}-{d}-{o}" for b, d, o in itertools.product(BACKENDS, DTYPES, OPTIMIZERS)]


def data(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((N_SAMPLES, 12)).astype(dtype), rng.integers(0, 4, N_SAMPLES)


def network(backend: str, dtype: str, seed: int = 1) -> fastnn.Network:
    kw = {"backend": backend, "dtype": np.dtype(dtype)}
    return fastnn.Network([fastnn.Linear(12, 24, seed=seed, **kw), fastnn.Tanh(**kw),
                           fastnn.Linear(24, 16, seed=seed + 1, **kw), fastnn.ReLU(**kw),
                           fastnn.Linear(16, 4, seed=seed + 2, **kw)])


def train(config: str, distributed_: object = False, **fit_args) -> tuple[fastnn.Network, fastnn.training.History]:
    """The run ``config`` names: shuffled, with a ragged last batch and validation data."""
    backend, dtype, optimizer = config.split("-", 2)
    X, y = data(dtype)
    net = network(backend, dtype)
    args = {"epochs": EPOCHS, "batch_size": BATCH, "seed": 3, "validation_data": (X[:9], y[:9]), "progress": False,
            **fit_args}
    history = net.fit(X, y, "cross_entropy", OPTIMIZERS[optimizer](), distributed=distributed_, **args)
    return net, history


def say(out: str, rank: int, text: str) -> None:
    """One result line: into OUTDIR/said-rank{rank}.txt (ranks' stdout lines can interleave)."""
    with open(os.path.join(out, f"said-rank{rank}.txt"), "a") as handle:
        handle.write(text + "\n")
    sys.stdout.write(f"rank {rank}: {text}\n")
    sys.stdout.flush()


def _params(net: fastnn.Network) -> np.ndarray:
    return np.array(net.backend.to_numpy(net.flat_parameters()[0]))


def equivalence(world: distributed.World, out: str, configs: list[str]) -> None:
    from fastnn.kernels.numba.trainer import DenseTrainer

    calls = {"gradients": 0}
    whole_step = DenseTrainer.gradients

    def counted(self, *args, **kwargs):
        calls["gradients"] += 1
        return whole_step(self, *args, **kwargs)

    DenseTrainer.gradients = counted
    for config in configs:
        before = calls["gradients"]
        net, history = train(config, True)
        np.save(os.path.join(out, f"{config}-rank{world.rank}.npy"), _params(net))
        with open(os.path.join(out, f"{config}-rank{world.rank}.json"), "w") as handle:
            json.dump({"history": history.epochs, "whole_step_calls": calls["gradients"] - before}, handle)
    print(f"rank {world.rank} of {world.size}: done", flush=True)


def nonfinite(world: distributed.World, out: str, backend: str) -> None:
    """Only rank 1 holds a huge input (in its share of batch 2): there the weight gradient of a
    linear least-squares fit, about ``x * x``, overflows float32."""
    X, y = data("float32")
    if world.rank == 1:
        X = X.copy()
        X[35, 0] = 1e30
    net = fastnn.Network([fastnn.Linear(12, 4, seed=1, backend=backend)])
    try:
        net.fit(X, np.eye(4, dtype=np.float32)[y], "mse", fastnn.SGD(lr=0.05), epochs=2, batch_size=BATCH,
                shuffle=False, progress=False, distributed=True)
    except NonFiniteError as exc:
        say(out, world.rank, f"NonFiniteError: {exc}")
    else:
        say(out, world.rank, "no error")


def crash(world: distributed.World, out: str) -> None:
    """Rank 1 raises in its second epoch; rank 0 would wait in the next allreduce for ever."""

    def on_epoch(epoch: int, record: dict) -> None:
        if world.rank == 1 and epoch == 2:
            raise RuntimeError("rank 1 fails on purpose")

    train("numpy-float64-adam", True, epochs=1000, on_epoch=on_epoch)


def resume(world: distributed.World, out: str) -> None:
    """A run checkpointed at epoch 2 of 4 and resumed, against the same run uninterrupted."""
    config = "numba-float32-adam"
    whole, _ = train(config, True, epochs=4)
    path = os.path.join(out, "run.npz")
    train(config, True, epochs=2, checkpoint=path)
    backend, dtype, optimizer = config.split("-", 2)
    X, y = data(dtype)
    resumed = network(backend, dtype, seed=99)  # other weights: the checkpoint must replace them
    resumed.fit(X, y, "cross_entropy", OPTIMIZERS[optimizer](), epochs=4, batch_size=BATCH, seed=3,
                validation_data=(X[:9], y[:9]), progress=False, distributed=True, resume=path)
    np.save(os.path.join(out, f"whole-rank{world.rank}.npy"), _params(whole))
    np.save(os.path.join(out, f"resumed-rank{world.rank}.npy"), _params(resumed))
    print(f"rank {world.rank}: done", flush=True)


def mismatch(world: distributed.World, out: str) -> None:
    """Rank 1 holds one sample fewer than rank 0."""
    X, y = data("float64")
    if world.rank == 1:
        X, y = X[1:], y[1:]
    try:
        network("numpy", "float64").fit(X, y, "cross_entropy", epochs=1, progress=False, distributed=True)
    except ValueError as exc:
        say(out, world.rank, f"ValueError: {exc}")
    else:
        say(out, world.rank, "no error")


def nccl(world: distributed.World, out: str, library: str) -> None:
    """The CuPy backend's NCCL path on the CuPy stand-in (the real kernels built for the host)
    and the NCCL stand-in, which checks NCCL's calling conventions and sums through MPI."""
    from fastnn.backends.cupy_backend import CupyBackend
    from support import fake_cupy, fake_nccl

    fake = fake_cupy.FakeCupy(library, record=False)
    sys.modules["cupy"] = fake
    fake_nccl.install(fake)
    world = distributed.init()  # again, now that CuPy is here: it picks this rank's device
    backend = CupyBackend()
    X, y = data("float64")
    net = network("numpy", "float64").to(backend)
    history = net.fit(X, y, "cross_entropy", OPTIMIZERS["sgd-momentum"](), epochs=EPOCHS, batch_size=BATCH, seed=3,
                      validation_data=(X[:9], y[:9]), progress=False, distributed=True)
    np.save(os.path.join(out, f"nccl-rank{world.rank}.npy"), backend.to_numpy(net.flat_parameters()[0]))
    communicators = fake_nccl.NcclCommunicator.made
    with open(os.path.join(out, f"nccl-rank{world.rank}.json"), "w") as handle:
        json.dump({"history": history.epochs, "communicators": len(communicators),
                   "allreduces": [c.calls for c in communicators], "device": fake.current_device}, handle)
    print(f"rank {world.rank}: done", flush=True)


def interrupt(world: distributed.World, out: str, backend: str) -> None:
    """Ctrl-C on rank 1 only, during its 8th step (epoch 2, batch 2): both ranks stop at one
    step, with the same parameters and an interrupted history."""
    import signal

    from fastnn.data_parallel import DataParallel

    steps = {"count": 0}
    reduce = DataParallel.reduce

    def counted(self, *args):
        steps["count"] += 1
        if world.rank == 1 and steps["count"] == 8:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in this rank's terminal
        return reduce(self, *args)

    DataParallel.reduce = counted
    net, history = train(f"{backend}-float64-adam", True, epochs=5)
    np.save(os.path.join(out, f"interrupt-rank{world.rank}.npy"), _params(net))
    say(out, world.rank, f"interrupted {history.interrupted} after {len(history)} epoch(s) and {steps['count']} steps")


def placement(world: distributed.World, out: str) -> None:
    """Threads per rank, and training on a sub-communicator: with 3 ranks, ranks 0 and 1 train
    together on their own communicator while rank 2, alone on its own, trains by itself."""
    import numba
    from mpi4py import MPI
    from threadpoolctl import threadpool_info

    blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
    sub = MPI.COMM_WORLD.Split(color=0 if world.rank < 2 else 1, key=world.rank)
    net, history = train("numba-float64-adam", sub)
    np.save(os.path.join(out, f"placement-rank{world.rank}.npy"), _params(net))
    say(out, world.rank, json.dumps({"numba_threads": numba.get_num_threads(), "blas_threads": blas,
                                     "local_size": world.local_size, "sub_size": sub.Get_size()}))


MODES = {"placement": placement, "interrupt": interrupt, "nccl": nccl, "mismatch": mismatch, "equivalence": equivalence,
         "nonfinite": nonfinite, "crash": crash, "resume": resume}

if __name__ == "__main__":
    mode, out, *rest = sys.argv[1:]
    world = distributed.init()
    MODES[mode](world, out, *([rest] if mode == "equivalence" else rest))
