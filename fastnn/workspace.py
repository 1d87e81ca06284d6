"""Reusable buffers, so a training step allocates nothing in steady state."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

Slot = TypeVar("Slot")


class Workspace:
    """Buffers per batch key (e.g. a layer's leading dims), made once by ``make(key)`` and then
    handed back on every call with the same key.

    A few keys are kept (a training batch, the last partial batch, a prediction batch), least
    recently used dropped first, so calls with ever-new shapes cannot grow memory without bound."""

    def __init__(self, max_keys: int = 4) -> None:
        self.max_keys = max_keys
        self._slots: OrderedDict[Any, Any] = OrderedDict()

    def slot(self, key: Any, make: Callable[[Any], Slot]) -> Slot:
        slots = self._slots
        found = slots.get(key)
        if found is None:
            found = slots[key] = make(key)
            if len(slots) > self.max_keys:
                slots.popitem(last=False)
        elif len(slots) > 1:
            slots.move_to_end(key)
        return found
