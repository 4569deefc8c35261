"""A tcppp client whose PROXY header names source port 0 gets the guest a SYN from port
0, which a strict guest drops (slirpy itself drops such segments from the guest, as
tcp-port-zero). The runtime takes the header's source as the client as it is.

    python -m fuzz.findings.tcppp_source_port_zero   # from the repository's top
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable

from slirpy.config import Config
from slirpy.effects import ToGuest
from slirpy.events import ForwardAccepted, GuestFrame
from slirpy.forward.spec import Kind, parse_forward
from slirpy.stack import Stack
from slirpy.wire.proxy import parse_proxy_header

# tests/strict.py, by name: see fuzz.stack_target.
check_to_guest: Callable[[ToGuest], None] = importlib.import_module("tests.strict").check_to_guest

FIXED = True  # reproduce() must pass: a regression test now

# A gratuitous ARP from the guest, so that the stack knows its MAC and sends at once.
GUEST_ARP = bytes.fromhex("ffffffffffff020000000064080600010800060400010200000000640a000264"
                          "0000000000000a000264")


def reproduce() -> None:
    # What slirpy.runtime.forwards does with a client's header: client = header.source.
    header = parse_proxy_header(b"PROXY TCP4 198.51.100.7 127.0.0.1 0 8081\r\n")
    assert header is not None and header.source is not None
    (fwd,) = parse_forward(Kind.LOCAL, "tcppp://127.0.0.1:8081:10.0.2.100:81",
                           guest=ipaddress.IPv4Address("10.0.2.100"),
                           gateway=ipaddress.IPv4Address("10.0.2.2"))
    stack = Stack(Config(), secret=b"fuzz")
    stack.control.add(1, fwd)
    stack.feed(GuestFrame(GUEST_ARP), 1000.0)
    for effect in stack.feed(ForwardAccepted(7, 1, header.source, 65536, 0), 1000.0):
        if isinstance(effect, ToGuest):
            check_to_guest(effect)  # StrictnessError: TCP: port 0 (0 -> 81)


if __name__ == "__main__":
    reproduce()
    print("fixed: no finding")
