"""The -L/-R grammar: every form, its defaults, SRV targets, round trips and refusals."""

from __future__ import annotations

import ipaddress

import pytest

from slirpy.forward.spec import (MAX_RANGE, Forward, ForwardError, Kind, LocalForward, Proto,
                                 RemoteForward, SrvForward, SrvName, parse_forward)

GUEST = ipaddress.IPv4Address("10.0.2.100")
GATEWAY = ipaddress.IPv4Address("10.0.2.2")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
L, R = Kind.LOCAL, Kind.REMOTE


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def parse(kind: Kind, text: str) -> list[Forward]:
    return parse_forward(kind, text, guest=GUEST, gateway=GATEWAY)


def one(kind: Kind, text: str) -> Forward:
    (fwd,) = parse(kind, text)
    return fwd


def summary(fwd: Forward) -> tuple[str, str, int, str, int]:
    return (fwd.proto.value, str(fwd.bind), fwd.bind_port, str(fwd.target), fwd.target_port)


# --- the forms, 1 to 4 parts ---

@pytest.mark.parametrize("kind, text, expected", [
    # one part: the bind port; everything else defaults
    (L, "8080", ("tcp", "127.0.0.1", 8080, "10.0.2.100", 8080)),
    (R, "9000", ("tcp", "10.0.2.2", 9000, "127.0.0.1", 9000)),
    # two parts: bind_port:target_port, unless the first is an address
    (L, "8080:80", ("tcp", "127.0.0.1", 8080, "10.0.2.100", 80)),
    (L, "0.0.0.0:8080", ("tcp", "0.0.0.0", 8080, "10.0.2.100", 8080)),
    (L, "[::1]:8080", ("tcp", "::1", 8080, "10.0.2.100", 8080)),
    (L, "[::]:8080", ("tcp", "::", 8080, "10.0.2.100", 8080)),
    (R, "9000:8000", ("tcp", "10.0.2.2", 9000, "127.0.0.1", 8000)),
    (R, "10.0.2.50:9000", ("tcp", "10.0.2.50", 9000, "127.0.0.1", 9000)),
    # three parts: bind_ip:bind_port:target_port, or bind_port:target_ip:target_port
    (L, "127.0.0.2:8080:80", ("tcp", "127.0.0.2", 8080, "10.0.2.100", 80)),
    (L, "[::1]:8080:80", ("tcp", "::1", 8080, "10.0.2.100", 80)),
    (L, "8080:10.0.2.15:80", ("tcp", "127.0.0.1", 8080, "10.0.2.15", 80)),
    (R, "10.0.2.50:9000:8000", ("tcp", "10.0.2.50", 9000, "127.0.0.1", 8000)),
    (R, "9000:192.0.2.1:8000", ("tcp", "10.0.2.2", 9000, "192.0.2.1", 8000)),
    # four parts
    (L, "0.0.0.0:8080:10.0.2.15:80", ("tcp", "0.0.0.0", 8080, "10.0.2.15", 80)),
    (L, "[::1]:8080:[fd00::5]:80", ("tcp", "::1", 8080, "fd00::5", 80)),
    (R, "10.0.2.50:9000:192.0.2.1:8000", ("tcp", "10.0.2.50", 9000, "192.0.2.1", 8000)),
    (R, "10.0.2.50:9000:[2001:db8::1]:8000", ("tcp", "10.0.2.50", 9000, "2001:db8::1", 8000)),
    # empty parts take the defaults
    (L, ":8080::80", ("tcp", "127.0.0.1", 8080, "10.0.2.100", 80)),
    (R, ":9000::8000", ("tcp", "10.0.2.2", 9000, "127.0.0.1", 8000)),
    (L, "8080:10.0.2.15:", ("tcp", "127.0.0.1", 8080, "10.0.2.15", 8080)),
    # bind port 0 (any free port) is for local forwards, with a target port
    (L, "0:80", ("tcp", "127.0.0.1", 0, "10.0.2.100", 80)),
    # protocols
    (L, "tcp://8080", ("tcp", "127.0.0.1", 8080, "10.0.2.100", 8080)),
    (L, "udp://5353:53", ("udp", "127.0.0.1", 5353, "10.0.2.100", 53)),
    (L, "udpspp://5353:53", ("udpspp", "127.0.0.1", 5353, "10.0.2.100", 53)),
    (L, "udprpc://0.0.0.0:5353:53", ("udprpc", "0.0.0.0", 5353, "10.0.2.100", 53)),
    (L, "tcppp://8080:80", ("tcppp", "127.0.0.1", 8080, "10.0.2.100", 80)),
    (R, "udp://10.0.2.3:5353:192.0.2.53:53", ("udp", "10.0.2.3", 5353, "192.0.2.53", 53)),
])
def test_forms_and_defaults(kind: Kind, text: str,
                            expected: tuple[str, str, int, str, int]) -> None:
    fwd = one(kind, text)
    assert fwd.kind is kind
    assert summary(fwd) == expected


@pytest.mark.parametrize("kind, text, kind_type, guest_side", [
    (L, "8080:80", LocalForward, "10.0.2.100"),  # a local forward's target is in the guest
    (L, "[::1]:8080:[fd00::5]:80", LocalForward, "fd00::5"),
    (R, "9000:8000", RemoteForward, "10.0.2.2"),  # a remote forward's bind is
    (R, "[fd00::2]:53:[::1]:53", RemoteForward, "fd00::2"),
    (R, "9000:[svc.example@srv-[2001:db8::53]]:0", SrvForward, "10.0.2.2"),
])
def test_each_forward_has_the_type_that_says_which_way_it_goes(
        kind: Kind, text: str, kind_type: type[Forward], guest_side: str) -> None:
    fwd = one(kind, text)
    assert type(fwd) is kind_type and fwd.kind is kind
    assert fwd.guest_side == ip(guest_side)


def test_targets_are_typed_by_the_forward() -> None:
    match one(L, "8080:80"):
        case LocalForward(target=ipaddress.IPv4Address() as target):
            assert target == GUEST
        case other:
            pytest.fail(f"not a local forward to an address: {other!r}")
    match one(R, "9000:[svc.example@srv-192.0.2.53]:0"):
        case SrvForward(target=SrvName(name="svc.example")):
            pass
        case other:
            pytest.fail(f"not an SRV forward: {other!r}")


def test_forwards_are_values() -> None:
    assert one(L, "8080:80") == LocalForward(Proto.TCP, LOOPBACK, 8080, GUEST, 80)
    assert one(R, "9000:8000") == RemoteForward(Proto.TCP, GATEWAY, 9000, LOOPBACK, 8000)
    # the same fields, another way: not equal
    assert LocalForward(Proto.TCP, GATEWAY, 9000, LOOPBACK, 8000) != \
        RemoteForward(Proto.TCP, GATEWAY, 9000, LOOPBACK, 8000)
    assert len({one(L, "8080:80"), one(L, "8080:80")}) == 1


def test_defaults_follow_the_network() -> None:
    guest, gateway = ip("192.168.7.100"), ip("192.168.7.2")
    (local,) = parse_forward(L, "8080", guest=guest, gateway=gateway)
    (remote,) = parse_forward(R, "9000", guest=guest, gateway=gateway)
    assert (local.bind, local.target) == (LOOPBACK, guest)
    assert (remote.bind, remote.target) == (gateway, LOOPBACK)


@pytest.mark.parametrize("proto, transport", [
    (Proto.TCP, "tcp"), (Proto.TCPPP, "tcp"),
    (Proto.UDP, "udp"), (Proto.UDPSPP, "udp"), (Proto.UDPRPC, "udp"),
])
def test_transport_of_each_protocol(proto: Proto, transport: str) -> None:
    fwd = one(L, f"{proto}://8080:80")
    assert fwd.proto is proto
    assert fwd.transport == proto.transport == transport


# --- ranges ---

@pytest.mark.parametrize("kind, text, expected", [
    (L, "8000-8002", [(8000, 8000), (8001, 8001), (8002, 8002)]),
    (L, "8000-8002:9000-9002", [(8000, 9000), (8001, 9001), (8002, 9002)]),
    (L, "udp://127.0.0.1:5000-5001:10.0.2.15:6000-6001", [(5000, 6000), (5001, 6001)]),
    (R, "9000-9001:192.0.2.1:80-81", [(9000, 80), (9001, 81)]),
    (L, "tcppp://8000-8002:0", [(8000, 0), (8001, 0), (8002, 0)]),
    (L, "7-7:9-9", [(7, 9)]),
])
def test_ranges_expand_port_by_port(kind: Kind, text: str,
                                    expected: list[tuple[int, int]]) -> None:
    forwards = parse(kind, text)
    assert [(f.bind_port, f.target_port) for f in forwards] == expected
    assert len({(f.proto, f.bind, f.target) for f in forwards}) == 1


def test_longest_range_is_accepted() -> None:
    forwards = parse(L, f"1-{MAX_RANGE}")
    assert len(forwards) == MAX_RANGE
    assert (forwards[0].bind_port, forwards[-1].bind_port) == (1, MAX_RANGE)


# --- port 0 towards the guest ---

def test_tcppp_takes_guest_port_zero() -> None:
    fwd = one(L, "tcppp://8080:0")
    assert (fwd.proto, fwd.target_port) == (Proto.TCPPP, 0)


@pytest.mark.parametrize("proto", ["tcp", "udp", "udpspp", "udprpc"])
def test_other_protocols_refuse_guest_port_zero(proto: str) -> None:
    with pytest.raises(ForwardError, match="target port 0 is not allowed"):
        parse(L, f"{proto}://8080:0")


# --- SRV targets ---

@pytest.mark.parametrize("text, name, server, port, target_port", [
    ("9000:[_http._tcp.example.com@srv-192.0.2.53]:0",
     "_http._tcp.example.com", "192.0.2.53", 53, 0),
    ("9000:[_http._tcp.example.com@srv-192.0.2.53:5353]:0",
     "_http._tcp.example.com", "192.0.2.53", 5353, 0),
    ("9000:[svc.Example.COM.@srv-192.0.2.53]:0", "svc.example.com", "192.0.2.53", 53, 0),
    ("9000:[svc.example@srv-[2001:db8::53]:5353]:0", "svc.example", "2001:db8::53", 5353, 0),
    ("9000:[svc.example@srv-192.0.2.53]:", "svc.example", "192.0.2.53", 53, 0),
    ("9000:[svc.example@srv-192.0.2.53]:8000", "svc.example", "192.0.2.53", 53, 8000),
])
def test_srv_targets(text: str, name: str, server: str, port: int, target_port: int) -> None:
    fwd = one(R, text)
    assert fwd.target == SrvName(name, ip(server), port)
    assert fwd.target_port == target_port
    assert (fwd.bind, fwd.bind_port) == (GATEWAY, 9000)


def test_srv_target_with_a_bind_range_gives_each_port_zero() -> None:
    forwards = parse(R, "udp://10.0.2.50:9000-9002:[svc.example@srv-192.0.2.53]:0")
    assert [(f.bind_port, f.target_port) for f in forwards] == [(9000, 0), (9001, 0), (9002, 0)]
    assert all(type(f) is SrvForward and f.proto is Proto.UDP for f in forwards)


@pytest.mark.parametrize("srv, text", [
    (SrvName("svc.example", ip("192.0.2.53")), "[svc.example@srv-192.0.2.53:53]"),
    (SrvName("svc.example", ip("2001:db8::53"), 5353), "[svc.example@srv-[2001:db8::53]:5353]"),
])
def test_srv_name_text(srv: SrvName, text: str) -> None:
    assert str(srv) == text


# --- spec() round trips ---

@pytest.mark.parametrize("kind, text", [
    (L, "8080"), (L, "0.0.0.0:8080:80"), (L, "0:80"), (L, "[::1]:8080:[fd00::5]:80"),
    (L, "udp://5353:53"), (L, "udpspp://5353:53"), (L, "udprpc://5353:53"),
    (L, "tcppp://8080:0"), (L, "8000-8003:9000-9003"),
    (R, "9000"), (R, "10.0.2.50:9000:192.0.2.1:8000"), (R, "udp://10.0.2.3:53:192.0.2.53:53"),
    (R, "9000:[_http._tcp.example.com@srv-192.0.2.53]:0"),
    (R, "9000:[_http._tcp.example.com@srv-192.0.2.53:5353]:0"),
    (R, "9000:[svc.example@srv-[2001:db8::53]:5353]:8000"),
])
def test_spec_parses_back_to_the_same_forward(kind: Kind, text: str) -> None:
    forwards = parse(kind, text)
    assert forwards
    for fwd in forwards:
        assert parse(kind, fwd.spec()) == [fwd]


@pytest.mark.parametrize("kind, text, spec", [
    (L, "8080", "tcp://127.0.0.1:8080:10.0.2.100:8080"),
    (L, "[::1]:8080:80", "tcp://[::1]:8080:10.0.2.100:80"),
    (R, "9000:[svc.example@srv-192.0.2.53]:0",
     "tcp://10.0.2.2:9000:[svc.example@srv-192.0.2.53:53]:0"),
])
def test_spec_text_is_canonical(kind: Kind, text: str, spec: str) -> None:
    assert one(kind, text).spec() == spec


# --- refusals: each names the bad part ---

@pytest.mark.parametrize("kind, text, message", [
    (L, "sctp://80", "unknown protocol 'sctp'"),
    (L, "TCP://80", "unknown protocol 'TCP'"),
    (L, "://80", "unknown protocol ''"),
    (L, "http", "bind port must be a port number 0-65535 or a range, not 'http'"),
    (L, "", "bind port must be a port number"),
    (L, "-80", "bind port must be a port number 0-65535 or a range, not '-80'"),
    (L, "+80", "bind port must be a port number 0-65535 or a range, not '+80'"),
    (L, "8080:abc", "target port must be a port number 0-65535 or a range, not 'abc'"),
    (L, "70000", "bind port must be a port number 0-65535 or a range, not '70000'"),
    (L, "80:70000", "target port must be a port number 0-65535 or a range, not '70000'"),
    (L, "80-70000", "not '80-70000'"),
    (L, "\uff18\uff10", "bind port must be a port number"),  # full-width digits
    (L, "8010-8000", "bind port range '8010-8000' ends before it starts"),
    (L, "80:90-85", "target port range '90-85' ends before it starts"),
    (L, "0-5", "bind port 0 is not allowed here"),
    (R, "0:80", "bind port 0 is not allowed here"),
    (L, "0", "bind port 0 needs an explicit target port"),
    (L, "8000-8002:90-91", "port ranges differ in length: 8000-8002 and 90-91"),
    (L, "8000:90-91", "port ranges differ in length: 8000 and 90-91"),
    (L, f"1-{MAX_RANGE + 1}", f"bind port range '1-{MAX_RANGE + 1}' is longer than "
                              f"{MAX_RANGE} ports"),
    (L, "[::1:8080", "unbalanced '['"),
    (L, "::1]:8080", "unbalanced ']'"),
    (R, "9000:[svc@srv-192.0.2.53:0", "unbalanced '['"),
    (L, "1:2:3:4:5", "too many ':' parts in '1:2:3:4:5'"),
    (L, "::1:8080", "bind port must be a port number 0-65535 or a range, not ''"),  # no []
    (L, "x:80:10.0.2.100:80", "bind address is not an IP address: 'x'"),
    (L, "8080:host.example:80", "target address is not an IP address: 'host.example'"),
    (R, "tcppp://80", "protocol tcppp is for local forwards only"),
    (R, "udpspp://80", "protocol udpspp is for local forwards only"),
    (R, "udprpc://80", "protocol udprpc is for local forwards only"),
    (L, "8080:[svc@srv-192.0.2.53]:0", "SRV targets are for remote forwards only"),
    (R, "9000:[@srv-192.0.2.53]:0", "an SRV target is NAME@srv-DNSSERVER[:PORT]"),
    (R, "9000:[svc@srv-]:0", "an SRV target is NAME@srv-DNSSERVER[:PORT]"),
    (R, "9000:[svc@srv-dns.example]:0", "the SRV DNS server is not an IP address: "
                                        "'dns.example'"),
    (R, "9000:[svc@srv-192.0.2.53:0]:0", "the SRV DNS server port 0 is not allowed"),
    (R, "9000:[svc@srv-192.0.2.53:99999]:0", "the SRV DNS server port must be a port number"),
    (R, "9000:[svc@srv-192.0.2.53:53:1]:0", "bad DNS server in SRV target"),
    (R, "9000:[a..b@srv-192.0.2.53]:0", "bad SRV name 'a..b'"),
    (R, f"9000:[{'a' * 64}.example@srv-192.0.2.53]:0", "bad SRV name"),
    (R, "9000:[svc@srv-192.0.2.53]:70000", "target port must be a port number"),
    (R, "9000:192.0.2.1:0", "target port 0 is not allowed here"),
])
def test_malformed_specs_name_the_bad_part(kind: Kind, text: str, message: str) -> None:
    with pytest.raises(ForwardError) as caught:
        parse(kind, text)
    assert message in str(caught.value)


def test_srv_dns_server_port_range_is_refused() -> None:
    with pytest.raises(ForwardError, match="SRV DNS server port"):
        parse(R, "9000:[svc@srv-192.0.2.53:53-60]:0")


@pytest.mark.parametrize("name", ["a b.example", "a\tb.example"])
def test_srv_name_with_space_or_control_character_is_refused(name: str) -> None:
    with pytest.raises(ForwardError, match="bad SRV name"):
        parse(R, f"9000:[{name}@srv-192.0.2.53]:0")


@pytest.mark.parametrize("text, server_port", [
    ("8080:_web._tcp.test@srv-192.0.2.53:5353:0", 5353),
    ("10.0.2.2:8080:_web._tcp.test@srv-192.0.2.53:53:0", 53),
    ("8080:_web._tcp.test@srv-192.0.2.53:0", 53),
])
def test_srv_target_without_brackets(text: str, server_port: int) -> None:
    (fwd,) = parse_forward(Kind.REMOTE, text, guest=ipaddress.IPv4Address("10.0.2.100"),
                           gateway=ipaddress.IPv4Address("10.0.2.2"))
    assert fwd.target == SrvName("_web._tcp.test", ipaddress.IPv4Address("192.0.2.53"),
                                 server_port)
    assert (fwd.bind, fwd.bind_port, fwd.target_port) == \
        (ipaddress.IPv4Address("10.0.2.2"), 8080, 0)
