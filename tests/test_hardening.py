"""Regression tests for the defects adversarial testing found (issue 12): wrong accuracies, shared
state under threads, resources a small input could exhaust, damaged files, and the errors a user
sees. (The kernel argument checks are in test_conformance.py, on every backend.)"""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn import checkpoint as checkpoint_module
from fastnn.backends import REGISTRY, BackendEntry
from fastnn.backends.numpy_backend import NumpyBackend

NUMBA = fastnn.available_backends()["numba"]
needs_numba = pytest.mark.skipif(NUMBA is not None, reason=f"numba backend unavailable: {NUMBA}")


def small_net(backend, in_features=4, out_features=3, activation=None, dtype=np.float64, seed=0):
    return fastnn.Network([fastnn.Linear(in_features, 8, "tanh", dtype=dtype, seed=seed, backend=backend),
                           fastnn.Linear(8, out_features, activation, dtype=dtype, seed=seed + 1, backend=backend)])


# --- C. wrong numbers ------------------------------------------------------------------------------



@pytest.mark.parametrize("case", ["ce-labels", "ce-probs", "bce-logits", "mse-onehot"])
def test_accuracy_with_extra_leading_dims_is_a_fraction(backend, case):
    """X (50, 5, 4): every sample has 5 positions. Accuracy counted positions but divided by
    samples (2.5-3.1); it is now the fraction of positions right, as computed here by hand."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 5, 4))
    out_features = 1 if case == "bce-logits" else 3
    net = small_net(backend, out_features=out_features)
    if case == "ce-labels":
        y, loss = rng.integers(0, 3, (50, 5)), "cross_entropy"
    elif case == "ce-probs":
        y, loss = rng.dirichlet(np.ones(3), (50, 5)), "cross_entropy"
    elif case == "bce-logits":
        y, loss = (rng.random((50, 5, 1)) > 0.5) * 1.0, "bce_with_logits"
    else:
        y, loss = np.eye(3)[rng.integers(0, 3, (50, 5))], "mse"
    out = backend.to_numpy(net.predict(X))
    if case == "ce-labels":
        expected = np.mean(out.argmax(-1) == y)
    elif case == "bce-logits":
        expected = np.mean((out > 0) == (y > 0.5))
    else:
        expected = np.mean(out.argmax(-1) == y.argmax(-1))
    result = net.evaluate(X, y, loss)
    assert 0 <= result["accuracy"] <= 1
    assert result["accuracy"] == pytest.approx(expected, abs=1e-12)
    history = net.fit(X, y, loss, fastnn.SGD(lr=0.01), epochs=2, batch_size=16, progress=False, seed=0)
    assert all(0 <= a <= 1 for a in history["accuracy"])


def test_metrics_true_without_classes_is_refused_on_every_backend(backend):
    """A one-output MSE regression has no accuracy: metrics=True gave NaN on numpy and 1.0 on
    numba; it is now a ValueError (and metrics=None simply tracks no accuracy)."""
    X = np.random.default_rng(1).standard_normal((32, 4))
    y = X.sum(axis=1, keepdims=True)
    net = small_net(backend, out_features=1)
    with pytest.raises(ValueError, match="metrics=True asks for accuracy"):
        net.fit(X, y, "mse", epochs=1, metrics=True, progress=False)
    history = net.fit(X, y, "mse", epochs=1, progress=False)
    assert "accuracy" not in history.epochs[0]


def test_fit_with_bce_needs_a_network_that_outputs_probabilities(backend):
    """fit(loss="bce") on logits never ran BCE's domain check: it ended in a NonFiniteError at a
    different batch on each backend. Now it is refused up front, naming the fix."""
    X = np.random.default_rng(2).standard_normal((16, 4))
    y = (X[:, :1] > 0) * 1.0
    with pytest.raises(ValueError, match="bce_with_logits"):
        small_net(backend, out_features=1).fit(X, y, "bce", epochs=1, progress=False)
    for net in (small_net(backend, out_features=1, activation="sigmoid"),
                fastnn.Network([*small_net(backend, out_features=1).layers,
                                fastnn.Sigmoid(dtype=np.float64, backend=backend)])):
        history = net.fit(X, y, "bce", fastnn.SGD(lr=0.1), epochs=2, progress=False)
        assert math.isfinite(history["loss"][-1])


# --- D. shared state -------------------------------------------------------------------------------

def test_predict_on_a_shared_network_from_many_threads(backend):
    """8 threads predicting different inputs on one network: 166/1200 (numpy) and 266/1200 (numba)
    results were wrong when the layers shared their workspaces."""
    net = small_net(backend, in_features=6, out_features=5, activation="relu")
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((rows, 6)) for rows in (3, 7, 7, 64, 3, 130, 64, 7)]
    expected = [backend.to_numpy(net.predict(x)).copy() for x in inputs]
    wrong, start = [], threading.Barrier(len(inputs))

    def work(i):
        start.wait()
        for _ in range(150):
            if not np.array_equal(backend.to_numpy(net.predict(inputs[i])), expected[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_predict_and_evaluate_leave_the_forward_cache_for_backward(backend):
    """forward(X); predict(V); backward(dy) returned the gradients of V's pass."""
    rng = np.random.default_rng(4)
    X, V, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    net = small_net(backend)
    net.forward(X)
    clean_dx = backend.to_numpy(net.backward(dy)).copy()
    clean = {k: backend.to_numpy(g).copy() for k, g in enumerate(net.layers[0].grads.values())}
    net.forward(X)
    net.predict(V)
    net.evaluate(V, rng.integers(0, 3, 5), "cross_entropy")
    np.testing.assert_array_equal(backend.to_numpy(net.backward(dy)), clean_dx)
    for k, g in enumerate(net.layers[0].grads.values()):
        np.testing.assert_array_equal(backend.to_numpy(g), clean[k])


class SlowToBuild(NumpyBackend):
    """A backend whose construction takes long enough for threads to race on it."""

    def __init__(self) -> None:
        time.sleep(0.05)
        super().__init__()


def test_first_use_of_a_backend_from_many_threads_builds_one_instance(monkeypatch):
    """functools.cache is not a lock: 8 threads at once built 8 instances, and layers from two of
    them refused to combine ("lives on backend 'numba' but the network on 'numba'")."""
    from fastnn import backends

    monkeypatch.setitem(REGISTRY, "numpy", BackendEntry("numpy", f"{__name__}:SlowToBuild", lambda: None))
    monkeypatch.setattr(backends, "_instances", {})
    got, start = [], threading.Barrier(8)

    def work():
        start.wait()
        got.append(backends.backend_for("numpy"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(b is got[0] for b in got)


def test_a_second_fit_on_a_network_in_training_is_refused(backend):
    X, y = np.random.default_rng(5).standard_normal((8, 4)), np.arange(8) % 3
    net = small_net(backend)
    errors = []

    def nested(epoch, record):
        with pytest.raises(RuntimeError, match="already being trained") as info:
            net.fit(X, y, "cross_entropy", epochs=1, progress=False)
        errors.append(info.value)

    net.fit(X, y, "cross_entropy", epochs=2, progress=False, on_epoch=nested)
    assert len(errors) == 2
    net.fit(X, y, "cross_entropy", epochs=1, progress=False)  # released afterwards


@needs_numba
def test_overlapping_numba_fits_restore_blas_threads():
    """A enters, B enters, A exits, B exits: each trainer restored what it had saved, so BLAS
    stayed on one thread for the rest of the process."""
    from threadpoolctl import threadpool_limits

    from fastnn.kernels import blas as blas_module

    blas = blas_module.find()
    if blas is None:
        pytest.skip("NumPy here is built on a BLAS other than OpenBLAS: the numba whole-step trainer then "
                    "keeps the per-layer path and never changes BLAS's thread count, so there is nothing "
                    "to restore")
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas.get_num_threads()
        a, b = blas_module.single_threaded(blas), blas_module.single_threaded(blas)
        a.__enter__()
        b.__enter__()
        assert blas.get_num_threads() == 1
        a.__exit__(None, None, None)
        assert blas.get_num_threads() == 1  # B is still training
        b.__exit__(None, None, None)
        assert blas.get_num_threads() == before
        # and through fit itself, with two networks trained alternately from two threads
        X, y = np.random.default_rng(6).standard_normal((512, 16)).astype(np.float32), np.arange(512) % 4
        nets = [fastnn.Network([fastnn.Linear(16, 32, "relu", seed=s, backend="numba"),
                                fastnn.Linear(32, 4, seed=s, backend="numba")]) for s in (0, 1)]
        threads = [threading.Thread(target=net.fit, args=(X, y, "cross_entropy"),
                                    kwargs={"epochs": 3, "batch_size": 64, "progress": False}) for net in nets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert blas.get_num_threads() == before


# --- E. resources and files ------------------------------------------------------------------------

def test_a_batch_size_beyond_the_data_trains_one_batch(backend):
    """The numba whole-step trainer sized its buffers by batch_size (10**8 asked for 229 GiB)."""
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((100, 64)).astype(np.float32), rng.integers(0, 10, 100)
    results = []
    for batch_size in (10**8, 100):
        net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0, backend=backend),
                              fastnn.Linear(128, 10, seed=1, backend=backend)])
        history = net.fit(X, y, "cross_entropy", fastnn.SGD(lr=0.1), epochs=3, batch_size=batch_size,
                          progress=False, seed=0)
        results.append((history["loss"], backend.to_numpy(net.flat_parameters()[0]).copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _write_checkpoint(path, architecture, arrays):
    texts = [json.dumps(architecture)]
    np.savez(path, fastnn_format=np.array(checkpoint_module.FORMAT), format_version=np.array(1),
             architecture=np.array(texts[0]), digest=np.array(checkpoint_module._digest(texts, arrays)), **arrays)


def test_a_checkpoint_declaring_a_huge_layer_is_refused_before_allocating(tmp_path):
    """2 KB with a valid digest declaring Linear(10**6, 10**6): MemoryError (3 GB allocated before
    the shape check). The stored arrays are checked against the architecture first."""
    path = tmp_path / "huge.npz"
    config = {"in_features": 10**6, "out_features": 10**6, "activation": "identity", "alpha": None,
              "bias": True, "dtype": "float32"}
    _write_checkpoint(path, [{"kind": "Linear", "config": config}],
                      {"params/0/weight": np.zeros((2, 2), np.float32), "params/0/bias": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"declares parameter 'weight' of shape \(1000000, 1000000\)"):
        fastnn.Network.load(path)
    bad = dict(config, in_features=-3)
    _write_checkpoint(path, [{"kind": "Linear", "config": bad}], {})
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        fastnn.Network.load(path)


def test_every_single_byte_flip_of_a_checkpoint_gives_value_error_or_the_same_network(tmp_path):
    """Flips in the zip headers raised NotImplementedError or RuntimeError (80 of 11,448 flips)
    where a damaged file must raise ValueError."""
    net = fastnn.Network([fastnn.Linear(2, 1, seed=0, backend="numpy")])
    good = tmp_path / "good.npz"
    net.save(good)
    data = good.read_bytes()
    expected = net.flat_parameters()[0].copy()
    damaged = tmp_path / "damaged.npz"
    outcomes = {"ValueError": 0, "loaded": 0}
    for position in range(len(data)):
        for mask in (0xFF, 0x01, 0x80):
            flipped = bytearray(data)
            flipped[position] ^= mask
            damaged.write_bytes(bytes(flipped))
            try:
                loaded = fastnn.Network.load(damaged, backend="numpy")
            except ValueError:
                outcomes["ValueError"] += 1
            else:  # a flip in a field nothing reads (a timestamp, say): the same network
                np.testing.assert_array_equal(loaded.flat_parameters()[0], expected)
                outcomes["loaded"] += 1
    assert outcomes["ValueError"] > 0.5 * 3 * len(data)


def test_a_garbage_file_is_named_as_not_a_checkpoint(tmp_path):
    """It showed NumPy's "allow_pickle" text, which sends users looking in the wrong place."""
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a checkpoint at all, just text\n" * 10)
    with pytest.raises(ValueError, match="not an .npz") as info:
        fastnn.Network.load(path)
    assert "pickle" not in str(info.value)


# --- F. errors a user sees -------------------------------------------------------------------------

def test_fit_takes_optimizer_names(backend):
    X, y = np.random.default_rng(8).standard_normal((16, 4)), np.arange(16) % 3
    for name in ("sgd", "adam", "adamw", "Adam"):
        history = small_net(backend).fit(X, y, "cross_entropy", optimizer=name, epochs=1, progress=False)
        assert math.isfinite(history["loss"][0])
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'.*'adam'"):
        small_net(backend).fit(X, y, "cross_entropy", optimizer="rmsprop", epochs=1, progress=False)


def test_one_hot_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from -1"):
        fastnn.datasets.one_hot([-1], 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fastnn.datasets.one_hot([0, 3], 3)
    with pytest.raises(ValueError, match="labels must be integers"):
        fastnn.datasets.one_hot([0.5], 3)
    np.testing.assert_array_equal(fastnn.datasets.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path):
    X, y = np.random.default_rng(9).standard_normal((16, 4)), np.arange(16) % 3
    path = tmp_path / "run.npz"
    small_net("numpy").fit(X, y, "cross_entropy", epochs=3, checkpoint=str(path), progress=False)
    with pytest.raises(ValueError, match="has trained 3 epochs already"):
        small_net("numpy").fit(X, y, "cross_entropy", epochs=2, resume=str(path), progress=False)
    history = small_net("numpy").fit(X, y, "cross_entropy", epochs=3, resume=str(path), progress=False)
    assert len(history) == 3  # as many as trained: nothing more to do


def test_a_bogus_fastnn_backend_variable_is_an_error(monkeypatch):
    from fastnn.backends import _current, default_backend_name

    monkeypatch.setenv("FASTNN_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="FASTNN_BACKEND='tensorflow' is not a backend"):
        default_backend_name()
    token = _current.set(None)
    try:
        with pytest.raises(ValueError, match="FASTNN_BACKEND"):
            fastnn.get_backend()
    finally:
        _current.reset(token)


# --- A. the TBB Numba runs on ---------------------------------------------------------------------

SYSTEM_TBB = "/usr/lib/x86_64-linux-gnu/libtbb.so.12"  # Debian's libtbb12 (.ci/run installs it)

_LONG_FIT = r"""
import json, os, sys, time
import numba
import fastnn
from fastnn.kernels.numba import threading_layer

page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

X, _, y, _ = fastnn.datasets.digits()
net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0, backend="numba"),
                      fastnn.Linear(128, 64, "relu", seed=1, backend="numba"),
                      fastnn.Linear(64, 10, seed=2, backend="numba")])
rates, sizes = [], []
def on_epoch(epoch, record):
    rates.append(record["samples_per_s"])
    sizes.append(rss())
net.fit(X, y, "cross_entropy", fastnn.SGD(0.05, momentum=0.9), epochs=int(sys.argv[1]), batch_size=64,
        seed=0, progress=False, on_epoch=on_epoch)
status = threading_layer.status()
print(json.dumps({"rates": rates, "rss": sizes, "layer": numba.threading_layer(), "loaded": status.loaded,
                  "declared": status.declared, "foreign": status.foreign}))
print("DONE", time.time(), flush=True)
"""


@needs_numba
@pytest.mark.slow
def test_numba_runs_on_the_environments_tbb_even_where_the_system_has_another(tmp_path):
    """With Debian's libtbb12 first on the loader's path, Numba's tbbpool (no RPATH) loaded it:
    a 400-epoch digits fit fell from ~430,000 to ~13,000-43,000 samples/s, memory grew ~15 KB a
    step and the process hung at exit in TBB's finalize. fastnn now loads the environment's TBB
    by path first. The child puts the system's copy ahead of everything with LD_LIBRARY_PATH
    (a folder holding only a link to it, so that nothing else changes)."""
    import os
    import subprocess
    import sys

    shadow = tmp_path / "system-tbb"
    shadow.mkdir()
    if os.path.exists(SYSTEM_TBB):
        (shadow / "libtbb.so.12").symlink_to(SYSTEM_TBB)
    env = {**os.environ, "LD_LIBRARY_PATH": str(shadow)}
    child = subprocess.Popen([sys.executable, "-c", _LONG_FIT, "300"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        report = json.loads(child.stdout.readline())
        done_line = child.stdout.readline()
        assert done_line.startswith("DONE"), child.stderr.read()
        child.wait(timeout=60)  # a hang in TBB's finalize took seconds to minutes
        exit_seconds = time.time() - float(done_line.split()[1])
    finally:
        child.kill()
    assert report["declared"] is not None and report["foreign"] == [], report["loaded"]
    assert report["layer"] == "tbb"
    # (the fit's speed over a long run is the drift benchmark's, not a test's: a burst on a shared
    # VM made 30 late epochs 3x slower here once; benchmarks/test_training_throughput.py -k 400)
    growth = report["rss"][-1] - report["rss"][20]
    assert growth < 32 << 20, f"resident memory grew {growth / 2**20:.1f} MiB over 280 epochs"
    assert exit_seconds < 30, f"the process took {exit_seconds:.1f} s to exit"


@needs_numba
def test_without_a_tbb_of_its_own_numba_prefers_other_layers_to_the_systems(monkeypatch):
    from numba.core import config

    from fastnn.kernels.numba import threading_layer

    monkeypatch.setattr(threading_layer, "_status", None)
    monkeypatch.setattr(threading_layer, "declared_tbb", lambda: None)
    monkeypatch.setattr(config, "THREADING_LAYER_PRIORITY", list(config.THREADING_LAYER_PRIORITY))
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    status = threading_layer.prepare()
    assert config.THREADING_LAYER_PRIORITY[:2] == ["omp", "workqueue"]
    assert "no TBB of its own" in status.note
    monkeypatch.setattr(threading_layer, "_status", None)


def test_networks_still_copy_and_pickle(backend):
    """The per-thread workspaces and the training lock are not state: deepcopy and pickle, which
    worked before they were added, still do (and the copy trains and predicts on its own)."""
    import copy
    import pickle

    X, y = np.random.default_rng(10).standard_normal((8, 4)), np.arange(8) % 3
    net = small_net(backend)
    net.predict(X)
    clones = [copy.deepcopy(net)]
    if fastnn.available_backends().get(backend.name) is None:  # not the stand-in: a real backend
        clones.append(pickle.loads(pickle.dumps(net)))
    for clone in clones:
        assert clone.backend is backend  # one backend instance: the copy combines with new layers
        np.testing.assert_array_equal(backend.to_numpy(clone.predict(X)), backend.to_numpy(net.predict(X)))
        clone.fit(X, y, "cross_entropy", epochs=1, progress=False)
        clone.add(fastnn.Softmax(dtype=np.float64, backend=backend))


def test_a_copied_network_trains_its_own_layers(backend):
    """A deep copy (or unpickled copy) of a packed network held its layers' parameters apart from
    its flat buffer: ``fit`` on the copy reported falling losses and changed nothing it predicts."""
    import copy
    import pickle

    X, y = np.random.default_rng(11).standard_normal((32, 4)), np.arange(32) % 3
    net = small_net(backend)
    net.flat_parameters()
    before = backend.to_numpy(net.predict(X))
    clones = [copy.deepcopy(net)]
    if fastnn.available_backends().get(backend.name) is None:
        clones.append(pickle.loads(pickle.dumps(net)))
    for clone in clones:
        params, _ = clone.flat_parameters()
        assert all(np.shares_memory(params, value) for value in clone.parameters())
        clone.fit(X, y, "cross_entropy", optimizer=fastnn.SGD(lr=0.5), epochs=3, progress=False)
        assert np.abs(backend.to_numpy(clone.predict(X)) - before).max() > 1e-3
    np.testing.assert_array_equal(backend.to_numpy(net.predict(X)), before)  # the original is untouched


def test_a_custom_layer_without_infer_still_predicts():
    """Layers written before ``infer`` existed keep working: ``infer`` falls back to ``forward``."""

    class Double(fastnn.Layer):
        kind = "Double"

        def forward(self, x):
            return self.backend.asarray(x, self.dtype) * 2

        def backward(self, dy, need_input_grad=True):
            return dy * 2

    net = fastnn.Network([fastnn.Linear(3, 2, seed=0, backend="numpy"), Double(backend="numpy")])
    X = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(net.predict(X), 2 * net.layers[0].infer(X))
