"""The DHCP server and the DNS forwarder, as packet traces."""

import pytest
from scapy.layers.dhcp import BOOTP, DHCP  # type: ignore[import-untyped]
from scapy.layers.dns import DNS as DNSPacket, DNSQR, DNSRR  # type: ignore[import-untyped]
from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.inet6 import IPv6  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.config import Config
from slirpy.effects import Close, OpenUdp, SendDatagram
from slirpy.events import DnsUpstreams, HostError
from slirpy.services.dns import parse_resolv_conf
from tests.harness import DNS, GATEWAY, GUEST_IP, GUEST_MAC, OUR_MAC, GuestHarness, packed

MAC_BYTES = bytes.fromhex(GUEST_MAC.replace(":", ""))


def dhcp(message_type: str, *options: tuple[str, object], ciaddr: str = "0.0.0.0",
         src: str = "0.0.0.0", dst: str = "255.255.255.255", flags: int = 0) -> Ether:
    return (Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=src, dst=dst)
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=MAC_BYTES, xid=0x1234, ciaddr=ciaddr, flags=flags)
            / DHCP(options=[("message-type", message_type), *options, "end"]))


def options(reply: Ether) -> dict[str, object]:
    return {o[0]: o[1] for o in reply[DHCP].options if isinstance(o, tuple)}


def test_dhcp_discover_gets_offer_of_first_pool_address_with_router_dns_mtu() -> None:
    (offer,) = GuestHarness().send(dhcp("discover"))
    assert offer[BOOTP].yiaddr == "10.0.2.15" and offer[BOOTP].xid == 0x1234
    assert (offer[IP].src, offer[IP].dst, offer.dst) == (GATEWAY, "10.0.2.15", GUEST_MAC)
    opts = options(offer)
    assert opts["message-type"] == 2
    assert (opts["router"], opts["name_server"], opts["server_id"]) == (GATEWAY, DNS, GATEWAY)
    assert (opts["subnet_mask"], opts["interface-mtu"]) == ("255.255.255.0", 1500)
    assert opts["lease_time"] == 86400


def test_dhcp_request_after_offer_is_acked_and_lease_kept() -> None:
    guest = GuestHarness()
    guest.send(dhcp("discover"))
    (ack,) = guest.send(dhcp("request", ("requested_addr", "10.0.2.15"),
                             ("server_id", GATEWAY)))
    assert options(ack)["message-type"] == 5 and ack[BOOTP].yiaddr == "10.0.2.15"
    (offer,) = guest.send(dhcp("discover"))  # the same client again: the same address
    assert offer[BOOTP].yiaddr == "10.0.2.15"


def test_dhcp_request_for_wrong_address_is_naked_by_broadcast() -> None:
    (nak,) = GuestHarness().send(dhcp("request", ("requested_addr", "10.0.2.99")))
    assert options(nak)["message-type"] == 6
    assert (nak[IP].dst, nak.dst) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")


def test_dhcp_request_for_another_server_is_ignored() -> None:
    assert GuestHarness().send(dhcp("request", ("requested_addr", "10.0.2.15"),
                                    ("server_id", "10.0.2.99"))) == []


def test_dhcp_renewal_is_unicast_to_the_client() -> None:
    guest = GuestHarness()
    guest.send(dhcp("discover"))
    guest.send(dhcp("request", ("requested_addr", "10.0.2.15")))
    (ack,) = guest.send(dhcp("request", ciaddr="10.0.2.15", src="10.0.2.15", dst=GATEWAY))
    assert options(ack)["message-type"] == 5 and ack[IP].dst == "10.0.2.15"


def test_dhcp_broadcast_flag_gets_broadcast_reply() -> None:
    (offer,) = GuestHarness().send(dhcp("discover", flags=0x8000))
    assert (offer[IP].dst, offer.dst) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")


def test_dhcp_pool_exhausted_gets_no_offer() -> None:
    guest = GuestHarness()
    for n in range(16):
        frame = dhcp("discover")
        frame[BOOTP].chaddr = bytes([2, 0, 0, 0, 1, n])
        assert len(guest.send(frame)) == 1
    frame = dhcp("discover")
    frame[BOOTP].chaddr = bytes([2, 0, 0, 0, 2, 0])
    assert guest.send(frame) == []
    assert len(guest.stack.dhcp.leases) == 16


def test_dhcp_without_dns_leaves_out_name_server() -> None:
    (offer,) = GuestHarness(Config(dns=False)).send(dhcp("discover"))
    assert "name_server" not in options(offer)


def query(name: str = "example.test", ident: int = 77, sport: int = 33333) -> Ether:
    return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
            / UDP(sport=sport, dport=53) / DNSPacket(id=ident, rd=1, qd=DNSQR(qname=name)))


def forwarder(*servers: str) -> GuestHarness:
    guest = GuestHarness(Config(dns_timeout_s=1.0))
    guest.feed(DnsUpstreams(tuple((packed(s), 53) for s in servers)))
    return guest


def answer_to(sent: SendDatagram) -> bytes:
    asked = DNSPacket(bytes(sent.data))
    return bytes(DNSPacket(id=asked.id, qr=1, rd=1, ra=1, qd=asked.qd,
                           an=DNSRR(rrname=asked.qd[0].qname, rdata="192.0.2.1")))


def test_dns_query_is_relayed_and_answer_returned_from_dns_address() -> None:
    guest = forwarder("127.0.0.53")
    assert guest.send(query()) == []
    opened, sent = guest.effects
    assert isinstance(opened, OpenUdp) and opened.host_addr == packed("127.0.0.53")
    assert isinstance(sent, SendDatagram)
    (reply,) = guest.host_datagram(opened.flow, answer_to(sent))
    assert guest.effects == [Close(opened.flow)]
    assert (reply[IP].src, reply[UDP].sport, reply[UDP].dport) == (DNS, 53, 33333)
    assert reply[DNSPacket].id == 77 and reply[DNSPacket].an[0].rdata == "192.0.2.1"


def test_dns_fails_over_to_next_upstream_on_timeout_and_prefers_it_after() -> None:
    guest = forwarder("192.0.2.53", "127.0.0.53")
    guest.send(query())
    first = guest.of_type(OpenUdp)[0]
    assert guest.advance(1.5) == []
    assert Close(first.flow) in guest.effects  # type: ignore[union-attr]
    second, sent = guest.of_type(OpenUdp)[0], guest.of_type(SendDatagram)[0]
    assert second.host_addr == packed("127.0.0.53")  # type: ignore[union-attr]
    (reply,) = guest.host_datagram(second.flow, answer_to(sent))  # type: ignore[union-attr,arg-type]
    assert reply[DNSPacket].an[0].rdata == "192.0.2.1"
    guest.send(query(ident=78))  # the next query goes to the one that answered
    assert guest.of_type(OpenUdp)[0].host_addr == packed("127.0.0.53")  # type: ignore[union-attr]


def test_dns_fails_over_at_once_on_port_unreachable() -> None:
    guest = forwarder("127.0.0.9", "127.0.0.53")
    guest.send(query())
    first = guest.of_type(OpenUdp)[0]
    guest.host_error(first.flow, HostError(111, 3, 3))  # type: ignore[union-attr]
    assert guest.of_type(OpenUdp)[0].host_addr == packed("127.0.0.53")  # type: ignore[union-attr]


def test_dns_all_upstreams_dead_gives_servfail() -> None:
    guest = forwarder("192.0.2.53")
    guest.send(query())
    (reply,) = guest.advance(1.5)
    assert reply[DNSPacket].rcode == 2 and reply[DNSPacket].id == 77
    assert reply[DNSPacket].qd[0].qname == b"example.test."
    assert guest.stack.dns.in_flight == 0 and len(guest.stack.dns_client) == 0


def test_dns_answer_with_wrong_id_is_ignored() -> None:
    guest = forwarder("127.0.0.53")
    guest.send(query(ident=5))
    opened, sent = guest.effects
    assert guest.host_datagram(opened.flow, bytes(DNSPacket(id=6, qr=1))) == []  # type: ignore[union-attr]


def from_guest6(dst: str) -> Ether:
    return Ether(src=GUEST_MAC, dst=OUR_MAC) / IPv6(src="fd00::100", dst=dst)


DISABLED_DNS_FRAMES = {
    "udp-query": query(),
    "udp-other-port": Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
    / UDP(sport=33333, dport=5353) / b"x",
    "tcp-syn-53": Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
    / TCP(sport=40000, dport=53, flags="S", seq=1),
    "tcp-syn-80": Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
    / TCP(sport=40000, dport=80, flags="S", seq=1),
    "tcp-ack": Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
    / TCP(sport=40000, dport=53, flags="A", seq=1, ack=1),
    "udp6-query": from_guest6("fd00::3") / UDP(sport=33333, dport=53)
    / DNSPacket(id=1, rd=1, qd=DNSQR(qname="example.test")),
    "tcp6-syn-53": from_guest6("fd00::3") / TCP(sport=40000, dport=53, flags="S", seq=1),
}


@pytest.mark.parametrize("name", DISABLED_DNS_FRAMES)
def test_dns_disabled_address_answers_nothing_but_counts_the_drop(name: str) -> None:
    # As slirp4netns --disable-dns: no DNS, no port unreachable, no reset (connects time out).
    guest = GuestHarness(Config(dns=False, ipv6=True))
    assert guest.send(DISABLED_DNS_FRAMES[name]) == []
    assert guest.effects == []
    assert guest.stack.stats.drop_counts() == {"dns-disabled": 1}


def test_dns_disabled_address_still_answers_ping_with_ttl_255() -> None:
    guest = GuestHarness(Config(dns=False))
    (reply,) = guest.send(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
                          / ICMP(id=7, seq=1) / b"hi")
    assert (reply[IP].src, reply[IP].ttl, reply[ICMP].type, reply[ICMP].id) == (DNS, 255, 0, 7)


@pytest.mark.parametrize("dport", [53, 80])
def test_dns_enabled_tcp_without_upstream_or_to_other_port_is_reset(dport: int) -> None:
    (reset,) = GuestHarness().send(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
                                   / TCP(sport=40000, dport=dport, flags="S", seq=1))
    assert reset[IP].src == DNS and reset[TCP].flags == "RA"


@pytest.mark.parametrize("text, expected", [
    ("nameserver 127.0.0.53\noptions edns0\n", [("127.0.0.53", 53)]),
    ("# c\nnameserver 192.0.2.1\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver bad\n",
     [("192.0.2.1", 53), ("::1", 53), ("fe80::1", 53)]),
    ("search example\n", []),
])
def test_resolv_conf_nameservers_are_read_in_order(text: str,
                                                   expected: list[tuple[str, int]]) -> None:
    assert parse_resolv_conf(text) == [(packed(a), p) for a, p in expected]
