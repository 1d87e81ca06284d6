"""Progress bars: tqdm on a terminal (when installed), nothing in logs, CI or pipes."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from typing import Any


def bar_factory(enabled: bool = True) -> Callable[..., Any] | None:
    """``tqdm`` with this terminal's size, or None when disabled, not on a terminal, or tqdm is
    not installed (``pip install 'fastnn[progress]'``).

    The size is passed explicitly: a pseudo-terminal that reports 0 x 0 (``script``, some CI
    runners and IDE consoles do) made tqdm hide every bar, as if it were below the screen."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    size = shutil.get_terminal_size()  # falls back to $COLUMNS/$LINES, then 80 x 24, for 0 x 0
    return functools.partial(tqdm, ncols=min(size.columns, 120), nrows=max(size.lines, 2), file=sys.stderr)
