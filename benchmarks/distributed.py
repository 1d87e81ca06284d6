"""Data-parallel training on MPI: what the allreduce costs, and what 2 ranks give on one machine.

    python benchmarks/distributed.py [--ranks 2] [--quick] [--json PATH]

1. Allreduce latency and bandwidth: an in-place float32 ``MPI_Allreduce`` per message size
   (4 KB ... 16 MB) on ``--ranks`` ranks, the median of many, beside the ring-allreduce model
   ``t(n) = 2 (p - 1) alpha + 2 (p - 1) / p * n / bandwidth`` with ``alpha`` and ``bandwidth``
   fitted to every size (least squares on relative error).
2. Training throughput (numba backend, float32, SGD): the digits net 64-128-64-10 (batch 64) and
   784-1024-1024-10 (batch 256, synthetic MNIST-sized data), one process with every core against
   ``--ranks`` ranks sharing the cores (``fastnn.distributed.init`` gives each its share), with
   the fraction of each step the ranks spend in the allreduce.
3. A scaling model to N machines from those figures: ``step(N) = compute / N + allreduce(gradient
   bytes)`` over a stated network (``--link-gbps``, ``--link-latency-us``). A model, not a run.

The script runs part 2's single process itself and starts ``mpiexec`` for the rest; every
figure is from the machine ``fastnn info`` describes, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
NETS = {"digits": ((64, 128, 64, 10), 64), "784-1024-1024-10": ((784, 1024, 1024, 10), 256)}


def _data(net: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    if net == "digits":
        from fastnn.datasets import digits

        X_train, _, y_train, _ = digits()
        return X_train, y_train
    rng = np.random.default_rng(0)
    n = 1024 if quick else 8192
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def _network(sizes: tuple[int, ...]):
    import fastnn

    layers = [fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=k, backend="numba")
              for k, (i, o) in enumerate(zip(sizes, sizes[1:]))]
    return fastnn.Network(layers)


def train_rate(net: str, epochs: int, quick: bool, distributed: bool) -> dict[str, float]:
    """Samples/s of ``epochs`` epochs after a warm-up epoch, and the share of it in allreduce."""
    import fastnn
    from fastnn.distributed import World

    sizes, batch = NETS[net]
    X, y = _data(net, quick)
    spent = [0.0]
    allreduce = World.allreduce

    def timed(self, buffer):
        started = time.perf_counter()
        try:
            return allreduce(self, buffer)
        finally:
            spent[0] += time.perf_counter() - started

    World.allreduce = timed
    try:
        network = _network(sizes)
        args = {"batch_size": batch, "seed": 0, "progress": False, "metrics": False, "distributed": distributed}
        network.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=1, **args)  # warm-up (and compile)
        spent[0] = 0.0
        started = time.perf_counter()
        network.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=epochs, **args)
        elapsed = time.perf_counter() - started
    finally:
        World.allreduce = allreduce
    return {"samples_per_s": len(X) * epochs / elapsed, "allreduce_fraction": spent[0] / elapsed,
            "gradient_bytes": int(network.gradient_message().nbytes)}


def allreduce_sweep(quick: bool) -> list[dict[str, float]]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = []
    for size in SIZES[:4] if quick else SIZES:
        buffer = np.ones(size // 4, np.float32)
        repeats = max(5, min(400, (64 << 20) // size // (8 if quick else 1)))
        times = []
        for _ in range(repeats):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - started)
        seconds = comm.allreduce(statistics.median(times), op=MPI.MAX)
        rows.append({"bytes": size, "seconds": seconds})
    return rows


def worker(args: argparse.Namespace) -> None:
    """One rank (under mpiexec): the sweep, then the training runs; rank 0 prints JSON."""
    from fastnn import distributed

    world = distributed.init()
    result = {"ranks": world.size, "allreduce": allreduce_sweep(args.quick),
              "training": {net: train_rate(net, args.epochs, args.quick, True) for net in NETS}}
    if world.is_main:
        print("RESULT " + json.dumps(result), flush=True)


def ring_model(rows: list[dict[str, float]], ranks: int) -> tuple[float, float]:
    """``(alpha seconds, bandwidth bytes/s)`` of the ring model, fitted to every message size by
    least squares on relative error (one slow spell at one size then moves the fit little)."""
    steps = 2 * (ranks - 1)
    times = np.array([row["seconds"] for row in rows])
    design = np.array([[steps, steps / ranks * row["bytes"]] for row in rows]) / times[:, None]
    (alpha, per_byte), *_ = np.linalg.lstsq(design, np.ones(len(rows)), rcond=None)
    return max(float(alpha), 0.0), 1.0 / per_byte if per_byte > 0 else float("inf")


def ring_seconds(n_bytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * n_bytes / bandwidth


def report(alone: dict, parallel: dict, args: argparse.Namespace) -> str:
    from fastnn.info import cpu_model

    ranks = parallel["ranks"]
    alpha, bandwidth = ring_model(parallel["allreduce"], ranks)
    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} cores; {ranks} ranks on this machine (MPICH shared memory)", "",
             f"allreduce, float32 in place, {ranks} ranks (median):",
             f"  {'bytes':>10}  {'measured us':>12}  {'ring model us':>13}  {'GB/s (algbw)':>12}"]
    for row in parallel["allreduce"]:
        model = ring_seconds(row["bytes"], ranks, alpha, bandwidth)
        lines.append(f"  {row['bytes']:>10,}  {row['seconds'] * 1e6:>12.1f}  {model * 1e6:>13.1f}  "
                     f"{row['bytes'] / row['seconds'] / 1e9:>12.2f}")
    lines.append(f"  ring model fit: alpha {alpha * 1e6:.2f} us per step, bandwidth {bandwidth / 1e9:.2f} GB/s")
    lines += ["", f"training, numba backend, float32 ({args.epochs} epochs after a warm-up epoch):",
              f"  {'network':<18} {'1 process x all cores':>22} {f'{ranks} ranks x share':>18} {'ratio':>6} "
              f"{'in allreduce':>13}"]
    for net in NETS:
        one, many = alone[net], parallel["training"][net]
        lines.append(f"  {net:<18} {one['samples_per_s']:>22,.0f} {many['samples_per_s']:>18,.0f} "
                     f"{many['samples_per_s'] / one['samples_per_s']:>6.2f} {many['allreduce_fraction']:>12.0%}")
    link_bw, link_alpha = args.link_gbps * 1e9 / 8, args.link_latency_us * 1e-6
    lines += ["", f"MODEL (not a run): N machines, one rank each, on a {args.link_gbps:g} Gbit/s link with "
                  f"{args.link_latency_us:g} us latency; compute per sample from the 1-process figure above;",
              "  step(N) = compute(batch) / N + per-step overhead + ring allreduce of the gradient bytes over the",
              f"  link, where the overhead is what a step of the {ranks}-rank run here took beyond the compute "
              "(each rank: 1/ranks of the batch on 1/ranks of the cores) and its allreduce"]
    for net in NETS:
        sizes, batch = NETS[net]
        compute = batch / alone[net]["samples_per_s"]
        gradient_bytes = alone[net]["gradient_bytes"]
        many = parallel["training"][net]
        step_here = batch / many["samples_per_s"]
        # here each rank does 1/ranks of the batch on 1/ranks of the cores: ideally in `compute`
        overhead = max(step_here * (1 - many["allreduce_fraction"]) - compute, 0.0)
        cells = []
        for machines in (1, 2, 4, 8, 16, 64):
            step = compute / machines + (overhead + ring_seconds(gradient_bytes, machines, link_alpha, link_bw)
                                         if machines > 1 else 0.0)
            cells.append(f"N={machines}: {batch / step:,.0f}/s")
        lines.append(f"  {net} (batch {batch}, {gradient_bytes / 1e6:.2f} MB of gradients, overhead "
                     f"{overhead * 1e6:.0f} us a step): " + ", ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--link-gbps", type=float, default=25.0, help="the modelled network's bandwidth")
    parser.add_argument("--link-latency-us", type=float, default=5.0, help="the modelled network's latency")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 5)
    if args.worker:
        worker(args)
        return {}
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    command = [mpiexec, "-n", str(args.ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--epochs", str(args.epochs), *(["--quick"] if args.quick else [])]
    # the ranks first, while this process has started no threads of its own
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    parallel = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    alone = {net: train_rate(net, args.epochs, args.quick, False) for net in NETS}
    text = report(alone, parallel, args)
    print(text)
    result = {"alone": alone, "parallel": parallel, "report": text}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
