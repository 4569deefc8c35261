"""The egress policy in the stack: scapy frames in, host calls or refusals out.

For each posture, a new TCP connection, UDP flow and ping, of both families, to the
internet, to a host address, to the gateway and to the metadata address: a pass makes
the host call, a block makes none and answers with an RST or "administratively
prohibited", the gateway without host loopback answers "net unreachable".
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPerror6, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from slirpy.events import DnsUpstreams, GuestFrame, HostNetworks, TimerDue
from slirpy.addresses import Network
from slirpy.config import Config
from slirpy.effects import Close, Connect, Effect, OpenPing, OpenUdp, SendDatagram, ToGuest
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Kind, parse_forward
from slirpy.policy.rules import Action, Rule, parse_rules
from slirpy.stack import Stack
from tests.harness import add_remote

GUEST_MAC = "02:00:00:00:00:64"
OUR_MAC = "52:55:0a:00:02:02"
GUEST4, GUEST6 = "10.0.2.100", "fd00::100"
T0 = 1000.0
HOST_CALLS = (Connect, OpenUdp, OpenPing, SendDatagram)
HOST_NETS = [ipaddress.ip_network(n) for n in ("203.0.113.1/32", "203.0.113.0/24",
                                                "2001:db8:1::1/128", "2001:db8:1::/64")]

# family -> destination kind -> address
DESTS = {
    4: {"internet": "198.51.100.1", "host": "203.0.113.1", "gateway": "10.0.2.2",
        "metadata": "169.254.169.254"},
    6: {"internet": "2001:db8::1", "host": "2001:db8:1::1", "gateway": "fd00::2",
        "metadata": "fd00:ec2::254"},
}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}

POSTURES = {  # name -> (routing, host, host_loopback)
    "attach": (True, True, True),
    "run": (True, False, False),  # also --restrict --enable-routing
    "restrict": (False, False, False),
    "restrict-host": (False, True, False),
    "restrict-loopback": (False, False, True),
}


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def rules(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> tuple[Rule, ...]:
    return (*(r for t in deny for r in parse_rules(Action.DENY, t)),
            *(r for t in allow for r in parse_rules(Action.ALLOW, t)))


def new_stack(posture: str = "attach", **config: Any) -> Stack:
    routing, host, loopback = POSTURES[posture]
    stack = Stack(Config(ipv6=True, routing=routing, host=host, host_loopback=loopback,
                         **config), secret=b"test")
    stack.feed(HostNetworks(tuple(HOST_NETS)), 0.0)
    return stack


def feed(stack: Stack, frame: Packet, now: float = T0) -> list[Effect]:
    return stack.feed(GuestFrame(bytes(frame)), now)


def frames(effects: list[Effect]) -> list[Ether]:
    return [Ether(e.frame) for e in effects if isinstance(e, ToGuest)]


def others(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, ToGuest)]


def host_calls(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if isinstance(e, HOST_CALLS)]


def ip(dst: str) -> Packet:
    eth = Ether(src=GUEST_MAC, dst=OUR_MAC)
    if ":" in dst:
        return eth / IPv6(src=GUEST6, dst=dst)
    return eth / IP(src=GUEST4, dst=dst)


def syn(dst: str, sport: int = 40000, dport: int = 80) -> Packet:
    return ip(dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000)


def datagram(dst: str, sport: int = 5000, dport: int = 7) -> Packet:
    return ip(dst) / UDP(sport=sport, dport=dport) / b"hello"


def echo(dst: str, ident: int = 77, seq: int = 1) -> Packet:
    if ":" in dst:
        return ip(dst) / ICMPv6EchoRequest(id=ident, seq=seq) / b"ping"
    return ip(dst) / ICMP(id=ident, seq=seq) / b"ping"


def key(proto: int, dst: str, sport: int, dport: int) -> FlowKey:
    return FlowKey(proto, packed(GUEST6 if ":" in dst else GUEST4), sport, packed(dst), dport)


def check_unreachable(frame: Ether, dst: str, proto: int, code4: int, code6: int,
                      sport: int, dport: int) -> None:
    """Destination unreachable from *dst* to the guest, quoting its datagram."""
    if ":" in dst:
        assert (frame[IPv6].src, frame[IPv6].dst) == (dst, GUEST6)
        error = frame[ICMPv6DestUnreach]
        assert (error.type, error.code) == (1, code6)
        quoted = frame[IPerror6]
        assert (quoted.src, quoted.dst, quoted.nh) == (GUEST6, dst, proto)
    else:
        assert (frame[IP].src, frame[IP].dst) == (dst, GUEST4)
        assert (frame[ICMP].type, frame[ICMP].code) == (3, code4)
        quoted = frame[IPerror]
        assert (quoted.src, quoted.dst, quoted.proto) == (GUEST4, dst, proto)
    if proto == 17:
        assert (frame[UDPerror].sport, frame[UDPerror].dport) == (sport, dport)
    elif proto == 6:
        assert (frame[TCPerror].sport, frame[TCPerror].dport) == (sport, dport)
        assert frame[TCPerror].seq == 1000


def check_rst(effects: list[Effect], dst: str, sport: int = 40000, dport: int = 80) -> None:
    assert others(effects) == []  # no Connect, no socket at all
    (rst,) = frames(effects)
    assert "R" in rst[TCP].flags
    assert (rst[TCP].sport, rst[TCP].dport) == (dport, sport)
    layer = IPv6 if ":" in dst else IP
    assert (rst[layer].src, rst[layer].dst) == (dst, GUEST6 if ":" in dst else GUEST4)


def expected(posture: str, dest: str) -> str:
    routing, host, loopback = POSTURES[posture]
    return {"internet": "pass" if routing else "block",
            "host": "pass" if host else "block",
            "gateway": "pass" if loopback else "unreachable",
            "metadata": "block"}[dest]


WHY = {"internet": "routing is off (--enable-routing)", "host": "host address (--enable-host)",
       "metadata": "static deny list"}

CASES = [pytest.param(posture, family, dest, id=f"{posture}-v{family}-{dest}")
         for posture in POSTURES for family in (4, 6) for dest in DESTS[family]]


@pytest.mark.parametrize("posture, family, dest", CASES)
def test_tcp_syn(posture: str, family: int, dest: str) -> None:
    stack = new_stack(posture)
    addr = DESTS[family][dest]
    effects = feed(stack, syn(addr))
    outcome = expected(posture, dest)
    flow = key(6, addr, 40000, 80)
    if outcome == "pass":
        host = LOOPBACK[family] if dest == "gateway" else addr
        assert effects == [Connect(flow, packed(host), 80)]
        assert stack.stats.blocked_counts() == {}
    elif outcome == "block":
        check_rst(effects, addr)
        assert stack.stats.blocked_counts() == {WHY[dest]: 1}
        assert flow not in stack.tcp.conns
    else:
        assert others(effects) == []
        (error,) = frames(effects)
        check_unreachable(error, addr, 6, 0, 0, 40000, 80)
        assert stack.stats.blocked_counts() == {}
        assert flow not in stack.tcp.conns
    assert stack.stats.drop_counts() == {}


@pytest.mark.parametrize("posture, family, dest", CASES)
def test_udp_datagram(posture: str, family: int, dest: str) -> None:
    stack = new_stack(posture)
    addr = DESTS[family][dest]
    effects = feed(stack, datagram(addr))
    outcome = expected(posture, dest)
    flow = key(17, addr, 5000, 7)
    if outcome == "pass":
        host = LOOPBACK[family] if dest == "gateway" else addr
        assert effects == [OpenUdp(flow, packed(host), 7), SendDatagram(flow, b"hello")]
        assert stack.stats.blocked_counts() == {}
        return
    assert host_calls(effects) == [] and others(effects) == []
    (error,) = frames(effects)
    if outcome == "block":
        check_unreachable(error, addr, 17, 13, 1, 5000, 7)
        assert stack.stats.blocked_counts() == {WHY[dest]: 1}
    else:
        check_unreachable(error, addr, 17, 0, 0, 5000, 7)
        assert stack.stats.blocked_counts() == {}
    assert flow not in stack.udp.table


@pytest.mark.parametrize("posture, family, dest", CASES)
def test_icmp_echo(posture: str, family: int, dest: str) -> None:
    stack = new_stack(posture)
    addr = DESTS[family][dest]
    effects = feed(stack, echo(addr))
    proto = 58 if family == 6 else 1
    flow = key(proto, addr, 77, 0)
    if dest == "gateway":  # the gateway answers pings itself, whatever the posture
        assert others(effects) == []
        (reply,) = frames(effects)
        if family == 6:
            assert reply[ICMPv6EchoReply].id == 77
        else:
            assert (reply[ICMP].type, reply[ICMP].id) == (0, 77)
        assert stack.stats.blocked_counts() == {}
        return
    outcome = expected(posture, dest)
    if outcome == "pass":
        assert [type(e) for e in effects] == [OpenPing, SendDatagram]
        assert effects[0] == OpenPing(flow, packed(addr))
        assert stack.stats.blocked_counts() == {}
        return
    assert others(effects) == []
    (error,) = frames(effects)
    check_unreachable(error, addr, proto, 13, 1, 0, 0)
    assert stack.stats.blocked_counts() == {WHY[dest]: 1}
    assert flow not in stack.echo.table


def test_blocked_counts_count_each_block_by_why() -> None:
    stack = new_stack("restrict", rules=rules(deny=("tcp://198.51.100.7:443",)))
    feed(stack, syn("198.51.100.1"))
    feed(stack, syn("198.51.100.1", sport=40001))
    feed(stack, datagram("2001:db8::1"))
    feed(stack, echo("169.254.169.254"))
    feed(stack, datagram("fd00:ec2::254"))
    feed(stack, syn("198.51.100.7", dport=443))
    feed(stack, syn("203.0.113.9"))  # a host network, host off: blocked as a host address
    feed(stack, syn("10.0.2.2"))  # unreachable, not a block
    assert stack.stats.blocked_counts() == {"routing is off (--enable-routing)": 3,
                                      "static deny list": 2,
                                      "--deny tcp://198.51.100.7:443": 1,
                                      "host address (--enable-host)": 1}
    assert stack.stats.drop_counts() == {}


def test_deny_rule_on_the_gateway_blocks_even_with_host_loopback() -> None:
    stack = new_stack("attach", rules=rules(deny=("tcp://10.0.2.2:22", "udp://[fd00::2]")))
    check_rst(feed(stack, syn("10.0.2.2", dport=22)), "10.0.2.2", dport=22)
    (error,) = frames(feed(stack, datagram("fd00::2", dport=53)))
    check_unreachable(error, "fd00::2", 17, 13, 1, 5000, 53)
    assert feed(stack, syn("10.0.2.2", sport=40001, dport=8080)) == [
        Connect(key(6, "10.0.2.2", 40001, 8080), packed("127.0.0.1"), 8080)]
    assert stack.stats.blocked_counts() == {"--deny tcp://10.0.2.2:22": 1,
                                      "--deny udp://[fd00::2]": 1}


def test_allow_rule_on_the_gateway_reaches_host_loopback_with_it_off() -> None:
    stack = new_stack("restrict", rules=rules(allow=("tcp://10.0.2.2:8080", "[fd00::2]:53")))
    assert feed(stack, syn("10.0.2.2", dport=8080)) == [
        Connect(key(6, "10.0.2.2", 40000, 8080), packed("127.0.0.1"), 8080)]
    flow = key(17, "fd00::2", 5000, 53)
    assert feed(stack, datagram("fd00::2", dport=53)) == [
        OpenUdp(flow, packed("::1"), 53), SendDatagram(flow, b"hello")]
    effects = feed(stack, syn("10.0.2.2", sport=40001, dport=8081))  # not allowed: as before
    check_unreachable(frames(effects)[0], "10.0.2.2", 6, 0, 0, 40001, 8081)
    assert others(effects) == []


@pytest.mark.parametrize("allow", ["169.254.169.254", "[fd00:ec2::254]"])
def test_allow_rule_opens_the_static_list(allow: str) -> None:
    stack = new_stack("attach", rules=rules(allow=(allow,)))
    addr = allow.strip("[]")
    assert [type(e) for e in feed(stack, syn(addr))] == [Connect]


def test_port_rules_in_the_stack() -> None:
    stack = new_stack("restrict", rules=rules(allow=("udp://198.51.100.1:50-60",)))
    for port, passes in ((49, False), (50, True), (60, True), (61, False)):
        effects = feed(stack, datagram("198.51.100.1", sport=6000 + port, dport=port))
        assert bool(host_calls(effects)) is passes, port
    check_rst(feed(stack, syn("198.51.100.1", dport=55)), "198.51.100.1", dport=55)
    assert others(feed(stack, echo("198.51.100.1"))) == []  # a port rule never matches ICMP


# --- flows already running are not checked again -------------------------------------

def test_udp_flow_started_before_a_deny_keeps_going() -> None:
    stack = new_stack("attach")
    flow = key(17, "198.51.100.1", 5000, 7)
    assert feed(stack, datagram("198.51.100.1")) == [
        OpenUdp(flow, packed("198.51.100.1"), 7), SendDatagram(flow, b"hello")]
    (deny,) = parse_rules(Action.DENY, "198.51.100.1")
    rule_id = stack.policy.add(deny)
    assert feed(stack, datagram("198.51.100.1"), T0 + 1) == [SendDatagram(flow, b"hello")]
    effects = feed(stack, datagram("198.51.100.1", sport=5001), T0 + 1)  # a new flow
    assert others(effects) == []
    check_unreachable(frames(effects)[0], "198.51.100.1", 17, 13, 1, 5001, 7)
    assert stack.stats.blocked_counts() == {"--deny 198.51.100.1": 1}
    stack.policy.remove(rule_id)
    assert [type(e) for e in feed(stack, datagram("198.51.100.1", sport=5001), T0 + 2)] == [
        OpenUdp, SendDatagram]


def test_expired_udp_flow_is_checked_again() -> None:
    stack = new_stack("attach")
    feed(stack, datagram("2001:db8::1"))
    stack.policy.add(parse_rules(Action.DENY, "[2001:db8::1]")[0])
    later = T0 + stack.config.udp_idle_s + 1
    assert others(stack.feed(TimerDue(), later)) == [Close(key(17, "2001:db8::1", 5000, 7))]
    effects = feed(stack, datagram("2001:db8::1"), later)
    assert others(effects) == []
    check_unreachable(frames(effects)[0], "2001:db8::1", 17, 13, 1, 5000, 7)


def test_tcp_connection_started_before_a_deny_is_not_reset() -> None:
    stack = new_stack("attach")
    flow = key(6, "198.51.100.1", 40000, 80)
    assert feed(stack, syn("198.51.100.1")) == [Connect(flow, packed("198.51.100.1"), 80)]
    stack.policy.add(parse_rules(Action.DENY, "tcp://198.51.100.1")[0])
    again = feed(stack, syn("198.51.100.1"), T0 + 0.5)  # the guest retransmits its SYN
    assert host_calls(again) == []
    assert all("R" not in f[TCP].flags for f in frames(again))
    assert flow in stack.tcp.conns
    check_rst(feed(stack, syn("198.51.100.1", sport=40001), T0 + 0.5), "198.51.100.1",
              sport=40001)


def test_ping_flow_started_before_a_deny_keeps_going() -> None:
    stack = new_stack("attach")
    assert [type(e) for e in feed(stack, echo("198.51.100.1"))] == [OpenPing, SendDatagram]
    stack.policy.add(parse_rules(Action.DENY, "icmp://198.51.100.1")[0])
    assert [type(e) for e in feed(stack, echo("198.51.100.1", seq=2))] == [SendDatagram]
    effects = feed(stack, echo("198.51.100.1", ident=78))
    assert others(effects) == []
    check_unreachable(frames(effects)[0], "198.51.100.1", 1, 13, 1, 0, 0)


# --- never forwarded, whatever the rules ---------------------------------------------

NEVER = [
    ("127.0.0.1", "ipv4-dst-not-forwarded"),
    ("0.0.0.0", "ipv4-dst-not-forwarded"),
    ("255.255.255.255", "ipv4-dst-not-forwarded"),
    ("10.0.2.255", "ipv4-dst-not-forwarded"),
    ("10.0.2.77", "ipv4-dst-in-network"),
    ("::1", "ipv6-dst-not-forwarded"),
    ("::ffff:127.0.0.1", "ipv6-dst-not-forwarded"),
    ("::", "ipv6-dst-not-forwarded"),
    ("fd00::77", "ipv6-dst-in-network"),
]


@pytest.mark.parametrize("kind", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("addr, reason", NEVER)
def test_never_forwarded_despite_allow_all(kind: str, addr: str, reason: str) -> None:
    stack = new_stack("attach", rules=rules(allow=("0.0.0.0/0", "[::/0]")))
    frame = {"tcp": syn, "udp": datagram, "icmp": echo}[kind](addr)
    assert feed(stack, frame) == []
    assert stack.stats.drop_counts() == {reason: 1}
    assert stack.stats.blocked_counts() == {}


# --- the DNS address and remote forwards are not subject to rules ----------------------

UPSTREAM = "192.0.2.53"


@pytest.mark.parametrize("dns", ["10.0.2.3", "fd00::3"])
def test_dns_address_other_ports_refused_whatever_the_rules(dns: str) -> None:
    bracketed = f"[{dns}]" if ":" in dns else dns
    stack = new_stack("attach", rules=rules(allow=(f"{bracketed}:5353", "0.0.0.0/0",
                                                   "[::/0]")))
    effects = feed(stack, datagram(dns, dport=5353))
    assert others(effects) == []
    check_unreachable(frames(effects)[0], dns, 17, 3, 4, 5000, 5353)
    check_rst(feed(stack, syn(dns, dport=5353)), dns, dport=5353)
    assert stack.stats.blocked_counts() == {}


@pytest.mark.parametrize("dns", ["10.0.2.3", "fd00::3"])
@pytest.mark.parametrize("rule_set", [(), ("10.0.2.0/24", "[fd00::/64]", "0.0.0.0/0",
                                           "[::/0]")], ids=["no-rules", "deny-all"])
def test_dns_forwarder_works_under_restrict(dns: str, rule_set: tuple[str, ...]) -> None:
    stack = new_stack("restrict", rules=rules(deny=rule_set))
    stack.feed(DnsUpstreams(((packed(UPSTREAM), 53),)), T0)
    query = bytes.fromhex("1234010000010000000000000161047465737400" "00010001")
    effects = feed(stack, ip(dns) / UDP(sport=5000, dport=53) / query)
    assert [type(e) for e in effects] == [OpenUdp, SendDatagram]
    assert isinstance(effects[0], OpenUdp) and effects[0].host_addr == packed(UPSTREAM)
    tcp = feed(stack, syn(dns, dport=53))
    assert tcp == [Connect(key(6, dns, 40000, 53), packed(UPSTREAM), 53)]
    assert stack.stats.blocked_counts() == {}


def test_remote_forwards_pass_under_restrict() -> None:
    net = Network()
    stack = new_stack("restrict", rules=rules(deny=("0.0.0.0/0",)))
    for spec in ("10.0.2.9:80:127.0.0.1:8080", "udp://10.0.2.9:53:127.0.0.1:5353"):
        (fwd,) = parse_forward(Kind.REMOTE, spec, guest=net.guest, gateway=net.gateway)
        add_remote(stack, fwd)
    assert feed(stack, syn("10.0.2.9")) == [
        Connect(key(6, "10.0.2.9", 40000, 80), packed("127.0.0.1"), 8080)]
    flow = key(17, "10.0.2.9", 5000, 53)
    assert feed(stack, datagram("10.0.2.9", dport=53)) == [
        OpenUdp(flow, packed("127.0.0.1"), 5353), SendDatagram(flow, b"hello")]
    assert feed(stack, syn("10.0.2.9", dport=81)) == []  # no forward there: in the network
    assert stack.stats.drop_counts() == {"ipv4-dst-in-network": 1}
    assert stack.stats.blocked_counts() == {}
