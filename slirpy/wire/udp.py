"""UDP headers (RFC 768)."""

from __future__ import annotations

# mypyc builds a dataclass's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

import struct
from dataclasses import dataclass
from typing import Final

from slirpy.wire import Malformed
from slirpy.wire.checksum import finish, ones_sum, pseudo_header_sum
from slirpy.wire.ipv4 import IpProto
from slirpy.wire.ipv6 import ADDRESS_LEN as IPV6_ADDRESS_LEN

_PROTO: Final = int(IpProto.UDP)  # a plain int: an enum member's lookup costs per datagram
_HEADER: Final = struct.Struct("!HHHH")
HEADER_LEN: Final = _HEADER.size  # 8
CHECKSUM_OFFSET: Final = 6  # of the checksum field in the header
_NO_CHECKSUM: Final = 0  # over IPv4 (RFC 768); a computed sum of 0 is sent as 0xFFFF


# Classes made per packet write their own __init__ (init=False): mypyc compiles it, but
# leaves a dataclass's generated __init__ interpreted (measured: 40 against 300 ns an
# object, and 480 ns for a NamedTuple).
@dataclass(slots=True, init=False)
class UdpHeader:
    src_port: int
    dst_port: int
    payload: memoryview

    def __init__(self, src_port: int, dst_port: int, payload: memoryview) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.payload = payload

    @classmethod
    def parse(cls, datagram: memoryview, src: bytes, dst: bytes, *,
              verify_checksum: bool = True) -> UdpHeader:
        """Validate against the IP addresses the datagram came with (for the checksum)."""
        if len(datagram) < HEADER_LEN:
            raise Malformed("udp-short")
        src_port, dst_port, length, check = _HEADER.unpack_from(datagram)
        if not HEADER_LEN <= length <= len(datagram):
            raise Malformed("udp-bad-length")
        datagram = datagram[:length]
        # A zero checksum means "none" over IPv4 (RFC 768); IPv6 forbids it (RFC 8200 8.1).
        if verify_checksum and len(src) == IPV6_ADDRESS_LEN and check == _NO_CHECKSUM:
            raise Malformed("udp-checksum")  # a sum of 0 is sent as 0xFFFF: 0 is "none"
        if verify_checksum and check and finish(
                ones_sum(datagram, pseudo_header_sum(src, dst, _PROTO, length))):
            raise Malformed("udp-checksum")
        if dst_port == 0 or src_port == 0:
            # A source port of 0 means "no reply expected" (RFC 768); a flow would send the
            # host's replies to port 0, which no socket has.
            raise Malformed("udp-port-zero")
        return UdpHeader(src_port, dst_port, datagram[HEADER_LEN:])


def build_udp(buf: bytearray, offset: int, *, src: bytes, dst: bytes, src_port: int,
              dst_port: int, payload: bytes | bytearray | memoryview) -> int:
    """Write a UDP header whose checksum covers *payload* (which is not copied)."""
    length = HEADER_LEN + len(payload)
    _HEADER.pack_into(buf, offset, src_port, dst_port, length, _NO_CHECKSUM)
    total = ones_sum(memoryview(buf)[offset:offset + HEADER_LEN],
                     pseudo_header_sum(src, dst, _PROTO, length))
    # The header is 8 bytes, so the payload's words line up with the sum's.
    check = finish(ones_sum(payload, total)) or 0xFFFF  # 0 would mean "no checksum"
    struct.pack_into("!H", buf, offset + CHECKSUM_OFFSET, check)
    return offset + HEADER_LEN
