"""The stack's answers to ARP, ICMP echo and UDP, as packet traces."""

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror  # type: ignore[import-untyped]
from scapy.layers.inet6 import (  # type: ignore[import-untyped]
    ICMPv6EchoReply, ICMPv6EchoRequest, IPv6)
from scapy.layers.l2 import ARP, Ether  # type: ignore[import-untyped]
from scapy.packet import Raw  # type: ignore[import-untyped]

from slirpy.config import Config
from slirpy.effects import Close, OpenPing, OpenUdp, SendDatagram
from slirpy.events import HostError
from tests.harness import DNS, GATEWAY, GUEST_IP, GUEST_MAC, OUR_MAC, GuestHarness, packed


def who_has(ip: str) -> Ether:
    return Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op="who-has", hwsrc=GUEST_MAC, psrc=GUEST_IP, pdst=ip)


def from_guest(dst: str, **ip: object) -> Ether:
    return Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=dst, **ip)


@pytest.mark.parametrize("ip", [GATEWAY, DNS])
def test_arp_request_for_our_address_is_answered_with_our_mac(ip: str) -> None:
    (reply,) = GuestHarness().send(who_has(ip))
    assert reply[ARP].op == 2  # is-at
    assert (reply[ARP].psrc, reply[ARP].hwsrc) == (ip, OUR_MAC)
    assert (reply.dst, reply[ARP].pdst, reply[ARP].hwdst) == (GUEST_MAC, GUEST_IP, GUEST_MAC)


@pytest.mark.parametrize("ip", ["10.0.2.50", GUEST_IP, "192.0.2.1"])
def test_arp_request_for_other_address_is_not_answered(ip: str) -> None:
    assert GuestHarness().send(who_has(ip)) == []


def test_echo_to_gateway_is_answered_by_us() -> None:
    (reply,) = GuestHarness().send(from_guest(GATEWAY) / ICMP(id=7, seq=3) / b"hello")
    assert reply[IP].src == GATEWAY and reply[IP].dst == GUEST_IP
    assert (reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (0, 7, 3)
    assert bytes(reply[ICMP].payload) == b"hello"
    assert reply.dst == GUEST_MAC


@pytest.mark.parametrize("dst", [GATEWAY, DNS])
def test_echo_to_our_address_is_answered_with_ttl_255_as_slirp4netns(dst: str) -> None:
    (reply,) = GuestHarness().send(from_guest(dst, ttl=1) / ICMP(id=7, seq=3))
    assert (reply[IP].src, reply[IP].ttl) == (dst, 255)


@pytest.mark.parametrize("dst", ["fd00::2", "fd00::3", "fe80::2"])
def test_echo6_to_our_address_is_answered_with_hop_limit_255(dst: str) -> None:
    src = "fe80::64" if dst.startswith("fe80") else "fd00::100"
    request = Ether(src=GUEST_MAC, dst=OUR_MAC) / IPv6(src=src, dst=dst, hlim=1) / \
        ICMPv6EchoRequest(id=7, seq=3, data=b"hi")
    (reply,) = GuestHarness(Config(ipv6=True)).send(request)
    assert (reply[IPv6].src, reply[IPv6].hlim, reply[ICMPv6EchoReply].id) == (dst, 255, 7)


def test_echo_to_remote_opens_ping_socket_and_relays_reply_with_guest_id() -> None:
    guest = GuestHarness()
    assert guest.send(from_guest("192.0.2.1") / ICMP(id=7, seq=3) / b"ping") == []
    opened, sent = guest.effects
    assert isinstance(opened, OpenPing) and opened.host_addr == packed("192.0.2.1")
    assert isinstance(sent, SendDatagram)
    assert ICMP(bytes(sent.data)).type == 8 and bytes(ICMP(bytes(sent.data)).payload) == b"ping"
    # The kernel answers with its own echo id; the guest must see its own again.
    kernel_reply = bytes(ICMP(type=0, id=4242, seq=3) / b"ping")
    (reply,) = guest.host_datagram(opened.flow, kernel_reply)
    assert reply[IP].src == "192.0.2.1"
    assert (reply[ICMP].type, reply[ICMP].id, reply[ICMP].seq) == (0, 7, 3)
    assert ICMP(bytes(reply[ICMP])).chksum == reply[ICMP].chksum  # checksum is right
    # Listed among the flows (the API's list_flows, `slirpy ctl flows`): no ports, its id.
    (listed,) = guest.stack.stats.flows(guest.now)
    assert {k: listed[k] for k in ("proto", "guest", "remote", "echo_id", "bytes_from_guest",
                                   "bytes_to_guest")} == {
        "proto": "icmp", "guest": GUEST_IP, "remote": "192.0.2.1", "echo_id": 7,
        "bytes_from_guest": 4, "bytes_to_guest": 4}


def test_echo_without_host_answer_gets_no_reply_and_flow_expires() -> None:
    guest = GuestHarness()
    guest.send(from_guest("203.0.113.99") / ICMP(id=1, seq=1))
    (flow,) = [e.flow for e in guest.of_type(OpenPing)]
    assert guest.advance(5) == []
    assert guest.advance(60) == [] and guest.effects == [Close(flow)]


def test_udp_to_remote_opens_flow_once_and_relays_both_ways() -> None:
    guest = GuestHarness()
    datagram = from_guest("192.0.2.1") / UDP(sport=5000, dport=7) / b"abc"
    guest.send(datagram)
    opened, sent = guest.effects
    assert isinstance(opened, OpenUdp)
    assert (opened.host_addr, opened.host_port) == (packed("192.0.2.1"), 7)
    assert bytes(sent.data) == b"abc"  # type: ignore[union-attr]
    guest.send(datagram)
    assert [type(e) for e in guest.effects] == [SendDatagram]
    (reply,) = guest.host_datagram(opened.flow, b"xyz")
    assert (reply[IP].src, reply[UDP].sport, reply[IP].dst, reply[UDP].dport) == (
        "192.0.2.1", 7, GUEST_IP, 5000)
    assert bytes(reply[UDP].payload) == b"xyz"
    assert UDP(bytes(reply[UDP])).chksum == reply[UDP].chksum


def test_udp_to_gateway_reaches_host_loopback_when_enabled() -> None:
    guest = GuestHarness()
    guest.send(from_guest(GATEWAY) / UDP(sport=5000, dport=9000) / b"x")
    (opened,) = guest.of_type(OpenUdp)
    assert opened.host_addr == packed("127.0.0.1")  # type: ignore[union-attr]
    assert opened.flow.remote_addr == packed(GATEWAY)  # type: ignore[union-attr]


def test_udp_to_gateway_without_host_loopback_is_net_unreachable() -> None:
    guest = GuestHarness(Config(host_loopback=False))
    (error,) = guest.send(from_guest(GATEWAY) / UDP(sport=5000, dport=9000) / b"x")
    assert guest.effects == []
    assert (error[ICMP].type, error[ICMP].code, error[IP].src) == (3, 0, GATEWAY)
    assert error[IPerror].dst == GATEWAY and error[UDPerror].sport == 5000


def test_udp_host_port_unreachable_becomes_icmp_for_guest() -> None:
    guest = GuestHarness()
    guest.send(from_guest("192.0.2.1") / UDP(sport=5000, dport=9) / b"x")
    (opened,) = guest.of_type(OpenUdp)
    (error,) = guest.host_error(opened.flow, HostError(111, 3, 3, 0))  # type: ignore[union-attr]
    assert (error[ICMP].type, error[ICMP].code, error[IP].src) == (3, 3, "192.0.2.1")
    assert (error[UDPerror].sport, error[UDPerror].dport) == (5000, 9)


def test_udp_to_dns_address_other_port_is_port_unreachable() -> None:
    (error,) = GuestHarness().send(from_guest(DNS) / UDP(sport=5000, dport=80) / b"x")
    assert (error[ICMP].type, error[ICMP].code, error[IP].src) == (3, 3, DNS)


def test_udp_flow_limit_evicts_least_recently_used() -> None:
    guest = GuestHarness(Config(udp_flow_limit=2))
    flows = []
    for port in (1, 2, 3):
        guest.send(from_guest("192.0.2.1") / UDP(sport=port, dport=7) / b"x")
        flows.append(guest.of_type(OpenUdp)[0].flow)  # type: ignore[union-attr]
    assert Close(flows[0]) in guest.effects
    assert len(guest.stack.udp.table) == 2


def test_udp_flow_expires_when_idle() -> None:
    guest = GuestHarness(Config(udp_idle_s=10))
    guest.send(from_guest("192.0.2.1") / UDP(sport=1, dport=7) / b"x")
    (opened,) = guest.of_type(OpenUdp)
    guest.advance(9)
    assert guest.effects == []
    guest.advance(2)
    assert guest.effects == [Close(opened.flow)]  # type: ignore[union-attr]


def test_large_reply_is_fragmented_to_fit_the_mtu() -> None:
    guest = GuestHarness()
    guest.send(from_guest("192.0.2.1") / UDP(sport=1, dport=7) / b"x")
    (opened,) = guest.of_type(OpenUdp)
    data = bytes(range(256)) * 234  # 59904 bytes
    frames = guest.host_datagram(opened.flow, data)  # type: ignore[union-attr]
    assert len(frames) == 41 and all(len(f) <= 1514 for f in frames)
    from scapy.layers.inet import defragment  # type: ignore[import-untyped]
    (whole,) = defragment([f[IP] for f in frames])
    assert bytes(whole[UDP].payload) == data


def test_guest_fragments_are_reassembled_into_one_datagram() -> None:
    from scapy.layers.inet import fragment  # type: ignore[import-untyped]
    guest = GuestHarness()
    data = bytes(range(256)) * 234
    packet = IP(src=GUEST_IP, dst="192.0.2.1", id=99) / UDP(sport=1, dport=7) / Raw(data)
    pieces = fragment(packet, fragsize=1480)
    assert len(pieces) > 1
    for piece in reversed(pieces):  # out of order, too
        guest.send(Ether(src=GUEST_MAC, dst=OUR_MAC) / piece)
    sent = guest.of_type(SendDatagram)
    assert len(sent) == 1 and bytes(sent[0].data) == data  # type: ignore[union-attr]
    assert guest.stack.reassembler.held_bytes == 0
