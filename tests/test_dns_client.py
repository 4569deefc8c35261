"""The core's one DNS client: unique keys across both askers, answers matched by key and
id, deadlines, failures; and, through the stack, the forwarder and SRV lookups sharing it.

Regression (issue #11 review): SRV lookups used to take their key's port from a 16-bit
hash of a counter with no uniqueness check, so two lookups whose hashes collided shared
a key and the second overwrote the first. Keys now come from one allocator that checks
every pending query of both askers.
"""

from __future__ import annotations

import errno

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from slirpy.config import Config
from slirpy.effects import Close, Connect, Effect, OpenUdp, SendDatagram
from slirpy.events import DnsUpstreams, HostDatagram, HostError, HostFailed, TimerDue
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Kind
from slirpy.services.dnsclient import (LABEL_COUNT, MAX_QUERIES, NO_ANSWER, TOO_MANY, DnsClient,
                                       Done, Failure, Outcome)
from tests.harness import DNS as DNS_ADDR, GUEST_IP, add_remote, packed
from tests.test_stack_forwards import (T0, feed, forward, frames, guest_frame, guest_key,
                                       stack_knowing_guest, syn_from_guest)

SERVER = (packed("192.0.2.53"), 53)
OURS = packed(DNS_ADDR)
UNSPECIFIED = bytes(4)


class Asker:
    """Records every outcome the client hands back, by the tag it was asked with."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[Outcome]] = {}

    def done(self, tag: str) -> Done:
        def record(outcome: Outcome, now: float) -> list[Effect]:
            self.outcomes.setdefault(tag, []).append(
                outcome if isinstance(outcome, Failure) else bytes(outcome))
            return []
        return record


def ask(client: DnsClient, asker: Asker, tag: str, *, ident: int = 7,
        origin: bytes = UNSPECIFIED, deadline: float = T0 + 3) -> FlowKey:
    effects = client.ask(origin, SERVER, b"query " + tag.encode(), ident, now=T0,
                         deadline=deadline, done=asker.done(tag))
    opened, sent = effects
    assert isinstance(opened, OpenUdp) and isinstance(sent, SendDatagram)
    assert opened.flow == sent.flow and (opened.host_addr, opened.host_port) == SERVER
    return opened.flow


def response(ident: int) -> bytes:
    return ident.to_bytes(2, "big") + b"\x80\x00" + bytes(8)  # a header: QR set, no records


# --- keys ---

def test_keys_are_unique_among_all_pending_queries_of_both_askers() -> None:
    client, asker = DnsClient(b"test"), Asker()
    keys = [ask(client, asker, f"q{i}", origin=OURS if i % 2 else UNSPECIFIED)
            for i in range(MAX_QUERIES)]
    assert len({key.guest_port for key in keys}) == MAX_QUERIES
    assert all(client.owns(key) for key in keys)


def test_a_pending_query_keeps_its_port_when_the_labels_wrap() -> None:
    client, asker = DnsClient(b"test"), Asker()
    held = ask(client, asker, "held")
    for i in range(LABEL_COUNT - 1):  # every other label, each answered at once
        key = ask(client, asker, f"q{i}")
        assert key.guest_port != held.guest_port
        client.on_datagram(key, response(7), T0)
    # the labels have wrapped: the next one skips the port still held
    again = ask(client, asker, "again")
    assert again.guest_port not in (held.guest_port, 0)
    assert client.owns(held) and client.owns(again)


def test_same_id_and_server_cannot_overwrite_a_pending_query() -> None:
    # The old collision: two lookups whose 16-bit hashes were equal shared one key.
    client, asker = DnsClient(b"test"), Asker()
    first = ask(client, asker, "first", ident=0x1234)
    second = ask(client, asker, "second", ident=0x1234)
    assert first != second and client.owns(first) and client.owns(second)
    assert client.on_datagram(first, response(0x1234), T0) == [Close(first)]
    assert asker.outcomes == {"first": [response(0x1234)]}
    assert client.owns(second) and not client.owns(first)
    assert client.on_datagram(second, response(0x1234), T0) == [Close(second)]
    assert asker.outcomes["second"] == [response(0x1234)]


def test_the_client_refuses_beyond_its_limit_at_once() -> None:
    client, asker = DnsClient(b"test"), Asker()
    for i in range(MAX_QUERIES):
        ask(client, asker, f"q{i}")
    assert client.ask(UNSPECIFIED, SERVER, b"x", 1, now=T0, deadline=T0 + 3,
                      done=asker.done("over")) == []
    assert asker.outcomes["over"] == [Failure(TOO_MANY)]
    assert len(client) == MAX_QUERIES


# --- answers, errors, deadlines ---

@pytest.mark.parametrize("data", [response(8), bytes(DNS(id=7, qr=0)), b"\x00"],
                         ids=["other id", "not a response", "short"])
def test_a_datagram_that_is_not_the_answer_is_ignored(data: bytes) -> None:
    client, asker = DnsClient(b"test"), Asker()
    key = ask(client, asker, "q")
    assert client.on_datagram(key, data, T0) == []
    assert client.owns(key) and asker.outcomes == {}


def test_a_stale_key_is_not_ours() -> None:
    client, asker = DnsClient(b"test"), Asker()
    key = ask(client, asker, "q")
    client.on_datagram(key, response(7), T0)
    assert not client.owns(key)
    assert client.on_datagram(key, response(7), T0) == []
    assert client.on_error(key, HostError(errno.ECONNREFUSED), T0) == []
    other_origin = key._replace(guest_addr=OURS)
    assert not client.owns(other_origin)


def test_an_error_fails_the_query_and_closes_its_socket() -> None:
    client, asker = DnsClient(b"test"), Asker()
    key = ask(client, asker, "q")
    assert client.on_error(key, HostError(errno.ECONNREFUSED), T0) == [Close(key)]
    assert asker.outcomes == {"q": [Failure(f"unreachable (errno {errno.ECONNREFUSED})")]}


def test_deadlines_of_both_askers_in_order_answered_ones_skipped() -> None:
    client, asker = DnsClient(b"test"), Asker()
    late = ask(client, asker, "late", deadline=T0 + 5)
    early = ask(client, asker, "early", deadline=T0 + 1)
    middle = ask(client, asker, "middle", deadline=T0 + 3)
    assert client.next_deadline() == T0 + 1
    client.on_datagram(early, response(7), T0)
    assert client.next_deadline() == T0 + 3  # the answered query's deadline is gone
    assert client.expire(T0 + 3) == [Close(middle)]
    assert asker.outcomes["middle"] == [Failure(NO_ANSWER)]
    assert client.next_deadline() == T0 + 5 and client.owns(late)
    assert client.expire(T0 + 5) == [Close(late)]
    assert client.next_deadline() is None and len(client) == 0


def test_ids_come_from_the_secret() -> None:
    first, again, other = DnsClient(b"one"), DnsClient(b"one"), DnsClient(b"two")
    ids = [first.new_ident() for _ in range(8)]
    assert ids == [again.new_ident() for _ in range(8)]  # deterministic in tests
    assert ids != [other.new_ident() for _ in range(8)]
    assert len(set(ids)) > 1 and all(0 <= i <= 0xFFFF for i in ids)


# --- through the stack: the forwarder and SRV lookups on one client ---

def srv_answer(query: DNS, name: str, address: str, port: int) -> bytes:
    return bytes(DNS(id=query.id, qr=1, qd=query.qd,
                     an=DNSRRSRV(rrname=f"{name}.", priority=0, weight=5, port=port,
                                 target=f"host.{name}."),
                     ar=DNSRR(rrname=f"host.{name}.", type="A", rdata=address)))


def guest_query(ident: int, sport: int) -> Ether:
    return (guest_frame(DNS_ADDR) / UDP(sport=sport, dport=53)
            / DNS(id=ident, rd=1, qd=DNSQR(qname=f"n{ident}.test")))


@pytest.mark.parametrize("same_id", [False, True], ids=["ids", "one forced id"])
def test_many_srv_lookups_and_forwarder_queries_each_get_their_own_answer(
        same_id: bool) -> None:
    stack = stack_knowing_guest(Config(dns_timeout_s=5.0))
    stack.feed(DnsUpstreams(((packed("127.0.0.53"), 53),)), T0)
    if same_id:  # every SRV query with the same id: the forced "same hash"
        try:
            stack.dns_client.new_ident = lambda: 0x4242  # type: ignore[method-assign]
        except AttributeError:  # a compiled DnsClient's methods cannot be replaced
            pytest.skip("the compiled build cannot force the ids (the pure build does)")
    lookups: dict[FlowKey, tuple[int, DNS]] = {}  # key -> (forward port, query)
    relayed: dict[FlowKey, DNS] = {}
    for i in range(100):
        name = f"_s{i}._tcp.test"
        add_remote(stack, forward(Kind.REMOTE, f"10.0.2.50:{9000 + i}:[{name}@srv-192.0.2.53]:0"))
        opened, sent = feed(stack, syn_from_guest("10.0.2.50", 9000 + i))
        assert isinstance(opened, OpenUdp) and isinstance(sent, SendDatagram)
        lookups[opened.flow] = (9000 + i, DNS(bytes(sent.data)))
        opened, sent = feed(stack, guest_query(i, 20000 + i))
        assert isinstance(opened, OpenUdp) and isinstance(sent, SendDatagram)
        relayed[opened.flow] = DNS(bytes(sent.data))
    keys = [*lookups, *relayed]
    assert len({key.guest_port for key in keys}) == len(keys) == 200
    assert all(stack.dns_client.owns(key) for key in keys)
    # Answer in reverse: each answer reaches its own asker, and only it.
    for key, (port, query) in reversed(list(lookups.items())):
        name = query.qd[0].qname.decode().rstrip(".")
        address = f"192.0.2.{port - 9000 + 1}"
        out = stack.feed(HostDatagram(key, srv_answer(query, name, address, 8000)), T0 + 1)
        assert out == [Close(key), Connect(guest_key(dport=port), packed(address), 8000)]
    for key, query in reversed(list(relayed.items())):
        answer = bytes(DNS(id=query.id, qr=1, qd=query.qd))
        (reply,) = frames(stack.feed(HostDatagram(key, answer), T0 + 1))
        assert (reply[IP].src, reply[IP].dst, reply[UDP].sport) == (DNS_ADDR, GUEST_IP, 53)
        assert reply[UDP].dport == 20000 + query.id and reply[DNS].id == query.id
    assert len(stack.dns_client) == 0 and stack.dns.in_flight == 0
    assert stack.srv.pending == {} and stack.srv.failures == 0


def test_srv_timeout_and_forwarder_failover_share_the_clients_deadlines() -> None:
    stack = stack_knowing_guest(Config(dns_timeout_s=1.0))
    stack.feed(DnsUpstreams(((packed("192.0.2.1"), 53), (packed("192.0.2.2"), 53))), T0)
    add_remote(stack, forward(Kind.REMOTE, "10.0.2.50:9000:[_x._tcp.test@srv-192.0.2.53]:0"))
    lookup = feed(stack, syn_from_guest("10.0.2.50", 9000))[0]
    first = feed(stack, guest_query(1, 20001))[0]
    assert isinstance(lookup, OpenUdp) and isinstance(first, OpenUdp)
    assert stack.next_deadline() == T0 + 1.0  # the forwarder's, before the lookup's 3 s
    out = stack.feed(TimerDue(), T0 + 1.0)
    assert out[0] == Close(first.flow)
    (second,) = [e for e in out if isinstance(e, OpenUdp)]
    assert second.host_addr == packed("192.0.2.2")  # the next upstream
    assert stack.dns_client.owns(lookup.flow)  # untouched
    out = stack.feed(HostFailed(second.flow, HostError(errno.ECONNREFUSED)), T0 + 1.5)
    (servfail,) = frames(out)
    assert servfail[DNS].rcode == 2 and servfail[DNS].id == 1
    out = stack.feed(TimerDue(), T0 + 3.0)
    assert Close(lookup.flow) in out and Close(guest_key()) in out
    assert [f[TCP].flags for f in frames(out)] == ["RA"]
    assert len(stack.dns_client) == 0 and stack.dns_client.next_deadline() is None
