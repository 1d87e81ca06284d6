"""The three sections of the report, each handing its ``Measurement``s to a recorder as made.

Every workload is timed for each requested fastnn backend and for its baselines: naive loops,
the unfused NumPy expression, a plain memory copy (the bandwidth ceiling) and PyTorch eager
where it is installed (run last in each section: its OpenMP workers keep spinning afterwards);
training also against every peer of ``peers`` that is installed (JAX jit+scan and jit/step,
``torch.compile``; the two slowest to compile are left out of ``--quick``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from ..backends import backend_for
from . import baselines, peers
from .measure import Measurement, device_time_call, measurement, time_call


class Recorder(Protocol):
    """Where a section's jobs come from and its measurements go (``report.Recorder``)."""

    def jobs(self, items: Iterable[Any], label: str) -> Iterable[Any]: ...

    def add(self, row: Measurement) -> None: ...


def _timed(fn: Callable[[], Any], repeats: int, backend: Any = None) -> tuple[float, list[float], dict]:
    """Host timing, or CUDA-event timing (with the launch overhead apart) on a GPU backend."""
    if backend is not None and getattr(backend, "defers_checks", False):
        warm, rounds, enqueue = device_time_call(backend.xp, fn, repeats)
        return warm, rounds, {"launch_overhead_us": enqueue * 1e6, "timing": "CUDA events"}
    warm, rounds = time_call(fn, repeats)
    return warm, rounds, {}


def _label(backend: Any) -> str:
    return backend if isinstance(backend, str) else backend.name


def fastnn_names() -> tuple[str, ...]:
    from ..backends import REGISTRY

    return tuple(REGISTRY)


def _torch():
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


# --- matrix core -----------------------------------------------------------------------------------

def _batched_name(shape_a: tuple[int, ...], shape_b: tuple[int, ...] | None) -> str:
    """"batched (N,2,3) @ (3,4)", or "(N,8,16) @ (N,16,8)" when both sides are batched."""
    right = f"({shape_b[0]},{shape_b[1]})" if shape_b else f"(N,{shape_a[2]},{shape_a[1]})"
    return f"batched (N,{shape_a[1]},{shape_a[2]}) @ {right}"


def matrix(backends: list[str], quick: bool, repeats: int, record: Recorder) -> None:
    rng = np.random.default_rng(0)
    sizes = (64, 128, 256) if quick else (64, 128, 256, 512, 1024, 2048)
    batched = [((2000 if quick else 100000, 2, 3), (3, 4)), ((500 if quick else 20000, 8, 16), None)]
    jobs: list[tuple[str, Callable[[], Any], float, dict]] = []
    for n in sizes:
        for dtype in (np.float32, np.float64):
            a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
            workload = f"{n}x{n} {np.dtype(dtype).name}"
            for name in backends:
                backend = backend_for(name)
                da, db = backend.asarray(a), backend.asarray(b)
                jobs.append((workload, lambda backend=backend, a=da, b=db: backend.matmul(a, b), 2.0 * n**3,
                             {"contender": _label(name), "n": n, "dtype": np.dtype(dtype).name, "backend": backend}))
    for shape_a, shape_b in batched:
        a = rng.standard_normal(shape_a).astype(np.float32)
        b = rng.standard_normal(shape_b or (shape_a[0], shape_a[2], shape_a[1])).astype(np.float32)
        workload = _batched_name(shape_a, shape_b)
        flops = 2.0 * shape_a[0] * shape_a[1] * shape_a[2] * b.shape[-1]
        for name in backends:
            backend = backend_for(name)
            da, db = backend.asarray(a), backend.asarray(b)
            jobs.append((workload, lambda backend=backend, a=da, b=db: backend.matmul(a, b), flops,
                         {"contender": _label(name), "backend": backend}))
        jobs.append((workload, lambda a=a, b=b: baselines.per_sample_matmul(a, b), flops,
                     {"contender": "per-sample loop"}))
    small = 32 if quick else 64
    a_list = rng.standard_normal((small, small)).tolist()
    jobs.append((f"{small}x{small} float64", lambda: baselines.naive_matmul(a_list, a_list), 2.0 * small**3,
                 {"contender": "naive loops", "n": small, "dtype": "float64"}))
    torch = _torch()
    if torch is not None:
        for n in sizes:
            for dtype in (torch.float32, torch.float64):
                ta, tb = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
                name = str(dtype).replace("torch.", "")
                jobs.append((f"{n}x{n} {name}", lambda ta=ta, tb=tb: torch.matmul(ta, tb), 2.0 * n**3,
                             {"contender": "torch", "n": n, "dtype": name}))
        for shape_a, shape_b in batched:
            ta = torch.randn(*shape_a)
            tb = torch.randn(*(shape_b or (shape_a[0], shape_a[2], shape_a[1])))
            workload = _batched_name(shape_a, shape_b)
            flops = 2.0 * shape_a[0] * shape_a[1] * shape_a[2] * tb.shape[-1]
            jobs.append((workload, lambda ta=ta, tb=tb: torch.matmul(ta, tb), flops, {"contender": "torch"}))
    for workload, fn, flops, info in record.jobs(jobs, "matrix core"):
        contender, backend = info.pop("contender"), info.pop("backend", None)
        warm, rounds, timing = _timed(fn, repeats, backend)
        record.add(measurement("matrix", workload, contender, "GFLOP/s", flops, rounds, warmup_s=warm,
                               **info, **timing))


# --- elementwise --------------------------------------------------------------------------------------

def elementwise(backends: list[str], quick: bool, repeats: int, record: Recorder) -> None:
    rng = np.random.default_rng(1)
    rows, cols = (256, 256) if quick else (4096, 1024)
    z = rng.standard_normal((rows, cols)).astype(np.float32)
    bias = np.zeros(cols, np.float32)
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    y_sig = (1 / (1 + np.exp(-z))).astype(np.float32)
    logits = (rng.standard_normal((rows, 1000 if not quick else 100)) * 3).astype(np.float32)
    labels = rng.integers(0, logits.shape[1], rows)
    out, out2 = np.empty_like(z), z.copy()  # out2: the GEMM's output, updated in place (bias is 0)
    grad = np.empty_like(logits)
    size = z.size * 4
    # minimal bytes each operation must move: inputs read once, outputs written once
    bias_act_bytes, backward_bytes, loss_bytes, copy_bytes = 3 * size, 3 * size, 2 * logits.size * 4, 2 * size
    jobs: list[tuple[str, Callable[[], Any], float, Any]] = []
    for name in backends:
        backend = backend_for(name)
        k = backend.kernels
        d = {key: backend.asarray(value) for key, value in
             (("z", z), ("bias", bias), ("dy", dy), ("y", y_sig), ("out", out), ("out2", out2), ("logits", logits),
              ("labels", labels), ("grad", grad))}
        jobs.append(("bias + relu after the GEMM",
                     lambda k=k, d=d: k.bias_activation(d["out2"], d["bias"], "relu", None, d["out"]),
                     bias_act_bytes, name))
        jobs.append(("sigmoid backward",
                     lambda k=k, d=d: k.backward["sigmoid"](d["dy"], d["z"], d["y"], d["out"], None),
                     backward_bytes, name))
        jobs.append(("softmax cross-entropy loss + grad",
                     lambda k=k, d=d: k.softmax_cross_entropy(d["logits"], d["labels"], d["grad"]), loss_bytes, name))
    jobs.append(("bias + relu after the GEMM", lambda: np.maximum(z + bias, 0), bias_act_bytes, "numpy expression"))
    jobs.append(("sigmoid backward", lambda: dy * y_sig * (1 - y_sig), backward_bytes, "numpy expression"))

    def naive_ce():
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        value = -np.log(p[np.arange(rows), labels]).mean()
        p[np.arange(rows), labels] -= 1
        return value, p / rows

    jobs.append(("softmax cross-entropy loss + grad", naive_ce, loss_bytes, "numpy expression"))
    for workload in ("bias + relu after the GEMM", "sigmoid backward"):
        jobs.append((workload, lambda: np.copyto(out, z), copy_bytes, "memory copy"))
    jobs.append(("softmax cross-entropy loss + grad", lambda: np.copyto(grad, logits), loss_bytes, "memory copy"))
    torch = _torch()
    if torch is not None:
        tz, tb, tdy, ty = (torch.from_numpy(a) for a in (z, bias, dy, y_sig))
        tl, tlab = torch.from_numpy(logits), torch.from_numpy(labels)
        jobs.append(("bias + relu after the GEMM", lambda: torch.relu(tz + tb), bias_act_bytes, "torch"))
        jobs.append(("sigmoid backward", lambda: tdy * ty * (1 - ty), backward_bytes, "torch"))

        def torch_ce():
            logits_t = tl.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(logits_t, tlab)
            loss.backward()
            return loss

        jobs.append(("softmax cross-entropy loss + grad", torch_ce, loss_bytes, "torch"))
    for workload, fn, nbytes, contender in record.jobs(jobs, "elementwise"):
        backend = None if isinstance(contender, str) and contender not in fastnn_names() else backend_for(contender)
        warm, rounds, timing = _timed(fn, repeats, backend)
        record.add(measurement("elementwise", workload, _label(contender), "GB/s", nbytes, rounds, warmup_s=warm,
                               shape=list(z.shape if "cross" not in workload else logits.shape), **timing))


# --- training -----------------------------------------------------------------------------------------

RECIPE = "sigmoid + MSE on one-hot targets, SGD lr 0.5, batch 64 (seed 003's recipe)"


def _datasets(quick: bool):
    from .. import datasets

    data = {}
    try:
        X_train, X_test, y_train, y_test = datasets.digits()
        data["digits 64-128-64-10"] = ((64, 128, 64, 10), X_train, X_test, y_train, y_test, 5 if quick else 30)
    except ImportError:
        pass
    rng = np.random.default_rng(2)
    n = 1024 if quick else 4096
    X = rng.random((n + 1024, 784), dtype=np.float32)
    teacher = rng.standard_normal((784, 10)).astype(np.float32)
    y = np.argmax((X - 0.5) @ teacher, axis=1)  # a learnable synthetic task: a random linear teacher
    data["synthetic 784-1024-1024-10"] = ((784, 1024, 1024, 10), X[:n], X[n:], y[:n], y[n:], 1 if quick else 3)
    return data


def _fastnn_run(backend_name, sizes, X, X_test, y, y_test, epochs):
    from .. import SGD, Linear, Network, use_backend
    from ..datasets import one_hot
    from ..training import warm_up

    with use_backend(backend_name):
        rng = np.random.default_rng(0)
        layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layer = Linear(fan_in, fan_out, "sigmoid")
            layer.weight = (rng.random((fan_in, fan_out)) - 0.5).T
            layer.bias = rng.random(fan_out) - 0.5
            layers.append(layer)
        net = Network(layers)
        targets = one_hot(y, sizes[-1])
        optimizer = SGD(0.5)
        warm = warm_up(net, X, targets, "mse", optimizer, 64)
        history = net.fit(X, targets, "mse", optimizer, epochs=epochs, batch_size=64, seed=0, progress=False)
        accuracy = net.evaluate(X_test, one_hot(y_test, sizes[-1]))["accuracy"]
    rates = history["samples_per_s"]
    return [len(X) / rate for rate in rates], accuracy, warm


def _lecture_run(sizes, X, X_test, y, y_test, epochs, budget_batches):
    from ..datasets import one_hot

    net = baselines.LectureNetwork(sizes)
    targets = one_hot(y, sizes[-1]).astype(np.float64)
    batches = -(-len(X) // 64) * epochs
    timed = min(batches, budget_batches)
    started = time.perf_counter()
    net.fit(X.astype(np.float64), targets, minibatches=timed, learning_rate=0.5)
    per_batch = (time.perf_counter() - started) / timed
    accuracy = None
    if timed == batches:  # trained on the same budget as everyone else: its accuracy means something
        accuracy = float(np.mean(np.argmax(net.predict(X_test.astype(np.float64)), axis=1) == y_test))
    return [per_batch * len(X) / 64], accuracy


def _peer_run(name, sizes, X, X_test, y, y_test, epochs):
    """A peer (``peers.PEERS``) on seed 003's recipe, from the same uniform(-0.5, 0.5) weights."""
    recipe = peers.Recipe(tuple(sizes), batch=64, lr=0.5, hidden="sigmoid", output="sigmoid", loss="mse",
                          init="half")
    trained = peers.train(name, recipe, X, y, epochs)
    accuracy = float((trained.predict(X_test).argmax(1) == y_test).mean())
    return trained.seconds, accuracy, trained.compile_s


def training(backends: list[str], quick: bool, repeats: int, record: Recorder) -> None:
    jobs = []
    data = _datasets(quick)
    for workload, (sizes, X, X_test, y, y_test, epochs) in data.items():
        for name in backends:
            arguments = (sizes, X, X_test, y, y_test, epochs)
            jobs.append((workload, _label(name), lambda name=name, a=arguments: _fastnn_run(name, *a)))
        budget = 4 if quick else (10**9 if sizes[1] <= 128 else 8)
        jobs.append((workload, "lecture loop",
                     lambda a=(sizes, X, X_test, y, y_test, epochs), budget=budget: _lecture_run(*a, budget) + (None,)))
        for peer in peers.PEERS:
            if peers.missing(peer) is None and not (quick and peer in peers.SLOW_TO_COMPILE):
                jobs.append((workload, peer, lambda peer=peer, a=(sizes, X, X_test, y, y_test, epochs):
                             _peer_run(peer, *a)))
    for workload, contender, run in record.jobs(jobs, "training"):
        seconds, accuracy, warm = run()
        n = len(data[workload][1])
        steady = seconds[1:] if len(seconds) > 1 else seconds  # the first epoch pays for first touches
        record.add(measurement("training", workload, contender, "samples/s", float(n), steady,
                               accuracy=accuracy, epochs=data[workload][5], recipe=RECIPE,
                               **({"warmup_s": warm} if warm is not None else {})))


SECTIONS = {"matrix": matrix, "elementwise": elementwise, "training": training}
