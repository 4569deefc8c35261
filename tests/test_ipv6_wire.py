"""IPv6 and ICMPv6/ND wire formats, each checked against scapy's own dissection."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    HBHOptUnknown, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr,
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Jumbo,
    PadN, RouterAlert)
from scapy.packet import Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac

from slirpy.wire import Malformed
from slirpy.wire.checksum import pseudo_header_sum
from slirpy.wire.icmp import IcmpHeader, build_icmp
from slirpy.wire.icmpv6 import (NdOption, NeighborMessage, link_addr_option, neighbor_body,
                                parse_options, router_advertisement)
from slirpy.wire.ipv6 import (ALL_NODES, DEST_OPTIONS, FRAGMENT, FRAGMENT_LEN, HEADER_LEN,
                              MAX_EXTENSIONS, UNSPECIFIED, Ipv6Header, build_fragment_header,
                              build_ipv6, fragment_offsets6, is_multicast, multicast_mac,
                              solicited_node, walk_extensions)

SRC = "fd00::100"
DST = "2001:db8::1"
MAC = bytes.fromhex("525500000202")
UDP_PART = UDP(sport=1000, dport=7) / b"payload!"
UDP_LEN = 16


def packed(ip: str) -> bytes:
    return ipaddress.IPv6Address(ip).packed


def parse(packet: object) -> Ipv6Header:
    return Ipv6Header.parse(memoryview(bytes(packet)))  # type: ignore[call-overload]


def ip6(**fields: Any) -> IPv6:
    return IPv6(src=SRC, dst=DST, **fields)


def dest_opts(*options: object) -> IPv6ExtHdrDestOpt:
    return IPv6ExtHdrDestOpt(options=list(options))


# --- Ipv6Header.parse -----------------------------------------------------------------

def test_parse_plain_udp_matches_scapy() -> None:
    packet = ip6(hlim=17) / UDP_PART
    header = parse(packet)
    assert (header.src, header.dst) == (packed(SRC), packed(DST))
    assert (header.proto, header.ttl) == (17, 17)
    assert (header.ident, header.more_fragments, header.frag_offset) == (0, False, 0)
    assert not header.is_fragment
    assert bytes(header.header) == bytes(packet)[:HEADER_LEN]
    assert bytes(header.payload) == bytes(IPv6(bytes(packet))[UDP])


def test_parse_walks_extension_headers_to_the_upper_layer() -> None:
    packet = (ip6() / IPv6ExtHdrHopByHop(options=[RouterAlert()])
              / IPv6ExtHdrRouting(type=2, segleft=0, addresses=["2001:db8::9"])
              / dest_opts(PadN(optdata=b"\0\0")) / UDP_PART)
    raw = bytes(packet)
    header = parse(packet)
    dissected = IPv6(raw)
    ext_len = len(raw) - HEADER_LEN - len(bytes(dissected[UDP]))
    assert header.proto == 17
    assert len(header.header) == HEADER_LEN + ext_len
    assert bytes(header.payload) == bytes(dissected[UDP])


def test_parse_trims_ethernet_padding_to_the_payload_length() -> None:
    raw = bytes(ip6() / UDP_PART)
    header = parse(raw + b"\0" * 20)
    assert bytes(header.payload) == raw[HEADER_LEN:]


def test_parse_fragment_header_fields_match_scapy() -> None:
    packet = ip6() / IPv6ExtHdrFragment(id=0xDEADBEEF, offset=185, m=1) / (b"x" * 64)
    header = parse(packet)
    frag = IPv6(bytes(packet))[IPv6ExtHdrFragment]
    assert header.ident == frag.id == 0xDEADBEEF
    assert header.frag_offset == frag.offset * 8 == 1480
    assert header.more_fragments and header.is_fragment
    assert header.proto == frag.nh
    assert bytes(header.payload) == b"x" * 64
    assert len(header.header) == HEADER_LEN + FRAGMENT_LEN


def test_parse_last_fragment_is_a_fragment() -> None:
    header = parse(ip6() / IPv6ExtHdrFragment(id=9, offset=3, m=0) / (b"y" * 10))
    assert header.is_fragment and not header.more_fragments and header.frag_offset == 24


def test_parse_stops_at_a_real_fragment_leaving_the_fragmentable_part() -> None:
    # What follows the fragment header of a real fragment is not walked yet.
    packet = ip6() / IPv6ExtHdrFragment(id=1, m=1) / dest_opts() / UDP_PART
    header = parse(packet)
    assert header.proto == DEST_OPTIONS
    proto, upper = walk_extensions(header.proto, header.payload)
    assert proto == 17 and bytes(upper) == bytes(packet)[-UDP_LEN:]


def test_parse_atomic_fragment_is_no_fragment() -> None:
    packet = ip6() / IPv6ExtHdrFragment(id=77, offset=0, m=0) / UDP_PART
    header = parse(packet)
    assert not header.is_fragment and header.ident == 77
    assert header.proto == 17 and bytes(header.payload) == bytes(IPv6(bytes(packet))[UDP])


def test_parse_skips_unknown_options_whose_action_is_skip() -> None:
    option = HBHOptUnknown(otype=0x1E, optdata=b"\1\2\3\4")  # high bits 00: skip
    header = parse(ip6() / dest_opts(option) / UDP_PART)
    assert header.proto == 17


def test_parse_allows_exactly_max_extensions() -> None:
    packet = ip6()
    for _ in range(MAX_EXTENSIONS):
        packet = packet / dest_opts()
    assert parse(packet / UDP_PART).proto == 17


def _chain(count: int) -> IPv6:
    packet = ip6()
    for _ in range(count):
        packet = packet / dest_opts()
    return packet / UDP_PART


def _patched(packet: object, offset: int, value: bytes) -> bytes:
    raw = bytearray(bytes(packet))  # type: ignore[call-overload]
    raw[offset:offset + len(value)] = value
    return bytes(raw)


UDP_RAW = bytes(ip6() / UDP_PART)

BAD = [
    pytest.param(UDP_RAW[:39], "ipv6-short", id="short"),
    pytest.param(_patched(UDP_RAW, 0, b"\x40"), "ipv6-bad-version", id="version-4"),
    pytest.param(bytes(ip6(plen=200) / UDP_PART), "ipv6-bad-length", id="length-past-end"),
    pytest.param(bytes(ip6(plen=0, nh=0) / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=70000)])
                       / UDP_PART), "ipv6-jumbogram", id="jumbogram"),
    pytest.param(bytes(IPv6(src="ff02::1", dst=DST) / UDP_PART), "ipv6-multicast-src",
                 id="multicast-src"),
    pytest.param(bytes(_chain(MAX_EXTENSIONS + 1)), "ipv6-too-many-ext", id="9-dest-opts"),
    pytest.param(bytes(_chain(30)), "ipv6-too-many-ext", id="30-dest-opts"),
    pytest.param(bytes(ip6() / dest_opts() / IPv6ExtHdrHopByHop() / UDP_PART),
                 "ipv6-misplaced-hop-by-hop", id="hop-by-hop-second"),
    pytest.param(bytes(ip6() / IPv6ExtHdrDestOpt(len=10) / UDP_PART), "ipv6-ext-short",
                 id="ext-past-end"),
    pytest.param(bytes(ip6(nh=DEST_OPTIONS) / b"\x11\x00\x01"), "ipv6-ext-short",
                 id="ext-under-8"),
    pytest.param(bytes(ip6(nh=FRAGMENT) / b"\x11\x00\x00"), "ipv6-ext-short",
                 id="fragment-under-8"),
    pytest.param(bytes(ip6() / dest_opts(HBHOptUnknown(otype=0x80, optdata=b"\0\0\0\0"))
                       / UDP_PART), "ipv6-unknown-option", id="option-0x80-discard"),
    pytest.param(bytes(ip6() / dest_opts(HBHOptUnknown(otype=0x40, optdata=b"\0\0\0\0"))
                       / UDP_PART), "ipv6-unknown-option", id="option-0x40"),
    pytest.param(bytes(ip6() / dest_opts(HBHOptUnknown(otype=0xC2, optdata=b"\0\0\0\0"))
                       / UDP_PART), "ipv6-unknown-option", id="option-0xc2"),
    pytest.param(bytes(ip6() / IPv6ExtHdrDestOpt(autopad=0, options=[
        HBHOptUnknown(otype=0x1E, optlen=30, optdata=b"\0\0\0\0")]) / UDP_PART),
        "ipv6-option-short", id="option-past-header"),
    pytest.param(bytes(ip6() / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[DST])
                       / UDP_PART), "ipv6-routing-type-0", id="routing-type-0"),
    pytest.param(bytes(ip6() / IPv6ExtHdrRouting(type=2, segleft=1, addresses=[DST])
                       / UDP_PART), "ipv6-routing-segments-left", id="routing-segments-left"),
    pytest.param(bytes(ip6() / IPv6ExtHdrFragment(id=1) / IPv6ExtHdrFragment(id=2, m=1)
                       / UDP_PART), "ipv6-nested-fragment", id="two-fragment-headers"),
]


@pytest.mark.parametrize("raw, reason", BAD)
def test_parse_refuses(raw: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        Ipv6Header.parse(memoryview(raw))
    assert info.value.reason == reason


# --- walk_extensions (the fragmentable part once reassembled) --------------------------------

def test_walk_extensions_without_headers() -> None:
    part = bytes(UDP_PART)
    proto, upper = walk_extensions(17, memoryview(part))
    assert proto == 17 and bytes(upper) == part


def test_walk_extensions_past_destination_options() -> None:
    part = bytes(dest_opts(PadN(optdata=b"\0" * 4)) / UDP_PART)
    proto, upper = walk_extensions(DEST_OPTIONS, memoryview(part))
    assert proto == 17 and bytes(upper) == part[-UDP_LEN:]


@pytest.mark.parametrize("next_header, part, reason", [
    pytest.param(0, bytes(IPv6ExtHdrHopByHop() / UDP_PART), "ipv6-misplaced-hop-by-hop",
                 id="hop-by-hop"),
    pytest.param(FRAGMENT, bytes(IPv6ExtHdrFragment(id=1) / UDP_PART), "ipv6-nested-fragment",
                 id="atomic-fragment-inside"),
    pytest.param(FRAGMENT, bytes(IPv6ExtHdrFragment(id=1, m=1) / UDP_PART),
                 "ipv6-nested-fragment", id="fragment-inside"),
    pytest.param(DEST_OPTIONS, bytes(dest_opts(HBHOptUnknown(otype=0x80, optdata=b"\0\0\0\0"))
                                     / UDP_PART), "ipv6-unknown-option", id="unknown-option"),
])
def test_walk_extensions_refuses(next_header: int, part: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        walk_extensions(next_header, memoryview(part))
    assert info.value.reason == reason


# --- builders ---------------------------------------------------------------------------

def test_build_ipv6_matches_scapy() -> None:
    payload = bytes(UDP_PART)
    buf = bytearray(4 + HEADER_LEN + len(payload))
    end = build_ipv6(buf, 4, src=packed(SRC), dst=packed(DST), next_header=17,
                     payload_len=len(payload), hop_limit=200)
    assert end == 4 + HEADER_LEN
    buf[end:] = payload
    dissected = IPv6(bytes(buf[4:]))
    assert (dissected.version, dissected.tc, dissected.fl) == (6, 0, 0)
    assert (dissected.plen, dissected.nh, dissected.hlim) == (len(payload), 17, 200)
    assert (dissected.src, dissected.dst) == (SRC, DST)
    assert bytes(dissected[UDP]) == payload
    assert bytes(buf[4:4 + HEADER_LEN]) == bytes(
        IPv6(src=SRC, dst=DST, nh=17, hlim=200, plen=len(payload)))
    header = Ipv6Header.parse(memoryview(bytes(buf[4:])))
    assert (header.src, header.dst, header.proto, header.ttl) == (
        packed(SRC), packed(DST), 17, 200)


def test_build_ipv6_default_hop_limit() -> None:
    buf = bytearray(HEADER_LEN)
    build_ipv6(buf, 0, src=packed(SRC), dst=packed(DST), next_header=59, payload_len=0)
    assert IPv6(bytes(buf)).hlim == 64


@pytest.mark.parametrize("frag_offset, more", [(0, True), (1448, True), (65528, False)])
def test_build_fragment_header_matches_scapy(frag_offset: int, more: bool) -> None:
    buf = bytearray(2 + FRAGMENT_LEN)
    end = build_fragment_header(buf, 2, next_header=17, frag_offset=frag_offset, more=more,
                                ident=0x01020304)
    assert end == 2 + FRAGMENT_LEN
    frag = IPv6ExtHdrFragment(bytes(buf[2:]))
    assert (frag.nh, frag.offset * 8, frag.m, frag.id, frag.res1, frag.res2) == (
        17, frag_offset, int(more), 0x01020304, 0, 0)
    assert bytes(buf[2:]) == bytes(IPv6ExtHdrFragment(nh=17, offset=frag_offset // 8,
                                                      m=int(more), id=0x01020304))


@pytest.mark.parametrize("size", [1, 1448, 1449, 3000, 9000, 65527])
@pytest.mark.parametrize("mtu", [1280, 1500, 1501, 9000])
def test_fragment_offsets6_tile_the_payload(size: int, mtu: int) -> None:
    pieces = fragment_offsets6(size, mtu)
    assert pieces[0][0] == 0 and pieces[-1][1] == size
    for (start, end, more), following in zip(pieces, pieces[1:] + [None]):
        assert start % 8 == 0
        assert 0 < end - start and HEADER_LEN + FRAGMENT_LEN + end - start <= mtu
        if following is None:
            assert not more
        else:
            assert more and following[0] == end
            assert (end - start) % 8 == 0


def test_fragment_offsets6_at_1500_are_1448_bytes() -> None:
    assert fragment_offsets6(3008, 1500) == [(0, 1448, True), (1448, 2896, True),
                                             (2896, 3008, False)]


@pytest.mark.parametrize("addr", ["fd00::100", "fe80::2", "2001:db8::abcd:ef01:2345",
                                  "fd00::ffff:ffff:ffff"])
def test_solicited_node_matches_scapy(addr: str) -> None:
    group = solicited_node(packed(addr))
    assert group == in6_getnsma(packed(addr))
    assert ipaddress.IPv6Address(group) in ipaddress.IPv6Network("ff02::1:ff00:0/104")
    assert is_multicast(group)


@pytest.mark.parametrize("group", ["ff02::1", "ff02::1:ff00:100", "ff05::1:3", "ff02::2"])
def test_multicast_mac_matches_scapy(group: str) -> None:
    mac = multicast_mac(packed(group))
    assert mac == bytes.fromhex(in6_getnsmac(packed(group)).replace(":", ""))
    assert mac[:2] == b"\x33\x33" and len(mac) == 6


def test_constants() -> None:
    assert ALL_NODES == packed("ff02::1")
    assert UNSPECIFIED == packed("::")
    assert not is_multicast(packed(SRC))


# --- ICMPv6 checksums through the shared ICMP code ---------------------------------------

def _pseudo(src: str, dst: str, length: int) -> int:
    return pseudo_header_sum(packed(src), packed(dst), 58, length)


def test_build_icmp_with_pseudo_header_matches_scapy_checksum() -> None:
    payload = b"hello, v6"
    message = build_icmp(128, 0, struct.pack("!HH", 7, 3), payload,
                         _pseudo(SRC, DST, 8 + len(payload)))
    expected = bytes(ip6() / ICMPv6EchoRequest(id=7, seq=3, data=payload))[HEADER_LEN:]
    assert bytes(message) == expected


def test_icmp_parse_verifies_the_icmpv6_pseudo_header() -> None:
    raw = bytes(ip6() / ICMPv6EchoRequest(id=7, seq=3, data=b"abc"))[HEADER_LEN:]
    header = IcmpHeader.parse(memoryview(raw), initial=_pseudo(SRC, DST, len(raw)))
    assert (header.type, header.code, header.echo_id, header.echo_seq) == (128, 0, 7, 3)
    assert bytes(header.payload) == b"abc"
    with pytest.raises(Malformed, match="icmp-checksum"):
        IcmpHeader.parse(memoryview(raw), initial=_pseudo(SRC, "2001:db8::2", len(raw)))
    with pytest.raises(Malformed, match="icmp-checksum"):
        IcmpHeader.parse(memoryview(raw))  # the ICMPv4 way: no pseudo-header


# --- ND options and messages ----------------------------------------------------------------

def test_parse_options_finds_the_wanted_link_address_among_others() -> None:
    options = bytes(ICMPv6NDOptMTU(mtu=1400) / ICMPv6NDOptPrefixInfo(prefix="fd00::")
                    / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:64"))
    found = parse_options(memoryview(options), NdOption.SOURCE_LINK_ADDR)
    assert found.link_addr == bytes.fromhex("020000000064")
    assert parse_options(memoryview(options), NdOption.TARGET_LINK_ADDR).link_addr is None


def test_parse_options_ignores_a_non_ethernet_link_address() -> None:
    option = bytes((NdOption.SOURCE_LINK_ADDR, 2)) + b"\1" * 14  # 16 bytes: not Ethernet
    assert parse_options(memoryview(option), NdOption.SOURCE_LINK_ADDR).link_addr is None


def test_parse_options_empty() -> None:
    assert parse_options(memoryview(b""), NdOption.SOURCE_LINK_ADDR).link_addr is None


@pytest.mark.parametrize("options, reason", [
    pytest.param(b"\x01\x00" + b"\0" * 6, "nd-option-zero-length", id="zero-length"),
    pytest.param(bytes(ICMPv6NDOptMTU()) + b"\x01\x00", "nd-option-zero-length",
                 id="zero-length-after-another"),
    pytest.param(b"\x01\x02" + b"\0" * 6, "nd-option-short", id="overrun"),
    pytest.param(b"\x01", "nd-option-short", id="one-byte"),
    pytest.param(bytes(ICMPv6NDOptSrcLLAddr()) + b"\x05", "nd-option-short",
                 id="trailing-byte"),
])
def test_parse_options_refuses(options: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        parse_options(memoryview(options), NdOption.SOURCE_LINK_ADDR)
    assert info.value.reason == reason


def _icmp_body(message: object) -> bytes:
    """The body of an ICMPv6 message built by scapy: past type, code, checksum, 4 bytes."""
    return bytes(IPv6(src=SRC, dst="ff02::1:ff00:2") / message)[HEADER_LEN + 8:]


def test_neighbor_solicitation_parses_like_scapy() -> None:
    ns = ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:64")
    message = NeighborMessage.parse(memoryview(_icmp_body(ns)), NdOption.SOURCE_LINK_ADDR)
    assert message.target == packed("fd00::2")
    assert message.options.link_addr == bytes.fromhex("020000000064")


def test_neighbor_advertisement_parses_like_scapy() -> None:
    na = ICMPv6ND_NA(tgt="fd00::100", R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(
        lladdr="02:00:00:00:00:99")
    message = NeighborMessage.parse(memoryview(_icmp_body(na)), NdOption.TARGET_LINK_ADDR)
    assert message.target == packed("fd00::100")
    assert message.options.link_addr == bytes.fromhex("020000000099")


def test_neighbor_message_without_options() -> None:
    message = NeighborMessage.parse(memoryview(_icmp_body(ICMPv6ND_NS(tgt="fe80::2"))),
                                    NdOption.SOURCE_LINK_ADDR)
    assert message.target == packed("fe80::2") and message.options.link_addr is None


@pytest.mark.parametrize("body, reason", [
    pytest.param(b"\0" * 15, "nd-short", id="short"),
    pytest.param(_icmp_body(ICMPv6ND_NS(tgt="ff02::1")), "nd-multicast-target",
                 id="multicast-target"),
    pytest.param(_icmp_body(ICMPv6ND_NS(tgt="fd00::2")) + b"\x01", "nd-option-short",
                 id="bad-option"),
])
def test_neighbor_message_refuses(body: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        NeighborMessage.parse(memoryview(body), NdOption.SOURCE_LINK_ADDR)
    assert info.value.reason == reason


def test_link_addr_option_and_neighbor_body_match_scapy() -> None:
    mac = "52:55:0a:00:02:02"
    assert link_addr_option(NdOption.SOURCE_LINK_ADDR, MAC) == bytes(
        ICMPv6NDOptSrcLLAddr(lladdr="52:55:00:00:02:02"))
    assert link_addr_option(NdOption.TARGET_LINK_ADDR, bytes.fromhex("52550a000202")) == bytes(
        ICMPv6NDOptDstLLAddr(lladdr=mac))
    body = neighbor_body(packed("fd00::2"), NdOption.TARGET_LINK_ADDR,
                         bytes.fromhex("52550a000202"))
    assert body == _icmp_body(ICMPv6ND_NA(tgt="fd00::2") / ICMPv6NDOptDstLLAddr(lladdr=mac))


def _ra(dns: bytes | None, mtu: int = 1500) -> IPv6:
    rest, body = router_advertisement(
        our_mac=MAC, mtu=mtu, prefix=packed("fd00::"), prefix_len=64, dns=dns,
        router_lifetime_s=1800, valid_s=86400, preferred_s=14400)
    assert len(rest) == 4
    message = build_icmp(134, 0, rest, body, _pseudo("fe80::2", "ff02::1", 8 + len(body)))
    packet = IPv6(bytes(IPv6(src="fe80::2", dst="ff02::1", hlim=255, nh=58) / Raw(bytes(message))))
    assert isinstance(packet.payload, ICMPv6ND_RA)
    return packet


def test_router_advertisement_layout_as_scapy_reads_it() -> None:
    packet = _ra(packed("fd00::3"), mtu=1400)
    ra = packet[ICMPv6ND_RA]
    assert (ra.type, ra.code, ra.chlim, ra.M, ra.O) == (134, 0, 64, 0, 0)
    assert (ra.routerlifetime, ra.reachabletime, ra.retranstimer) == (1800, 0, 0)
    assert packet[ICMPv6NDOptSrcLLAddr].lladdr == "52:55:00:00:02:02"
    assert packet[ICMPv6NDOptMTU].mtu == 1400
    prefix = packet[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("fd00::", 64, 1, 1)
    assert (prefix.validlifetime, prefix.preferredlifetime) == (86400, 14400)
    rdnss = packet[ICMPv6NDOptRDNSS]
    assert (rdnss.dns, rdnss.lifetime, rdnss.len) == (["fd00::3"], 1800, 3)
    # The checksum we computed is the one scapy computes.
    recomputed = IPv6(bytes(packet))
    recomputed[ICMPv6ND_RA].cksum = None
    assert IPv6(bytes(recomputed))[ICMPv6ND_RA].cksum == ra.cksum


def test_router_advertisement_without_dns_has_no_rdnss() -> None:
    packet = _ra(None)
    assert ICMPv6NDOptRDNSS not in packet
    assert ICMPv6NDOptPrefixInfo in packet and ICMPv6NDOptMTU in packet
