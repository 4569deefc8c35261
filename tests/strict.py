"""A strict receiver for the frames slirpy sends the guest: every length, every checksum.

`check_to_guest` joins a `ToGuest` effect's headers and payload, parses the frame with
slirpy's own parsers (`slirpy.wire`) and again with the small, independent code here,
and raises AssertionError at the first thing a strict receiver would drop: a wrong
length, a wrong checksum, a TCP data offset under 5, a malformed option, offload
fields that do not point where the guest's kernel will write.

The checksums are computed here word by word (RFC 1071), not with `wire/checksum.py`,
so a bug in slirpy's checksum code or in its parsers' verification cannot hide a bad
frame: the parsers run too, with `verify_checksum=True`, as a second opinion.

With `csum_offset` (VIRTIO_NET_HDR_F_NEEDS_CSUM) the guest's kernel is emulated: it sums
the bytes from `csum_start` to the end, the field as it is, and stores the complement
of the sum at `csum_start + csum_offset`; the completed frame must then be valid.

Fragments are checked at the IP layer, and a first fragment's upper-layer header as
far as it can be alone; datagrams are not reassembled, so a fragmented datagram's
transport checksum is not verified here.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

from slirpy.effects import ToGuest
from slirpy.wire import Malformed
from slirpy.wire.arp import ArpPacket
from slirpy.wire.ethernet import EthernetHeader
from slirpy.wire.icmp import IcmpHeader
from slirpy.wire.ipv4 import Ipv4Header
from slirpy.wire.ipv6 import Ipv6Header
from slirpy.wire.tcp import TcpHeader
from slirpy.wire.udp import UdpHeader

ETH_LEN: Final = 14
ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_IPV6: Final = 0x86DD
ARP_LEN: Final = 28
ETH_MIN_FRAME: Final = 60  # without the FCS: what a short frame may be padded to
IPV4_MIN_HEADER: Final = 20
IPV6_HEADER: Final = 40
IPV6_MIN_MTU: Final = 1280
TCP_MIN_HEADER: Final = 20
UDP_HEADER: Final = 8
ICMP_HEADER: Final = 8
MAX_EXTENSION_HEADERS: Final = 8

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58
EXT_HOP_BY_HOP: Final = 0
EXT_ROUTING: Final = 43
EXT_FRAGMENT: Final = 44
EXT_DEST_OPTIONS: Final = 60
_PROTO_NAMES: Final = {PROTO_ICMP: "ICMP", PROTO_TCP: "TCP", PROTO_UDP: "UDP",
                       PROTO_ICMPV6: "ICMPv6"}
# Where the checksum field sits in each transport header (RFC 9293 3.1, RFC 768).
CHECKSUM_FIELD_OFFSET: Final = {PROTO_TCP: 16, PROTO_UDP: 6}

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_OPT_END: Final = 0
TCP_OPT_NOP: Final = 1
TCP_OPT_MSS: Final = 2
TCP_OPT_WSCALE: Final = 3
TCP_OPT_SACK_PERMITTED: Final = 4
TCP_OPT_TIMESTAMPS: Final = 8
_TCP_OPTION_LENGTHS: Final = {TCP_OPT_MSS: 4, TCP_OPT_WSCALE: 3, TCP_OPT_SACK_PERMITTED: 2,
                              TCP_OPT_TIMESTAMPS: 10}
_TCP_SYN_ONLY_OPTIONS: Final = frozenset({TCP_OPT_MSS, TCP_OPT_WSCALE, TCP_OPT_SACK_PERMITTED})

ICMP_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})  # RFC 792
ICMPV6_ERROR_TYPES: Final = frozenset({1, 2, 3, 4})  # RFC 4443 2.1
# Neighbor Discovery (RFC 4861 4.1-4.5): type -> the message's minimum length in bytes,
# which is also where its options start.
ND_MIN_LENGTHS: Final = {133: 8, 134: 16, 135: 24, 136: 24, 137: 40}
ND_HOP_LIMIT: Final = 255
NA_SOLICITED_FLAG: Final = 0x40000000


class StrictnessError(AssertionError):
    """A frame a strict receiver would drop (an AssertionError, for pytest)."""


class _Datagram(NamedTuple):
    """What the IP layer found in a frame: enough to check the transport layer."""

    src: bytes
    dst: bytes
    proto: int
    l4_offset_bytes: int  # where the upper-layer header starts, from the frame's start
    hop_limit: int
    is_fragment: bool
    is_first_fragment: bool


def check_to_guest(effect: ToGuest) -> None:
    """Raise AssertionError (with a clear message) unless the frame is one a strict
    receiver accepts."""
    frame = bytes(effect.headers) + bytes(effect.payload)
    try:
        _check_frame(effect, frame)
    except Malformed as exc:
        raise StrictnessError(f"slirpy's own parser rejects the frame ({exc.reason})"
                              f"{_describe(effect, frame)}") from exc
    except StrictnessError as exc:
        raise StrictnessError(f"{exc}{_describe(effect, frame)}") from None


def _describe(effect: ToGuest, frame: bytes) -> str:
    offload = (f", csum_start={effect.csum_start} csum_offset={effect.csum_offset} "
               f"gso_size={effect.gso_size}") if effect.csum_start or effect.csum_offset \
        or effect.gso_size else ""
    shown = frame[:96].hex()
    return f"\n  [frame of {len(frame)} bytes{offload}: {shown}{'...' if len(frame) > 96 else ''}]"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StrictnessError(message)


# --- the Internet checksum, independently of slirpy.wire.checksum ---------------------------

def _sum16(data: bytes, initial: int = 0) -> int:
    """The ones' complement sum of *data* as 16-bit big-endian words, folded (RFC 1071).

    An odd length is padded with one zero byte (RFC 1071 4.1, RFC 768, RFC 9293 3.1).
    """
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = initial + sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum_holds(data: bytes, initial: int = 0) -> bool:
    """Whether *data*, which holds its checksum field, sums to all ones (RFC 1071 1)."""
    return _sum16(data, initial) == 0xFFFF


def _pseudo_header_sum(src: bytes, dst: bytes, proto: int, length_bytes: int) -> int:
    """The sum of the IPv4 (RFC 768, RFC 9293 3.1) or IPv6 (RFC 8200 8.1) pseudo-header."""
    if len(src) == 4:
        return _sum16(src + dst + struct.pack("!xBH", proto, length_bytes))
    return _sum16(src + dst + struct.pack("!I3xB", length_bytes, proto))


def _expected_checksum(data: bytes, field_offset: int, initial: int = 0) -> int:
    """The checksum field *data* should hold at *field_offset*."""
    zeroed = data[:field_offset] + b"\0\0" + data[field_offset + 2:]
    return ~_sum16(zeroed, initial) & 0xFFFF


def _field16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 2], "big")


# --- the frame --------------------------------------------------------------------------------

def _check_frame(effect: ToGuest, frame: bytes) -> None:
    _check_offload_fields(effect)
    _require(len(frame) >= ETH_LEN, f"Ethernet: {len(frame)} bytes, shorter than a header")
    eth = EthernetHeader.parse(memoryview(frame))
    _require(not eth.src[0] & 1, f"Ethernet: source MAC {eth.src.hex(':')} is a group "
             "address (IEEE 802: never a source)")
    if eth.ethertype == ETHERTYPE_ARP:
        _require(not effect.csum_offset, "ARP frame with a partial checksum (csum_offset)")
        _check_arp(eth.src, eth.dst, frame)
        return
    if eth.ethertype == ETHERTYPE_IPV4:
        datagram = _check_ipv4(eth.dst, frame)
    elif eth.ethertype == ETHERTYPE_IPV6:
        datagram = _check_ipv6(eth.dst, frame)
    else:
        raise StrictnessError(f"Ethernet: ethertype {eth.ethertype:#06x} is none slirpy "
                              "sends (ARP, IPv4, IPv6)")
    if effect.csum_offset:
        frame = _completed_by_guest_kernel(effect, frame, datagram)
    if datagram.is_fragment:
        if datagram.is_first_fragment:
            _check_first_fragment(datagram, frame[datagram.l4_offset_bytes:])
        return
    _check_transport(datagram, frame[datagram.l4_offset_bytes:])
    if effect.gso_size:
        _check_gso(effect, datagram, frame[datagram.l4_offset_bytes:])


def _check_offload_fields(effect: ToGuest) -> None:
    """The virtio-net fields agree with each other (the tap sends NEEDS_CSUM only with a
    csum_start, and a GSO frame must carry NEEDS_CSUM: virtio 1.1 5.1.6)."""
    _require(min(effect.csum_start, effect.csum_offset, effect.gso_size) >= 0,
             "offload: a negative csum_start, csum_offset or gso_size")
    _require(bool(effect.csum_start) == bool(effect.csum_offset),
             f"offload: csum_start={effect.csum_start} with csum_offset={effect.csum_offset}"
             ": both or neither (the tap asks for NEEDS_CSUM on csum_start alone)")
    _require(not effect.gso_size or effect.csum_offset != 0,
             f"offload: gso_size={effect.gso_size} without a partial checksum (GSO needs "
             "NEEDS_CSUM)")


def _check_arp(src_mac: bytes, dst_mac: bytes, frame: bytes) -> None:
    """ARP for IPv4 over Ethernet (RFC 826): 28 bytes, no trailer but zero padding."""
    packet = frame[ETH_LEN:]
    _require(len(packet) >= ARP_LEN, f"ARP: {len(packet)} bytes, not {ARP_LEN}")
    trailer = packet[ARP_LEN:]
    _require(not trailer or (len(frame) == ETH_MIN_FRAME and not any(trailer)),
             f"ARP: {len(trailer)} bytes after the packet that are not padding to 60")
    arp = ArpPacket.parse(memoryview(packet))
    _require(arp.op in (1, 2), f"ARP: operation {arp.op} (RFC 826: request 1 or reply 2)")
    _require(arp.sender_mac == src_mac, f"ARP: sender MAC {arp.sender_mac.hex(':')} is not "
             f"the frame's source {src_mac.hex(':')}")
    _require(_is_unicast4(arp.sender_ip), f"ARP: sender IP {_ip(arp.sender_ip)} is no "
             "unicast address")
    if arp.op == 2:
        _require(arp.target_mac == dst_mac, "ARP: a reply's target MAC is not the frame's "
                 "destination")


# --- IPv4 (RFC 791) ---------------------------------------------------------------------------

def _check_ipv4(dst_mac: bytes, frame: bytes) -> _Datagram:
    packet = frame[ETH_LEN:]
    _require(len(packet) >= IPV4_MIN_HEADER, f"IPv4: {len(packet)} bytes, shorter than a "
             "header")
    version, ihl_words = packet[0] >> 4, packet[0] & 0x0F
    _require(version == 4, f"IPv4: version {version}")
    header_len = ihl_words * 4
    _require(header_len >= IPV4_MIN_HEADER, f"IPv4: IHL {ihl_words} under 5 (RFC 791)")
    _require(header_len <= len(packet), f"IPv4: IHL {ihl_words} past the frame's end")
    total_len = _field16(packet, 2)
    # RFC 791: the total length is the datagram's; slirpy never pads, so the bytes after
    # the Ethernet header must be exactly that many: no trailing garbage, no truncation.
    _require(total_len == len(packet), f"IPv4: total length {total_len} but {len(packet)} "
             "bytes follow the Ethernet header (RFC 791)")
    _require(_checksum_holds(packet[:header_len]),
             f"IPv4: header checksum {_field16(packet, 10):#06x} is wrong, expected "
             f"{_expected_checksum(packet[:header_len], 10):#06x} (RFC 791, RFC 1071)")
    frag_field = _field16(packet, 6)
    _require(not frag_field & 0x8000, "IPv4: the reserved flag bit is set (RFC 791: zero)")
    more = bool(frag_field & 0x2000)
    frag_offset_bytes = (frag_field & 0x1FFF) * 8
    ttl, proto = packet[8], packet[9]
    src, dst = packet[12:16], packet[16:20]
    data_len = total_len - header_len
    _require(ttl > 0, "IPv4: TTL 0 (RFC 1122 3.2.1.7: a host never sends one)")
    _check_ipv4_options(packet[IPV4_MIN_HEADER:header_len])
    # RFC 1122 3.2.1.3: never from 0.0.0.0 (but to ourselves), a broadcast, a multicast
    # group or loopback; Linux drops such "martian" sources.
    _require(_is_unicast4(src), f"IPv4: source {_ip(src)} is no unicast address "
             "(RFC 1122 3.2.1.3)")
    if dst[0] >> 4 == 0xE:  # RFC 1112 6.4: a group's MAC is 01:00:5e and its low 23 bits
        expected = b"\x01\x00\x5e" + bytes([dst[1] & 0x7F]) + dst[2:]
        _require(dst_mac == expected, f"IPv4: multicast {_ip(dst)} sent to MAC "
                 f"{dst_mac.hex(':')}, not {expected.hex(':')} (RFC 1112 6.4)")
    if more:
        # RFC 791: every fragment but the last holds a multiple of 8 bytes.
        _require(data_len > 0 and data_len % 8 == 0, f"IPv4: a fragment with more to come "
                 f"holds {data_len} bytes, not a multiple of 8 (RFC 791)")
    _require(header_len + frag_offset_bytes + data_len <= 0xFFFF,
             f"IPv4: fragment at {frag_offset_bytes} + {data_len} bytes reassembles past "
             "65535 (RFC 791)")
    parsed = Ipv4Header.parse(memoryview(packet))
    _require((parsed.src, parsed.dst, parsed.proto, parsed.more_fragments,
              parsed.frag_offset, len(parsed.payload)) ==
             (src, dst, proto, more, frag_offset_bytes, data_len),
             "IPv4: slirpy's parser reads the header differently from this checker")
    is_fragment = more or frag_offset_bytes != 0
    _require(proto in (PROTO_ICMP, PROTO_TCP, PROTO_UDP),
             f"IPv4: protocol {proto} is none slirpy sends (ICMP, TCP, UDP)")
    return _Datagram(src, dst, proto, ETH_LEN + header_len, ttl, is_fragment,
                     is_fragment and frag_offset_bytes == 0)


def _check_ipv4_options(options: bytes) -> None:
    """Options (RFC 791 3.1): end, no-op, or type, length >= 2, that many bytes."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            _require(not any(options[i:]), "IPv4: non-zero bytes after the end of options")
            return
        if kind == 1:
            i += 1
            continue
        _require(i + 2 <= len(options) and options[i + 1] >= 2
                 and i + options[i + 1] <= len(options),
                 f"IPv4: option {kind} with a bad length (RFC 791 3.1)")
        i += options[i + 1]


def _is_unicast4(addr: bytes) -> bool:
    return not (addr == bytes(4) or addr == b"\xff" * 4 or addr[0] >> 4 == 0xE
                or addr[0] == 127)


def _ip(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


# --- IPv6 (RFC 8200) --------------------------------------------------------------------------

def _check_ipv6(dst_mac: bytes, frame: bytes) -> _Datagram:
    packet = frame[ETH_LEN:]
    _require(len(packet) >= IPV6_HEADER, f"IPv6: {len(packet)} bytes, shorter than a header")
    version = packet[0] >> 4
    _require(version == 6, f"IPv6: version {version}")
    payload_len = _field16(packet, 4)
    next_header, hop_limit = packet[6], packet[7]
    src, dst = packet[8:24], packet[24:40]
    # RFC 8200 3: the payload length counts everything after the fixed header; slirpy
    # never pads, so it is exactly what the frame holds.
    _require(IPV6_HEADER + payload_len == len(packet),
             f"IPv6: payload length {payload_len} but {len(packet) - IPV6_HEADER} bytes "
             "follow the fixed header (RFC 8200 3)")
    _require(hop_limit > 0, "IPv6: hop limit 0")
    _require(src[0] != 0xFF, f"IPv6: source {_ip(src)} is multicast (RFC 4291 2.7)")
    _require(dst != bytes(16), "IPv6: destination is the unspecified address (RFC 4291 2.5.2)")
    if dst[0] == 0xFF:  # RFC 2464 7: 33:33 and the group's last 32 bits
        expected = b"\x33\x33" + dst[12:]
        _require(dst_mac == expected, f"IPv6: multicast {_ip(dst)} sent to MAC "
                 f"{dst_mac.hex(':')}, not {expected.hex(':')} (RFC 2464 7)")
    proto, l4_offset, fragment = _walk_ipv6_extensions(next_header, packet)
    is_fragment = fragment is not None and (fragment[0] != 0 or fragment[1])
    if fragment is not None and is_fragment:  # an atomic fragment (RFC 6946) is none
        frag_offset_bytes, more, fragmentable_start = fragment
        data_len = len(packet) - fragmentable_start
        if more:
            # RFC 8200 4.5: a fragment with M set that is not a multiple of 8 is discarded.
            _require(data_len > 0 and data_len % 8 == 0, f"IPv6: a fragment with more to "
                     f"come holds {data_len} bytes, not a multiple of 8 (RFC 8200 4.5)")
        _require(fragmentable_start - IPV6_HEADER + frag_offset_bytes + data_len <= 0xFFFF,
                 "IPv6: the fragment reassembles past a 65535-byte payload (RFC 8200 4.5)")
    parsed = Ipv6Header.parse(memoryview(packet))
    found = (parsed.src, parsed.dst, parsed.ttl, parsed.is_fragment)
    _require(found == (src, dst, hop_limit, is_fragment),
             "IPv6: slirpy's parser reads the header differently from this checker")
    if not is_fragment:
        _require((parsed.proto, len(parsed.header)) == (proto, l4_offset),
                 "IPv6: slirpy's parser finds the upper layer elsewhere than this checker")
    _require(proto in (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6),
             f"IPv6: upper-layer protocol {proto} is none slirpy sends (TCP, UDP, ICMPv6)")
    is_first = is_fragment and fragment is not None and fragment[0] == 0
    return _Datagram(src, dst, proto, ETH_LEN + l4_offset, hop_limit, is_fragment, is_first)


def _walk_ipv6_extensions(next_header: int, packet: bytes
                          ) -> tuple[int, int, tuple[int, bool, int] | None]:
    """(upper-layer protocol, its offset in *packet*, (fragment offset in bytes, M flag,
    offset of the fragmentable part) of a fragment header) as RFC 8200 4 lays them out.

    A later fragment's fragmentable part is not walked: it starts mid-datagram.
    """
    offset = IPV6_HEADER
    fragment: tuple[int, bool, int] | None = None
    for count in range(MAX_EXTENSION_HEADERS + 1):
        if next_header not in (EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_DEST_OPTIONS):
            return next_header, offset, fragment
        _require(count < MAX_EXTENSION_HEADERS, "IPv6: more extension headers than any "
                 "sender needs")
        _require(offset + 8 <= len(packet), "IPv6: an extension header past the end")
        if next_header == EXT_HOP_BY_HOP:
            _require(offset == IPV6_HEADER, "IPv6: a hop-by-hop header not right after the "
                     "fixed header (RFC 8200 4.3)")
        if next_header == EXT_FRAGMENT:
            _require(fragment is None, "IPv6: a second fragment header (RFC 8200 4.5)")
            following, reserved, frag_field = packet[offset], packet[offset + 1], \
                _field16(packet, offset + 2)
            # RFC 8200 4.5: the reserved fields are zero on transmission.
            _require(reserved == 0 and not frag_field & 0x0006,
                     "IPv6: a fragment header's reserved bits are set (RFC 8200 4.5)")
            offset += 8
            fragment = (frag_field & 0xFFF8, bool(frag_field & 1), offset)
            next_header = following
            if fragment[0]:
                return next_header, offset, fragment  # not the first: no headers follow
            continue
        following, length = packet[offset], (packet[offset + 1] + 1) * 8
        _require(offset + length <= len(packet), "IPv6: an extension header past the end")
        if next_header == EXT_ROUTING:
            # RFC 5095: type 0 is deprecated; segments left > 0 would make the guest a hop.
            _require(packet[offset + 2] != 0, "IPv6: a type 0 routing header (RFC 5095)")
            _require(packet[offset + 3] == 0, "IPv6: a routing header with segments left "
                     "(RFC 8200 4.4)")
        else:
            _check_ipv6_options(packet[offset + 2:offset + length])
        offset += length
        next_header = following
    raise AssertionError("unreachable")  # the loop returns or fails on its last turn


def _check_ipv6_options(options: bytes) -> None:
    """Hop-by-hop or destination options (RFC 8200 4.2): well formed, and none whose
    unknown-option action is to discard (slirpy sends no option a guest may not know)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        _require(i + 2 <= len(options) and i + 2 + options[i + 1] <= len(options),
                 f"IPv6: option {kind} runs past its header (RFC 8200 4.2)")
        _require(kind in (1, 5) or kind >> 6 == 0,
                 f"IPv6: option {kind:#04x} a receiver that does not know it discards")
        i += 2 + options[i + 1]


# --- offload (virtio-net NEEDS_CSUM and GSO) --------------------------------------------------

def _completed_by_guest_kernel(effect: ToGuest, frame: bytes, datagram: _Datagram) -> bytes:
    """The frame once the guest's kernel filled in its checksum; failing unless the field
    held the pseudo-header sum and the offsets point at the transport checksum."""
    _require(not datagram.is_fragment, "offload: a partial checksum in a fragment")
    name = _PROTO_NAMES.get(datagram.proto, str(datagram.proto))
    field_in_l4 = CHECKSUM_FIELD_OFFSET.get(datagram.proto)
    _require(field_in_l4 is not None, f"offload: a partial checksum for {name}, whose "
             "checksum is neither TCP's nor UDP's")
    _require(effect.csum_start == datagram.l4_offset_bytes,
             f"offload: csum_start {effect.csum_start} is not where the {name} header starts "
             f"({datagram.l4_offset_bytes})")
    _require(effect.csum_offset == field_in_l4,
             f"offload: csum_offset {effect.csum_offset} is not {name}'s checksum field "
             f"({field_in_l4})")
    field = effect.csum_start + effect.csum_offset
    _require(field + 2 <= len(frame), "offload: the checksum field is past the frame's end")
    # The guest's kernel: sum from csum_start to the end, the field as it is, and store
    # the complement; for UDP a result of 0 goes out as 0xFFFF (RFC 768).
    completed_field = ~_sum16(frame[effect.csum_start:]) & 0xFFFF
    if datagram.proto == PROTO_UDP and completed_field == 0:
        completed_field = 0xFFFF
    completed = frame[:field] + completed_field.to_bytes(2, "big") + frame[field + 2:]
    l4_len = len(frame) - effect.csum_start
    pseudo = _pseudo_header_sum(datagram.src, datagram.dst, datagram.proto, l4_len)
    _require(_checksum_holds(completed[effect.csum_start:], pseudo),
             f"offload: the {name} checksum field holds {_field16(frame, field):#06x}, not the "
             f"pseudo-header sum {pseudo:#06x}: completed by the guest it is wrong")
    return completed


def _check_gso(effect: ToGuest, datagram: _Datagram, segment: bytes) -> None:
    """A TCP super-segment the guest's kernel cuts into gso_size pieces."""
    _require(datagram.proto == PROTO_TCP, f"offload: gso_size {effect.gso_size} on "
             f"{_PROTO_NAMES.get(datagram.proto, datagram.proto)}, not TCP")
    header_len = (segment[12] >> 4) * 4
    payload_len = len(segment) - header_len
    _require(payload_len > effect.gso_size, f"offload: gso_size {effect.gso_size} but only "
             f"{payload_len} bytes of TCP payload: nothing to cut")
    _require(not segment[13] & (TCP_SYN | TCP_RST), "offload: a SYN or RST super-segment")


# --- transport --------------------------------------------------------------------------------

def _check_transport(datagram: _Datagram, l4: bytes) -> None:
    if datagram.proto == PROTO_TCP:
        _check_tcp(datagram, l4)
    elif datagram.proto == PROTO_UDP:
        _check_udp(datagram, l4)
    elif datagram.proto == PROTO_ICMP:
        _check_icmp(l4)
    else:
        _check_icmpv6(datagram, l4)


def _check_first_fragment(datagram: _Datagram, l4_part: bytes) -> None:
    """What a first fragment shows of its upper-layer header (RFC 1858 for TCP; RFC 8200
    4.5 / RFC 7112: the whole header chain, upper-layer header included, comes first)."""
    if datagram.proto == PROTO_TCP:
        _require(len(l4_part) >= TCP_MIN_HEADER, "first fragment: TCP header cut short "
                 "(RFC 1858)")
        data_offset = l4_part[12] >> 4
        _require(data_offset >= 5, f"TCP: data offset {data_offset} under 5 (RFC 9293 3.1)")
        _require(data_offset * 4 <= len(l4_part), "first fragment: TCP options cut short")
    elif datagram.proto == PROTO_UDP:
        _require(len(l4_part) >= UDP_HEADER, "first fragment: UDP header cut short")
        length = _field16(l4_part, 4)
        _require(length > len(l4_part), f"UDP: length {length} fits in the first fragment "
                 "of a fragmented datagram (RFC 768)")
        _require(_field16(l4_part, 2) != 0, "UDP: destination port 0")
        _require(_field16(l4_part, 6) != 0, "UDP: checksum 0 (none), which slirpy never "
                 "sends (RFC 8200 8.1 forbids it over IPv6)")
    else:
        _require(len(l4_part) >= ICMP_HEADER, "first fragment: ICMP header cut short")


def _check_tcp(datagram: _Datagram, segment: bytes) -> None:
    """RFC 9293 3.1: the header, its options, and the checksum with the pseudo-header."""
    _require(len(segment) >= TCP_MIN_HEADER, f"TCP: {len(segment)} bytes, shorter than a "
             "header")
    data_offset = segment[12] >> 4
    _require(data_offset >= 5, f"TCP: data offset {data_offset} under 5 (RFC 9293 3.1)")
    header_len = data_offset * 4
    _require(header_len <= len(segment), f"TCP: data offset {data_offset} ({header_len} "
             f"bytes) past the segment's {len(segment)} bytes (RFC 9293 3.1)")
    _require(not segment[12] & 0x0F, "TCP: reserved bits set (RFC 9293 3.1: zero)")
    src_port, dst_port = _field16(segment, 0), _field16(segment, 2)
    _require(src_port != 0 and dst_port != 0, f"TCP: port 0 ({src_port} -> {dst_port})")
    flags = segment[13]
    _require(not (flags & TCP_SYN and flags & (TCP_FIN | TCP_RST)),
             f"TCP: SYN together with FIN or RST (flags {flags:#04x})")
    _check_tcp_options(segment[TCP_MIN_HEADER:header_len], syn=bool(flags & TCP_SYN))
    pseudo = _pseudo_header_sum(datagram.src, datagram.dst, PROTO_TCP, len(segment))
    _require(_checksum_holds(segment, pseudo),
             f"TCP: checksum {_field16(segment, 16):#06x} is wrong, expected "
             f"{_expected_checksum(segment, 16, pseudo):#06x} (RFC 9293 3.1)")
    parsed = TcpHeader.parse(memoryview(segment), datagram.src, datagram.dst,
                             verify_checksum=True)
    _require(len(parsed.payload) == len(segment) - header_len,
             "TCP: slirpy's parser finds a payload of another length")


def _check_tcp_options(options: bytes, *, syn: bool) -> None:
    """Options (RFC 9293 3.2): each kind/length within the header; MSS (RFC 9293 3.7.1),
    window scale (RFC 7323 2.2) and SACK-permitted (RFC 2018) on SYNs only."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == TCP_OPT_END:
            _require(not any(options[i:]), "TCP: non-zero bytes after the end of options")
            return
        if kind == TCP_OPT_NOP:
            i += 1
            continue
        _require(i + 2 <= len(options), f"TCP: option {kind} has no length byte")
        length = options[i + 1]
        _require(length >= 2 and i + length <= len(options),
                 f"TCP: option {kind} of length {length} does not fit (RFC 9293 3.2)")
        expected = _TCP_OPTION_LENGTHS.get(kind)
        _require(expected is None or length == expected,
                 f"TCP: option {kind} of length {length}, not {expected}")
        _require(syn or kind not in _TCP_SYN_ONLY_OPTIONS,
                 f"TCP: option {kind} outside a SYN")
        if kind == TCP_OPT_WSCALE:
            _require(options[i + 2] <= 14, "TCP: window scale over 14 (RFC 7323 2.3)")
        i += length


def _check_udp(datagram: _Datagram, data: bytes) -> None:
    """RFC 768: the length field is the datagram's; the checksum with the pseudo-header."""
    _require(len(data) >= UDP_HEADER, f"UDP: {len(data)} bytes, shorter than a header")
    length = _field16(data, 4)
    _require(length == len(data), f"UDP: length {length} but the IP payload is "
             f"{len(data)} bytes (RFC 768)")
    _require(_field16(data, 2) != 0, "UDP: destination port 0")
    check = _field16(data, 6)
    # 0 means "no checksum": RFC 8200 8.1 forbids it over IPv6, and slirpy's build_udp
    # never sends it over IPv4 either (a computed 0 goes out as 0xFFFF, RFC 768).
    _require(check != 0, f"UDP: checksum 0 (none) over IPv{4 if len(datagram.src) == 4 else 6}"
             f"{' (RFC 8200 8.1)' if len(datagram.src) == 16 else ''}")
    pseudo = _pseudo_header_sum(datagram.src, datagram.dst, PROTO_UDP, length)
    _require(_checksum_holds(data, pseudo),
             f"UDP: checksum {check:#06x} is wrong, expected "
             f"{_expected_checksum(data, 6, pseudo) or 0xFFFF:#06x} (RFC 768)")
    parsed = UdpHeader.parse(memoryview(data), datagram.src, datagram.dst, verify_checksum=True)
    _require(len(parsed.payload) == length - UDP_HEADER,
             "UDP: slirpy's parser finds a payload of another length")


def _check_icmp(message: bytes) -> None:
    """RFC 792: the checksum covers the message alone; errors quote a header and 8 bytes."""
    _require(len(message) >= ICMP_HEADER, f"ICMP: {len(message)} bytes, shorter than a "
             "header")
    _require(_checksum_holds(message), f"ICMP: checksum {_field16(message, 2):#06x} is "
             f"wrong, expected {_expected_checksum(message, 2):#06x} (RFC 792)")
    parsed = IcmpHeader.parse(memoryview(message), verify_checksum=True)
    if parsed.type in ICMP_ERROR_TYPES:
        quote = message[ICMP_HEADER:]
        # RFC 792, RFC 1122 3.2.2: the invoking datagram's header and 8 bytes of its data,
        # which the receiver needs to find the socket.
        _require(len(quote) >= IPV4_MIN_HEADER and quote[0] >> 4 == 4
                 and quote[0] & 0x0F >= 5 and len(quote) >= (quote[0] & 0x0F) * 4 + 8,
                 "ICMP: an error that does not quote an IPv4 header and 8 bytes (RFC 792)")


def _check_icmpv6(datagram: _Datagram, message: bytes) -> None:
    """RFC 4443 2.3: the checksum covers the pseudo-header too; ND per RFC 4861."""
    _require(len(message) >= ICMP_HEADER, f"ICMPv6: {len(message)} bytes, shorter than the "
             "header slirpy sends")
    pseudo = _pseudo_header_sum(datagram.src, datagram.dst, PROTO_ICMPV6, len(message))
    _require(_checksum_holds(message, pseudo),
             f"ICMPv6: checksum {_field16(message, 2):#06x} is wrong, expected "
             f"{_expected_checksum(message, 2, pseudo):#06x} (RFC 4443 2.3)")
    parsed = IcmpHeader.parse(memoryview(message), verify_checksum=True, initial=pseudo)
    if parsed.type in ICMPV6_ERROR_TYPES:
        quote = message[ICMP_HEADER:]
        _require(len(quote) >= IPV6_HEADER + 8 and quote[0] >> 4 == 6,
                 "ICMPv6: an error that does not quote an IPv6 header and 8 bytes")
        # RFC 4443 2.4 (c): no error message is larger than the minimum IPv6 MTU.
        _require(IPV6_HEADER + len(message) <= IPV6_MIN_MTU,
                 f"ICMPv6: an error of {IPV6_HEADER + len(message)} bytes, over 1280 "
                 "(RFC 4443 2.4)")
    if parsed.type in ND_MIN_LENGTHS:
        _check_neighbor_discovery(datagram, parsed.type, parsed.code, message)


def _check_neighbor_discovery(datagram: _Datagram, icmp_type: int, code: int,
                              message: bytes) -> None:
    """What RFC 4861 (6.1, 7.1, 8.1) has a receiver silently discard."""
    _require(datagram.hop_limit == ND_HOP_LIMIT, f"ND: type {icmp_type} with hop limit "
             f"{datagram.hop_limit}, not 255 (RFC 4861)")
    _require(code == 0, f"ND: type {icmp_type} with code {code} (RFC 4861)")
    options_start = ND_MIN_LENGTHS[icmp_type]
    _require(len(message) >= options_start, f"ND: type {icmp_type} of {len(message)} bytes, "
             f"under {options_start} (RFC 4861)")
    if icmp_type == 134:
        _require(datagram.src[:2] == b"\xfe\x80", "ND: a router advertisement not from a "
                 "link-local address (RFC 4861 6.1.2)")
    if icmp_type in (135, 136):
        _require(message[8] != 0xFF, "ND: a multicast target (RFC 4861 7.1)")
    if icmp_type == 136 and datagram.dst[0] == 0xFF:
        flags = int.from_bytes(message[4:8], "big")
        _require(not flags & NA_SOLICITED_FLAG, "ND: a solicited advertisement to a "
                 "multicast address (RFC 4861 7.1.2)")
    options = message[options_start:]
    i = 0
    while i < len(options):
        _require(i + 2 <= len(options), "ND: an option cut short (RFC 4861 4.6)")
        units = options[i + 1]
        _require(units > 0, "ND: an option of length 0 (RFC 4861 4.6)")
        _require(i + units * 8 <= len(options), "ND: an option past the message's end")
        i += units * 8
