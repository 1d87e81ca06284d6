"""Dropout: one Philox4x32-10 mask for every backend, PyTorch's inverted-dropout semantics,
train/eval modes, and training runs that are bit-comparable across backends and resumable."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.kernels.numpy import dropout as reference


def test_philox_matches_the_published_known_answers():
    """Random123's known-answer vectors for philox4x32-10 (counter, key -> output)."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        words = reference.philox4x32_10(*(np.array([c], np.uint64) for c in counter), *key)
        assert tuple(int(w[0]) for w in words) == expected
    if fastnn.available_backends()["numba"] is None:
        from fastnn.kernels.numba.dropout import philox4

        counter, key, expected = cases[2]
        group = np.uint64(counter[0] | counter[1] << 32)
        step = np.uint64(counter[2] | counter[3] << 32)
        seed = np.uint64(key[0] | key[1] << 32)
        assert tuple(int(word) for word in philox4(group, step, seed)) == expected


@pytest.mark.parametrize("shape", [(37, 11), (4,), (5,), (0, 3), (2, 3, 7), (1 << 17,)],
                         ids=["2d", "one-group", "ragged-group", "empty", "3d", "parallel-size"])
def test_every_backend_draws_the_same_mask(backend, dtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    for seed, step, p in ((0, 0, 0.5), (2**64 - 1, 2**40 + 3, 0.1), (12345, 7, 0.9)):
        expected = reference.dropout(x, np.empty_like(x), seed, step, p)
        got = backend.to_numpy(backend.dropout(backend.asarray(x), p, seed, step))
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(got, expected)


def test_non_contiguous_input_and_python_lists(backend):
    x = np.arange(1.0, 41.0).reshape(5, 8)[:, ::2]
    expected = reference.dropout(np.ascontiguousarray(x), np.empty(x.shape), 3, 4, 0.5)
    np.testing.assert_array_equal(backend.to_numpy(backend.dropout(backend.asarray(x), 0.5, 3, 4)), expected)
    np.testing.assert_array_equal(backend.to_numpy(backend.dropout(x.tolist(), 0.5, 3, 4)), expected)


def test_inverted_dropout_semantics(backend):
    """Kept with probability 1 - p and scaled by 1 / (1 - p) (so the mean is kept); p=0 is the
    identity, p=1 zeroes everything; NaN stays NaN (PyTorch's x * mask * scale); masks change with
    the step and the seed and repeat for the same ones."""
    x = np.ones(1 << 16)
    for p in (0.1, 0.5, 0.8):
        y = backend.to_numpy(backend.dropout(backend.asarray(x), p, seed=9, step=1))
        kept = y != 0
        assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / x.size)
        np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    assert np.array_equal(backend.to_numpy(backend.dropout(backend.asarray(x), 0.0, 1, 1)), x)
    assert not backend.to_numpy(backend.dropout(backend.asarray(x), 1.0, 1, 1)).any()
    nan = backend.to_numpy(backend.dropout(backend.asarray(np.full(64, np.nan)), 0.5, 1, 1))
    assert np.isnan(nan).all()
    masks = {(seed, step): tuple(backend.to_numpy(backend.dropout(backend.asarray(x[:256]), 0.5, seed, step)) != 0)
             for seed in (1, 2) for step in (0, 1)}
    assert len(set(masks.values())) == 4
    assert tuple(backend.to_numpy(backend.dropout(backend.asarray(x[:256]), 0.5, 2, 1)) != 0) == masks[2, 1]


@pytest.mark.parametrize("p,seed,step,error", [(1.5, 0, 0, "p must be a probability"), (0.5, -1, 0, "seed must be"),
                                               (0.5, 0, 2**64, "step must be"), (0.5, 1.5, 0, "seed must be")])
def test_bad_dropout_arguments(backend, p, seed, step, error):
    with pytest.raises(ValueError, match=error):
        backend.dropout(backend.asarray(np.ones(4)), p, seed, step)


def test_the_layer_forward_backward_and_modes(backend):
    layer = fastnn.Dropout(0.4, seed=5, dtype=np.float64, backend=backend)
    x = np.random.default_rng(1).standard_normal((6, 10)) + 3  # no zeros
    y = backend.to_numpy(layer.forward(x)).copy()
    np.testing.assert_array_equal(y, reference.dropout(x, np.empty_like(x), 5, 0, 0.4))
    dy = np.random.default_rng(2).standard_normal(x.shape)
    dx = backend.to_numpy(layer.backward(dy))
    np.testing.assert_allclose(dx, dy * (y / x), rtol=1e-14)  # the forward's mask, regenerated
    y2 = backend.to_numpy(layer.forward(x))
    assert not np.array_equal(y2, y)  # the next step draws a new mask
    layer.training = False
    np.testing.assert_array_equal(backend.to_numpy(layer.forward(x)), x)
    np.testing.assert_array_equal(backend.to_numpy(layer.backward(dy)), dy)
    np.testing.assert_array_equal(backend.to_numpy(layer.infer(x)), x)
    with pytest.raises(ValueError, match="p must be a probability"):
        fastnn.Dropout(1.2)


def _net(backend, seed=0):
    return fastnn.Network([fastnn.Linear(8, 32, "relu", dtype=np.float64, seed=seed, backend=backend),
                           fastnn.Dropout(0.3, seed=11, dtype=np.float64, backend=backend),
                           fastnn.Linear(32, 4, dtype=np.float64, seed=seed + 1, backend=backend)])


def _data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 8))
    return X, (X[:, :4].argmax(axis=1))


def test_a_training_run_is_the_same_on_every_backend(backend):
    """Same seed, same masks: fit with dropout gives the numpy backend's parameters on every
    backend (float64, to rounding), which neither PyTorch nor JAX offers across devices."""
    X, y = _data()
    net = _net(backend)
    assert net.training
    net.eval()
    assert "mode: eval" in net.summary()
    net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=3, batch_size=32, seed=0, progress=False)
    assert not net.training  # fit trains in training mode and gives back the mode it found
    with fastnn.use_backend("numpy"):
        reference_net = _net("numpy")
        reference_net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=3, batch_size=32, seed=0,
                          progress=False)
    np.testing.assert_allclose(backend.to_numpy(net.flat_parameters()[0]), reference_net.flat_parameters()[0],
                               rtol=1e-10, atol=1e-12)
    # predict and evaluate compute without dropout: equal to the network with the layer removed
    plain = fastnn.Network([net.layers[0], net.layers[2]])
    np.testing.assert_array_equal(backend.to_numpy(net.predict(X)), backend.to_numpy(plain.predict(X)))


def test_dropout_runs_resume_bit_for_bit_and_keep_their_seed(tmp_path):
    """The masks are keyed on the global step, and a random seed is restored from the
    checkpoint: a network rebuilt with a fresh random seed resumes the original's run."""
    X, y = _data()

    def net(seed=None):
        return fastnn.Network([fastnn.Linear(8, 16, "relu", dtype=np.float64, seed=0, backend="numpy"),
                               fastnn.Dropout(0.5, seed=seed, dtype=np.float64, backend="numpy"),
                               fastnn.Linear(16, 4, dtype=np.float64, seed=1, backend="numpy")])

    whole = net()
    seed = whole.layers[1].seed
    whole.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=4, batch_size=32, seed=5, progress=False)
    path = str(tmp_path / "run.npz")
    net(seed).fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=2, batch_size=32, seed=5, progress=False,
                  checkpoint=path)
    resumed = net()  # another random seed: the checkpoint's wins
    assert resumed.layers[1].seed != seed
    resumed.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=4, batch_size=32, seed=5, progress=False,
                resume=path)
    assert resumed.layers[1].seed == seed
    np.testing.assert_array_equal(resumed.flat_parameters()[0], whole.flat_parameters()[0])
    saved = tmp_path / "net.npz"
    whole.save(saved)
    loaded = fastnn.Network.load(saved)
    assert (loaded.layers[1].p, loaded.layers[1].seed) == (0.5, seed) and repr(loaded.layers[1]) == "Dropout(p=0.5)"
