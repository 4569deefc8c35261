"""The stack with a virtio-net tap: trusted checksums in, super-segments out."""

from scapy.layers.inet import IP, TCP, UDP  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.events import GuestFrame
from slirpy.config import Config
from slirpy.effects import Send, SendDatagram, ToGuest
from slirpy.stack import Stack
from slirpy.wire.checksum import pseudo_header_sum
from tests.harness import GUEST_IP, GUEST_MAC, OUR_MAC
from tests.tcp_harness import KEY, TcpHarness


def test_partial_checksum_is_accepted_only_when_the_tap_vouches_for_it() -> None:
    frame = bytes(Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst="192.0.2.1")
                  / UDP(sport=1, dport=7, chksum=0x1234) / b"data")
    stack = Stack(Config(), offload=True)
    assert stack.feed(GuestFrame(frame), 0.0) == [] and stack.stats.drop_counts() == {"udp-checksum": 1}
    effects = stack.feed(GuestFrame(frame, checksum_ok=True), 0.0)
    assert any(isinstance(e, SendDatagram) for e in effects)


def offload_harness() -> TcpHarness:
    t = TcpHarness(mss=1460)
    t.stack.link.offload = True
    t.handshake()
    return t


def test_host_data_leaves_as_one_super_segment_with_partial_checksum() -> None:
    t = offload_harness()
    t.host_writes(b"s" * 60000)
    (frame,) = [e for e in t.effects if isinstance(e, ToGuest)]
    assert frame.gso_size == 1460 and frame.csum_start == 34 and frame.csum_offset == 16
    assert len(frame.payload) == 60000
    # The checksum field holds the pseudo-header sum only; the guest's kernel finishes it.
    tcp = bytes(frame.headers[34:])
    length = len(tcp) + len(frame.payload)
    pseudo = pseudo_header_sum(KEY.remote_addr, KEY.guest_addr, 6, length)
    assert int.from_bytes(tcp[16:18], "big") == pseudo


def test_super_segments_are_whole_multiples_of_the_mss() -> None:
    t = offload_harness()
    t.host_writes(b"m" * 200000)
    sizes = [len(e.payload) for e in t.effects if isinstance(e, ToGuest)]
    assert sum(sizes) == 200000 and all(s % 1460 == 0 for s in sizes[:-1])
    assert max(sizes) <= 65535 - 40


def test_small_segment_has_partial_checksum_but_no_gso() -> None:
    t = offload_harness()
    t.host_writes(b"tiny")
    (frame,) = [e for e in t.effects if isinstance(e, ToGuest)]
    assert frame.gso_size == 0 and frame.csum_offset == 16


def test_guest_super_segment_goes_to_host_in_one_send() -> None:
    t = offload_harness()
    seg = (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=GUEST_IP, dst="192.0.2.1")
           / TCP(sport=40000, dport=80, flags="A", seq=1001, ack=t.our_isn + 1, chksum=0)
           / (b"u" * 60000))
    effects = t.stack.feed(GuestFrame(bytes(seg), checksum_ok=True), t.now)
    (send,) = [e for e in effects if isinstance(e, Send)]
    assert len(send.data) == 60000
