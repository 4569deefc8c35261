"""The Internet checksum (RFC 1071), computed with big integers in C, not word by word."""

from __future__ import annotations

import struct
from typing import Final

_PSEUDO4: Final = struct.Struct("!4s4sxBH")
_PSEUDO6: Final = struct.Struct("!16s16sIxxxB")

Buffer = bytes | bytearray | memoryview


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """Ones' complement sum of *data* as big-endian 16-bit words, plus *initial*."""
    value = int.from_bytes(data, "big")
    if len(data) % 2:
        value <<= 8  # RFC 1071: pad an odd length with one zero byte
    # 2**16 == 1 (mod 0xFFFF), so the sum of the 16-bit words is the whole
    # number mod 0xFFFF; CPython does that in C, ~4x faster than summing words.
    total = (value + initial) % 0xFFFF
    return total if total or not (value or initial) else 0xFFFF


def finish(total: int) -> int:
    """The checksum field for a ones' complement sum."""
    return ~total & 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """The checksum field over *data*; over data that already holds one, 0 means valid."""
    return finish(ones_sum(data, initial))


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The sum of the IPv4 or IPv6 pseudo-header (RFC 768, RFC 8200 8.1)."""
    if len(src) == 4:
        return ones_sum(_PSEUDO4.pack(src, dst, proto, length))
    return ones_sum(_PSEUDO6.pack(src, dst, length, proto))
