"""Learning-rate schedules, early stopping and gradient clipping in ``fit`` (issue 17, first part)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn
from fastnn.schedules import CosineAnnealingLR, LinearWarmup, StepLR, from_config


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    return X, y


def _net(backend, seed=0):
    return fastnn.Network([fastnn.Linear(6, 16, "relu", dtype=np.float64, seed=seed, backend=backend),
                           fastnn.Linear(16, 3, dtype=np.float64, seed=seed + 1, backend=backend)])


# --- the schedules' formulas --------------------------------------------------------------------------

def test_schedule_formulas():
    assert [StepLR(2, 0.5).lr(0.8, t) for t in range(6)] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2]
    cosine = CosineAnnealingLR(4, eta_min=0.1)
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(6)]
    assert [cosine.lr(1.0, t) for t in range(6)] == pytest.approx(expected, rel=1e-15)
    assert cosine.lr(1.0, 0) == 1.0 and cosine.lr(1.0, 4) == pytest.approx(0.1)
    warm = LinearWarmup(4, then=StepLR(1, 0.5))
    assert [warm.lr(1.0, t) for t in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.25]
    assert [LinearWarmup(2).lr(0.2, t) for t in range(4)] == [0.1, 0.2, 0.2, 0.2]
    for schedule in (StepLR(3, 0.2, interval="batch"), cosine, warm, LinearWarmup(2)):
        rebuilt = from_config(schedule.config())
        assert rebuilt.config() == schedule.config() and repr(rebuilt) == repr(schedule)


@pytest.mark.parametrize("make,match", [
    (lambda: StepLR(0), "step_size must be a positive integer"),
    (lambda: StepLR(2, gamma=-1), "gamma must be a positive number"),
    (lambda: CosineAnnealingLR(5, eta_min=-0.1), "eta_min must be a non-negative"),
    (lambda: LinearWarmup(3, then="cosine"), "then must be a fastnn.schedules.Schedule"),
    (lambda: StepLR(2, interval="step"), "interval must be one of"),
    (lambda: fastnn.EarlyStopping(patience=-1), "patience must be a non-negative integer"),
    (lambda: fastnn.EarlyStopping(mode="up"), "mode must be 'min' or 'max'"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_schedules_match_pytorch_step_by_step():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here: pip install torch==2.13.0")
    cases = [(StepLR(3, 0.5), lambda opt: torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)),
             (CosineAnnealingLR(7, eta_min=0.01), lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 7, 0.01)),
             (LinearWarmup(4, then=CosineAnnealingLR(6)), lambda opt: torch.optim.lr_scheduler.SequentialLR(
                 opt, [torch.optim.lr_scheduler.LinearLR(opt, 1 / 4, 1.0, total_iters=3),
                       torch.optim.lr_scheduler.CosineAnnealingLR(opt, 6)], milestones=[4]))]
    for ours, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
        theirs = make(opt)
        for t in range(12):
            assert ours.lr(0.3, t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), (ours, t)
            opt.step()
            theirs.step()


# --- schedules in fit -------------------------------------------------------------------------------

@pytest.mark.parametrize("interval", ["epoch", "batch"])
def test_fit_follows_the_schedule_on_every_backend(backend, interval):
    """Each epoch's record says the rate used; the whole-step trainer (numba) and the per-layer
    path train the same model under the schedule (float64, so to rounding)."""
    X, y = _data()
    schedule = LinearWarmup(2, then=StepLR(1, 0.5), interval=interval)
    optimizer = fastnn.SGD(0.2, momentum=0.9)
    history = _net(backend).fit(X, y, "cross_entropy", optimizer, epochs=4, batch_size=32, seed=0,
                                progress=False, schedule=schedule)
    steps = [3 * (epoch + 1) - 1 for epoch in range(4)] if interval == "batch" else range(4)
    assert history["lr"] == pytest.approx([schedule.lr(0.2, t) for t in steps])
    assert optimizer.scheduled_lr is None and optimizer.current_lr == 0.2  # the schedule ended with the fit
    with fastnn.use_backend("numpy"):
        reference = _net("numpy")
        reference.fit(X, y, "cross_entropy", fastnn.SGD(0.2, momentum=0.9), epochs=4, batch_size=32, seed=0,
                      progress=False, schedule=schedule)
    trained = _net(backend)
    trained.fit(X, y, "cross_entropy", fastnn.SGD(0.2, momentum=0.9), epochs=4, batch_size=32, seed=0,
                progress=False, schedule=schedule)
    np.testing.assert_allclose(backend.to_numpy(trained.flat_parameters()[0]), reference.flat_parameters()[0],
                               rtol=1e-10, atol=1e-12)


def test_a_scheduled_run_resumes_bit_for_bit(backend, tmp_path):
    X, y = _data()
    schedule = CosineAnnealingLR(5, eta_min=0.01)
    whole = _net(backend)
    whole.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=5, batch_size=32, seed=1, progress=False,
              schedule=schedule)
    path = str(tmp_path / "run.npz")
    first = _net(backend)
    first.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=2, batch_size=32, seed=1, progress=False,
              schedule=schedule, checkpoint=path)
    resumed = _net(backend, seed=7)
    history = resumed.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=5, batch_size=32, seed=1,
                          progress=False, schedule=schedule, resume=path)
    assert len(history) == 5
    np.testing.assert_array_equal(backend.to_numpy(resumed.flat_parameters()[0]),
                                  backend.to_numpy(whole.flat_parameters()[0]))
    with pytest.raises(ValueError, match="resume with the schedule the run was started with"):
        _net(backend).fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=5, batch_size=32, seed=1,
                          progress=False, schedule=StepLR(2), resume=path)


# --- early stopping ---------------------------------------------------------------------------------

def test_early_stopping_rule():
    es = fastnn.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.01)
    params = np.zeros(3)
    verdicts = []
    for epoch, value in enumerate([1.0, 0.8, 0.795, 0.79], start=1):  # 0.795 and 0.79: not by 0.01
        params[:] = epoch
        verdicts.append(es.update(epoch, {"val_loss": value}, params))
    assert verdicts == [False, False, False, True]
    assert es.best_epoch == 2 and es.best == 0.8
    assert es.restore(params) and params.tolist() == [2.0, 2.0, 2.0]
    accuracy = fastnn.EarlyStopping(monitor="val_accuracy", patience=0)
    assert accuracy.mode == "max"
    assert not accuracy.update(1, {"val_accuracy": 0.5}, params) and accuracy.update(2, {"val_accuracy": 0.5}, params)


def test_fit_stops_early_and_restores_the_best_epoch(backend, tmp_path):
    """No epoch after the first improves by min_delta: patience 2 stops after epoch 3 and the
    network ends with epoch 1's parameters, exactly those a 1-epoch run ends with."""
    X, y = _data()
    one = _net(backend)
    one.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=1, batch_size=32, seed=2, progress=False)
    net = _net(backend)
    es = fastnn.EarlyStopping(monitor="loss", patience=2, min_delta=1e9)
    path = str(tmp_path / "es.npz")
    history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=10, batch_size=32, seed=2, progress=False,
                      early_stopping=es, checkpoint=path)
    assert len(history) == 3 and history.stopped_early and history.best_epoch == 1
    np.testing.assert_array_equal(backend.to_numpy(net.flat_parameters()[0]),
                                  backend.to_numpy(one.flat_parameters()[0]))
    again = _net(backend)  # resuming a run that stopped trains nothing more
    resumed = again.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=10, batch_size=32, seed=2, progress=False,
                        early_stopping=fastnn.EarlyStopping(monitor="loss", patience=2, min_delta=1e9), resume=path)
    assert len(resumed) == 3 and resumed.stopped_early and resumed.best_epoch == 1
    np.testing.assert_array_equal(backend.to_numpy(again.flat_parameters()[0]),
                                  backend.to_numpy(one.flat_parameters()[0]))


def test_early_stopping_resumes_its_tracking(tmp_path):
    """Interrupted after epoch 2 of a run that stops after epoch 4: the resumed run waits the
    same epochs and restores the same best parameters as the uninterrupted one."""
    X, y = _data()

    def run(epochs, **kwargs):
        net = _net("numpy")
        es = fastnn.EarlyStopping(monitor="loss", patience=3, min_delta=1e9)
        history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=epochs, batch_size=32, seed=3,
                          progress=False, early_stopping=es, **kwargs)
        return net, history

    whole, whole_history = run(10)
    path = str(tmp_path / "run.npz")
    run(2, checkpoint=path)
    resumed, history = run(10, resume=path)
    assert (len(history), history.best_epoch) == (len(whole_history), whole_history.best_epoch) == (4, 1)
    np.testing.assert_array_equal(resumed.flat_parameters()[0], whole.flat_parameters()[0])


def test_early_stopping_needs_a_metric_the_fit_records():
    X, y = _data()
    with pytest.raises(ValueError, match="monitors 'val_loss', which this fit does not record"):
        _net("numpy").fit(X, y, "cross_entropy", epochs=2, progress=False, early_stopping=fastnn.EarlyStopping())


# --- gradient clipping ------------------------------------------------------------------------------

def test_clip_grad_norm_is_pytorchs_rule(backend):
    """One step with clipping equals backward, g *= min(1, max_norm / (||g|| + 1e-6)), SGD."""
    X, y = _data(32)
    for max_norm in (0.05, 1e6):  # clipped, and left alone
        net = _net(backend)
        manual = _net(backend)
        net.fit(X, y, "cross_entropy", fastnn.SGD(0.5), epochs=1, batch_size=32, shuffle=False, progress=False,
                clip_grad_norm=max_norm)
        out = manual.forward(X)
        _, grad = fastnn.losses.CrossEntropy().compute(manual.backend, out, manual.backend.asarray(y))
        manual.backward(grad)
        params, grads = (backend.to_numpy(a).copy() for a in manual.flat_parameters())
        norm = math.sqrt(float(np.dot(grads, grads)))
        expected = params - 0.5 * grads * min(1.0, max_norm / (norm + 1e-6))
        np.testing.assert_allclose(backend.to_numpy(net.flat_parameters()[0]), expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="clip_grad_norm must be a positive number"):
        _net(backend).fit(X, y, "cross_entropy", epochs=1, progress=False, clip_grad_norm=0)
