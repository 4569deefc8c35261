"""The event stream: the core's flow reports (scapy frames in, Report effects out), the
hub's sinks (bounded, never blocking, dropping with a count), the API's subscribe and
fd passing, and every event checked against the JSON Schema shipped in the package."""

from __future__ import annotations

import array
import datetime
import json
import os
import socket
import stat
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from scapy.layers.dns import DNS as DNSPacket, DNSQR, DNSRR  # type: ignore[import-untyped]
from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.api.commands import Api
from slirpy.api.server import MAX_FDS, ApiServer
from slirpy.addresses import Network
from slirpy.config import Config
from slirpy.effects import OpenPing, OpenUdp, Report, SendDatagram
from slirpy.errors import SetupError
from slirpy.events import ConnectFailed, DnsUpstreams, HostError
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Kind, parse_forward
from slirpy.observe.events import (SCHEMA_FILE, SUBSCRIBED, EventHub, Subscription,
                                   event_line, timestamp)
from slirpy.policy.rules import Action, parse_rules
from slirpy.runtime.loop import EventLoop
from tests.harness import DNS, GUEST_IP, GUEST_MAC, OUR_MAC, GuestHarness, forward_accept, packed
from tests.tcp_harness import TcpHarness

SCHEMA: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
REMOTE = "192.0.2.1"
ON = Config(events="-")  # reports on from the start, as with --events


def validated(report: Report, wall: float = 1_700_000_000.123456) -> dict[str, Any]:
    """The report as the line the hub writes, parsed, after checking it is valid."""
    line = json.loads(event_line(report.event, report.fields, wall))
    VALIDATOR.validate(line)
    return line  # type: ignore[no-any-return]


def reports(effects: list[Any], event: str | None = None) -> list[dict[str, Any]]:
    return [validated(e) for e in effects if isinstance(e, Report)
            and (event is None or e.event == event)]


def udp(payload: bytes, dst: str = REMOTE, sport: int = 5000, dport: int = 7) -> Ether:
    return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=dst)
            / UDP(sport=sport, dport=dport) / payload)


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the schema does refuse things
        VALIDATOR.validate({"event": "flow-new", "time": "yesterday", "schema": 1})


# --- the core: reports once a flow, counts always ---------------------------------------------


def test_reports_off_make_no_report_but_flows_are_counted() -> None:
    guest = GuestHarness()
    guest.send(udp(b"x" * 10))
    assert not guest.of_type(Report)
    guest.advance(200)
    assert guest.stack.stats.flow_totals() == {
        "flows_opened": {"tcp": 0, "udp": 1, "icmp": 0},
        "flows_closed": {"tcp": 0, "udp": 1, "icmp": 0}}
    assert guest.stack.reports.open == {}  # nothing remembered per flow while off


def test_udp_flow_new_and_done_carry_bytes_packets_and_why() -> None:
    guest = GuestHarness(ON)
    guest.send(udp(b"x" * 10))
    (new,) = reports(guest.effects, "flow-new")
    assert new["proto"] == "udp" and new["family"] == 4 and new["origin"] == "guest"
    assert new["guest"] == {"addr": GUEST_IP, "port": 5000}
    assert new["remote"] == {"addr": REMOTE, "port": 7}
    assert new["allowed_by"] == "routing"
    guest.send(udp(b"y" * 20))
    assert not guest.of_type(Report)  # a packet of a known flow reports nothing
    key = FlowKey(17, packed(GUEST_IP), 5000, packed(REMOTE), 7)
    guest.host_datagram(key, b"z" * 5)
    guest.advance(121)
    (done,) = reports(guest.effects, "flow-done")
    assert done["id"] == new["id"]
    assert done["bytes"] == {"from_guest": 30, "to_guest": 5}
    assert done["packets"] == {"from_guest": 2, "to_guest": 1}
    assert done["reason"] == "timeout" and done["duration_s"] == 121


def test_udp_host_error_ends_the_flow_with_error_text() -> None:
    guest = GuestHarness(ON)
    guest.send(udp(b"x"))
    key = FlowKey(17, packed(GUEST_IP), 5000, packed(REMOTE), 7)
    guest.host_error(key, HostError(24))  # EMFILE: no socket to be had
    (done,) = reports(guest.effects, "flow-done")
    assert (done["reason"], done["error"]) == ("error", "EMFILE")


def test_ping_is_an_icmp_flow_with_payload_bytes() -> None:
    guest = GuestHarness(ON)
    guest.send(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=REMOTE)
               / ICMP(id=9, seq=1) / (b"p" * 56))
    (new,) = reports(guest.effects, "flow-new")
    assert new["proto"] == "icmp" and new["guest"]["port"] == 9 and new["remote"]["port"] == 0
    (opened,) = [e for e in guest.effects if isinstance(e, OpenPing)]
    guest.host_datagram(opened.flow, bytes(ICMP(type=0, id=1234, seq=1) / (b"p" * 56)))
    guest.advance(31)
    (done,) = reports(guest.effects, "flow-done")
    assert done["bytes"] == {"from_guest": 56, "to_guest": 56}
    assert done["packets"] == {"from_guest": 1, "to_guest": 1}


def test_tcp_connection_reports_stream_bytes_and_a_reset() -> None:
    t = TcpHarness(ON)
    assert t.syn() == []
    (new,) = reports(t.effects, "flow-new")
    assert new["proto"] == "tcp" and new["allowed_by"] == "routing"
    (syn_ack,) = t.host_connected()
    t.our_isn = syn_ack[TCP].seq
    t.segment("A", ack=t.our_isn + 1)
    t.send(b"hello")
    t.host_writes(b"world!")
    t.ack(t.our_isn + 1 + 6)
    t.host_resets()
    (done,) = reports(t.effects, "flow-done")
    assert done["bytes"] == {"from_guest": 5, "to_guest": 6}
    assert done["packets"]["from_guest"] == 4  # SYN, ACK, data, ACK
    assert done["packets"]["to_guest"] >= 3  # SYN-ACK, data, RST (and ACKs)
    assert done["reason"] == "reset"
    assert t.stack.stats.tcp_counts()["resets_sent"] == 1
    assert t.stack.stats.flow_totals()["flows_closed"]["tcp"] == 1


def test_tcp_refused_connect_says_refused() -> None:
    t = TcpHarness(ON)
    t.syn()
    t.feed(ConnectFailed(t.key, 111))  # ECONNREFUSED
    (done,) = reports(t.effects, "flow-done")
    assert done["reason"] == "refused"


def test_blocked_flows_fold_per_rule_and_remote_each_second() -> None:
    rules = tuple(parse_rules(Action.DENY, "tcp://198.51.100.7", lambda name: []))
    guest = GuestHarness(Config(events="-", rules=rules))

    def syn(sport: int) -> Ether:
        return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst="198.51.100.7")
                / TCP(sport=sport, dport=443, flags="S"))

    guest.send(syn(1001))
    (first,) = reports(guest.effects, "blocked")
    assert (first["by"], first["rule"], first["count"]) == ("--deny tcp://198.51.100.7", 1, 1)
    assert first["remote"] == {"addr": "198.51.100.7", "port": 443}
    for sport in range(1002, 1006):
        guest.send(syn(sport))
        assert not reports(guest.effects)
    guest.advance(1.0)
    (folded,) = reports(guest.effects, "blocked")
    assert folded["count"] == 4
    assert guest.stack.stats.blocked_counts() == {"--deny tcp://198.51.100.7": 5}


def test_a_scan_past_the_folds_is_counted_not_reported() -> None:
    from slirpy.reports import FOLDS_MAX
    rules = tuple(parse_rules(Action.DENY, "tcp://198.51.0.0/16", lambda name: []))
    guest = GuestHarness(Config(events="-", rules=rules))
    lines = 0
    for n in range(FOLDS_MAX + 50):  # a scan of a denied /16: one SYN per address
        guest.send(Ether(src=GUEST_MAC, dst=OUR_MAC)
                   / IP(src=GUEST_IP, dst=f"198.51.{n // 250}.{n % 250 + 1}")
                   / TCP(sport=1000 + n % 50000, dport=22, flags="S"))
        lines += len(reports(guest.effects, "blocked"))
    assert lines == FOLDS_MAX  # one per destination folded; past the table, counted only
    assert guest.stack.stats.blocked_counts() == {"--deny tcp://198.51.0.0/16": FOLDS_MAX + 50}


def query(ident: int = 77) -> Ether:
    return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=DNS)
            / UDP(sport=33333, dport=53) / DNSPacket(id=ident, rd=1, qd=DNSQR(qname="a.test")))


def answer_to(sent: SendDatagram) -> bytes:
    asked = DNSPacket(bytes(sent.data))
    return bytes(DNSPacket(id=asked.id, qr=1, qd=asked.qd,
                           an=DNSRR(rrname=asked.qd[0].qname, rdata="192.0.2.1")))


def test_dns_query_is_a_flow_and_failover_is_reported_and_counted() -> None:
    guest = GuestHarness(Config(events="-", dns_timeout_s=1.0))
    guest.feed(DnsUpstreams(((packed("192.0.2.53"), 53), (packed("127.0.0.53"), 53))))
    sent_query = bytes(query()[DNSPacket])
    guest.send(query())
    (new,) = reports(guest.effects, "flow-new")
    assert new["remote"] == {"addr": DNS, "port": 53} and new["allowed_by"] == "dns forwarder"
    guest.advance(1.5)  # the first upstream says nothing
    (failed,) = reports(guest.effects, "dns-upstream")
    assert (failed["state"], failed["upstream"]) == ("failed", "192.0.2.53")
    opened = [e for e in guest.effects if isinstance(e, OpenUdp)][0]
    sent = [e for e in guest.effects if isinstance(e, SendDatagram)][0]
    answer = answer_to(sent)
    guest.host_datagram(opened.flow, answer)
    (chosen,) = reports(guest.effects, "dns-upstream")
    assert (chosen["state"], chosen["upstream"]) == ("chosen", "127.0.0.53")
    (done,) = reports(guest.effects, "flow-done")
    assert done["bytes"] == {"from_guest": len(sent_query), "to_guest": len(answer)}
    assert done["reason"] == "closed"
    assert guest.stack.stats.dns_counts() == {"queries": 1, "failures": 0, "failovers": 1}


def test_local_forward_connection_names_the_real_client() -> None:
    guest = GuestHarness(ON)
    (fwd,) = parse_forward(Kind.LOCAL, "8080:80", guest=Network().guest,
                           gateway=Network().gateway)
    client = (packed("198.51.100.20"), 45678)
    key, effects = forward_accept(guest.stack, fwd, client, 65536, guest.now)
    assert key is not None
    (new,) = reports(effects, "flow-new")
    assert new["origin"] == "local-forward" and new["forward"] == 1
    assert new["client"] == {"addr": "198.51.100.20", "port": 45678}
    assert new["guest"] == {"addr": GUEST_IP, "port": 80}
    assert guest.stack.reports.forward_flows == {1: 1}


def test_turning_reports_off_forgets_open_flows() -> None:
    guest = GuestHarness(ON)
    guest.send(udp(b"x"))
    assert guest.stack.reports.open
    guest.stack.reports.set_on(False)
    assert guest.stack.reports.open == {}
    guest.advance(121)
    assert not guest.of_type(Report)


# --- the hub: sinks that never block -----------------------------------------------------------


def test_event_line_has_envelope_and_microsecond_utc_time() -> None:
    line = event_line("exit", {"reason": "stopped"}, 0.5)
    assert line == (b'{"event":"exit","time":"1970-01-01T00:00:00.500000Z","schema":1,'
                    b'"reason":"stopped"}\n')
    VALIDATOR.validate(json.loads(line))
    # The same instants datetime gives, rounded to the microsecond, across a leap day
    # and the carry into the next second.
    for wall in (951782399.9999996, 1764614534.047499, 4102444800.25):
        want = datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)
        assert timestamp(wall) == want.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_file_sink_appends_lines_and_on_change_follows_sinks(tmp_path: Any) -> None:
    loop = EventLoop()
    hub = EventHub(loop)
    changes: list[bool] = []
    hub.on_change = changes.append
    hub.emit("exit", {"reason": "nobody listens"})  # no sink: nothing, and no error
    path = tmp_path / "events.jsonl"
    hub.open(str(path))
    hub.emit("rule-added", {"id": 1, "action": "deny", "rule": "tcp://192.0.2.0/24"})
    hub.close()
    assert changes == [True, False]
    (line,) = path.read_text().splitlines()
    VALIDATOR.validate(json.loads(line))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loop.close()


def test_unwritable_path_is_one_line_setup_error(tmp_path: Any) -> None:
    hub = EventHub(EventLoop())
    with pytest.raises(SetupError, match=r"^--events /nonexistent/dir/e\.jsonl: No such file"):
        hub.open("/nonexistent/dir/e.jsonl")
    with pytest.raises(SetupError, match=r"^--events fd:987: Bad file descriptor$"):
        hub.open("fd:987")


def test_fd_sink_on_a_pipe_leaves_the_fds_flags_alone() -> None:
    r, w = os.pipe()
    try:
        hub = EventHub(EventLoop())
        hub.open(f"fd:{w}")
        assert os.get_blocking(w)  # our own description is the non-blocking one
        hub.emit("exit", {"reason": "test"})
        assert json.loads(os.read(r, 4096))["reason"] == "test"
        hub.close()
    finally:
        os.close(r)
        os.close(w)


def drain(loop: EventLoop, sock: socket.socket) -> bytes:
    """Read everything the hub writes to *sock*, turning the loop while it writes."""
    got = bytearray()
    sock.setblocking(False)
    idle = 0
    while idle < 3:
        loop.wait(0.01)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            idle += 1
            continue
        if not chunk:
            break  # the server closed the connection
        idle = 0
        got += chunk
    return bytes(got)


def test_slow_subscriber_loses_lines_counted_then_told_when_it_drains() -> None:
    loop = EventLoop()
    hub = EventHub(loop, buffer_bytes=4096)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hub.attach(ours)
    sent = 2000
    for n in range(sent):  # the reader reads nothing meanwhile: emit must never block
        hub.emit("rule-added", {"id": n + 1, "action": "allow", "rule": "192.0.2.1"})
    lost = hub.dropped()
    assert lost > 0
    lines = drain(loop, theirs).splitlines()
    assert lines[0] + b"\n" == SUBSCRIBED
    events = [json.loads(line) for line in lines[1:]]
    for event in events:
        VALIDATOR.validate(event)
    dropped = [e for e in events if e["event"] == "dropped"]
    assert [e["count"] for e in dropped] == [lost]
    ids = [e["id"] for e in events if e["event"] == "rule-added"]
    assert len(ids) + lost == sent and ids == sorted(ids)  # whole lines, in order
    hub.emit("exit", {"reason": "after"})  # flowing again
    assert json.loads(drain(loop, theirs))["event"] == "exit"
    theirs.close()
    loop.wait(0.01)  # the hang-up is seen: the subscriber goes
    assert not hub.active and hub.subscribers == 0
    loop.close()


# --- the API: subscribe, and fds passed with a request -------------------------------------------


class Controller:
    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def subscribe(self) -> Subscription | None:
        return self.hub.subscribe()

    def list_forwards(self) -> list[Any]:
        return []


def test_subscribe_streams_events_over_the_api_socket(tmp_path: Any) -> None:
    loop = EventLoop()
    hub = EventHub(loop)
    path = str(tmp_path / "api.sock")
    api = Api(Controller(hub), Network())  # type: ignore[arg-type]
    server = ApiServer(path, loop, api.handle)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(b'{"execute": "subscribe"}')
    assert drain(loop, client) == SUBSCRIBED
    assert hub.subscribers == 1 and server.clients == {}  # handed over to the hub
    hub.emit("forward-added", {"id": 1, "kind": "local", "spec": "tcp://0.0.0.0:8080:"
                               "10.0.2.100:80", "origin": "api"})
    VALIDATOR.validate(json.loads(drain(loop, client)))
    client.close()
    loop.wait(0.01)
    assert hub.subscribers == 0
    server.close()
    loop.close()


def test_a_late_subscriber_is_told_the_current_dns_upstream_first(tmp_path: Any) -> None:
    loop = EventLoop()
    hub = EventHub(loop)
    hub.current = lambda: [("dns-upstream", {"state": "chosen", "upstream": "192.0.2.53"})]
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, Api(Controller(hub), Network()).handle)  # type: ignore[arg-type]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(b'{"execute": "subscribe"}')
    header, line = drain(loop, client).splitlines()
    assert header + b"\n" == SUBSCRIBED
    event = json.loads(line)
    VALIDATOR.validate(event)
    assert (event["event"], event["state"], event["upstream"]) == (
        "dns-upstream", "chosen", "192.0.2.53")
    client.close()
    server.close()
    loop.close()


def test_fds_sent_over_several_messages_are_bounded_per_request(tmp_path: Any) -> None:
    loop = EventLoop()
    seen: list[int] = []

    def handle(request: bytes, fds: list[int]) -> bytes:
        seen.append(len(fds))
        return b"{}"

    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, handle)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    pipes = [os.pipe() for _ in range(12)]
    for batch in range(3):  # no complete request yet: the fds pile up, up to a bound
        client.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array(
            "i", [w for _, w in pipes[batch * 4:batch * 4 + 4]]))])
        loop.wait(0.05)
    for _, w in pipes:
        os.close(w)  # ours; only the server's copies are left open
    client.sendall(b'{"execute":"x"}')
    assert drain(loop, client) == b"{}"
    assert seen == [MAX_FDS]
    for r, _ in pipes:  # every copy the server held is closed: each reader sees EOF
        assert os.read(r, 1) == b""
        os.close(r)
    client.close()
    server.close()
    loop.close()


def test_dashes_name_slirpys_commands_but_never_slirp4netns_ones() -> None:
    hub = EventHub(EventLoop())
    api = Api(Controller(hub), Network())  # type: ignore[arg-type]
    assert isinstance(api.handle(b'{"execute":"subscribe"}'), Subscription)
    assert api.handle(b'{"execute":"list-forwards"}') == b'{"return":{"forwards":[]}}'
    assert api.handle(b'{"execute":"list-hostfwd"}') == \
        b'{"error":{"desc":"bad request: unknown execute"}}'


def test_fds_passed_with_a_request_reach_the_handler_and_the_rest_are_closed(
        tmp_path: Any) -> None:
    loop = EventLoop()
    seen: list[list[int]] = []
    kept: list[int] = []

    def handle(request: bytes, fds: list[int]) -> bytes:
        seen.append(list(fds))
        kept.append(fds.pop(0))  # takes the first over; the server closes the other
        return b"{}"

    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, handle)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendmsg([b'{"execute":"x"}'],
                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w1, w2]))])
    assert drain(loop, client) == b"{}"
    (fds,) = seen
    assert len(fds) == 2 and kept == [fds[0]]
    os.write(kept[0], b"mine")  # ours now: it writes into the first pipe
    assert os.read(r1, 4) == b"mine"
    os.close(w2)  # the server closed its copy of the second: EOF for the reader
    assert os.read(r2, 1) == b""
    for fd in (kept[0], r1, w1, r2):
        os.close(fd)
    client.close()
    server.close()
    loop.close()
