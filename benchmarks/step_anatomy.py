"""Where a training step's time goes: one full step of seed 003's digits network (ReLU, softmax
cross-entropy, SGD, batch 64, float32) against its eight GEMMs alone, run back to back.

    python benchmarks/step_anatomy.py [--backend numba]

"per-layer step" is the path of ~25 kernel calls every backend has; where the backend trains
whole steps in one kernel (``Backend.dense_trainer``: the numba backend), "whole-step kernel"
is that kernel's time per step over a 1437-sample epoch of 22 full batches, "its GEMMs on half
a batch" the eight GEMMs one of its two threads runs (the register-tiled JIT GEMM of
``kernels/numba/small_gemm.py``, which the trainer uses for layers this small), and "... with
OpenBLAS" the same eight on single-threaded OpenBLAS, what the kernel used before.

Then the whole-step kernel's time split into its phases, per thread (``DenseTrainer.
record_phases``: cycle-counter ticks inside the kernel): the forward and backward passes of its
row block, the waits for the other thread after each of the two phases a batch, the gradient sum,
the update and the refresh of the transposed weights. A thread's column adds up to the step.
"""

from __future__ import annotations

import argparse
import contextlib
import timeit

import numpy as np

import fastnn
from fastnn.bench.measure import settle


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    X, _, y, _ = fastnn.datasets.digits()
    with fastnn.use_backend(args.backend) as backend:
        net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0), fastnn.Linear(128, 64, "relu", seed=1),
                              fastnn.Linear(64, 10, seed=2)])
        loss, optimizer = fastnn.losses.CrossEntropy(), fastnn.SGD(0.1)
        xb, yb = X[:64].copy(), y[:64].astype(np.intp)
        grad = np.empty((64, 10), np.float32)
        net.flat_parameters()

        def step():
            out = net._forward(xb)
            loss.compute(backend, out, yb, grad)
            net._backward(grad, need_input_grad=False)
            optimizer.step(net)

        W = [layer.params["weight"] for layer in net.layers]
        z1, z2, z3 = (np.empty((64, n), np.float32) for n in (128, 64, 10))
        g1, g2, g3 = (np.empty_like(w) for w in W)
        d2, d3 = np.empty((64, 128), np.float32), np.empty((64, 64), np.float32)

        def gemms():
            np.matmul(xb, W[0].T, out=z1)
            np.matmul(z1, W[1].T, out=z2)
            np.matmul(z2, W[2].T, out=z3)
            np.matmul(z3.T, z2, out=g3)
            np.matmul(z3, W[2], out=d3)
            np.matmul(d3.T, z1, out=g2)
            np.matmul(d3, W[1], out=d2)
            np.matmul(d2.T, xb, out=g1)

        whole_step, split = _whole_step(net, X, y, optimizer, backend, gemms)
        results = {}
        for name, fn, steps, around in (("per-layer step", step, 1, contextlib.nullcontext()),
                                        ("its 8 GEMMs alone", gemms, 1, contextlib.nullcontext()),
                                        *whole_step):
            with around:
                settle()  # the previous line's OpenBLAS workers spin for ~0.1 s
                fn()
                calls = max(1, args.steps // steps)
                results[name] = min(timeit.repeat(fn, number=calls, repeat=5)) / calls / steps
            print(f"{name:24s} {results[name] * 1e6:7.1f} us  (backend {backend.name!r})")
        if split is not None:
            results.update(split(args.steps))
    return results


def _whole_step(net, X, y, optimizer, backend, gemms):
    """``(rows, split)``: (name, function, steps per call, context to time it in) for the
    whole-step kernel and the half-batch GEMMs, and a function that prints the kernel's phases
    (``([], None)`` without a whole-step kernel)."""
    loss = fastnn.losses.CrossEntropy()
    trainer = fastnn.training._dense_trainer(net, loss, X, y, 64, optimizer)
    if trainer is None:
        return [], None
    from threadpoolctl import threadpool_limits

    params, grads = net.flat_parameters()
    X, y = trainer.inputs(X, y)
    order = np.random.default_rng(0).permutation(len(X))
    batches = len(X) // 64
    snapshot, losses, correct = params.copy(), np.empty(batches), np.empty(batches)

    def epoch():  # timed inside ``with trainer`` once, as fit does (entering it per call would
        # raise OpenBLAS's thread count after every epoch and wake its workers to spin beside it)
        trainer.run(X, y, order, 0, batches, 64, optimizer, optimizer.bind(net), grads, snapshot, losses, correct)

    half = X[:32]

    def half_gemms():
        with threadpool_limits(1, user_api="blas"):  # costs ~0.25 ms: amortised over 1000 rounds
            for _ in range(1000):
                _gemms_on(half)

    W = [layer.params["weight"] for layer in net.layers]
    z = [np.empty((32, w.shape[0]), np.float32) for w in W]
    g = [np.empty_like(w) for w in W]
    d = [np.empty((32, w.shape[1]), np.float32) for w in W]

    def _gemms_on(xb):
        np.matmul(xb, W[0].T, out=z[0])
        np.matmul(z[0], W[1].T, out=z[1])
        np.matmul(z[1], W[2].T, out=z[2])
        np.matmul(z[2].T, z[1], out=g[2])
        np.matmul(z[2], W[2], out=d[2])
        np.matmul(d[2].T, z[0], out=g[1])
        np.matmul(d[2], W[1], out=d[1])
        np.matmul(d[1].T, xb, out=g[0])

    def split(steps: int) -> dict[str, float]:
        """Print and return the phases of ~``steps`` steps, us per step (thread 0's, then thread 1's)."""
        epochs = max(1, steps // batches)
        with trainer:
            epoch()  # the first call after entering pays for OpenBLAS's thread change
            trainer.record_phases()
            for _ in range(epochs):
                epoch()
        seconds = trainer.phase_seconds()
        per_step = {name: values / (epochs * batches) * 1e6 for name, values in seconds.items()}
        threads = len(per_step["whole"])
        print(f"\nwhole-step kernel by phase, us per step ({threads} thread(s); {epochs * batches} steps):")
        print(f"  {'phase':24s}" + "".join(f"{f'thread {t}':>10s}" for t in range(threads)))
        for name, values in per_step.items():
            print(f"  {name:24s}" + "".join(f"{v:10.1f}" for v in values))
        return {f"phase {name} (thread {t})": values[t] * 1e-6 for name, values in per_step.items()
                for t in range(threads)}

    jit_gemms = _jit_half_gemms(W, half, z, g, d)
    return [("whole-step kernel", epoch, batches, trainer),
            ("its GEMMs on half a batch", jit_gemms, 1000, contextlib.nullcontext()),
            ("... with OpenBLAS", half_gemms, 1000, contextlib.nullcontext())], split


def _jit_half_gemms(W, xb, z, g, d):
    """1000 rounds of the eight half-batch GEMMs on the JIT kernel (W.T as the trainer keeps it)."""
    from numba import njit

    from fastnn.kernels.numba.small_gemm import gemm

    @njit
    def rounds(x, w0, w1, w2, t0, t1, t2, z0, z1, z2, g0, g1, g2, d1, d2):
        one = np.float32(1)
        rows = x.shape[0]
        for _ in range(1000):
            gemm(x.ctypes.data, 64, 1, t0.ctypes.data, 128, z0.ctypes.data, 128, rows, 128, 64, one)
            gemm(z0.ctypes.data, 128, 1, t1.ctypes.data, 64, z1.ctypes.data, 64, rows, 64, 128, one)
            gemm(z1.ctypes.data, 64, 1, t2.ctypes.data, 10, z2.ctypes.data, 10, rows, 10, 64, one)
            gemm(z2.ctypes.data, 1, 10, z1.ctypes.data, 64, g2.ctypes.data, 64, 10, 64, rows, one)
            gemm(z2.ctypes.data, 10, 1, w2.ctypes.data, 64, d2.ctypes.data, 64, rows, 64, 10, one)
            gemm(d2.ctypes.data, 1, 64, z0.ctypes.data, 128, g1.ctypes.data, 128, 64, 128, rows, one)
            gemm(d2.ctypes.data, 64, 1, w1.ctypes.data, 128, d1.ctypes.data, 128, rows, 128, 64, one)
            gemm(d1.ctypes.data, 1, 128, x.ctypes.data, 64, g0.ctypes.data, 64, 128, 64, rows, one)

    transposed = [np.ascontiguousarray(w.T) for w in W]
    x = np.ascontiguousarray(xb)
    return lambda: rounds(x, *W, *transposed, *z, *g, d[1], d[2])


if __name__ == "__main__":
    main()
