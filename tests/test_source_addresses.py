"""A frame's source address is checked the same way in both families.

A multicast or broadcast source, or one of slirpy's own addresses, is never a guest
talking: such a frame is dropped and counted before anything else happens, whatever
it carries. A multicast source is refused by the parsers of both families (RFC 1122
3.2.1.3, RFC 4291 2.7), the rest by the address classifier. Before issue #11, an IPv4
datagram from 224.0.0.5 opened a UDP flow to the host.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from slirpy.config import Config
from tests.harness import GUEST_MAC, OUR_MAC, GuestHarness

WORLD4 = "192.0.2.1"
WORLD6 = "2001:db8::1"


def from_source(src: str, l4: Packet) -> Ether:
    ip = IPv6(src=src, dst=WORLD6) if ":" in src else IP(src=src, dst=WORLD4)
    return Ether(src=GUEST_MAC, dst=OUR_MAC) / ip / l4


CARRIERS = {"udp": UDP(sport=5000, dport=53) / b"x", "tcp": TCP(sport=5000, dport=80, flags="S")}


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
@pytest.mark.parametrize("src, reason", [
    ("224.0.0.5", "ipv4-multicast-src"),  # OSPF's group: the bug, for IPv4
    ("239.255.255.250", "ipv4-multicast-src"),
    ("255.255.255.255", "ipv4-bad-src"),
    ("10.0.2.255", "ipv4-bad-src"),  # the guest network's broadcast
    ("10.0.2.2", "ipv4-bad-src"),  # ours
    ("ff02::5", "ipv6-multicast-src"),
    ("ff05::1:3", "ipv6-multicast-src"),
    ("fd00::2", "ipv6-bad-src"),  # ours
])
def test_frame_from_a_source_no_guest_has_is_dropped(carrier: str, src: str,
                                                     reason: str) -> None:
    guest = GuestHarness(Config(ipv6=True))
    assert guest.send(from_source(src, CARRIERS[carrier])) == []
    assert guest.effects == []
    assert guest.stack.stats.drop_counts() == {reason: 1}
    assert len(guest.stack.udp) == 0 and len(guest.stack.tcp) == 0


@pytest.mark.parametrize("src", ["10.0.2.100", "fd00::100"])
def test_frame_from_the_guest_opens_its_flow(src: str) -> None:
    guest = GuestHarness(Config(ipv6=True))
    guest.send(from_source(src, CARRIERS["udp"]))
    assert guest.stack.stats.drop_counts() == {}
    assert len(guest.stack.udp) == 1


def test_echo_from_a_multicast_source_is_dropped_in_both_families() -> None:
    guest = GuestHarness(Config(ipv6=True))
    assert guest.send(from_source("224.0.0.1", ICMP())) == []
    assert guest.send(from_source("ff02::1", ICMPv6EchoRequest())) == []
    assert guest.stack.stats.drop_counts() == {"ipv4-multicast-src": 1,
                                               "ipv6-multicast-src": 1}
