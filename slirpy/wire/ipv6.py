"""IPv6 headers (RFC 8200): the fixed header, extension headers walked safely, fragments.

`Ipv6Header` has the fields of `Ipv4Header` the stack uses (src, dst, proto, ttl,
ident, more_fragments, frag_offset, payload), so one code path serves both families.
`proto` is the upper-layer protocol found after the extension headers, and `payload`
starts there.

The walk, bounded and strict: at most MAX_EXTENSIONS headers, each checked against
the bytes there are; hop-by-hop only first (RFC 8200 4.1); options with an "unknown:
discard" action that we do not know drop the packet (4.2); a routing header of type 0
is always dropped (RFC 5095), any other one with segments left too, since slirpy is
never the next hop of a source route (RFC 8200 4.4 would have us answer with a
parameter problem; we drop); a second fragment header drops the packet. The walk stops
at a fragment header of a real fragment: what follows is the fragmentable part, walked
again by `walk_extensions` once reassembled. An atomic fragment (offset 0, M clear,
RFC 6946) is no fragment at all.
"""

from __future__ import annotations

# mypyc builds a dataclass's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

import struct
from dataclasses import dataclass
from typing import Final

from slirpy.wire import Malformed

_HEADER: Final = struct.Struct("!IHBB16s16s")
HEADER_LEN: Final = _HEADER.size  # 40
ADDRESS_LEN: Final = 16
VERSION: Final = 6
_VERSION_SHIFT: Final = 28  # version, traffic class and flow label share the first word
DEFAULT_HOP_LIMIT: Final = 64
_PAYLOAD_LENGTH_OFFSET: Final = 4  # after version, traffic class and flow label
_PAYLOAD_LENGTH: Final = struct.Struct("!H")
_FRAGMENT: Final = struct.Struct("!BxHI")
FRAGMENT_LEN: Final = _FRAGMENT.size  # 8
_FRAG_MORE: Final = 0x0001  # M, the low bit of the offset field
_FRAG_OFFSET_MASK: Final = 0xFFF8  # the offset in 8-byte units, already in bytes in place
FRAGMENT_UNIT: Final = 8  # fragments but the last carry a multiple of 8 bytes
_EXT_UNIT: Final = 8  # extension header lengths count 8-byte units, the first not counted
MAX_EXTENSIONS: Final = 8  # Linux has no limit; 8 is more than any real packet carries

HOP_BY_HOP: Final = 0
ROUTING: Final = 43
FRAGMENT: Final = 44
DEST_OPTIONS: Final = 60
_ROUTING_TYPE_0: Final = 0  # deprecated (RFC 5095)
_ROUTING_TYPE_AT: Final = 2  # routing header: next header, length, routing type, segments left
_SEGMENTS_LEFT_AT: Final = 3
_OPTION_PAD1: Final = 0
_OPTION_PADN: Final = 1
_OPTION_ROUTER_ALERT: Final = 5
_KNOWN_OPTIONS: Final = frozenset({_OPTION_PAD1, _OPTION_PADN, _OPTION_ROUTER_ALERT})
_OPTION_ACTION_SHIFT: Final = 6  # an option type's top two bits: what to do if unknown
_OPTION_ACTION_SKIP: Final = 0

UNSPECIFIED: Final = bytes(ADDRESS_LEN)
ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
_MULTICAST_PREFIX: Final = 0xFF  # ff00::/8
_SOLICITED_NODE_PREFIX: Final = bytes.fromhex("ff0200000000000000000001ff")  # ff02::1:ff00:0/104
_MULTICAST_MAC_PREFIX: Final = b"\x33\x33"  # RFC 2464 7: then the group's low 32 bits


# Classes made per packet write their own __init__ (init=False): mypyc compiles it, but
# leaves a dataclass's generated __init__ interpreted (measured: 40 against 300 ns an
# object, and 480 ns for a NamedTuple).
@dataclass(slots=True, init=False)
class Ipv6Header:
    src: bytes  # 16 bytes, packed
    dst: bytes
    proto: int  # the upper-layer protocol (or, for a fragment, what the fragment holds)
    ttl: int  # the hop limit
    ident: int  # the fragment header's identification, 0 without one
    more_fragments: bool
    frag_offset: int  # bytes
    header: memoryview  # fixed header and the extension headers walked
    payload: memoryview

    def __init__(self, src: bytes, dst: bytes, proto: int, ttl: int, ident: int,
                 more_fragments: bool, frag_offset: int, header: memoryview,
                 payload: memoryview) -> None:
        self.src = src
        self.dst = dst
        self.proto = proto
        self.ttl = ttl
        self.ident = ident
        self.more_fragments = more_fragments
        self.frag_offset = frag_offset
        self.header = header
        self.payload = payload

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0

    @classmethod
    def parse(cls, packet: memoryview) -> Ipv6Header:
        if len(packet) < HEADER_LEN:
            raise Malformed("ipv6-short")
        vtf, payload_len, next_header, hop_limit, src, dst = _HEADER.unpack_from(packet)
        if vtf >> _VERSION_SHIFT != VERSION:
            raise Malformed("ipv6-bad-version")
        if payload_len == 0 and next_header == HOP_BY_HOP:
            raise Malformed("ipv6-jumbogram")  # RFC 2675: never on a link of ours
        if HEADER_LEN + payload_len > len(packet):  # shorter than the frame: padding
            raise Malformed("ipv6-bad-length")
        if is_multicast(src):
            raise Malformed("ipv6-multicast-src")
        body = packet[HEADER_LEN:HEADER_LEN + payload_len]
        proto, offset, fragment = _walk(next_header, body, first=True)
        ident, more, frag_offset = fragment if fragment is not None else (0, False, 0)
        return Ipv6Header(src, dst, proto, hop_limit, ident, more, frag_offset,
                   packet[:HEADER_LEN + offset], body[offset:])


def walk_extensions(next_header: int, data: memoryview) -> tuple[int, memoryview]:
    """The upper-layer protocol and its bytes in a reassembled fragmentable part."""
    proto, offset, fragment = _walk(next_header, data, first=False)
    if fragment is not None:
        raise Malformed("ipv6-nested-fragment")
    return proto, data[offset:]


def _walk(next_header: int, data: memoryview, *, first: bool
          ) -> tuple[int, int, tuple[int, bool, int] | None]:
    """(upper protocol, its offset in *data*, (ident, more, offset) of a fragment header)."""
    offset = 0
    fragment: tuple[int, bool, int] | None = None
    for count in range(MAX_EXTENSIONS + 1):
        if next_header not in (HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTIONS):
            return next_header, offset, fragment
        if count == MAX_EXTENSIONS:
            break
        if next_header == HOP_BY_HOP and not (first and count == 0):
            raise Malformed("ipv6-misplaced-hop-by-hop")
        if len(data) - offset < _EXT_UNIT:  # every extension header is at least 8 bytes
            raise Malformed("ipv6-ext-short")
        if next_header == FRAGMENT:
            if fragment is not None or not first:
                raise Malformed("ipv6-nested-fragment")
            following, frag, ident = _FRAGMENT.unpack_from(data, offset)
            offset += FRAGMENT_LEN
            more, frag_offset = bool(frag & _FRAG_MORE), frag & _FRAG_OFFSET_MASK
            fragment = (ident, more, frag_offset)
            next_header = following
            if more or frag_offset:
                return next_header, offset, fragment  # the rest is the fragmentable part
            continue  # an atomic fragment: the headers go on
        following, units = data[offset], data[offset + 1]
        length = (units + 1) * _EXT_UNIT
        if length > len(data) - offset:
            raise Malformed("ipv6-ext-short")
        if next_header == ROUTING:
            if data[offset + _ROUTING_TYPE_AT] == _ROUTING_TYPE_0:
                raise Malformed("ipv6-routing-type-0")
            if data[offset + _SEGMENTS_LEFT_AT] != 0:
                raise Malformed("ipv6-routing-segments-left")
        else:
            _check_options(data[offset + 2:offset + length])
        offset += length
        next_header = following
    raise Malformed("ipv6-too-many-ext")


def _check_options(options: memoryview) -> None:
    """Hop-by-hop or destination options: known ones and "skip if unknown" pass."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPTION_PAD1:
            i += 1
            continue
        if i + 2 > len(options) or i + 2 + options[i + 1] > len(options):
            raise Malformed("ipv6-option-short")
        if kind not in _KNOWN_OPTIONS and kind >> _OPTION_ACTION_SHIFT != _OPTION_ACTION_SKIP:
            raise Malformed("ipv6-unknown-option")
        i += 2 + options[i + 1]


def build_ipv6(buf: bytearray, offset: int, *, src: bytes, dst: bytes, next_header: int,
               payload_len: int, hop_limit: int = DEFAULT_HOP_LIMIT) -> int:
    """Write a 40-byte IPv6 header at *offset*; return the offset after it."""
    _HEADER.pack_into(buf, offset, VERSION << _VERSION_SHIFT, payload_len, next_header,
                      hop_limit, src, dst)
    return offset + HEADER_LEN


def fill_ipv6_length(buf: bytearray, offset: int, payload_len: int) -> None:
    """Set the payload length of the IPv6 header at *offset*: all a header made once for
    a flow's datagrams needs per datagram (IPv6 has no header checksum, RFC 8200 3)."""
    _PAYLOAD_LENGTH.pack_into(buf, offset + _PAYLOAD_LENGTH_OFFSET, payload_len)


def build_fragment_header(buf: bytearray, offset: int, *, next_header: int, frag_offset: int,
                          more: bool, ident: int) -> int:
    """Write an 8-byte fragment header (*frag_offset* in bytes, a multiple of 8)."""
    _FRAGMENT.pack_into(buf, offset, next_header,
                        frag_offset | (_FRAG_MORE if more else 0), ident)
    return offset + FRAGMENT_LEN


def fragment_offsets6(payload_len: int, mtu: int) -> list[tuple[int, int, bool]]:
    """(start, end, more) for each fragment of a fragmentable part too big for *mtu*."""
    step = (mtu - HEADER_LEN - FRAGMENT_LEN) & -FRAGMENT_UNIT
    return [(start, min(start + step, payload_len), start + step < payload_len)
            for start in range(0, payload_len, step)]


def is_multicast(addr: bytes) -> bool:
    return addr[0] == _MULTICAST_PREFIX


def solicited_node(addr: bytes) -> bytes:
    """The solicited-node multicast address of *addr* (RFC 4291 2.7.1)."""
    return _SOLICITED_NODE_PREFIX + addr[len(_SOLICITED_NODE_PREFIX):]  # its low 24 bits


def multicast_mac(addr: bytes) -> bytes:
    """The Ethernet address of IPv6 multicast group *addr* (RFC 2464 7)."""
    return _MULTICAST_MAC_PREFIX + addr[-4:]
