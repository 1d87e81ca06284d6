"""How fast each CPU of this machine is right now: the same single-threaded vectorised loop, pinned
to one CPU after the other, every half second.

    python benchmarks/vcpu_speed.py [--samples 40]

On a dedicated machine every column stays flat. On this project's VMs one vCPU at a time often
runs the loop 1.4-2x slower for a while (host contention), and a kernel that splits each
training step evenly across both cores then waits for the slow one; it is why the end-to-end
ratios in docs/performance.md are ranges.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def _work(a, rounds):
    for _ in range(rounds):
        for i in range(a.size):
            a[i] = a[i] * np.float32(0.999) + np.float32(0.001)


def main(argv=None) -> list[list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    a = np.ones(2048, np.float32)
    _work(a, 1)
    rows = []
    try:
        for _ in range(args.samples):
            row = []
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                start = time.perf_counter()
                _work(a, 200_000)
                row.append((time.perf_counter() - start) * 1e3)
            rows.append(row)
            print("  ".join(f"cpu{cpu} {ms:5.1f} ms" for cpu, ms in zip(cpus, row)), flush=True)
            time.sleep(0.5)
    finally:
        os.sched_setaffinity(0, set(cpus))
    return rows


if __name__ == "__main__":
    main()
