"""The ``fastnn`` command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import numpy as np

import fastnn
from fastnn.cli import main


def test_info_lists_backends_with_reasons(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, reason in fastnn.available_backends().items():
        assert re.search(rf"{name}\s+" + ("available" if reason is None else re.escape(f"unavailable: {reason}")), out)
    assert "auto -> " in out and "numpy" in out and "thread" in out


def test_train_xor_prints_epochs_accuracy_and_speed(capsys, tmp_path):
    path = tmp_path / "xor.npz"
    assert main(["train", "xor", "--backend", "numpy", "--epochs", "400", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "epoch 400/400  loss" in out
    assert re.search(r"final: loss [0-9.]+, accuracy 1\.0000; [0-9,]+ samples/s", out)
    assert len(fastnn.Network.load(path).layers) == 2


def test_train_digits_short_run(capsys):
    assert main(["train", "digits", "--epochs", "3", "--optimizer", "adam", "--lr", "0.003"]) == 0
    out = capsys.readouterr().out
    assert "val_accuracy" in out and re.search(r"final: test loss [0-9.]+, accuracy 0\.[89]", out)


def test_errors_exit_2_with_a_message(capsys):
    unusable = [n for n, why in fastnn.available_backends().items() if why]
    if unusable:
        assert main(["train", "xor", "--backend", unusable[0]]) == 2
        assert "unavailable" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("fastnn")
    command = [exe] if exe else [sys.executable, "-m", "fastnn.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "info" in result.stdout and "train" in result.stdout
    assert exe is not None, "the fastnn console script is not on PATH (pip install -e . installs it)"


def test_warmup_compiles_every_kernel_ahead_of_time(capsys):
    outputs = {}
    for name in [n for n, why in fastnn.available_backends().items() if why is None]:
        assert main(["warmup", "--backend", name]) == 0
        out = outputs[name] = capsys.readouterr().out
        assert f"backend {name!r}: every kernel is compiled" in out
        # progress as it goes: one line per build and dtype, and per whole-step variant
        assert "float32 kernels ready (" in out and "whole training step, float64, Adam ready (" in out
    if fastnn.available_backends()["numba"] is None:
        from fastnn.kernels.numba import elementwise, jit

        assert jit.PARALLEL_MIN_ELEMENTS == 1 << 17  # restored after forcing the parallel builds
        assert all(len(build.signatures) >= 2 for pair in elementwise.forward.values() for build in pair)
        # the whole-step kernel's passes, compiled apart, for every activation and dtype
        from fastnn.activations import ACTIVATIONS
        from fastnn.kernels.numba import by_address as passes

        built = passes.forward_address.cache_info().misses, passes.backward_address.cache_info().misses
        for dtype in (np.float32, np.float64):
            for activation in ACTIVATIONS:
                passes.forward_address(activation, np.dtype(dtype))
                passes.backward_address(activation, np.dtype(dtype))
        assert (passes.forward_address.cache_info().misses, passes.backward_address.cache_info().misses) == built
        # every build of the whole-step kernel's tasks: each loss, with and without the LayerNorm
        # and dropout code, each optimizer rule, both dtypes (the float64 ones from a helper)
        assert "every whole-step build, float64 ready (" in outputs["numba"]
        from numba import types

        from fastnn.kernels.numba import dense_step, wide_step

        for real in (types.float32, types.float64):
            for variant in dense_step.BLOCK_VARIANTS:
                assert passes.in_cache(dense_step._block_build(*variant), dense_step.block_task_signature(real))
            for labels in (True, False):  # the wide schedule's thread, per loss
                assert passes.in_cache(wide_step._wide_build(labels), dense_step.thread_signature(real))
            for rule in dense_step.UPDATES:
                assert passes.in_cache(dense_step._slice_build(rule), dense_step.slice_task_signature(real))
            assert passes.in_cache(dense_step.train_batches, dense_step.train_batches_signature(real))


def test_warmups_helper_runs_every_kernel_of_one_dtype_in_each_build(monkeypatch):
    """What ``fastnn warmup``'s helper process runs (the float64 kernels, while warmup itself runs
    the float32 ones), here in this process: every kernel of the contract, in each build."""
    from fastnn import cli

    runs = []
    every = cli._run_every_kernel
    monkeypatch.setattr(cli, "_run_every_kernel", lambda backend, dtype: runs.append(dtype) or every(backend, dtype))
    for name in [n for n, why in fastnn.available_backends().items() if why is None]:
        runs.clear()
        cli.run_every_kernel_in_each_build(name, "float64")
        assert runs == [np.dtype(np.float64)] * len(list(fastnn.backends.backend_for(name).kernel_builds()))


def test_info_hints_at_openblas_avx2_kernels_on_an_avx512_cpu():
    from fastnn.info import blas_hints

    pool = {"internal_api": "openblas", "architecture": "Haswell", "user_api": "blas"}
    assert "OPENBLAS_CORETYPE=SkylakeX" in blas_hints([pool], {"avx2", "avx512f"})[0]
    assert "OPENBLAS_CORETYPE=Haswell is set" in blas_hints([pool], {"avx512f"}, "Haswell")[0]
    assert blas_hints([pool], {"avx2"}) == []  # an AVX2-only CPU: Haswell kernels are right
    assert blas_hints([{**pool, "architecture": "SkylakeX"}], {"avx512f"}) == []


# --- every bad argument: one line on stderr, exit 2, no traceback, nothing written ------------------

def _fails_cleanly(capsys, argv, message, tmp_path=None):
    before = sorted(p.name for p in tmp_path.iterdir()) if tmp_path is not None else None
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fastnn: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and message in err, err
    assert "epoch 1/" not in captured.out  # refused before training
    if tmp_path is not None:
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    return err


def test_train_refuses_bad_paths_before_training(capsys, tmp_path):
    missing = tmp_path / "missing-dir"
    base = ["train", "xor", "--backend", "numpy", "--epochs", "2"]
    _fails_cleanly(capsys, [*base, "--save", str(missing / "x.npz")], "does not exist", tmp_path)
    _fails_cleanly(capsys, [*base, "--save", str(tmp_path)], "is a directory", tmp_path)
    _fails_cleanly(capsys, [*base, "--save", "."], "is a directory", tmp_path)
    _fails_cleanly(capsys, [*base, "--checkpoint", str(missing / "c.npz")], "does not exist", tmp_path)
    _fails_cleanly(capsys, [*base, "--resume", str(tmp_path / "missing.npz")], "no such file", tmp_path)


def test_train_refuses_bad_numbers(capsys, tmp_path):
    base = ["train", "xor", "--backend", "numpy"]
    _fails_cleanly(capsys, [*base, "--batch-size", "0"], "--batch-size must be a positive integer, got 0")
    _fails_cleanly(capsys, [*base, "--epochs", "0"], "--epochs must be a positive integer, got 0")
    _fails_cleanly(capsys, [*base, "--epochs", "-3"], "--epochs must be a positive integer")


def test_resume_from_garbage_or_with_too_few_epochs(capsys, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00garbage" * 64)
    err = _fails_cleanly(capsys, ["train", "xor", "--backend", "numpy", "--resume", str(garbage)], "not an .npz")
    assert "allow_pickle" not in err
    run = tmp_path / "run.npz"
    assert main(["train", "xor", "--backend", "numpy", "--epochs", "3", "--checkpoint", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "xor", "--backend", "numpy", "--epochs", "2", "--resume", str(run)]) == 2
    assert "has trained 3 epochs already" in capsys.readouterr().err


def test_train_honours_fastnn_backend_like_the_library(capsys, monkeypatch):
    monkeypatch.setenv("FASTNN_BACKEND", "numpy")
    assert main(["train", "xor", "--epochs", "1"]) == 0
    assert "on backend 'numpy'" in capsys.readouterr().out
    monkeypatch.setenv("FASTNN_BACKEND", "bogus")
    _fails_cleanly(capsys, ["train", "xor", "--epochs", "1"], "FASTNN_BACKEND='bogus' is not a backend")
    assert main(["train", "xor", "--epochs", "1", "--backend", "numpy"]) == 0  # the option wins


# --- the CLI talks while it works ------------------------------------------------------------------

def test_train_prints_about_twenty_epoch_lines_and_the_last(capsys):
    """xor's 300 epochs printed 300 lines; now every ~15th, and always the last."""
    assert main(["train", "xor", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert 15 <= len(epochs) <= 21 and epochs[-1].startswith("epoch 300/300")
    assert main(["train", "xor", "--backend", "numpy", "--epochs", "7", "--log-every", "3"]) == 0
    epochs = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert epochs == ["3/7", "6/7", "7/7"]


def test_train_says_compiling_only_when_it_compiles(capsys, monkeypatch):
    """The numpy backend said "warm-up (JIT compilation or cache load)" though nothing compiles.
    Now a compiling backend says so within a second of starting, and only if the warm-up is
    still running then (loading cached kernels is faster)."""
    from fastnn import training

    assert main(["train", "xor", "--backend", "numpy", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "compil" not in out and "warm-up" not in out
    if fastnn.available_backends()["numba"] is not None:
        return
    assert main(["train", "xor", "--backend", "numba", "--epochs", "1"]) == 0  # cached by now: quick
    assert "compil" not in capsys.readouterr().out
    slow_warm_up = training.warm_up

    def compiling(*args, **kwargs):  # a warm-up that takes as long as a first compile would
        time.sleep(1.5)
        return slow_warm_up(*args, **kwargs) + 1.5

    monkeypatch.setattr(training, "warm_up", compiling)
    assert main(["train", "xor", "--backend", "numba", "--epochs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("compiling the numba kernels"))
    assert "(roughly 5-15 s on 2 cores, once" in lines[said]  # how long, roughly
    assert lines[said + 1].startswith("kernels compiled in") and said < next(
        i for i, line in enumerate(lines) if line.startswith("epoch "))


def test_train_names_the_plot_files_before_training(capsys, tmp_path):
    stem = tmp_path / "run.png"
    assert main(["train", "digits", "--backend", "numpy", "--epochs", "1", "--plot", str(stem)]) == 0
    lines = capsys.readouterr().out.splitlines()
    announced = next(i for i, line in enumerate(lines) if line.startswith("will write"))
    assert lines[announced] == f"will write {tmp_path / 'run-history.png'} and {tmp_path / 'run-confusion.png'}"
    assert announced < next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert (tmp_path / "run-history.png").exists() and (tmp_path / "run-confusion.png").exists()


def test_info_names_the_cpu_and_a_broken_pipe_is_quiet():
    result = subprocess.run(["fastnn", "info"], capture_output=True, text=True, timeout=120)
    assert re.search(r"^CPU: .+, \d+ cores, SIMD", result.stdout, re.M)
    piped = subprocess.run("fastnn info | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert piped.stdout.startswith("fastnn ") and "error" not in piped.stderr
