"""A table of flows with a cap and an idle timeout, least recently used first.

Every flow holds a host socket, so both bounds matter: the cap keeps us under the fd
limit whatever the guest does (the least recently used flow makes room; the caps are
sized from the open-file limit at start), and idle expiry gives sockets back, so a
flood to many destinations holds at most the cap and is gone an idle time after it. The dict's order is the order of last use, so the next
expiry is always its first entry: O(1) for lookup, touch, expiry and deadline.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from slirpy.flows.key import FlowKey

T = TypeVar("T")


class FlowTable(Generic[T]):
    def __init__(self, limit: int, idle_s: float) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self._flows: dict[FlowKey, tuple[float, T]] = {}  # key -> (last use, state)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self._flows

    def get(self, key: FlowKey, now: float) -> T | None:
        """The flow's state, marking it used now; None if there is no such flow."""
        entry = self._flows.pop(key, None)
        if entry is None:
            return None
        self._flows[key] = (now, entry[1])
        return entry[1]

    def peek(self, key: FlowKey) -> T | None:
        entry = self._flows.get(key)
        return None if entry is None else entry[1]

    def add(self, key: FlowKey, state: T, now: float) -> list[FlowKey]:
        """Add a flow; return the keys evicted to make room for it."""
        evicted = []
        while len(self._flows) >= self.limit:
            oldest = next(iter(self._flows))
            del self._flows[oldest]
            evicted.append(oldest)
        self._flows[key] = (now, state)
        return evicted

    def remove(self, key: FlowKey) -> T | None:
        entry = self._flows.pop(key, None)
        return None if entry is None else entry[1]

    def expire(self, now: float) -> list[FlowKey]:
        expired = []
        while self._flows:
            key, (last, _) = next(iter(self._flows.items()))
            if last + self.idle_s > now:
                break
            del self._flows[key]
            expired.append(key)
        return expired

    def next_deadline(self) -> float | None:
        if not self._flows:
            return None
        last, _ = next(iter(self._flows.values()))
        return last + self.idle_s

    def keys(self) -> list[FlowKey]:
        return list(self._flows)

    def items(self) -> list[tuple[FlowKey, T]]:
        """Every flow and its state, least recently used first (marks none used)."""
        return [(key, state) for key, (_, state) in self._flows.items()]
