"""Selective acknowledgement (RFC 2018) toward the guest: offered back when the guest's SYN
offers it, and reported as blocks of the data held beyond a hole.

Why it matters: with duplicate ACKs alone, a Linux guest that lost a frame of a bulk
upload takes a duplicate ACK after its retransmission timeout for reordering
(tcp_check_reno_reordering: every segment counts as lost then), raises its reordering
estimate to 300, stops retransmitting fast and backs off on every later loss.
integration/test_tcp.py's lossy upload stalled for minutes that way.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP  # type: ignore[import-untyped]

from slirpy.wire.tcp import MAX_SACK_BLOCKS, TcpHeader, sack_option, syn_options
from tests.tcp_harness import FAMILIES, TcpHarness


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def sack_handshake(family: int, *, offer: bool = True, wscale: int | None = 7) -> TcpHarness:
    t = TcpHarness(family=family)
    options: list[tuple[str, object]] = [("MSS", 1460)]
    if wscale is not None:
        options.append(("WScale", wscale))
    if offer:
        options.append(("SAckOK", b""))
    assert t.segment("S", options=options) == []
    t.guest_seq += 1
    (syn_ack,) = t.host_connected()
    t.our_isn = syn_ack[TCP].seq
    t.segment("A", ack=t.our_isn + 1)
    t.syn_ack = syn_ack  # type: ignore[attr-defined]
    return t


def options_of(frame: object) -> dict[str, object]:
    return dict(frame[TCP].options)  # type: ignore[index]


def test_syn_ack_offers_sack_only_to_a_guest_that_offered_it(family: int) -> None:
    offered = sack_handshake(family)
    assert "SAckOK" in options_of(offered.syn_ack)  # type: ignore[attr-defined]
    assert options_of(offered.syn_ack)["WScale"] == 7  # type: ignore[attr-defined]
    silent = sack_handshake(family, offer=False)
    assert "SAckOK" not in options_of(silent.syn_ack)  # type: ignore[attr-defined]
    unscaled = sack_handshake(family, wscale=None)
    assert set(options_of(unscaled.syn_ack)) - {"NOP"} == {"MSS", "SAckOK"}  # type: ignore[attr-defined]


def test_duplicate_acks_carry_the_held_ranges_latest_first(family: int) -> None:
    t = sack_handshake(family)
    (dup,) = t.segment("A", b"x" * 100, seq=1101, ack=t.ack_point)  # hole 1001..1101
    assert dup[TCP].ack == 1001 and options_of(dup)["SAck"] == (1101, 1201)
    (dup,) = t.segment("A", b"y" * 100, seq=1301, ack=t.ack_point)  # a second hole
    assert options_of(dup)["SAck"] == (1301, 1401, 1101, 1201)
    (dup,) = t.segment("A", b"z" * 100, seq=1201, ack=t.ack_point)  # joins both runs
    assert options_of(dup)["SAck"] == (1101, 1401)
    (ack,) = t.segment("A", b"w" * 100, seq=1001, ack=t.ack_point)  # the hole fills
    assert ack[TCP].ack == 1401 and "SAck" not in options_of(ack)
    assert bytes(t.host.received) == b"w" * 100 + b"x" * 100 + b"z" * 100 + b"y" * 100


def test_no_sack_blocks_when_the_guest_did_not_offer_it(family: int) -> None:
    t = sack_handshake(family, offer=False)
    (dup,) = t.segment("A", b"x" * 100, seq=1101, ack=t.ack_point)
    assert dup[TCP].ack == 1001 and "SAck" not in options_of(dup)


def test_at_most_four_blocks_and_the_latest_is_always_among_them(family: int) -> None:
    t = sack_handshake(family)
    for n in range(6):  # six runs beyond six holes
        (dup,) = t.segment("A", b"d" * 10, seq=1101 + 100 * n, ack=t.ack_point)
    blocks = options_of(dup)["SAck"]
    assert len(blocks) == 2 * MAX_SACK_BLOCKS  # type: ignore[arg-type]
    assert blocks[:2] == (1601, 1611)  # type: ignore[index]


def test_a_connection_we_open_offers_sack_and_follows_the_guests_answer() -> None:
    from slirpy.tcp.conn import TcpConn
    from slirpy.flows.key import FlowKey
    from slirpy.guest import GuestLink
    key = FlowKey(6, bytes([10, 0, 2, 100]), 80, bytes([192, 0, 2, 9]), 5555)
    link = GuestLink(b"\x52\x55\x0a\x00\x02\x02", 1500)
    conn, syn = TcpConn.active(key, link, iss=7, our_mss=1460, space=1 << 20, now=0.0)
    wire = bytes(syn.headers)
    assert bytes((1, 1, 4, 2)) in wire  # NOP NOP SACK-permitted on our SYN
    answer = TcpHeader(80, 5555, 100, 8, 0x12, 65535, 1460, 7, memoryview(b""), sack_ok=False)
    conn.on_segment(answer, 0.1)
    assert conn.sack is False


def test_option_builders_keep_the_header_aligned() -> None:
    assert len(syn_options(1460, 7, sack=True)) == 12
    assert len(syn_options(1460, None, sack=True)) == 8
    assert len(syn_options(1460, 7)) == 8
    for blocks in range(1, MAX_SACK_BLOCKS + 1):
        assert len(sack_option([(1, 2)] * blocks)) % 4 == 0
    assert len(sack_option([(1, 2)] * 9)) == 2 + 2 + 8 * MAX_SACK_BLOCKS


def test_held_data_left_behind_by_a_short_write_sends_no_empty_sack_option(family: int) -> None:
    t = sack_handshake(family)
    (dup,) = t.segment("A", b"later", seq=1010, ack=t.ack_point)  # held: 1010..1015
    assert options_of(dup)["SAck"] == (1010, 1015)
    t.host.accept = 16  # a retransmission covering it all, taken only in part: to 1017
    acks = t.segment("A", b"r" * 20, seq=1001, ack=t.ack_point)
    assert acks and all(a[TCP].ack == 1017 for a in acks)
    assert all("SAck" not in options_of(a) for a in acks)  # nothing beyond the ACK: none
    assert all(len(bytes(a[TCP])) == 20 for a in acks)  # and no option of length 2
