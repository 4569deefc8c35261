"""Floods and exhaustion (#13): the caps hold, half-open connections are given up in
time, refusals at the open-file limit are clean, and what a guest or a client can
repeat is logged a bounded number of times.

The TCP timing runs on the harness's clock (a float advanced by the test), so a minute
of give-up is checked without sleeping. The open-file limit is met for real: the soft
RLIMIT_NOFILE of this process is lowered for a moment and filled with fds of /dev/null.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.api.server import ApiServer
from slirpy.runtime.listener import ACCEPT_REST_S
from slirpy.config import Config
from slirpy.effects import Close, Connect, OpenUdp
from slirpy.events import ConnectFailed, Event, HostError, HostFailed
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Kind, LocalForward, parse_forward
from slirpy.guest import GuestLink
from slirpy.ratelog import LINES_PER_INTERVAL, RateLimitedLog
from slirpy.runtime.forwards import ForwardSockets
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.sockets import FD_LOG, SPARE_FD, HostSockets, flow_caps
from slirpy.runtime.streams import HostStreams
from slirpy.tcp.conn import State
from slirpy.tcp.flows import TcpFlows
from slirpy.tcp.timers import (SYNACK_GIVE_UP_S, SYNACK_GIVE_UP_UNDER_PRESSURE_S, SYNACK_RETRIES,
                               SYNACK_RETRIES_UNDER_PRESSURE)
from slirpy.wire.tcp import TcpHeader
from tests.harness import GUEST_IP, GUEST_MAC, OUR_MAC, GuestHarness
from tests.tcp_harness import REMOTE, TcpHarness

KEY = FlowKey(6, bytes([10, 0, 2, 100]), 40000, bytes([192, 0, 2, 1]), 80)
OUR_MAC_PACKED = bytes.fromhex(OUR_MAC.replace(":", ""))


def local_forward(text: str) -> LocalForward:
    (fwd,) = parse_forward(Kind.LOCAL, text, guest=ipaddress.ip_address(GUEST_IP),
                           gateway=ipaddress.ip_address("10.0.2.2"))
    assert isinstance(fwd, LocalForward)
    return fwd


def flags_of(frame: object) -> str:
    value = int(frame[TCP].flags)  # type: ignore[index]
    return "".join(name for name, bit in (("F", 1), ("S", 2), ("R", 4), ("P", 8), ("A", 16))
                   if value & bit)


def run_clock(t: TcpHarness, seconds: float, step_s: float = 0.1) -> None:
    """Advance the clock in steps, as the loop would wake for each deadline (one jump
    would run late timers late, and re-arm them from then)."""
    end = t.now + seconds
    while t.now + step_s <= end:
        t.advance(step_s)
    t.advance(end - t.now)


def times_of_syn_acks(t: TcpHarness, until_s: float, step_s: float = 0.25) -> list[float]:
    """Advance the clock by *step_s* up to *until_s* after now; when SYN-ACKs went out,
    relative to the start."""
    start, sent = t.now, []
    while t.now - start < until_s:
        if any(flags_of(f) == "SA" for f in t.advance(step_s)):
            sent.append(round(t.now - start, 2))
    return sent


# --- the rate-limited log ---------------------------------------------------------------------


def test_ratelog_writes_a_burst_per_interval_then_says_how_many_were_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    ratelog = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        written = [ratelog.warning("k", 100.0 + i * 0.01, "refused %d", i) for i in range(1000)]
        assert written.count(True) == 3 and ratelog.suppressed("k") == 997
        assert ratelog.warning("k", 110.5, "refused %d", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused 2", "refused 1000 (997 more like this suppressed)"]


def test_ratelog_keys_are_limited_apart(caplog: pytest.LogCaptureFixture) -> None:
    ratelog = RateLimitedLog(logging.getLogger("test.ratelog"))
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for i in range(100):
            ratelog.info("a", i * 0.1, "a")
            ratelog.warning("b", i * 0.1, "b")
    assert len(caplog.records) == 2 * LINES_PER_INTERVAL


def test_ratelog_clock_going_back_starts_a_new_interval() -> None:
    ratelog = RateLimitedLog(logging.getLogger("test.ratelog"), burst=1, interval_s=10.0)
    assert ratelog.info("k", 100.0, "x") and not ratelog.info("k", 101.0, "x")
    assert ratelog.info("k", 50.0, "x")


# --- SYN floods: the pending cap, give-up times, recovery ---------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_syn_received_unanswered_is_given_up_after_63_s_silently(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (syn_ack,) = t.host_connected()
    assert flags_of(syn_ack) == "SA"
    # Retransmissions after 1, 3, 7, 15 and 31 s (RTO 1 s, doubled), then 32 s of waiting.
    assert times_of_syn_acks(t, SYNACK_GIVE_UP_S - 0.5) == [1.0, 3.0, 7.0, 15.0, 31.0]
    assert SYNACK_RETRIES == 5 and SYNACK_GIVE_UP_S == 63.0
    assert t.stack.tcp.get(t.key) is not None
    assert t.advance(0.5) == []  # 63 s: given up, nothing to the guest (as Linux)
    assert t.stack.tcp.get(t.key) is None
    assert t.host.closed and t.host.reset  # the host's end is reset
    assert t.stack.tcp.given_up == 1 and t.stack.tcp.pending() == 0


@pytest.mark.parametrize("family", [4, 6])
def test_syn_received_answered_late_but_in_time_is_established(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (syn_ack,) = t.host_connected()
    t.advance(62)
    t.segment("A", ack=syn_ack[TCP].seq + 1)
    assert t.stack.tcp.get(t.key).state is State.ESTABLISHED  # type: ignore[union-attr]
    assert t.stack.tcp.pending() == 0
    t.advance(600)
    assert t.stack.tcp.get(t.key) is not None  # an idle established connection stays


def test_syn_flood_beyond_the_pending_cap_is_dropped_silently(
        caplog: pytest.LogCaptureFixture) -> None:
    t = TcpHarness(Config(tcp_conn_limit=80))  # pending cap: a quarter, 20
    assert t.stack.tcp.pending_limit == 20
    with caplog.at_level(logging.WARNING, logger="slirpy.tcp.flows"):
        answers = [t.syn_from(10000 + i) for i in range(300)]
    assert all(a == [] for a in answers)  # nothing to the guest: no RST, no SYN-ACK yet
    assert t.stack.tcp.pending() == len(t.stack.tcp) == 20
    assert t.stack.tcp.syns_dropped == 280 and t.stack.tcp.refused == 0
    assert len(caplog.records) == 1  # of 280 drops: once a minute at most
    assert "SYN" in caplog.records[0].getMessage()


def test_syn_flood_leaves_room_for_established_connections() -> None:
    t = TcpHarness(Config(tcp_conn_limit=80))
    t.handshake()
    for i in range(200):
        t.syn_from(10000 + i)
    # The flood holds the pending cap, not the table: the open connection carries on.
    assert len(t.stack.tcp) == 21
    t.send(b"ping")
    assert bytes(t.host.received) == b"ping"
    (data,) = t.host_writes(b"pong")
    assert bytes(data[TCP].payload) == b"pong"


def test_syn_flood_crowding_the_cap_is_given_up_within_7_s_and_new_syns_get_through() -> None:
    t = TcpHarness(Config(tcp_conn_limit=80))
    flood = [t.key_for(10000 + i) for i in range(20)]
    for key in flood:
        t.syn_from(key.guest_port)
        t.connected(key)  # the host service accepted each: SYN-RECEIVED, SYN-ACK out
    assert t.stack.tcp.pending() == 20
    assert t.syn_from(20000) == [] and t.stack.tcp.syns_dropped == 1  # full
    run_clock(t, SYNACK_GIVE_UP_UNDER_PRESSURE_S - 0.1)
    assert t.stack.tcp.pending() == 20
    run_clock(t, 0.2)
    assert SYNACK_RETRIES_UNDER_PRESSURE == 2 and SYNACK_GIVE_UP_UNDER_PRESSURE_S == 7.0
    assert t.stack.tcp.pending() == 0 and len(t.stack.tcp) == 0
    assert all(t.closed[key] for key in flood)  # every host connection reset
    t.syn()
    assert Connect(t.key, t.key.remote_addr, 80) in t.effects


def test_syn_flood_to_a_silent_host_is_gone_within_75_s() -> None:
    """Host connects that never complete hold their slots for the connect timeout (30 s);
    any that completed are given up by 63 s: the table is whole again within 75 s."""
    t = TcpHarness(Config(tcp_conn_limit=80))
    for i in range(200):
        t.syn_from(10000 + i)
        if i % 2:
            t.connected(t.key_for(10000 + i))
    assert t.stack.tcp.pending() == 20
    run_clock(t, 75, step_s=0.5)
    assert len(t.stack.tcp) == 0 and t.stack.tcp.pending() == 0
    t.syn()
    assert Connect(t.key, t.key.remote_addr, 80) in t.effects


def test_pending_cap_of_its_own_is_kept() -> None:
    link = GuestLink(OUR_MAC_PACKED, 1500)
    flows = TcpFlows(link, limit=400, secret=b"test", mtu=1500, pending_limit=3)
    for port in range(10):
        seg = TcpHeader.parse(memoryview(bytes(
            TCP(sport=10000 + port, dport=80, flags="S", seq=1))), KEY.guest_addr,
            KEY.remote_addr, verify_checksum=False)
        flows.on_segment(KEY._replace(guest_port=10000 + port), seg, KEY.remote_addr, 1000.0)
    assert flows.pending() == 3 and flows.syns_dropped == 7


def test_connection_cap_refusals_are_logged_a_bounded_number_of_times(
        caplog: pytest.LogCaptureFixture) -> None:
    t = TcpHarness(Config(tcp_conn_limit=4))
    for i in range(4):  # established: the table is full, the pending cap is not
        t.syn_from(10000 + i)
        (syn_ack,) = t.connected(t.key_for(10000 + i))
        t.segment("A", sport=10000 + i, seq=7001, ack=syn_ack[TCP].seq + 1)
    with caplog.at_level(logging.WARNING, logger="slirpy.tcp.flows"):
        for i in range(200):
            (rst,) = t.syn_from(20000 + i)
            assert flags_of(rst) == "RA"
    assert t.stack.tcp.refused == 200
    assert len(caplog.records) == 1


# --- UDP: the flow cap holds, idle flows go --------------------------------------------------------


def udp_to(dst: str, dport: int) -> Ether:
    return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst=dst)
            / UDP(sport=5000, dport=dport) / b"x")


def test_udp_flood_to_many_destinations_is_held_at_the_cap_and_expires() -> None:
    guest = GuestHarness(Config(udp_flow_limit=16, udp_idle_s=120.0))
    opened = closed = 0
    for i in range(300):
        guest.send(udp_to(f"203.0.113.{1 + i % 250}", 1000 + i // 250))
        opened += len(guest.of_type(OpenUdp))
        closed += len(guest.of_type(Close))
        guest.now += 0.001
    assert opened == 300 and len(guest.stack.udp) == 16 and opened - closed == 16
    guest.advance(120.0)
    assert len(guest.stack.udp) == 0 and len(guest.of_type(Close)) == 16


# --- the flow caps, from the open-file limit -----------------------------------------------------


@pytest.mark.parametrize("fd_limit, tcp, udp, pending", [
    (1 << 20, 4096, 1024, 1024),  # plenty: the configured caps
    (20000, 4096, 1024, 1024),
    (1024, 717, 179, 179),  # 1024 - 128 reserved = 896 flows: a fifth UDP
    (256, 103, 25, 25),  # 256 - 128 = 128
    (64, 13, 3, 3),  # too few to reserve: MIN_FLOWS still, and the EMFILE path is the bound
])
def test_flow_caps_follow_the_open_file_limit(fd_limit: int, tcp: int, udp: int,
                                              pending: int) -> None:
    caps = flow_caps(Config(), fd_limit)
    assert (caps.tcp_conn_limit, caps.udp_flow_limit, caps.max_pending_connects) == (
        tcp, udp, pending)
    assert caps.max_flows == tcp + udp


def test_flow_caps_given_max_flows_are_shared_out_and_pending_kept() -> None:
    caps = flow_caps(Config(max_flows=10000, max_pending_connects=50), 1 << 20)
    assert (caps.tcp_conn_limit, caps.udp_flow_limit, caps.max_pending_connects) == (
        8000, 2000, 50)


def test_flow_caps_set_aside_an_fd_per_local_forward() -> None:
    forwards = tuple(local_forward(f"127.0.0.1:{8000 + i}:{80 + i}") for i in range(100))
    plain, with_forwards = flow_caps(Config(), 1024), flow_caps(
        Config(forwards=forwards), 1024)
    assert plain.max_flows is not None and with_forwards.max_flows is not None
    assert plain.max_flows - with_forwards.max_flows == 100


# --- at the open-file limit: refused, never raised ---------------------------------------------


@contextlib.contextmanager
def at_fd_limit(spare: int = 0) -> Iterator[list[int]]:
    """The soft open-file limit lowered to the fds open now plus room for *spare* more,
    and every other slot below it taken by /dev/null; the fillers, to free some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        for _ in range(spare):
            os.close(fillers.pop())
        yield fillers
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_tcp_connect_at_the_fd_limit_is_refused_with_one_line_and_works_again(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = EventLoop()
    posted: list[Event] = []
    streams = HostStreams(Config(), loop, posted.append)
    FD_LOG.reset()  # a fresh interval
    try:
        with caplog.at_level(logging.WARNING, logger="slirpy.runtime.sockets"), \
                at_fd_limit() as fillers:
            for port in range(100):
                streams.connect(KEY._replace(guest_port=port), KEY.remote_addr, 80)
            assert posted == [ConnectFailed(KEY._replace(guest_port=port), errno.EMFILE)
                              for port in range(100)]
            assert len(caplog.records) == 1
            assert "no file descriptor" in caplog.records[0].getMessage()
            assert len(streams) == 0
            # fds free up: the next socket can be made (its connect is not awaited here).
            os.close(fillers.pop())
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.close()
    finally:
        loop.close()
    # Through the core: EMFILE becomes an RST for the guest's SYN.
    t = TcpHarness()
    t.syn()
    (rst,) = t.feed(ConnectFailed(t.key, errno.EMFILE))
    assert flags_of(rst) == "RA" and t.stack.tcp.get(t.key) is None


def test_udp_and_ping_sockets_at_the_fd_limit_are_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = EventLoop()
    posted: list[Event] = []
    sockets = HostSockets(Config(), loop, posted.append)
    udp_key = KEY._replace(proto=17)
    FD_LOG.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="slirpy.runtime.sockets"), at_fd_limit():
            for port in range(50):
                sockets.open_udp(udp_key._replace(guest_port=port), KEY.remote_addr, 53)
                sockets.open_ping(KEY._replace(proto=1, guest_port=port), KEY.remote_addr)
        # (A ping socket this host forbids is refused before any fd is taken: EACCES.)
        assert all(isinstance(e, HostFailed) and e.error.icmp_type is None
                   and e.error.errno in (errno.EMFILE, errno.EACCES) for e in posted)
        assert len(posted) == 100 and len(sockets) == 0
        assert len([r for r in caplog.records if "no file descriptor" in r.getMessage()]) == 1
    finally:
        loop.close()


def without_spare_fd(fillers: list[int]) -> None:
    """At the limit, the spare fd given up and its slot taken: no help left."""
    assert SPARE_FD.fd is not None
    os.close(SPARE_FD.fd)
    SPARE_FD.fd = None
    fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))


def counted(loop: EventLoop, fd: int) -> list[int]:
    """Wrap *fd*'s handler; the list fills with the mask of each call."""
    calls: list[int] = []
    handler = loop.handlers[fd]

    def counting(mask: int) -> None:
        calls.append(mask)
        handler(mask)
    loop.handlers[fd] = counting
    return calls


def serve(loop: EventLoop, rounds: int = 5) -> None:
    for _ in range(rounds):
        loop.wait(loop.now() + 0.01)


def test_api_client_at_the_fd_limit_is_dropped_without_spinning(tmp_path: Path) -> None:
    loop = EventLoop()
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, lambda request, fds: b"{}")
    calls = counted(loop, server.sock.fileno())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with at_fd_limit():
            client.connect(path)
            serve(loop)
            # Accepted on the spare fd and closed at once: an EOF or a reset, no reply.
            client.settimeout(1)
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
            assert len(server.clients) == 0 and len(calls) == 1
            assert SPARE_FD.fd is not None  # held again
        client.close()
        # With fds free again, a client is served as ever.
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(b"{}")
        client.shutdown(socket.SHUT_WR)
        client.settimeout(1)
        serve(loop)
        assert client.recv(100) == b"{}"
    finally:
        client.close()
        server.close()
        loop.close()


def test_api_listener_rests_when_even_the_spare_fd_cannot_help(tmp_path: Path) -> None:
    loop = EventLoop()
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, lambda request, fds: b"{}")
    calls = counted(loop, server.sock.fileno())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with at_fd_limit() as fillers:
            without_spare_fd(fillers)
            client.connect(path)
            serve(loop, 20)  # 0.2 s: level-triggered, it would be called every round
            assert len(calls) == 1
            assert server.next_deadline() is not None
        server.expire(loop.now() + ACCEPT_REST_S)
        serve(loop)  # polled again: the waiting client is taken now
        assert len(calls) == 2 and len(server.clients) == 1
    finally:
        SPARE_FD.hold()
        client.close()
        server.close()
        loop.close()


def test_forward_client_at_the_fd_limit_is_dropped_without_spinning(tmp_path: Path) -> None:
    """The listener here is a unix socket: the accept path is the same for TCP."""
    loop = EventLoop()
    posted: list[Event] = []
    streams = HostStreams(Config(), loop, posted.append)
    forwards = ForwardSockets(loop, streams, posted.append)
    fwd = local_forward("127.0.0.1:8080:80")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    listener.bind(str(tmp_path / "fwd.sock"))
    listener.listen(8)
    loop.add(listener.fileno(), lambda mask: forwards._accept(1, listener, fwd))
    calls = counted(loop, listener.fileno())
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        with at_fd_limit():
            for client in clients:
                client.connect(str(tmp_path / "fwd.sock"))
            serve(loop, 10)
            assert len(calls) == 1 and posted == []  # all three dropped in one wake-up
            for client in clients:
                client.settimeout(1)
                with contextlib.suppress(ConnectionResetError):
                    assert client.recv(10) == b""
    finally:
        for client in clients:
            client.close()
        loop.remove(listener.fileno())
        listener.close()
        loop.close()


def test_udp_flow_at_the_fd_limit_is_unreachable_for_the_guest_and_tried_anew() -> None:
    """The core's side of an EMFILE on a UDP flow: "host unreachable", flow forgotten."""
    guest = GuestHarness()
    guest.send(udp_to(REMOTE, 53))
    (opened,) = guest.of_type(OpenUdp)
    assert isinstance(opened, OpenUdp)
    (icmp,) = guest.feed(HostFailed(opened.flow, HostError(errno.EMFILE)))
    assert (icmp[ICMP].type, icmp[ICMP].code) == (3, 1)  # host unreachable
    assert len(guest.stack.udp) == 0 and guest.effects == [Close(opened.flow)]
    guest.send(udp_to(REMOTE, 53))  # the next datagram opens a flow anew
    assert len(guest.of_type(OpenUdp)) == 1


def test_spare_fd_is_one_for_the_process() -> None:
    loop = EventLoop()
    try:
        HostSockets(Config(), loop, lambda event: None)
        first = SPARE_FD.fd
        HostSockets(Config(), loop, lambda event: None)
        assert first is not None and SPARE_FD.fd == first
    finally:
        loop.close()
