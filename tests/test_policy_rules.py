"""The --allow/--deny grammar: every form, name resolution, matching, round trips, refusals."""

from __future__ import annotations

import ipaddress

import pytest

from slirpy.policy.rules import Action, Rule, RuleError, format_rule, parse_rules

A, D = Action.ALLOW, Action.DENY
TCP, UDP, ICMP4, ICMP6 = 6, 17, 1, 58
ICMP = frozenset({1, 58})

NAMES: dict[str, list[str]] = {
    "example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "dual.test": ["192.0.2.1", "192.0.2.2", "192.0.2.1", "2001:db8::1"],  # a repeat
    "v6only.test": ["2001:db8::53"],
    "fqdn.test.": ["198.51.100.7"],
    "scoped.test": ["fe80::1%eth0"],
    "nothing.test": [],
}


def resolve(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if name not in NAMES:
        raise OSError(f"[Errno -2] Name or service not known: {name}")
    return [ipaddress.ip_address(a) for a in NAMES[name]]


def summary(rule: Rule) -> tuple[frozenset[int] | None, str, tuple[int, int] | None]:
    return (rule.protos, str(rule.network), rule.ports)


def p(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# --- valid specs ---

@pytest.mark.parametrize("text, expected", [
    ("1.2.3.4", [(None, "1.2.3.4/32", None)]),
    ("10.0.0.0/8", [(None, "10.0.0.0/8", None)]),
    ("0.0.0.0/0", [(None, "0.0.0.0/0", None)]),
    ("1.2.3.4:80", [(None, "1.2.3.4/32", (80, 80))]),
    ("10.0.0.0/8:443", [(None, "10.0.0.0/8", (443, 443))]),
    ("tcp://1.2.3.4", [(frozenset({6}), "1.2.3.4/32", None)]),
    ("tcp://1.2.3.4:1-65535", [(frozenset({6}), "1.2.3.4/32", (1, 65535))]),
    ("udp://192.168.0.0/16:53", [(frozenset({17}), "192.168.0.0/16", (53, 53))]),
    ("icmp://8.8.8.8", [(ICMP, "8.8.8.8/32", None)]),
    ("TCP://1.2.3.4:8000-8010", [(frozenset({6}), "1.2.3.4/32", (8000, 8010))]),
    ("Icmp://[::1]", [(ICMP, "::1/128", None)]),
    ("[::1]", [(None, "::1/128", None)]),
    ("[::1]:53", [(None, "::1/128", (53, 53))]),
    ("[::/0]", [(None, "::/0", None)]),
    ("[::]/0", [(None, "::/0", None)]),
    ("[2001:db8::/32]", [(None, "2001:db8::/32", None)]),
    ("[2001:db8::]/32", [(None, "2001:db8::/32", None)]),
    ("udp://[2001:db8::/32]:53", [(frozenset({17}), "2001:db8::/32", (53, 53))]),
    ("udp://[2001:db8::]/32:53-54", [(frozenset({17}), "2001:db8::/32", (53, 54))]),
    ("[::ffff:1.2.3.4]", [(None, "::ffff:102:304/128", None)]),
    ("[1.2.3.4]:80", [(None, "1.2.3.4/32", (80, 80))]),
    ("1.2.3.4/32:5-5", [(None, "1.2.3.4/32", (5, 5))]),
    ("tcp://1.2.3.4:80, udp://[::1]:53 ,icmp://9.9.9.0/24", [
        (frozenset({6}), "1.2.3.4/32", (80, 80)),
        (frozenset({17}), "::1/128", (53, 53)),
        (ICMP, "9.9.9.0/24", None)]),
    ("tcp://example.com:443", [
        (frozenset({6}), "93.184.215.14/32", (443, 443)),
        (frozenset({6}), "2606:2800:21f:cb07:6820:80da:af6b:8b2c/128", (443, 443))]),
    ("dual.test", [(None, "192.0.2.1/32", None), (None, "192.0.2.2/32", None),
                   (None, "2001:db8::1/128", None)]),
    ("icmp://v6only.test, 1.1.1.1", [(ICMP, "2001:db8::53/128", None),
                                     (None, "1.1.1.1/32", None)]),
    ("scoped.test", [(None, "fe80::1/128", None)]),
    ("udp://fqdn.test.:53", [(frozenset({17}), "198.51.100.7/32", (53, 53))]),
])
def test_valid(text: str, expected: list[tuple[object, ...]]) -> None:
    rules = parse_rules(A, text, resolve)
    assert [summary(r) for r in rules] == expected
    assert all(r.action is A for r in rules)


def test_text_is_each_item_as_written() -> None:
    rules = parse_rules(D, " tcp://dual.test:80 ,  [::1] ", resolve)
    assert [r.text for r in rules] == ["tcp://dual.test:80"] * 3 + ["[::1]"]
    assert all(r.action is D for r in rules)


@pytest.mark.parametrize("text, canonical", [
    ("1.2.3.4", "1.2.3.4"),
    ("1.2.3.4/32", "1.2.3.4"),
    ("TCP://10.0.0.0/8:80-80", "tcp://10.0.0.0/8:80"),
    ("udp://1.2.3.4:53-60", "udp://1.2.3.4:53-60"),
    ("icmp://[2001:db8::/32]", "icmp://[2001:db8::]/32"),
    ("[::1]/128:22", "[::1]:22"),
    ("[::/0]", "[::]/0"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_format_round_trip(text: str, canonical: str) -> None:
    (rule,) = parse_rules(A, text)
    assert format_rule(rule) == canonical
    (again,) = parse_rules(A, canonical)
    assert summary(again) == summary(rule)


# --- matching ---

def rule(text: str) -> Rule:
    (r,) = parse_rules(A, text)
    return r


@pytest.mark.parametrize("spec, proto, addr, port, expected", [
    # prefix boundaries
    ("10.0.0.0/8", TCP, "10.0.0.0", 1, True),
    ("10.0.0.0/8", TCP, "10.255.255.255", 1, True),
    ("10.0.0.0/8", TCP, "9.255.255.255", 1, False),
    ("10.0.0.0/8", TCP, "11.0.0.0", 1, False),
    ("192.168.4.0/23", UDP, "192.168.5.255", 9, True),
    ("192.168.4.0/23", UDP, "192.168.6.0", 9, False),
    ("1.2.3.4", TCP, "1.2.3.4", 80, True),
    ("1.2.3.4", TCP, "1.2.3.5", 80, False),
    ("0.0.0.0/0", TCP, "255.255.255.255", 1, True),
    ("[2001:db8::/32]", TCP, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 1, True),
    ("[2001:db8::/32]", TCP, "2001:db9::", 1, False),
    ("[2001:db8::/32]", TCP, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 1, False),
    ("[::/0]", UDP, "::", 1, True),
    ("[::/0]", UDP, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, True),
    # family mismatch, even for the match-everything networks and mapped addresses
    ("0.0.0.0/0", TCP, "::", 1, False),
    ("[::/0]", TCP, "1.2.3.4", 1, False),
    ("[::ffff:1.2.3.4]", TCP, "1.2.3.4", 1, False),
    ("1.2.3.4", TCP, "::ffff:1.2.3.4", 1, False),
    # port range boundaries
    ("tcp://1.2.3.4:80-90", TCP, "1.2.3.4", 79, False),
    ("tcp://1.2.3.4:80-90", TCP, "1.2.3.4", 80, True),
    ("tcp://1.2.3.4:80-90", TCP, "1.2.3.4", 90, True),
    ("tcp://1.2.3.4:80-90", TCP, "1.2.3.4", 91, False),
    ("tcp://1.2.3.4:443", TCP, "1.2.3.4", 443, True),
    ("tcp://1.2.3.4:443", TCP, "1.2.3.4", 444, False),
    ("tcp://1.2.3.4", TCP, "1.2.3.4", 65535, True),
    # protocols: a set, or None for every protocol
    ("tcp://1.2.3.4", UDP, "1.2.3.4", 80, False),
    ("udp://1.2.3.4", UDP, "1.2.3.4", 80, True),
    ("udp://1.2.3.4", TCP, "1.2.3.4", 80, False),
    ("1.2.3.4", TCP, "1.2.3.4", 80, True),
    ("1.2.3.4", UDP, "1.2.3.4", 80, True),
    ("1.2.3.4", ICMP4, "1.2.3.4", 0, True),
    ("1.2.3.4", 132, "1.2.3.4", 0, True),  # SCTP: every protocol means every one
    ("tcp://1.2.3.4", ICMP4, "1.2.3.4", 0, False),
    # icmp: ports ignored, ICMPv6 (58) matches icmp rules too
    ("icmp://1.2.3.4", ICMP4, "1.2.3.4", 0, True),
    ("icmp://1.2.3.4", ICMP4, "1.2.3.4", 12345, True),
    ("icmp://[::1]", ICMP6, "::1", 0, True),
    ("icmp://[::1]", ICMP6, "::2", 0, False),
    ("icmp://[::1]", TCP, "::1", 0, False),
    ("icmp://1.2.3.4", TCP, "1.2.3.4", 0, False),
    ("1.2.3.4:53", ICMP4, "1.2.3.4", 0, False),  # a rule with a port: never ICMP
    ("[::1]:53", ICMP6, "::1", 7, False),
    ("[::1]:53", UDP, "::1", 7, False),
])
def test_matches(spec: str, proto: int, addr: str, port: int, expected: bool) -> None:
    assert rule(spec).matches(proto, p(addr), port) is expected


def test_matches_rule_built_directly() -> None:
    r = Rule(D, frozenset({17}), ipaddress.IPv4Network("100.64.0.0/10"), (53, 53), "x")
    assert r.matches(17, p("100.127.255.255"), 53)
    assert not r.matches(17, p("100.128.0.0"), 53)
    assert r == Rule(D, frozenset({17}), ipaddress.IPv4Network("100.64.0.0/10"), (53, 53), "x")
    assert "_mask" not in repr(r)


def test_matches_wrong_length_address() -> None:
    assert not rule("0.0.0.0/0").matches(TCP, b"\0" * 5, 1)
    assert not rule("[::/0]").matches(TCP, b"", 1)


# --- refusals: every message names the bad part ---

@pytest.mark.parametrize("text, bad", [
    ("", "empty item 1"),
    ("   ", "empty item 1"),
    ("1.2.3.4,", "empty item 2"),
    (",1.2.3.4", "empty item 1"),
    ("1.2.3.4, ,5.6.7.8", "empty item 2"),
    ("sctp://1.2.3.4", "'sctp'"),
    ("://1.2.3.4", "unknown protocol ''"),
    ("tcp:/1.2.3.4", "'tcp:/'"),
    ("tcp://", "missing host"),
    ("tcp://:80", "missing host"),
    ("/8", "missing host"),
    ("1.2.3", "'1.2.3'"),
    ("1.2.3.256", "'1.2.3.256'"),
    ("1.2.3.4.5", "'1.2.3.4.5'"),
    ("2001:db8::1", "[2001:db8::1]"),
    ("tcp://2001:db8::/32", "[2001:db8::/32]"),
    ("2001:db8::/32:80", "'2001:db8::/32:80'"),
    ("::1", "[::1]"),
    ("1.2.3.4:80:90", "too many ':'"),
    ("[2001:db8::1", "unclosed '['"),
    ("2001:db8::1]", "misplaced bracket"),
    ("x[::1]", "misplaced bracket"),
    ("[::1]80", "'80'"),
    ("[example.com]", "'example.com'"),
    ("[1:2:3]", "'1:2:3'"),
    ("[1.2.3]", "'1.2.3'"),
    ("[::1/64]/64", "two prefixes"),
    ("[fe80::1%eth0]", "'fe80::1%eth0'"),
    ("[fe80::%eth0/64]", "'fe80::%eth0'"),
    ("[]:80", "missing host in '[]:80'"),
    ("1.2.3.4/33", "'/33'"),
    ("1.2.3.4/-1", "'/-1'"),
    ("1.2.3.4/", "'/'"),
    ("1.2.3.4/x", "'/x'"),
    ("[::1]/129", "'/129'"),
    ("[::1/129]", "'/129'"),
    ("1.2.3.4/٣", "'/٣'"),
    ("example.com/24", "'example.com/24'"),
    ("10.1.2.3/8", "'10.1.2.3/8'"),
    ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
    ("[2001:db8::1/32]", "did you mean [2001:db8::/32]?"),
    ("1.2.3.4:0", "'0'"),
    ("1.2.3.4:65536", "'65536'"),
    ("1.2.3.4:http", "'http'"),
    ("1.2.3.4:", "missing port after ':' in '1.2.3.4:'"),
    ("1.2.3.4:80-10", "'80-10'"),
    ("1.2.3.4:80-", "'80-'"),
    ("1.2.3.4:-80", "'-80'"),
    ("1.2.3.4:1-2-3", "'2-3'"),
    ("1.2.3.4:0-80", "'0'"),
    ("1.2.3.4: 80", "' 80'"),
    ("icmp://1.2.3.4:80", "':80'"),
    ("icmp://[::1]:1-2", "':1-2'"),
    ("unknown.test", "cannot resolve 'unknown.test'"),
    ("nothing.test", "cannot resolve 'nothing.test'"),
    ("*", "'*'"),
    ("tcp://*:80", "'*'"),
    ("exa_mple.com", "'exa_mple.com'"),
    ("a..b", "'a..b'"),
    ("1.2.3.4, bad!host", "'bad!host'"),
])
def test_refused(text: str, bad: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules(A, text, resolve)
    assert bad in str(info.value)


def test_exact_messages() -> None:
    with pytest.raises(RuleError, match=r"^bad port range '80-10' in 'tcp://1\.2\.3\.4:80-10': "
                                        r"the first port is above the last$"):
        parse_rules(A, "tcp://1.2.3.4:80-10")
    with pytest.raises(RuleError, match=r"^cannot resolve 'example\.com': no resolver$"):
        parse_rules(A, "example.com")
    with pytest.raises(RuleError, match=r"cannot resolve 'unknown\.test': .*not known"):
        parse_rules(A, "unknown.test", resolve)
    with pytest.raises(RuleError, match=r"\*.*not supported.*0\.0\.0\.0/0"):
        parse_rules(A, "*")


def test_rule_error_is_value_error() -> None:
    assert issubclass(RuleError, ValueError)
