"""The whole sans-IO stack as a fuzz target: a program of guest frames, host events and
timers, read from the fuzz input, fed to `Stack.feed` through a model of the runtime.

The input is a program (see `fuzz.data.FuzzInput`): its first byte picks the
configuration (IPv6, offload, the DNS forwarder, host loopback, the egress posture,
forwards and rules, the MTU); then each operation is a guest frame, something the host
side says, a control change or the clock moving on. Guest frames come raw (bytes as
they are), raw with their checksums repaired, or built from fields the input chooses
with valid lengths and checksums, from and to the addresses that matter (ours, the
guest's, multicast, never forwarded, forwards'), so coverage reaches past the
checksums; a TCP segment can answer a conversation the stack opened, with its sequence
numbers; a datagram can be cut into fragments sent in any order.

The runtime model (`FakeHost`) answers effects as slirpy.runtime does: a Send with a
Sent (short as the input says), a Peek with a queued read of the host's bytes at the
peek offset, a Connect with nothing until the input says how it ended, and so on; what
it produces is queued and fed behind the current effects, as the driver does. It keeps
the runtime's side of the contract, so anything that goes wrong is the core's:

- `Stack.feed` raises nothing, whatever the events (the guest frame contract);
- every frame to the guest passes the unit tests' strict receiver (tests/strict.py);
- a local forward's client gets exactly one AdoptStream or RefuseStream;
- the core never consumes host bytes it was not given, peeks at least one byte,
  connects a flow whose socket is open, or asks for a timer it then does not serve
  (a TimerDue at the deadline must move the deadline on, or the loop would spin);
- it keeps no view of a peek's bytes past the event (the runtime reads every peek into
  one buffer): the model scribbles over its buffer after each HostData, so a frame
  held with such a view fails the strict receiver when it leaves.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import struct
from collections import deque
from collections.abc import Callable
from typing import Final, TypeVar

from fuzz.data import FuzzInput
from fuzz.wire_targets import Finding, expect, reference_sum
from slirpy.addresses import Network
from slirpy.config import Config
from slirpy.effects import (AdoptStream, Close, Connect, Consume, Effect, OpenPing, OpenUdp,
                            Peek, RefuseStream, Rewind, Send, SendDatagram, SendTo,
                            ShutdownWrite, ToGuest, WatchWritable)
from slirpy.events import (ConnectFailed, Connected, DnsUpstreams, Event, ForwardAccepted,
                           ForwardDatagram, GuestFrame, HostData, HostDatagram, HostEof,
                           HostError, HostFailed, HostNetworks, HostReset, Readable, Sent,
                           TimerDue, Writable)
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Forward, Kind, LocalForward, Proto, parse_forward
from slirpy.policy.rules import Action, parse_rules
from slirpy.stack import Stack

# The strict receiver of the unit tests, imported by name: the fuzz package needs the
# tests package on the path (the repository's top), and the type check of slirpy and
# fuzz/ stays out of tests/.
check_to_guest: Callable[[ToGuest], None] = importlib.import_module("tests.strict").check_to_guest

MAX_OPS: Final = 48
MAX_EVENTS_PER_OP: Final = 4000  # more than any op can cause; beyond it the core loops
MAX_TIMER_ROUNDS: Final = 64
PEEK_BUFFER_BYTES: Final = 64 * 1024  # slirpy.runtime.streams's reads 256 KiB at most
T0: Final = 1000.0
T = TypeVar("T")

NET: Final = Network()
OUR_MAC: Final = NET.our_mac
GUEST_MAC: Final = bytes.fromhex("020000000064")
BROADCAST_MAC: Final = b"\xff" * 6


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# Addresses a frame from the guest may name: what each kind of destination means to
# the stack (see slirpy.addresses), and sources good, spoofed and odd.
DST4: Final = tuple(map(_ip, (
    "10.0.2.2", "10.0.2.3", "192.0.2.1", "198.51.100.1", "10.0.2.9", "10.0.2.50",
    "203.0.113.5", "255.255.255.255", "10.0.2.255", "127.0.0.1", "224.0.0.251", "0.0.0.0",
    "10.0.2.100", "169.254.1.1", "10.0.2.15", "192.0.2.53")))
SRC4: Final = tuple(map(_ip, ("10.0.2.100", "10.0.2.100", "0.0.0.0", "10.0.2.15", "10.0.2.2",
                              "192.0.2.7", "255.255.255.255", "127.0.0.1")))
DST6: Final = tuple(map(_ip, (
    "fd00::2", "fd00::3", "2001:db8::1", "fe80::2", "ff02::1", "ff02::2", "ff02::1:ff00:2",
    "ff02::16", "::1", "fd00::9", "fd00::100", "fe80::64", "2001:db8::dead", "::",
    "fd00::50", "ff02::1:ff00:100")))
SRC6: Final = tuple(map(_ip, ("fd00::100", "fd00::100", "fe80::64", "::", "fd00::2",
                              "2001:db8::5", "ff02::1", "::1")))
PORTS: Final = (53, 67, 68, 80, 7, 40000, 8080, 9000, 5353, 123, 0, 1, 65535, 22, 443, 547)
MTUS: Final = (1500, 1280, 576, 65520)
ERRNOS: Final = (111, 113, 101, 110, 104, 90, 13, 1, 24, 99)  # ECONNREFUSED, EHOSTUNREACH, ...
SPACES: Final = (0, 1, 536, 65536, 262144, 1 << 22)
ACCEPTS: Final = (1 << 30, 0, 1, 100, 1460, 4096)
TIME_STEPS: Final = (0.0, 0.001, 0.2, 1.0, 3.0, 30.0, 61.0, 121.0, 3600.0, 1e6)

ETH_IPV4: Final = 0x0800
ETH_ARP: Final = 0x0806
ETH_IPV6: Final = 0x86DD
TCP: Final = 6
UDP: Final = 17
ICMP: Final = 1
ICMPV6: Final = 58
TCP_SYN: Final = 0x02
TCP_FIN: Final = 0x01


def _forwards(kind: Kind, specs: tuple[str, ...]) -> list[Forward]:
    return [fwd for spec in specs
            for fwd in parse_forward(kind, spec, guest=NET.guest, gateway=NET.gateway)]


LOCAL4: Final = _forwards(Kind.LOCAL, (
    "127.0.0.1:8080:10.0.2.100:80", "tcppp://127.0.0.1:8081:10.0.2.100:81",
    "udp://127.0.0.1:5353:10.0.2.100:53", "udpspp://127.0.0.1:5354:10.0.2.100:54",
    "udprpc://127.0.0.1:5355:10.0.2.100:55", "127.0.0.1:0:10.0.2.100:82",
    "tcppp://127.0.0.1:8083:10.0.2.100:0"))
LOCAL6: Final = [fwd for spec in ("[::1]:8086:[fd00::100]:86",
                                  "udp://[::1]:5356:[fd00::100]:56")
                 for fwd in parse_forward(Kind.LOCAL, spec, guest=NET.guest6,
                                          gateway=NET.gateway6)]
REMOTE4: Final = _forwards(Kind.REMOTE, (
    "10.0.2.9:80:127.0.0.1:8080", "udp://10.0.2.9:53:127.0.0.1:5353",
    "10.0.2.50:9000:[_x._tcp.example@srv-192.0.2.53]:0",
    "udp://10.0.2.50:5353:[_x._udp.example@srv-192.0.2.53]:0"))
REMOTE6: Final = [fwd for spec in ("[fd00::9]:80:[::1]:8080",)
                  for fwd in parse_forward(Kind.REMOTE, spec, guest=NET.guest6,
                                           gateway=NET.gateway6)]
RULES: Final = (*parse_rules(Action.DENY, "203.0.113.0/24,[2001:db8::dead],tcp://192.0.2.1:22"),
                *parse_rules(Action.ALLOW, "udp://198.51.100.0/24:53"))
# Peers a TCP listener accepts: unicast, a port not 0. A PROXY header (tcppp) or a UDP
# datagram may name anything, port 0 included.
TCP_CLIENTS: Final = tuple((_ip(a), port) for a, port in (
    ("198.51.100.7", 40000), ("127.0.0.1", 50000), ("::1", 50001), ("10.0.2.100", 1),
    ("2001:db8::7", 40001), ("10.0.2.2", 65535), ("::ffff:192.0.2.9", 2)))
CLIENTS: Final = (*TCP_CLIENTS, *((_ip(a), port) for a, port in (
    ("0.0.0.0", 0), ("224.0.0.1", 9), ("198.51.100.7", 0), ("255.255.255.255", 7),
    ("ff02::1", 5))))
# Findings reported and not yet fixed: the program steers around them where this is
# checked, so that a long run finds something else (FUZZ_KNOWN=1 walks into them again).
# None is open now: see fuzz/findings/ for the fixed ones, and git history for how the
# program steered around them.
AVOID_KNOWN: Final = os.environ.get("FUZZ_KNOWN") != "1"
UPSTREAMS: Final = (((_ip("192.0.2.53"), 53),), ((_ip("2001:db8::53"), 53),),
                    ((_ip("127.0.0.53"), 53), (_ip("192.0.2.53"), 5353)))
HOST_NETWORKS: Final = (
    (), (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64")),
    (ipaddress.ip_network("198.51.100.1/32"), ipaddress.ip_network("10.0.2.0/24")))


def make_config(selector: int) -> Config:
    ipv6 = bool(selector & 0x01)
    mtu = MTUS[(selector >> 6) & 0x03]
    if ipv6 and mtu < 1280:
        mtu = 1280
    return Config(ipv6=ipv6, mtu=mtu, dns=not selector & 0x04,
                  host_loopback=not selector & 0x08, routing=not selector & 0x10,
                  rules=RULES if selector & 0x20 else (), udp_flow_limit=8,
                  tcp_conn_limit=8, dns_timeout_s=2.0)


# --- the host side, as slirpy.runtime behaves -----------------------------------------------

@dataclasses.dataclass
class Stream:
    connecting: bool
    queued: bytearray = dataclasses.field(default_factory=bytearray)
    peek_offset: int = 0
    handed: int = 0  # bytes from the queue's start the core has been given (peeked)
    eof: bool = False
    failed: bool = False
    accept: int = 1 << 30
    space: int = 262144


@dataclasses.dataclass(slots=True)
class ReadDue:
    flow: FlowKey


@dataclasses.dataclass
class Conversation:
    """A TCP or UDP conversation the stack sent the guest a segment of."""

    proto: int
    guest: bytes
    guest_port: int
    remote: bytes
    remote_port: int
    next_seq: int = 0  # the stack's next sequence number (TCP)
    ack: int = 0  # what the stack acknowledged: the guest's next sequence number


class FakeHost:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.now = T0
        self.streams: dict[FlowKey, Stream] = {}
        self.datagram_flows: set[FlowKey] = set()
        self.last_datagram: dict[FlowKey, bytes] = {}
        self.watching: set[FlowKey] = set()
        self.read_limits: dict[FlowKey, int] = {}
        self.queue: deque[Event | ReadDue] = deque()
        self.conversations: dict[tuple[int, bytes, int, bytes, int], Conversation] = {}
        self.answers: list[AdoptStream | RefuseStream] = []
        self.next_token = 100
        # As the runtime's: one buffer every peek reads into, its HostData a view of it,
        # valid only while that event is fed (the next read overwrites it).
        self.peek_buffer = bytearray(PEEK_BUFFER_BYTES)

    # --- feeding, as the driver drains its queue ---

    def post(self, event: Event) -> list[Effect]:
        self.queue.append(event)
        effects: list[Effect] = []
        steps = 0
        while self.queue:
            steps += 1
            expect(steps <= MAX_EVENTS_PER_OP, "stack: events never stop coming (a loop)")
            item = self.queue.popleft()
            if isinstance(item, ReadDue):
                limit = self.read_limits.pop(item.flow)
                read = self.read(item.flow, limit)
                if read is None:
                    continue
                item = read
            out = self.stack.feed(item, self.now)
            self.apply(out)
            effects += out
            if isinstance(item, HostData):  # what the core kept of the view goes stale
                self.peek_buffer[:len(item.data)] = b"\xa5" * len(item.data)
        return effects

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case ToGuest():
                    check_to_guest(effect)
                    self.observe(effect.frame)
                case OpenUdp(flow) | OpenPing(flow):
                    self.datagram_flows.add(flow)
                case SendDatagram(flow, data):
                    self.last_datagram[flow] = bytes(data)
                case Send(flow, data):
                    stream = self.streams.get(flow)
                    if stream is None:
                        continue
                    if stream.failed:
                        self.queue.append(HostReset(flow))
                        continue
                    took = 0 if stream.connecting else min(len(data), stream.accept)
                    stream.space = max(0, stream.space - took)
                    self.queue.append(Sent(flow, took, len(data), stream.space))
                case Consume(flow, nbytes):
                    stream = self.streams.get(flow)
                    if stream is None:
                        continue
                    expect(0 <= nbytes <= stream.handed,
                           f"tcp: consumed {nbytes} host bytes, given only {stream.handed}")
                    del stream.queued[:nbytes]
                    stream.handed -= nbytes
                    stream.peek_offset = max(0, stream.peek_offset - nbytes)
                case Peek(flow, limit):
                    expect(limit > 0, f"tcp: a peek of {limit} bytes reads as EOF")
                    if flow not in self.read_limits:
                        self.queue.append(ReadDue(flow))
                    self.read_limits[flow] = limit
                case Rewind(flow):
                    stream = self.streams.get(flow)
                    if stream is not None:
                        stream.peek_offset = 0
                case WatchWritable(flow):
                    if flow in self.streams:
                        self.watching.add(flow)
                case ShutdownWrite():
                    pass
                case Connect(flow):
                    expect(flow not in self.streams, "tcp: Connect on a flow whose socket is open")
                    self.streams[flow] = Stream(connecting=True)
                case Close(flow):
                    self.streams.pop(flow, None)
                    self.watching.discard(flow)
                    self.datagram_flows.discard(flow)
                case SendTo():
                    pass
                case AdoptStream(_, flow):
                    expect(flow not in self.streams, "tcp: adopted onto a flow already open")
                    self.streams[flow] = Stream(connecting=False)
                    self.answers.append(effect)
                case RefuseStream():
                    self.answers.append(effect)
                case _:
                    raise Finding(f"stack: unknown effect {effect!r}")

    def read(self, flow: FlowKey, limit: int) -> Event | None:
        stream = self.streams.get(flow)
        if stream is None or stream.connecting:
            return None
        if stream.failed:
            return HostReset(flow)
        limit = min(limit, PEEK_BUFFER_BYTES)
        chunk = bytes(stream.queued[stream.peek_offset:stream.peek_offset + limit])
        if not chunk:
            return HostEof(flow) if stream.eof else None
        stream.peek_offset += len(chunk)
        stream.handed = max(stream.handed, stream.peek_offset)
        self.peek_buffer[:len(chunk)] = chunk
        return HostData(flow, memoryview(self.peek_buffer)[:len(chunk)],
                        more=len(chunk) == limit or stream.eof)

    def observe(self, frame: bytes) -> None:
        """Remember the TCP and UDP conversations the stack speaks to the guest in."""
        if len(frame) < 14:
            return
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETH_IPV4 and len(frame) >= 34:
            header_len = (frame[14] & 0x0F) * 4
            if int.from_bytes(frame[20:22], "big") & 0x3FFF:
                return  # a fragment
            proto, src, dst, l4 = frame[23], frame[26:30], frame[30:34], 14 + header_len
        elif ethertype == ETH_IPV6 and len(frame) >= 54:
            proto, src, dst, l4 = frame[20], frame[22:38], frame[38:54], 54
        else:
            return
        if proto not in (TCP, UDP) or len(frame) < l4 + 8:
            return
        sport, dport = struct.unpack_from("!HH", frame, l4)
        key = (proto, dst, dport, src, sport)
        conv = self.conversations.get(key)
        if conv is None:
            if len(self.conversations) >= 16:
                self.conversations.pop(next(iter(self.conversations)))
            conv = self.conversations[key] = Conversation(proto, dst, dport, src, sport)
        if proto == TCP and len(frame) >= l4 + 20:
            seq, ack, offset, flags = struct.unpack_from("!IIBB", frame, l4 + 4)
            data_len = len(frame) - l4 - (offset >> 4) * 4
            conv.next_seq = (seq + max(0, data_len) + (1 if flags & TCP_SYN else 0)
                             + (1 if flags & TCP_FIN else 0)) & 0xFFFFFFFF
            conv.ack = ack


# --- frames from the guest ------------------------------------------------------------------


def _pick(inp: FuzzInput, fixed: tuple[T, ...], other: Callable[[], T]) -> T:
    """One of *fixed*, or (one time in len(fixed) + 1) whatever *other* reads."""
    index = inp.byte() % (len(fixed) + 1)
    return fixed[index] if index < len(fixed) else other()


def _delta(inp: FuzzInput) -> int:
    """How far from the expected sequence number: mostly not at all."""
    return _pick(inp, (0, 0, 0, 1, -1), lambda: inp.s8() if inp.flag() else inp.u32())


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    if len(src) == 4:
        return reference_sum(src + dst + struct.pack("!xBH", proto, length))
    return reference_sum(src + dst + struct.pack("!I3xB", length, proto))


def _with_checksum(l4: bytearray, at: int, initial: int) -> bytearray:
    if at + 2 <= len(l4):
        l4[at:at + 2] = b"\0\0"
        struct.pack_into("!H", l4, at, ~reference_sum(bytes(l4), initial) & 0xFFFF)
    return l4


def _tcp(inp: FuzzInput, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
         flags: int) -> bytearray:
    options = inp.chunk(40) if inp.flag() else b""
    options += b"\x01" * (-len(options) % 4)  # NOP padding to whole words
    window = inp.u16()
    payload = inp.chunk(1600)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4,
                         flags, window, 0, 0)
    segment = bytearray(header + options + payload)
    return _with_checksum(segment, 16, _pseudo(src, dst, TCP, len(segment)))


def _udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytearray:
    datagram = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    _with_checksum(datagram, 6, _pseudo(src, dst, UDP, len(datagram)))
    if datagram[6:8] == b"\0\0":
        datagram[6:8] = b"\xff\xff"
    return datagram


def _dhcp_payload(inp: FuzzInput) -> bytes:
    """A BOOTREQUEST from the guest's MAC with the input's options."""
    kind = inp.byte() % 10
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 0, inp.u32(), 0,
                        inp.u16() & 0x8000, inp.take(4).ljust(4, b"\0"), bytes(4), bytes(4),
                        bytes(4), GUEST_MAC.ljust(16, b"\0"), b"", b"", b"\x63\x82\x53\x63")
    options = bytes((53, 1, kind)) + inp.chunk(80)
    if inp.flag():
        options += bytes((50, 4)) + inp.choice(DST4 + SRC4)
    return fixed + options + b"\xff"


QNAMES: Final = (b"\x07example\x03com\x00", b"\x00", b"\x01a\x04test\x00", b"\xc0\x0c")


def _dns_query(inp: FuzzInput) -> bytes:
    labels = _pick(inp, QNAMES, lambda: inp.chunk(64))
    header = struct.pack("!HHHHHH", inp.u16(), inp.u16() & 0x7FFF, 1 + inp.byte() % 2, 0, 0, 0)
    return header + labels + struct.pack("!HH", inp.choice((1, 28, 33, 255)), 1) + inp.chunk(32)


def _l4(inp: FuzzInput, src: bytes, dst: bytes, v6: bool) -> tuple[int, bytearray]:
    """An upper-layer message from the guest with valid lengths and checksum."""
    match inp.byte() % 8:
        case 0 | 1:
            return TCP, _tcp(inp, src, dst, inp.choice(PORTS), inp.choice(PORTS), inp.u32(),
                             inp.u32(), inp.byte())
        case 2 | 3:
            sport, dport = inp.choice(PORTS), inp.choice(PORTS)
            match inp.byte() % 4:
                case 0:
                    payload = _dhcp_payload(inp)
                case 1:
                    payload = _dns_query(inp)
                case _:
                    payload = inp.chunk(1600)
            return UDP, _udp(src, dst, sport, dport, payload)
        case 4 | 5:
            proto = ICMPV6 if v6 else ICMP
            icmp_type = _pick(inp, (128, 133, 135, 136, 143, 1) if v6 else (8, 8, 0, 3, 13),
                              inp.byte)
            code = inp.byte() if inp.byte() & 0x80 else 0
            rest = inp.take(4).ljust(4, b"\0")
            body = bytearray()
            if v6 and icmp_type in (135, 136):
                body += inp.choice(DST6)
                if inp.flag():
                    body += bytes((1 if icmp_type == 135 else 2, 1)) + GUEST_MAC
            body += inp.chunk(1600)
            message = bytearray(struct.pack("!BBH4s", icmp_type, code, 0, rest) + body)
            initial = _pseudo(src, dst, ICMPV6, len(message)) if v6 else 0
            return proto, _with_checksum(message, 2, initial)
        case _:
            return inp.byte(), bytearray(inp.chunk(256))


def _ethernet(inp: FuzzInput, ethertype: int, dst_ip: bytes) -> bytes:
    match inp.byte() % 8:
        case 0:
            dst_mac = BROADCAST_MAC
        case 1:
            dst_mac = b"\x33\x33" + dst_ip[-4:]
        case 2:
            dst_mac = inp.take(6).ljust(6, b"\0")
        case _:
            dst_mac = OUR_MAC
    src_mac = inp.take(6).ljust(6, b"\0") if inp.byte() == 0xFF else GUEST_MAC
    return dst_mac + src_mac + struct.pack("!H", ethertype)


def _ipv4(inp: FuzzInput, src: bytes, dst: bytes, proto: int, payload_len: int, *,
          frag: int | None = None, ident: int | None = None) -> bytes:
    options = b""
    if inp.byte() == 0xFF:
        options = inp.chunk(40)
        options += b"\0" * (-len(options) % 4)
    if frag is None:
        frag = 0x4000 if inp.byte() < 0xF0 else inp.u16()
    ttl = inp.choice((64, 1, 0, 255))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0,
                                   20 + len(options) + payload_len,
                                   inp.u16() if ident is None else ident, frag, ttl, proto, 0,
                                   src, dst) + options)
    return bytes(_with_checksum(header, 10, 0))


def _ipv6(inp: FuzzInput, src: bytes, dst: bytes, proto: int, payload_len: int, *,
          extensions: bytes = b"", first: int | None = None) -> bytes:
    hop_limit = inp.choice((64, 255, 1, 0))
    next_header = proto if first is None else first
    return struct.pack("!IHBB16s16s", 6 << 28, len(extensions) + payload_len, next_header,
                       hop_limit, src, dst) + extensions


def _extensions(inp: FuzzInput, proto: int) -> tuple[int, bytes]:
    """(first next header, bytes) of 0 to 3 extension headers before *proto*."""
    kinds = [inp.choice((0, 60, 43, 44)) for _ in range(inp.byte() % 4)]
    out = b""
    following = proto
    for kind in reversed(kinds):
        if kind == 44:
            header = struct.pack("!BxHI", following, inp.u16() & 0xFFF9 if inp.flag() else 0,
                                 inp.u32())
        else:
            body = inp.chunk(22)
            body += b"\x00" * (-(len(body) + 2) % 8)  # Pad1 up to a whole unit
            header = bytes((following, (len(body) + 2) // 8 - 1)) + body
        out = header + out
        following = kind
    return following, out


def templated_frame(inp: FuzzInput, ipv6: bool) -> bytes:
    """An IPv4 or IPv6 datagram from the guest, fields from the input, lengths right."""
    v6 = ipv6 and inp.flag()
    src = inp.choice(SRC6 if v6 else SRC4)
    dst = inp.choice(DST6 if v6 else DST4)
    proto, l4 = _l4(inp, src, dst, v6)
    if v6:
        first, extensions = _extensions(inp, proto) if inp.byte() >= 0xC0 else (proto, b"")
        ip = _ipv6(inp, src, dst, proto, len(l4), extensions=extensions, first=first)
        return _ethernet(inp, ETH_IPV6, dst) + ip + l4
    return _ethernet(inp, ETH_IPV4, dst) + _ipv4(inp, src, dst, proto, len(l4)) + l4


def fragmented_frames(inp: FuzzInput, ipv6: bool) -> list[bytes]:
    """One datagram cut into fragments, sent in an order the input picks (repeats too)."""
    v6 = ipv6 and inp.flag()
    src = inp.choice(SRC6[:2] if v6 else SRC4[:2])
    dst = inp.choice(DST6 if v6 else DST4)
    proto, l4 = _l4(inp, src, dst, v6)
    step = 8 * (1 + inp.byte() % 64)
    pieces = [(start, l4[start:start + step], start + step < len(l4))
              for start in range(0, max(len(l4), 1), step)]
    order = [inp.byte() % len(pieces) for _ in range(len(pieces) + inp.byte() % 3)]
    order += [i for i in range(len(pieces)) if i not in order]
    ident = inp.u32()
    eth = _ethernet(inp, ETH_IPV6 if v6 else ETH_IPV4, dst)
    frames = []
    for index in order[:64]:
        start, piece, more = pieces[index]
        if v6:
            frag = struct.pack("!BxHI", proto, start | more, ident)
            ip = _ipv6(inp, src, dst, proto, len(piece), extensions=frag, first=44)
        else:
            ip = _ipv4(inp, src, dst, proto, len(piece), frag=(start // 8) | (0x2000 * more),
                       ident=ident & 0xFFFF)
        frames.append(eth + ip + bytes(piece))
    return frames


def conversation_frame(inp: FuzzInput, conv: Conversation) -> bytes:
    """A segment or datagram from the guest in a conversation the stack started or
    answered: its ports, and for TCP sequence numbers near what the stack expects."""
    src, dst = conv.guest, conv.remote
    v6 = len(src) == 16
    if conv.proto == TCP:
        seq = (conv.ack + _delta(inp)) & 0xFFFFFFFF
        ack = (conv.next_seq + _delta(inp)) & 0xFFFFFFFF
        flags = _pick(inp, (0x10, 0x18, 0x11, 0x12, 0x04, 0x14, 0x19), inp.byte)
        l4 = _tcp(inp, src, dst, conv.guest_port, conv.remote_port, seq, ack, flags)
        proto = TCP
    else:
        l4 = _udp(src, dst, conv.guest_port, conv.remote_port, inp.chunk(1600))
        proto = UDP
    if v6:
        return _ethernet(inp, ETH_IPV6, dst) + _ipv6(inp, src, dst, proto, len(l4)) + bytes(l4)
    return _ethernet(inp, ETH_IPV4, dst) + _ipv4(inp, src, dst, proto, len(l4)) + bytes(l4)


def arp_frame(inp: FuzzInput) -> bytes:
    op = _pick(inp, (1, 2, 1), inp.u16)
    sender = inp.choice(SRC4)
    target = inp.choice(DST4)
    eth = (BROADCAST_MAC if inp.flag() else OUR_MAC) + GUEST_MAC + struct.pack("!H", ETH_ARP)
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, GUEST_MAC, sender,
                             bytes(6), target) + inp.take(inp.byte() % 20)


def repaired(frame: bytes) -> bytes:
    """*frame* with its IPv4 header checksum and its transport checksum made right."""
    raw = bytearray(frame)
    if len(raw) < 14:
        return frame
    ethertype = int.from_bytes(raw[12:14], "big")
    if ethertype == ETH_IPV4 and len(raw) >= 34:
        header_len = (raw[14] & 0x0F) * 4
        if header_len < 20 or 14 + header_len > len(raw):
            return frame
        raw[14:14 + header_len] = _with_checksum(raw[14:14 + header_len], 10, 0)
        total = min(int.from_bytes(raw[16:18], "big"), len(raw) - 14)
        proto, src, dst = raw[23], bytes(raw[26:30]), bytes(raw[30:34])
        start, end = 14 + header_len, 14 + max(total, header_len)
    elif ethertype == ETH_IPV6 and len(raw) >= 54:
        proto, src, dst = raw[20], bytes(raw[22:38]), bytes(raw[38:54])
        start, end = 54, min(54 + int.from_bytes(raw[18:20], "big"), len(raw))
    else:
        return frame
    l4 = raw[start:end]
    at = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}.get(proto)
    if at is not None:
        initial = 0 if proto == ICMP else _pseudo(src, dst, proto, len(l4))
        raw[start:end] = _with_checksum(l4, at, initial)
    return bytes(raw)


# --- the host side's answers, built from the input --------------------------------------

def dns_answer(inp: FuzzInput, query: bytes) -> bytes:
    """A response to *query* (its id and question), with the input's records."""
    if len(query) < 12:
        return inp.chunk(512)
    flags = 0x8180 | (inp.byte() & 0x0F if inp.byte() >= 0xC0 else 0)
    counts = struct.pack("!HHH", inp.byte() % 4, inp.byte() % 2, inp.byte() % 3)
    header = query[:2] + struct.pack("!HH", flags, int.from_bytes(query[4:6], "big")) + counts
    records = bytearray()
    for _ in range(inp.byte() % 4):
        name = inp.choice((b"\xc0\x0c", b"\x00", b"\x03_x_\x04_tcp\x07example\x00", b"\xc0\x0d"))
        rtype = _pick(inp, (1, 28, 33, 5, 41, 16), inp.u16)
        match rtype:
            case 1:
                rdata = _pick(inp, (_ip("192.0.2.80"), _ip("127.0.0.1")), lambda: inp.take(4))
            case 28:
                rdata = _pick(inp, (_ip("2001:db8::80"), _ip("::1")), lambda: inp.take(16))
            case 33:
                rdata = struct.pack("!HHH", inp.u16(), inp.u16(), inp.u16()) + _pick(
                    inp, (b"\x04host\x07example\x00", b"\x00", b"\xc0\x0c"),
                    lambda: inp.chunk(32))
            case _:
                rdata = inp.chunk(64)
        records += name + struct.pack("!HHIH", rtype, inp.choice((1, 1, 255)), inp.u32(),
                                      len(rdata)) + rdata
    return bytes(header + query[12:] + records + inp.chunk(16))


def spp_datagram(inp: FuzzInput) -> bytes:
    client = inp.choice(CLIENTS)[0]
    proxy = inp.choice(CLIENTS)[0]
    mapped = [a if len(a) == 16 else b"\0" * 10 + b"\xff\xff" + a for a in (client, proxy)]
    return struct.pack("!H16s16sHH", 0x56EC, mapped[0], mapped[1], inp.u16(),
                       inp.u16()) + inp.chunk(512)


# --- the program ----------------------------------------------------------------------------

def fuzz_stack(data: bytes) -> None:
    inp = FuzzInput(data)
    selector = inp.byte()
    config = make_config(selector)
    stack = Stack(config, secret=b"fuzz", offload=bool(selector & 0x02))
    forwards: dict[int, Forward] = {}
    if selector & 0x20:
        for forward_id, fwd in enumerate([*LOCAL4, *REMOTE4,
                                          *(LOCAL6 + REMOTE6 if config.ipv6 else [])], 1):
            stack.control.add(forward_id, fwd)
            forwards[forward_id] = fwd
    host = FakeHost(stack)
    if config.dns:
        host.post(DnsUpstreams(inp.choice(UPSTREAMS)))
    for _ in range(MAX_OPS):
        if inp.exhausted:
            break
        _operation(inp, host, config, forwards)
    _check_deadline(host)
    stack.stats.drop_counts()
    stack.stats.flows(host.now)
    stack.stats.describe_tcp()


def _operation(inp: FuzzInput, host: FakeHost, config: Config,
               forwards: dict[int, Forward]) -> None:
    op = inp.byte()
    match op % 24:
        case 0 | 1:
            host.post(GuestFrame(inp.chunk(2048), checksum_ok=inp.flag()))
        case 2:
            host.post(GuestFrame(repaired(inp.chunk(2048)), checksum_ok=inp.flag()))
        case 3 | 4 | 5 | 6:
            host.post(GuestFrame(templated_frame(inp, config.ipv6), checksum_ok=inp.byte() > 0xF0))
        case 7:
            for frame in fragmented_frames(inp, config.ipv6):
                host.post(GuestFrame(frame))
        case 8 | 9 | 10 | 11:
            if host.conversations:
                conv = inp.choice(list(host.conversations.values()))
                host.post(GuestFrame(conversation_frame(inp, conv)))
            else:
                host.post(GuestFrame(templated_frame(inp, config.ipv6)))
        case 12:
            host.post(GuestFrame(arp_frame(inp)))
        case 13:
            _timer(inp, host)
        case 14:
            _connect_result(inp, host)
        case 15 | 16:
            _host_stream(inp, host)
        case 17 | 18:
            _host_datagram(inp, host)
        case 19:
            _forward_accepted(inp, host, forwards)
        case 20:
            _forward_datagram(inp, host, forwards)
        case 21:
            host.post(HostNetworks(inp.choice(HOST_NETWORKS)))
            if config.dns:
                host.post(DnsUpstreams(inp.choice(UPSTREAMS)))
        case 22:
            _control(inp, host, forwards)
        case _:
            _timer(inp, host)


def _timer(inp: FuzzInput, host: FakeHost) -> None:
    host.now += inp.choice(TIME_STEPS) + inp.byte() / 64
    for _ in range(MAX_TIMER_ROUNDS):
        deadline = host.stack.next_deadline()
        if deadline is None or deadline > host.now:
            return
        host.post(TimerDue())
    _check_deadline(host)


def _check_deadline(host: FakeHost) -> None:
    """A TimerDue at the deadline must move it on; the driver would spin otherwise."""
    deadline = host.stack.next_deadline()
    if deadline is not None and deadline <= host.now:
        host.post(TimerDue())
        after = host.stack.next_deadline()
        expect(after is None or after > host.now,
               f"timers: deadline {after} still due at {host.now} after TimerDue")


def _pick_stream(inp: FuzzInput, host: FakeHost, *, connecting: bool) -> FlowKey | None:
    keys = [k for k, s in host.streams.items() if s.connecting == connecting]
    return inp.choice(keys) if keys else None


def _connect_result(inp: FuzzInput, host: FakeHost) -> None:
    flow = _pick_stream(inp, host, connecting=True)
    if flow is None:
        return
    stream = host.streams[flow]
    match inp.byte() % 4:
        case 0 | 1:
            stream.connecting = False
            stream.space = inp.choice(SPACES)
            host.post(Connected(flow, stream.space))
        case 2:
            del host.streams[flow]
            host.post(ConnectFailed(flow, inp.choice(ERRNOS)))
        case _:  # the handshake completed and the peer reset before we looked
            stream.connecting = False
            stream.failed = True
            host.post(Connected(flow, 0))
            host.post(HostReset(flow))


def _host_stream(inp: FuzzInput, host: FakeHost) -> None:
    flow = _pick_stream(inp, host, connecting=False)
    if flow is None:
        return
    stream = host.streams[flow]
    match inp.byte() % 8:
        case 0 | 1 | 2:
            if not stream.eof:
                stream.queued += inp.chunk(4096) or b"x"
            host.post(Readable(flow))
        case 3:
            stream.eof = True
            host.post(Readable(flow))
        case 4:
            stream.failed = True
            host.post(HostReset(flow))
        case 5:
            if flow in host.watching:
                host.watching.discard(flow)
                stream.space = inp.choice(SPACES[1:])
                host.post(Writable(flow, stream.space))
        case 6:
            stream.accept = inp.choice(ACCEPTS)
            stream.space = inp.choice(SPACES)
        case _:
            host.post(Readable(flow))


def _host_datagram(inp: FuzzInput, host: FakeHost) -> None:
    if not host.datagram_flows:
        return
    flow = inp.choice(sorted(host.datagram_flows))
    match inp.byte() % 6:
        case 0 | 1:
            data = dns_answer(inp, host.last_datagram.get(flow, b""))
        case 2:
            error = HostError(inp.choice(ERRNOS), inp.choice((None, 3, 11, 12, 1, 2, 4)),
                              inp.byte() % 16, inp.choice((0, 576, 1280, 1400, 68, 65535)))
            host.post(HostFailed(flow, error))
            return
        case 3 if flow.proto in (ICMP, ICMPV6):  # a ping socket's echo reply
            kind = 0 if flow.proto == ICMP else 129
            data = struct.pack("!BBHHH", kind, 0, 0, flow.guest_port, inp.u16()) + inp.chunk(256)
        case _:
            data = inp.chunk(2048)
    host.post(HostDatagram(flow, data))


def _forward_accepted(inp: FuzzInput, host: FakeHost, forwards: dict[int, Forward]) -> None:
    local = [i for i, f in forwards.items()
             if isinstance(f, LocalForward) and f.transport == "tcp"]
    if not local:
        return
    forward_id = inp.choice(local)
    if forwards[forward_id].proto is Proto.TCPPP:  # who the PROXY header says
        client = inp.choice(CLIENTS)
        guest_port = inp.choice((0, 80, 81, 1, 65535))
    else:
        client, guest_port = inp.choice(TCP_CLIENTS), 0
    host.next_token += 1
    token = host.next_token
    host.answers = []
    host.post(ForwardAccepted(token, forward_id, client, inp.choice(SPACES), guest_port))
    mine = [a for a in host.answers if a.token == token]
    expect(len(mine) == 1, f"forward: a client got {len(mine)} answers, not one")


def _forward_datagram(inp: FuzzInput, host: FakeHost, forwards: dict[int, Forward]) -> None:
    local = [i for i, f in forwards.items()
             if isinstance(f, LocalForward) and f.transport == "udp"]
    if not local:
        return
    data = spp_datagram(inp) if inp.flag() else inp.chunk(1024)
    host.post(ForwardDatagram(inp.choice(local), inp.choice(CLIENTS), data))


def _control(inp: FuzzInput, host: FakeHost, forwards: dict[int, Forward]) -> None:
    """Between events, as the control socket does: a forward removed, or added back."""
    if not forwards:
        return
    forward_id = inp.choice(sorted(forwards))
    control = host.stack.control
    if forward_id in control.local or forward_id in control.remote_ids:
        control.remove(forward_id)
    else:
        control.add(forward_id, forwards[forward_id])
