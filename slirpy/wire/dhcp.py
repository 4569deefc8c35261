"""DHCP messages (RFC 2131) and their options (RFC 2132)."""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

_FIXED: Final = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
FIXED_LEN: Final = _FIXED.size  # 240 with the magic cookie
MAGIC_COOKIE: Final = b"\x63\x82\x53\x63"
FLAG_BROADCAST: Final = 0x8000
SERVER_PORT: Final = 67
CLIENT_PORT: Final = 68
_OP_REQUEST: Final = 1
_OP_REPLY: Final = 2
_HTYPE_ETHERNET: Final = 1
_HLEN_ETHERNET: Final = 6
_CHADDR_LEN: Final = 16  # the client hardware address field; a MAC fills its first 6
_BOOTP_MIN_LEN: Final = 300  # BOOTP's minimum message; some clients insist on it
_IPV4_LEN: Final = 4


class DhcpOption(enum.IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    INTERFACE_MTU = 26
    BROADCAST = 28
    REQUESTED_IP = 50
    LEASE_TIME = 51
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    END = 255


class DhcpType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class DhcpMessage(NamedTuple):
    op: int
    xid: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    giaddr: bytes
    chaddr: bytes  # the client's 6-byte MAC
    options: dict[int, bytes]

    @property
    def message_type(self) -> int | None:
        value = self.options.get(DhcpOption.MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    def option_ip(self, code: int) -> bytes | None:
        value = self.options.get(code)
        return value if value is not None and len(value) == _IPV4_LEN else None

    @classmethod
    def parse(cls, payload: memoryview) -> DhcpMessage:
        if len(payload) < FIXED_LEN:
            raise Malformed("dhcp-short")
        (op, htype, hlen, _, xid, _, flags, ciaddr, yiaddr, _, giaddr, chaddr,
         _, _, cookie) = _FIXED.unpack_from(payload)
        if op != _OP_REQUEST or htype != _HTYPE_ETHERNET or hlen != _HLEN_ETHERNET:
            raise Malformed("dhcp-unsupported")
        if cookie != MAGIC_COOKIE:
            raise Malformed("dhcp-no-cookie")
        return cls(op, xid, flags, ciaddr, yiaddr, giaddr, chaddr[:_HLEN_ETHERNET],
                   _parse_options(payload[FIXED_LEN:]))


def _parse_options(data: memoryview) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == DhcpOption.END:
            return options
        if code == DhcpOption.PAD:
            i += 1
            continue
        if i + 2 > len(data) or i + 2 + data[i + 1] > len(data):
            raise Malformed("dhcp-bad-option")
        length = data[i + 1]
        # RFC 3396: a repeated option continues the first one.
        options[code] = options.get(code, b"") + bytes(data[i + 2:i + 2 + length])
        i += 2 + length
    raise Malformed("dhcp-no-end")


def build_dhcp_reply(*, xid: int, flags: int, ciaddr: bytes, yiaddr: bytes, siaddr: bytes,
                     chaddr: bytes, options: list[tuple[int, bytes]]) -> bytearray:
    """A BOOTREPLY with *options* in order, then END."""
    size = FIXED_LEN + sum(2 + len(value) for _, value in options) + 1
    message = bytearray(max(size, _BOOTP_MIN_LEN))
    _FIXED.pack_into(message, 0, _OP_REPLY, _HTYPE_ETHERNET, _HLEN_ETHERNET, 0, xid, 0, flags,
                     ciaddr, yiaddr, siaddr, bytes(_IPV4_LEN), chaddr.ljust(_CHADDR_LEN, b"\0"),
                     b"", b"", MAGIC_COOKIE)
    offset = FIXED_LEN
    for code, value in options:
        message[offset] = code
        message[offset + 1] = len(value)
        message[offset + 2:offset + 2 + len(value)] = value
        offset += 2 + len(value)
    message[offset] = DhcpOption.END
    return message
