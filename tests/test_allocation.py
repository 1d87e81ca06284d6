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


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_zeros_are_page_aligned_and_cost_no_memory_until_written():
    """``Backend.zeros`` is allocated zeroed: an optimizer state nothing reads (SGD's velocity
    without momentum) costs neither the time to fill it nor resident memory (filling it was
    27 ms of a 784-1024-1024-10 epoch's 0.56 s on an AMD EPYC, Zen 4)."""
    import os

    from fastnn.backends import backend_for

    backend = backend_for("numpy")
    page = os.sysconf("SC_PAGE_SIZE")
    before = _resident_bytes()
    big = backend.zeros((64 << 20) // 4, np.float32)
    assert _resident_bytes() - before < (8 << 20)  # 64 MiB asked, not made resident
    assert big.ctypes.data % page == 0 and big.flags.c_contiguous and big.shape == ((64 << 20) // 4,)
    for shape, dtype in (((3, 5), np.float64), (7, np.int64), ((0, 4), np.float32)):
        small = backend.zeros(shape, dtype)
        assert small.shape == (shape if isinstance(shape, tuple) else (shape,)) and small.dtype == dtype
        assert (small.size == 0 or small.ctypes.data % page == 0) and not small.any()
    assert not big[:: page // 4].any() and not big[-1]
