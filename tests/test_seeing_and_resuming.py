"""Plots, the runnable seed examples, progress, the NaN guard, checkpoint/resume and Ctrl-C."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn.training import NonFiniteError
from reference import host

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _png(path, size):
    image = pytest.importorskip("matplotlib.image").imread(str(path))
    assert image.shape[:2] == size[::-1], f"{path}: {image.shape}"
    assert float(image[..., :3].std()) > 0.05, f"{path} is blank"


def _trained_xor():
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 8, "tanh", seed=0), fastnn.Linear(8, 1, seed=1)])
    history = net.fit(X, y, "bce_with_logits", fastnn.Adam(0.05), epochs=150, batch_size=4, progress=False,
                      validation_data=(X, y))
    return net, history, X, y


def test_history_decision_boundary_and_confusion_plots(tmp_path):
    net, history, X, y = _trained_xor()
    _png(history.plot(tmp_path / "history.png"), (1000, 360))  # loss and accuracy panels, 100 dpi
    _png(fastnn.plots.decision_boundary(net, X, y, tmp_path / "xor.png"), (500, 450))
    X_train, X_test, y_train, y_test = fastnn.datasets.digits()
    digits = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0), fastnn.Linear(32, 10, seed=1)])
    digits.fit(X_train, y_train, "cross_entropy", fastnn.Adam(0.01), epochs=3, progress=False)
    _png(fastnn.plots.confusion_matrix(digits, X_test, y_test, tmp_path / "cm.png"), (550, 500))
    counts = fastnn.plots.confusion_counts([0, 1, 1, 2], [0, 1, 2, 2], 3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match=r"needs 2-D inputs \(N, 2\)"):
        fastnn.plots.decision_boundary(digits, X_test, y_test, tmp_path / "bad.png")


def test_cli_writes_its_plots(tmp_path, capsys):
    from fastnn.cli import main

    assert main(["train", "xor", "--epochs", "50", "--plot", str(tmp_path / "run")]) == 0
    _png(tmp_path / "run-history.png", (1000, 360))  # loss and accuracy panels
    _png(tmp_path / "run-boundary.png", (500, 450))


def test_plotting_without_matplotlib_names_the_extra():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import fastnn\n"
            "h = fastnn.History([{'loss': 1.0}])\n"
            "try:\n    h.plot('x.png')\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "pip install 'fastnn[plot]'" in out


@pytest.mark.parametrize("script,expected", [
    ("seed000_xor_step.py", ["[0.35663]", "1.03104", "[-0.64337]", "[-0.49357, 0.81287]", "[0.26783, -0.34853]",
                             "[[0.4, -0.23217], [0.1, 0.65147]]"]),
    ("seed001_linear_3_4.py", ["[14. 32. 50. 68.]", "[11. 13. 15.]", "[1.75 4.   6.25 8.5 ]", "fastnn 13"]),
    ("seed002_xor_training.py", ["4 of 4 points classified correctly"]),
])
def test_examples_reproduce_the_notes(tmp_path, script, expected):
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, f"{text!r} not in:\n{result.stdout}"


@pytest.mark.slow
def test_seed003_example_reaches_the_notes_accuracy(tmp_path):
    """The lecture's full recipe (40000 mini-batches of sigmoid + MSE) and the ReLU + CE variant."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "seed003_digits.py")], capture_output=True,
                            text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lecture, modern = [float(line.split("test accuracy ")[1].split()[0]) for line in result.stdout.splitlines()
                       if "test accuracy" in line]
    assert lecture >= 0.96, result.stdout  # the notes report 0.98 on their own random split
    assert modern >= 0.97, result.stdout
    _png(tmp_path / "digits-confusion.png", (550, 500))


# --- progress ----------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_only(monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 4, "tanh", seed=0), fastnn.Linear(4, 1, seed=1)])
    net.fit(X, y, "bce_with_logits", epochs=2, batch_size=1, progress=True)
    assert "epoch 2/2" in terminal.getvalue() and "loss=" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    net.fit(X, y, "bce_with_logits", epochs=2, batch_size=1, progress=False)
    assert quiet.getvalue() == ""


# --- the NaN guard ------------------------------------------------------------------------------


def test_exploding_learning_rate_stops_with_the_last_good_parameters(backend, monkeypatch):
    """The network ends at its parameters from before the first step whose loss or update was
    non-finite (CPU backends stop at that step; device backends notice at the epoch's end)."""
    X, _, y, _ = fastnn.datasets.digits()
    net = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0), fastnn.Linear(32, 10, seed=1)])
    optimizer = fastnn.SGD(lr=50.0)  # MSE on one-hot targets diverges to inf within an epoch
    loss = fastnn.losses.MSE()
    loss_finite, before, after = [], [], []
    compute, step = loss.compute, optimizer.step

    def recording_compute(*args, **kwargs):
        value, grad = compute(*args, **kwargs)
        loss_finite.append(bool(np.isfinite(backend.to_numpy(value))))
        return value, grad

    def recording_step(network):
        before.append(np.array(backend.to_numpy(network.flat_parameters()[0])))
        step(network)
        after.append(np.array(backend.to_numpy(network.flat_parameters()[0])))

    monkeypatch.setattr(loss, "compute", recording_compute)
    monkeypatch.setattr(optimizer, "step", recording_step)
    # the per-layer loop, which calls loss.compute and optimizer.step per batch (the numba
    # backend's whole-step trainer has its guard tested in test_dense_step.py)
    monkeypatch.setattr(backend, "dense_trainer", lambda *args: None)
    with pytest.raises(NonFiniteError, match=r"epoch \d+, batch \d+: .*(loss|layer \d).*before this batch"):
        net.fit(X, fastnn.datasets.one_hot(y, 10), loss, optimizer, epochs=50, batch_size=64, progress=False)
    first_bad = next(i for i, ok in enumerate(loss_finite)
                     if not ok or (i < len(after) and not np.isfinite(after[i]).all()))
    expected = before[first_bad] if first_bad < len(before) else after[first_bad - 1]
    final = backend.to_numpy(net.flat_parameters()[0])
    assert np.isfinite(final).all()
    np.testing.assert_array_equal(final, expected)


def test_the_guard_names_the_layer_whose_gradient_went_bad():
    class Faulty(fastnn.Linear):
        calls = 0

        def backward(self, dy, need_input_grad=True):
            dx = super().backward(dy, need_input_grad)
            Faulty.calls += 1
            if Faulty.calls == 3:
                self.grads["weight"][0, 0] = np.inf
            return dx

    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 4, "tanh", seed=0), Faulty(4, 1, seed=1)])
    before = np.array(host(net.flat_parameters()[0]))
    # a backend that checks on the device reads the verdict once an epoch, when the culprit is gone
    what = (r"the loss or a gradient" if net.backend.defers_checks else
            r"the gradient of layer 1 \(Linear\(4, 1\)\) 'weight'")
    with pytest.raises(NonFiniteError, match=rf"epoch 3, batch 1: {what} became non-finite"):
        net.fit(X, y, "bce_with_logits", fastnn.SGD(0.1), epochs=5, batch_size=4, shuffle=False, progress=False)
    assert np.isfinite(host(net.flat_parameters()[0])).all()
    assert not np.array_equal(host(net.flat_parameters()[0]), before)  # two good steps were kept


# --- checkpoints and resume ----------------------------------------------------------------------


def _digits_run(optimizer_factory, epochs, **fit_args):
    X, _, y, _ = fastnn.datasets.digits()
    net = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0), fastnn.Linear(32, 10, seed=1)])
    history = net.fit(X, y, "cross_entropy", optimizer_factory(), epochs=epochs, batch_size=50, seed=11,
                      progress=False, **fit_args)
    return net, history


@pytest.mark.parametrize("optimizer_factory", [lambda: fastnn.SGD(0.05, momentum=0.9, nesterov=True),
                                               lambda: fastnn.AdamW(0.003)], ids=["sgd-nesterov", "adamw"])
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(backend, tmp_path, optimizer_factory):
    straight, straight_history = _digits_run(optimizer_factory, 6)
    path = tmp_path / "run.npz"
    _digits_run(optimizer_factory, 3, checkpoint=str(path))
    resumed, resumed_history = _digits_run(optimizer_factory, 6, resume=str(path))
    np.testing.assert_array_equal(backend.to_numpy(resumed.flat_parameters()[0]),
                                  backend.to_numpy(straight.flat_parameters()[0]))
    assert resumed_history["loss"] == straight_history["loss"]
    assert len(resumed_history) == 6


def test_checkpoint_every_and_resume_errors(tmp_path):
    path = tmp_path / "run.npz"
    _, history = _digits_run(lambda: fastnn.SGD(0.05), 5, checkpoint=str(path), checkpoint_every=2)
    with np.load(path) as data:
        assert "training" in data.files  # written at epoch 2, 4 and the last (5)
    assert fastnn.Network.load(path).parameter_count() == 64 * 32 + 32 + 32 * 10 + 10
    with pytest.raises(ValueError, match="resume with the optimizer the run was started with"):
        _digits_run(lambda: fastnn.SGD(0.1), 6, resume=str(path))
    other = fastnn.Network([fastnn.Linear(64, 16, seed=0), fastnn.Linear(16, 10, seed=1)])
    X, _, y, _ = fastnn.datasets.digits()
    with pytest.raises(ValueError, match="different network architecture"):
        other.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=6, resume=str(path), progress=False)
    plain = tmp_path / "plain.npz"
    other.save(plain)
    with pytest.raises(ValueError, match="no training state"):
        other.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=6, resume=str(plain), progress=False)


def test_ctrl_c_stops_after_the_current_batch_and_keeps_the_work(monkeypatch, python_sigint_handler):
    X, _, y, _ = fastnn.datasets.digits()
    fastnn.set_backend("numpy")  # the per-layer loop, where a batch is a call to loss.compute
    net = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0), fastnn.Linear(32, 10, seed=1)])
    loss = fastnn.losses.CrossEntropy()
    calls = {"n": 0}
    compute = loss.compute

    def compute_and_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:  # in the second epoch (23 batches of 64 per epoch)
            signal.raise_signal(signal.SIGINT)
        return compute(*args, **kwargs)

    monkeypatch.setattr(loss, "compute", compute_and_interrupt)
    history = net.fit(X, y, loss, fastnn.SGD(0.05), epochs=10, batch_size=64, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert history.interrupted
    assert len(history) == 1 and calls["n"] == 30  # stopped right after that batch
    assert np.isfinite(net.flat_parameters()[0]).all()


def test_where_sigint_is_ignored_fit_leaves_it_ignored(monkeypatch):
    """A background job or ``nohup`` runs with SIGINT ignored: fit must not make it interruptible."""
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 4, "tanh", seed=0), fastnn.Linear(4, 1, seed=1)])
    loss = fastnn.losses.BCEWithLogits()
    compute = loss.compute

    def compute_and_interrupt(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return compute(*args, **kwargs)

    monkeypatch.setattr(loss, "compute", compute_and_interrupt)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with fastnn.use_backend("numpy"):
            history = net.fit(X, y, loss, fastnn.SGD(0.1), epochs=3, batch_size=2, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not history.interrupted and len(history) == 3


def test_progress_bar_shows_on_a_terminal_that_reports_no_size(monkeypatch):
    """A pseudo-terminal of 0 x 0 (script, some CI runners) made tqdm hide every bar: fastnn now
    passes the size, falling back to 80 x 24."""
    pytest.importorskip("tqdm")
    import os
    import shutil

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size(fallback))
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((0, 0)))
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 4, "tanh", seed=0), fastnn.Linear(4, 1, seed=1)])
    net.fit(X, y, "bce_with_logits", epochs=1, batch_size=1, progress=True)
    assert "epoch 1/1" in terminal.getvalue()


def test_confusion_matrix_colour_bar_is_labelled(tmp_path, monkeypatch):
    from fastnn import plots

    X_train, X_test, y_train, y_test = fastnn.datasets.digits()
    net = fastnn.Network([fastnn.Linear(64, 10, seed=0)])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or str(path))
    plots.confusion_matrix(net, X_test, y_test, tmp_path / "cm.png")
    colour_bar = figures[0].axes[-1]
    assert colour_bar.get_ylabel() == "test samples"
    plots._pyplot().close(figures[0])
