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

pytestmark = [pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable"),
              pytest.mark.own_backends]  # the Numba kernels themselves

# Run in a child process: a deadlock there fails the test on the timeout instead of hanging the
# suite (a thread spinning in a kernel never returns to Python to see a signal).
PHASES = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    from numba import njit, prange
    from fastnn.kernels.numba import atomics

    @njit(parallel=True)
    def phases(workers, tasks, phase_count, runs, seen_done, ran_by):
        sync = np.zeros((phase_count, 1 + tasks), np.int64)
        for worker in prange(workers):
            for p in range(phase_count):
                phase = sync[p]
                for k in range(tasks):
                    t = (worker + k) % tasks
                    if atomics.claim(phase, t):
                        runs[p, t] += 1
                        ran_by[p, t] = worker
                        # what this task sees of the phase before: all of it done
                        seen_done[p, t] = atomics.load(sync[p - 1], 0) if p > 0 else tasks
                        atomics.finish(phase)
                atomics.wait(phase, tasks)

    numba.set_num_threads(int(sys.argv[1]))
    workers, tasks, phase_count = 4, 3, 200
    runs = np.zeros((phase_count, tasks), np.int64)
    seen = np.zeros((phase_count, tasks), np.int64)
    ran_by = np.full((phase_count, tasks), -1, np.int64)
    phases(workers, tasks, phase_count, runs, seen, ran_by)
    assert (runs == 1).all(), runs
    assert (seen == tasks).all(), seen
    if numba.get_num_threads() == 1:  # iterations one after another: the first runs everything
        assert (ran_by == 0).all(), ran_by
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


def test_a_task_is_claimed_once_and_done_counts_up():
    from numba import njit

    from fastnn.kernels.numba import atomics

    @njit
    def claim_twice_and_finish(phase):
        first, again, other = atomics.claim(phase, 1), atomics.claim(phase, 1), atomics.claim(phase, 0)
        atomics.finish(phase)
        atomics.finish(phase)
        atomics.wait(phase, 2)  # both done: returns at once
        return first, again, other

    phase = np.zeros(3, np.int64)
    assert claim_twice_and_finish(phase) == (True, False, True)
    assert phase[0] == 2


def test_the_intrinsics_refuse_what_they_are_not_written_for():
    from numba import njit
    from numba.core.errors import TypingError

    from fastnn.kernels.numba import atomics

    @njit
    def add(counters):
        return atomics.fetch_add(counters, 0, 1)

    with pytest.raises(TypingError):
        add(np.zeros(2, np.int32))


def test_without_a_sched_yield_the_module_still_loads(monkeypatch):
    """Where the C library has no ``sched_yield`` (Windows), waiting falls back to spinning."""
    import ctypes

    from fastnn.kernels.numba import atomics

    def no_c_library(name):
        raise TypeError("no C library by that name here")

    monkeypatch.setattr(ctypes, "CDLL", no_c_library)
    assert atomics._register_sched_yield() is False
    monkeypatch.undo()
    assert atomics._register_sched_yield() is True
