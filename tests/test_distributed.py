"""Data-parallel training on MPI: N ranks train the model one process trains, and fail together.

Each multi-rank test starts ``mpiexec -n N`` on ``tests/support/distributed_worker.py`` in a
process group of its own and kills the whole group on a timeout, so a hang fails the test and
leaves no rank behind. The single-process references are computed here, in the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import distributed
from support import distributed_worker as worker

WORKER = Path(worker.__file__)
TIMEOUT = 240  # seconds: compiling the Numba kernels in two ranks at once on a cold cache fits


def mpiexec() -> str:
    found = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
    if not os.path.exists(found):
        pytest.fail(f"mpiexec not found: the test extra installs mpi4py and MPICH ({distributed.INSTALL_HINT})")
    return found


def launch(ranks: int, *args: str, timeout: float = TIMEOUT, env: dict[str, str] | None = None,
           command: list[str] | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks`` of the worker (or ``command``), killed with its group on a timeout."""
    argv = [mpiexec(), "-n", str(ranks), *(command or [sys.executable, str(WORKER), *args])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), *sys.path]),
                   **(env or {})}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=environment)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"mpiexec -n {ranks} {' '.join(args)} did not finish in {timeout} s\n{out}\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks")
    _ok(launch(2, "equivalence", str(out), *worker.CONFIGS))
    return out


@pytest.fixture(scope="module")
def references():
    """Each configuration trained by one process, alone (``distributed=False``)."""
    return {config: worker.train(config) for config in worker.CONFIGS}


def said(out: Path, rank: int, result: subprocess.CompletedProcess) -> str:
    """The one line rank ``rank`` of the worker reported."""
    path = out / f"said-rank{rank}.txt"
    assert path.exists(), f"rank {rank} reported nothing\n{result.stdout}\n{result.stderr[-3000:]}"
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _rank_results(out: Path, config: str, ranks: int) -> list[tuple[np.ndarray, dict]]:
    return [(np.load(out / f"{config}-rank{rank}.npy"), json.loads((out / f"{config}-rank{rank}.json").read_text()))
            for rank in range(ranks)]


@pytest.mark.parametrize("config", worker.CONFIGS)
def test_two_ranks_train_the_model_one_process_trains(two_ranks, references, config):
    """Same global batch, same shuffling, a ragged last batch (one sample: rank 0's share is
    empty): the parameters, losses and accuracies of one process, to float rounding."""
    net, history = references[config]
    expected = net.backend.to_numpy(net.flat_parameters()[0])
    rtol = 1e-5 if "float32" in config else 1e-10
    for params, result in _rank_results(two_ranks, config, 2):
        np.testing.assert_allclose(params, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
        for mine, theirs in zip(result["history"], history.epochs):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert mine[key] == pytest.approx(theirs[key], rel=rtol * 10, abs=1e-12), key


@pytest.mark.parametrize("config", worker.CONFIGS)
def test_every_rank_holds_bit_identical_parameters(two_ranks, config):
    (first, first_result), (second, second_result) = _rank_results(two_ranks, config, 2)
    np.testing.assert_array_equal(first, second)
    assert [r["loss"] for r in first_result["history"]] == [r["loss"] for r in second_result["history"]]


@pytest.mark.parametrize("config", [c for c in worker.CONFIGS if c.startswith("numba")])
def test_the_numba_backend_keeps_its_whole_step_kernel_under_mpi(two_ranks, config):
    """The kernel computes each shard's gradients in one call (rule "none"), Python allreduces."""
    _, result = _rank_results(two_ranks, config, 2)[0]
    batches = -(-worker.N_SAMPLES // worker.BATCH)
    assert result["whole_step_calls"] == worker.EPOCHS * (batches - 1)  # rank 0 has no share of the last


def test_three_ranks_on_two_cores(tmp_path, references):
    """Oversubscribed (3 ranks, 2 cores), shares of 7, 7 and 6 samples and a last batch that
    only one rank holds: still the single process's model, on every rank."""
    configs = ["numpy-float64-adam", "numba-float32-sgd-momentum"]
    _ok(launch(3, "equivalence", str(tmp_path), *configs))
    for config in configs:
        net, _ = references[config]
        expected = net.backend.to_numpy(net.flat_parameters()[0])
        rtol = 1e-5 if "float32" in config else 1e-10
        results = _rank_results(tmp_path, config, 3)
        for params, _ in results:
            np.testing.assert_allclose(params, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
            np.testing.assert_array_equal(params, results[0][0])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_non_finite_gradient_on_one_rank_stops_every_rank_at_the_same_batch(tmp_path, backend):
    result = launch(2, "nonfinite", str(tmp_path), backend)
    messages = {said(tmp_path, rank, result) for rank in range(2)}
    assert len(messages) == 1, messages  # the same error, naming the same batch, on both ranks
    assert messages.pop().startswith("NonFiniteError: epoch 1, batch 2:")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_batch(tmp_path, backend):
    """The signal reaches rank 1 as its 8th step's message is already going out, so its stop
    flag travels with the 9th step's: every rank stops after step 9, none waits for another."""
    result = launch(2, "interrupt", str(tmp_path), backend)
    for rank in range(2):
        assert said(tmp_path, rank, result) == "interrupted True after 1 epoch(s) and 9 steps"
    np.testing.assert_array_equal(np.load(tmp_path / "interrupt-rank0.npy"), np.load(tmp_path / "interrupt-rank1.npy"))


def test_ranks_share_the_cores_and_train_on_a_communicator_they_are_given(tmp_path, references):
    """3 ranks on this machine: each gets max(1, cores // 3) Numba and BLAS threads; ranks 0 and 1
    train on a communicator split from the world, rank 2 alone on its own: all three end with
    the single process's model."""
    result = _ok(launch(3, "placement", str(tmp_path)))
    cores = len(os.sched_getaffinity(0))
    for rank in range(3):
        facts = json.loads(said(tmp_path, rank, result))
        assert facts["local_size"] == 3 and facts["sub_size"] == (2 if rank < 2 else 1)
        assert facts["numba_threads"] == max(1, cores // 3) and facts["blas_threads"] == [max(1, cores // 3)]
    net, _ = references["numba-float64-adam"]
    expected = net.flat_parameters()[0]
    for rank in range(3):
        np.testing.assert_allclose(np.load(tmp_path / f"placement-rank{rank}.npy"), expected, rtol=1e-10,
                                   atol=1e-10 * np.abs(expected).max())


def test_an_exception_on_one_rank_ends_every_rank(tmp_path):
    """Rank 1 raises; rank 0 would otherwise wait in its next allreduce for ever (the worker
    asks for 1000 epochs). The excepthook ``init`` installs aborts the world."""
    result = launch(2, "crash", str(tmp_path), timeout=120)
    assert result.returncode != 0
    # first one line that says what happened (the traceback's own last line was once lost when
    # the launcher killed the ranks before forwarding it), then the traceback
    assert "fastnn: rank 1 of 2: RuntimeError: rank 1 fails on purpose; aborting every rank" in result.stderr


def test_a_checkpointed_run_resumed_on_two_ranks_matches_the_uninterrupted_run(tmp_path):
    _ok(launch(2, "resume", str(tmp_path)))
    whole = [np.load(tmp_path / f"whole-rank{rank}.npy") for rank in range(2)]
    resumed = [np.load(tmp_path / f"resumed-rank{rank}.npy") for rank in range(2)]
    for params in whole[1:] + resumed:
        np.testing.assert_array_equal(params, whole[0])


def test_ranks_that_hold_different_runs_all_refuse(tmp_path):
    """Rank 1 has one sample fewer: the ranks would pair different steps' messages (or wait on
    each other). Every rank raises the same ValueError before the first step instead."""
    result = launch(2, "mismatch", str(tmp_path), timeout=120)
    for rank in range(2):
        text = said(tmp_path, rank, result)
        assert text.startswith("ValueError: distributed fit: every rank must train the same run"), text
        assert "rank 0: samples 101" in text and "rank 1: samples 100" in text


def test_the_cupy_backend_reduces_through_nccl_on_two_ranks(tmp_path, host_cuda_library, references):
    """The CuPy stand-in (the real kernel source built for the host) with the NCCL stand-in: one
    communicator per rank from rank 0's unique id, one in-place allreduce a step, each rank on
    its own device, and the model one NumPy process trains. NCCL itself has not run here."""
    _ok(launch(2, "nccl", str(tmp_path), str(host_cuda_library)))
    net, history = references["numpy-float64-sgd-momentum"]
    expected = net.flat_parameters()[0]
    batches = -(-worker.N_SAMPLES // worker.BATCH)
    results = [(np.load(tmp_path / f"nccl-rank{rank}.npy"),
                json.loads((tmp_path / f"nccl-rank{rank}.json").read_text())) for rank in range(2)]
    for params, result in results:
        np.testing.assert_allclose(params, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
        np.testing.assert_array_equal(params, results[0][0])
        assert result["communicators"] == 1 and result["allreduces"] == [worker.EPOCHS * batches]
        assert result["device"] == 0
        assert [r["loss"] for r in result["history"]] == pytest.approx(history["loss"], rel=1e-10)


def test_mpiexec_fastnn_train_prints_once_and_trains_on_every_rank(tmp_path):
    """The README's command (fewer epochs): one rank speaks, rank 0 alone writes the file."""
    fastnn_cli = [sys.executable, "-m", "fastnn.cli"]
    result = _ok(launch(2, command=[*fastnn_cli, "train", "digits", "--backend", "numba", "--epochs", "2",
                                    "--save", str(tmp_path / "net.npz")]))
    assert result.stdout.count("training digits") == 1, result.stdout
    assert result.stdout.count("epoch 2/2") == 1, result.stdout
    assert result.stdout.count("final:") == 1, result.stdout
    assert "2 ranks" in result.stdout
    assert fastnn.Network.load(str(tmp_path / "net.npz")).parameter_count() > 0


# --- alone: the same script, a world of one -----------------------------------------------------


def test_alone_distributed_true_is_an_ordinary_fit():
    config = "numpy-float64-sgd-momentum"
    plain, plain_history = worker.train(config)
    alone, alone_history = worker.train(config, True)
    np.testing.assert_array_equal(plain.flat_parameters()[0], alone.flat_parameters()[0])
    assert distributed.size() == 1 and distributed.rank() == 0 and distributed.is_main()


def test_distributed_rejects_what_is_not_a_communicator():
    net = worker.network("numpy", "float64")
    X, y = worker.data("float64")
    with pytest.raises(TypeError, match="mpi4py communicator"):
        net.fit(X, y, "cross_entropy", distributed="yes", progress=False)


def test_a_launcher_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py then raises ImportError
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    monkeypatch.setattr(distributed, "_world", None)
    with pytest.raises(ImportError, match=r"one of 2 ranks.*pip install 'fastnn\[mpi\]'"):
        distributed.init()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 64, 101])
def test_shards_split_a_batch_into_contiguous_parts_that_cover_it_once(size, count):
    class Comm:
        def __init__(self, rank):
            self.rank = rank

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return size

    worlds = []
    for rank in range(size):
        world = distributed.World.__new__(distributed.World)
        world.comm, world.rank, world.size, world.local_rank, world.local_size = Comm(rank), rank, size, 0, 1
        worlds.append(world)
    shards = [world.shard(10, 10 + count) for world in worlds]
    assert shards[0][0] == 10 and shards[-1][1] == 10 + count
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    sizes = [hi - lo for lo, hi in shards]
    assert max(sizes) - min(sizes) <= 1
