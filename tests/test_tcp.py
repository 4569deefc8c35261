"""The TCP state machine, driven by scapy segments and a simulated host socket."""

import errno

import pytest
from scapy.layers.inet import ICMP, IPerror, TCP, TCPerror  # type: ignore[import-untyped]
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6  # type: ignore[import-untyped]

from slirpy.events import ConnectFailed
from slirpy.config import Config
from slirpy.effects import Close, Connect, WatchWritable
from slirpy.tcp.conn import ACK_DELAY_S, State, TcpConn
from tests.harness import GUEST_MAC
from tests.tcp_harness import FAMILIES, REMOTE_PORT, TcpHarness

FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def flags_of(frame: object) -> str:
    value = int(frame[TCP].flags)  # type: ignore[index]
    return "".join(name for name, bit in FLAGS.items() if value & bit)


def packed_mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def state(t: TcpHarness) -> State | None:
    conn = t.stack.tcp.get(t.key)
    return None if conn is None else conn.state


@pytest.fixture(params=FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
def family(request: pytest.FixtureRequest) -> int:
    """Every test here runs for a guest on IPv4 and for one on IPv6."""
    return request.param  # type: ignore[no-any-return]


# --- handshake ---

def test_syn_starts_host_connect_and_waits_for_it(family: int) -> None:
    t = TcpHarness(family=family)
    assert t.syn() == []
    assert t.effects == [Connect(t.key, t.key.remote_addr, REMOTE_PORT)]
    assert state(t) is State.CONNECTING
    assert t.syn() == []  # a retransmitted SYN still waits


def test_connected_host_gives_syn_ack_with_mss_and_window_scale(family: int) -> None:
    t = TcpHarness(family=family, mss=1400)
    t.syn()
    (syn_ack,) = t.host_connected()
    assert flags_of(syn_ack) == "SA" and syn_ack[TCP].ack == 1001
    assert syn_ack[t.ip].src == t.remote and syn_ack[t.ip].dst == t.guest_ip
    assert syn_ack[TCP].sport == REMOTE_PORT
    options = dict(syn_ack[TCP].options)
    # Our MSS is the MTU less the IP and TCP headers: 1500 - 20 - 20, 1500 - 40 - 20.
    assert options["MSS"] == {4: 1460, 6: 1440}[family] and options["WScale"] == 7
    t.segment("A", ack=syn_ack[TCP].seq + 1)
    assert state(t) is State.ESTABLISHED


def test_guest_mac_is_learnt_from_its_first_segment(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    assert t.stack.link.neighbours[t.key.guest_addr] == packed_mac(GUEST_MAC)


def test_segments_to_guest_fit_the_link_mtu_whatever_mss_the_guest_offers(family: int) -> None:
    t = TcpHarness(family=family, mss=9000)
    t.handshake()
    segments = t.host_writes(b"m" * 10000)
    assert {len(s[TCP].payload) for s in segments[:-1]} == {{4: 1460, 6: 1440}[family]}
    assert all(len(s[t.ip]) <= Config().mtu for s in segments)


def test_syn_without_window_scale_gets_none_back(family: int) -> None:
    t = TcpHarness(family=family, wscale=None)
    t.syn()
    (syn_ack,) = t.host_connected()
    assert "WScale" not in dict(syn_ack[TCP].options)


def test_refused_connect_resets_the_guest(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (rst,) = t.feed(ConnectFailed(t.key, errno.ECONNREFUSED))
    assert flags_of(rst) == "RA" and rst[TCP].ack == 1001
    assert state(t) is None and Close(t.key) in t.effects


# ICMP "destination unreachable" (type 3) codes net 0, host 1, administratively
# prohibited 13; ICMPv6's (type 1, RFC 4443 3.1) no route 0, address 3, prohibited 1.
@pytest.mark.parametrize("error, code4, code6", [(errno.ENETUNREACH, 0, 0),
                                                 (errno.EHOSTUNREACH, 1, 3),
                                                 (errno.EACCES, 13, 1)],
                         ids=["net", "host", "prohibited"])
def test_unreachable_connect_gives_icmp_quoting_the_syn(family: int, error: int, code4: int,
                                                        code6: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (icmp,) = t.feed(ConnectFailed(t.key, error))
    assert icmp[t.ip].src == t.remote and icmp[t.ip].dst == t.guest_ip
    if family == 4:
        assert (icmp[ICMP].type, icmp[ICMP].code) == (3, code4)
        quoted = icmp[IPerror]
    else:
        assert (icmp[ICMPv6DestUnreach].type, icmp[ICMPv6DestUnreach].code) == (1, code6)
        quoted = icmp[IPerror6]
    assert (quoted.src, quoted.dst) == (t.guest_ip, t.remote)
    assert icmp[TCPerror].seq == 1000  # the guest's kernel checks it against its ISN
    assert state(t) is None and Close(t.key) in t.effects


def test_connect_timeout_resets_the_guest(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (rst,) = t.advance(31)
    assert flags_of(rst) == "RA" and state(t) is None


def test_lost_syn_ack_is_sent_again(family: int) -> None:
    t = TcpHarness(family=family)
    t.syn()
    (first,) = t.host_connected()
    (again,) = t.advance(1.01)
    assert flags_of(again) == "SA" and again[TCP].seq == first[TCP].seq


def test_segment_for_unknown_connection_gets_reset(family: int) -> None:
    t = TcpHarness(family=family)
    (rst,) = t.segment("A", ack=5555)
    assert flags_of(rst) == "R" and rst[TCP].seq == 5555


def test_connection_limit_resets_new_syns(family: int) -> None:
    t = TcpHarness(Config(tcp_conn_limit=1), family=family)
    t.handshake()  # established: a pending one would have the SYN dropped (test_floods)
    t.guest_seq = 5000
    (rst,) = t.segment("S", sport=40001)
    assert flags_of(rst) == "RA"
    assert t.stack.tcp.refused == 1


# --- data ---

def test_guest_data_goes_to_host_and_is_acked_as_far_as_taken(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (ack,) = t.send(b"hello")
    assert bytes(t.host.received) == b"hello" and ack[TCP].ack == 1006


def test_short_write_acks_only_what_kernel_took_then_asks_for_the_rest(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.host.accept = 3
    (ack,) = t.send(b"hello")
    assert ack[TCP].ack == 1004 and bytes(t.host.received) == b"hel"
    assert any(isinstance(e, WatchWritable) for e in t.effects)
    t.host.accept = 1 << 30
    acks = t.host_writable()
    assert len(acks) == 4 and all(a[TCP].ack == 1004 for a in acks)  # update + dup ACKs
    t.guest_seq = 1004
    (ack,) = t.send(b"lo")  # the guest's retransmission
    assert bytes(t.host.received) == b"hello" and ack[TCP].ack == 1006


def test_out_of_order_segment_is_held_and_sent_once_the_hole_fills(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (dup,) = t.segment("PA", b"later", seq=1010, ack=t.ack_point)
    assert dup[TCP].ack == 1001 and t.host.received == b""
    (ack,) = t.segment("PA", b"123456789", seq=1001, ack=t.ack_point)  # fills 1001..1010
    assert bytes(t.host.received) == b"123456789later" and ack[TCP].ack == 1015
    assert t.stack.tcp.reorder_budget.used_bytes == 0


def test_overlapping_held_segments_are_trimmed(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.segment("PA", b"cdef", seq=1003, ack=t.ack_point)
    t.segment("PA", b"efgh", seq=1005, ack=t.ack_point)
    t.segment("PA", b"ab", seq=1001, ack=t.ack_point)
    assert bytes(t.host.received) == b"abcdefgh"


def test_reorder_store_is_bounded_per_connection(family: int) -> None:
    from slirpy.tcp.conn import REORDER_MAX_BYTES
    t = TcpHarness(family=family)
    t.handshake()
    chunk = b"z" * 60000
    for n in range(20):  # 1.2 MB beyond a hole
        t.segment("A", chunk, seq=2001 + n * 60000, ack=t.ack_point)
    conn = t.stack.tcp.get(t.key)
    assert conn is not None and conn.held_bytes <= REORDER_MAX_BYTES
    t.segment("R", seq=t.guest_seq)
    assert t.stack.tcp.reorder_budget.used_bytes == 0  # given back on close


def test_retransmitted_old_data_is_trimmed_not_sent_twice(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.send(b"abc")
    t.guest_seq = 1001
    (ack,) = t.send(b"abcdef")  # overlaps what was taken
    assert bytes(t.host.received) == b"abcdef" and ack[TCP].ack == 1007


def test_host_data_is_segmented_by_guest_mss_and_consumed_on_ack(family: int) -> None:
    t = TcpHarness(family=family, mss=1000)
    t.handshake()
    segments = t.host_writes(b"x" * 2500)
    assert [len(s[TCP].payload) for s in segments] == [1000, 1000, 500]
    assert flags_of(segments[-1]) == "PA"
    t.ack(t.our_isn + 1 + 2000)
    assert len(t.host.queued) == 500  # acked bytes left the socket
    t.ack(t.our_isn + 1 + 2500)
    assert len(t.host.queued) == 0


def test_host_data_stops_at_guest_window_and_resumes_when_it_opens(family: int) -> None:
    t = TcpHarness(family=family, wscale=None, window=3000)
    t.handshake()
    segments = t.host_writes(b"y" * 10000)
    assert sum(len(s[TCP].payload) for s in segments) == 3000
    more = t.ack(t.our_isn + 1 + 3000, window=3000)
    assert sum(len(s[TCP].payload) for s in more) == 3000
    assert more[0][TCP].seq == t.our_isn + 1 + 3000


def test_timeout_retransmits_from_first_unacked_byte(family: int) -> None:
    t = TcpHarness(family=family, mss=1000)
    t.handshake()
    t.host_writes(b"a" * 1000 + b"b" * 1000)
    t.ack(t.our_isn + 1 + 1000)
    again = t.advance(1.5)
    assert again and again[0][TCP].seq == t.our_isn + 1 + 1000
    assert bytes(again[0][TCP].payload) == b"b" * 1000


def test_three_duplicate_acks_retransmit_at_once(family: int) -> None:
    t = TcpHarness(family=family, mss=1000)
    t.handshake()
    t.host_writes(b"a" * 4000)
    first_unacked = t.our_isn + 1 + 1000
    t.ack(first_unacked)
    assert t.ack(first_unacked) == [] and t.ack(first_unacked) == []
    again = t.ack(first_unacked)
    assert again[0][TCP].seq == first_unacked
    assert t.stack.tcp.get(t.key).rtt_probe is None  # type: ignore[union-attr]  # Karn


def test_ack_past_a_rewind_is_taken_not_refused(family: int) -> None:
    t = TcpHarness(family=family, mss=1000)
    t.handshake()
    t.host_writes(b"a" * 3000)
    t.advance(1.5)  # rewind: snd_nxt back to snd_una, everything sent again
    t.ack(t.our_isn + 1 + 3000)  # the originals arrived after all
    assert len(t.host.queued) == 0 and t.host.peek_offset == 0


def test_rtt_sample_sets_rto_near_measured_round_trip(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.host_writes(b"z" * 100)
    t.now += 0.05
    t.ack(t.our_isn + 101)
    conn = t.stack.tcp.get(t.key)
    assert conn is not None and conn.rto.srtt_s == pytest.approx(0.05)
    assert conn.rto.rto_s == pytest.approx(0.2)  # 0.05 + 4 * 0.025 = 0.15 < Linux's floor


def test_zero_window_is_probed_until_it_opens(family: int) -> None:
    t = TcpHarness(family=family, wscale=None)
    t.handshake()
    t.ack(t.our_isn + 1, window=0)
    assert t.host_writes(b"q" * 100) == []
    (probe,) = t.advance(1.1)
    assert probe[TCP].seq == t.our_isn and not probe[TCP].payload  # snd_una - 1
    segments = t.ack(t.our_isn + 1, window=1000)
    assert bytes(segments[0][TCP].payload) == b"q" * 100


def test_window_advertised_follows_host_send_space(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.host.space = 128 * 10
    (ack,) = t.send(b"x")
    assert ack[TCP].window == 10  # scaled by our shift of 7
    assert any(isinstance(e, WatchWritable) for e in t.effects)


# --- FIN and RST in every state ---

def test_guest_fin_shuts_host_write_side_and_host_data_still_flows(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (ack,) = t.send(b"request", flags="FPA")
    assert ack[TCP].ack == 1001 + 7 + 1 and t.host.shut_write
    assert state(t) is State.CLOSE_WAIT
    (reply,) = t.host_writes(b"response")
    assert bytes(reply[TCP].payload) == b"response"
    (fin,) = t.host_closes()
    assert flags_of(fin) == "FA" and state(t) is State.LAST_ACK
    t.ack(fin[TCP].seq + 1)
    assert state(t) is None and t.host.closed and not t.host.reset


def test_host_eof_sends_fin_after_all_data_and_guest_can_still_send(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    segments = t.host_writes(b"data")
    (fin,) = t.host_closes()
    assert fin[TCP].seq == segments[0][TCP].seq + 4 and state(t) is State.FIN_WAIT_1
    t.ack(fin[TCP].seq + 1)
    assert state(t) is State.FIN_WAIT_2
    t.send(b"more")
    assert bytes(t.host.received) == b"more"
    t.guest_seq += 4
    t.send(b"", flags="FA")
    assert state(t) is None and t.host.closed


def test_simultaneous_close_goes_through_closing(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (fin,) = t.host_closes()
    t.send(b"", flags="FA")
    assert state(t) is State.CLOSING and t.host.shut_write
    t.ack(fin[TCP].seq + 1)
    assert state(t) is None


def test_lost_fin_is_sent_again(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (fin,) = t.host_closes()
    (again,) = t.advance(1.5)
    assert flags_of(again) == "FA" and again[TCP].seq == fin[TCP].seq


def test_retransmitted_guest_fin_is_acked_again(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.send(b"", flags="FA")
    t.guest_seq = 1001
    (ack,) = t.send(b"", flags="FA")
    assert ack[TCP].ack == 1002 and state(t) is State.CLOSE_WAIT


@pytest.mark.parametrize("setup", ["connecting", "syn_received", "established", "close_wait",
                                   "fin_wait_1", "fin_wait_2"])
def test_guest_rst_closes_host_socket_with_reset_in_every_state(family: int, setup: str) -> None:
    t = TcpHarness(family=family)
    t.syn()
    if setup != "connecting":
        (syn_ack,) = t.host_connected()
        t.our_isn = syn_ack[TCP].seq
    if setup not in ("connecting", "syn_received"):
        t.segment("A", ack=t.our_isn + 1)
    if setup == "close_wait":
        t.send(b"", flags="FA")
        t.guest_seq += 1
    if setup in ("fin_wait_1", "fin_wait_2"):
        (fin,) = t.host_closes()
        if setup == "fin_wait_2":
            t.ack(fin[TCP].seq + 1)
    assert state(t) is State[setup.upper()]
    assert t.segment("R", seq=t.guest_seq) == []
    assert state(t) is None and t.host.closed and t.host.reset


def test_rst_out_of_window_gets_challenge_ack(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (challenge,) = t.segment("R", seq=t.guest_seq + 5000)
    assert flags_of(challenge) == "A" and state(t) is State.ESTABLISHED


def test_host_reset_resets_the_guest(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (rst,) = t.host_resets()
    assert "R" in flags_of(rst) and state(t) is None


def test_guest_that_never_acks_is_reset_after_retries(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.host_writes(b"x" * 10)
    frames = []
    for _ in range(40):
        frames += t.advance(60)
    assert state(t) is None and t.host.reset
    assert "R" in flags_of(frames[-1])


def test_guest_zero_window_probe_gets_our_ack_and_window(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    (ack,) = t.segment("A", seq=t.guest_seq - 1, ack=t.ack_point)  # Linux's probe
    assert ack[TCP].ack == t.guest_seq and ack[TCP].window > 0


def test_window_update_waits_again_while_space_is_under_a_segment(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    t.host.space = 100
    t.send(b"x")
    t.host.space = 200  # writable, but still no room for a full segment
    (update,) = t.host_writable()
    assert any(isinstance(e, WatchWritable) for e in t.effects)
    t.host.space = 1 << 20
    (update,) = t.host_writable()
    assert update[TCP].window > 0 and not any(isinstance(e, WatchWritable) for e in t.effects)


# --- delayed ACK: our ACK rides on the reply ---

def conn_of(t: TcpHarness) -> TcpConn:
    conn = t.stack.tcp.get(t.key)
    assert conn is not None
    return conn


def request_response(t: TcpHarness) -> None:
    """Handshake and one exchange: a request (a new connection ACKs it at once, as
    Linux's quick-ack mode does), a reply within the delay, the guest's ACK of it. The
    connection has shown request/response: a short request's ACK may now wait."""
    t.handshake()
    (ack,) = t.send(b"GET")
    assert flags_of(ack) == "A" and ack[TCP].ack == t.guest_seq + 3
    t.guest_seq += 3
    (reply,) = t.host_writes(b"200")
    assert reply[TCP].ack == t.guest_seq
    t.ack(reply[TCP].seq + 3)
    assert conn_of(t).pingpong and conn_of(t).ack_deadline is None


def test_established_first_requests_without_replies_are_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    for _ in range(3):  # no reply yet: an upload, not request/response
        (ack,) = t.send(b"abc")
        t.guest_seq += 3
        assert flags_of(ack) == "A" and ack[TCP].ack == t.guest_seq
    assert conn_of(t).ack_deadline is None


def test_established_psh_request_gets_no_immediate_ack(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"GET /next") == []
    assert bytes(t.host.received).endswith(b"GET /next")  # taken, only the ACK waits
    assert conn_of(t).ack_deadline == pytest.approx(t.now + ACK_DELAY_S)


def test_established_reply_within_delay_carries_the_ack_and_no_pure_ack_follows(
        family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"GET /next") == []
    t.guest_seq += 9
    assert t.advance(ACK_DELAY_S / 2) == []
    (reply,) = t.host_writes(b"200 OK")
    assert flags_of(reply) == "PA" and reply[TCP].ack == t.guest_seq
    assert conn_of(t).ack_deadline is None
    assert t.advance(ACK_DELAY_S) == []  # past the delay: no pure ACK
    t.ack(reply[TCP].seq + 6)
    assert t.advance(10) == []  # nor ever after


def test_established_unanswered_request_is_acked_after_the_delay(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"GET /next") == []
    assert t.advance(ACK_DELAY_S - 0.001) == []
    (ack,) = t.advance(0.002)
    assert flags_of(ack) == "A" and not ack[TCP].payload
    assert ack[TCP].ack == t.guest_seq + 9
    assert conn_of(t).ack_deadline is None and conn_of(t).deadline is None


def test_established_guest_waiting_for_a_delayed_ack_ends_delays(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"GET /") == []  # a first write; Nagle's algorithm holds the second
    t.guest_seq += 5
    (late,) = t.advance(ACK_DELAY_S)
    assert late[TCP].ack == t.guest_seq
    (ack,) = t.send(b"next")  # the held write, sent on our ACK: the guest waited for it
    t.guest_seq += 4
    assert ack[TCP].ack == t.guest_seq and conn_of(t).never_delay
    for _ in range(2):  # replies in time no longer make requests wait for their ACK
        (reply,) = t.host_writes(b"200")
        t.ack(reply[TCP].seq + 3)
        (ack,) = t.send(b"GET /")
        t.guest_seq += 5
        assert ack[TCP].ack == t.guest_seq


def test_established_slow_reply_leaves_delays_until_a_quick_one(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"GET /slow") == []
    t.guest_seq += 9
    (late,) = t.advance(ACK_DELAY_S)
    assert late[TCP].ack == t.guest_seq
    t.advance(0.05)
    (reply,) = t.host_writes(b"200")  # the host was slow: the guest waited for nothing
    t.ack(reply[TCP].seq + 3)
    (ack,) = t.send(b"GET /")  # no reply in time last: ACKed at once (Linux's pingpong)
    t.guest_seq += 5
    assert ack[TCP].ack == t.guest_seq
    (reply,) = t.host_writes(b"200")  # a reply in time: request/response again
    t.ack(reply[TCP].seq + 3)
    assert t.send(b"GET /") == [] and not conn_of(t).never_delay


def test_established_full_sized_segments_are_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    full = conn_of(t).send_mss  # the smaller of both MSSs: the guest's largest segment
    for _ in range(2):
        (ack,) = t.send(b"f" * full)
        t.guest_seq += full
        assert flags_of(ack) == "A" and ack[TCP].ack == t.guest_seq
    assert conn_of(t).ack_deadline is None


def test_established_second_small_segment_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"one") == []
    t.guest_seq += 3
    (ack,) = t.send(b"two")  # RFC 1122 4.2.3.2: at least every second segment
    assert ack[TCP].ack == t.guest_seq + 3
    assert conn_of(t).ack_deadline is None
    assert t.advance(ACK_DELAY_S) == []


def test_established_bulk_without_psh_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    (ack,) = t.send(b"b" * 100, flags="A")
    assert flags_of(ack) == "A" and ack[TCP].ack == t.guest_seq + 100


def test_established_partly_retransmitted_segment_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    # "GET" again, with more: the guest saw no ACK for it
    (ack,) = t.segment("PA", b"GETxyz", seq=t.guest_seq - 3, ack=t.ack_point)
    assert ack[TCP].ack == t.guest_seq + 3 and bytes(t.host.received) == b"GETxyz"


def test_established_out_of_order_data_gets_an_immediate_duplicate_ack(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"abc") == []  # an ACK waits for 1..3
    t.guest_seq += 3
    (dup,) = t.segment("PA", b"later", seq=t.guest_seq + 10, ack=t.ack_point)
    assert dup[TCP].ack == t.guest_seq  # it carries the waiting ACK too
    assert t.advance(ACK_DELAY_S) == []
    (ack,) = t.send(b"0123456789")  # the hole filled: ACKed at once (RFC 5681 4.2)
    assert ack[TCP].ack == t.guest_seq + 15
    assert bytes(t.host.received).endswith(b"abc0123456789later")


def test_established_short_write_still_gets_window_update_and_duplicate_acks(
        family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    t.host.accept = 3
    (ack,) = t.send(b"hello")  # taken in part: ACKed at once, as far as taken
    assert ack[TCP].ack == t.guest_seq + 3
    assert any(isinstance(e, WatchWritable) for e in t.effects)
    t.host.accept = 1 << 30
    acks = t.host_writable()
    assert len(acks) == 4 and all(a[TCP].ack == t.guest_seq + 3 for a in acks)


def test_established_guest_fin_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"abc") == []
    t.guest_seq += 3
    (ack,) = t.send(b"", flags="FA")
    assert ack[TCP].ack == t.guest_seq + 1 and state(t) is State.CLOSE_WAIT
    assert t.advance(ACK_DELAY_S) == []


def test_established_host_fin_within_delay_carries_the_ack(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"abc") == []
    (fin,) = t.host_closes()
    assert flags_of(fin) == "FA" and fin[TCP].ack == t.guest_seq + 3
    assert t.advance(ACK_DELAY_S) == []


def test_established_window_opening_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    t.host.space = 2000
    assert t.send(b"abc") == []
    t.guest_seq += 3
    (reply,) = t.host_writes(b"reply")  # carries the ACK and the small window
    t.ack(reply[TCP].seq + 5)
    t.host.space = 1 << 20  # the host's peer read: our window opens
    (update,) = t.send(b"def")
    assert update[TCP].ack == t.guest_seq + 3
    assert update[TCP].window > reply[TCP].window


def test_fin_wait_2_short_psh_data_is_acked_at_once(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    (fin,) = t.host_closes()
    t.ack(fin[TCP].seq + 1)
    assert state(t) is State.FIN_WAIT_2
    (ack,) = t.send(b"abc")
    assert ack[TCP].ack == t.guest_seq + 3


def test_established_delayed_ack_then_rto_both_fire(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)  # its round trip took no time: the RTO is Linux's floor, 0.2 s
    (reply,) = t.host_writes(b"reply")  # the guest never ACKs it
    assert t.send(b"abc") == []
    assert conn_of(t).deadline == pytest.approx(t.now + ACK_DELAY_S)  # the earlier
    assert conn_of(t).rto_deadline == pytest.approx(t.now + 0.2)
    (ack,) = t.advance(ACK_DELAY_S)
    assert flags_of(ack) == "A" and not ack[TCP].payload and ack[TCP].ack == t.guest_seq + 3
    assert conn_of(t).deadline == pytest.approx(t.now - ACK_DELAY_S + 0.2)  # the RTO's
    assert t.advance(0.2 - ACK_DELAY_S - 0.001) == []
    (again,) = t.advance(0.002)
    assert again[TCP].seq == reply[TCP].seq and bytes(again[TCP].payload) == b"reply"


def test_established_guest_acks_with_an_ack_pending_keep_both_timers(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    (_, second) = t.host_writes(b"r" * 2000)  # two segments in flight: the RTO runs
    assert t.send(b"abc") == []
    t.guest_seq += 3
    conn = conn_of(t)
    ack_due = t.now + ACK_DELAY_S
    assert conn.ack_deadline == pytest.approx(ack_due) and conn.rto_deadline is not None
    assert conn.deadline == pytest.approx(ack_due)  # the earlier of the two
    t.now += 0.01
    assert t.ack(second[TCP].seq) == []  # part acked: the RTO is armed again
    assert conn.rto_deadline == pytest.approx(t.now + conn.rto.rto_s)
    assert conn.deadline == pytest.approx(ack_due)
    assert t.ack(second[TCP].seq + len(second[TCP].payload)) == []  # all acked: RTO off
    assert conn.rto_deadline is None and conn.deadline == pytest.approx(ack_due)
    (ack,) = t.advance(ACK_DELAY_S)
    assert flags_of(ack) == "A" and ack[TCP].ack == t.guest_seq
    assert conn.deadline is None


def test_established_rto_before_the_delayed_ack_carries_it(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    (reply,) = t.host_writes(b"reply")  # the guest never ACKs it: the RTO is due in 0.2 s
    t.advance(0.2 - ACK_DELAY_S / 2)
    assert t.send(b"abc") == []  # its ACK is due half a delay after the RTO
    (again,) = t.advance(ACK_DELAY_S / 2 + 0.001)
    assert again[TCP].seq == reply[TCP].seq and again[TCP].ack == t.guest_seq + 3
    assert conn_of(t).ack_deadline is None and conn_of(t).rto_deadline is not None
    assert t.advance(ACK_DELAY_S) == []  # the retransmission carried the ACK


def test_established_timers_due_together_send_the_probe_alone(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    t.ack(t.ack_point, window=0)  # the guest's window closes: the persist timer runs
    assert t.segment("PA", b"abc", ack=t.ack_point, window=0) == []  # an ACK waits too
    conn = conn_of(t)
    assert conn.rto_deadline is not None and conn.ack_deadline is not None
    (probe,) = t.advance(0.3)  # a late wake-up: both are due
    assert probe[TCP].seq == t.ack_point - 1 and not probe[TCP].payload
    assert probe[TCP].ack == t.guest_seq + 3  # the probe carries the waiting ACK
    assert conn.ack_deadline is None and not conn.pingpong
    assert conn.rto_deadline is not None and conn.deadline == conn.rto_deadline  # probing on


def test_established_zero_window_with_an_ack_pending_is_still_probed(family: int) -> None:
    t = TcpHarness(family=family)
    request_response(t)
    assert t.send(b"abc") == []
    t.guest_seq += 3
    assert t.ack(t.ack_point, window=0) == []  # the window closes while an ACK waits
    assert conn_of(t).rto_deadline is not None  # the persist timer runs beside it
    (ack,) = t.advance(ACK_DELAY_S)
    assert ack[TCP].ack == t.guest_seq and ack[TCP].seq == t.ack_point
    (probe,) = t.advance(0.2)
    assert probe[TCP].seq == t.ack_point - 1
