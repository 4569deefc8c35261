"""Host sockets for guest flows: made, used and closed as the stack's effects ask.

Each flow key maps to one connected, non-blocking socket registered with the loop.
Everything the kernel reports comes back to the stack as events: datagrams read,
errors from IP_RECVERR's error queue (the ICMP type and code the host saw), and an
errno when a socket cannot even be made or connected. All sockets live in the
namespaces slirpy was started in, never the guest's.

Every flow holds an fd, so the open-file limit bounds them all. At start slirpy takes
its hard limit (`fit_to_fd_limit`) and sizes the core's flow caps to what is left once
the fds that are no flow's are set aside (`flow_caps`), so a guest meets a cap (an RST,
an evicted flow) before the limit. Should the limit be met all the same (other fds, a
lowered limit, the DNS client's and echo's sockets), a socket that cannot be made is a
refused flow, never an exception: the guest hears "unreachable" or an RST, one
rate-limited line says so (`out_of_fds`), and the next flow tries again. A listener
that cannot accept for want of an fd drops the client with the spare fd kept for that
(`SpareFd`), so a level-triggered listener never spins.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import os
import resource
import select
import socket
import struct
from collections.abc import Callable
from typing import Final

from slirpy.addresses import address_text, is_ipv6
from slirpy.config import Config
from slirpy.events import Event, HostDatagram, HostError, HostFailed
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import LocalForward, Proto
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.loop import EventLoop, ReadBudget
from slirpy.tcp.flows import PENDING_SHARE

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

# Out of fds: the process's (EMFILE) or the system's (ENFILE).
FD_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})
# accept(2): errors of that one client (gone, or refused by a filter): accept the next.
CLIENT_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                                errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                                errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})
# Set aside from the open-file limit for fds that are no flow's: stdio, the tap, epoll,
# the signal pair, netlink, resolv.conf, the log, the spare fd, the control socket and its
# clients (64), the DNS client's and echo's sockets; an eighth of the limit, if more.
FD_RESERVED_MIN: Final = 128
FD_RESERVED_SHARE: Final = 8
PROXY_HEADER_CLIENTS: Final = 256  # a tcppp forward's clients owing a header (forwards.py)
MIN_FLOWS: Final = 16
UDP_SHARE: Final = 5  # of the flows, UDP's: 1024 of 5120 as the defaults have it
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with an RST

Post = Callable[[Event], None]

# One line for every site (the limit is the process's), once a minute at most.
FD_LOG: Final = RateLimitedLog(log, burst=1)


def out_of_fds(what: str, exc: OSError, now: float) -> None:
    """Say, rate-limited and for every site alike, that a flow was refused for want of
    an fd."""
    FD_LOG.warning("fds", now, "no file descriptor for %s (%s): new flows are refused "
                   "until some close", what, exc.strerror or exc)


def raise_fd_limit() -> int:
    """Every flow is an fd: take the hard limit, as servers do, rather than 1024. The
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:  # e.g. RLIM_INFINITY beyond fs.nr_open
            log.debug("cannot raise the open-file limit to %d: %s", hard, exc)
    return soft


def flow_caps(config: Config, fd_limit: int) -> Config:
    """*config* with its flow caps sized to an open-file limit of *fd_limit*.

    max_flows (given, or what the limit leaves once the reserved fds and one per local
    forward's listener are set aside) is shared out: a fifth to UDP flows, the rest to
    TCP connections; derived, each stays within its configured cap too. A quarter of
    the TCP connections may be pending (handshake under way) unless
    max_pending_connects says otherwise. ICMP echo flows and DNS queries have fixed caps
    of their own and use the reserve.
    """
    listeners = sum(1 for fwd in config.forwards if isinstance(fwd, LocalForward))
    if any(isinstance(fwd, LocalForward) and fwd.proto is Proto.TCPPP
           for fwd in config.forwards):
        listeners += PROXY_HEADER_CLIENTS
    reserved = max(FD_RESERVED_MIN, fd_limit // FD_RESERVED_SHARE) + listeners
    if config.max_flows is not None:
        flows = config.max_flows
        udp = max(1, flows // UDP_SHARE)
        tcp = max(1, flows - udp)
    else:
        flows = max(MIN_FLOWS, fd_limit - reserved)
        udp = min(config.udp_flow_limit, max(1, flows // UDP_SHARE))
        tcp = min(config.tcp_conn_limit, max(1, flows - udp))
        flows = tcp + udp
    if flows + reserved > fd_limit:
        log.warning("up to %d flows may need more file descriptors than the open-file limit "
                    "(%d) leaves: beyond it, new flows are refused", flows, fd_limit)
    pending = config.max_pending_connects if config.max_pending_connects is not None \
        else max(1, tcp // PENDING_SHARE)
    return dataclasses.replace(config, max_flows=flows, max_pending_connects=min(pending, tcp),
                               tcp_conn_limit=tcp, udp_flow_limit=udp)


def fit_to_fd_limit(config: Config) -> Config:
    """Raise the open-file limit to the hard limit; *config*'s flow caps fitted to it."""
    return flow_caps(config, raise_fd_limit())


class Drop(enum.Enum):
    """What became of a client a listener at the open-file limit could not accept."""

    DROPPED = "dropped"  # accepted on the spare fd, closed with a reset
    NONE_WAITING = "none waiting"  # the backlog is empty: the listener is done for now
    FAILED = "failed"  # not even the spare fd helped: stop polling the listener a while


class SpareFd:
    """One fd held back for a listener at the open-file limit.

    A level-triggered listener whose accept() fails with EMFILE is ready again at once:
    left alone, the loop would spin on it. So the spare fd is closed, the client
    accepted on it and closed at once (a reset: it was refused), and the spare opened
    again (libev's and nginx's remedy). Only this single-threaded loop makes fds, so the
    one it frees is the one accept() takes.
    """

    def __init__(self) -> None:
        self.fd: int | None = None

    def hold(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("no spare fd: %s", exc)

    def drop_client(self, listener: socket.socket) -> Drop:
        """Accept one waiting client of *listener* and close it at once. (accept() fails
        with EMFILE before it looks for a client: at the limit, only this says whether
        one waits.)"""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            self.hold()
            return Drop.NONE_WAITING
        except OSError:
            self.hold()
            return Drop.FAILED
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        client.close()
        self.hold()  # the fd the client had
        return Drop.DROPPED


SPARE_FD: Final = SpareFd()  # one for the process: the open-file limit is the process's


class HostSockets:
    def __init__(self, config: Config, loop: EventLoop, post: Post) -> None:
        self.loop = loop
        self.post = post
        self.bind4 = str(config.outbound_addr) if config.outbound_addr else None
        self.bind6 = str(config.outbound_addr6) if config.outbound_addr6 else None
        self.by_key: dict[FlowKey, socket.socket] = {}
        self.ping_refused_warned = False
        self._log = RateLimitedLog(log)
        SPARE_FD.hold()

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
        elif exc.errno in FD_EXHAUSTED:
            out_of_fds(f"a flow to {address_text(key.remote_addr)}", exc, self.loop.now())
        else:
            self._log.warning("socket", self.loop.now(), "%s: cannot make a socket: %s",
                              key, exc)
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
