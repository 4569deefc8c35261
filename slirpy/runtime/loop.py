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
        self.polls = 0  # epoll_wait calls so far: a part can tell consecutive wake-ups

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
        self.polls += 1
        for fd, mask in self.epoll.poll(timeout, MAX_EVENTS):
            handler = self.handlers.get(fd)
            if handler is not None and fd not in self._removed:
                handler(mask)

    def close(self) -> None:
        self.epoll.close()


class ReadBudget:
    """How many reads a level-triggered fd gets in one wake-up.

    Reading until EAGAIN costs a system call that finds nothing, once per wake-up: in a
    request/response exchange, one of the six or so calls it takes. So a wake-up reads
    one item while the fd delivers one at a time; while the fd is ready in consecutive
    polls after a full batch (a burst), the batch doubles, up to *most*. Stopping short
    loses nothing: a level-triggered fd with more to read is ready again next poll.
    """

    __slots__ = ("loop", "most", "size", "filled", "last_poll")

    def __init__(self, loop: EventLoop, most: int) -> None:
        self.loop = loop
        self.most = most
        self.size = 1
        self.filled = False
        self.last_poll = -1

    def take(self) -> int:
        """The number of reads for this wake-up."""
        poll = self.loop.polls
        if poll == self.last_poll + 1 and self.filled:
            self.size = min(self.size * 2, self.most)
        else:
            self.size = 1
        self.last_poll = poll
        return self.size

    def used(self, count: int) -> None:
        """*count* reads found something (fewer than taken: the fd ran dry)."""
        self.filled = count == self.size
