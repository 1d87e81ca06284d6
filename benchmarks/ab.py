"""A/B of two commits: a digits fit's samples/s, the two builds taking turns in fresh processes.

    python benchmarks/ab.py REV_A REV_B [--rounds 8] [--backend numba] [--epochs 10] [--net large]

Each commit's ``fastnn/`` and ``kernels/`` are taken out of git (``git archive``) into a folder
of their own, laid out as the wheel installs them (``kernels/`` as ``fastnn/kernels``), and each
compiles its kernels once, untimed. Then every round runs one process per commit, in turns (the
order flips each round), each timing five fits of seed 003's digits network (ReLU, softmax
cross-entropy, SGD lr 0.1, batch 64, float32) after one untimed fit, and reporting their median.
``--net large``: issue 13's 784-1024-1024-10 (ReLU, SGD lr 0.01, batch 256) on 8,192 synthetic
samples, as ``benchmarks/training.py --net large`` trains it (``--epochs`` 2 is ~1 s a fit).
Printed: every round, each commit's median and range over the rounds, and the ratio B / A within
each round (its median and range). On a VM whose speed changes from one second to the next, the
ratio within a round is what can be compared; a run of separate processes one after the other
is not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

ONE_PROCESS = """
import statistics, sys, time
import fastnn
assert fastnn.__file__.startswith(sys.argv[1]), fastnn.__file__
import numpy as np
backend, epochs, large = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "large"
if large:
    rng = np.random.default_rng(0)
    X = rng.random((8192, 784), dtype=np.float32)
    y = rng.integers(0, 10, len(X))
else:
    X, _, y, _ = fastnn.datasets.digits()
sizes, lr, batch = ((784, 1024, 1024, 10), 0.01, 256) if large else ((64, 128, 64, 10), 0.1, 64)

def rate():
    with fastnn.use_backend(backend):
        net = fastnn.Network([fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=k)
                              for k, (i, o) in enumerate(zip(sizes, sizes[1:]))])
        started = time.perf_counter()
        net.fit(X, y, "cross_entropy", fastnn.SGD(lr), epochs=epochs, batch_size=batch, seed=0, progress=False,
                metrics=False)
        return len(X) * epochs / (time.perf_counter() - started)

rate()
print(statistics.median(rate() for _ in range(5)))
"""


def checkout(revision: str, folder: Path) -> Path:
    """``revision``'s package under ``folder``, as installed: ``folder/fastnn`` with its kernels."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", revision, "fastnn", "kernels"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "kernels").rename(folder / "fastnn" / "kernels")
    return folder


def samples_per_s(folder: Path, backend: str, epochs: int, net: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(folder), backend, str(epochs), net], env=env,
                          capture_output=True, text=True, cwd=folder)
    if done.returncode != 0:
        raise SystemExit(f"{folder}: {done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def main(argv=None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", metavar="REV_A")
    parser.add_argument("b", metavar="REV_B")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--epochs", type=int, default=None, help="per fit (default: 10 digits, 2 large)")
    parser.add_argument("--net", choices=["digits", "large"], default="digits")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.net == "large" else 10)
    with tempfile.TemporaryDirectory(prefix="fastnn-ab-") as scratch:
        folders = {}
        for name, revision in (("A", args.a), ("B", args.b)):
            folders[name] = checkout(revision, Path(scratch) / name)
            samples_per_s(folders[name], args.backend, 1, args.net)  # compiles its kernels, untimed
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for round_ in range(args.rounds):
            for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                rates[name].append(samples_per_s(folders[name], args.backend, epochs, args.net))
            print(f"round {round_ + 1}: A {rates['A'][-1]:,.0f}  B {rates['B'][-1]:,.0f} samples/s", flush=True)
    for name, revision in (("A", args.a), ("B", args.b)):
        print(f"{name} {revision}: median {statistics.median(rates[name]):,.0f} samples/s "
              f"(range {min(rates[name]):,.0f}-{max(rates[name]):,.0f})")
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    print(f"B / A within a round: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds, backend {args.backend!r}, "
          f"net {args.net})")
    return rates


if __name__ == "__main__":
    main()
