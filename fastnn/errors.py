"""fastnn's exception types."""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A known backend cannot be used on this machine; the message says why and how to fix it."""
