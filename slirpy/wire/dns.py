"""Just enough of DNS (RFC 1035) to forward queries and to refuse them politely."""

from __future__ import annotations

# mypyc builds a NamedTuple's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

import struct
from typing import Final, NamedTuple

from slirpy.wire import Malformed

DNS_PORT: Final = 53  # RFC 1035 4.2: a DNS server's port, UDP and TCP
_HEADER: Final = struct.Struct("!HHHHHH")
HEADER_LEN: Final = _HEADER.size  # 12
_FLAG_QR: Final = 0x8000
_FLAG_RD: Final = 0x0100
_FLAG_RA: Final = 0x0080
_OPCODE_MASK: Final = 0x7800
RCODE_SERVFAIL: Final = 2
_QUESTION: Final = struct.Struct("!HH")  # QTYPE, QCLASS after the name
_LABEL_KIND: Final = 0xC0  # a length octet's top two bits: 00 a label, 11 a pointer
_POINTER: Final = 0xC0
_POINTER_LEN: Final = 2  # 14 bits of offset, the kind bits above them


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
            end = _skip_name(message, end) + _QUESTION.size
            if end > len(message):
                raise Malformed("dns-short")
        return cls(ident, flags, qdcount, message[HEADER_LEN:end])


def _skip_name(message: memoryview, offset: int) -> int:
    while True:
        if offset >= len(message):
            raise Malformed("dns-short")
        length = message[offset]
        if length & _LABEL_KIND == _POINTER:
            return offset + _POINTER_LEN  # a compression pointer ends the name
        if length & _LABEL_KIND:
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


# --- Client side: asking for SRV/A/AAAA records and reading the answer ---------------
#
# Remote forwards may name their target as NAME@srv-DNSSERVER:PORT; the sans-IO core
# sends the query itself and needs to read the answer from a server it does not trust
# more than any other peer, so every offset below is checked before it is used.

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
TYPE_SRV: Final = 33
_TYPE_OPT: Final = 41  # EDNS pseudo-record: its class and TTL are not a class and a TTL
CLASS_IN: Final = 1
RCODE_NOERROR: Final = 0
RCODE_NXDOMAIN: Final = 3
_FLAG_TC: Final = 0x0200
_RCODE_MASK: Final = 0x000F
_RR_FIXED: Final = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH
_SRV_FIXED: Final = struct.Struct("!HHH")  # PRIORITY, WEIGHT, PORT
_A_LEN: Final = 4  # an A record's data: an IPv4 address
_AAAA_LEN: Final = 16
_TTL_SIGN: Final = 0x80000000  # RFC 2181 8: a TTL with it set counts as 0
_MAX_NAME_WIRE: Final = 255  # RFC 1035 2.3.4, length octets included
_MAX_NAME_TEXT: Final = 253  # the same limit in dotted text without the trailing dot
_MAX_LABEL: Final = 63
# A name has at most 127 labels and a sane compressor points once per name, so more
# jumps than this can only be an attacker making us walk pointer chains.
_MAX_POINTER_JUMPS: Final = 128
MAX_CNAME_HOPS: Final = 8
ROOT: Final = "."


class SrvData(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str  # lower-case, no trailing dot; "." means "service not available here"


class Record(NamedTuple):
    """One resource record of class IN.

    *name* is lower-case text without the trailing dot ("." for the root); non-printable
    bytes, dots and backslashes inside a label are escaped as \\DDD so two different
    wire names never read the same. *data* is SrvData for SRV, the packed address for
    A/AAAA, the uncompressed wire-format target for CNAME (a pointer would mean nothing
    without the message), and the raw rdata for every other type.
    """

    name: str
    rtype: int
    ttl: int
    data: SrvData | bytes


class DnsResponse(NamedTuple):
    ident: int
    rcode: int
    truncated: bool
    answers: list[Record]
    additional: list[Record]  # authority records are read past and dropped


def build_query(ident: int, name: str, qtype: int) -> bytes:
    """A standard recursive query (RD set) for *name*/*qtype*, class IN.

    *name* comes from the user's configuration, so a bad one is a ValueError with a
    message meant for them, not a Malformed.
    """
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"DNS query id {ident} is not a 16-bit number")
    if not 0 <= qtype <= 0xFFFF:
        raise ValueError(f"DNS query type {qtype} is not a 16-bit number")
    return (
        _HEADER.pack(ident, _FLAG_RD, 1, 0, 0, 0)
        + _encode_name(name)
        + _QUESTION.pack(qtype, CLASS_IN)
    )


def _encode_name(name: str) -> bytes:
    if name == ROOT:
        return b"\x00"
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise ValueError("DNS name is empty")
    if not text.isascii():
        raise ValueError(f"DNS name {name!r} is not ASCII")
    if len(text) > _MAX_NAME_TEXT:
        raise ValueError(f"DNS name {name!r} is longer than {_MAX_NAME_TEXT} characters")
    out = bytearray()
    for label in text.split("."):
        if not label:
            raise ValueError(f"DNS name {name!r} has an empty label")
        if len(label) > _MAX_LABEL:
            raise ValueError(f"DNS name {name!r} has a label longer than {_MAX_LABEL}")
        if not label.isprintable() or " " in label:
            raise ValueError(f"DNS name {name!r} contains a space or control character")
        out.append(len(label))
        out += label.encode("ascii")
    out.append(0)
    return bytes(out)


def parse_response(message: bytes | bytearray | memoryview) -> DnsResponse:
    """The answer and additional records of a response, checked to the last offset.

    Records of another class than IN and EDNS OPT records are left out. A TTL with
    the top bit set counts as 0 (RFC 2181 8). Bytes after the last counted record
    are ignored.
    """
    view = memoryview(message).cast("B") if isinstance(message, memoryview) else message
    if len(view) < HEADER_LEN:
        raise Malformed("dns-short")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(view)
    if not flags & _FLAG_QR:
        raise Malformed("dns-not-response")
    offset = HEADER_LEN
    for _ in range(qdcount):
        _, offset = _read_labels(view, offset)
        offset += _QUESTION.size
        if offset > len(view):
            raise Malformed("dns-short")
    answers: list[Record] = []
    additional: list[Record] = []
    for count, into in ((ancount, answers), (nscount, None), (arcount, additional)):
        for _ in range(count):
            record, offset = _read_record(view, offset)
            if record is not None and into is not None:
                into.append(record)
    return DnsResponse(int(ident), flags & _RCODE_MASK, bool(flags & _FLAG_TC), answers, additional)


def _read_record(message: bytes | bytearray | memoryview, offset: int) -> tuple[Record | None, int]:
    labels, offset = _read_labels(message, offset)
    if offset + _RR_FIXED.size > len(message):
        raise Malformed("dns-short")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(message, offset)
    start = offset + _RR_FIXED.size
    end = start + rdlength
    if end > len(message):
        raise Malformed("dns-rdata-overrun")
    if rtype == _TYPE_OPT or rclass != CLASS_IN:
        return None, end
    data: SrvData | bytes
    if rtype == TYPE_A:
        if rdlength != _A_LEN:
            raise Malformed("dns-bad-a")
        data = bytes(message[start:end])
    elif rtype == TYPE_AAAA:
        if rdlength != _AAAA_LEN:
            raise Malformed("dns-bad-aaaa")
        data = bytes(message[start:end])
    elif rtype == TYPE_SRV:
        if rdlength < _SRV_FIXED.size + 1:
            raise Malformed("dns-bad-srv")
        priority, weight, port = _SRV_FIXED.unpack_from(message, start)
        # RFC 2782 forbids compressing the target, but servers do it and RFC 3597
        # asks receivers to cope, so the target is read against the whole message.
        target, target_end = _read_labels(message, start + _SRV_FIXED.size)
        if target_end != end:
            raise Malformed("dns-bad-srv")
        data = SrvData(priority, weight, port, _labels_to_text(target))
    elif rtype == TYPE_CNAME:
        target, target_end = _read_labels(message, start)
        if target_end != end:
            raise Malformed("dns-bad-cname")
        data = _labels_to_wire(target)
    else:
        data = bytes(message[start:end])
    ttl = 0 if ttl & _TTL_SIGN else ttl
    return Record(_labels_to_text(labels), rtype, int(ttl), data), end


def _read_labels(message: bytes | bytearray | memoryview, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at *offset*, and the offset just after it in place.

    Pointers must point backwards (RFC 1035 4.1.4: "a prior occurrence"), into the
    message after the header, never twice through the same pointer, and at most
    _MAX_POINTER_JUMPS times; the name, counted on the wire, must fit 255 octets.
    These bound the work any name can cost to a few hundred steps.
    """
    size = len(message)
    labels: list[bytes] = []
    wire_len = 1  # the root label's length octet
    end = -1  # where the name ends in place, once the first pointer is followed
    seen: set[int] = set()
    pos = offset
    while True:
        if pos >= size:
            raise Malformed("dns-short")
        length = message[pos]
        kind = length & _LABEL_KIND
        if kind == _POINTER:
            if pos + 1 >= size:
                raise Malformed("dns-short")
            if pos in seen:
                raise Malformed("dns-pointer-loop")
            seen.add(pos)
            if len(seen) > _MAX_POINTER_JUMPS:
                raise Malformed("dns-pointer-jumps")
            target = (length & ~_LABEL_KIND) << 8 | message[pos + 1]
            if target < HEADER_LEN or target >= size:
                raise Malformed("dns-pointer-out-of-range")
            if target > pos:
                raise Malformed("dns-pointer-forward")
            if end < 0:
                end = pos + _POINTER_LEN
            pos = target
            continue
        if kind:
            raise Malformed("dns-bad-label")  # 0x40 extended / 0x80 reserved label types
        if length == 0:
            return labels, pos + 1 if end < 0 else end
        wire_len += 1 + length
        if wire_len > _MAX_NAME_WIRE:
            raise Malformed("dns-name-too-long")
        if pos + 1 + length > size:
            raise Malformed("dns-label-overrun")
        labels.append(bytes(message[pos + 1 : pos + 1 + length]))
        pos += 1 + length


def _labels_to_text(labels: list[bytes]) -> str:
    if not labels:
        return ROOT
    return ".".join(
        "".join(
            chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}"
            for b in label.lower()
        )
        for label in labels
    )


def _labels_to_wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def _wire_to_text(wire: bytes) -> str | None:
    """An uncompressed wire name as Record.name text, or None if it is not one."""
    labels: list[bytes] = []
    pos = 0
    while pos < len(wire):
        length = wire[pos]
        if length == 0:
            return _labels_to_text(labels) if pos + 1 == len(wire) else None
        if length > _MAX_LABEL or pos + 1 + length > len(wire):
            return None
        labels.append(wire[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return None


def _normalize(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") and name != ROOT else name


def pick_srv(records: list[Record]) -> SrvData | None:
    """The SRV target to connect to: lowest priority, then highest weight.

    RFC 2782 picks among equal priorities at random, weighted; a forward wants the
    same target every time, so this takes the heaviest, the first one on a tie.
    Targets of "." (the service is decidedly not available) are never picked, so
    None means there is nothing to connect to.
    """
    best: SrvData | None = None
    for record in records:
        data = record.data
        if record.rtype != TYPE_SRV or not isinstance(data, SrvData) or data.target == ROOT:
            continue
        if best is None or (data.priority, -data.weight) < (best.priority, -best.weight):
            best = data
    return best


def addresses_for(name: str, records: list[Record]) -> list[bytes]:
    """The packed A then AAAA addresses of *name* among *records*.

    CNAME records among them are followed, at most MAX_CNAME_HOPS times and never
    around a loop; an empty list means the records do not say where *name* is.
    """
    current = _normalize(name)
    seen = {current}
    for _ in range(MAX_CNAME_HOPS + 1):
        found = [
            record.data
            for rtype in (TYPE_A, TYPE_AAAA)
            for record in records
            if record.rtype == rtype and record.name == current and isinstance(record.data, bytes)
        ]
        if found:
            return found
        alias = next(
            (
                record.data
                for record in records
                if record.rtype == TYPE_CNAME
                and record.name == current
                and isinstance(record.data, bytes)
            ),
            None,
        )
        if alias is None:
            return []
        target = _wire_to_text(alias)
        if target is None or target in seen:
            return []
        seen.add(target)
        current = target
    return []
