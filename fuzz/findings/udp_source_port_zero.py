"""A UDP datagram from the guest with source port 0 (RFC 768: "not used") opens a flow
like any other, and the host's answers go back to the guest addressed to port 0: frames
a strict receiver refuses (no socket can have port 0) that slirpy sends all the same.
Found by the stack target over IPv6 (2001:db8::1 port 67 to fe80::64 port 0); the same
over IPv4 here.

    python -m fuzz.findings.udp_source_port_zero   # from the repository's top
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable

from slirpy.config import Config
from slirpy.effects import OpenUdp, ToGuest
from slirpy.events import GuestFrame, HostDatagram
from slirpy.stack import Stack
from slirpy.wire.checksum import checksum, pseudo_header_sum

# tests/strict.py, by name: see fuzz.stack_target.
check_to_guest: Callable[[ToGuest], None] = importlib.import_module("tests.strict").check_to_guest

FIXED = True  # reproduce() must pass: a regression test now

GUEST = bytes((10, 0, 2, 100))
REMOTE = bytes((192, 0, 2, 1))


def datagram_from_port_zero() -> bytes:
    payload = b"hello"
    udp = bytearray(struct.pack("!HHHH", 0, 7, 8 + len(payload), 0) + payload)
    struct.pack_into("!H", udp, 6, checksum(udp, pseudo_header_sum(GUEST, REMOTE, 17, len(udp))))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                               GUEST, REMOTE))
    struct.pack_into("!H", ip, 10, checksum(ip))
    eth = bytes.fromhex("52550a000202" "020000000064" "0800")
    return eth + bytes(ip) + bytes(udp)


def reproduce() -> None:
    stack = Stack(Config(), secret=b"fuzz")
    flows = [e.flow for e in stack.feed(GuestFrame(datagram_from_port_zero()), 1000.0)
             if isinstance(e, OpenUdp)]
    if not flows:
        return  # fixed: the datagram is dropped (udp-port-zero), no flow opens
    for effect in stack.feed(HostDatagram(flows[0], b"answer"), 1000.5):
        if isinstance(effect, ToGuest):
            check_to_guest(effect)  # StrictnessError: UDP: destination port 0


if __name__ == "__main__":
    reproduce()
    print("fixed: no finding")
