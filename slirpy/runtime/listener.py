"""A listening stream socket served from the loop: the accept path the control socket and
the metrics endpoint share.

A local client must never make the loop spin or stop: a client gone before accept() is
skipped; at the open-file limit the spare fd (slirpy.runtime.sockets.SPARE_FD) takes one
waiting client and closes it, since a level-triggered listener with a client waiting
would be ready again at once; any other failure rests the listener for ACCEPT_REST_S. What
a client can make us log is rate-limited.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Final

from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.sockets import CLIENT_GONE, FD_EXHAUSTED, SPARE_FD, Drop, out_of_fds

ACCEPT_REST_S: Final = 0.5  # the listener is not polled for this long if accept() fails


class Listener:
    """Accepts on *sock* until none waits, and hands each client, non-blocking, to
    *on_client*. *label* names the listener in the log ("api socket"), *client* one of
    its clients ("an api socket client"). Its owner is a runtime-timed part and passes
    `next_deadline` and `expire` on (the end of a rest)."""

    def __init__(self, sock: socket.socket, loop: EventLoop, on_client: Callable[[socket.socket],
                 None], *, label: str, client: str, log: RateLimitedLog) -> None:
        SPARE_FD.hold()
        self.sock = sock
        self.loop = loop
        self.on_client = on_client
        self.label = label
        self.client = client
        self.log = log
        self.resting_until: float | None = None
        loop.add(sock.fileno(), self._accept)

    def _accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GONE:
                    continue
                if exc.errno in FD_EXHAUSTED:
                    dropped = SPARE_FD.drop_client(self.sock)
                    if dropped is Drop.NONE_WAITING:
                        return
                    out_of_fds(self.client, exc, self.loop.now())
                    if dropped is Drop.DROPPED:
                        continue
                else:
                    self.log.warning("accept", self.loop.now(), "%s: accept failed: %s",
                                     self.label, exc)
                self.loop.epoll.modify(self.sock.fileno(), 0)  # rest, rather than spin
                self.resting_until = self.loop.now() + ACCEPT_REST_S
                return
            sock.setblocking(False)
            self.on_client(sock)

    def next_deadline(self) -> float | None:
        return self.resting_until

    def expire(self, now: float) -> None:
        if self.resting_until is not None and self.resting_until <= now:
            self.resting_until = None
            self.loop.epoll.modify(self.sock.fileno(), select.EPOLLIN)

    def close(self) -> None:
        self.loop.remove(self.sock.fileno())
        self.sock.close()
