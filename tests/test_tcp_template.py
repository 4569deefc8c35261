"""Per-connection header templates (`slirpy.guest.TcpTemplate`, issue #12).

A segment from a connection's template must be byte for byte the segment the general
path (`slirpy.tcp.conn.build_segment`: build_tcp, then `GuestLink.ip`) builds from the
same fields, in both families, with and without checksum offload; and it must follow
the guest's MAC when the link learns another one.
"""

from __future__ import annotations

import random
from typing import Final

import pytest
from scapy.layers.inet6 import (  # type: ignore[import-untyped]
    ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6)
from scapy.layers.l2 import ARP, Ether  # type: ignore[import-untyped]

import tests.tcp_harness
from slirpy.effects import ToGuest
from slirpy.events import GuestFrame
from slirpy.flows.key import FlowKey
from slirpy.guest import GuestLink, TcpTemplate
from slirpy.tcp.conn import GSO_MAX_PAYLOAD, build_segment
from slirpy.wire.ethernet import BROADCAST, HEADER_LEN as ETH_LEN
from slirpy.wire.ipv4 import HEADER_LEN as IP_LEN
from slirpy.wire.tcp import ACK, FIN, HEADER_LEN as TCP_LEN, PSH, RST
from tests.harness import OUR_MAC, packed
from tests.strict import check_to_guest
from tests.tcp_harness import FAMILIES, KEY, KEY6, TcpHarness

OUR: Final = bytes.fromhex("52550a000202")
GUEST_MAC: Final = bytes.fromhex("020000000064")
OTHER_MAC: Final = bytes.fromhex("020000000099")
MTU: Final = 1500
MSS: Final = 1460  # what the tests' segments are cut to with offload (gso_size)

# (name, flags, payload): what a connection sends the guest without options.
SEGMENTS: Final = [
    ("data", ACK | PSH, bytes(range(256)) * 4),
    ("odd-length data", ACK | PSH, b"abc"),
    ("pure ACK", ACK, b""),
    ("FIN", FIN | ACK, b""),
    ("data with FIN", FIN | ACK | PSH, b"last words"),
    ("RST|ACK", RST | ACK, b""),
    ("RST", RST, b""),
    ("super-segment", ACK | PSH, b"s" * (MSS * 3 + 7)),  # more than an MTU: offload only
]


def key_for(family: int) -> FlowKey:
    return KEY6 if family == 6 else KEY


def twin_links(offload: bool) -> tuple[GuestLink, GuestLink]:
    """Two links in the same state, one for each path: each counts its own idents."""
    links = (GuestLink(OUR, MTU, offload=offload), GuestLink(OUR, MTU, offload=offload))
    for link in links:
        link.learn(KEY.guest_addr, GUEST_MAC)
        link.learn(KEY6.guest_addr, GUEST_MAC)
    return links


def template_for(link: GuestLink, key: FlowKey) -> TcpTemplate:
    return TcpTemplate(link, src=key.remote_addr, dst=key.guest_addr,
                       src_port=key.remote_port, dst_port=key.guest_port)


def both_paths(template: TcpTemplate, general: GuestLink, key: FlowKey, flags: int,
               seq: int, ack: int, window: int, payload: bytes) -> tuple[ToGuest, ToGuest]:
    """The same segment from the template and from the general path, decided as
    `TcpConn._segment` decides: a partial checksum with offload and a payload, and
    GSO for a payload over the MSS. Both are checked by the strict receiver."""
    partial = general.offload and bool(payload)
    gso_size = MSS if partial and len(payload) > MSS else 0
    fast = template.segment(seq, ack, flags, window, payload, partial, gso_size)
    slow = build_segment(general, key, flags, seq=seq, ack=ack, window=window,
                         payload=payload, partial=partial, gso_size=gso_size)
    check_to_guest(fast)
    check_to_guest(slow)
    return fast, slow


def assert_identical(fast: ToGuest, slow: ToGuest) -> None:
    assert bytes(fast.headers) == bytes(slow.headers)
    assert bytes(fast.payload) == bytes(slow.payload)
    assert (fast.csum_start, fast.csum_offset, fast.gso_size) == \
        (slow.csum_start, slow.csum_offset, slow.gso_size)


# Without offload a connection never sends more than its MSS: no super-segment then.
CASES: Final = [pytest.param(offload, flags, payload,
                             id=f"{'offload' if offload else 'checksummed'}-{name}")
                for offload in (False, True) for name, flags, payload in SEGMENTS
                if offload or len(payload) <= MSS]


@pytest.mark.parametrize("family", FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
@pytest.mark.parametrize(("offload", "flags", "payload"), CASES)
def test_template_segment_is_the_general_paths_byte_for_byte(
        family: int, offload: bool, flags: int, payload: bytes) -> None:
    key = key_for(family)
    link, general = twin_links(offload)
    template = template_for(link, key)
    window = 0 if flags & RST else 0xFFFF
    ack = 0x89ABCDEF if flags & ACK else 0
    # The first at a sequence number about to wrap, the second past it (a new ident).
    for seq in (0xFFFFFFF0, 0x0000000A):
        assert_identical(*both_paths(template, general, key, flags, seq, ack, window, payload))


@pytest.mark.parametrize("family", FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
@pytest.mark.parametrize("offload", [False, True], ids=["checksummed", "offload"])
def test_template_agrees_with_the_general_path_on_random_segments(family: int,
                                                                  offload: bool) -> None:
    """Every field's value range, every payload length and content up to an MSS: the
    partial sums must carry and fold as the general path's whole sums do."""
    rng = random.Random(12)
    key = key_for(family)
    link, general = twin_links(offload)
    template = template_for(link, key)
    for _ in range(300):
        flags = rng.choice([ACK, ACK | PSH, FIN | ACK, RST | ACK, RST, ACK | PSH | FIN])
        payload = rng.randbytes(rng.choice([0, 1, 2, rng.randrange(MSS + 1)]))
        if flags & RST:
            payload = b""
        seq, ack, window = rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16)
        assert_identical(*both_paths(template, general, key, flags, seq, ack, window, payload))


@pytest.mark.parametrize("family", FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
def test_sums_that_fold_to_zero_give_the_general_paths_fields(family: int) -> None:
    """A non-zero ones' complement sum that is a multiple of 0xFFFF is 0xFFFF, never 0
    (RFC 1071): here each sum is made one, by the window (TCP's), the identification
    (IPv4's header) or the payload's length (the pseudo-header's, with offload)."""
    key = key_for(family)
    link, general = twin_links(False)
    template = template_for(link, key)
    window = -(template.pseudo_sum + TCP_LEN + template.header_sum + ACK) % 0xFFFF
    if family == 4:
        ident = -(template.ip_sum + IP_LEN + TCP_LEN) % 0xFFFF
        for each in (link, general):
            while each.next_ident() != (ident - 1) & 0xFFFF:
                pass
    fast, slow = both_paths(template, general, key, ACK, 0, 0, window, b"")
    assert_identical(fast, slow)
    assert bytes(fast.headers[-4:-2]) == b"\0\0"  # the TCP checksum: ~0xFFFF
    if family == 4:
        assert bytes(fast.headers[ETH_LEN + 10:ETH_LEN + 12]) == b"\0\0"  # the header's

    link, general = twin_links(True)
    template = template_for(link, key)
    length = -(template.pseudo_sum + TCP_LEN) % 0xFFFF
    assert 0 < length <= GSO_MAX_PAYLOAD  # true of the tests' addresses
    fast, slow = both_paths(template, general, key, ACK, 0, 0, 0, b"p" * length)
    assert_identical(fast, slow)
    assert bytes(fast.headers[-4:-2]) == b"\xff\xff"  # partial: the folded sum itself


def test_each_segment_has_its_own_headers() -> None:
    """Several segments of one event are outstanding together: none shares a buffer."""
    link, _ = twin_links(False)
    template = template_for(link, KEY)
    first = template.segment(1000, 1, ACK | PSH, 512, b"one")
    before = bytes(first.headers)
    second = template.segment(1003, 1, ACK | PSH, 512, b"two")
    assert first.headers is not second.headers and bytes(first.headers) == before
    assert bytes(template.headers[:6]) == GUEST_MAC


@pytest.mark.parametrize("family", FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
def test_template_follows_the_guests_mac(family: int) -> None:
    key = key_for(family)
    link, general = GuestLink(OUR, MTU), GuestLink(OUR, MTU)
    template = template_for(link, key)  # nothing heard from the guest yet

    def segment() -> ToGuest:
        fast, slow = both_paths(template, general, key, ACK, 1, 2, 3, b"")
        assert_identical(fast, slow)
        return fast

    early = segment()
    assert bytes(early.headers[:6]) == BROADCAST  # as GuestLink.mac_for says
    for each in (link, general):
        each.learn(key.guest_addr, GUEST_MAC)
    assert bytes(segment().headers[:6]) == GUEST_MAC
    assert bytes(early.headers[:6]) == BROADCAST  # a frame already made keeps its own
    for each in (link, general):
        each.learn(packed("10.0.2.15"), OTHER_MAC)  # another guest address, another MAC
    assert bytes(segment().headers[:6]) == GUEST_MAC  # the guest's own is still known
    for each in (link, general):
        each.learn(key.guest_addr, OTHER_MAC)  # the guest's address moved
    assert bytes(segment().headers[:6]) == OTHER_MAC


def test_a_held_frame_from_a_template_gets_its_mac_on_release() -> None:
    """A frame made before the guest's MAC is known waits on the link and is addressed
    once it is (GuestLink.release), like the general path's."""
    link, _ = twin_links(False)
    unknown = packed("10.0.2.200")
    key = FlowKey(6, unknown, 40000, packed("192.0.2.1"), 80)
    template = template_for(link, key)
    frame = template.segment(1, 2, ACK, 3)
    asked = ToGuest(b"an ARP request")
    assert link.when_resolved(unknown, [frame], 0.0, lambda _: asked) == [asked]
    link.learn(unknown, OTHER_MAC)
    (released,) = link.release(unknown)
    assert bytes(released.headers[:6]) == OTHER_MAC
    check_to_guest(released)
    assert bytes(template.segment(2, 2, ACK, 3).headers[:6]) == OTHER_MAC


# --- through the stack: a connection's segments follow a guest whose MAC changes ------------

NEW_MAC: Final = "02:00:00:00:00:77"


def announce(t: TcpHarness, mac: str) -> None:
    """The guest says its address is at *mac* now, without a TCP segment: a gratuitous
    ARP, or an unsolicited neighbour advertisement (RFC 4861 7.2.6)."""
    if t.family == 4:
        frame = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=mac, psrc=t.guest_ip, hwdst="00:00:00:00:00:00", pdst=t.guest_ip)
    else:
        frame = (Ether(src=mac, dst="33:33:00:00:00:01")
                 / IPv6(src=t.guest_ip, dst="ff02::1", hlim=255)
                 / ICMPv6ND_NA(tgt=t.guest_ip, R=0, S=0, O=1)
                 / ICMPv6NDOptDstLLAddr(lladdr=mac))
    t.stack.feed(GuestFrame(bytes(frame)), t.now)


@pytest.mark.parametrize("family", FAMILIES, ids=[f"ipv{f}" for f in FAMILIES])
@pytest.mark.parametrize("how", ["segment", "announcement"])
def test_connection_follows_the_guests_new_mac(family: int, how: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    t = TcpHarness(family=family)
    t.handshake()
    assert t.host_writes(b"before")  # the harness: to the guest's MAC, strictly valid
    conn = t.stack.tcp.get(t.key)
    assert conn is not None and conn.template is not None  # made for the first data
    t.ack(t.ack_point + len(b"before"))
    # The harness addresses and expects the guest's MAC: from here on, the new one.
    monkeypatch.setattr(tests.tcp_harness, "GUEST_MAC", NEW_MAC)
    if how == "segment":
        t.send(b"from the new MAC")
    else:
        announce(t, NEW_MAC)
    frames = t.host_writes(b"after")
    assert frames and all(frame.dst == NEW_MAC for frame in frames)
    assert frames[-1].src == OUR_MAC
