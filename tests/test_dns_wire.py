"""The DNS client side of slirpy.wire.dns: queries out, hostile answers in."""

import random
import socket
import struct

import pytest
from typing import Any

from scapy.layers.dns import (  # type: ignore[import-untyped, unused-ignore]
    DNS,
    DNSQR,
    DNSRR,
    DNSRROPT,
    DNSRRSRV,
)

from slirpy.wire import Malformed
from slirpy.wire.dns import (
    MAX_CNAME_HOPS,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SRV,
    DnsQuery,
    DnsResponse,
    Record,
    SrvData,
    addresses_for,
    build_query,
    parse_response,
    pick_srv,
)

SERVICE = "_db._tcp.example.com"
V4 = socket.inet_pton(socket.AF_INET, "192.0.2.10")
V4_B = socket.inet_pton(socket.AF_INET, "192.0.2.11")
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")


def response(*, an: list[object] | None = None, ns: list[object] | None = None,
             ar: list[object] | None = None, compress: bool = True, qname: str = SERVICE,
             qtype: str = "SRV", rcode: int = 0, tc: int = 0) -> bytes:
    """A response built by scapy, compressed the way real servers send them."""
    packet: Any = DNS(id=0x4242, qr=1, rd=1, ra=1, rcode=rcode, tc=tc,
                      qd=[DNSQR(qname=qname, qtype=qtype)],
                      an=an or [], ns=ns or [], ar=ar or [])
    return bytes(packet.compress() if compress else packet)


def srv(target: str, port: int, priority: int = 10, weight: int = 0,
        name: str = SERVICE) -> object:
    return DNSRRSRV(rrname=name, ttl=300, priority=priority, weight=weight, port=port,
                    target=target)


def a(name: str, address: str, ttl: int = 60) -> object:
    return DNSRR(rrname=name, type="A", ttl=ttl, rdata=address)


def aaaa(name: str, address: str) -> object:
    return DNSRR(rrname=name, type="AAAA", ttl=60, rdata=address)


def cname(name: str, target: str) -> object:
    return DNSRR(rrname=name, type="CNAME", ttl=60, rdata=target)


def srv_with_glue(compress: bool = True) -> bytes:
    return response(an=[srv("DB1.Example.com", 5432)],
                    ar=[a("db1.example.com", "192.0.2.10")], compress=compress)


# --- build_query -------------------------------------------------------------------------


def test_build_query_is_read_back_by_scapy_as_a_recursive_srv_question() -> None:
    packet = DNS(build_query(0xBEEF, SERVICE, TYPE_SRV))
    assert (packet.id, packet.qr, packet.opcode, packet.rd, packet.qdcount) == (
        0xBEEF, 0, 0, 1, 1)
    assert (packet.ancount, packet.nscount, packet.arcount) == (0, 0, 0)
    (question,) = packet.qd
    assert (question.qname, question.qtype, question.qclass) == (
        b"_db._tcp.example.com.", 33, 1)


@pytest.mark.parametrize("qtype", [TYPE_A, TYPE_AAAA, TYPE_SRV])
def test_build_query_types(qtype: int) -> None:
    assert DNS(build_query(1, "host.test", qtype)).qd[0].qtype == qtype


def test_build_query_trailing_dot_is_the_same_name() -> None:
    assert build_query(7, "host.test.", TYPE_A) == build_query(7, "host.test", TYPE_A)


def test_build_query_is_accepted_by_our_own_query_parser() -> None:
    message = build_query(9, SERVICE, TYPE_SRV)
    query = DnsQuery.parse(memoryview(message))
    assert (query.ident, query.qdcount, bytes(query.question)) == (
        9, 1, message[12:])


def test_build_query_accepts_the_longest_names() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    assert len(longest) == 253
    assert DNS(build_query(1, longest, TYPE_A)).qd[0].qname == longest.encode() + b"."
    assert DNS(build_query(1, longest + ".", TYPE_A)).qd[0].qname == longest.encode() + b"."


@pytest.mark.parametrize("name", [
    "",
    "..",
    ".example.com",
    "a..b",
    "x" * 64 + ".com",
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),  # 254 characters
    "héllo.example",
    "a b.example",
    "tab\t.example",
])
def test_build_query_rejects_bad_names_with_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="DNS name"):
        build_query(1, name, TYPE_A)


@pytest.mark.parametrize(("ident", "qtype"), [(-1, 1), (0x10000, 1), (1, -1), (1, 0x10000)])
def test_build_query_rejects_out_of_range_numbers(ident: int, qtype: int) -> None:
    with pytest.raises(ValueError):
        build_query(ident, "host.test", qtype)


# --- parse_response on what real servers send ----------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_srv_answer_with_glue_address(compress: bool) -> None:
    parsed = parse_response(srv_with_glue(compress))
    assert (parsed.ident, parsed.rcode, parsed.truncated) == (0x4242, RCODE_NOERROR, False)
    assert parsed.answers == [
        Record(SERVICE.lower(), TYPE_SRV, 300, SrvData(10, 0, 5432, "db1.example.com"))]
    assert parsed.additional == [Record("db1.example.com", TYPE_A, 60, V4)]
    chosen = pick_srv(parsed.answers)
    assert chosen is not None
    assert addresses_for(chosen.target, parsed.additional) == [V4]


def test_parse_accepts_bytearray_and_memoryview() -> None:
    message = srv_with_glue()
    expected = parse_response(message)
    assert parse_response(bytearray(message)) == expected
    assert parse_response(memoryview(message)) == expected
    assert parse_response(memoryview(b"\0" + message)[1:]) == expected


def test_several_srv_records_pick_lowest_priority_then_heaviest() -> None:
    parsed = parse_response(response(an=[
        srv("backup.example.com", 1, priority=20, weight=100),
        srv("light.example.com", 2, priority=10, weight=5),
        srv("heavy.example.com", 3, priority=10, weight=60),
        srv("heavy-too.example.com", 4, priority=10, weight=60),
    ]))
    assert [r.data.port for r in parsed.answers if isinstance(r.data, SrvData)] == [1, 2, 3, 4]
    assert pick_srv(parsed.answers) == SrvData(10, 60, 3, "heavy.example.com")


def test_srv_target_dot_means_unavailable() -> None:
    only_dot = parse_response(response(an=[srv(".", 0)]))
    assert only_dot.answers[0].data == SrvData(10, 0, 0, ".")
    assert pick_srv(only_dot.answers) is None
    dot_first = parse_response(response(an=[srv(".", 0, priority=0),
                                            srv("real.example.com", 80, priority=50)]))
    assert pick_srv(dot_first.answers) == SrvData(50, 0, 80, "real.example.com")


def test_pick_srv_ignores_other_records_and_empty_lists() -> None:
    assert pick_srv([]) is None
    assert pick_srv([Record("x", TYPE_A, 1, V4)]) is None


def test_cname_chain_to_a_and_aaaa() -> None:
    parsed = parse_response(response(qname="www.example.com", qtype="A", an=[
        cname("www.example.com", "Edge.CDN.example.net"),
        cname("edge.cdn.example.net", "node7.cdn.example.net"),
        aaaa("node7.cdn.example.net", "2001:db8::1"),
        a("node7.cdn.example.net", "192.0.2.10"),
        a("node7.cdn.example.net", "192.0.2.11"),
        a("unrelated.example.org", "198.51.100.1"),
    ]))
    assert parsed.answers[0] == Record(
        "www.example.com", TYPE_CNAME, 60, b"\x04Edge\x03CDN\x07example\x03net\x00")
    assert addresses_for("WWW.Example.COM.", parsed.answers) == [V4, V4_B, V6]
    assert addresses_for("node7.cdn.example.net", parsed.answers) == [V4, V4_B, V6]
    assert addresses_for("missing.example.com", parsed.answers) == []


def test_cname_chain_is_followed_at_most_eight_hops_and_never_round_a_loop() -> None:
    def chain(hops: int) -> list[Record]:
        names = [f"n{i}.test" for i in range(hops + 1)]
        records = [Record(names[i], TYPE_CNAME, 1, _wire(names[i + 1])) for i in range(hops)]
        return [*records, Record(names[-1], TYPE_A, 1, V4)]

    assert addresses_for("n0.test", chain(MAX_CNAME_HOPS)) == [V4]
    assert addresses_for("n0.test", chain(MAX_CNAME_HOPS + 1)) == []
    loop = [Record("x.test", TYPE_CNAME, 1, _wire("y.test")),
            Record("y.test", TYPE_CNAME, 1, _wire("x.test"))]
    assert addresses_for("x.test", loop) == []
    assert addresses_for("x.test", [Record("x.test", TYPE_CNAME, 1, b"\x05ab")]) == []


def test_aaaa_answer() -> None:
    parsed = parse_response(response(qname="v6.test", qtype="AAAA",
                                     an=[aaaa("v6.test", "2001:db8::1")]))
    assert parsed.answers == [Record("v6.test", TYPE_AAAA, 60, V6)]
    assert addresses_for("v6.test", parsed.answers) == [V6]


def test_nxdomain_rcode() -> None:
    parsed = parse_response(response(rcode=3))
    assert (parsed.rcode, parsed.answers, parsed.additional) == (RCODE_NXDOMAIN, [], [])


def test_truncated_flag() -> None:
    parsed = parse_response(response(tc=1, an=[srv("a.test", 1)]))
    assert parsed.truncated
    assert len(parsed.answers) == 1


def test_authority_opt_and_non_in_records_are_left_out() -> None:
    parsed = parse_response(response(
        an=[srv("a.test", 1), DNSRR(rrname="a.test", type="A", rclass=3, rdata="192.0.2.1")],
        ns=[DNSRR(rrname="example.com", type="NS", ttl=5, rdata="ns1.example.com")],
        ar=[a("a.test", "192.0.2.10"), DNSRROPT(rclass=4096)],
    ))
    assert [r.rtype for r in parsed.answers] == [TYPE_SRV]
    assert parsed.additional == [Record("a.test", TYPE_A, 60, V4)]


def test_other_types_keep_raw_rdata_and_ttl_top_bit_means_zero() -> None:
    parsed = parse_response(response(an=[
        DNSRR(rrname="t.test", type="TXT", ttl=0x80000001, rdata="hello"),
    ]))
    assert parsed.answers == [Record("t.test", 16, 0, b"\x05hello")]


def test_names_are_lower_case_and_odd_bytes_escaped() -> None:
    name = b"\x03A.b\x02\\\x00\x04Test\x00"
    message = _header(an=1) + name + struct.pack("!HHIH", TYPE_A, 1, 5, 4) + V4
    (record,) = parse_response(message).answers
    assert record.name == "a\\046b.\\092\\000.test"
    root = _header(an=1) + b"\x00" + struct.pack("!HHIH", TYPE_A, 1, 5, 4) + V4
    assert parse_response(root).answers[0].name == "."


def test_forward_and_backward_compat_with_existing_helpers() -> None:
    message = srv_with_glue()
    parsed: DnsResponse = parse_response(message)
    assert parsed.ident == 0x4242
    with pytest.raises(Malformed, match="dns-not-query"):
        DnsQuery.parse(memoryview(message))


# --- hostile messages ----------------------------------------------------------------------


def _header(qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


def _wire(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".") if p) + b"\0"


def _rr(name: bytes, rtype: int, rdata: bytes, rdlength: int | None = None) -> bytes:
    length = len(rdata) if rdlength is None else rdlength
    return name + struct.pack("!HHIH", rtype, 1, 60, length) + rdata


def _pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _too_many_jumps() -> bytes:
    # A TXT record whose rdata is a root label then 200 pointers each to the one
    # before; the next record's name points at the last of them.
    base = 12 + 1 + 10  # after the header, a root owner name and the fixed fields
    chain = b"\x00" + _pointer(base) + b"".join(
        _pointer(base + 1 + 2 * i) for i in range(199))
    last = base + 1 + 2 * 199
    return (_header(an=2) + _rr(b"\x00", 16, chain)
            + _rr(_pointer(last), TYPE_A, V4))


def _too_long_through_a_pointer() -> bytes:
    question = b"".join(b"\x3f" + bytes([c]) * 63 for c in b"abc") + b"\x00"  # 193 octets
    return (_header(qd=1, an=1) + question + b"\0\1\0\1"
            + _rr(b"\x3f" + b"d" * 63 + _pointer(12), TYPE_A, V4))


def _count_plus_one(message: bytes, field: int) -> bytes:
    raw = bytearray(message)
    struct.pack_into("!H", raw, 4 + 2 * field, struct.unpack_from("!H", raw, 4 + 2 * field)[0] + 1)
    return bytes(raw)


HOSTILE = {
    "short header": (b"\x12\x34\x81\x80\x00", "dns-short"),
    "query not response": (bytes(DNS(id=1, qd=[DNSQR(qname="a.test")])), "dns-not-response"),
    "pointer loop": (_header(an=1) + b"\x01a" + _pointer(12), "dns-pointer-loop"),
    "self pointer": (_header(an=1) + _pointer(12) + b"\0" * 10, "dns-pointer-loop"),
    "pointer forward": (_header(an=1) + _pointer(14) + b"\x00" + b"\0" * 10,
                        "dns-pointer-forward"),
    "pointer beyond end": (_header(an=1) + _pointer(0x3FFF) + b"\0" * 10,
                           "dns-pointer-out-of-range"),
    "pointer into header": (_header(an=1) + _pointer(4) + b"\0" * 10,
                            "dns-pointer-out-of-range"),
    "pointer cut in half": (_header(an=1) + b"\xc0", "dns-short"),
    "too many jumps": (_too_many_jumps(), "dns-pointer-jumps"),
    "label overrun": (_header(an=1) + b"\x05ab", "dns-label-overrun"),
    "label type 0x40": (_header(an=1) + b"\x41abc\x00", "dns-bad-label"),
    "label type 0x80": (_header(an=1) + b"\x81abc\x00", "dns-bad-label"),
    "name over 255": (_header(an=1) + b"".join(b"\x3f" + b"x" * 63 for _ in range(4)) + b"\x00",
                      "dns-name-too-long"),
    "name over 255 via pointer": (_too_long_through_a_pointer(), "dns-name-too-long"),
    "rdlength beyond end": (_header(an=1) + _rr(b"\x00", TYPE_A, V4, rdlength=100),
                            "dns-rdata-overrun"),
    "fixed fields cut": (_header(an=1) + b"\x00\x00\x01\x00", "dns-short"),
    "qdcount beyond end": (_count_plus_one(response(), 0), "dns-short"),
    "ancount beyond end": (_count_plus_one(srv_with_glue(), 1), "dns-short"),
    "nscount beyond end": (_count_plus_one(srv_with_glue(), 2), "dns-short"),
    "arcount beyond end": (_count_plus_one(srv_with_glue(), 3), "dns-short"),
    "question cut": (_header(qd=1) + b"\x00\x00\x21", "dns-short"),
    "a rdlength 5": (_header(an=1) + _rr(b"\x00", TYPE_A, V4 + b"\0"), "dns-bad-a"),
    "aaaa rdlength 4": (_header(an=1) + _rr(b"\x00", TYPE_AAAA, V4), "dns-bad-aaaa"),
    "srv too short": (_header(an=1) + _rr(b"\x00", TYPE_SRV, b"\0" * 6), "dns-bad-srv"),
    "srv target past rdata": (
        _header(an=1) + _rr(b"\x00", TYPE_SRV, b"\0" * 6 + _wire("a.test"), rdlength=8)
        + b"\0" * 10, "dns-bad-srv"),
    "srv junk after target": (
        _header(an=1) + _rr(b"\x00", TYPE_SRV, b"\0" * 6 + b"\x00junk"), "dns-bad-srv"),
    "cname junk after target": (
        _header(an=1) + _rr(b"\x00", TYPE_CNAME, _wire("a.test") + b"!"), "dns-bad-cname"),
}


@pytest.mark.parametrize("message,reason", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_messages_raise_malformed_with_their_reason(message: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as raised:
        parse_response(message)
    assert raised.value.reason == reason


@pytest.mark.parametrize("message", [
    srv_with_glue(),
    srv_with_glue(compress=False),
    response(qname="www.example.com", qtype="A", an=[cname("www.example.com", "b.example.com"),
                                                     a("b.example.com", "192.0.2.1"),
                                                     aaaa("b.example.com", "2001:db8::2")],
             ns=[DNSRR(rrname="example.com", type="NS", rdata="ns.example.com")]),
], ids=["compressed", "uncompressed", "cname"])
def test_every_truncation_raises_malformed(message: bytes) -> None:
    parse_response(message)
    for length in range(len(message)):
        with pytest.raises(Malformed):
            parse_response(message[:length])


def _parse_or_none(message: bytes) -> DnsResponse | None:
    """Parse, letting any exception but Malformed fail the test."""
    try:
        parsed = parse_response(message)
    except Malformed as error:
        assert error.reason.startswith("dns-")
        return None
    for record in parsed.answers + parsed.additional:
        assert record.name == "." or not record.name.endswith(".")
        if record.rtype == TYPE_A:
            assert isinstance(record.data, bytes) and len(record.data) == 4
        if record.rtype == TYPE_SRV:
            assert isinstance(record.data, SrvData)
    pick_srv(parsed.answers)
    addresses_for("a.test", parsed.answers + parsed.additional)
    return parsed


def test_fuzz_random_bytes_raise_only_malformed() -> None:
    rng = random.Random(0x5EED)
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 120))
        _parse_or_none(body)
        # Also with a plausible header, to get past the QR check and into the names.
        counts = struct.pack("!HHHH", *(rng.randrange(4) for _ in range(4)))
        _parse_or_none(b"\x12\x34\x81\x80" + counts + body)


def test_fuzz_mutations_of_valid_responses_raise_only_malformed() -> None:
    rng = random.Random(1035)
    seeds = [srv_with_glue(), srv_with_glue(compress=False),
             response(an=[srv("a.example.com", 1, 1, 1), srv("b.example.com", 2, 1, 2)],
                      ar=[a("a.example.com", "192.0.2.1"), aaaa("b.example.com", "::1")])]
    parsed_any = 0
    for _ in range(4000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 5)):
            what = rng.randrange(4)
            position = rng.randrange(len(raw))
            if what == 0:
                raw[position] = rng.randrange(256)
            elif what == 1:
                raw[position] ^= 1 << rng.randrange(8)
            elif what == 2:
                raw.insert(position, rng.choice((0xC0, 0x00, 0x3F, rng.randrange(256))))
            elif len(raw) > 1:
                del raw[position]
        if _parse_or_none(bytes(raw)) is not None:
            parsed_any += 1
    assert parsed_any > 0  # the mutations do not all break the frame, so the checks ran
