"""Hostile and odd frames: each is dropped, counted by reason, and never raises."""

import struct

import pytest
from scapy.layers.dhcp import BOOTP, DHCP  # type: ignore[import-untyped]
from scapy.layers.dns import DNS as DNSPacket, DNSQR  # type: ignore[import-untyped]
from scapy.layers.inet import ICMP, IP, UDP  # type: ignore[import-untyped]
from scapy.layers.inet6 import IPv6  # type: ignore[import-untyped]
from scapy.layers.l2 import ARP, Ether  # type: ignore[import-untyped]
from scapy.packet import Raw  # type: ignore[import-untyped]

from slirpy.reassembly import MAX_BYTES, MAX_QUEUES
from tests.harness import DNS, GATEWAY, GUEST_IP, GUEST_MAC, OUR_MAC, GuestHarness

ETH = Ether(src=GUEST_MAC, dst=OUR_MAC)
DHCP_IP = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")


def ip(dst: str = "192.0.2.1", **fields: object) -> IP:
    return IP(src=GUEST_IP, dst=dst, **fields)


FRAMES = {  # one valid frame per protocol
    "arp": Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        hwsrc=GUEST_MAC, psrc=GUEST_IP, pdst=GATEWAY),
    "icmp": ETH / ip(GATEWAY) / ICMP(id=1, seq=1) / b"abcdefgh",
    "udp": ETH / ip() / UDP(sport=1000, dport=7) / b"payload",
    "dns": ETH / ip(DNS) / UDP(sport=1000, dport=53) / DNSPacket(qd=DNSQR(qname="a.test")),
    "dhcp": DHCP_IP
    / UDP(sport=68, dport=67) / BOOTP(chaddr=b"\x02\0\0\0\0\x64")
    / DHCP(options=[("message-type", "discover"), "end"]),
}


def corrupt_ip_header(frame: bytes, offset: int, value: bytes) -> bytes:
    """Patch the IP header at *offset* and fix its checksum, so only the patch is wrong."""
    raw = bytearray(frame)
    raw[14 + offset:14 + offset + len(value)] = value
    raw[24:26] = b"\0\0"
    header_len = (raw[14] & 0x0F) * 4
    from slirpy.wire.checksum import checksum
    struct.pack_into("!H", raw, 24, checksum(raw[14:14 + max(header_len, 20)]))
    return bytes(raw)


UDP_FRAME = bytes(FRAMES["udp"])

HOSTILE = [
    pytest.param(b"\x00" * 5, "eth-short", id="runt"),
    pytest.param(bytes(Ether(src=GUEST_MAC, dst=OUR_MAC, type=0x88CC) / (b"x" * 40)),
                 "eth-unsupported-type", id="lldp"),
    pytest.param(bytes(FRAMES["arp"])[:20], "arp-short", id="arp-short"),
    pytest.param(bytes(Ether(src=GUEST_MAC) / ARP(ptype=0x86DD, plen=16)) + b"\0" * 24,
                 "arp-unsupported", id="arp-ipv6-ptype"),
    pytest.param(UDP_FRAME[:14 + 19], "ipv4-short", id="ipv4-short"),
    pytest.param(corrupt_ip_header(UDP_FRAME, 0, b"\x44"), "ipv4-bad-ihl", id="ihl-4"),
    pytest.param(corrupt_ip_header(UDP_FRAME, 0, b"\x65"), "ipv4-bad-ihl", id="version-6"),
    pytest.param(corrupt_ip_header(UDP_FRAME, 2, b"\xff\xff"), "ipv4-bad-length",
                 id="total-length-past-frame"),
    pytest.param(corrupt_ip_header(UDP_FRAME, 2, b"\x00\x10"), "ipv4-bad-length",
                 id="total-length-below-header"),
    pytest.param(UDP_FRAME[:24] + b"\xde\xad" + UDP_FRAME[26:], "ipv4-checksum",
                 id="ip-checksum"),
    pytest.param(bytes(ETH / ip() / UDP(sport=1, dport=7, chksum=0x1234) / b"x"),
                 "udp-checksum", id="udp-checksum"),
    pytest.param(bytes(ETH / ip() / UDP(sport=1, dport=7, len=200) / b"x"), "udp-bad-length",
                 id="udp-length-past-ip"),
    pytest.param(bytes(ETH / ip() / UDP(sport=1, dport=0) / b"x"), "udp-port-zero",
                 id="udp-port-zero"),
    pytest.param(bytes(ETH / ip() / ICMP(chksum=0x1234)), "icmp-checksum", id="icmp-checksum"),
    pytest.param(bytes(ETH / ip() / ICMP(type=13)), "icmp-unsupported-type", id="icmp-timestamp"),
    pytest.param(bytes(ETH / ip(proto=132) / b"sctp"), "ip-unsupported-proto", id="sctp"),
    pytest.param(bytes(ETH / IPv6(dst="fd00::2") / b"x"), "ipv6-disabled", id="ipv6-off"),
    pytest.param(bytes(ETH / IP(src=GATEWAY, dst="192.0.2.1") / UDP(dport=7)), "ipv4-bad-src",
                 id="spoofed-gateway-src"),
    pytest.param(bytes(ETH / ip("127.0.0.1") / UDP(dport=7)), "ipv4-dst-not-forwarded",
                 id="loopback-dst"),
    pytest.param(bytes(ETH / ip("0.0.0.0") / UDP(dport=7)), "ipv4-dst-not-forwarded",
                 id="zero-dst"),
    pytest.param(bytes(ETH / ip("224.0.0.251") / UDP(dport=5353)), "ipv4-dst-not-forwarded",
                 id="multicast-dst"),
    pytest.param(bytes(ETH / ip("10.0.2.255") / UDP(dport=7)), "ipv4-dst-not-forwarded",
                 id="subnet-broadcast-dst"),
    pytest.param(bytes(ETH / ip("10.0.2.50") / UDP(dport=7)), "ipv4-dst-in-network",
                 id="other-guest-dst"),
    pytest.param(bytes(ETH / ip(DNS) / UDP(sport=1, dport=53) / b"\x00\x01"), "dns-short",
                 id="dns-short"),
    pytest.param(bytes(ETH / ip(DNS) / UDP(sport=1, dport=53) / DNSPacket(qr=1)), "dns-not-query",
                 id="dns-response-as-query"),
    pytest.param(bytes(ETH / ip(DNS) / UDP(sport=1, dport=53)
                       / (struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x80abc\x00\x00\x01\x00\x01")),
                 "dns-bad-label", id="dns-bad-label"),
    pytest.param(bytes(DHCP_IP
                       / UDP(sport=68, dport=67) / Raw(bytes(FRAMES["dhcp"][BOOTP])[:100])),
                 "dhcp-short", id="dhcp-short"),
    pytest.param(bytes(DHCP_IP
                       / UDP(sport=68, dport=67) / BOOTP(options=b"XXXX")), "dhcp-no-cookie",
                 id="dhcp-no-cookie"),
    pytest.param(bytes(DHCP_IP
                       / UDP(sport=68, dport=67) / BOOTP(options=b"\x63\x82\x53\x63")
                       / Raw(b"\x35\x09\x01")), "dhcp-bad-option",
                 id="dhcp-option-past-end"),
]


@pytest.mark.parametrize("frame, reason", HOSTILE)
def test_hostile_frame_is_dropped_and_counted(frame: bytes, reason: str) -> None:
    guest = GuestHarness()
    assert guest.send(frame) == []
    assert guest.effects == []
    assert guest.stack.stats.drop_counts() == {reason: 1}


@pytest.mark.parametrize("name", FRAMES)
def test_every_truncation_is_dropped_not_raised(name: str) -> None:
    whole = bytes(FRAMES[name])
    guest = GuestHarness()
    for length in range(len(whole)):
        guest.send(whole[:length])
        assert not guest.of_type(object) or all(type(e).__name__ != "SendDatagram"
                                                for e in guest.effects)
    assert sum(guest.stack.stats.drop_counts().values()) == len(whole)  # each one counted


def fragment_of(ident: int, offset: int, data: bytes, more: bool = True) -> bytes:
    flags = "MF" if more else 0
    return bytes(ETH / ip(proto=17, id=ident, flags=flags, frag=offset // 8) / Raw(data))


def test_overlapping_fragments_drop_the_whole_datagram() -> None:
    guest = GuestHarness()
    guest.send(fragment_of(1, 0, b"a" * 16))
    guest.send(fragment_of(1, 24, b"c" * 8, more=False))
    guest.send(fragment_of(1, 8, b"b" * 16))  # overlaps bytes 8..16
    assert guest.effects == []
    assert guest.stack.stats.drop_counts() == {"frag-overlap": 1}
    assert guest.stack.reassembler.queues == {}


def test_endless_fragments_time_out_and_free_their_memory() -> None:
    guest = GuestHarness()
    for n in range(10):
        guest.send(fragment_of(2, n * 8, b"x" * 8))  # never a last fragment
    assert guest.stack.reassembler.held_bytes == 80
    guest.advance(31)
    assert guest.stack.reassembler.held_bytes == 0
    assert guest.stack.stats.drop_counts() == {"frag-timeout": 1}


def test_fragment_past_65535_is_dropped() -> None:
    guest = GuestHarness()
    guest.send(fragment_of(3, 65528, b"x" * 16))
    assert guest.stack.stats.drop_counts() == {"frag-too-big": 1}


def test_flood_of_fragment_queues_stays_bounded() -> None:
    guest = GuestHarness()
    for ident in range(MAX_QUEUES * 4):
        guest.send(fragment_of(ident, 0, b"y" * 1400))
    assert len(guest.stack.reassembler.queues) == MAX_QUEUES
    assert guest.stack.stats.drop_counts() == {"frag-evicted": MAX_QUEUES * 3}
    # A legitimate datagram still gets through after the flood.
    guest.send(fragment_of(9999, 0, b"z" * 8))
    guest.send(bytes(ETH / ip(proto=17, id=9999, frag=1) / Raw(b"")))  # degenerate last piece
    assert guest.stack.reassembler.held_bytes <= MAX_BYTES


def test_fragment_memory_cap_holds_under_big_fragments() -> None:
    guest = GuestHarness()
    guest.stack.reassembler.max_bytes = 100_000
    for ident in range(MAX_QUEUES):
        for n in range(10):  # 64 queues x 10 x 1400 bytes would be 896 kB
            guest.send(fragment_of(ident, n * 1400, b"w" * 1400))
    assert 90_000 < guest.stack.reassembler.held_bytes <= 100_000
    assert guest.stack.stats.drop_counts()["frag-memory-limit"] > 0
