"""Host sockets of local forwards: listeners, PROXY headers, and forwarded datagrams.

A TCP local forward is a listening socket. An accepted client is announced to the core
(ForwardAccepted, naming the socket by a token), which picks the address the guest
sees and starts the connection to the guest; on its AdoptStream the accepted socket
joins HostStreams under that flow, like a socket slirpy connected itself, and on its
RefuseStream the client is reset. For tcppp forwards the client's PROXY header is read first (peeked
until whole, then consumed), so the guest sees the client it names and the stream
starts after it; a client that sends no valid header in time is reset.
A UDP local forward is one bound socket: datagrams from any client go to the stack,
and the guest's replies leave from the same socket (SendTo).
A client that cannot be accepted for want of an fd is dropped (see SpareFd); should
even that fail, the listener rests for ACCEPT_REST_S rather than spin. What clients can
make us log is rate-limited (slirpy.ratelog).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import select
import socket
from collections.abc import Callable
from typing import Final

from slirpy.events import Event, ForwardAccepted, ForwardDatagram
from slirpy.addresses import is_ipv6
from slirpy.forward.spec import Forward, LocalForward, Proto
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.sockets import (CLIENT_GONE, FD_EXHAUSTED, PROXY_HEADER_CLIENTS, SPARE_FD,
                                   Drop, out_of_fds)
from slirpy.runtime.streams import HostStreams, reset_close
from slirpy.wire import Malformed
from slirpy.wire.proxy import MAX_V2_LEN, parse_proxy_header

log = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 128
ACCEPT_BATCH: Final = 64
DATAGRAM_BATCH: Final = 64
PROXY_HEADER_TIMEOUT_S: Final = 10.0
PENDING_HEADERS_MAX: Final = PROXY_HEADER_CLIENTS  # the fds set aside for them
ACCEPT_REST_S: Final = 0.5  # a listener that could not even drop a client, at the fd limit
MAX_DATAGRAM_BYTES: Final = 65536  # a UDP payload's most, and then some

Post = Callable[[Event], None]


def packed(address: str) -> bytes:
    """A socket address as packed bytes; IPv4-mapped IPv6 as the IPv4 address."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.packed
    return addr.packed


class _Pending:
    """An accepted tcppp client whose PROXY header is not complete yet."""

    def __init__(self, sock: socket.socket, peer: tuple[bytes, int], deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline


class ForwardSockets:
    def __init__(self, loop: EventLoop, streams: HostStreams, post: Post) -> None:
        self.loop = loop
        self.streams = streams
        self.post = post
        self.sockets: dict[int, socket.socket] = {}
        self.pending: dict[int, _Pending] = {}  # fd -> client waiting for its header
        self.accepted: dict[int, socket.socket] = {}  # token -> client the core decides on
        self.peek = bytearray(MAX_V2_LEN)
        self.datagram = bytearray(MAX_DATAGRAM_BYTES)
        self.resting: dict[int, float] = {}  # forward id -> when its listener is polled again
        self._log = RateLimitedLog(log)
        SPARE_FD.hold()

    def open(self, forward_id: int, fwd: LocalForward) -> LocalForward:
        """Bind and listen for local forward *fwd*; the forward as bound (a bind port
        of 0: the one the kernel picked). Raises OSError when it cannot be bound."""
        family = socket.AF_INET if fwd.bind.version == 4 else socket.AF_INET6
        kind = socket.SOCK_STREAM if fwd.transport == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((str(fwd.bind), fwd.bind_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        port = int(sock.getsockname()[1])
        if port != fwd.bind_port:
            fwd = dataclasses.replace(fwd, bind_port=port)
        self.sockets[forward_id] = sock
        if kind == socket.SOCK_STREAM:
            self.loop.add(sock.fileno(), lambda mask: self._accept(forward_id, sock, fwd))
        else:
            self.loop.add(sock.fileno(), lambda mask: self._receive(forward_id, sock, fwd))
        return fwd

    def close(self, forward_id: int) -> None:
        """Stop listening; connections already forwarded run to their end."""
        sock = self.sockets.pop(forward_id, None)
        self.resting.pop(forward_id, None)
        if sock is not None:
            self.loop.remove(sock.fileno())
            sock.close()

    def close_all(self) -> None:
        for forward_id in list(self.sockets):
            self.close(forward_id)
        for fd in list(self.pending):
            self._drop_pending(fd)
        for token in list(self.accepted):
            self.refuse(token)

    # --- TCP ----------------------------------------------------------------------------

    def _accept(self, forward_id: int, listener: socket.socket, fwd: Forward) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GONE:
                    log.debug("local forward %s: accept failed: %s", fwd.spec(), exc)
                    continue
                if exc.errno in FD_EXHAUSTED:
                    dropped = SPARE_FD.drop_client(listener)
                    if dropped is Drop.NONE_WAITING:
                        return
                    out_of_fds(f"a client of local forward {fwd.spec()}", exc, self.loop.now())
                    if dropped is Drop.DROPPED:
                        continue
                else:
                    self._log.warning("accept", self.loop.now(), "local forward %s: accept "
                                      "failed: %s", fwd.spec(), exc)
                self._rest(forward_id, listener)
                return
            sock.setblocking(False)
            peer = (packed(address[0]), int(address[1]))
            if fwd.proto is Proto.TCPPP:
                self._await_header(sock, peer, forward_id, fwd)
            else:
                self._forward(sock, peer, forward_id)

    def _rest(self, forward_id: int, listener: socket.socket) -> None:
        """Stop polling *listener* for a while: its clients wait in the backlog."""
        self.loop.epoll.modify(listener.fileno(), 0)
        self.resting[forward_id] = self.loop.now() + ACCEPT_REST_S

    def _forward(self, sock: socket.socket, client: tuple[bytes, int], forward_id: int,
                 guest_port: int = 0) -> None:
        self.streams.prepare(sock)
        token = sock.fileno()
        self.accepted[token] = sock
        self.post(ForwardAccepted(token, forward_id, client, self.streams.space(sock),
                                  guest_port))

    def take_accepted(self, token: int) -> socket.socket:
        """The accepted client the core made a flow for (AdoptStream)."""
        return self.accepted.pop(token)

    def refuse(self, token: int) -> None:
        """Reset the accepted client the core could make no flow for (RefuseStream)."""
        sock = self.accepted.pop(token)
        log.debug("local forward: client on fd %d reset (no flow)", token)
        reset_close(sock)

    def _await_header(self, sock: socket.socket, peer: tuple[bytes, int], forward_id: int,
                      fwd: Forward) -> None:
        if len(self.pending) >= PENDING_HEADERS_MAX:
            self._log.warning("headers", self.loop.now(), "local forward %s: too many clients "
                              "owe a PROXY header; reset", fwd.spec())
            reset_close(sock)
            return
        fd = sock.fileno()
        self.pending[fd] = _Pending(sock, peer, self.loop.now() + PROXY_HEADER_TIMEOUT_S)
        self.loop.add(fd, lambda mask: self._header(fd, forward_id, fwd),
                      select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def _header(self, fd: int, forward_id: int, fwd: Forward) -> None:
        pending = self.pending.get(fd)
        if pending is None:
            return
        try:
            nbytes = pending.sock.recv_into(self.peek, len(self.peek), socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("local forward %s: client gone before its header: %s", fwd.spec(), exc)
            self._drop_pending(fd)
            return
        try:
            header = parse_proxy_header(memoryview(self.peek)[:nbytes])
            if header is None and nbytes == 0:
                raise Malformed("proxy-eof")
            if header is not None and header.source is not None and header.source[1] == 0:
                # The guest would see a connection from port 0, which no TCP sends.
                raise Malformed("proxy-source-port-zero")
        except Malformed as exc:
            self._log.info("bad-header", self.loop.now(), "local forward %s: bad PROXY header "
                           "from %s (%s): reset", fwd.spec(),
                           ipaddress.ip_address(pending.peer[0]), exc.reason)
            self._drop_pending(fd)
            return
        if header is None:
            return  # more to come
        self.loop.remove(fd)
        del self.pending[fd]
        pending.sock.recv(header.length)  # the header is consumed; the stream follows
        client = header.source or pending.peer
        guest_port = header.destination[1] if header.destination else 0
        self._forward(pending.sock, client, forward_id, guest_port)

    def expire(self, now: float) -> None:
        for fd, pending in list(self.pending.items()):
            if pending.deadline <= now:
                self._log.info("no-header", now, "local forward: no PROXY header from %s "
                               "in %.0f s: reset", ipaddress.ip_address(pending.peer[0]),
                               PROXY_HEADER_TIMEOUT_S)
                self._drop_pending(fd)
        for forward_id, until in list(self.resting.items()):
            if until <= now:
                del self.resting[forward_id]
                sock = self.sockets.get(forward_id)
                if sock is not None:
                    self.loop.epoll.modify(sock.fileno(), select.EPOLLIN)

    def next_deadline(self) -> float | None:
        return min((*(p.deadline for p in self.pending.values()), *self.resting.values()),
                   default=None)

    def _drop_pending(self, fd: int) -> None:
        pending = self.pending.pop(fd)
        self.loop.remove(fd)
        reset_close(pending.sock)

    # --- UDP ----------------------------------------------------------------------------

    def _receive(self, forward_id: int, sock: socket.socket, fwd: Forward) -> None:
        view = memoryview(self.datagram)
        for _ in range(DATAGRAM_BATCH):
            try:
                nbytes, address = sock.recvfrom_into(self.datagram)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier reply: nothing to do
                log.debug("local forward %s: %s", fwd.spec(), exc)
                continue
            peer = (packed(address[0]), int(address[1]))
            self.post(ForwardDatagram(forward_id, peer, bytes(view[:nbytes])))

    def send_to(self, forward_id: int, addr: bytes, port: int,
                data: bytes | bytearray | memoryview, prefix: bytes) -> None:
        sock = self.sockets.get(forward_id)
        if sock is None:
            return  # the forward was removed meanwhile
        host = str(ipaddress.ip_address(addr))
        if sock.family == socket.AF_INET6 and not is_ipv6(addr):
            host = f"::ffff:{host}"
        try:
            sock.sendmsg([prefix, data] if prefix else [data], [], 0, (host, port))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                log.debug("local forward %d: reply to %s:%d failed: %s", forward_id, host,
                          port, exc)
