"""Kernel sources are found from a built wheel installed elsewhere, not only from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_kernel_source_from_the_checkout():
    from fastnn.kernels import kernel_source

    assert "def relu_backward" in kernel_source("numpy/activations.py")
    with pytest.raises(FileNotFoundError, match="no kernel source 'cuda/missing.cu'"):
        kernel_source("cuda/missing.cu")


@pytest.mark.own_backends  # a wheel in its own venv, on that venv's default backend
@pytest.mark.slow
def test_wheel_installs_and_finds_its_kernels(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = dist.glob("fastnn-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # numpy/scipy come from outside
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]

    probe = ("import fastnn, fastnn.kernels as k, numpy as np\n"
             "print(fastnn.__file__)\n"
             "print(k.kernel_source('numpy/activations.py').count('def '))\n"
             "net = fastnn.Network([fastnn.Linear(2, 3, 'relu'), fastnn.Linear(3, 1)])\n"
             "print(net.forward(np.ones((4, 2))).shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTNN_BACKEND")}
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    location, definitions, shape = run.stdout.split("\n")[:3]
    assert Path(location).resolve().is_relative_to(env_dir.resolve()), location  # the wheel, not the checkout
    assert int(definitions) > 10
    assert shape == "(4, 1)"
