"""IPv6 through the sans-IO stack: scapy frames in, effects out, frames decoded by scapy.

Neighbour discovery and router advertisements, echo, UDP, TCP, the DNS forwarder,
destinations never forwarded, hostile frames, fragments both ways, and who the guest
sees behind a forward.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import TCP, UDP, UDPerror
from scapy.layers.inet6 import (
    HBHOptUnknown, ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA,
    ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr, ICMPv6PacketTooBig, IPerror6,
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Jumbo,
    defragment6, fragment6)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac

from slirpy.events import (Connected, DnsUpstreams, GuestFrame, HostDatagram, HostFailed,
                           HostError, TimerDue)
from slirpy.forward.spec import ForwardError
from slirpy.addresses import Network
from slirpy.config import Config
from slirpy.effects import Close, Connect, Effect, OpenPing, OpenUdp, Send, SendDatagram, ToGuest
from slirpy.flows.key import FlowKey
from slirpy.forward.nat import visible_source
from slirpy.forward.spec import LocalForward, Proto
from slirpy.ndp import RA_INTERVAL_S
from slirpy.reassembly import MAX_PIECES, MAX_QUEUES
from slirpy.stack import Stack
from tests.harness import forward_accept

GUEST_MAC = "02:00:00:00:00:64"
OUR_MAC = "52:55:0a:00:02:02"
GUEST6 = "fd00::100"
GUEST_LL = "fe80::64"
GATEWAY6 = "fd00::2"
DNS6 = "fd00::3"
ROUTER = "fe80::2"
REMOTE = "2001:db8::1"
ALL_NODES_MAC = "33:33:00:00:00:01"
T0 = 1000.0


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def new_stack(**config: object) -> Stack:
    return Stack(Config(ipv6=True, **config), secret=b"test")  # type: ignore[arg-type]


def feed(stack: Stack, frame: object, now: float = T0) -> list[Effect]:
    return stack.feed(GuestFrame(bytes(frame)), now)  # type: ignore[call-overload]


def frames(effects: list[Effect]) -> list[Ether]:
    return [Ether(bytes(e.headers) + bytes(e.payload)) for e in effects
            if isinstance(e, ToGuest)]


def others(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, ToGuest)]


def group_of(addr: str) -> str:
    """The solicited-node group of *addr*, by scapy."""
    return ipaddress.IPv6Address(in6_getnsma(packed(addr))).compressed


def eth(dst: str = OUR_MAC) -> Ether:
    return Ether(src=GUEST_MAC, dst=dst)


def from_guest(dst: str, src: str = GUEST6, **fields: Any) -> Packet:
    return eth() / IPv6(src=src, dst=dst, **fields)


def nd(dst: str, src: str = GUEST_LL, hlim: int = 255) -> Packet:
    """The Ethernet and IPv6 headers of an ND message from the guest."""
    mac = in6_getnsmac(packed(dst)) if dst.startswith("ff") else OUR_MAC
    return eth(mac) / IPv6(src=src, dst=dst, hlim=hlim)


def solicitation(target: str, src: str = GUEST_LL, hlim: int = 255, code: int = 0,
                 dst: str | None = None, lladdr: str | None = GUEST_MAC) -> Packet:
    group = dst or group_of(target)
    frame = nd(group, src, hlim) / ICMPv6ND_NS(tgt=target, code=code)
    return frame / ICMPv6NDOptSrcLLAddr(lladdr=lladdr) if lladdr else frame


def advertisement(target: str = GUEST6, lladdr: str = GUEST_MAC, dst: str = ROUTER,
                  src: str = GUEST6) -> Packet:
    return nd(dst, src) / ICMPv6ND_NA(tgt=target, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(
        lladdr=lladdr)


def checksum_ok(frame: Packet, layer: type, field: str = "cksum") -> bool:
    """Whether *layer*'s checksum is the one scapy computes for the same bytes."""
    again = Ether(bytes(frame))
    setattr(again[layer], field, None)
    return bool(getattr(Ether(bytes(again))[layer], field) == getattr(frame[layer], field))


def icmp6_ok(frame: Packet) -> bool:
    return checksum_ok(frame, type(frame[IPv6].payload))


def split(packet: Packet, size: int) -> list[Packet]:
    """scapy's fragment6, typed."""
    return list(fragment6(packet, size))  # type: ignore[no-untyped-call]


def joined(pieces: list[Packet]) -> IPv6:
    """scapy's defragment6, typed, dissected again from its bytes."""
    return IPv6(bytes(defragment6(pieces)))  # type: ignore[no-untyped-call]


def drops(stack: Stack) -> dict[str, int]:
    return stack.stats.drop_counts()


# --- router advertisements --------------------------------------------------------------

def router_solicitation(hlim: int = 255, code: int = 0) -> Packet:
    return nd("ff02::2", hlim=hlim) / ICMPv6ND_RS(code=code) / ICMPv6NDOptSrcLLAddr(
        lladdr=GUEST_MAC)


def check_ra(ra: Packet, *, mtu: int = 1500, dns: bool = True) -> None:
    assert (ra.src, ra.dst) == (OUR_MAC, ALL_NODES_MAC)
    assert (ra[IPv6].src, ra[IPv6].dst, ra[IPv6].hlim) == (ROUTER, "ff02::1", 255)
    assert ra[ICMPv6ND_RA].code == 0 and ra[ICMPv6ND_RA].routerlifetime > 0
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == OUR_MAC
    prefix = ra[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("fd00::", 64, 1, 1)
    assert prefix.validlifetime >= prefix.preferredlifetime > 0
    assert ra[ICMPv6NDOptMTU].mtu == mtu
    if dns:
        assert ra[ICMPv6NDOptRDNSS].dns == [DNS6] and ra[ICMPv6NDOptRDNSS].lifetime > 0
    else:
        assert ICMPv6NDOptRDNSS not in ra
    assert icmp6_ok(ra)


def test_router_solicitation_gets_an_advertisement() -> None:
    stack = new_stack()
    effects = feed(stack, router_solicitation())
    (ra,) = frames(effects)
    assert others(effects) == []
    check_ra(ra)
    assert stack.link.neighbours[packed(GUEST_LL)] == bytes.fromhex("020000000064")


@pytest.mark.parametrize("mtu", [1280, 9000])
def test_advertised_mtu_is_the_configured_one(mtu: int) -> None:
    (ra,) = frames(feed(new_stack(mtu=mtu), router_solicitation()))
    check_ra(ra, mtu=mtu)


def test_no_rdnss_without_dns() -> None:
    (ra,) = frames(feed(new_stack(dns=False), router_solicitation()))
    check_ra(ra, dns=False)


def test_router_solicitation_from_unspecified_without_option_is_answered() -> None:
    frame = nd("ff02::2", src="::") / ICMPv6ND_RS()
    (ra,) = frames(feed(new_stack(), frame))
    check_ra(ra)


def test_router_solicitation_from_unspecified_with_option_is_dropped() -> None:
    stack = new_stack()
    frame = nd("ff02::2", src="::") / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)
    assert feed(stack, frame) == []
    assert drops(stack) == {"nd-unspecified-with-link-addr": 1}


def test_first_timer_sends_an_advertisement_then_every_interval() -> None:
    stack = new_stack()
    assert stack.next_deadline() == 0.0
    (ra,) = frames(stack.feed(TimerDue(), 0.0))
    check_ra(ra)
    assert stack.next_deadline() == pytest.approx(RA_INTERVAL_S)
    assert RA_INTERVAL_S == pytest.approx(120.0)
    assert frames(stack.feed(TimerDue(), 60.0)) == []
    (again,) = frames(stack.feed(TimerDue(), RA_INTERVAL_S))
    check_ra(again)
    assert stack.next_deadline() == pytest.approx(2 * RA_INTERVAL_S)


def test_no_advertisements_without_ipv6() -> None:
    stack = Stack(Config())
    assert stack.next_deadline() is None
    assert stack.feed(TimerDue(), 0.0) == []


# --- neighbour solicitations and advertisements ------------------------------------------------

@pytest.mark.parametrize("target", [GATEWAY6, DNS6, ROUTER])
@pytest.mark.parametrize("src", [GUEST_LL, GUEST6])
def test_solicitation_for_our_address_gets_a_solicited_advertisement(target: str,
                                                                     src: str) -> None:
    stack = new_stack()
    (na,) = frames(feed(stack, solicitation(target, src=src)))
    assert (na.src, na.dst) == (OUR_MAC, GUEST_MAC)
    assert (na[IPv6].src, na[IPv6].dst, na[IPv6].hlim) == (target, src, 255)
    adv = na[ICMPv6ND_NA]
    assert (adv.tgt, adv.code, adv.R, adv.S, adv.O) == (target, 0, 1, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC
    assert icmp6_ok(na)
    assert drops(stack) == {}


def test_unicast_solicitation_for_our_address_is_answered() -> None:
    # Neighbour unreachability detection: straight to the address, not its group.
    (na,) = frames(feed(new_stack(), solicitation(GATEWAY6, dst=GATEWAY6)))
    assert na[ICMPv6ND_NA].tgt == GATEWAY6 and na[ICMPv6ND_NA].S == 1


@pytest.mark.parametrize("target", ["fd00::55", GUEST6, "fe80::1", "2001:db8::1"])
def test_solicitation_for_another_address_is_not_answered(target: str) -> None:
    stack = new_stack()
    assert feed(stack, solicitation(target)) == []
    assert drops(stack) == {}


def dad(target: str, dst: str | None = None, lladdr: str | None = None) -> Packet:
    return solicitation(target, src="::", dst=dst, lladdr=lladdr)


def test_guest_dad_for_its_own_address_gets_silence() -> None:
    stack = new_stack()
    assert feed(stack, dad(GUEST6)) == []
    assert feed(stack, dad(GUEST_LL)) == []
    assert drops(stack) == {}


@pytest.mark.parametrize("target", [GATEWAY6, DNS6, ROUTER])
def test_dad_for_our_address_gets_an_unsolicited_advertisement_to_all_nodes(target: str) -> None:
    (na,) = frames(feed(new_stack(), dad(target)))
    assert (na.src, na.dst) == (OUR_MAC, ALL_NODES_MAC)
    assert (na[IPv6].src, na[IPv6].dst, na[IPv6].hlim) == (target, "ff02::1", 255)
    adv = na[ICMPv6ND_NA]
    assert (adv.tgt, adv.S, adv.O, adv.R) == (target, 0, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC
    assert icmp6_ok(na)


@pytest.mark.parametrize("frame, reason", [
    pytest.param(dad(GATEWAY6, lladdr=GUEST_MAC), "nd-unspecified-with-link-addr",
                 id="dad-with-link-addr"),
    pytest.param(dad(GATEWAY6, dst="ff02::1"), "nd-dad-not-to-solicited-node",
                 id="dad-to-all-nodes"),
    pytest.param(dad(GATEWAY6, dst=group_of(DNS6)), "nd-dad-not-to-solicited-node",
                 id="dad-to-another-group"),
])
def test_bad_dad_is_dropped(frame: Packet, reason: str) -> None:
    stack = new_stack()
    assert feed(stack, frame) == []
    assert drops(stack) == {reason: 1}


@pytest.mark.parametrize("frame", [
    pytest.param(solicitation(GATEWAY6, hlim=254), id="ns-hop-limit-254"),
    pytest.param(solicitation(GATEWAY6, hlim=64, dst=GATEWAY6), id="unicast-ns-hop-limit-64"),
    pytest.param(solicitation(GATEWAY6, code=1), id="ns-code-1"),
    pytest.param(router_solicitation(hlim=1), id="rs-hop-limit-1"),
    pytest.param(router_solicitation(code=3), id="rs-code-3"),
    pytest.param(nd(ROUTER, src=GUEST6, hlim=64) / ICMPv6ND_NA(tgt=GUEST6)
                 / ICMPv6NDOptDstLLAddr(lladdr=GUEST_MAC), id="na-hop-limit-64"),
])
def test_nd_not_from_the_link_is_dropped(frame: Packet) -> None:
    stack = new_stack()
    assert feed(stack, frame) == []
    assert drops(stack) == {"nd-not-from-link": 1}


def test_nd_with_a_zero_length_option_is_dropped() -> None:
    stack = new_stack()
    frame = nd(group_of(GATEWAY6)) / ICMPv6ND_NS(tgt=GATEWAY6) / (b"\x01\x00" + bytes(6))
    assert feed(stack, frame) == []
    assert drops(stack) == {"nd-option-zero-length": 1}


def test_nd_for_a_multicast_target_is_dropped() -> None:
    stack = new_stack()
    frame = nd("ff02::1") / ICMPv6ND_NS(tgt="ff02::1")
    assert feed(stack, frame) == []
    assert drops(stack) == {"nd-multicast-target": 1}


def test_nd_with_a_bad_checksum_is_dropped() -> None:
    stack = new_stack()
    frame = nd(group_of(GATEWAY6)) / ICMPv6ND_NS(tgt=GATEWAY6, cksum=0x1234)
    assert feed(stack, frame) == []
    assert drops(stack) == {"icmp-checksum": 1}


def test_router_advertisement_from_the_guest_is_dropped() -> None:
    stack = new_stack()
    assert feed(stack, nd("ff02::1") / ICMPv6ND_RA()) == []
    assert drops(stack) == {"nd-unexpected-type": 1}


def test_advertisement_claiming_our_address_changes_nothing() -> None:
    stack = new_stack()
    assert feed(stack, advertisement(target=GATEWAY6, dst="ff02::1")) == []
    assert packed(GATEWAY6) not in stack.link.neighbours


# --- frames slirpy starts towards the guest: held until neighbour discovery answers ---

def forward_to(target: str = GUEST6, port: int = 80) -> LocalForward:
    return LocalForward(Proto.TCP, ipaddress.IPv6Address("::"), 8080,
                   ipaddress.IPv6Address(target), port)


def accept(stack: Stack, client: str = "2001:db8::7", port: int = 40000,
           target: str = GUEST6) -> tuple[FlowKey | None, list[Effect]]:
    return forward_accept(stack, forward_to(target), (packed(client), port), 65536, T0)


def test_advertisement_teaches_the_guest_mac_for_forwarded_frames() -> None:
    stack = new_stack()
    other_mac = "02:00:00:00:00:99"
    # Unsolicited, to all nodes, its link-layer address in the option.
    assert feed(stack, advertisement(lladdr=other_mac, dst="ff02::1")) == []
    assert stack.link.neighbours[packed(GUEST6)] == bytes.fromhex("020000000099")
    key, effects = accept(stack)
    assert key is not None
    (syn,) = frames(effects)
    assert syn.dst == other_mac
    assert (syn[IPv6].src, syn[IPv6].dst) == ("2001:db8::7", GUEST6)
    assert syn[TCP].flags == "S" and (syn[TCP].sport, syn[TCP].dport) == (40000, 80)


def test_forwarded_frame_to_unknown_guest_address_waits_for_neighbour_discovery() -> None:
    stack = new_stack()
    key, effects = accept(stack)
    assert key is not None and key.guest_addr == packed(GUEST6)
    (ns,) = frames(effects)  # no SYN yet: only the question
    group = group_of(GUEST6)
    assert (ns.src, ns.dst) == (OUR_MAC, in6_getnsmac(in6_getnsma(packed(GUEST6))))
    assert (ns[IPv6].src, ns[IPv6].dst, ns[IPv6].hlim) == (ROUTER, group, 255)
    assert ns[ICMPv6ND_NS].tgt == GUEST6 and ns[ICMPv6NDOptSrcLLAddr].lladdr == OUR_MAC
    assert icmp6_ok(ns)
    # Unanswered: asked again a second later (beside the first timer's RA), still no SYN.
    later = [f for f in frames(stack.feed(TimerDue(), T0 + 1.0)) if ICMPv6ND_RA not in f]
    assert [f[ICMPv6ND_NS].tgt for f in later] == [GUEST6]
    # The guest's answer (solicited, unicast to the router) releases the SYN (and its
    # retransmission, held meanwhile: the same segment again, as over IPv4).
    released = frames(feed(stack, advertisement(), T0 + 1.5))
    assert released and len({bytes(f) for f in released}) == 1
    syn = released[0]
    assert syn.dst == GUEST_MAC
    assert (syn[IPv6].src, syn[IPv6].dst) == ("2001:db8::7", GUEST6)
    assert syn[TCP].flags == "S" and checksum_ok(syn, TCP, "chksum")
    assert (dict(syn[TCP].options)["MSS"]) == 1500 - 60


def test_answer_from_link_local_source_also_releases() -> None:
    stack = new_stack()
    _, effects = accept(stack)
    assert len(frames(effects)) == 1
    (syn,) = frames(feed(stack, advertisement(src=GUEST_LL), T0 + 0.5))
    assert syn[TCP].flags == "S" and syn[IPv6].dst == GUEST6


def test_forward_to_ipv6_target_refused_without_ipv6() -> None:
    stack = Stack(Config(), secret=b"test")
    with pytest.raises(ForwardError, match="IPv6 on"):
        stack.control.add(1, forward_to())
    assert stack.control.local_forward(1) is None


# --- echo ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dst, src", [(GATEWAY6, GUEST6), (DNS6, GUEST6), (ROUTER, GUEST_LL),
                                      (ROUTER, GUEST6)])
def test_echo_to_our_address_is_answered(dst: str, src: str) -> None:
    stack = new_stack()
    effects = feed(stack, from_guest(dst, src) / ICMPv6EchoRequest(id=7, seq=3, data=b"hello"))
    (reply,) = frames(effects)
    assert others(effects) == []
    assert (reply.src, reply.dst) == (OUR_MAC, GUEST_MAC)
    assert (reply[IPv6].src, reply[IPv6].dst) == (dst, src)
    echo = reply[ICMPv6EchoReply]
    assert (echo.type, echo.code, echo.id, echo.seq, echo.data) == (129, 0, 7, 3, b"hello")
    assert icmp6_ok(reply)


def test_echo_with_a_bad_checksum_is_dropped() -> None:
    stack = new_stack()
    assert feed(stack, from_guest(GATEWAY6) / ICMPv6EchoRequest(cksum=0xBEEF)) == []
    assert drops(stack) == {"icmp-checksum": 1}


def test_echo_to_remote_opens_a_ping_socket_and_relays_the_reply() -> None:
    stack = new_stack()
    effects = feed(stack, from_guest(REMOTE) / ICMPv6EchoRequest(id=7, seq=3, data=b"ping"))
    assert frames(effects) == []
    opened, sent = effects
    assert isinstance(opened, OpenPing) and opened.host_addr == packed(REMOTE)
    assert opened.flow == FlowKey(58, packed(GUEST6), 7, packed(REMOTE), 0)
    assert isinstance(sent, SendDatagram) and sent.flow == opened.flow
    request = ICMPv6EchoRequest(bytes(sent.data))
    assert (request.type, request.seq, request.data) == (128, 3, b"ping")
    # The kernel answers with its own id; the guest sees its own again.
    kernel_reply = bytes(ICMPv6EchoReply(id=4242, seq=3, data=b"ping", cksum=0))
    (reply,) = frames(stack.feed(HostDatagram(opened.flow, kernel_reply), T0 + 0.01))
    assert (reply[IPv6].src, reply[IPv6].dst) == (REMOTE, GUEST6)
    echo = reply[ICMPv6EchoReply]
    assert (echo.type, echo.id, echo.seq, echo.data) == (129, 7, 3, b"ping")
    assert icmp6_ok(reply)
    # A second request reuses the socket.
    again = feed(stack, from_guest(REMOTE) / ICMPv6EchoRequest(id=7, seq=4), T0 + 1)
    assert [type(e) for e in again] == [SendDatagram]


def test_echo_to_multicast_is_not_answered() -> None:
    stack = new_stack()
    frame = eth("33:33:00:00:00:01") / IPv6(src=GUEST6, dst="ff02::1") / ICMPv6EchoRequest()
    assert feed(stack, frame) == []
    assert drops(stack) == {"icmp6-unsupported-type": 1}


def test_echo_host_error_becomes_an_icmpv6_error() -> None:
    stack = new_stack()
    opened, _ = feed(stack, from_guest(REMOTE) / ICMPv6EchoRequest(id=7, seq=3))
    assert isinstance(opened, OpenPing)
    (error,) = frames(stack.feed(HostFailed(opened.flow, HostError(
        errno.EHOSTUNREACH, icmp_type=1, icmp_code=3)), T0))
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 3)
    assert error[IPerror6].src == GUEST6 and error[IPerror6].dst == REMOTE
    assert icmp6_ok(error)


# --- UDP ------------------------------------------------------------------------------------

def udp_from_guest(dst: str, dport: int, payload: bytes = b"payload", sport: int = 5000,
                   **udp: Any) -> Packet:
    return from_guest(dst) / UDP(sport=sport, dport=dport, **udp) / payload


def test_udp_to_remote_opens_a_flow_and_relays_the_reply() -> None:
    stack = new_stack()
    opened, sent = feed(stack, udp_from_guest(REMOTE, 7))
    key = FlowKey(17, packed(GUEST6), 5000, packed(REMOTE), 7)
    assert opened == OpenUdp(key, packed(REMOTE), 7)
    assert isinstance(sent, SendDatagram) and sent.flow == key and bytes(sent.data) == b"payload"
    (reply,) = frames(stack.feed(HostDatagram(key, b"echoed"), T0 + 0.01))
    assert reply.dst == GUEST_MAC
    assert (reply[IPv6].src, reply[IPv6].dst, reply[IPv6].nh) == (REMOTE, GUEST6, 17)
    assert (reply[UDP].sport, reply[UDP].dport, reply[UDP].load) == (7, 5000, b"echoed")
    assert checksum_ok(reply, UDP, "chksum")


def test_udp_to_the_gateway_goes_to_host_loopback() -> None:
    stack = new_stack()
    opened, _ = feed(stack, udp_from_guest(GATEWAY6, 9))
    key = FlowKey(17, packed(GUEST6), 5000, packed(GATEWAY6), 9)
    assert opened == OpenUdp(key, packed("::1"), 9)
    (reply,) = frames(stack.feed(HostDatagram(key, b"back"), T0))
    assert (reply[IPv6].src, reply[UDP].sport) == (GATEWAY6, 9)


def test_udp_to_the_gateway_without_host_loopback_is_unreachable() -> None:
    stack = new_stack(host_loopback=False)
    effects = feed(stack, udp_from_guest(GATEWAY6, 9))
    (error,) = frames(effects)
    assert others(effects) == []
    assert (error[IPv6].src, error[IPv6].dst) == (GATEWAY6, GUEST6)
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 0)
    assert (error[IPerror6].src, error[IPerror6].dst, error[IPerror6].nh) == (
        GUEST6, GATEWAY6, 17)
    assert (error[UDPerror].sport, error[UDPerror].dport) == (5000, 9)
    assert icmp6_ok(error)


def dns_query(name: str = "example.test") -> DNS:
    return DNS(id=0x4242, rd=1, qd=DNSQR(qname=name, qtype="AAAA"))


def test_udp_to_dns_port_53_goes_to_the_forwarder_and_back_from_the_dns_address() -> None:
    stack = new_stack()
    upstream = packed("2001:db8::53")
    stack.feed(DnsUpstreams(((upstream, 53),)), T0)
    query = bytes(dns_query())
    opened, sent = feed(stack, udp_from_guest(DNS6, 53, query))
    assert isinstance(opened, OpenUdp) and (opened.host_addr, opened.host_port) == (upstream, 53)
    assert opened.flow.guest_addr == packed(DNS6)
    assert isinstance(sent, SendDatagram) and bytes(sent.data) == query
    answer = bytes(DNS(id=0x4242, qr=1, rd=1, ra=1, qd=DNSQR(qname="example.test", qtype="AAAA"),
                       an=DNSRR(rrname="example.test", type="AAAA", rdata="2001:db8::99")))
    effects = stack.feed(HostDatagram(opened.flow, answer), T0 + 0.01)
    assert others(effects) == [Close(opened.flow)]
    (reply,) = frames(effects)
    assert (reply[IPv6].src, reply[IPv6].dst) == (DNS6, GUEST6)
    assert (reply[UDP].sport, reply[UDP].dport) == (53, 5000)
    assert reply[DNS].an[0].rdata == "2001:db8::99"
    assert checksum_ok(reply, UDP, "chksum")


def test_dns_address_other_port_is_port_unreachable() -> None:
    stack = new_stack()
    (error,) = frames(feed(stack, udp_from_guest(DNS6, 54)))
    assert error[IPv6].src == DNS6
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 4)
    assert (error[UDPerror].sport, error[UDPerror].dport) == (5000, 54)
    assert icmp6_ok(error)


def test_dns_disabled_answers_nothing() -> None:
    """As slirp4netns: with the forwarder off, prefix::3 is an address that answers nothing."""
    stack = new_stack(dns=False)
    assert feed(stack, udp_from_guest(DNS6, 53, bytes(dns_query()))) == []
    assert stack.stats.drop_counts() == {"dns-disabled": 1}


def remote_flow(stack: Stack) -> FlowKey:
    opened, _ = feed(stack, udp_from_guest(REMOTE, 7))
    assert isinstance(opened, OpenUdp)
    return opened.flow


def test_host_port_unreachable_reaches_the_guest_as_icmpv6() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    (error,) = frames(stack.feed(HostFailed(key, HostError(errno.ECONNREFUSED, icmp_type=1,
                                                         icmp_code=4, info=0)), T0))
    assert (error[IPv6].src, error[IPv6].dst) == (REMOTE, GUEST6)
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 4)
    assert (error[IPerror6].src, error[IPerror6].dst) == (GUEST6, REMOTE)
    assert (error[UDPerror].sport, error[UDPerror].dport) == (5000, 7)
    assert icmp6_ok(error)


def test_host_packet_too_big_carries_the_mtu() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    (error,) = frames(stack.feed(HostFailed(key, HostError(errno.EMSGSIZE, icmp_type=2,
                                                         icmp_code=0, info=1280)), T0))
    assert (error[ICMPv6PacketTooBig].type, error[ICMPv6PacketTooBig].mtu) == (2, 1280)
    assert (error[UDPerror].sport, error[UDPerror].dport) == (5000, 7)
    assert icmp6_ok(error)


def test_host_error_of_an_unknown_icmpv6_type_is_not_relayed() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    assert stack.feed(HostFailed(key, HostError(0, icmp_type=4, icmp_code=0)), T0) == []


def test_host_socket_failure_is_address_unreachable() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    effects = stack.feed(HostFailed(key, HostError(errno.ENETUNREACH)), T0)
    assert others(effects) == [Close(key)]
    (error,) = frames(effects)
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 3)


def test_udp_with_zero_checksum_over_ipv6_is_dropped() -> None:
    stack = new_stack()
    assert feed(stack, udp_from_guest(REMOTE, 7, chksum=0)) == []
    assert drops(stack) == {"udp-checksum": 1}


def _zero_checksum_whose_sum_is_negative_zero() -> bytes:
    """A UDP datagram whose true checksum is 0xFFFF, sent with 0 ("none") instead."""
    from slirpy.wire.checksum import ones_sum, pseudo_header_sum
    header = bytearray(bytes(UDP(sport=5000, dport=7, len=10, chksum=0)) + b"\0\0")
    total = ones_sum(header, pseudo_header_sum(packed(GUEST6), packed(REMOTE), 17, 10))
    header[8:10] = (~total & 0xFFFF).to_bytes(2, "big")  # the sum is now 0xFFFF
    return bytes(from_guest(REMOTE, nh=17) / Raw(bytes(header)))


def test_udp_zero_checksum_dropped_even_when_the_sum_is_negative_zero() -> None:
    stack = new_stack()
    frame = _zero_checksum_whose_sum_is_negative_zero()
    assert IPv6(frame[14:])[UDP].chksum == 0
    assert feed(stack, frame) == []
    assert drops(stack) == {"udp-checksum": 1}


def test_udp_with_a_bad_checksum_is_dropped() -> None:
    stack = new_stack()
    assert feed(stack, udp_from_guest(REMOTE, 7, chksum=0x1234)) == []
    assert drops(stack) == {"udp-checksum": 1}


# --- TCP ------------------------------------------------------------------------------------

def test_tcp_over_ipv6_connects_answers_with_mss_and_relays_data() -> None:
    stack = new_stack()
    syn = from_guest(REMOTE) / TCP(sport=40000, dport=80, flags="S", seq=1000,
                                   options=[("MSS", 1440)])
    (connect,) = feed(stack, syn)
    key = FlowKey(6, packed(GUEST6), 40000, packed(REMOTE), 80)
    assert connect == Connect(key, packed(REMOTE), 80)
    (synack,) = frames(stack.feed(Connected(key, 65536), T0 + 0.01))
    assert (synack[IPv6].src, synack[IPv6].dst) == (REMOTE, GUEST6)
    assert synack[TCP].flags == "SA" and synack[TCP].ack == 1001
    assert dict(synack[TCP].options)["MSS"] == 1500 - 60
    assert checksum_ok(synack, TCP, "chksum")
    data = from_guest(REMOTE) / TCP(sport=40000, dport=80, flags="PA", seq=1001,
                                    ack=synack[TCP].seq + 1) / b"GET / HTTP/1.0\r\n\r\n"
    sends = [e for e in feed(stack, data, T0 + 0.02) if isinstance(e, Send)]
    assert len(sends) == 1 and bytes(sends[0].data) == b"GET / HTTP/1.0\r\n\r\n"
    assert sends[0].flow == key


@pytest.mark.parametrize("mtu", [1280, 9000])
def test_tcp_mss_follows_the_mtu(mtu: int) -> None:
    stack = new_stack(mtu=mtu)
    feed(stack, from_guest(REMOTE) / TCP(sport=1, dport=80, flags="S", seq=1))
    key = FlowKey(6, packed(GUEST6), 1, packed(REMOTE), 80)
    (synack,) = frames(stack.feed(Connected(key, 65536), T0))
    assert dict(synack[TCP].options)["MSS"] == mtu - 60


def test_tcp_syn_to_gateway_without_host_loopback_is_net_unreachable() -> None:
    stack = new_stack(host_loopback=False)
    (error,) = frames(feed(stack, from_guest(GATEWAY6) / TCP(sport=1, dport=80, flags="S",
                                                             seq=77)))
    assert (error[ICMPv6DestUnreach].type, error[ICMPv6DestUnreach].code) == (1, 0)
    assert error[IPerror6].nh == 6


@pytest.mark.parametrize("dst", ["::1", "fe80::1", "fd00::55", "::ffff:127.0.0.1"])
def test_tcp_syn_to_a_never_forwarded_destination_is_dropped(dst: str) -> None:
    stack = new_stack()
    assert feed(stack, from_guest(dst) / TCP(sport=1, dport=80, flags="S")) == []
    assert sum(drops(stack).values()) == 1


# --- destinations and sources never forwarded --------------------------------------------------

@pytest.mark.parametrize("dst, reason", [
    ("::1", "ipv6-dst-not-forwarded"),
    ("::", "ipv6-dst-not-forwarded"),
    ("::ffff:127.0.0.1", "ipv6-dst-not-forwarded"),
    ("::ffff:192.0.2.1", "ipv6-dst-not-forwarded"),
    ("::127.0.0.1", "ipv6-dst-not-forwarded"),
    ("fe80::1", "ipv6-dst-not-forwarded"),
    ("febf::1", "ipv6-dst-not-forwarded"),
    ("ff05::1", "ipv6-multicast-not-nd"),
    ("ff02::fb", "ipv6-multicast-not-nd"),
    ("fd00::55", "ipv6-dst-in-network"),
    ("fd00::ffff", "ipv6-dst-in-network"),
])
@pytest.mark.parametrize("kind", ["udp", "echo"])
def test_destination_never_forwarded(dst: str, reason: str, kind: str) -> None:
    stack = new_stack()
    upper = UDP(sport=5000, dport=7) / b"x" if kind == "udp" else ICMPv6EchoRequest(id=1)
    if kind == "echo" and dst.startswith("ff"):
        reason = "icmp6-unsupported-type"  # an ICMPv6 message to a group: not ND
    assert feed(stack, from_guest(dst) / upper) == []
    assert drops(stack) == {reason: 1}


@pytest.mark.parametrize("src, reason", [
    (GATEWAY6, "ipv6-bad-src"),
    (DNS6, "ipv6-bad-src"),
    (ROUTER, "ipv6-bad-src"),
    ("ff02::1", "ipv6-multicast-src"),
    ("ff0e::1", "ipv6-multicast-src"),
])
def test_bad_source_is_dropped(src: str, reason: str) -> None:
    stack = new_stack()
    assert feed(stack, from_guest(REMOTE, src=src) / UDP(sport=1, dport=7) / b"x") == []
    assert drops(stack) == {reason: 1}


def test_unspecified_source_only_for_nd() -> None:
    stack = new_stack()
    assert feed(stack, from_guest(REMOTE, src="::") / UDP(sport=1, dport=7) / b"x") == []
    assert drops(stack) == {"ipv6-multicast-not-nd": 1}


def test_ipv6_disabled_drops_everything_ipv6() -> None:
    stack = Stack(Config())
    assert feed(stack, router_solicitation()) == []
    assert feed(stack, udp_from_guest(REMOTE, 7)) == []
    assert stack.stats.drop_counts() == {"ipv6-disabled": 2}


# --- hostile frames --------------------------------------------------------------------------

UDP_PART = UDP(sport=5000, dport=7) / b"payload!"
BASE = from_guest(REMOTE)
BASE_RAW = bytes(BASE / UDP_PART)


def patched(raw: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(raw)
    out[offset:offset + len(value)] = value
    return bytes(out)


def chain(count: int) -> Packet:
    frame = BASE
    for _ in range(count):
        frame = frame / IPv6ExtHdrDestOpt()
    return frame / UDP_PART


HOSTILE = [
    pytest.param(BASE_RAW[:14 + 39], "ipv6-short", id="truncated-fixed-header"),
    pytest.param(BASE_RAW[:14], "ipv6-short", id="no-ip-header"),
    pytest.param(patched(BASE_RAW, 14, b"\x45"), "ipv6-bad-version", id="version-4"),
    pytest.param(bytes(from_guest(REMOTE, plen=500) / UDP_PART), "ipv6-bad-length",
                 id="payload-length-past-frame"),
    pytest.param(bytes(from_guest(REMOTE, plen=0, nh=0)
                       / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=100000)]) / UDP_PART),
                 "ipv6-jumbogram", id="jumbogram"),
    pytest.param(bytes(chain(9)), "ipv6-too-many-ext", id="9-dest-opts"),
    pytest.param(bytes(chain(100)), "ipv6-too-many-ext", id="100-dest-opts"),
    pytest.param(bytes(BASE / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP_PART),
                 "ipv6-misplaced-hop-by-hop", id="hop-by-hop-not-first"),
    pytest.param(bytes(BASE / IPv6ExtHdrDestOpt(len=200) / UDP_PART), "ipv6-ext-short",
                 id="ext-longer-than-packet"),
    pytest.param(bytes(BASE / IPv6ExtHdrDestOpt(
        options=[HBHOptUnknown(otype=0x80, optdata=b"\0\0\0\0")]) / UDP_PART),
        "ipv6-unknown-option", id="unknown-option-discard"),
    pytest.param(bytes(BASE / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[REMOTE])
                       / UDP_PART), "ipv6-routing-type-0", id="routing-type-0"),
    pytest.param(bytes(BASE / IPv6ExtHdrRouting(type=2, segleft=1, addresses=[REMOTE])
                       / UDP_PART), "ipv6-routing-segments-left", id="routing-type-2-left-1"),
    pytest.param(bytes(BASE / IPv6ExtHdrFragment(id=1) / IPv6ExtHdrFragment(id=1, m=1)
                       / UDP_PART), "ipv6-nested-fragment", id="two-fragment-headers"),
    pytest.param(bytes(BASE / IPv6ExtHdrFragment(id=1, m=1) / (b"x" * 13)), "frag-bad-length",
                 id="middle-fragment-not-multiple-of-8"),
    pytest.param(bytes(BASE / IPv6ExtHdrFragment(id=1, offset=8191, m=0) / (b"x" * 16)),
                 "frag-too-big", id="fragment-past-65535"),
    pytest.param(bytes(BASE / IPv6ExtHdrFragment(id=1, m=1) / b""), "frag-bad-length",
                 id="empty-middle-fragment"),
    pytest.param(bytes(from_guest(REMOTE, nh=59)), "ip-unsupported-proto", id="no-next-header"),
    pytest.param(bytes(from_guest(REMOTE, nh=132) / b"sctp"), "ip-unsupported-proto",
                 id="sctp"),
    pytest.param(bytes(from_guest(REMOTE) / ICMPv6DestUnreach() / IPv6(src=REMOTE, dst=GUEST6)),
                 "icmp6-error-from-guest", id="icmp6-error-from-guest"),
    pytest.param(bytes(from_guest(REMOTE) / UDP(sport=5000, dport=0) / b"x"), "udp-port-zero",
                 id="udp-port-zero"),
    pytest.param(bytes(from_guest(REMOTE) / UDP(sport=5000, dport=7, len=300) / b"x"),
                 "udp-bad-length", id="udp-length-past-ip"),
]


@pytest.mark.parametrize("raw, reason", HOSTILE)
def test_hostile_frame_is_dropped_and_counted(raw: bytes, reason: str) -> None:
    stack = new_stack()
    assert stack.feed(GuestFrame(raw), T0) == []
    assert drops(stack) == {reason: 1}


def fragments(payload: bytes = b"z" * 3000, ident: int = 7, dest_opts: bool = False,
              size: int = 1280) -> list[Ether]:
    packet = IPv6(src=GUEST6, dst=REMOTE) / IPv6ExtHdrFragment(id=ident)
    if dest_opts:
        packet = packet / IPv6ExtHdrDestOpt()
    packet = packet / UDP(sport=5000, dport=7) / payload
    return [eth() / piece for piece in split(packet, size)]


def fragment(offset: int, data: bytes, more: bool, ident: int = 1) -> Packet:
    return BASE / IPv6ExtHdrFragment(id=ident, offset=offset // 8, m=int(more), nh=17) / data


def test_overlapping_fragments_drop_the_queue() -> None:
    stack = new_stack()
    assert feed(stack, fragment(0, b"a" * 16, True)) == []
    assert feed(stack, fragment(8, b"b" * 16, True)) == []
    assert drops(stack) == {"frag-overlap": 1}
    assert stack.reassembler.queues == {}


def test_too_many_pieces_drop_the_queue() -> None:
    stack = new_stack()
    for i in range(MAX_PIECES + 1):
        assert feed(stack, fragment(i * 8, bytes(8), True)) == []
    assert drops(stack) == {"frag-too-many-pieces": 1}


def test_a_flood_of_fragment_ids_evicts_the_oldest_queue() -> None:
    stack = new_stack()
    for ident in range(MAX_QUEUES + 10):
        assert feed(stack, fragment(0, bytes(8), True, ident=ident)) == []
    assert drops(stack) == {"frag-evicted": 10}
    assert len(stack.reassembler.queues) == MAX_QUEUES


def test_fragments_time_out() -> None:
    stack = new_stack()
    feed(stack, fragment(0, bytes(8), True))
    stack.feed(TimerDue(), T0 + 31)
    assert drops(stack) == {"frag-timeout": 1}


def _reassembled(stack: Stack, pieces: list[Ether]) -> list[Effect]:
    effects: list[Effect] = []
    for i, piece in enumerate(pieces):
        effects = feed(stack, piece)
        if i < len(pieces) - 1:
            assert effects == []
    return effects


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_fragmented_udp_is_reassembled_into_one_datagram(order: str) -> None:
    stack = new_stack()
    payload = bytes(range(256)) * 12
    pieces = fragments(payload)
    assert len(pieces) == 3
    effects = _reassembled(stack, pieces if order == "in-order" else pieces[::-1])
    opened, sent = effects
    assert isinstance(opened, OpenUdp) and opened.host_addr == packed(REMOTE)
    assert isinstance(sent, SendDatagram) and bytes(sent.data) == payload
    assert drops(stack) == {}


def test_fragments_with_destination_options_after_the_fragment_header() -> None:
    stack = new_stack()
    payload = b"q" * 2500
    pieces = fragments(payload, dest_opts=True)
    assert pieces[0][IPv6ExtHdrFragment].nh == 60
    opened, sent = _reassembled(stack, pieces)
    assert isinstance(opened, OpenUdp)
    assert isinstance(sent, SendDatagram) and bytes(sent.data) == payload


def test_fragments_with_unknown_discard_option_after_the_fragment_header_are_dropped() -> None:
    stack = new_stack()
    packet = (IPv6(src=GUEST6, dst=REMOTE) / IPv6ExtHdrFragment(id=3)
              / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x80, optdata=b"\0\0\0\0")])
              / UDP(sport=5000, dport=7) / (b"q" * 2000))
    for piece in split(packet, 1280):
        assert feed(stack, eth() / piece) == []
    assert drops(stack) == {"ipv6-unknown-option": 1}


def test_atomic_fragment_is_a_plain_datagram() -> None:
    stack = new_stack()
    effects = feed(stack, BASE / IPv6ExtHdrFragment(id=99, offset=0, m=0) / UDP_PART)
    opened, sent = effects
    assert isinstance(opened, OpenUdp)
    assert isinstance(sent, SendDatagram) and bytes(sent.data) == b"payload!"
    assert stack.reassembler.queues == {}


def test_fragmented_echo_to_the_gateway_is_answered() -> None:
    stack = new_stack()
    packet = (IPv6(src=GUEST6, dst=GATEWAY6) / IPv6ExtHdrFragment(id=5)
              / ICMPv6EchoRequest(id=1, seq=2, data=b"e" * 2000))
    replies = frames(_reassembled(stack, [eth() / p for p in split(packet, 1280)]))
    assert len(replies) == 2  # 2048 bytes of IPv6 payload: fragmented back at 1500
    whole = joined([r[IPv6] for r in replies])
    assert (whole.src, whole.dst) == (GATEWAY6, GUEST6)
    echo = whole[ICMPv6EchoReply]
    assert (echo.id, echo.seq, echo.data) == (1, 2, b"e" * 2000)
    recomputed = whole.copy()
    recomputed[ICMPv6EchoReply].cksum = None
    assert IPv6(bytes(recomputed))[ICMPv6EchoReply].cksum == echo.cksum


def test_fragmented_neighbour_solicitation_is_ignored() -> None:
    stack = new_stack()
    padding = b"\x0e\x7f" + bytes(127 * 8 - 2)  # one well-formed unknown option of 1016 bytes
    packet = (IPv6(src=GUEST6, dst=GATEWAY6, hlim=255) / IPv6ExtHdrFragment(id=5)
              / ICMPv6ND_NS(tgt=GATEWAY6) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC) / padding)
    pieces = split(packet, 600)
    assert len(pieces) == 2
    for piece in pieces:
        assert feed(stack, eth() / piece) == []


def test_largest_ipv6_udp_datagram_is_reassembled() -> None:
    stack = new_stack()
    # The most a socket can send over IPv6: UDP length 65535, the fragmentable part of a
    # packet whose payload length is 65535 (Linux's guest sends it; Linux takes it).
    payload = bytes(65527)
    # scapy's fragment6 cannot build the whole first (its payload length would be
    # 65543 with the fragment header): cut the UDP datagram by hand.
    datagram = bytes(IPv6(src=GUEST6, dst=REMOTE) / UDP(sport=5000, dport=7) / payload)[40:]
    step = 8992
    pieces = [eth() / IPv6(src=GUEST6, dst=REMOTE)
              / IPv6ExtHdrFragment(id=9, offset=start // 8,
                                   m=int(start + step < len(datagram)), nh=17)
              / Raw(datagram[start:start + step])
              for start in range(0, len(datagram), step)]
    effects = _reassembled(stack, pieces)
    assert [type(e) for e in effects] == [OpenUdp, SendDatagram]


# --- fragmentation towards the guest ---------------------------------------------------------

def test_large_host_reply_leaves_as_ipv6_fragments() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    payload = bytes(range(256)) * 11 + b"tail" * 46  # 3000 bytes
    assert len(payload) == 3000
    out = frames(stack.feed(HostDatagram(key, payload), T0))
    assert len(out) == 3
    expected_offset = 0
    ids = set()
    for i, frame in enumerate(out):
        assert len(bytes(frame)) <= 1500 + 14
        assert frame.dst == GUEST_MAC and frame[IPv6].nh == 44
        frag = frame[IPv6ExtHdrFragment]
        assert frag.offset * 8 == expected_offset
        assert frag.m == int(i < len(out) - 1) and frag.nh == 17
        ids.add(frag.id)
        expected_offset += frame[IPv6].plen - 8
        if frag.m:
            assert (frame[IPv6].plen - 8) % 8 == 0
    assert len(ids) == 1
    again = joined([frame[IPv6] for frame in out])
    assert (again.src, again.dst) == (REMOTE, GUEST6)
    assert again[UDP].load == payload and (again[UDP].sport, again[UDP].dport) == (7, 5000)
    recomputed = again.copy()
    recomputed[UDP].chksum = None
    assert IPv6(bytes(recomputed))[UDP].chksum == again[UDP].chksum


def test_each_fragmented_reply_gets_a_new_identification() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    first = frames(stack.feed(HostDatagram(key, bytes(3000)), T0))
    second = frames(stack.feed(HostDatagram(key, bytes(3000)), T0))
    assert first[0][IPv6ExtHdrFragment].id != second[0][IPv6ExtHdrFragment].id


def test_reply_that_fits_is_not_fragmented() -> None:
    stack = new_stack()
    key = remote_flow(stack)
    (frame,) = frames(stack.feed(HostDatagram(key, bytes(1500 - 48)), T0))
    assert IPv6ExtHdrFragment not in frame and len(bytes(frame)) == 1514


# --- who the guest sees behind a forward ---------------------------------------------------------

@pytest.mark.parametrize("client, version, seen", [
    ("2001:db8::7", 6, "2001:db8::7"),
    ("::1", 6, GATEWAY6),
    ("::", 6, GATEWAY6),
    ("fe80::1", 6, GATEWAY6),
    ("ff02::1", 6, GATEWAY6),
    ("fd00::9", 6, GATEWAY6),  # the guest's own prefix
    ("fd00::100", 6, GATEWAY6),
    ("198.51.100.7", 6, GATEWAY6),  # a v4 client to a v6 target
    ("127.0.0.1", 6, GATEWAY6),
    ("2001:db8::7", 4, "10.0.2.2"),  # a v6 client to a v4 target
    ("::ffff:198.51.100.7", 4, "198.51.100.7"),  # v4 on a dual-stack socket
    ("::ffff:127.0.0.1", 4, "10.0.2.2"),
    ("::ffff:10.0.2.50", 4, "10.0.2.2"),
    ("::ffff:198.51.100.7", 6, GATEWAY6),
])
def test_visible_source(client: str, version: int, seen: str) -> None:
    assert visible_source(packed(client), Network(), version) == packed(seen)


def test_forwarded_connection_from_loopback_appears_from_the_gateway() -> None:
    stack = new_stack()
    feed(stack, advertisement(dst="ff02::1"))
    key, effects = accept(stack, client="::1", port=41000)
    assert key is not None and key.remote_addr == packed(GATEWAY6)
    (syn,) = frames(effects)
    assert (syn[IPv6].src, syn[TCP].sport) == (GATEWAY6, 41000)
