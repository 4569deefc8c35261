"""The DHCP server answers a message with a non-zero ciaddr at ciaddr, whatever it is
(RFC 2131 4.1 has it unicast to ciaddr, which only a bound client in the network fills
in): a DHCPINFORM with ciaddr 231.231.231.2, a multicast group, gets an ACK sent to
that group at the guest's unicast MAC, which a strict receiver refuses (RFC 1112 6.4);
with 127.0.0.1 or 255.255.255.255 as ciaddr the same. Found by the stack target (an
INFORM from a templated frame).

    python -m fuzz.findings.dhcp_reply_to_any_ciaddr   # from the repository's top
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable

from slirpy.config import Config
from slirpy.effects import ToGuest
from slirpy.events import GuestFrame
from slirpy.stack import Stack
from slirpy.wire.checksum import checksum, pseudo_header_sum

# tests/strict.py, by name: see fuzz.stack_target.
check_to_guest: Callable[[ToGuest], None] = importlib.import_module("tests.strict").check_to_guest

FIXED = True  # reproduce() must pass: a regression test now

GUEST_MAC = bytes.fromhex("020000000064")
GUEST = bytes((10, 0, 2, 100))
BROADCAST = b"\xff" * 4
DHCP_INFORM = 8


def inform(ciaddr: bytes) -> bytes:
    """A DHCPINFORM from the guest, broadcast, with *ciaddr*."""
    dhcp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 0, 0x1234, 0, 0, ciaddr,
                       bytes(4), bytes(4), bytes(4), GUEST_MAC.ljust(16, b"\0"), b"", b"",
                       b"\x63\x82\x53\x63") + bytes((53, 1, DHCP_INFORM, 255))
    udp = bytearray(struct.pack("!HHHH", 68, 67, 8 + len(dhcp), 0) + dhcp)
    struct.pack_into("!H", udp, 6, checksum(udp, pseudo_header_sum(GUEST, BROADCAST, 17,
                                                                    len(udp))))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                               GUEST, BROADCAST))
    struct.pack_into("!H", ip, 10, checksum(ip))
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x00" + bytes(ip) + bytes(udp)


def reproduce() -> None:
    stack = Stack(Config(), secret=b"fuzz")
    for effect in stack.feed(GuestFrame(inform(bytes((231, 231, 231, 2)))), 1000.0):
        if isinstance(effect, ToGuest):
            check_to_guest(effect)  # StrictnessError: IPv4: multicast 231.231.231.2 sent to MAC


if __name__ == "__main__":
    reproduce()
    print("fixed: no finding")
