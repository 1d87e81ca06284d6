"""Where a training step's time goes: one full step of seed 003's digits network (ReLU, softmax
cross-entropy, SGD, batch 64, float32) against its eight GEMMs alone, run back to back.

    python benchmarks/step_anatomy.py [--backend numba]

If the GEMMs alone take about as long as the whole step, the step is GEMM-bound and fusing
more of the elementwise work cannot make it faster.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np

import fastnn


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

        results = {}
        for name, fn in (("full step", step), ("its 8 GEMMs alone", gemms)):
            fn()
            results[name] = min(timeit.repeat(fn, number=args.steps, repeat=5)) / args.steps
            print(f"{name:18s} {results[name] * 1e6:7.1f} us  (backend {backend.name!r})")
    return results


if __name__ == "__main__":
    main()
