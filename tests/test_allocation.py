"""A training step in steady state allocates nothing that lasts and nothing large."""

from __future__ import annotations

import tracemalloc

import numpy as np

import fastnn


def test_training_memory_does_not_grow_with_steps(backend):
    X, _, y, _ = fastnn.datasets.digits()
    net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0), fastnn.Linear(128, 64, "relu", seed=1),
                          fastnn.Linear(64, 10, seed=2)])
    optimizer = fastnn.SGD(0.05, momentum=0.9)
    net.fit(X, y, "cross_entropy", optimizer, epochs=1, batch_size=64, progress=False)  # warm up
    tracemalloc.start()
    try:
        net.fit(X, y, "cross_entropy", optimizer, epochs=1, batch_size=64, progress=False)
        one_epoch_current, one_epoch_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        net.fit(X, y, "cross_entropy", optimizer, epochs=4, batch_size=64, progress=False)
        four_epochs_current, four_epochs_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a leak of even one batch activation (64 x 128 float32 = 32 KiB) per step would be
    # 23 steps x 32 KiB = 736 KiB per epoch; the bounds below are a fraction of that
    assert four_epochs_current - one_epoch_current < 64 * 1024
    assert four_epochs_peak - one_epoch_peak < 64 * 1024
    # what a fit allocates at all (gathered-batch buffers, per-batch losses, temporaries) is
    # bounded by a few activations, not by the 92 steps of four epochs
    assert four_epochs_peak < 1024 * 1024
    assert np.isfinite(net.evaluate(X, y)["loss"])
