"""Fuzz targets for the wire parsers, one function each: raise on a finding.

Every parser may raise `Malformed` and nothing else; the target lets Malformed pass
and any other exception out. Where a parse succeeded, the target also checks what
the header promises (a payload inside the input, a valid checksum where one was
verified) and, where a builder exists, that building the parsed fields again gives
the bytes parsed. The first byte or two of an input often pick a variant (an address
family, whether to verify or to repair a checksum) so that coverage can reach what a
random checksum would hide.
"""

from __future__ import annotations

import struct
from typing import Final

from fuzz.data import FuzzInput
from slirpy.wire import Malformed
from slirpy.wire.arp import ArpPacket, build_arp
from slirpy.wire.checksum import checksum, finish, fold, ones_sum, pseudo_header_sum
from slirpy.wire.dhcp import DhcpMessage
from slirpy.wire.dns import DnsQuery, addresses_for, build_error_reply, parse_response, pick_srv
from slirpy.wire.ethernet import EthernetHeader
from slirpy.wire.icmp import IcmpHeader
from slirpy.wire.icmpv6 import NeighborMessage, parse_options
from slirpy.wire.ipv4 import Ipv4Header
from slirpy.wire.ipv6 import Ipv6Header, walk_extensions
from slirpy.wire.proxy import (SPP_HEADER_LEN, V2_FIXED_LEN, build_spp, parse_proxy_header,
                               parse_spp)
from slirpy.wire.tcp import TcpHeader
from slirpy.wire.udp import UdpHeader

SRC4: Final = bytes((10, 0, 2, 100))
DST4: Final = bytes((192, 0, 2, 1))
SRC6: Final = bytes.fromhex("fd000000000000000000000000000100")
DST6: Final = bytes.fromhex("20010db8000000000000000000000001")
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58
IPV6_EXTENSIONS: Final = frozenset({0, 43, 44, 60})


class Finding(AssertionError):
    """A parser broke a promise without raising anything unexpected."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Finding(message)


def reference_sum(data: bytes, initial: int = 0) -> int:
    """The ones' complement sum of 16-bit words with end-around carry (RFC 1071 4.1),
    word by word: a second opinion on slirpy.wire.checksum."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _repair(data: bytearray, at: int, initial: int = 0) -> None:
    """Write into *data* at *at* the checksum that makes it sum to all ones."""
    if at + 2 <= len(data):
        data[at:at + 2] = b"\0\0"
        struct.pack_into("!H", data, at, ~reference_sum(bytes(data), initial) & 0xFFFF)


def _is_suffix(part: memoryview, whole: bytes) -> bool:
    return whole.endswith(bytes(part))


# --- layer 2 and 3 ------------------------------------------------------------------------

def fuzz_ethernet(data: bytes) -> None:
    try:
        eth = EthernetHeader.parse(memoryview(data))
    except Malformed:
        return
    expect(bytes(eth.dst) + bytes(eth.src) == data[:12], "ethernet: addresses")
    expect(eth.ethertype == int.from_bytes(data[12:14], "big"), "ethernet: type")
    expect(bytes(eth.payload) == data[14:], "ethernet: payload")


def fuzz_arp(data: bytes) -> None:
    try:
        arp = ArpPacket.parse(memoryview(data))
    except Malformed:
        return
    rebuilt = bytearray(28)
    build_arp(rebuilt, 0, op=arp.op, sender_mac=arp.sender_mac, sender_ip=arp.sender_ip,
              target_mac=arp.target_mac, target_ip=arp.target_ip)
    expect(bytes(rebuilt) == data[:28], "arp: rebuilt packet differs")


def fuzz_ipv4(data: bytes) -> None:
    inp = FuzzInput(data)
    repair = inp.flag()
    packet = bytearray(inp.rest())
    header_len = (packet[0] & 0x0F) * 4 if packet else 0
    if repair and 20 <= header_len <= len(packet):
        header = packet[:header_len]
        _repair(header, 10)
        packet[:header_len] = header
    try:
        ip = Ipv4Header.parse(memoryview(packet))
    except Malformed:
        return
    total_len = int.from_bytes(packet[2:4], "big")
    expect(bytes(ip.header) == bytes(packet[:header_len]), "ipv4: header view")
    expect(bytes(ip.payload) == bytes(packet[header_len:total_len]), "ipv4: payload view")
    expect(reference_sum(bytes(ip.header)) == 0xFFFF, "ipv4: accepted a bad checksum")
    expect(ip.frag_offset % 8 == 0 and ip.frag_offset < 65536, "ipv4: fragment offset")
    expect((ip.src, ip.dst) == (bytes(packet[12:16]), bytes(packet[16:20])), "ipv4: addresses")


def fuzz_ipv6(data: bytes) -> None:
    try:
        ip = Ipv6Header.parse(memoryview(data))
    except Malformed:
        pass
    else:
        payload_len = int.from_bytes(data[4:6], "big")
        expect(len(ip.header) + len(ip.payload) == 40 + payload_len, "ipv6: lengths")
        expect(bytes(ip.header) == data[:len(ip.header)], "ipv6: header view")
        expect(bytes(ip.header) + bytes(ip.payload) == data[:40 + payload_len], "ipv6: views")
        if not ip.is_fragment:
            expect(ip.proto not in IPV6_EXTENSIONS, "ipv6: stopped on an extension header")
        else:
            expect(ip.frag_offset % 8 == 0, "ipv6: fragment offset")
    # The walk of a reassembled fragmentable part, on its own.
    if data:
        try:
            proto, upper = walk_extensions(data[0], memoryview(data)[1:])
        except Malformed:
            return
        expect(proto not in IPV6_EXTENSIONS, "ipv6: walk stopped on an extension header")
        expect(_is_suffix(upper, data), "ipv6: walk's payload is not the rest")


# --- layer 4 ------------------------------------------------------------------------------

def _l4_variant(inp: FuzzInput) -> tuple[bytes, bytes, bool, bool]:
    """(src, dst, verify the checksum, repair it first) from the input's first byte."""
    choice = inp.byte()
    src, dst = (SRC6, DST6) if choice & 1 else (SRC4, DST4)
    return src, dst, not choice & 2, bool(choice & 4)


def fuzz_udp(data: bytes) -> None:
    inp = FuzzInput(data)
    src, dst, verify, repair = _l4_variant(inp)
    datagram = bytearray(inp.rest())
    if repair and len(datagram) >= 8:
        length = int.from_bytes(datagram[4:6], "big")
        if 8 <= length <= len(datagram):
            body = datagram[:length]
            _repair(body, 6, pseudo_header_sum(src, dst, PROTO_UDP, length))
            datagram[:length] = body
    try:
        udp = UdpHeader.parse(memoryview(datagram), src, dst, verify_checksum=verify)
    except Malformed:
        return
    length = int.from_bytes(datagram[4:6], "big")
    expect(bytes(udp.payload) == bytes(datagram[8:length]), "udp: payload")
    expect(udp.dst_port != 0, "udp: port zero accepted")
    check = int.from_bytes(datagram[6:8], "big")
    if verify and check:
        expect(reference_sum(bytes(datagram[:length]),
                             reference_sum(_pseudo(src, dst, PROTO_UDP, length))) == 0xFFFF,
               "udp: accepted a bad checksum")


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!xBH", proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def fuzz_tcp(data: bytes) -> None:
    inp = FuzzInput(data)
    src, dst, verify, repair = _l4_variant(inp)
    segment = bytearray(inp.rest())
    if repair:
        _repair(segment, 16, reference_sum(_pseudo(src, dst, PROTO_TCP, len(segment))))
    try:
        seg = TcpHeader.parse(memoryview(segment), src, dst, verify_checksum=verify)
    except Malformed:
        return
    header_len = (segment[12] >> 4) * 4
    expect(bytes(seg.payload) == bytes(segment[header_len:]), "tcp: payload")
    expect(seg.wscale is None or 0 <= seg.wscale <= 14, "tcp: window scale over 14")
    expect(seg.mss is None or 0 <= seg.mss <= 0xFFFF, "tcp: mss")
    expect(0 not in (seg.src_port, seg.dst_port), "tcp: port zero accepted")
    if verify:
        expect(reference_sum(bytes(segment),
                             reference_sum(_pseudo(src, dst, PROTO_TCP, len(segment)))) == 0xFFFF,
               "tcp: accepted a bad checksum")


def fuzz_icmp(data: bytes) -> None:
    inp = FuzzInput(data)
    choice = inp.byte()
    message = bytearray(inp.rest())
    initial = pseudo_header_sum(SRC6, DST6, PROTO_ICMPV6, len(message)) if choice & 1 else 0
    if choice & 4:
        _repair(message, 2, initial)
    verify = not choice & 2
    try:
        icmp = IcmpHeader.parse(memoryview(message), verify_checksum=verify, initial=initial)
    except Malformed:
        return
    expect(bytes(icmp.payload) == bytes(message[8:]), "icmp: payload")
    expect((icmp.type, icmp.code, icmp.rest) == (message[0], message[1], bytes(message[4:8])),
           "icmp: fields")
    icmp.echo_id, icmp.echo_seq  # noqa: B018  (the accessors must not raise either)
    if verify:
        expect(reference_sum(bytes(message), initial) == 0xFFFF, "icmp: accepted a bad checksum")


def fuzz_icmpv6(data: bytes) -> None:
    """Neighbor Discovery bodies and options (the ICMPv6 header is fuzz_icmp's)."""
    inp = FuzzInput(data)
    wanted = inp.byte()
    body = inp.rest()
    try:
        message = NeighborMessage.parse(memoryview(body), wanted)
    except Malformed:
        pass
    else:
        expect(message.target == body[:16], "nd: target")
        _check_link_addr(message.options.link_addr)
    try:
        options = parse_options(memoryview(body), wanted)
    except Malformed:
        return
    _check_link_addr(options.link_addr)


def _check_link_addr(link_addr: bytes | None) -> None:
    expect(link_addr is None or len(link_addr) == 6, "nd: link-layer address not 6 bytes")


# --- services -----------------------------------------------------------------------------

def fuzz_dhcp(data: bytes) -> None:
    try:
        message = DhcpMessage.parse(memoryview(data))
    except Malformed:
        return
    expect(len(message.chaddr) == 6, "dhcp: chaddr")
    expect(all(isinstance(v, bytes) for v in message.options.values()), "dhcp: option values")
    kind = message.message_type
    expect(kind is None or 0 <= kind <= 255, "dhcp: message type")
    for code in (50, 54, 1, 3):
        address = message.option_ip(code)
        expect(address is None or len(address) == 4, "dhcp: option ip")


def fuzz_dns_query(data: bytes) -> None:
    try:
        query = DnsQuery.parse(memoryview(data))
    except Malformed:
        return
    expect(bytes(query.question) == data[12:12 + len(query.question)], "dns: question view")
    reply = build_error_reply(query, 2)
    expect(reply[:2] == data[:2], "dns: the error reply's id")
    try:
        response = parse_response(reply)
    except Malformed:
        return  # the forwarder skips names it does not read; the client reads them strictly
    expect(response.rcode == 2 and not response.answers, "dns: error reply read back")


def fuzz_dns_response(data: bytes) -> None:
    try:
        response = parse_response(memoryview(data))
    except Malformed:
        return
    records = response.answers + response.additional
    for record in records:
        expect(isinstance(record.name, str) and record.name != "", "dns: record name")
        expect(record.ttl >= 0, "dns: negative ttl")
        if record.rtype == 1:
            expect(isinstance(record.data, bytes) and len(record.data) == 4, "dns: A")
        if record.rtype == 28:
            expect(isinstance(record.data, bytes) and len(record.data) == 16, "dns: AAAA")
    pick_srv(records)
    for record in records[:4]:
        for found in addresses_for(record.name, records):
            expect(len(found) in (4, 16), "dns: address length")


def fuzz_proxy(data: bytes) -> None:
    """PROXY v1/v2 on every prefix: a prefix of anything acceptable is never refused.

    `parse_proxy_header` answers None while more bytes could still make a header, and
    Malformed once none could: so if *data* (or a header at its start) is acceptable,
    every shorter prefix must say None, and every longer one the same header.
    """
    try:
        header = parse_proxy_header(data)
    except Malformed:
        header_ok = False
        header = None
    else:
        header_ok = True
    if header is not None:
        expect(header.length >= V2_FIXED_LEN or data.startswith(b"PROXY "), "proxy: length")
        expect(header.length <= len(data), "proxy: header longer than the data")
        for address in (header.source, header.destination):
            expect(address is None or (len(address[0]) in (4, 16) and 0 <= address[1] <= 0xFFFF),
                   "proxy: address")
    if not header_ok:
        return
    end = len(data) if header is None else header.length
    for cut in _cuts(end):
        try:
            prefix_header = parse_proxy_header(data[:cut])
        except Malformed as exc:
            raise Finding(f"proxy: prefix of {cut} bytes refused ({exc.reason}) though "
                          f"{'a header' if header else 'more data'} follows") from None
        expect(prefix_header is None, f"proxy: prefix of {cut} bytes gave a header")
    if header is not None:
        for cut in (header.length, len(data)):
            expect(parse_proxy_header(data[:cut]) == header, "proxy: longer data, other header")


def _cuts(end: int) -> list[int]:
    """Prefix lengths to try below *end*: all of the first 128, then a sample."""
    return [*range(min(end, 128)), *range(128, end, 61)]


def fuzz_spp(data: bytes) -> None:
    try:
        header, payload = parse_spp(data)
    except Malformed:
        return
    expect(build_spp(header) == data[:SPP_HEADER_LEN], "spp: rebuilt header differs")
    expect(bytes(payload) == data[SPP_HEADER_LEN:], "spp: payload")


def fuzz_checksum(data: bytes) -> None:
    """The big-integer checksum against one summed word by word, and its algebra."""
    inp = FuzzInput(data)
    initial = inp.u16()
    split = inp.u16()
    body = inp.rest()
    expected = reference_sum(body, initial)
    expect(ones_sum(body, initial) == expected, "checksum: ones_sum differs from RFC 1071's")
    expect(fold(expected) == expected, "checksum: fold of a folded sum")
    # A sum split at an even offset and continued from the partial sum.
    at = min(split & ~1, len(body))
    expect(ones_sum(body[at:], ones_sum(body[:at], initial)) == expected,
           "checksum: split sum differs")
    # Data followed by its checksum sums to all ones (checksum() == 0), if word-aligned.
    padded = body + b"\0" * (len(body) % 2)
    field = finish(ones_sum(padded, initial))
    expect(checksum(padded + struct.pack("!H", field), initial) == 0,
           "checksum: data with its checksum does not verify")
    if len(body) >= 8:
        src4, dst4 = body[:4], body[4:8]
        expect(pseudo_header_sum(src4, dst4, split & 0xFF, initial)
               == reference_sum(_pseudo(src4, dst4, split & 0xFF, initial)),
               "checksum: IPv4 pseudo-header")
    if len(body) >= 32:
        src6, dst6 = body[:16], body[16:32]
        expect(pseudo_header_sum(src6, dst6, split & 0xFF, initial)
               == reference_sum(_pseudo(src6, dst6, split & 0xFF, initial)),
               "checksum: IPv6 pseudo-header")
