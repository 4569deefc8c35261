"""Host sockets for guest flows: made, used and closed as the stack's effects ask.

Each flow key maps to one connected, non-blocking socket registered with the loop.
Everything the kernel reports comes back to the stack as events: datagrams read,
errors from IP_RECVERR's error queue (the ICMP type and code the host saw), and an
errno when a socket cannot even be made or connected. All sockets live in the
namespaces slirpy was started in, never the guest's.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Final

from slirpy.addresses import address_text, is_ipv6
from slirpy.config import Config
from slirpy.events import Event, HostDatagram, HostError, HostFailed
from slirpy.flows.key import FlowKey
from slirpy.runtime.loop import EventLoop, ReadBudget

log = logging.getLogger(__name__)

# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: Python's socket module lacks them.
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25
_SOCK_EE: Final = struct.Struct("=IBBBBII")  # struct sock_extended_err
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
RECV_BATCH: Final = 64
MAX_DATAGRAM: Final = 65535  # a read buffer any UDP payload fits in
_ERRQUEUE_CONTROL_BYTES: Final = 512  # room for sock_extended_err and the offender's address

Post = Callable[[Event], None]


class HostSockets:
    def __init__(self, config: Config, loop: EventLoop, post: Post) -> None:
        self.loop = loop
        self.post = post
        self.bind4 = str(config.outbound_addr) if config.outbound_addr else None
        self.bind6 = str(config.outbound_addr6) if config.outbound_addr6 else None
        self.by_key: dict[FlowKey, socket.socket] = {}
        self.ping_refused_warned = False

    def __len__(self) -> int:
        return len(self.by_key)

    def open_udp(self, key: FlowKey, host_addr: bytes, host_port: int) -> None:
        self._open(key, socket.SOCK_DGRAM, socket.IPPROTO_UDP, host_addr, host_port)

    def open_ping(self, key: FlowKey, host_addr: bytes) -> None:
        proto = socket.IPPROTO_ICMPV6 if is_ipv6(host_addr) else socket.IPPROTO_ICMP
        self._open(key, socket.SOCK_DGRAM, proto, host_addr, 0)

    def _open(self, key: FlowKey, kind: int, proto: int, host_addr: bytes, port: int) -> None:
        family = socket.AF_INET6 if is_ipv6(host_addr) else socket.AF_INET
        address = address_text(host_addr)
        try:
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
        except OSError as exc:
            self._refused(key, proto, exc)
            return
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            bind = self.bind4 if family == socket.AF_INET else self.bind6
            if bind is not None:
                sock.bind((bind, 0))
            sock.connect((address, port))
        except OSError as exc:
            sock.close()
            log.debug("%s: connect to %s failed: %s", key, address, exc)
            self.post(HostFailed(key, HostError(exc.errno or errno.EIO)))
            return
        self.by_key[key] = sock
        reads = ReadBudget(self.loop, RECV_BATCH)
        self.loop.add(sock.fileno(), lambda mask: self._ready(key, sock, mask, reads))

    def _refused(self, key: FlowKey, proto: int, exc: OSError) -> None:
        if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) and exc.errno in (
                errno.EACCES, errno.EPERM):
            if not self.ping_refused_warned:
                self.ping_refused_warned = True
                log.warning("ping to other hosts is off: this host forbids unprivileged ping "
                            "sockets (sysctl net.ipv4.ping_group_range does not include "
                            "group %d)", os.getgid())
        else:
            log.warning("%s: cannot make a socket: %s", key, exc)
        self.post(HostFailed(key, HostError(exc.errno or errno.EIO)))

    def send(self, key: FlowKey, data: bytes | bytearray | memoryview) -> None:
        sock = self.by_key.get(key)
        if sock is None:
            return
        try:
            sock.send(data)
        except BlockingIOError:
            log.debug("%s: host send buffer full, datagram dropped", key)
        except OSError as exc:
            # A pending ICMP error surfaces here once too; the error queue reports it.
            log.debug("%s: send failed: %s", key, exc)

    def close(self, key: FlowKey) -> None:
        sock = self.by_key.pop(key, None)
        if sock is not None:
            self.loop.remove(sock.fileno())
            sock.close()

    def close_all(self) -> None:
        for key in list(self.by_key):
            self.close(key)

    def _ready(self, key: FlowKey, sock: socket.socket, mask: int, reads: ReadBudget) -> None:
        if mask & select.EPOLLERR:
            self._read_errors(key, sock)
        count = 0
        for _ in range(reads.take()):
            if self.by_key.get(key) is not sock:
                return  # an effect of the last datagram closed it
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                self._read_errors(key, sock)
                return
            count += 1
            self.post(HostDatagram(key, data))
        reads.used(count)

    def _read_errors(self, key: FlowKey, sock: socket.socket) -> None:
        while self.by_key.get(key) is sock:
            try:
                _, ancdata, _, _ = sock.recvmsg(1, _ERRQUEUE_CONTROL_BYTES, socket.MSG_ERRQUEUE)
            except OSError:
                return  # BlockingIOError: the queue is empty
            for level, kind, data in ancdata:
                if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR),
                                     (socket.IPPROTO_IPV6, IPV6_RECVERR)):
                    error = _host_error(data)
                    if error is not None:
                        self.post(HostFailed(key, error))


def _host_error(data: bytes) -> HostError | None:
    """The ICMP error in a struct sock_extended_err, or None for local errors."""
    if len(data) < _SOCK_EE.size:
        return None
    ee_errno, origin, icmp_type, code, _, info, _ = _SOCK_EE.unpack_from(data)
    if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
        return None  # e.g. EMSGSIZE from our own stack: nothing the guest must hear of
    return HostError(ee_errno, icmp_type, code, info)
