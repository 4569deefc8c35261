"""Forwards through the sans-IO stack: local TCP/UDP (-L), remote (-R), SRV targets, flows."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from slirpy.events import (ConnectFailed, Connected, GuestFrame, HostData, HostDatagram, Sent,
                           TimerDue)
from slirpy.addresses import Network
from slirpy.config import Config
from slirpy.effects import (Close, Connect, Effect, OpenUdp, Peek, Send, SendDatagram,
                            SendTo, ToGuest)
from slirpy.flows.key import FlowKey
from slirpy.forward.nat import EPHEMERAL_FIRST, visible_source
from slirpy.wire.proxy import SppHeader, build_spp
from slirpy.forward.spec import Forward, ForwardError, Kind, SrvForward, parse_forward
from slirpy.forward.srv import LOOKUP_TIMEOUT_S
from slirpy.stack import Stack
from slirpy.tcp.conn import MAX_SYN_RETRIES, State
from tests.harness import GATEWAY, GUEST_IP, GUEST_MAC, OUR_MAC, packed
from tests.harness import add_remote, remove_remote, forward_accept, forward_datagram

CLIENT = "198.51.100.7"
CLIENT_PORT = 40000
SPACE = 65536 * 4
T0 = 1000.0
FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def forward(kind: Kind, spec: str) -> Forward:
    (fwd,) = parse_forward(kind, spec, guest=ipaddress.IPv4Address(GUEST_IP),
                           gateway=ipaddress.IPv4Address(GATEWAY))
    return fwd


def frames(effects: list[Effect]) -> list[Ether]:
    return [Ether(e.frame) for e in effects if isinstance(e, ToGuest)]


def others(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, ToGuest)]


def flags_of(frame: Ether) -> str:
    value = int(frame[TCP].flags)
    return "".join(name for name, bit in FLAGS.items() if value & bit)


def state(stack: Stack, key: FlowKey | None) -> State | None:
    conn = None if key is None else stack.tcp.get(key)
    return None if conn is None else conn.state


def is_arp_request_for(frame: Ether, ip: str) -> bool:
    return (ARP in frame and frame[ARP].op == 1 and frame[ARP].pdst == ip
            and frame.dst == "ff:ff:ff:ff:ff:ff")


def guest_frame(dst: str) -> Ether:
    return Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=dst)


def arp_reply_from_guest() -> Ether:
    return Ether(src=GUEST_MAC, dst=OUR_MAC) / ARP(
        op="is-at", hwsrc=GUEST_MAC, psrc=GUEST_IP, hwdst=OUR_MAC, pdst=GATEWAY)


def who_has(ip: str) -> Ether:
    return Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op="who-has", hwsrc=GUEST_MAC, psrc=GUEST_IP, pdst=ip)


def feed(stack: Stack, frame: Ether, now: float = T0) -> list[Effect]:
    return stack.feed(GuestFrame(bytes(frame)), now)


def stack_knowing_guest(config: Config | None = None) -> Stack:
    """A stack that has seen a frame from the guest (its MAC is known)."""
    stack = Stack(config or Config(), secret=b"test")
    (reply,) = frames(feed(stack, who_has(GATEWAY)))
    assert reply[ARP].op == 2
    return stack


LOCAL_TCP = forward(Kind.LOCAL, "0.0.0.0:8080:80")


def accept(stack: Stack, client: str = CLIENT, port: int = CLIENT_PORT,
           fwd: Forward = LOCAL_TCP, now: float = T0,
           guest_port: int = 0) -> tuple[FlowKey | None, list[Effect]]:
    return forward_accept(stack, fwd, (packed(client), port), SPACE, now, guest_port)


# --- who the guest sees ---

@pytest.mark.parametrize("client, seen", [
    (CLIENT, CLIENT),
    ("192.0.2.1", "192.0.2.1"),
    ("127.0.0.1", GATEWAY),
    ("127.8.9.10", GATEWAY),
    ("0.0.0.0", GATEWAY),
    ("224.0.0.1", GATEWAY),
    ("255.255.255.255", GATEWAY),
    ("10.0.2.15", GATEWAY),  # the guest's own network
    ("10.0.2.100", GATEWAY),
    ("::1", GATEWAY),
    ("2001:db8::7", GATEWAY),  # another family than the guest's
])
def test_visible_source(client: str, seen: str) -> None:
    assert visible_source(packed(client), Network()) == packed(seen)


# --- (a) a forwarded TCP connection starts with our SYN, once the guest's MAC is known ---

def test_accept_asks_arp_first_and_syn_follows_the_reply() -> None:
    stack = Stack(Config(), secret=b"test")
    key, effects = accept(stack)
    assert key == FlowKey(6, packed(GUEST_IP), 80, packed(CLIENT), CLIENT_PORT)
    (arp,) = frames(effects)
    assert others(effects) == []
    assert is_arp_request_for(arp, GUEST_IP)
    assert (arp[ARP].psrc, arp[ARP].hwsrc, arp.src) == (GATEWAY, OUR_MAC, OUR_MAC)
    assert arp[ARP].hwdst == "00:00:00:00:00:00"
    # the guest answers: the held SYN leaves, addressed to its MAC
    (syn,) = frames(feed(stack, arp_reply_from_guest()))
    assert syn.dst == GUEST_MAC and syn.src == OUR_MAC
    assert (syn[IP].src, syn[IP].dst) == (CLIENT, GUEST_IP)
    assert (syn[TCP].sport, syn[TCP].dport) == (CLIENT_PORT, 80)
    assert flags_of(syn) == "S"
    options = dict(syn[TCP].options)
    assert options["MSS"] == 1460 and options["WScale"] == 7
    assert TCP(bytes(syn[TCP])).chksum == syn[TCP].chksum


def test_accept_holds_syn_until_any_guest_frame_teaches_its_mac() -> None:
    stack = Stack(Config(), secret=b"test")
    accept(stack)
    out = frames(feed(stack, guest_frame(GATEWAY) / ICMP(id=1, seq=1)))
    syns = [f for f in out if TCP in f]
    assert len(syns) == 1 and syns[0].dst == GUEST_MAC and flags_of(syns[0]) == "S"
    assert any(ICMP in f and f[ICMP].type == 0 for f in out)  # the ping is answered too


def test_second_accept_while_unresolved_does_not_ask_again_within_a_second() -> None:
    stack = Stack(Config(), secret=b"test")
    _, first = accept(stack)
    _, second = accept(stack, port=CLIENT_PORT + 1, now=T0 + 0.5)
    assert len(frames(first)) == 1 and frames(second) == []
    syns = frames(feed(stack, arp_reply_from_guest(), T0 + 0.6))
    assert sorted(f[TCP].sport for f in syns) == [CLIENT_PORT, CLIENT_PORT + 1]


def test_accept_with_known_mac_sends_syn_at_once() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert key is not None and flags_of(syn) == "S" and syn.dst == GUEST_MAC
    assert state(stack, key) is State.SYN_SENT


def test_tcppp_guest_port_comes_from_the_header() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack, fwd=forward(Kind.LOCAL, "tcppp://8080:0"), guest_port=8443)
    (syn,) = frames(effects)
    assert key is not None and key.guest_port == 8443 and syn[TCP].dport == 8443


def test_accept_without_a_port_is_refused() -> None:
    stack = stack_knowing_guest()  # no port in the PROXY header and none in the forward
    assert accept(stack, fwd=forward(Kind.LOCAL, "tcppp://8080:0")) == (None, [])
    assert len(stack.tcp) == 0


def test_forward_to_an_ipv6_guest_is_refused_when_added_without_ipv6() -> None:
    stack = stack_knowing_guest()
    with pytest.raises(ForwardError, match="IPv6 on"):
        stack.control.add(1, forward(Kind.LOCAL, "8080:[fd00::5]:80"))
    assert stack.control.local_forward(1) is None


# --- (b) loopback clients appear as the gateway, without clashing ---

def test_loopback_client_appears_as_gateway_and_a_clash_moves_port() -> None:
    stack = stack_knowing_guest()
    key1, effects1 = accept(stack, client="127.0.0.1")
    key2, effects2 = accept(stack, client="127.0.0.2")
    (syn1,), (syn2,) = frames(effects1), frames(effects2)
    assert key1 is not None and key2 is not None and key1 != key2
    assert syn1[IP].src == syn2[IP].src == GATEWAY
    assert syn1[TCP].sport == CLIENT_PORT
    assert syn2[TCP].sport != CLIENT_PORT and syn2[TCP].sport >= EPHEMERAL_FIRST
    assert key2.remote_port == syn2[TCP].sport
    # a third one moves again, to another free port
    key3, _ = accept(stack, client="127.0.0.3")
    assert key3 is not None and key3.remote_port not in (key1.remote_port, key2.remote_port)
    assert len(stack.tcp) == 3


def test_real_clients_with_the_same_port_do_not_clash() -> None:
    stack = stack_knowing_guest()
    key1, _ = accept(stack, client=CLIENT)
    key2, _ = accept(stack, client="203.0.113.9")
    assert key1 is not None and key2 is not None
    assert key1.remote_port == key2.remote_port == CLIENT_PORT


# --- (c) the guest's answer, or none ---

def syn_ack_from_guest(syn: Ether, *, seq: int = 5000, ack: int | None = None,
                       flags: str = "SA") -> Ether:
    return guest_frame(syn[IP].src) / TCP(
        sport=syn[TCP].dport, dport=syn[TCP].sport, flags=flags, seq=seq,
        ack=syn[TCP].seq + 1 if ack is None else ack, window=65535,
        options=[("MSS", 1460), ("WScale", 7)])


def established(stack: Stack) -> tuple[FlowKey, Ether]:
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert key is not None
    feed(stack, syn_ack_from_guest(syn))
    return key, syn


def test_guest_syn_ack_establishes() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert key is not None
    out = feed(stack, syn_ack_from_guest(syn))
    (ack,) = frames(out)
    assert flags_of(ack) == "A"
    assert (ack[TCP].seq, ack[TCP].ack) == (syn[TCP].seq + 1, 5001)
    assert (ack[IP].src, ack[TCP].sport) == (CLIENT, CLIENT_PORT)
    assert others(out) == [Peek(key, 65535)]  # the SYN-ACK's (unscaled) window: read
    conn = stack.tcp.get(key)
    assert conn is not None and conn.state is State.ESTABLISHED and conn.deadline is None
    assert stack.feed(TimerDue(), T0 + 1.0) == []  # no SYN retransmission any more


def test_syn_ack_with_a_wrong_ack_is_ignored() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert feed(stack, syn_ack_from_guest(syn, ack=syn[TCP].seq + 7)) == []
    assert key is not None and state(stack, key) is State.SYN_SENT


def test_guest_rst_in_syn_sent_resets_the_client() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert key is not None
    out = feed(stack, syn_ack_from_guest(syn, flags="RA", seq=0))
    assert out == [Close(key, reset=True)]
    assert stack.tcp.get(key) is None and stack.stats.flow_counts()["tcp"] == 0


def test_guest_rst_with_a_wrong_ack_is_ignored_in_syn_sent() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (syn,) = frames(effects)
    assert feed(stack, syn_ack_from_guest(syn, flags="RA", seq=0, ack=syn[TCP].seq + 9)) == []
    assert key is not None and state(stack, key) is State.SYN_SENT


def test_unanswered_syn_is_retransmitted_with_backoff_then_client_reset() -> None:
    stack = stack_knowing_guest()
    key, effects = accept(stack)
    (first,) = frames(effects)
    assert key is not None
    retransmitted_at: list[float] = []
    closed: list[Effect] = []
    while (deadline := stack.next_deadline()) is not None:
        out = stack.feed(TimerDue(), deadline)
        for frame in frames(out):
            assert flags_of(frame) == "S" and frame[TCP].seq == first[TCP].seq
            assert frame.dst == GUEST_MAC
            retransmitted_at.append(deadline - T0)
        closed += others(out)
    assert retransmitted_at == [1.0, 3.0, 7.0, 15.0, 31.0]
    assert len(retransmitted_at) == MAX_SYN_RETRIES
    assert closed == [Close(key, reset=True)]
    assert stack.tcp.get(key) is None


def test_nothing_is_due_before_the_first_retransmission() -> None:
    stack = stack_knowing_guest()
    accept(stack)
    assert stack.next_deadline() == T0 + 1.0
    assert stack.feed(TimerDue(), T0 + 0.99) == []


def test_syn_retransmission_while_unresolved_asks_arp_again() -> None:
    stack = Stack(Config(), secret=b"test")
    accept(stack)  # the ARP request goes unanswered
    deadline = stack.next_deadline()
    assert deadline is not None
    out = frames(stack.feed(TimerDue(), deadline))
    assert not any(TCP in f and f.dst == "ff:ff:ff:ff:ff:ff" for f in out)
    assert any(is_arp_request_for(f, GUEST_IP) for f in out)


# --- (d) forwarded UDP ---

LOCAL_UDP = forward(Kind.LOCAL, "udp://5353:53")
SPP_UDP = forward(Kind.LOCAL, "udpspp://5353:53")
RPC_UDP = forward(Kind.LOCAL, "udprpc://5353:53")


def udp_from_guest(dst: str, dport: int, payload: bytes, sport: int = 53) -> Ether:
    return guest_frame(dst) / UDP(sport=sport, dport=dport) / payload


def test_datagram_reaches_guest_from_the_real_client_and_reply_goes_back() -> None:
    stack = stack_knowing_guest()
    out = forward_datagram(stack, 7, LOCAL_UDP, (packed(CLIENT), CLIENT_PORT), b"query", T0)
    (dgram,) = frames(out)
    assert dgram.dst == GUEST_MAC
    assert (dgram[IP].src, dgram[UDP].sport) == (CLIENT, CLIENT_PORT)
    assert (dgram[IP].dst, dgram[UDP].dport) == (GUEST_IP, 53)
    assert bytes(dgram[UDP].payload) == b"query"
    reply = feed(stack, udp_from_guest(CLIENT, CLIENT_PORT, b"answer"), T0 + 1)
    (send,) = reply
    assert isinstance(send, SendTo)
    assert (send.forward_id, send.addr, send.port) == (7, packed(CLIENT), CLIENT_PORT)
    assert (bytes(send.data), send.prefix) == (b"answer", b"")
    # a plain udp flow stays: the next reply goes the same way
    (again,) = feed(stack, udp_from_guest(CLIENT, CLIENT_PORT, b"more"), T0 + 2)
    assert isinstance(again, SendTo) and bytes(again.data) == b"more"


def test_datagram_waits_for_arp_like_a_syn() -> None:
    stack = Stack(Config(), secret=b"test")
    (arp,) = frames(forward_datagram(stack, 1, LOCAL_UDP, (packed(CLIENT), CLIENT_PORT),
                                              b"q", T0))
    assert is_arp_request_for(arp, GUEST_IP)
    (dgram,) = frames(feed(stack, arp_reply_from_guest()))
    assert UDP in dgram and bytes(dgram[UDP].payload) == b"q" and dgram.dst == GUEST_MAC


def test_loopback_udp_clients_appear_as_gateway_without_clash() -> None:
    stack = stack_knowing_guest()
    (one,) = frames(forward_datagram(stack, 1, LOCAL_UDP, (packed("127.0.0.1"), 5000),
                                              b"a", T0))
    (two,) = frames(forward_datagram(stack, 1, LOCAL_UDP, (packed("127.0.0.2"), 5000),
                                              b"b", T0))
    assert one[IP].src == two[IP].src == GATEWAY
    assert one[UDP].sport == 5000 and two[UDP].sport >= EPHEMERAL_FIRST
    (to_two,) = feed(stack, udp_from_guest(GATEWAY, two[UDP].sport, b"for two"))
    assert isinstance(to_two, SendTo) and (to_two.addr, to_two.port) == (packed("127.0.0.2"), 5000)


SPP_CLIENT = ("203.0.113.9", 5555)
PROXY = ("192.0.2.10", 40001)


def spp_header() -> bytes:
    return build_spp(SppHeader((packed(SPP_CLIENT[0]), SPP_CLIENT[1]),
                               (packed("192.0.2.11"), 5353)))


def test_udpspp_guest_sees_the_named_client_and_reply_has_the_same_header() -> None:
    stack = stack_knowing_guest()
    header = spp_header()
    assert len(header) == 38
    out = forward_datagram(stack, 2, SPP_UDP, (packed(PROXY[0]), PROXY[1]),
                                    header + b"query", T0)
    (dgram,) = frames(out)
    assert (dgram[IP].src, dgram[UDP].sport) == SPP_CLIENT
    assert bytes(dgram[UDP].payload) == b"query"
    (send,) = feed(stack, udp_from_guest(SPP_CLIENT[0], SPP_CLIENT[1], b"answer"))
    assert isinstance(send, SendTo)
    assert (send.forward_id, send.addr, send.port) == (2, packed(PROXY[0]), PROXY[1])
    assert send.prefix == header and bytes(send.data) == b"answer"


@pytest.mark.parametrize("datagram, reason", [
    (b"\x56\xec" + b"\x00" * 10, "spp-short"),
    (b"", "spp-short"),
    (b"\x12\x34" + b"\x00" * 40, "spp-bad-magic"),
])
def test_malformed_spp_datagram_is_dropped_and_counted(datagram: bytes, reason: str) -> None:
    stack = stack_knowing_guest()
    assert forward_datagram(stack, 2, SPP_UDP, (packed(PROXY[0]), PROXY[1]), datagram, T0) == []
    assert stack.stats.drop_counts() == {reason: 1}
    assert stack.stats.flow_counts()["udp"] == 0


def test_udprpc_flow_ends_with_the_first_reply() -> None:
    stack = stack_knowing_guest()
    forward_datagram(stack, 3, RPC_UDP, (packed(CLIENT), CLIENT_PORT), b"query", T0)
    assert stack.stats.flow_counts()["udp"] == 1
    (send,) = feed(stack, udp_from_guest(CLIENT, CLIENT_PORT, b"answer"))
    assert isinstance(send, SendTo) and send.forward_id == 3 and bytes(send.data) == b"answer"
    assert stack.inbound.table.keys() == []
    # A second reply is no longer the forward's: it becomes an ordinary outgoing flow.
    second = feed(stack, udp_from_guest(CLIENT, CLIENT_PORT, b"late"))
    assert not any(isinstance(e, SendTo) for e in second)
    assert any(isinstance(e, OpenUdp) and e.host_addr == packed(CLIENT) for e in second)


def test_remove_local_forgets_udp_flows() -> None:
    stack = stack_knowing_guest()
    forward_datagram(stack, 4, LOCAL_UDP, (packed(CLIENT), CLIENT_PORT), b"q", T0)
    forward_datagram(stack, 5, LOCAL_UDP, (packed(CLIENT), CLIENT_PORT + 1), b"q", T0)
    stack.control.remove(4)
    assert [k.remote_port for k in stack.inbound.table.keys()] == [CLIENT_PORT + 1]


def test_inbound_udp_flow_expires_when_idle() -> None:
    stack = stack_knowing_guest()
    forward_datagram(stack, 4, LOCAL_UDP, (packed(CLIENT), CLIENT_PORT), b"q", T0)
    deadline = stack.next_deadline()
    assert deadline is not None and deadline == T0 + Config().udp_idle_s
    stack.feed(TimerDue(), deadline + 1)
    assert stack.stats.flow_counts()["udp"] == 0


# --- (e) remote forwards ---

GUEST_SPORT = 40000


def syn_from_guest(dst: str, dport: int, sport: int = GUEST_SPORT, seq: int = 1000) -> Ether:
    return guest_frame(dst) / TCP(sport=sport, dport=dport, flags="S", seq=seq,
                                  options=[("MSS", 1460), ("WScale", 7)])


REMOTE_TCP = forward(Kind.REMOTE, "10.0.2.50:9000:192.0.2.1:8000")


def test_remote_forward_answers_arp_and_connects_to_its_target() -> None:
    stack = stack_knowing_guest()
    assert frames(feed(stack, who_has("10.0.2.50"))) == []
    add_remote(stack, REMOTE_TCP)
    (reply,) = frames(feed(stack, who_has("10.0.2.50")))
    assert reply[ARP].op == 2 and (reply[ARP].psrc, reply[ARP].hwsrc) == ("10.0.2.50", OUR_MAC)
    out = feed(stack, syn_from_guest("10.0.2.50", 9000))
    key = FlowKey(6, packed(GUEST_IP), GUEST_SPORT, packed("10.0.2.50"), 9000)
    assert out == [Connect(key, packed("192.0.2.1"), 8000)]
    # the host connected: the SYN-ACK comes from the forward's address
    (syn_ack,) = frames(stack.feed(Connected(key, SPACE), T0))
    assert flags_of(syn_ack) == "SA"
    assert (syn_ack[IP].src, syn_ack[TCP].sport, syn_ack[TCP].ack) == ("10.0.2.50", 9000, 1001)


def test_remote_forward_address_answers_ping() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, REMOTE_TCP)
    (reply,) = frames(feed(stack, guest_frame("10.0.2.50") / ICMP(id=3, seq=1)))
    assert reply[ICMP].type == 0 and reply[IP].src == "10.0.2.50"


def test_other_port_of_remote_forward_address_is_not_forwarded() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, REMOTE_TCP)
    out = feed(stack, syn_from_guest("10.0.2.50", 9001))
    assert not any(isinstance(e, Connect) for e in out)
    assert stack.stats.drop_counts() == {"ipv4-dst-in-network": 1}


def test_remote_forward_on_gateway_works_without_host_loopback() -> None:
    stack = stack_knowing_guest(Config(host_loopback=False))
    add_remote(stack, forward(Kind.REMOTE, "9000:127.0.0.1:8000"))
    key = FlowKey(6, packed(GUEST_IP), GUEST_SPORT, packed(GATEWAY), 9000)
    assert feed(stack, syn_from_guest(GATEWAY, 9000)) == [Connect(key, packed("127.0.0.1"), 8000)]
    # any other gateway port stays unreachable, as without the forward
    (icmp,) = frames(feed(stack, syn_from_guest(GATEWAY, 9001)))
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 0)


def test_udp_remote_forward_opens_a_socket_to_the_target() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, forward(Kind.REMOTE, "udp://10.0.2.50:5353:192.0.2.53:53"))
    out = feed(stack, udp_from_guest("10.0.2.50", 5353, b"query", sport=33333))
    key = FlowKey(17, packed(GUEST_IP), 33333, packed("10.0.2.50"), 5353)
    opened, sent = out
    assert opened == OpenUdp(key, packed("192.0.2.53"), 53)
    assert isinstance(sent, SendDatagram) and sent.flow == key and bytes(sent.data) == b"query"
    (answer,) = frames(stack.feed(HostDatagram(key, b"answer"), T0))
    assert (answer[IP].src, answer[UDP].sport) == ("10.0.2.50", 5353)
    assert (answer[UDP].dport, bytes(answer[UDP].payload)) == (33333, b"answer")


def test_tcp_remote_forward_does_not_take_udp() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, REMOTE_TCP)
    assert feed(stack, udp_from_guest("10.0.2.50", 9000, b"x")) == []
    assert stack.stats.drop_counts() == {"ipv4-dst-in-network": 1}


def test_after_remove_remote_the_syn_is_not_forwarded() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, REMOTE_TCP)
    remove_remote(stack, REMOTE_TCP)
    out = feed(stack, syn_from_guest("10.0.2.50", 9000))
    assert not any(isinstance(e, Connect) for e in out)
    assert frames(feed(stack, who_has("10.0.2.50"))) == []
    assert stack.stats.drop_counts() == {"ipv4-dst-in-network": 1}


def test_remove_one_of_two_remote_forwards_on_an_address_keeps_the_address() -> None:
    stack = stack_knowing_guest()
    other = forward(Kind.REMOTE, "10.0.2.50:9001:192.0.2.1:8001")
    add_remote(stack, REMOTE_TCP)
    add_remote(stack, other)
    remove_remote(stack, REMOTE_TCP)
    assert len(frames(feed(stack, who_has("10.0.2.50")))) == 1
    key = FlowKey(6, packed(GUEST_IP), GUEST_SPORT, packed("10.0.2.50"), 9001)
    assert feed(stack, syn_from_guest("10.0.2.50", 9001)) == [Connect(key, packed("192.0.2.1"),
                                                                        8001)]


# --- (f) SRV targets ---

SRV_NAME = "_http._tcp.example"
SRV_TCP = forward(Kind.REMOTE, f"10.0.2.50:9000:[{SRV_NAME}@srv-192.0.2.53]:0")


def srv_answer(ident: int, *, rcode: int = 0, port: int = 8443, address: str | None = "192.0.2.80",
               ttl: int = 60) -> bytes:
    answer = DNS(id=ident, qr=1, rd=1, ra=1, rcode=rcode,
                 qd=DNSQR(qname=f"{SRV_NAME}.", qtype="SRV"))
    if rcode == 0:
        answer.an = DNSRRSRV(rrname=f"{SRV_NAME}.", ttl=ttl, priority=0, weight=5, port=port,
                             target="web.example.")
        if address is not None:
            answer.ar = DNSRR(rrname="web.example.", type="A", ttl=ttl, rdata=address)
    return bytes(answer)


def srv_query(effects: list[Effect]) -> tuple[FlowKey, DNS]:
    opened, sent = effects
    assert isinstance(opened, OpenUdp) and isinstance(sent, SendDatagram)
    assert opened.flow == sent.flow
    return opened.flow, DNS(bytes(sent.data))


def guest_key(sport: int = GUEST_SPORT, dst: str = "10.0.2.50", dport: int = 9000) -> FlowKey:
    return FlowKey(6, packed(GUEST_IP), sport, packed(dst), dport)


def test_srv_syn_asks_the_dns_server_then_connects_to_the_record() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    out = feed(stack, syn_from_guest("10.0.2.50", 9000))
    opened = out[0]
    assert isinstance(opened, OpenUdp) and (opened.host_addr, opened.host_port) == (
        packed("192.0.2.53"), 53)
    lookup, query = srv_query(out)
    assert query.qr == 0 and query.rd == 1 and stack.dns_client.owns(lookup)
    assert query.qd[0].qname == f"{SRV_NAME}.".encode() and query.qd[0].qtype == 33
    done = stack.feed(HostDatagram(lookup, srv_answer(query.id)), T0 + 0.1)
    assert done == [Close(lookup), Connect(guest_key(), packed("192.0.2.80"), 8443)]
    assert not stack.dns_client.owns(lookup)


def test_srv_second_syn_within_ttl_connects_at_once() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, query = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000)))
    stack.feed(HostDatagram(lookup, srv_answer(query.id, ttl=5)), T0)
    out = feed(stack, syn_from_guest("10.0.2.50", 9000, sport=GUEST_SPORT + 1), T0 + 59)
    assert out == [Connect(guest_key(GUEST_SPORT + 1), packed("192.0.2.80"), 8443)]
    # the forward's --dns-ttl (60 s), not the record's, bounds the cache: then it asks again
    later = feed(stack, syn_from_guest("10.0.2.50", 9000, sport=GUEST_SPORT + 2), T0 + 61)
    srv_query(later)


def test_srv_server_port_and_explicit_target_port() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, forward(Kind.REMOTE, f"10.0.2.50:9000:[{SRV_NAME}@srv-192.0.2.53:5353]:8000"))
    out = feed(stack, syn_from_guest("10.0.2.50", 9000))
    assert isinstance(out[0], OpenUdp) and out[0].host_port == 5353
    lookup, query = srv_query(out)
    done = stack.feed(HostDatagram(lookup, srv_answer(query.id, port=8443)), T0)
    assert Connect(guest_key(), packed("192.0.2.80"), 8000) in done


def test_srv_waiters_share_one_lookup() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, query = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000)))
    assert feed(stack, syn_from_guest("10.0.2.50", 9000, sport=GUEST_SPORT + 1)) == []
    done = stack.feed(HostDatagram(lookup, srv_answer(query.id)), T0)
    assert [e for e in done if isinstance(e, Connect)] == [
        Connect(guest_key(), packed("192.0.2.80"), 8443),
        Connect(guest_key(GUEST_SPORT + 1), packed("192.0.2.80"), 8443)]


def test_srv_without_address_asks_for_the_target_a_record() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, query = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000)))
    out = stack.feed(HostDatagram(lookup, srv_answer(query.id, address=None)), T0)
    assert out[0] == Close(lookup)
    second, a_query = srv_query(out[1:])
    assert second != lookup and a_query.qd[0].qname == b"web.example." and a_query.qd[0].qtype == 1
    answer = bytes(DNS(id=a_query.id, qr=1, qd=DNSQR(qname="web.example.", qtype="A"),
                       an=DNSRR(rrname="web.example.", type="A", rdata="192.0.2.81")))
    assert stack.feed(HostDatagram(second, answer), T0) == [
        Close(second), Connect(guest_key(), packed("192.0.2.81"), 8443)]


def test_srv_answer_with_another_id_is_ignored() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, query = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000)))
    assert stack.feed(HostDatagram(lookup, srv_answer((query.id + 1) & 0xFFFF)), T0) == []
    assert stack.dns_client.owns(lookup)


def rst_to_guest(effects: list[Effect]) -> Ether:
    (rst,) = [f for f in frames(effects) if TCP in f]
    return rst


def test_srv_nxdomain_resets_the_guest() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, query = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000, seq=1000)))
    out = stack.feed(HostDatagram(lookup, srv_answer(query.id, rcode=3)), T0)
    assert Close(lookup) in out and Close(guest_key()) in out
    assert not any(isinstance(e, Connect) for e in out)
    rst = rst_to_guest(out)
    assert flags_of(rst) == "RA" and rst[TCP].ack == 1001
    assert (rst[IP].src, rst[TCP].sport, rst[TCP].dport) == ("10.0.2.50", 9000, GUEST_SPORT)
    assert stack.tcp.get(guest_key()) is None and stack.srv.failures == 1
    # a failure is not cached: the next SYN asks again
    srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000, sport=GUEST_SPORT + 1)))


def test_srv_timeout_resets_the_guest() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, SRV_TCP)
    lookup, _ = srv_query(feed(stack, syn_from_guest("10.0.2.50", 9000)))
    assert stack.next_deadline() == T0 + LOOKUP_TIMEOUT_S
    assert stack.feed(TimerDue(), T0 + LOOKUP_TIMEOUT_S - 0.01) == []
    out = stack.feed(TimerDue(), T0 + LOOKUP_TIMEOUT_S)
    assert Close(lookup) in out and Close(guest_key()) in out
    assert flags_of(rst_to_guest(out)) == "RA"
    assert stack.tcp.get(guest_key()) is None and not stack.dns_client.owns(lookup)


def test_srv_udp_remote_forward_sends_once_the_target_is_known() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, forward(Kind.REMOTE, f"udp://10.0.2.50:5353:[{SRV_NAME}@srv-192.0.2.53]:0"))
    lookup, query = srv_query(feed(stack, udp_from_guest("10.0.2.50", 5353, b"hello",
                                                         sport=33333)))
    out = stack.feed(HostDatagram(lookup, srv_answer(query.id)), T0)
    key = FlowKey(17, packed(GUEST_IP), 33333, packed("10.0.2.50"), 5353)
    assert OpenUdp(key, packed("192.0.2.80"), 8443) in out
    (sent,) = [e for e in out if isinstance(e, SendDatagram)]
    assert sent.flow == key and bytes(sent.data) == b"hello"


def test_srv_udp_failure_gives_host_unreachable() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, forward(Kind.REMOTE, f"udp://10.0.2.50:5353:[{SRV_NAME}@srv-192.0.2.53]:0"))
    lookup, query = srv_query(feed(stack, udp_from_guest("10.0.2.50", 5353, b"hello")))
    out = stack.feed(HostDatagram(lookup, srv_answer(query.id, rcode=2)), T0)
    (icmp,) = frames(out)
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 1)


def test_srv_name_build_query_refuses_does_not_crash_the_stack() -> None:
    # The parser refuses such a name; a Forward made some other way must not crash.
    with pytest.raises(ForwardError, match="bad SRV name"):
        forward(Kind.REMOTE, "10.0.2.50:9000:[a b.example@srv-192.0.2.53]:0")
    stack = stack_knowing_guest()
    good = forward(Kind.REMOTE, "10.0.2.50:9000:[ok.example@srv-192.0.2.53]:0")
    assert type(good) is SrvForward
    add_remote(stack, dataclasses.replace(good, target=dataclasses.replace(
        good.target, name="a b.example")))
    out = feed(stack, syn_from_guest("10.0.2.50", 9000))
    assert not any(isinstance(e, Connect) for e in out)
    assert flags_of(rst_to_guest(out)) == "RA" and stack.srv.failures == 1
    assert len(stack.dns_client) == 0  # nothing was asked


# --- (g) flows of forwards ---

def test_flows_list_a_forwarded_tcp_connection_with_bytes_and_age() -> None:
    stack = stack_knowing_guest()
    key, syn = established(stack)
    our_next = syn[TCP].seq + 1
    # the guest sends 5 bytes, the host socket takes them
    out = feed(stack, guest_frame(CLIENT) / TCP(sport=80, dport=CLIENT_PORT, flags="PA",
                                                 seq=5001, ack=our_next, window=512) / b"hello",
               T0 + 1)
    assert Send(key, b"hello") in [Send(e.flow, bytes(e.data)) for e in out
                                   if isinstance(e, Send)]
    stack.feed(Sent(key, 5, 5, SPACE), T0 + 1)
    # the host client sends 7 bytes, the guest acknowledges them
    (data,) = frames(stack.feed(HostData(key, memoryview(b"abcdefg")), T0 + 1.5))
    assert bytes(data[TCP].payload) == b"abcdefg"
    feed(stack, guest_frame(CLIENT) / TCP(sport=80, dport=CLIENT_PORT, flags="A", seq=5006,
                                          ack=our_next + 7, window=512), T0 + 2)
    assert stack.stats.flows(T0 + 2.5) == [{
        "proto": "tcp", "guest": f"{GUEST_IP}:80", "remote": f"{CLIENT}:{CLIENT_PORT}",
        "bytes_from_guest": 5, "bytes_to_guest": 7, "age_s": 2.5, "state": "ESTABLISHED"}]
    assert stack.stats.flow_counts() == {"tcp": 1, "udp": 0, "icmp": 0}


def test_flows_list_a_syn_sent_connection_and_an_inbound_udp_flow() -> None:
    stack = stack_knowing_guest()
    accept(stack, client="127.0.0.1")
    forward_datagram(stack, 9, LOCAL_UDP, (packed(CLIENT), 6000), b"12345", T0 + 1)
    feed(stack, udp_from_guest(CLIENT, 6000, b"ab"), T0 + 1)
    flows = stack.stats.flows(T0 + 2)
    assert flows == [
        {"proto": "tcp", "guest": f"{GUEST_IP}:80", "remote": f"{GATEWAY}:{CLIENT_PORT}",
         "bytes_from_guest": 0, "bytes_to_guest": 0, "age_s": 2.0, "state": "SYN-SENT"},
        {"proto": "udp", "guest": f"{GUEST_IP}:53", "remote": f"{CLIENT}:6000",
         "bytes_from_guest": 2, "bytes_to_guest": 5, "age_s": 1.0, "forward": 9}]
    assert stack.stats.flow_counts() == {"tcp": 1, "udp": 1, "icmp": 0}


def test_refused_connect_of_remote_forward_resets_the_guest() -> None:
    stack = stack_knowing_guest()
    add_remote(stack, REMOTE_TCP)
    feed(stack, syn_from_guest("10.0.2.50", 9000))
    key = guest_key()
    out = stack.feed(ConnectFailed(key, errno.ECONNREFUSED), T0)
    assert Close(key) in out and flags_of(rst_to_guest(out)) == "RA"
    assert stack.stats.flows(T0) == []
