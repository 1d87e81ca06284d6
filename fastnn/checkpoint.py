"""Checkpoints: one ``.npz`` with the architecture, dtypes and parameters, never pickled.

Layout (format version 1):

- ``fastnn_format``: the string ``"fastnn-checkpoint"``; ``format_version``: 1.
- ``architecture``: JSON ``[{"kind": "Linear", "config": {...}}, ...]``.
- ``params/{layer index}/{name}``: one array per parameter, in the layer's dtype.
- ``digest``: SHA-256 over the architecture and every parameter's name, dtype, shape and bytes, so
  a file altered after it was written is refused instead of loaded with silently changed weights.

``save`` writes to a temporary file beside the target and renames it into place, so a crash or
an error mid-write never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .layers import layer_from_config

FORMAT = "fastnn-checkpoint"
VERSION = 1


def _digest(architecture: str, params: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(architecture.encode())
    for key in sorted(params):
        value = np.ascontiguousarray(params[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def save(network: Any, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    architecture = json.dumps([{"kind": layer.kind, "config": layer.config()} for layer in network.layers])
    params = {f"params/{i}/{name}": network.backend.to_numpy(value)
              for i, layer in enumerate(network.layers) for name, value in layer.params.items()}
    arrays = {"fastnn_format": np.array(FORMAT), "format_version": np.array(VERSION),
              "architecture": np.array(architecture), "digest": np.array(_digest(architecture, params)),
              **params}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it is a single .npy array, not an .npz archive")
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, AttributeError) as exc:
        raise ValueError(f"{path!r} is not a readable fastnn checkpoint ({exc})") from None
    except TypeError as exc:  # np.load hands back an ndarray for .npy input
        raise ValueError(f"{path!r} is not a readable fastnn checkpoint ({exc})") from None


def load(network_cls: type, path: str | os.PathLike, backend: Any = None) -> Any:
    path = os.fspath(path)
    data = _read(path)

    def fail(why: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid fastnn checkpoint: {why}")

    if str(data.get("fastnn_format", "")) != FORMAT:
        raise fail("it has no fastnn_format marker (written by another program?)")
    version = data.get("format_version")
    if version is None or version.shape != () or int(version) != VERSION:
        raise fail(f"format version {version} is not supported (this fastnn reads {VERSION})")
    try:
        architecture = str(data["architecture"])
        layers_spec = json.loads(architecture)
        digest = str(data["digest"])
    except (KeyError, ValueError) as exc:
        raise fail(f"unreadable architecture ({exc})") from None
    params = {key: value for key, value in data.items() if key.startswith("params/")}
    if _digest(architecture, params) != digest:
        raise fail("its contents do not match their recorded digest (the file was altered or damaged)")
    if not isinstance(layers_spec, list):
        raise fail("the architecture is not a list of layers")
    network = network_cls()
    expected_keys = set()
    for index, spec in enumerate(layers_spec):
        try:
            layer = layer_from_config(spec["kind"], spec["config"], backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"layer {index} cannot be rebuilt ({exc})") from None
        for name, current in layer.params.items():
            key = f"params/{index}/{name}"
            expected_keys.add(key)
            stored = params.get(key)
            if stored is None:
                raise fail(f"parameter {key} is missing")
            if stored.shape != current.shape or stored.dtype != current.dtype:
                raise fail(f"parameter {key} has shape {stored.shape} and dtype {stored.dtype}, "
                           f"expected {current.shape} and {current.dtype}")
            current[...] = layer.backend.asarray(stored)
        try:
            network.add(layer)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc)) from None
    if set(params) != expected_keys:
        raise fail(f"unexpected arrays {sorted(set(params) - expected_keys)}")
    return network
