"""Ethernet II framing (no VLAN tags: a tap carries none we would accept)."""

from __future__ import annotations

# mypyc builds a NamedTuple's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

import enum
import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

_HEADER: Final = struct.Struct("!6s6sH")
HEADER_LEN: Final = _HEADER.size  # 14
MAC_LEN: Final = 6  # the destination address is the header's first field
ETHERTYPE_OFFSET: Final = 2 * MAC_LEN  # 12
BROADCAST: Final = b"\xff" * MAC_LEN
GROUP_BIT: Final = 0x01  # in an address's first octet: multicast or broadcast


class EtherType(enum.IntEnum):
    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview

    @classmethod
    def parse(cls, frame: memoryview) -> EthernetHeader:
        if len(frame) < HEADER_LEN:
            raise Malformed("eth-short")
        dst, src, ethertype = _HEADER.unpack_from(frame)
        return cls(dst, src, ethertype, frame[HEADER_LEN:])


def build_ethernet(buf: bytearray, offset: int, *, dst: bytes, src: bytes,
                   ethertype: int) -> int:
    _HEADER.pack_into(buf, offset, dst, src, ethertype)
    return offset + HEADER_LEN
