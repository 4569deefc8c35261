"""ARP for IPv4 over Ethernet (RFC 826): the only kind a tap guest sends."""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

_PACKET: Final = struct.Struct("!HHBBH6s4s6s4s")
PACKET_LEN: Final = _PACKET.size  # 28
_HTYPE_ETHERNET: Final = 1
_PTYPE_IPV4: Final = 0x0800  # EtherType.IPV4
_HLEN_ETHERNET: Final = 6
_PLEN_IPV4: Final = 4
_FORMAT: Final = (_HTYPE_ETHERNET, _PTYPE_IPV4, _HLEN_ETHERNET, _PLEN_IPV4)


class ArpOp(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


class ArpPacket(NamedTuple):
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    @classmethod
    def parse(cls, packet: memoryview) -> ArpPacket:
        if len(packet) < PACKET_LEN:
            raise Malformed("arp-short")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PACKET.unpack_from(packet)
        if (htype, ptype, hlen, plen) != _FORMAT:
            raise Malformed("arp-unsupported")
        return cls(op, sha, spa, tha, tpa)


def build_arp(buf: bytearray, offset: int, *, op: int, sender_mac: bytes, sender_ip: bytes,
              target_mac: bytes, target_ip: bytes) -> int:
    _PACKET.pack_into(buf, offset, *_FORMAT, op,
                      sender_mac, sender_ip, target_mac, target_ip)
    return offset + PACKET_LEN
