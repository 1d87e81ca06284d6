"""The claim-and-wait phases of ``kernels/numba/atomics.py`` that the whole-step trainer's threads
meet on: every task runs exactly once, a phase starts only after the one before is done, and a
thread that never comes (the parallel loop run on one thread) holds nobody up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn

pytestmark = pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable")

# Run in a child process: a deadlock there fails the test on the timeout instead of hanging the
# suite (a thread spinning in a kernel never returns to Python to see a signal).
PHASES = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    from numba import njit, prange
    from fastnn.kernels.numba import atomics

    @njit(parallel=True)
    def phases(workers, tasks, phase_count, runs, seen_done):
        sync = np.zeros(2 * phase_count, np.int64)
        for _ in prange(workers):
            for p in range(phase_count):
                t = atomics.claim(sync, p)
                while t < tasks:
                    runs[p, t] += 1
                    # what this task sees of the phase before: all of it done
                    seen_done[p, t] = atomics.load(sync, 2 * (p - 1) + 1) if p > 0 else tasks
                    atomics.finish(sync, p)
                    t = atomics.claim(sync, p)
                atomics.wait(sync, p, tasks)

    numba.set_num_threads(int(sys.argv[1]))
    workers, tasks, phase_count = 4, 3, 200
    runs = np.zeros((phase_count, tasks), np.int64)
    seen = np.zeros((phase_count, tasks), np.int64)
    phases(workers, tasks, phase_count, runs, seen)
    assert (runs == 1).all(), runs
    assert (seen == tasks).all(), seen
    print("ok")
""")


@pytest.mark.parametrize("threads", [1, 2])
def test_every_task_runs_once_and_each_phase_waits_for_the_one_before(threads):
    """Four loop iterations on ``threads`` threads: with one, the iterations run one after
    another, so the first must do every task alone and the others pass through."""
    result = subprocess.run([sys.executable, "-c", PHASES, str(threads)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fetch_add_returns_the_value_before():
    from numba import njit

    from fastnn.kernels.numba import atomics

    @njit
    def add_twice(counters):
        first = atomics.fetch_add(counters, 1, 5)
        second = atomics.fetch_add(counters, 1, -2)
        return first, second, atomics.load(counters, 1)

    counters = np.array([7, 10, 9], np.int64)
    assert add_twice(counters) == (10, 15, 13)
    assert counters.tolist() == [7, 13, 9]
