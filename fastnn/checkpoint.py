"""Checkpoints: one ``.npz`` with the architecture, dtypes and parameters, never pickled.

Layout (format version 1):

- ``fastnn_format``: the string ``"fastnn-checkpoint"``; ``format_version``: 1.
- ``architecture``: JSON ``[{"kind": "Linear", "config": {...}}, ...]``.
- ``params/{layer index}/{name}``: one array per parameter, in the layer's dtype;
  ``buffers/{layer index}/{name}``: state saved but not trained (BatchNorm's running statistics).
- Written by ``fit(checkpoint=...)`` only: ``training``, JSON with the epoch reached, the shuffling
  generator's state, the history so far, the optimizer's kind, hyperparameters and step count,
  and the schedule and early-stopping configuration and state; ``optimizer/{name}``: the
  optimizer's state arrays (momentum, moments); ``training/{name}``: other arrays of the run
  (early stopping's best parameters).
- ``digest``: SHA-256 over all of the above, so a file altered after it was written is refused
  instead of loaded with silently changed weights.

``save`` writes to a temporary file beside the target and renames it into place, so a crash or
an error mid-write never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np

from .layers import LAYER_KINDS, layer_from_config

FORMAT = "fastnn-checkpoint"
VERSION = 1


def _digest(texts: list[str], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def architecture_of(network: Any) -> str:
    return json.dumps([{"kind": layer.kind, "config": layer.config()} for layer in network.layers])


def save(network: Any, path: str | os.PathLike, training: dict[str, Any] | None = None,
         optimizer_buffers: dict[str, np.ndarray] | None = None,
         training_arrays: dict[str, np.ndarray] | None = None) -> None:
    path = os.fspath(path)
    architecture = architecture_of(network)
    arrays = {f"params/{i}/{name}": network.backend.to_numpy(value)
              for i, layer in enumerate(network.layers) for name, value in layer.params.items()}
    arrays.update({f"buffers/{i}/{name}": network.backend.to_numpy(value)
                   for i, layer in enumerate(network.layers) for name, value in layer.buffers.items()})
    arrays.update({f"optimizer/{name}": value for name, value in (optimizer_buffers or {}).items()})
    arrays.update({f"training/{name}": value for name, value in (training_arrays or {}).items()})
    texts = [architecture] + ([json.dumps(training)] if training is not None else [])
    header = {"fastnn_format": np.array(FORMAT), "format_version": np.array(VERSION),
              "architecture": np.array(architecture), "digest": np.array(_digest(texts, arrays))}
    if training is not None:
        header["training"] = np.array(texts[1])
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **header, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_ZIP_MAGIC = b"PK\x03\x04"


def _read(path: str, contents: bytes | None = None) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (or in ``contents``, the bytes of that file as
    another process read them). A missing or unreadable file raises its ``OSError``
    (``FileNotFoundError``, ``IsADirectoryError``, ...); anything that is not an intact ``.npz``
    raises ``ValueError``, whatever the damage (a damaged zip header can make the zip and zlib
    modules raise ``NotImplementedError``, ``RuntimeError``, ``zlib.error``, ...)."""
    if contents is None:
        with open(path, "rb") as handle:  # OSErrors of the file itself propagate as they are
            magic = handle.read(len(_ZIP_MAGIC))
    else:
        magic = contents[: len(_ZIP_MAGIC)]
    if magic != _ZIP_MAGIC:
        raise ValueError(f"{path!r} is not a fastnn checkpoint: it is not an .npz (zip) archive")
    try:
        with np.load(path if contents is None else io.BytesIO(contents), allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it is not an .npz archive")
            return {key: data[key] for key in data.files}
    except MemoryError:
        raise ValueError(f"{path!r} is not a readable fastnn checkpoint (an array header declares more "
                         "memory than the file can hold)") from None
    except Exception as exc:  # noqa: BLE001  (any damage to the archive is a ValueError here)
        raise ValueError(f"{path!r} is not a readable fastnn checkpoint ({type(exc).__name__}: {exc})") from None


def _verified(path: str, contents: bytes | None = None
              ) -> tuple[dict[str, np.ndarray], list[Any], dict[str, Any] | None]:
    """The file's arrays, its architecture and its training state, after every check."""
    data = _read(path, contents)

    def fail(why: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid fastnn checkpoint: {why}")

    if str(data.get("fastnn_format", "")) != FORMAT:
        raise fail("it has no fastnn_format marker (written by another program?)")
    version = data.get("format_version")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
        raise fail(f"format version {version} is not supported (this fastnn reads {VERSION})")
    try:
        texts = [str(data["architecture"])] + ([str(data["training"])] if "training" in data else [])
        layers_spec = json.loads(texts[0])
        training = json.loads(texts[1]) if len(texts) > 1 else None
        digest = str(data["digest"])
    except (KeyError, ValueError) as exc:
        raise fail(f"unreadable architecture or training state ({exc})") from None
    arrays = {key: value for key, value in data.items()
              if key.startswith(("params/", "buffers/", "optimizer/", "training/"))}
    if _digest(texts, arrays) != digest:
        raise fail("its contents do not match their recorded digest (the file was altered or damaged)")
    if not isinstance(layers_spec, list):
        raise fail("the architecture is not a list of layers")
    return arrays, layers_spec, training


def load(network_cls: type, path: str | os.PathLike, backend: Any = None) -> Any:
    path = os.fspath(path)
    arrays, layers_spec, _ = _verified(path)

    def fail(why: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid fastnn checkpoint: {why}")

    _check_declared_shapes(layers_spec, arrays, fail)
    network = network_cls()
    for index, spec in enumerate(layers_spec):
        try:
            layer = layer_from_config(spec["kind"], spec["config"], backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"layer {index} cannot be rebuilt ({exc})") from None
        try:
            network.add(layer)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc)) from None
    _load_parameters(network, arrays, fail)
    return network


def _check_declared_shapes(layers_spec: list[Any], arrays: dict[str, np.ndarray], fail) -> None:
    """Every parameter the architecture declares is stored with that shape, before any layer is
    built: a small file cannot make ``load`` allocate what its arrays do not hold."""
    for index, spec in enumerate(layers_spec):
        try:
            cls = LAYER_KINDS[spec["kind"]]
            shapes = {f"params/{index}/{name}": shape for name, shape in cls.parameter_shapes(spec["config"]).items()}
            buffers = cls.buffer_shapes(spec["config"])
            shapes.update({f"buffers/{index}/{name}": shape for name, shape in buffers.items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise fail(f"layer {index} cannot be rebuilt ({type(exc).__name__}: {exc})") from None
        for key, shape in shapes.items():
            name = key.rsplit("/", 1)[1]
            stored = arrays.get(key)
            if stored is None or stored.shape != shape:
                raise fail(f"layer {index} ({spec['kind']}) declares parameter {name!r} of shape {shape}, but "
                           f"the file holds {'none' if stored is None else stored.shape}")


def _load_parameters(network: Any, arrays: dict[str, np.ndarray], fail) -> None:
    expected = set()
    for index, layer in enumerate(network.layers):
        for name, current in layer.params.items():
            key = f"params/{index}/{name}"
            expected.add(key)
            stored = arrays.get(key)
            if stored is None:
                raise fail(f"parameter {key} is missing")
            if stored.shape != current.shape or stored.dtype != current.dtype:
                raise fail(f"parameter {key} has shape {stored.shape} and dtype {stored.dtype}, "
                           f"expected {current.shape} and {current.dtype}")
            current[...] = layer.backend.asarray(stored)
    for index, layer in enumerate(network.layers):
        for name, current in layer.buffers.items():
            key = f"buffers/{index}/{name}"
            expected.add(key)
            stored = arrays.get(key)
            if stored is None or stored.shape != current.shape or stored.dtype != current.dtype:
                raise fail(f"buffer {key} is missing or has the wrong shape or dtype")
            current[...] = layer.backend.asarray(stored)
    unexpected = {key for key in arrays if key.startswith(("params/", "buffers/"))} - expected
    if unexpected:
        raise fail(f"unexpected arrays {sorted(unexpected)}")


def _architecture_only(layers_spec: list[Any]) -> list[Any]:
    """The layer specs without the config keys that are run state (``Layer.state_keys``)."""
    result = []
    for spec in layers_spec:
        cls = LAYER_KINDS.get(spec.get("kind")) if isinstance(spec, dict) else None
        keys = cls.state_keys if cls is not None else ()
        config = spec.get("config", {}) if isinstance(spec, dict) else {}
        result.append({**spec, "config": {k: v for k, v in config.items() if k not in keys}}
                      if isinstance(spec, dict) and isinstance(config, dict) else spec)
    return result


def load_training(path: str | os.PathLike, network: Any, optimizer: Any,
                  contents: bytes | None = None) -> dict[str, Any]:
    """Restore ``network``'s parameters and ``optimizer``'s state from a checkpoint written by
    ``fit(checkpoint=...)``; return its training state (epoch, generator state, history).
    ``contents``: the file's bytes, already read (by rank 0 of a data-parallel run)."""
    path = os.fspath(path)
    arrays, layers_spec, training = _verified(path, contents)

    def fail(why: str) -> ValueError:
        return ValueError(f"cannot resume from {path!r}: {why}")

    if training is None:
        raise fail("it holds a network but no training state (it was written by Network.save, "
                   "not by fit(checkpoint=...))")
    expected = {"epoch": int, "rng": dict, "history": list, "optimizer": dict}
    wrong = [key for key, kind in expected.items() if not isinstance(training.get(key), kind)] \
        if isinstance(training, dict) else list(expected)
    if wrong or isinstance(training["epoch"], bool) or training["epoch"] < 0:
        raise fail(f"its training state lacks or garbles {', '.join(wrong) or 'epoch'}")
    if _architecture_only(json.loads(architecture_of(network))) != _architecture_only(layers_spec):
        raise fail("it was written for a different network architecture")
    for layer, spec in zip(network.layers, layers_spec):  # run state in the config (a Dropout's seed)
        for key in layer.state_keys:
            setattr(layer, key, spec["config"][key])
    network.flat_parameters()
    _load_parameters(network, arrays, fail)
    buffers = {key.split("/", 1)[1]: value for key, value in arrays.items() if key.startswith("optimizer/")}
    optimizer.load_state_dict(training["optimizer"], buffers, network)
    training["arrays"] = {key.split("/", 1)[1]: value for key, value in arrays.items() if key.startswith("training/")}
    return training
