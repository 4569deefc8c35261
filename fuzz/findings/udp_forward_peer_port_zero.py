"""A local UDP forward's client whose source port is 0 (a raw socket can send one; the
host's kernel delivers it) is forwarded to the guest from port 0: a frame slirpy's own
UDP parser now refuses (udp-port-zero, since UDP from the guest with source port 0 is
dropped), and to which the guest could never answer. Found by the stack target once
that parser change was in (a udprpc forward; plain udp and udpspp do the same).

    python -m fuzz.findings.udp_forward_peer_port_zero   # from the repository's top
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable

from slirpy.config import Config
from slirpy.effects import ToGuest
from slirpy.events import ForwardDatagram, GuestFrame
from slirpy.forward.spec import Kind, parse_forward
from slirpy.stack import Stack

# tests/strict.py, by name: see fuzz.stack_target.
check_to_guest: Callable[[ToGuest], None] = importlib.import_module("tests.strict").check_to_guest

FIXED = True  # reproduce() must pass: a regression test now
# A gratuitous ARP from the guest, so that the stack knows its MAC and sends at once.
GUEST_ARP = bytes.fromhex("ffffffffffff020000000064080600010800060400010200000000640a000264"
                          "0000000000000a000264")


def reproduce() -> None:
    (fwd,) = parse_forward(Kind.LOCAL, "udp://127.0.0.1:5353:10.0.2.100:53",
                           guest=ipaddress.IPv4Address("10.0.2.100"),
                           gateway=ipaddress.IPv4Address("10.0.2.2"))
    stack = Stack(Config(), secret=b"fuzz")
    stack.control.add(1, fwd)
    stack.feed(GuestFrame(GUEST_ARP), 1000.0)
    peer = (ipaddress.IPv4Address("198.51.100.7").packed, 0)
    for effect in stack.feed(ForwardDatagram(1, peer, b"query"), 1000.0):
        if isinstance(effect, ToGuest):
            check_to_guest(effect)  # StrictnessError: slirpy's own parser rejects the frame


if __name__ == "__main__":
    reproduce()
    print("fixed: no finding")
