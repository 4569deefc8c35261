"""PROXY protocol v1/v2 (TCP) and the Simple Proxy Protocol (UDP): who the real client is.

A load balancer in front of a forwarded port (haproxy, nginx, Cloudflare Spectrum, ...)
terminates the client's connection and opens its own to us, so the peer address we see
is the balancer's.  These headers carry the original client address in-band.

PROXY protocol (haproxy's proxy-protocol.txt).  A server reads a header from the very
start of the TCP stream, before any application byte:

* v1, text: ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (or TCP6), or
  ``PROXY UNKNOWN[ <anything>]\\r\\n``; the whole line, CRLF included, is at most 107
  bytes.  Fields are separated by exactly one space; ports are 1 to 5 ASCII digits
  (no sign) with a value up to 65535; the addresses must be of the family the
  protocol token names.
* v2, binary: a 12-byte signature, a version/command byte (0x20 LOCAL, 0x21 PROXY), a
  family/transport byte, a big-endian 16-bit length, then that many bytes: the address
  block for the family, followed by TLVs.  TLVs are skipped: we only check that each
  one stays inside the announced length.  LOCAL (health checks from the balancer
  itself), AF_UNSPEC and AF_UNIX carry no usable address, so they give ``None``
  addresses and the caller keeps the connection's own peer.

`parse_proxy_header` is meant to be called on the bytes peeked so far: it answers
``None`` while the data is a prefix of a header that could still become valid, and
raises `Malformed` as soon as no continuation could make it valid (so a client that
speaks HTTP straight away is refused on its first segment, not after a timeout).  For
v1 the prefix check is exact for the fixed tokens, IPv4 addresses and ports, and
conservative for partial IPv6 text (only its alphabet and length are checked until the
field is complete).  An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is returned as the
4-byte IPv4 address, since that is what the client really is.

Simple Proxy Protocol (SPP, Cloudflare Spectrum's UDP scheme, "udpspp" in
slirpnetstack): every datagram starts with a fixed 38-byte header, all fields in
network byte order::

    magic 0x56EC (2) | client address (16) | proxy address (16) |
    client port (2)  | proxy port (2)      | payload ...

IPv4 addresses are written IPv4-mapped.  "Client" is the originator of the proxied
datagram and "proxy" the proxy's own address/port it was received on
(developers.cloudflare.com/spectrum/reference/simple-proxy-protocol-header).

The reply path: a server answering through the proxy must prefix each reply with an
SPP header too, and the proxy strips it before delivering the payload to the client;
Tencent EdgeOne's SPP documentation ("Passing Real Client IP Through SPP") states that
the origin's response must carry the SPP header and that a reply without it gets its
payload truncated by the proxy.  slirpnetstack (cloudflare/slirpnetstack,
pkg/slirpnetstack/fwd.go `LocalForward` and proxy.go `proxyOneFlow`) decodes the
header of the flow's first datagram, keeps those 38 bytes verbatim and prepends the
very same bytes, fields not swapped, to every datagram the guest sends back; later
datagrams from the proxy just have their first 38 bytes dropped (shorter ones are
swallowed).  `build_spp(parse_spp(d)[0])` reproduces ``d[:38]`` exactly, so the header
this module parses is the one to send back.

Pure functions, no I/O; bad input raises only `Malformed(reason)`.  Builders raise
`ValueError` on bad arguments (they are fed by our own code and tests, not the wire).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

V1_MAX_LEN: Final = 107  # the longest v1 line, "PROXY TCP6 " + 2 * 39 + 2 * 5 + spaces + CRLF
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = struct.Struct("!12sBBH")  # signature, version/command, family, length
V2_FIXED_LEN: Final = _V2_FIXED.size  # 16
_V2_VERSION_COMMAND_AT: Final = len(V2_SIGNATURE)  # 12
_V2_FAMILY_AT: Final = _V2_VERSION_COMMAND_AT + 1  # 13
_V2_VERSION_SHIFT: Final = 4  # the version in the high four bits, the command in the low
_V2_COMMAND_MASK: Final = 0x0F
# The largest whole v2 header we accept: the 16 fixed bytes plus 4096 bytes of
# addresses and TLVs.  The spec lets the length reach 65535, but real senders put a
# few hundred bytes of TLVs at most; bounding it bounds how much a caller must peek
# (MAX_V2_LEN bytes always decide: a header, or Malformed) and keeps a hostile peer
# from making us buffer 64 KiB before the first payload byte.
MAX_V2_LEN: Final = 4096 + 16

_V2_VERSION: Final = 2
CMD_LOCAL: Final = 0x0
CMD_PROXY: Final = 0x1
FAM_UNSPEC: Final = 0x00
FAM_TCP4: Final = 0x11
FAM_UDP4: Final = 0x12
FAM_TCP6: Final = 0x21
FAM_UDP6: Final = 0x22
FAM_UNIX_STREAM: Final = 0x31
FAM_UNIX_DGRAM: Final = 0x32
_V2_ADDRESS_LEN: Final = {
    FAM_UNSPEC: 0,
    FAM_TCP4: 12, FAM_UDP4: 12,  # 2 * 4 address bytes + 2 * 2 port bytes
    FAM_TCP6: 36, FAM_UDP6: 36,  # 2 * 16 + 2 * 2
    FAM_UNIX_STREAM: 216, FAM_UNIX_DGRAM: 216,  # 2 * 108 path bytes
}
_V2_INET: Final = struct.Struct("!4s4sHH")
_V2_INET6: Final = struct.Struct("!16s16sHH")
_TLV_HEADER: Final = struct.Struct("!BH")  # type, length
_TLV_HEADER_LEN: Final = _TLV_HEADER.size  # 3

_V1_PREFIX: Final = b"PROXY "
_V1_PROTOCOLS: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_FIELDS: Final = 5  # protocol, source, destination, source port, destination port
_V4_CHARS: Final = frozenset(b"0123456789.")
_V6_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:.")
_V4_TEXT_MAX: Final = 15  # 255.255.255.255
_V6_TEXT_MAX: Final = 45  # ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
_PORT_TEXT_MAX: Final = 5

SPP_MAGIC: Final = 0x56EC
_SPP: Final = struct.Struct("!H16s16sHH")
SPP_HEADER_LEN: Final = _SPP.size  # 38
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"

Address = tuple[bytes, int]  # packed 4- or 16-byte address, port


class ProxyHeader(NamedTuple):
    length: int  # bytes of the stream the header occupies, to consume before the payload
    source: Address | None  # the real client; None: use the connection's own peer
    destination: Address | None  # the address the client connected to, as the proxy saw it


class SppHeader(NamedTuple):
    client: Address
    proxy: Address


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The PROXY header at the start of *data*, or None if more bytes are needed."""
    if not data:
        return None
    first = data[0]
    if first == _V1_PREFIX[0]:
        return _parse_v1(bytes(data[:V1_MAX_LEN]))
    if first == V2_SIGNATURE[0]:
        return _parse_v2(memoryview(data))
    raise Malformed("proxy-bad-signature")


# --- v1 -------------------------------------------------------------------------------

def _parse_v1(head: bytes) -> ProxyHeader | None:
    end = head.find(b"\r\n")  # *head* holds at most V1_MAX_LEN bytes
    if end >= 0:
        source, destination = _v1_line(head[:end])
        return ProxyHeader(end + 2, source, destination)
    if len(head) >= V1_MAX_LEN:
        raise Malformed("proxy-v1-too-long")
    if head.endswith(b"\r"):
        _v1_line(head[:-1])  # only the LF is missing: the line must already be whole
    else:
        _v1_check_prefix(head)
    return None


def _v1_line(line: bytes) -> tuple[Address | None, Address | None]:
    """Validate a whole v1 line (without its CRLF) and return its addresses."""
    if not line.startswith(_V1_PREFIX):
        raise Malformed("proxy-bad-signature")
    fields = line[len(_V1_PREFIX):].split(b" ")
    protocol = fields[0]
    if protocol == b"UNKNOWN":
        return None, None  # whatever follows "UNKNOWN " is to be ignored
    if protocol not in _V1_PROTOCOLS:
        raise Malformed("proxy-v1-bad-protocol")
    if len(fields) != _V1_FIELDS or not all(fields):
        raise Malformed("proxy-v1-bad-fields")
    v6 = protocol == b"TCP6"
    source = _v1_address(fields[1], v6)
    destination = _v1_address(fields[2], v6)
    return (source, _v1_port(fields[3])), (destination, _v1_port(fields[4]))


def _v1_check_prefix(partial: bytes) -> None:
    """Raise unless *partial* (no CRLF, no trailing CR) can still grow into a valid line."""
    if len(partial) <= len(_V1_PREFIX):
        if _V1_PREFIX.startswith(partial):
            return
        raise Malformed("proxy-bad-signature")
    if not partial.startswith(_V1_PREFIX):
        raise Malformed("proxy-bad-signature")
    fields = partial[len(_V1_PREFIX):].split(b" ")
    protocol, last = fields[0], len(fields) - 1
    if last == 0:
        if any(p.startswith(protocol) for p in _V1_PROTOCOLS):
            return
        raise Malformed("proxy-v1-bad-protocol")
    if protocol == b"UNKNOWN":
        return
    if protocol not in _V1_PROTOCOLS:
        raise Malformed("proxy-v1-bad-protocol")
    if last >= _V1_FIELDS or not all(fields[:last]):
        raise Malformed("proxy-v1-bad-fields")
    v6 = protocol == b"TCP6"
    for index in range(1, last):  # complete fields
        if index <= 2:
            _v1_address(fields[index], v6)
        else:
            _v1_port(fields[index])
    if last <= 2:
        _v1_check_address_prefix(fields[last], v6)
    else:
        _v1_check_port_prefix(fields[last])


def _v1_address(text: bytes, v6: bool) -> bytes:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        raise Malformed("proxy-v1-bad-address") from None
    if address.version != (6 if v6 else 4):
        raise Malformed("proxy-v1-wrong-family")
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:  # "fe80::1%eth0" is no wire address
            raise Malformed("proxy-v1-bad-address")
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped.packed
    return address.packed


def _v1_check_address_prefix(text: bytes, v6: bool) -> None:
    if v6:
        if len(text) > _V6_TEXT_MAX or not _V6_CHARS.issuperset(text):
            raise Malformed("proxy-v1-bad-address")
        return
    if len(text) > _V4_TEXT_MAX or not _V4_CHARS.issuperset(text):
        raise Malformed("proxy-v1-bad-address")
    octets = text.split(b".")
    if len(octets) > 4 or not all(octets[:-1]):
        raise Malformed("proxy-v1-bad-address")
    for octet in octets:
        if len(octet) > 3 or (octet and int(octet) > 255) or (
                len(octet) > 1 and octet.startswith(b"0")):
            raise Malformed("proxy-v1-bad-address")  # ipaddress refuses leading zeros too


def _v1_port(text: bytes) -> int:
    _v1_check_port_prefix(text)
    if not text:
        raise Malformed("proxy-v1-bad-port")
    return int(text)


def _v1_check_port_prefix(text: bytes) -> None:
    # bytes.isdigit() is ASCII-only: no '+', '-', '_', spaces or other scripts' digits.
    if text and not (len(text) <= _PORT_TEXT_MAX and text.isdigit() and int(text) <= 0xFFFF):
        raise Malformed("proxy-v1-bad-port")


# --- v2 -------------------------------------------------------------------------------

def _parse_v2(view: memoryview) -> ProxyHeader | None:
    have = len(view)
    signature_part = bytes(view[:len(V2_SIGNATURE)])
    if not V2_SIGNATURE.startswith(signature_part):
        raise Malformed("proxy-bad-signature")
    if have <= len(V2_SIGNATURE):
        return None
    version_command = view[_V2_VERSION_COMMAND_AT]
    if version_command >> _V2_VERSION_SHIFT != _V2_VERSION:
        raise Malformed("proxy-v2-bad-version")
    command = version_command & _V2_COMMAND_MASK
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise Malformed("proxy-v2-bad-command")
    if have <= _V2_FAMILY_AT:
        return None
    family = view[_V2_FAMILY_AT]
    # LOCAL: "the receiver must ... discard the protocol block including the family".
    if command == CMD_PROXY and family not in _V2_ADDRESS_LEN:
        raise Malformed("proxy-v2-bad-family")
    if have < V2_FIXED_LEN:
        return None
    _, _, _, length = _V2_FIXED.unpack_from(view)
    total = V2_FIXED_LEN + length
    if total > MAX_V2_LEN:
        raise Malformed("proxy-v2-too-long")
    if command == CMD_LOCAL:
        return None if have < total else ProxyHeader(total, None, None)
    address_len = _V2_ADDRESS_LEN[family]
    if length < address_len:
        raise Malformed("proxy-v2-short-address")
    if have < total:
        return None
    if family == FAM_UNSPEC:
        return ProxyHeader(total, None, None)  # no addresses, so no telling where TLVs start
    _skip_tlvs(view[V2_FIXED_LEN + address_len:total])
    if family in (FAM_TCP4, FAM_UDP4):
        src, dst, sport, dport = _V2_INET.unpack_from(view, V2_FIXED_LEN)
    elif family in (FAM_TCP6, FAM_UDP6):
        src, dst, sport, dport = _V2_INET6.unpack_from(view, V2_FIXED_LEN)
        src, dst = _unmap(src), _unmap(dst)
    else:
        return ProxyHeader(total, None, None)  # AF_UNIX: a path is no use to us
    return ProxyHeader(total, (src, sport), (dst, dport))


def _skip_tlvs(tlvs: memoryview) -> None:
    offset = 0
    while offset < len(tlvs):
        if offset + _TLV_HEADER_LEN > len(tlvs):
            raise Malformed("proxy-v2-bad-tlv")
        _, value_len = _TLV_HEADER.unpack_from(tlvs, offset)
        offset += _TLV_HEADER_LEN + value_len
        if offset > len(tlvs):
            raise Malformed("proxy-v2-bad-tlv")


# --- builders -------------------------------------------------------------------------

def _address_pair(source: tuple[str, int], destination: tuple[str, int]) -> tuple[
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        ipaddress.IPv4Address | ipaddress.IPv6Address]:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of the same family")
    for port in (source[1], destination[1]):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
    return src, dst


def build_proxy_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 line for a TCP connection from *source* to *destination* (text addresses)."""
    src, dst = _address_pair(source, destination)
    protocol = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {protocol} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_proxy_v2(source: tuple[str, int], destination: tuple[str, int], *,
                   tlvs: bytes = b"") -> bytes:
    """A v2 PROXY-command header for a TCP connection, *tlvs* (already encoded) appended."""
    src, dst = _address_pair(source, destination)
    if src.version == 4:
        family, block = FAM_TCP4, _V2_INET.pack(src.packed, dst.packed, source[1], destination[1])
    else:
        family, block = FAM_TCP6, _V2_INET6.pack(src.packed, dst.packed, source[1], destination[1])
    length = len(block) + len(tlvs)
    if V2_FIXED_LEN + length > MAX_V2_LEN:
        raise ValueError("header longer than MAX_V2_LEN")
    version_command = _V2_VERSION << _V2_VERSION_SHIFT | CMD_PROXY
    return _V2_FIXED.pack(V2_SIGNATURE, version_command, family, length) + block + tlvs


# --- SPP ------------------------------------------------------------------------------

def parse_spp(datagram: bytes | bytearray | memoryview) -> tuple[SppHeader, memoryview]:
    """Split an SPP datagram into its header and a view of its payload."""
    view = memoryview(datagram)
    if len(view) < SPP_HEADER_LEN:
        raise Malformed("spp-short")
    magic, client, proxy, client_port, proxy_port = _SPP.unpack_from(view)
    if magic != SPP_MAGIC:
        raise Malformed("spp-bad-magic")
    header = SppHeader((_unmap(client), client_port), (_unmap(proxy), proxy_port))
    return header, view[SPP_HEADER_LEN:]


def build_spp(header: SppHeader) -> bytes:
    """The 38 header bytes for *header* (4-byte addresses written IPv4-mapped)."""
    (client, client_port), (proxy, proxy_port) = header
    for port in (client_port, proxy_port):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
    return _SPP.pack(SPP_MAGIC, _map(client), _map(proxy), client_port, proxy_port)


def _unmap(address: bytes) -> bytes:
    """A 16-byte address, or its IPv4 address if it is IPv4-mapped (::ffff:a.b.c.d)."""
    return address[len(_V4_MAPPED_PREFIX):] if address.startswith(_V4_MAPPED_PREFIX) else address


def _map(address: bytes) -> bytes:
    if len(address) == 4:
        return _V4_MAPPED_PREFIX + address
    if len(address) == 16:
        return address
    raise ValueError(f"address must be 4 or 16 bytes, not {len(address)}")
