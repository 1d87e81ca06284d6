"""Checkpoints: exact round trips, and clear errors for anything that is not a good checkpoint."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import fastnn
from reference import host


def _net(dtype=np.float32):
    return fastnn.Network([fastnn.Linear(4, 6, "leaky_relu", alpha=0.2, dtype=dtype, seed=0),
                           fastnn.Tanh(dtype=dtype), fastnn.Linear(6, 3, bias=False, dtype=dtype, seed=1),
                           fastnn.Softmax(dtype=dtype)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, backend, dtype):
    net = _net(dtype)
    X = np.random.default_rng(0).standard_normal((5, 4))
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = fastnn.Network.load(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in net.layers]
    assert repr(loaded) == repr(net)
    assert loaded.layers[0].alpha == 0.2 and loaded.layers[2].bias is None and loaded.dtype == dtype
    np.testing.assert_array_equal(backend.to_numpy(loaded.forward(X)), backend.to_numpy(net.forward(X)))
    assert not list(tmp_path.glob("*.tmp"))


def test_loaded_network_trains(tmp_path):
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 8, "tanh", seed=0), fastnn.Linear(8, 1, seed=1)])
    net.save(tmp_path / "m.npz")
    loaded = fastnn.Network.load(tmp_path / "m.npz")
    loaded.fit(X, y, "bce_with_logits", fastnn.Adam(0.05), epochs=200, batch_size=4, progress=False)
    np.testing.assert_array_equal((host(loaded.predict(X)) > 0).astype(np.float32), y)


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    _net().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastnn checkpoint"):
        fastnn.Network.load(path)


@pytest.mark.parametrize("kind", ["text", "npy", "foreign-npz", "pickle"])
def test_foreign_files(tmp_path, kind):
    path = tmp_path / f"x.{kind}"
    if kind == "text":
        path.write_text("hello, not a model\n")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    elif kind == "foreign-npz":
        with open(path, "wb") as handle:
            np.savez(handle, weights=np.zeros(3))
    else:
        with open(path, "wb") as handle:
            np.save(handle, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="fastnn checkpoint"):
        fastnn.Network.load(path)


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_tampered_parameters_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    _net().save(path)
    with np.load(path) as data:
        weight = data["params/0/weight"].copy()
    weight[0, 0] += 1
    _rewrite(path, **{"params/0/weight": weight})
    with pytest.raises(ValueError, match="do not match their recorded digest"):
        fastnn.Network.load(path)


def test_tampered_architecture_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    _net().save(path)
    _rewrite(path, architecture=np.array('[{"kind": "Linear", "config": {"in_features": 4}}]'))
    with pytest.raises(ValueError, match="digest"):
        fastnn.Network.load(path)


def test_corrupted_member_crc(tmp_path):
    path = tmp_path / "m.npz"
    _net().save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("params/0/weight.npy")
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # flip a byte inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fastnn checkpoint"):
        fastnn.Network.load(path)


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    _net().save(path)
    _rewrite(path, format_version=np.array(99))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        fastnn.Network.load(path)


def test_failed_save_leaves_the_earlier_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    net = _net()
    net.save(path)
    before = path.read_bytes()

    def failing_savez(handle, **arrays):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    net.layers[0].weight = np.ones((6, 4))
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary file left


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastnn.Network.load(tmp_path / "absent.npz")
