"""ICMPv6 (RFC 4443) types and Neighbor Discovery messages (RFC 4861, RFC 8106).

ICMPv6 messages share ICMPv4's layout (type, code, checksum, four bytes, body), so
they are parsed and built with `wire.icmp`, the pseudo-header's sum as *initial*.
This module adds what NDP puts in the body: a target address and options.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed
from slirpy.wire.ethernet import MAC_LEN
from slirpy.wire.ipv6 import ADDRESS_LEN, DEFAULT_HOP_LIMIT, is_multicast

_PREFIX_INFO: Final = struct.Struct("!BBBBIII16s")  # type, len, prefix len, flags, ...
_MTU: Final = struct.Struct("!BBHI")
_RA_HEAD: Final = struct.Struct("!BBH")  # cur hop limit, M/O flags, router lifetime
_RA_BODY: Final = struct.Struct("!II")  # reachable time, retrans timer
_RDNSS_HEAD: Final = struct.Struct("!BBHI")
_LINK_ADDR_HEAD: Final = struct.Struct("!BB")  # type, length; an Ethernet address follows
_OPTION_UNIT: Final = 8  # option lengths count 8-byte units


class Icmp6Type(enum.IntEnum):
    DEST_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    MLD_QUERY = 130  # RFC 2710 3
    MLD_REPORT = 131
    MLD_DONE = 132
    ROUTER_SOLICITATION = 133
    ROUTER_ADVERTISEMENT = 134
    NEIGHBOR_SOLICITATION = 135
    NEIGHBOR_ADVERTISEMENT = 136
    MLD2_REPORT = 143  # RFC 3810 5.2


ERROR_TYPES: Final = frozenset({Icmp6Type.DEST_UNREACHABLE, Icmp6Type.PACKET_TOO_BIG,
                                Icmp6Type.TIME_EXCEEDED, Icmp6Type.PARAMETER_PROBLEM})
MLD_TYPES: Final = frozenset({Icmp6Type.MLD_QUERY, Icmp6Type.MLD_REPORT, Icmp6Type.MLD_DONE,
                              Icmp6Type.MLD2_REPORT})


class Unreach6Code(enum.IntEnum):
    NO_ROUTE = 0
    ADMIN_PROHIBITED = 1
    BEYOND_SCOPE = 2
    ADDRESS = 3
    PORT = 4


class NdOption(enum.IntEnum):
    SOURCE_LINK_ADDR = 1
    TARGET_LINK_ADDR = 2
    PREFIX_INFO = 3
    MTU = 5
    RDNSS = 25


# Neighbor advertisement flags (in the four bytes after the checksum).
NA_ROUTER: Final = 0x80000000
NA_SOLICITED: Final = 0x40000000
NA_OVERRIDE: Final = 0x20000000
# Prefix information flags.
PREFIX_ON_LINK: Final = 0x80
PREFIX_AUTONOMOUS: Final = 0x40
ND_HOP_LIMIT: Final = 255  # RFC 4861 6.1.2/7.1.1: anything else was forwarded: not ND
ND_CODE: Final = 0  # RFC 4861: every ND message has code 0
NS_REST: Final = bytes(4)  # a solicitation's four bytes after the checksum: reserved
_NA_FLAGS: Final = struct.Struct("!I")  # R, S, O in the top bits, the rest reserved


def na_rest(flags: int) -> bytes:
    """The four bytes after a neighbour advertisement's checksum: its flags."""
    return _NA_FLAGS.pack(flags)


class NdOptions(NamedTuple):
    """The options of an ND message that slirpy reads: the link-layer address only."""

    link_addr: bytes | None  # the source (NS, RS) or target (NA) link-layer address


def parse_options(options: memoryview, wanted: int) -> NdOptions:
    """Walk ND options (RFC 4861 4.6): a zero length or an overrun drops the message."""
    link_addr = None
    i = 0
    while i < len(options):
        if i + 2 > len(options):
            raise Malformed("nd-option-short")
        kind, units = options[i], options[i + 1]
        if units == 0:
            raise Malformed("nd-option-zero-length")
        end = i + units * _OPTION_UNIT
        if end > len(options):
            raise Malformed("nd-option-short")
        if kind == wanted and units == 1:  # Ethernet: 6 bytes in one 8-byte unit
            start = i + _LINK_ADDR_HEAD.size
            link_addr = bytes(options[start:start + MAC_LEN])
        i = end
    return NdOptions(link_addr)


class NeighborMessage(NamedTuple):
    """A neighbor solicitation or advertisement body: the target, and its options."""

    target: bytes
    options: NdOptions

    @classmethod
    def parse(cls, body: memoryview, wanted: int) -> NeighborMessage:
        if len(body) < ADDRESS_LEN:
            raise Malformed("nd-short")
        target = bytes(body[:ADDRESS_LEN])
        if is_multicast(target):
            raise Malformed("nd-multicast-target")
        return cls(target, parse_options(body[ADDRESS_LEN:], wanted))


def _units(length: int) -> int:
    """An option's length field: *length* bytes in 8-byte units."""
    return length // _OPTION_UNIT


def link_addr_option(kind: int, mac: bytes) -> bytes:
    return _LINK_ADDR_HEAD.pack(kind, _units(_LINK_ADDR_HEAD.size + len(mac))) + mac


def neighbor_body(target: bytes, option_kind: int, mac: bytes) -> bytes:
    """An NS or NA body: the target and our link-layer address."""
    return target + link_addr_option(option_kind, mac)


def router_advertisement(*, our_mac: bytes, mtu: int, prefix: bytes, prefix_len: int,
                         dns: bytes | None, router_lifetime_s: int, valid_s: int,
                         preferred_s: int) -> tuple[bytes, bytes]:
    """(the four bytes after the checksum, the body) of a router advertisement.

    Options: our link-layer address, the MTU, the prefix (on-link, autonomous: SLAAC)
    and, with *dns*, RDNSS (RFC 8106) naming it.
    """
    # The guest's hop limit, no M/O flags (no DHCPv6); reachable time, retrans timer
    # unspecified.
    rest = _RA_HEAD.pack(DEFAULT_HOP_LIMIT, 0, router_lifetime_s)
    body = bytearray(_RA_BODY.pack(0, 0))
    body += link_addr_option(NdOption.SOURCE_LINK_ADDR, our_mac)
    body += _MTU.pack(NdOption.MTU, _units(_MTU.size), 0, mtu)
    body += _PREFIX_INFO.pack(NdOption.PREFIX_INFO, _units(_PREFIX_INFO.size), prefix_len,
                              PREFIX_ON_LINK | PREFIX_AUTONOMOUS, valid_s, preferred_s, 0,
                              prefix)
    if dns is not None:
        body += _RDNSS_HEAD.pack(NdOption.RDNSS, _units(_RDNSS_HEAD.size + len(dns)), 0,
                                 router_lifetime_s) + dns
    return rest, bytes(body)
