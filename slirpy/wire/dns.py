"""Just enough of DNS (RFC 1035) to forward queries and to refuse them politely."""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

_HEADER: Final = struct.Struct("!HHHHHH")
HEADER_LEN: Final = _HEADER.size  # 12
_FLAG_QR: Final = 0x8000
_FLAG_RD: Final = 0x0100
_FLAG_RA: Final = 0x0080
_OPCODE_MASK: Final = 0x7800
RCODE_SERVFAIL: Final = 2
RCODE_FORMERR: Final = 1


class DnsQuery(NamedTuple):
    ident: int
    flags: int
    qdcount: int
    question: memoryview  # the whole question section, copied into an error reply

    @classmethod
    def parse(cls, message: memoryview) -> DnsQuery:
        if len(message) < HEADER_LEN:
            raise Malformed("dns-short")
        ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(message)
        if flags & _FLAG_QR:
            raise Malformed("dns-not-query")
        end = HEADER_LEN
        for _ in range(qdcount):
            end = _skip_name(message, end) + 4  # QTYPE, QCLASS
            if end > len(message):
                raise Malformed("dns-short")
        return cls(ident, flags, qdcount, message[HEADER_LEN:end])


def _skip_name(message: memoryview, offset: int) -> int:
    while True:
        if offset >= len(message):
            raise Malformed("dns-short")
        length = message[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2  # a compression pointer ends the name
        if length & 0xC0:
            raise Malformed("dns-bad-label")
        offset += 1 + length
        if length == 0:
            return offset


def response_ident(message: bytes | bytearray | memoryview) -> int | None:
    """The id of a response, or None if it is not one."""
    if len(message) < HEADER_LEN:
        return None
    ident, flags = struct.unpack_from("!HH", message)
    return int(ident) if flags & _FLAG_QR else None


def build_error_reply(query: DnsQuery, rcode: int) -> bytes:
    """A reply to *query* carrying only its question and *rcode*."""
    flags = _FLAG_QR | _FLAG_RA | (query.flags & (_OPCODE_MASK | _FLAG_RD)) | rcode
    return _HEADER.pack(query.ident, flags, query.qdcount, 0, 0, 0) + bytes(query.question)
