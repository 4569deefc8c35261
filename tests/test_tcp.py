"""The TCP state machine, driven by scapy segments and a simulated host socket."""

import errno

import pytest
from scapy.layers.inet import ICMP, IPerror, TCP, TCPerror  # type: ignore[import-untyped]
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6  # type: ignore[import-untyped]

from slirpy.events import ConnectFailed
from slirpy.config import Config
from slirpy.effects import Close, Connect, WatchWritable
from slirpy.tcp.conn import State
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
    t.syn()
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
