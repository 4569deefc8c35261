"""One timer contract for the whole core, and the list that holds every timed part.

A timed component says when it next needs the clock (`next_deadline`) and does what is
due when asked (`expire`), returning effects like any event. The core holds them all in
one `Timers` list, so adding a timed component is one line where the core is built, and
the runtime sees one deadline. The earliest deadline is recomputed only after something
happened (an event was fed or timers expired), not on every turn of the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from slirpy.effects import Effect


class Timed(Protocol):
    def next_deadline(self) -> float | None:
        """When `expire` next has work to do; None: nothing is pending."""
        ...

    def expire(self, now: float) -> list[Effect]:
        """Do what is due at *now*."""
        ...


class Timers:
    def __init__(self, parts: Iterable[Timed]) -> None:
        self.parts = tuple(parts)
        self._deadline: float | None = None
        self._stale = True

    def touch(self) -> None:
        """Something happened that may have moved a deadline."""
        self._stale = True

    def next_deadline(self) -> float | None:
        if self._stale:
            deadlines = [d for d in (part.next_deadline() for part in self.parts)
                         if d is not None]
            self._deadline = min(deadlines, default=None)
            self._stale = False
        return self._deadline

    def expire(self, now: float) -> list[Effect]:
        self._stale = True
        effects: list[Effect] = []
        for part in self.parts:
            deadline = part.next_deadline()
            if deadline is not None and deadline <= now:
                effects += part.expire(now)
        return effects
