"""The ``fastnn`` command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

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
    for name in [n for n, why in fastnn.available_backends().items() if why is None]:
        assert main(["warmup", "--backend", name]) == 0
        assert f"backend {name!r}: every kernel is compiled" in capsys.readouterr().out
    if fastnn.available_backends()["numba"] is None:
        from fastnn.kernels.numba import elementwise, jit

        assert jit.PARALLEL_MIN_ELEMENTS == 1 << 17  # restored after forcing the parallel builds
        assert all(len(build.signatures) >= 2 for pair in elementwise.forward.values() for build in pair)


def test_info_hints_at_openblas_avx2_kernels_on_an_avx512_cpu():
    from fastnn.info import blas_hints

    pool = {"internal_api": "openblas", "architecture": "Haswell", "user_api": "blas"}
    assert "OPENBLAS_CORETYPE=SkylakeX" in blas_hints([pool], {"avx2", "avx512f"})[0]
    assert "OPENBLAS_CORETYPE=Haswell is set" in blas_hints([pool], {"avx512f"}, "Haswell")[0]
    assert blas_hints([pool], {"avx2"}) == []  # an AVX2-only CPU: Haswell kernels are right
    assert blas_hints([{**pool, "architecture": "SkylakeX"}], {"avx512f"}) == []
