"""A TCP peer for the stack: scapy segments from the guest, a simulated host socket.

The simulated socket behaves as the runtime's does: Send takes up to `accept` bytes,
peeks start at the peek offset, Consume drops acknowledged bytes and moves the
offset back, Rewind sets it to zero, EOF shows once all queued bytes were peeked.
Effects are applied as the runtime's loop applies them: in order, with what they
produce (Sent, a Peek's data) queued as events and fed once the list is applied.

Other connections may run beside the main one (`syn_from`, `connected`: a flood, say):
their host sockets take everything sent and have nothing to read, and their closes are
kept in `closed` (key -> reset), apart from the main socket's.

Either family: `TcpHarness(family=6)` is a guest at fd00::100 talking to 2001:db8::1
through a stack with IPv6 on; `t.key`, `t.ip`, `t.guest_ip` and `t.remote` are the
instance's. Every frame to the guest goes through the strict checker (tests/strict.py)
and, router advertisements aside, must be addressed to the guest's MAC, learnt from
its own frames.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from scapy.layers.inet import IP, TCP  # type: ignore[import-untyped]
from scapy.layers.inet6 import ICMPv6ND_RA, IPv6  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.config import Config
from slirpy.effects import (Close, Connect, Consume, Effect, Peek, Rewind, Send, ShutdownWrite,
                            ToGuest, WatchWritable)
from slirpy.events import (Connected, Event, GuestFrame, HostData, HostEof, HostReset,
                           Readable, Sent, TimerDue, Writable)
from slirpy.flows.key import FlowKey
from slirpy.stack import Stack
from tests.harness import GUEST_IP, GUEST_MAC, OUR_MAC, packed
from tests.strict import check_to_guest

REMOTE = "192.0.2.1"
GUEST_IP6 = "fd00::100"
REMOTE6 = "2001:db8::1"
GUEST_PORT = 40000
REMOTE_PORT = 80
KEY = FlowKey(6, packed(GUEST_IP), GUEST_PORT, packed(REMOTE), REMOTE_PORT)  # IPv4's
KEY6 = FlowKey(6, packed(GUEST_IP6), GUEST_PORT, packed(REMOTE6), REMOTE_PORT)
FAMILIES = (4, 6)


@dataclasses.dataclass
class HostSocket:
    queued: bytearray = dataclasses.field(default_factory=bytearray)  # host -> guest
    peek_offset: int = 0
    eof: bool = False
    received: bytearray = dataclasses.field(default_factory=bytearray)  # guest -> host
    accept: int = 1 << 30  # how much the next send() takes
    space: int = 65536 * 4
    shut_write: bool = False
    closed: bool = False
    reset: bool = False
    connected: bool = False


class TcpHarness:
    def __init__(self, config: Config | None = None, *, family: int = 4, guest_isn: int = 1000,
                 mss: int = 1460, wscale: int | None = 7, window: int = 65535) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} is neither 4 nor 6")
        config = config or Config()
        if family == 6 and not config.ipv6:
            config = dataclasses.replace(config, ipv6=True)
        self.family = family
        self.ip = IPv6 if family == 6 else IP  # the scapy layer, to index frames with
        self.guest_ip, self.remote = (GUEST_IP6, REMOTE6) if family == 6 else (GUEST_IP, REMOTE)
        self.key = KEY6 if family == 6 else KEY
        self.stack = Stack(config, secret=b"test")
        self.now = 1000.0
        self.host = HostSocket()
        self.guest_seq = guest_isn
        self.mss = mss
        self.wscale = wscale
        self.window = window
        self.effects: list[Effect] = []
        self.to_guest: list[Ether] = []
        self.closed: dict[FlowKey, bool] = {}  # other connections' closes: key -> reset
        # With IPv6 on, the stack's timer also sends router advertisements to all nodes:
        # checked like every frame, kept here, not among the connection's frames.
        self.router_adverts: list[Ether] = []

    @property
    def ipv6(self) -> bool:
        return self.family == 6

    # --- the guest side ---------------------------------------------------------------------

    def segment(self, flags: str, payload: bytes = b"", *, seq: int | None = None,
                ack: int | None = None, window: int | None = None, **tcp: object) -> list[Ether]:
        seg = (Ether(src=GUEST_MAC, dst=OUR_MAC) / self.ip(src=self.guest_ip, dst=self.remote)
               / TCP(**{"sport": GUEST_PORT, "dport": REMOTE_PORT, **tcp}, flags=flags,
                     seq=self.guest_seq if seq is None else seq, ack=ack or 0,
                     window=self.window if window is None else window) / payload)
        return self.feed(GuestFrame(bytes(seg)))

    def syn(self) -> list[Ether]:
        options = [("MSS", self.mss)]
        if self.wscale is not None:
            options.append(("WScale", self.wscale))
        out = self.segment("S", options=options)
        self.guest_seq += 1
        return out

    def handshake(self) -> Ether:
        """SYN, host connects, SYN-ACK, ACK: returns the SYN-ACK."""
        assert self.syn() == []
        assert any(isinstance(e, Connect) for e in self.effects)
        (syn_ack,) = self.host_connected()
        self.our_isn = syn_ack[TCP].seq
        self.segment("A", ack=self.our_isn + 1)
        return syn_ack

    def key_for(self, sport: int) -> FlowKey:
        """The key of a connection from guest port *sport* to the main one's remote."""
        return self.key._replace(guest_port=sport)

    def syn_from(self, sport: int, seq: int = 7000) -> list[Ether]:
        """A SYN from guest port *sport* (another connection, e.g. of a flood)."""
        options = [("MSS", self.mss)]
        return self.segment("S", sport=sport, seq=seq, options=options)

    def connected(self, key: FlowKey) -> list[Ether]:
        """The host connect() of another connection than the main one succeeded."""
        return self.feed(Connected(key, self.host.space))

    def send(self, data: bytes, flags: str = "PA") -> list[Ether]:
        out = self.segment(flags, data, ack=self.ack_point)
        return out

    @property
    def ack_point(self) -> int:
        return getattr(self, "_ack_point", getattr(self, "our_isn", 0) + 1)

    def ack(self, upto: int, window: int | None = None) -> list[Ether]:
        self._ack_point = upto
        return self.segment("A", ack=upto, window=window)

    # --- the host side ----------------------------------------------------------------------

    def host_connected(self) -> list[Ether]:
        self.host.connected = True
        return self.feed(Connected(self.key, self.host.space))

    def host_writes(self, data: bytes) -> list[Ether]:
        self.host.queued += data
        return self.feed(Readable(self.key))

    def host_closes(self) -> list[Ether]:
        self.host.eof = True
        return self.feed(Readable(self.key))

    def host_resets(self) -> list[Ether]:
        return self.feed(HostReset(self.key))

    def host_writable(self) -> list[Ether]:
        return self.feed(Writable(self.key, self.host.space))

    def advance(self, seconds: float) -> list[Ether]:
        self.now += seconds
        out: list[Ether] = []
        while (d := self.stack.next_deadline()) is not None and d <= self.now:
            out += self.feed(TimerDue())
        return out

    def _peek(self, limit: int) -> Event | None:
        """What a MSG_PEEK of up to *limit* bytes at the peek offset returns."""
        if not self.host.connected or self.host.closed:
            return None
        chunk = bytes(self.host.queued[self.host.peek_offset:self.host.peek_offset + limit])
        if not chunk:
            return HostEof(self.key) if self.host.eof else None
        self.host.peek_offset += len(chunk)
        return HostData(self.key, memoryview(chunk), more=len(chunk) == limit)

    def feed(self, event: Event) -> list[Ether]:
        """Feed *event* and everything applying the effects produces, as the runtime's
        loop does; frames to the guest are returned, all effects kept in self.effects.
        Every frame to the guest must satisfy the strict receiver; all but router
        advertisements (kept in self.router_adverts, not returned) must be addressed to
        the guest's MAC, which the stack learns from its frames in either family."""
        out: list[Ether] = []
        self.effects = []
        queue: deque[Event | Peek] = deque([event])
        while queue:
            item = queue.popleft()
            if isinstance(item, Peek):
                peeked = self._peek(item.limit)
                if peeked is None:
                    continue
                item = peeked
            for effect in self.stack.feed(item, self.now):
                self.effects.append(effect)
                flow = getattr(effect, "flow", self.key)
                if flow != self.key:  # another connection: a socket that takes all
                    match effect:
                        case Send(_, data):
                            queue.append(Sent(flow, len(data), len(data), self.host.space))
                            continue
                        case Close(_, reset):
                            self.closed[flow] = reset
                            continue
                        case _:
                            continue
                match effect:
                    case ToGuest():
                        check_to_guest(effect)
                        frame = Ether(effect.frame)
                        if ICMPv6ND_RA in frame:  # the link's, to all nodes, on its timer
                            self.router_adverts.append(frame)
                            continue
                        assert frame.dst == GUEST_MAC, \
                            f"a frame to {frame.dst}, not the guest's {GUEST_MAC}"
                        out.append(frame)
                    case Send(_, data):
                        took = min(len(data), self.host.accept)
                        self.host.received += bytes(data[:took])
                        queue.append(Sent(self.key, took, len(data), self.host.space))
                    case Consume(_, nbytes):
                        assert nbytes <= self.host.peek_offset or self.host.peek_offset == 0
                        del self.host.queued[:nbytes]
                        self.host.peek_offset = max(0, self.host.peek_offset - nbytes)
                    case Rewind():
                        self.host.peek_offset = 0
                    case Peek():
                        queue.append(effect)
                    case ShutdownWrite():
                        self.host.shut_write = True
                    case Close(_, reset):
                        self.host.closed = True
                        self.host.reset = reset
                    case Connect() | WatchWritable():
                        pass
        self.to_guest = out
        return out
