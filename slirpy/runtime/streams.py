"""Host TCP sockets for the guest's connections: connect, send, peek, consume.

The stack keeps no copy of the bytes it carries; this module is where they live:
- host -> guest: bytes are read with MSG_PEEK at SO_PEEK_OFF, which the kernel keeps
  at "bytes peeked but not consumed", i.e. snd_nxt - snd_una. A Consume (the guest's
  ACK) drops bytes with MSG_TRUNC, which also moves the peek offset back; a Rewind
  sets it to 0 to send again from snd_una. Sockets are edge-triggered: an edge says
  Readable, and the core asks for a read (Peek) as far as the guest's window allows,
  again when the window opens, so a socket whose data is all in flight never spins
  the loop.
- guest -> host: send(MSG_DONTWAIT) takes what the kernel accepts, and the core
  hears how much (Sent), with the free space of the send buffer (our window).
Every result is posted as an event; nothing here calls the core.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import select
import socket
import struct
from collections.abc import Callable
from typing import Final

from slirpy.addresses import address_text, is_ipv6
from slirpy.config import Config
from slirpy.events import (ConnectFailed, Connected, Event, HostData, HostEof, HostReset,
                           Readable, Sent, Writable)
from slirpy.flows.key import FlowKey
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.sockets import FD_EXHAUSTED, out_of_fds

log = logging.getLogger(__name__)

# <asm-generic/socket.h>, <asm-generic/ioctls.h>: Python's socket module lacks them.
SO_PEEK_OFF: Final = 42
SIOCOUTQ: Final = 0x5411  # TIOCOUTQ: bytes in the send queue, not yet acknowledged
PEEK_BUFFER_BYTES: Final = 1 << 20
_EDGE: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_INT: Final = struct.Struct("i")
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
# SO_ERROR after a completed handshake: a refusal would read ECONNREFUSED instead.
_RESET_AFTER_CONNECT: Final = frozenset({errno.ECONNRESET, errno.EPIPE})

Post = Callable[[Event], None]


def reset_close(sock: socket.socket) -> None:
    """Close with an RST, not a FIN (SO_LINGER of zero)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class HostStreams:
    def __init__(self, config: Config, loop: EventLoop, post: Post) -> None:
        self.loop = loop
        self.post = post
        self.bind4 = str(config.outbound_addr) if config.outbound_addr else None
        self.bind6 = str(config.outbound_addr6) if config.outbound_addr6 else None
        self.by_key: dict[FlowKey, socket.socket] = {}
        self.connecting: set[FlowKey] = set()
        self.watching_out: set[FlowKey] = set()
        # Free space in the send buffer: our running estimate, and the kernel's last answer.
        self.space_estimate: dict[FlowKey, tuple[int, int]] = {}
        # Sockets whose peer closed or reset: their one edge may come while data is
        # still queued, so once drained they are peeked once more for the EOF or error.
        self.hung_up: set[FlowKey] = set()
        self.peek_buffer = bytearray(PEEK_BUFFER_BYTES)
        self.peek_view = memoryview(self.peek_buffer)

    def __len__(self) -> int:
        return len(self.by_key)

    @staticmethod
    def prepare(sock: socket.socket) -> None:
        """Options every stream socket gets."""
        # The guest's stack already chose its segment sizes: add no delay of our own.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)

    def adopt(self, key: FlowKey, sock: socket.socket) -> None:
        """Carry *key* on *sock*, connected already (a local forward accepted it)."""
        self.by_key[key] = sock
        self.loop.add(sock.fileno(), lambda mask: self._ready(key, sock, mask), _EDGE)

    def connect(self, key: FlowKey, host_addr: bytes, host_port: int) -> None:
        family = socket.AF_INET6 if is_ipv6(host_addr) else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
        except OSError as exc:
            # At the open-file limit (or out of memory): the guest's connect() is refused
            # (an RST) and the next one tries again.
            if exc.errno in FD_EXHAUSTED:
                out_of_fds(f"a connection to {address_text(host_addr)}", exc, self.loop.now())
            else:
                log.debug("%s: no socket: %s", key, exc)
            self.post(ConnectFailed(key, exc.errno or errno.EIO))
            return
        try:
            self.prepare(sock)
            bind = self.bind4 if family == socket.AF_INET else self.bind6
            if bind is not None:
                sock.bind((bind, 0))
            error = sock.connect_ex((address_text(host_addr), host_port))
        except OSError as exc:
            error = exc.errno or errno.EIO
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self.post(ConnectFailed(key, error))
            return
        self.by_key[key] = sock
        self.connecting.add(key)
        self.loop.add(sock.fileno(), lambda mask: self._ready(key, sock, mask),
                      select.EPOLLOUT | _EDGE)

    def _ready(self, key: FlowKey, sock: socket.socket, mask: int) -> None:
        if key in self.connecting:
            self._connected(key, sock)
            return
        if mask & select.EPOLLOUT and key in self.watching_out:
            self.watching_out.discard(key)
            self.loop.epoll.modify(sock.fileno(), _EDGE)
            space = self.space(sock)
            self.space_estimate[key] = (space, space)
            self.post(Writable(key, space))
        if mask & (select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP):
            self.hung_up.add(key)
        if mask & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP):
            self.post(Readable(key))

    def _connected(self, key: FlowKey, sock: socket.socket) -> None:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == errno.EINPROGRESS:
            return
        self.connecting.discard(key)
        if error in _RESET_AFTER_CONNECT:
            # The handshake completed and the peer reset before we looked (a busy loop, a
            # server that closes at once): the guest sees it as it happened, a connection
            # that opened and was reset, not a refusal.
            log.debug("%s: connected, then reset by the peer", key)
            self.post(Connected(key, 0))
            self.post(HostReset(key))
            return
        if error:
            self._forget(key)
            self.post(ConnectFailed(key, error))
            return
        self.loop.epoll.modify(sock.fileno(), _EDGE)
        space = self.space(sock, fresh=True)
        self.space_estimate[key] = (space, space)
        self.post(Connected(key, space))

    def read(self, key: FlowKey, limit: int) -> Event | None:
        """Peek up to *limit* new bytes: what was read, as the event to feed at once (its
        view into the peek buffer lasts until the next read), or None."""
        sock = self.by_key.get(key)
        if sock is None or key in self.connecting:
            return None
        limit = min(limit, PEEK_BUFFER_BYTES)
        try:
            nbytes = sock.recv_into(self.peek_view, limit, socket.MSG_PEEK)
        except BlockingIOError:
            return None  # drained: the next edge brings more
        except OSError as exc:
            log.debug("%s: host connection failed: %s", key, exc)
            return HostReset(key)
        if nbytes == 0:
            log.debug("%s: host EOF (peek limit %d)", key, limit)
            return HostEof(key)
        return HostData(key, self.peek_view[:nbytes], more=nbytes == limit or key in self.hung_up)

    def send(self, key: FlowKey, data: bytes | bytearray | memoryview) -> None:
        sock = self.by_key.get(key)
        if sock is None:
            return
        try:
            sent = sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            log.debug("%s: host connection failed: %s", key, exc)
            self.post(HostReset(key))
            return
        # Ask the kernel for the free space only when our running estimate gets low:
        # two system calls per segment are a large share of a small exchange.
        estimate, known = self.space_estimate.get(key, (0, 0))
        space = estimate - sent
        if space <= known // 2:  # half of what the kernel last said is used: ask again
            space = known = self.space(sock)
        self.space_estimate[key] = (space, known)
        self.post(Sent(key, sent, len(data), space))

    def consume(self, key: FlowKey, nbytes: int) -> None:
        sock = self.by_key.get(key)
        if sock is not None:
            try:
                sock.recv(nbytes, socket.MSG_TRUNC | socket.MSG_DONTWAIT)
            except OSError as exc:
                log.debug("%s: consume failed: %s", key, exc)

    def rewind(self, key: FlowKey) -> None:
        sock = self.by_key.get(key)
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)

    def watch_writable(self, key: FlowKey) -> None:
        sock = self.by_key.get(key)
        if sock is not None and key not in self.watching_out:
            self.watching_out.add(key)
            # Re-arming an edge-triggered fd reports EPOLLOUT at once if there is room.
            self.loop.epoll.modify(sock.fileno(), _EDGE | select.EPOLLOUT)

    def shutdown_write(self, key: FlowKey) -> None:
        sock = self.by_key.get(key)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.debug("%s: shutdown failed: %s", key, exc)

    def close(self, key: FlowKey, reset: bool) -> None:
        sock = self._forget(key)
        if sock is not None:
            if reset:
                reset_close(sock)
            else:
                sock.close()

    def close_all(self) -> None:
        for key in list(self.by_key):
            self.close(key, reset=True)

    def _forget(self, key: FlowKey) -> socket.socket | None:
        sock = self.by_key.pop(key, None)
        self.connecting.discard(key)
        self.watching_out.discard(key)
        self.space_estimate.pop(key, None)
        self.hung_up.discard(key)
        if sock is not None:
            self.loop.remove(sock.fileno())
        return sock

    @staticmethod
    def space(sock: socket.socket, fresh: bool = False) -> int:
        """Free space in the send buffer, in payload bytes: our window to the guest.

        The kernel takes data while its queued memory (payload plus per-buffer
        overhead, a few percent for the large segments we write) is under SO_SNDBUF;
        an eighth is kept back for that overhead. Overestimating costs a short write,
        which the guest recovers from; underestimating only a smaller window.
        """
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if fresh:  # just connected: nothing sent yet
            return int(sndbuf) * 7 // 8
        queued = _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQ, bytes(_INT.size)))[0]
        return max(0, int(sndbuf) * 7 // 8 - int(queued))
