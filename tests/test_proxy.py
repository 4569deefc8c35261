"""PROXY protocol v1/v2 and SPP headers (slirpy.wire.proxy)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from slirpy.wire.proxy import (
    MAX_V2_LEN, SPP_HEADER_LEN, V1_MAX_LEN, ProxyHeader, SppHeader, build_proxy_v1,
    build_proxy_v2, build_spp, parse_proxy_header, parse_spp,
)
from slirpy.wire import Malformed

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # typed from the spec, section 2.2


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header assembled field by field, independently of the module's builder."""
    n = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam, n >> 8, n & 0xFF]) + body


def parses_to(data: bytes) -> ProxyHeader:
    header = parse_proxy_header(data)
    assert header is not None
    return header


def reason(data: bytes | bytearray | memoryview) -> str:
    with pytest.raises(Malformed) as caught:
        parse_proxy_header(data)
    return caught.value.reason


# --- v1 -------------------------------------------------------------------------------

def test_v1_round_trip_ipv4() -> None:
    line = build_proxy_v1(("192.0.2.1", 56324), ("198.51.100.7", 443))
    assert line == b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
    assert parses_to(line + b"GET / HTTP/1.1\r\n") == ProxyHeader(
        len(line), (packed("192.0.2.1"), 56324), (packed("198.51.100.7"), 443))


def test_v1_round_trip_ipv6() -> None:
    line = build_proxy_v1(("2001:db8::1", 0), ("2001:db8::ff", 65535))
    assert line == b"PROXY TCP6 2001:db8::1 2001:db8::ff 0 65535\r\n"
    assert parses_to(line) == ProxyHeader(
        len(line), (packed("2001:db8::1"), 0), (packed("2001:db8::ff"), 65535))


def test_v1_longest_lines() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    unknown = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX_LEN == 107  # the spec's worst case
    assert parses_to(unknown) == ProxyHeader(107, None, None)
    tcp6 = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert parses_to(tcp6).source == (b"\xff" * 16, 65535)


def test_v1_unknown() -> None:
    assert parses_to(b"PROXY UNKNOWN\r\nrest") == ProxyHeader(15, None, None)
    line = b"PROXY UNKNOWN whatever \xff\n here\r\n"
    assert parses_to(line + b"\r\n") == ProxyHeader(len(line), None, None)


def test_v1_ipv4_mapped_source_is_ipv4() -> None:
    line = b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1000 80\r\n"
    header = parses_to(line)
    assert header.source == (packed("192.0.2.1"), 1000)
    assert header.destination == (packed("2001:db8::2"), 80)


V1_MALFORMED: list[tuple[bytes, str]] = [
    (b"PROXY\r\n", "proxy-bad-signature"),
    (b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-bad-signature"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-bad-signature"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-v1-bad-protocol"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-v1-bad-protocol"),
    (b"PROXY UNKNOWNX\r\n", "proxy-v1-bad-protocol"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-v1-bad-protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "proxy-v1-bad-fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "proxy-v1-bad-fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "proxy-v1-bad-fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "proxy-v1-bad-fields"),
    (b"PROXY TCP4\r\n", "proxy-v1-bad-fields"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP4 1.2.3.4 example.com 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP4 1.2.3.\xb4 5.6.7.8 1 2\r\n", "proxy-v1-bad-address"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", "proxy-v1-wrong-family"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "proxy-v1-wrong-family"),
    (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "proxy-v1-wrong-family"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "proxy-v1-bad-port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "proxy-v1-bad-port"),
]


@pytest.mark.parametrize(("data", "expected"), V1_MALFORMED)
def test_v1_malformed(data: bytes, expected: str) -> None:
    assert reason(data) == expected


def test_v1_line_without_crlf_too_long() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (108 - 14)
    assert len(line) == 108
    assert reason(line) == "proxy-v1-too-long"
    assert reason(line[:107]) == "proxy-v1-too-long"  # no room left for the CRLF
    assert parse_proxy_header(line[:106]) is None  # "\r\n" could still end it at 107
    assert reason(line[:106] + b"\r\n") == "proxy-v1-too-long"  # 108 bytes with the CRLF


def test_v1_invalid_prefix_fails_early() -> None:
    """A line that can no longer become valid is refused before its CRLF arrives."""
    for data, expected in [
        (b"PROXY TCP7", "proxy-v1-bad-protocol"),
        (b"PROXY TCP4 1.2.3.4.", "proxy-v1-bad-address"),
        (b"PROXY TCP4 300", "proxy-v1-bad-address"),
        (b"PROXY TCP4 1.2.3.4 ::", "proxy-v1-bad-address"),
        (b"PROXY TCP4 ::1 ", "proxy-v1-wrong-family"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000", "proxy-v1-bad-port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "proxy-v1-bad-fields"),
        (b"PROXY TCP4  ", "proxy-v1-bad-fields"),
        (b"PROXY TCP6 g", "proxy-v1-bad-address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r", "proxy-v1-bad-fields"),
    ]:
        assert reason(data) == expected, data


# --- v2 -------------------------------------------------------------------------------

def test_v2_ipv4_matches_hand_encoding() -> None:
    header = build_proxy_v2(("192.0.2.1", 12345), ("198.51.100.2", 443))
    assert header == bytes.fromhex(
        "0d0a0d0a000d0a515549540a" "21" "11" "000c" "c0000201" "c6336402" "3039" "01bb")
    assert parses_to(header + b"payload") == ProxyHeader(
        28, (packed("192.0.2.1"), 12345), (packed("198.51.100.2"), 443))


def test_v2_ipv6_matches_hand_encoding() -> None:
    header = build_proxy_v2(("2001:db8::1", 1), ("2001:db8::2", 65535))
    body = packed("2001:db8::1") + packed("2001:db8::2") + b"\x00\x01\xff\xff"
    assert header == v2(0x21, 0x21, body)
    assert len(header) == 16 + 36
    assert parses_to(header) == ProxyHeader(
        52, (packed("2001:db8::1"), 1), (packed("2001:db8::2"), 65535))


def test_v2_udp_families() -> None:
    body4 = packed("10.0.0.1") + packed("10.0.0.2") + b"\x00\x35\x00\x35"
    assert parses_to(v2(0x21, 0x12, body4)).source == (packed("10.0.0.1"), 53)
    body6 = packed("::1") + packed("::2") + b"\x00\x35\x00\x35"
    assert parses_to(v2(0x21, 0x22, body6)).destination == (packed("::2"), 53)


def test_v2_ipv4_mapped_source_is_ipv4() -> None:
    header = build_proxy_v2(("::ffff:192.0.2.9", 7), ("2001:db8::2", 8))
    assert parses_to(header).source == (packed("192.0.2.9"), 7)


def test_v2_tlvs_are_skipped() -> None:
    tlvs = bytes([0x02, 0x00, 0x0B]) + b"example.com" + bytes([0x04, 0x00, 0x00])
    tlvs += bytes([0x01, 0x00, 0x02]) + b"h2"
    header = build_proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs)
    assert len(header) == 16 + 12 + len(tlvs)
    parsed = parses_to(header + b"\x16\x03\x01")
    assert parsed == ProxyHeader(len(header), (packed("192.0.2.1"), 1), (packed("192.0.2.2"), 2))


def test_v2_local_unspec_unix_have_no_addresses() -> None:
    assert parses_to(v2(0x20, 0x00, b"")) == ProxyHeader(16, None, None)
    # LOCAL ignores the family byte and whatever the block holds.
    assert parses_to(v2(0x20, 0x11, b"\x00" * 5)) == ProxyHeader(21, None, None)
    assert parses_to(v2(0x20, 0x99, b"")) == ProxyHeader(16, None, None)
    assert parses_to(v2(0x21, 0x00, b"")) == ProxyHeader(16, None, None)
    assert parses_to(v2(0x21, 0x00, b"junk")) == ProxyHeader(20, None, None)
    unix = b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")
    assert parses_to(v2(0x21, 0x31, unix)) == ProxyHeader(16 + 216, None, None)
    assert parses_to(v2(0x21, 0x32, unix)) == ProxyHeader(16 + 216, None, None)


def test_v2_longest_accepted() -> None:
    body = packed("192.0.2.1") + packed("192.0.2.2") + b"\x00\x01\x00\x02"
    noop = MAX_V2_LEN - 16 - 12 - 3
    longest = v2(0x21, 0x11, body + bytes([0x04, noop >> 8, noop & 0xFF]) + b"\x00" * noop)
    assert len(longest) == MAX_V2_LEN == 4096 + 16
    assert parses_to(longest).length == MAX_V2_LEN


V4_BODY = bytes(12)
V6_BODY = bytes(36)
V2_MALFORMED: list[tuple[bytes, str]] = [
    (SIG[:5] + b"\x01", "proxy-bad-signature"),
    (SIG[:11] + b"\x0b\x21\x11\x00\x0c" + V4_BODY, "proxy-bad-signature"),
    (v2(0x11, 0x11, V4_BODY), "proxy-v2-bad-version"),
    (v2(0x31, 0x11, V4_BODY), "proxy-v2-bad-version"),
    (v2(0x01, 0x11, V4_BODY), "proxy-v2-bad-version"),
    (v2(0x22, 0x11, V4_BODY), "proxy-v2-bad-command"),
    (v2(0x2F, 0x11, V4_BODY), "proxy-v2-bad-command"),
    (v2(0x21, 0x13, V4_BODY), "proxy-v2-bad-family"),
    (v2(0x21, 0x10, V4_BODY), "proxy-v2-bad-family"),
    (v2(0x21, 0x41, V4_BODY), "proxy-v2-bad-family"),
    (v2(0x21, 0x11, bytes(11)), "proxy-v2-short-address"),
    (v2(0x21, 0x21, V4_BODY), "proxy-v2-short-address"),
    (v2(0x21, 0x31, bytes(215)), "proxy-v2-short-address"),
    (v2(0x21, 0x11, b"", length=MAX_V2_LEN - 15), "proxy-v2-too-long"),
    (v2(0x20, 0x00, b"", length=0xFFFF), "proxy-v2-too-long"),
    (v2(0x21, 0x11, V4_BODY + b"\x01\x00"), "proxy-v2-bad-tlv"),
    (v2(0x21, 0x11, V4_BODY + b"\x01\x00\x05abcd"), "proxy-v2-bad-tlv"),
    (v2(0x21, 0x21, V6_BODY + b"\x04\x00\x00\x04"), "proxy-v2-bad-tlv"),
]


@pytest.mark.parametrize(("data", "expected"), V2_MALFORMED)
def test_v2_malformed(data: bytes, expected: str) -> None:
    assert reason(data) == expected


def test_v2_header_errors_come_before_the_body() -> None:
    """Version, command, family and length are judged as soon as they arrive."""
    assert reason(SIG + b"\x11") == "proxy-v2-bad-version"
    assert reason(SIG + b"\x23") == "proxy-v2-bad-command"
    assert reason(SIG + b"\x21\x55") == "proxy-v2-bad-family"
    assert reason(SIG + b"\x21\x21\x00\x0c") == "proxy-v2-short-address"
    assert reason(SIG + b"\x21\x11\x10\x01") == "proxy-v2-too-long"


# --- prefixes and garbage ---------------------------------------------------------------

VALID_HEADERS: list[bytes] = [
    build_proxy_v1(("192.0.2.1", 56324), ("198.51.100.7", 443)),
    build_proxy_v1(("2001:db8::1", 0), ("2001:db8::ff", 65535)),
    b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1000 80\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN some thing\r\n",
    b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
    build_proxy_v2(("192.0.2.1", 12345), ("198.51.100.2", 443)),
    build_proxy_v2(("2001:db8::1", 1), ("2001:db8::2", 2), tlvs=b"\x04\x00\x02\x00\x00"),
    v2(0x20, 0x00, b""),
    v2(0x20, 0x00, b"ignored"),
    v2(0x21, 0x00, b""),
]


@pytest.mark.parametrize("header", VALID_HEADERS)
def test_every_proper_prefix_is_incomplete(header: bytes) -> None:
    expected = parses_to(header)
    assert expected.length == len(header)
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None, header[:n]
        assert parse_proxy_header(bytearray(header[:n])) is None
    for trailer in (b"", b"x", b"\r\n", b"PROXY TCP4 garbage\r\n", bytes(64)):
        assert parse_proxy_header(header + trailer) == expected
        assert parse_proxy_header(memoryview(header + trailer)) == expected


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x00", b" PROXY TCP4", b"\n",
])
def test_garbage_is_refused_immediately(data: bytes) -> None:
    assert reason(data) == "proxy-bad-signature"
    assert reason(data[:1]) == "proxy-bad-signature"


def test_prefixes_are_monotonic_under_mutation() -> None:
    """Random corruptions: once refused a stream stays refused, once parsed it stays put,
    and nothing but Malformed ever escapes."""
    rng = random.Random(0x5EED)
    alphabet = b"PROXY TCP46UNKOW0123456789.:abcdef\r\n\x00\xff"
    for _ in range(400):
        data = bytearray(rng.choice(VALID_HEADERS))
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[position] = rng.choice(alphabet)
            elif action == 1:
                del data[position]
            else:
                data.insert(position, rng.choice(alphabet))
        state: ProxyHeader | str | None = None
        for n in range(len(data) + 1):
            try:
                result: ProxyHeader | str | None = parse_proxy_header(data[:n])
            except Malformed as error:
                result = "malformed:" + error.reason
            if isinstance(state, str):
                assert isinstance(result, str), (bytes(data), n)
            elif state is not None:
                assert result == state, (bytes(data), n)
            if isinstance(result, ProxyHeader):
                assert 0 < result.length <= n
            state = result


def test_builders_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_proxy_v1(("192.0.2.1", 1), ("::1", 2))
    with pytest.raises(ValueError):
        build_proxy_v2(("192.0.2.1", 70000), ("192.0.2.2", 2))
    with pytest.raises(ValueError):
        build_proxy_v1(("not an address", 1), ("192.0.2.2", 2))
    with pytest.raises(ValueError):
        build_proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=bytes(MAX_V2_LEN))


# --- SPP ------------------------------------------------------------------------------

def test_spp_ipv4_client_matches_hand_encoding() -> None:
    header = SppHeader((packed("192.0.2.1"), 5353), (packed("198.51.100.2"), 53))
    encoded = build_spp(header)
    assert len(encoded) == SPP_HEADER_LEN == 38
    assert encoded == bytes.fromhex(
        "56ec" "00000000000000000000ffffc0000201" "00000000000000000000ffffc6336402"
        "14e9" "0035")
    parsed, payload = parse_spp(encoded + b"query")
    assert parsed == header
    assert bytes(payload) == b"query"


def test_spp_ipv6_client_round_trip() -> None:
    header = SppHeader((packed("2001:db8::1"), 65535), (packed("2001:db8::53"), 0))
    datagram = build_spp(header) + b"\x00\x01"
    parsed, payload = parse_spp(bytearray(datagram))
    assert parsed == header
    assert isinstance(payload, memoryview) and bytes(payload) == b"\x00\x01"


def test_spp_empty_payload_and_views() -> None:
    header = SppHeader((packed("10.1.2.3"), 1), (packed("::1"), 2))
    parsed, payload = parse_spp(memoryview(build_spp(header)))
    assert parsed == header and len(payload) == 0


def test_spp_reply_header_reproduces_request_header() -> None:
    """What slirpnetstack sends back is the request's 38 bytes, verbatim."""
    rng = random.Random(38)
    for _ in range(200):
        raw = b"\x56\xec" + bytes(rng.randrange(256) for _ in range(36))
        if rng.random() < 0.5:
            raw = raw[:2] + b"\x00" * 10 + b"\xff\xff" + raw[14:]
        header, _ = parse_spp(raw)
        assert build_spp(header) == raw


def test_spp_short_and_bad_magic() -> None:
    good = build_spp(SppHeader((packed("192.0.2.1"), 1), (packed("192.0.2.2"), 2)))
    for n in range(SPP_HEADER_LEN):
        with pytest.raises(Malformed) as caught:
            parse_spp(good[:n])
        assert caught.value.reason == "spp-short"
    for magic in (b"\xec\x56", b"\x00\x00", b"\x56\xed"):
        with pytest.raises(Malformed) as caught:
            parse_spp(magic + good[2:] + b"payload")
        assert caught.value.reason == "spp-bad-magic"


def test_spp_build_refuses_bad_addresses() -> None:
    with pytest.raises(ValueError):
        build_spp(SppHeader((b"\x01\x02\x03", 1), (packed("192.0.2.2"), 2)))
    with pytest.raises(ValueError):
        build_spp(SppHeader((packed("192.0.2.1"), 65536), (packed("192.0.2.2"), 2)))
