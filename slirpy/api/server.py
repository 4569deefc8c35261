"""The control socket: a unix stream socket, one request per connection.

As slirp4netns: the path is unlinked first (a stale socket from an earlier run is
replaced), and each connection carries one request and one reply, after which slirpy
shuts the connection down. slirp4netns takes whatever a single read() returns; slirpy
reads until the client's EOF, until the bytes parse as one JSON value (for clients
that never shut down their side), or until MAX_REQUEST bytes ("too large message").
The socket is made with mode 0600: whoever may connect may change the forwards.
Several clients may be mid-request at once; none can stall the loop, and one that
says nothing is dropped after CLIENT_TIMEOUT_S. Past MAX_CLIENTS, or at the open-file
limit, a new client is accepted and closed at once (at the limit, on the spare fd kept
for that: a level-triggered listener must not spin), and what clients can make us log
is rate-limited (slirpy.ratelog).

A request may carry file descriptors (SCM_RIGHTS: a capture file `slirpy ctl` opened
with the user's rights, which a confined slirpy could not open itself). They go to the
handler with the request; any the handler does not take (by removing it from the list)
is closed once it returns, and those of a client dropped before its request was whole.
A handler may answer with a `Subscription` (slirpy.observe.events) rather than bytes:
the connection then leaves this server for the event hub, which streams to it.
"""

from __future__ import annotations

import array
import functools
import json
import logging
import os
import select
import socket
import stat
from collections.abc import Callable
from typing import Final

from slirpy.api.commands import MAX_REQUEST, TOO_LARGE
from slirpy.errors import SetupError
from slirpy.observe.events import Subscription
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.listener import Listener
from slirpy.runtime.loop import EventLoop

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S: Final = 10.0
MAX_CLIENTS: Final = 64
SUN_PATH_MAX: Final = 107  # sizeof(sun_path) - 1 for the NUL
MAX_FDS: Final = 4  # fds one request may carry; more are closed as they arrive
_FD_BYTES: Final = array.array("i").itemsize

Handler = Callable[[bytes, list[int]], "bytes | Subscription"]


class _Client:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: memoryview | None = None
        self.fds: list[int] = []  # passed with the request (SCM_RIGHTS), not yet handled


class ApiServer:
    def __init__(self, path: str, loop: EventLoop, handle: Handler) -> None:
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise SetupError(f"--api-socket path is too long for a unix socket "
                             f"({len(os.fsencode(path))} bytes, at most {SUN_PATH_MAX}): {path}")
        self.path = path
        self.loop = loop
        self.handle = handle
        self.clients: dict[int, _Client] = {}
        self._log = RateLimitedLog(log)
        self._too_large_log = RateLimitedLog(log, burst=1)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run (slirp4netns does too)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SetupError(f"--api-socket {path}: {exc.strerror}") from None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # created 0600, never briefly wider
        try:
            self.sock.bind(path)
            self.sock.listen(MAX_CLIENTS)
        except OSError as exc:
            self.sock.close()
            raise SetupError(f"--api-socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self.listener = Listener(self.sock, loop, self._add_client, label="api socket",
                                 client="an api socket client", log=self._log)

    def _add_client(self, sock: socket.socket) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            sock.close()
            return
        fd = sock.fileno()
        self.clients[fd] = _Client(sock, self.loop.now() + CLIENT_TIMEOUT_S)
        self.loop.add(fd, functools.partial(self._ready, fd), select.EPOLLIN | select.EPOLLRDHUP)

    def _ready(self, fd: int, mask: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        if client.reply is not None:
            self._write(fd, client)
            return
        try:
            data, ancillary, _, _ = client.sock.recvmsg(
                MAX_REQUEST - len(client.request) + 1, socket.CMSG_SPACE(MAX_FDS * _FD_BYTES),
                socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            self._drop(fd)
            return
        client.fds += _received_fds(ancillary)
        if len(client.fds) > MAX_FDS:  # a request's fds may come over several reads: bound
            _close_all(client.fds[MAX_FDS:])  # them all, or a client hoards the fd table
            del client.fds[MAX_FDS:]
        client.request += data
        if len(client.request) >= MAX_REQUEST:
            self._too_large_log.warning("too-large", self.loop.now(), "api socket: too large "
                                        "message (>= %d bytes)", MAX_REQUEST)
            self._answer(fd, client, TOO_LARGE)
        elif not data or _complete(client.request):
            request = bytes(client.request)
            log.debug("api socket: request %r", request)
            try:
                reply = self.handle(request, client.fds)
            finally:
                _close_all(client.fds)  # those the handler did not take
            if isinstance(reply, Subscription):
                self._hand_over(fd, client, reply)
            else:
                self._answer(fd, client, reply)

    def _hand_over(self, fd: int, client: _Client, subscription: Subscription) -> None:
        """The connection leaves this server: the event hub streams to it from now on."""
        del self.clients[fd]
        self.loop.remove(fd)
        subscription.attach(client.sock)

    def _answer(self, fd: int, client: _Client, reply: bytes) -> None:
        client.reply = memoryview(reply)
        self.loop.epoll.modify(fd, select.EPOLLOUT)
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        assert client.reply is not None
        try:
            sent = client.sock.send(client.reply, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError:
            self._drop(fd)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            try:
                client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._drop(fd)

    def expire(self, now: float) -> None:
        for fd, client in list(self.clients.items()):
            if client.deadline <= now:
                log.debug("api socket: client said nothing in time")
                self._drop(fd)
        self.listener.expire(now)

    def next_deadline(self) -> float | None:
        rest = self.listener.next_deadline()
        return min((*(c.deadline for c in self.clients.values()),
                    *((rest,) if rest is not None else ())), default=None)

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd)
        self.loop.remove(fd)
        _close_all(client.fds)
        client.sock.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds an SCM_RIGHTS message carried (already ours: the kernel installed them)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_BYTES
            fds += array.array("i", data[:usable])
    if len(fds) > MAX_FDS:
        _close_all(fds[MAX_FDS:])
        del fds[MAX_FDS:]
    return fds


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def _complete(request: bytearray) -> bool:
    """Whether *request* is one whole JSON value already (a client may never send EOF)."""
    try:
        json.loads(request.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True
