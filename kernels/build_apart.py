"""Compiling one build in a second process while this one compiles the others (cold cache only).

Numba compiles on one thread and holds a lock while it does, so on a 2-core machine a cold
start leaves a core idle. A helper process started with ``start`` compiles one build into the
on-disk cache (Numba writes its cache files under temporary names and renames them, so two
processes can write one cache), and the caller, once it has compiled the rest, waits for it
(``join``) and loads that build from the cache. Where the helper fails, the caller's own
compile finds no entry and compiles it itself, as it would have without one.
"""

from __future__ import annotations

import subprocess
import sys

# The longest a caller waits for a helper before it stops it and compiles the build itself.
WAIT_SECONDS = 600.0


def start(module: str, function: str, *args: object) -> subprocess.Popen | None:
    """Run ``module.function(*args)`` in a new Python process (``args``: literals that ``repr``
    writes back), with this process's environment (so its Numba cache) and import path; None
    where no process could be started. The path is set once the new interpreter is up, not
    through PYTHONPATH, which would put a script's folder before the standard library while the
    interpreter starts (a ``nt.py`` there broke ``pathlib``)."""
    code = f"import sys; sys.path[:] = {sys.path!r}; import {module} as built; built.{function}(*{args!r})"
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def join(helper: subprocess.Popen | None) -> None:
    """Wait for ``helper`` (if any) to finish; stop it after ``WAIT_SECONDS``."""
    if helper is None:
        return
    try:
        helper.wait(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
