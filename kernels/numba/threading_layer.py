"""Which TBB Numba's threading layer runs on: the one this environment declared, never the system's.

Numba's TBB threading layer (``numba/np/ufunc/tbbpool``) links ``libtbb.so.12`` by name and has
no RPATH, so the dynamic loader takes the first ``libtbb.so.12`` on its search path. On a system
with Debian's own ``libtbb12`` (2021.8, pulled in by many common packages) that is the system's
copy, not the ``tbb`` wheel that ``pip install 'fastnn[jit]'`` put in the environment's ``lib/``.
With the system's copy a 400-epoch digits fit fell from ~430,000 to ~13,000-43,000 samples/s,
memory grew ~15 KB a step and the process hung at exit inside TBB's ``finalize``.

``prepare()`` runs before the first Numba kernel (``kernels/numba/__init__.py`` calls it): it loads
the environment's ``libtbb`` by its full path, with ``RTLD_GLOBAL``, so that when Numba later asks
for ``libtbb.so.12`` the loader hands back the copy already in the process (it matches on the
soname before it searches). Where the environment has no TBB of its own, Numba is told to prefer
its OpenMP and workqueue layers over whatever TBB the system has, unless the user chose a layer
(``NUMBA_THREADING_LAYER``). ``status()`` says what happened, for ``fastnn info``.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_SONAME = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}.get(sys.platform,
                                                                                           "libtbb.so.12")
# Numba's own floor (numba/np/ufunc/parallel.py): TBB 2021 update 6.
MIN_INTERFACE_VERSION = 12060


@dataclass(frozen=True)
class TbbStatus:
    """``declared``: the environment's libtbb (None if it has none); ``loaded``: the libtbb files
    mapped into this process; ``interface_version`` of the declared one; ``note``: what
    ``prepare`` did, in words."""

    declared: str | None
    loaded: tuple[str, ...]
    interface_version: int | None
    note: str

    @property
    def foreign(self) -> tuple[str, ...]:
        """Loaded libtbb files that are not the declared one (a foreign TBB in use)."""
        declared = os.path.realpath(self.declared) if self.declared else None
        return tuple(path for path in self.loaded if os.path.realpath(path) != declared)


def declared_tbb() -> str | None:
    """The ``libtbb`` of the environment's ``tbb`` distribution (the ``jit`` extra), or the one in
    ``sys.prefix/lib`` (a venv's or conda's own), or None."""
    candidates = []
    try:
        dist = importlib.metadata.distribution("tbb")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or [] if Path(str(f)).name == _SONAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.prefix) / "lib" / _SONAME)
    for path in candidates:
        if path.is_file():
            return str(path.resolve())
    return None


def loaded_tbb() -> tuple[str, ...]:
    """Every libtbb (not tbbmalloc or tbbbind) mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "libtbb.so" in line}
    except OSError:
        return ()
    return tuple(sorted(path for path in paths if Path(path).name.startswith("libtbb.so")))


def _interface_version(library: ctypes.CDLL) -> int | None:
    try:
        version = library.TBB_runtime_interface_version
    except AttributeError:
        return None
    version.restype = ctypes.c_int
    version.argtypes = []
    return int(version())


_status: TbbStatus | None = None


def prepare() -> TbbStatus:
    """Make Numba's threading layer use the environment's TBB (idempotent; see the module doc)."""
    global _status
    if _status is not None:
        return _status
    declared, version = declared_tbb(), None
    already = loaded_tbb()
    if declared is None:
        note = "this environment has no TBB of its own (pip install 'fastnn[jit]' brings one)"
        if "NUMBA_THREADING_LAYER" not in os.environ:
            from numba.core import config

            # a system TBB (e.g. Debian's libtbb12) is never picked up by accident
            config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
            note += "; Numba prefers its OpenMP and workqueue threading layers to a system TBB"
    elif already and any(os.path.realpath(p) != declared for p in already):
        note = (f"another libtbb ({', '.join(already)}) was loaded before fastnn could load {declared}: "
                "import fastnn before anything that starts TBB, or set LD_LIBRARY_PATH to "
                f"{os.path.dirname(declared)}")
    else:
        library = ctypes.CDLL(declared, mode=ctypes.RTLD_GLOBAL)
        version = _interface_version(library)
        note = f"the environment's TBB, loaded by path ({declared})"
        if version is not None and version < MIN_INTERFACE_VERSION:
            note += f"; its interface version {version} is below Numba's minimum {MIN_INTERFACE_VERSION}"
    _status = TbbStatus(declared, loaded_tbb(), version, note)
    return _status


def status() -> TbbStatus:
    """What ``prepare`` found and did, with the libtbb files mapped now."""
    done = prepare()
    return TbbStatus(done.declared, loaded_tbb(), done.interface_version, done.note)
