"""All TCP connections of one guest link: lookup, admission, timers.

A connection is created by the guest's SYN and forgotten once it reaches CLOSED. Two
caps bound what a guest can make us hold, as a listening socket's queues bound a
kernel's: all connections (`limit`; beyond it a SYN gets an RST) and those whose
handshake is under way (`pending_limit`: our host connect() in progress or our SYN-ACK
unanswered, each holding a host socket and, towards a host service, one of its
connections; beyond it a SYN is dropped, as by a full SYN queue, and the guest sends it
again). A half-open connection is given up after SYNACK_RETRIES SYN-ACKs, or after
SYNACK_RETRIES_UNDER_PRESSURE while more than half the pending cap is taken, so a SYN
flood holds slots for a minute at most and, once it crowds the cap, for seconds. Log
lines about refusals are rate-limited (slirpy.ratelog). Timers live in
one heap of (deadline, key) entries checked lazily: a connection whose deadline moved
later is simply re-queued when its old entry comes up, so the heap holds about one
entry per connection however often timers are re-armed. A connection's `deadline` is
the earlier of its two timers (retransmission or persist, and a delayed ACK's); its
`on_timer` does whichever is due, and the later one is queued again after it.
"""

from __future__ import annotations

import errno
import heapq
import logging
from typing import Final, assert_never

from slirpy.addresses import is_ipv6
from slirpy.effects import Connect, Effect
from slirpy.events import (ConnectFailed, Connected, HostData, HostEof, HostReset, Readable,
                           Sent, Writable)
from slirpy.flows.key import FlowKey
from slirpy.guest import GuestLink
from slirpy.ratelog import RateLimitedLog
from slirpy.reports import Reporter
from slirpy.tcp.conn import (InitialSequence, ReorderBudget, State, TcpConn, TcpCounters,
                             reset_for)
from slirpy.tcp.timers import (PRESSURE_MIN_PENDING, SYNACK_RETRIES,
                               SYNACK_RETRIES_UNDER_PRESSURE)
from slirpy.wire.ipv4 import HEADER_LEN as IP_LEN
from slirpy.wire.ipv6 import HEADER_LEN as IP6_LEN
from slirpy.wire.tcp import ACK, HEADER_LEN as TCP_LEN, RST, SYN, TcpHeader

log = logging.getLogger(__name__)

IP_TCP_HEADERS: Final = IP_LEN + TCP_LEN  # 40: the MSS is the MTU less these
IPV6_EXTRA: Final = IP6_LEN - IP_LEN  # 20: over IPv6 the MSS is that much smaller
CONNECT_TIMEOUT_S: Final = 30.0  # then RST: the guest's connect() fails, as on a network
REORDER_TOTAL_BYTES: Final = 32 * 1024 * 1024  # all connections' out-of-order data together
PENDING_SHARE: Final = 4  # without a pending cap of its own: a quarter of the connections
# The guest's handshakes under way: our connect() to the host, then our SYN-ACK. (A tuple:
# a set would hash the Enum member in Python on every event.)
_EMBRYONIC: Final = (State.CONNECTING, State.SYN_RECEIVED)

HostTcpEvent = (Connected | ConnectFailed | Sent | Writable | Readable | HostData | HostEof
                | HostReset)


class TcpFlows:
    def __init__(self, link: GuestLink, *, limit: int, secret: bytes, mtu: int,
                 pending_limit: int | None = None, reports: Reporter | None = None) -> None:
        self.link = link
        self.reports = reports or Reporter()
        self.counters = TcpCounters()
        self.limit = limit
        self.pending_limit = pending_limit if pending_limit is not None \
            else max(1, limit // PENDING_SHARE)
        self.isn = InitialSequence(secret)
        self.our_mss = mtu - IP_TCP_HEADERS
        self.conns: dict[FlowKey, TcpConn] = {}
        self.reorder_budget = ReorderBudget(REORDER_TOTAL_BYTES)
        self._timers: list[tuple[float, FlowKey]] = []
        self._scheduled: dict[FlowKey, float] = {}  # key -> deadline of its heap entry
        self.embryonic: set[FlowKey] = set()  # the guest's connections in _EMBRYONIC states
        self.refused = 0  # SYNs reset at the connection cap
        self.syns_dropped = 0  # SYNs dropped at the pending cap
        self.given_up = 0  # handshakes the guest never completed
        self._log = RateLimitedLog(log, burst=1)  # its lines say the same every time

    def __len__(self) -> int:
        return len(self.conns)

    def on_segment(self, key: FlowKey, seg: TcpHeader, host_addr: bytes | None,
                   now: float, host_port: int | None = None) -> list[Effect]:
        """A segment from the guest; a new connection goes to *host_addr*:*host_port*
        (default: the port the guest named). With *host_addr* None the connection
        waits: `connect_later` starts it once the address is known."""
        conn = self.conns.get(key)
        if conn is None:
            if seg.flags & (SYN | ACK | RST) != SYN:
                return self.reset_for(key, seg)
            if len(self.embryonic) >= self.pending_limit:
                self.syns_dropped += 1
                self._log.warning("pending", now, "TCP: %d handshakes under way (the cap): "
                                  "new SYNs are dropped (a SYN flood?)", self.pending_limit)
                return []
            if self._full(now):
                return self.reset_for(key, seg)
            conn = TcpConn(key, self.link, seg, self.isn.for_connection(key, now),
                           self._mss(key), now, self.reorder_budget, self.counters)
            self.conns[key] = conn
            self.embryonic.add(key)
            conn.arm_connect_timeout(now + CONNECT_TIMEOUT_S)
            self._schedule(conn)
            if host_addr is None:
                return []
            return [Connect(key, host_addr, key.remote_port if host_port is None else host_port)]
        return self._after(conn, conn.on_segment(seg, now), now)

    def reset_for(self, key: FlowKey, seg: TcpHeader) -> list[Effect]:
        """RFC 9293 3.10.7.1's answer to a segment of no connection, counted."""
        effects = reset_for(self.link, key, seg)
        if effects:
            self.counters.resets_sent += 1
        return effects

    def connect_later(self, key: FlowKey, target: tuple[bytes, int] | None,
                      now: float) -> list[Effect]:
        """The address of a waiting connection is known (or, with None, cannot be)."""
        conn = self.conns.get(key)
        if conn is None or conn.state is not State.CONNECTING:
            return []
        if target is None:
            return self._after(conn, conn.on_connect_failed(errno.ECONNREFUSED, now), now)
        return [Connect(key, target[0], target[1])]

    def open_to_guest(self, key: FlowKey, space: int, now: float) -> list[Effect] | None:
        """A host client a local forward accepted: our SYN to the guest, or None when
        the key is taken or the cap reached (the runtime then resets the client)."""
        if key in self.conns or self._full(now):
            return None
        conn, syn = TcpConn.active(key, self.link, self.isn.for_connection(key, now),
                                   self._mss(key), space, now, self.reorder_budget,
                                   self.counters)
        self.conns[key] = conn
        self._schedule(conn)
        return [syn]

    def _mss(self, key: FlowKey) -> int:
        return self.our_mss - (IPV6_EXTRA if is_ipv6(key.guest_addr) else 0)

    def _full(self, now: float) -> bool:
        """At the cap: count the refusal, and say so (rate-limited)."""
        if len(self.conns) < self.limit:
            return False
        self.refused += 1
        self._log.warning("limit", now, "TCP connection limit (%d) reached: new connections "
                          "(guest's and forwarded) are reset until some close", self.limit)
        return True

    def pending(self) -> int:
        """The guest's connections whose handshake is under way (see `pending_limit`)."""
        return len(self.embryonic)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self.conns

    def get(self, key: FlowKey) -> TcpConn | None:
        return self.conns.get(key)

    def connections(self) -> list[TcpConn]:
        return list(self.conns.values())

    def on_host_event(self, event: HostTcpEvent, now: float) -> list[Effect]:
        """What the host side said about one connection: the answers to Connect, Send,
        Peek and WatchWritable, and the socket's readiness."""
        conn = self.conns.get(event.flow)
        if conn is None:
            return []  # closed meanwhile: the runtime closes the socket on our Close
        match event:
            case Connected(_, space):
                effects = conn.on_connected(space, now)
            case ConnectFailed(_, error):
                effects = conn.on_connect_failed(error, now)
            case Sent(_, nbytes, wanted, space):
                effects = conn.on_sent(nbytes, wanted, space, now)
            case Writable(_, space):
                effects = conn.on_writable(space, now)
            case Readable():
                effects = conn.on_readable(now)
            case HostData(_, data, more):
                effects = conn.on_host_data(data, more, now)
            case HostEof():
                effects = conn.on_host_eof(now)
            case HostReset():
                effects = conn.on_host_reset(now)
            case _:
                assert_never(event)
        return self._after(conn, effects, now)

    def _after(self, conn: TcpConn, effects: list[Effect], now: float) -> list[Effect]:
        """Book-keeping after any event on *conn*: the read it made due, its timer, and
        forgetting (and reporting) it once closed."""
        if conn.state is State.CLOSED:
            conn.forget_held()
            if self.conns.pop(conn.key, None) is not None:
                self.reports.flow_done(conn.key, conn.key.proto, now,
                                       conn.end_reason or "closed", conn.end_error)
            self._scheduled.pop(conn.key, None)
            self.embryonic.discard(conn.key)
        else:
            if self.embryonic and conn.state not in _EMBRYONIC:
                self.embryonic.discard(conn.key)
            self._schedule(conn)
            read = conn.take_read()
            if read is not None:
                effects.append(read)
        return effects

    def _schedule(self, conn: TcpConn) -> None:
        deadline = conn.deadline
        if deadline is None:
            return
        queued = self._scheduled.get(conn.key)
        if queued is None or deadline < queued:
            self._scheduled[conn.key] = deadline
            heapq.heappush(self._timers, (deadline, conn.key))

    def expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        # Linux's reqsk_timer_handler: while half-open connections take more than half of
        # their cap, old ones are given up sooner, so a flood cannot hold the cap long.
        crowded = 2 * len(self.embryonic) > max(PRESSURE_MIN_PENDING, self.pending_limit)
        synack_retries = SYNACK_RETRIES_UNDER_PRESSURE if crowded else SYNACK_RETRIES
        while self._timers and self._timers[0][0] <= now:
            deadline, key = heapq.heappop(self._timers)
            if self._scheduled.get(key) != deadline:
                continue  # superseded by an earlier entry
            del self._scheduled[key]
            conn = self.conns.get(key)
            if conn is None:
                continue
            handshaking = conn.state is State.SYN_RECEIVED
            effects += self._after(conn, conn.on_timer(now, synack_retries), now)
            if handshaking and conn.state is State.CLOSED:
                self.given_up += 1
        return effects

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None
