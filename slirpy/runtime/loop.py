"""One epoll, a table from fd to handler, and a deadline to wake up for.

The loop knows nothing of slirpy: handlers are called with the epoll event mask,
and `wait(deadline)` returns after dispatching whatever was ready by then.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Final

Handler = Callable[[int], None]
MAX_EVENTS: Final = 256


class EventLoop:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._removed: set[int] = set()

    def add(self, fd: int, handler: Handler, events: int = select.EPOLLIN) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            # Events of this poll for fd are now stale, even if a new socket gets the
            # same number before the batch is done (its own readiness comes next poll).
            self._removed.add(fd)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def wait(self, deadline: float | None) -> None:
        timeout = -1.0 if deadline is None else max(0.0, deadline - self.now())
        self._removed.clear()
        for fd, mask in self.epoll.poll(timeout, MAX_EVENTS):
            handler = self.handlers.get(fd)
            if handler is not None and fd not in self._removed:
                handler(mask)

    def close(self) -> None:
        self.epoll.close()
