"""slirpy.addresses, table-driven: NetSet, and every classification AddressPlan makes of
the addresses a guest names, in both families, for the default and another network."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from slirpy.addresses import (NEVER_FORWARDED, STATIC_DENY, AddressPlan, NetSet, Network,
                              address_text, endpoint_text, is_ipv6, net_entry)
from slirpy.policy.decide import Policy

DEFAULT = Network()
OTHER = Network(ipaddress.IPv4Network("10.9.0.0/16"), ipaddress.IPv6Network("fd12:3456::/64"))
V4_LOOPBACK, V6_LOOPBACK = "127.0.0.1", "::1"


def p(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def plan(network: Network = DEFAULT, ipv6: bool = True) -> AddressPlan:
    return AddressPlan(network, ipv6)


def texts(addrs: frozenset[bytes]) -> set[str]:
    return {address_text(a) for a in addrs}


# --- NetSet --------------------------------------------------------------------------------

@pytest.mark.parametrize("nets, addr, prefix", [
    pytest.param((), "10.0.0.1", None, id="empty"),
    pytest.param(("10.0.0.0/8",), "10.0.0.0", 8, id="first-address"),
    pytest.param(("10.0.0.0/8",), "10.255.255.255", 8, id="last-address"),
    pytest.param(("10.0.0.0/8",), "9.255.255.255", None, id="just-below"),
    pytest.param(("10.0.0.0/8",), "11.0.0.0", None, id="just-above"),
    pytest.param(("10.0.0.0/8", "10.1.0.0/16"), "10.1.2.3", 8, id="first-match-wins"),
    pytest.param(("10.1.0.0/16", "10.0.0.0/8"), "10.1.2.3", 16, id="first-match-wins-reversed"),
    pytest.param(("10.1.0.0/16", "10.0.0.0/8"), "10.2.0.1", 8, id="falls-to-second"),
    pytest.param(("192.0.2.1/32",), "192.0.2.1", 32, id="host-v4"),
    pytest.param(("192.0.2.1/32",), "192.0.2.2", None, id="host-v4-miss"),
    pytest.param(("0.0.0.0/0",), "255.255.255.255", 0, id="all-v4"),
    pytest.param(("0.0.0.0/0",), "::", None, id="all-v4-not-v6"),
    pytest.param(("::/0",), "0.0.0.0", None, id="all-v6-not-v4"),
    pytest.param(("::/0",), "ffff::1", 0, id="all-v6"),
    pytest.param(("2001:db8::/32",), "2001:db8:ffff::1", 32, id="v6-inside"),
    pytest.param(("2001:db8::/32",), "2001:db9::", None, id="v6-just-above"),
    pytest.param(("2001:db8::1/128",), "2001:db8::1", 128, id="host-v6"),
    pytest.param(("10.0.0.0/8", "::a00:0/104"), "::a00:1", 104, id="v4-bits-in-v6-are-v6"),
    pytest.param(("::a00:0/104",), "10.0.0.1", None, id="v6-net-never-holds-v4"),
])
def test_netset_prefix_of(nets: tuple[str, ...], addr: str, prefix: int | None) -> None:
    found = NetSet.of(*nets)
    assert found.prefix_of(p(addr)) == prefix
    assert (p(addr) in found) is (prefix is not None)


def test_netset_keeps_its_networks_in_order() -> None:
    nets = NetSet.of("2001:db8::/32", "10.0.0.0/8")
    assert [str(n) for n in nets] == ["2001:db8::/32", "10.0.0.0/8"]
    assert len(nets) == 2 and not NetSet()
    assert nets.entries[1] == net_entry(ipaddress.IPv4Network("10.0.0.0/8")) == (
        4, 0x0A000000, 0xFF000000, 8)
    assert NetSet(nets.networks).entries == nets.entries
    assert repr(nets) == "NetSet.of('2001:db8::/32', '10.0.0.0/8')"


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_netset_agrees_with_ipaddress_v4(base: int, prefixlen: int, value: int) -> None:
    net = ipaddress.IPv4Network((base, prefixlen), strict=False)
    addr = ipaddress.IPv4Address(value)
    assert (addr.packed in NetSet([net])) is (addr in net)


@given(st.integers(0, 2**128 - 1), st.integers(0, 128), st.integers(0, 2**128 - 1))
def test_netset_agrees_with_ipaddress_v6(base: int, prefixlen: int, value: int) -> None:
    net = ipaddress.IPv6Network((base, prefixlen), strict=False)
    addr = ipaddress.IPv6Address(value)
    assert (addr.packed in NetSet([net])) is (addr in net)


@pytest.mark.parametrize("addr, prefix", [
    ("169.254.169.254", 16), ("169.254.0.0", 16), ("169.254.255.255", 16),
    ("169.253.255.255", None), ("169.255.0.0", None),
    ("fd00:ec2::254", 128), ("fd00:ec2::253", None), ("fd00:ec2::255", None),
    ("64:ff9b::7f00:1", 96), ("64:ff9b::", 96), ("64:ff9b::1:0:0", None),
    ("64:ff9b:1::1", 48), ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", 48), ("64:ff9b:2::", None),
])
def test_static_deny(addr: str, prefix: int | None) -> None:
    assert STATIC_DENY.prefix_of(p(addr)) == prefix


def test_static_deny_is_shared() -> None:
    """One list: the plan's is the module's, which the policy uses."""
    assert AddressPlan.static_deny is STATIC_DENY
    assert plan().static_deny is STATIC_DENY
    pol = Policy(routing=True, host=True, host_loopback=True)
    assert pol.decide(6, p("169.254.169.254"), 80, gateway=False).why == "static deny list"


# --- what a plan owns ----------------------------------------------------------------------

@pytest.mark.parametrize("network, ipv6, gateways, dns, broadcasts, ours", [
    pytest.param(DEFAULT, False, {"10.0.2.2"}, {"10.0.2.3"},
                 {"255.255.255.255", "10.0.2.255"}, {"10.0.2.2", "10.0.2.3"}, id="default-v4"),
    pytest.param(DEFAULT, True, {"10.0.2.2", "fd00::2"}, {"10.0.2.3", "fd00::3"},
                 {"255.255.255.255", "10.0.2.255"},
                 {"10.0.2.2", "10.0.2.3", "fd00::2", "fd00::3", "fe80::2"}, id="default-v6"),
    pytest.param(OTHER, True, {"10.9.0.2", "fd12:3456::2"}, {"10.9.0.3", "fd12:3456::3"},
                 {"255.255.255.255", "10.9.255.255"},
                 {"10.9.0.2", "10.9.0.3", "fd12:3456::2", "fd12:3456::3", "fe80::2"},
                 id="other-v6"),
])
def test_our_addresses(network: Network, ipv6: bool, gateways: set[str], dns: set[str],
                       broadcasts: set[str], ours: set[str]) -> None:
    addrs = plan(network, ipv6)
    assert texts(addrs.gateways) == gateways
    assert texts(addrs.dns) == dns
    assert texts(addrs.broadcasts) == broadcasts
    assert texts(addrs.ours) == ours
    assert addrs.gateway4 == network.gateway.packed
    assert addrs.gateway6 == (network.gateway6.packed if ipv6 else None)


def test_remote_addresses_inside_the_networks_become_ours() -> None:
    addrs = plan()
    before = addrs.ours
    inside4, inside6, outside4, outside6 = (
        p("10.0.2.50"), p("fd00::50"), p("192.0.2.1"), p("2001:db8::1"))
    assert addrs.source_drop(inside4) is None and addrs.source_drop(inside6) is None
    addrs.set_remote_addresses([inside4, inside6, outside4, outside6, p("10.0.2.2")])
    assert addrs.ours == before | {inside4, inside6}
    assert addrs.source_drop(inside4) == "ipv4-bad-src"
    assert addrs.source_drop(inside6) == "ipv6-bad-src"
    assert addrs.source_drop(outside4) is None
    addrs.set_remote_addresses([inside6])
    assert addrs.ours == before | {inside6}
    assert addrs.source_drop(inside4) is None
    addrs.set_remote_addresses(iter(()))
    assert addrs.ours == before
    assert addrs.source_drop(inside6) is None


def test_remote_addresses_follow_the_configured_networks() -> None:
    addrs = plan(OTHER)
    addrs.set_remote_addresses([p("10.9.200.1"), p("10.0.2.50"), p("fd12:3456::50"),
                                p("fd00::50")])
    assert texts(addrs.ours) - texts(plan(OTHER).ours) == {"10.9.200.1", "fd12:3456::50"}


# --- sources -------------------------------------------------------------------------------

SOURCES = [
    # network, ipv6, source, drop reason
    pytest.param(DEFAULT, True, "10.0.2.100", None, id="guest"),
    pytest.param(DEFAULT, True, "10.0.2.15", None, id="dhcp-pool"),
    pytest.param(DEFAULT, True, "0.0.0.0", None, id="unspecified-dhcp-discover"),
    pytest.param(DEFAULT, True, "192.0.2.1", None, id="outside-network"),
    pytest.param(DEFAULT, True, "10.0.2.2", "ipv4-bad-src", id="gateway"),
    pytest.param(DEFAULT, True, "10.0.2.3", "ipv4-bad-src", id="dns"),
    pytest.param(DEFAULT, True, "255.255.255.255", "ipv4-bad-src", id="limited-broadcast"),
    pytest.param(DEFAULT, True, "10.0.2.255", "ipv4-bad-src", id="network-broadcast"),
    pytest.param(DEFAULT, True, "224.0.0.5", "ipv4-bad-src", id="multicast-ospf"),
    pytest.param(DEFAULT, True, "224.0.0.0", "ipv4-bad-src", id="multicast-first"),
    pytest.param(DEFAULT, True, "239.255.255.255", "ipv4-bad-src", id="multicast-last"),
    pytest.param(DEFAULT, True, "223.255.255.255", None, id="below-multicast"),
    pytest.param(DEFAULT, True, "fd00::100", None, id="guest6"),
    pytest.param(DEFAULT, True, "fe80::1", None, id="guest-link-local"),
    pytest.param(DEFAULT, True, "::", None, id="unspecified-dad"),
    pytest.param(DEFAULT, True, "fd00::2", "ipv6-bad-src", id="gateway6"),
    pytest.param(DEFAULT, True, "fd00::3", "ipv6-bad-src", id="dns6"),
    pytest.param(DEFAULT, True, "fe80::2", "ipv6-bad-src", id="router-link-local"),
    pytest.param(DEFAULT, True, "ff02::1", "ipv6-bad-src", id="multicast6-all-nodes"),
    pytest.param(DEFAULT, True, "ff00::", "ipv6-bad-src", id="multicast6-first"),
    pytest.param(DEFAULT, True, "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None,
                 id="below-multicast6"),
    pytest.param(DEFAULT, False, "fd00::2", None, id="gateway6-not-ours-without-v6"),
    pytest.param(DEFAULT, False, "fe80::2", None, id="router-not-ours-without-v6"),
    pytest.param(DEFAULT, False, "ff02::1", "ipv6-bad-src", id="multicast6-without-v6"),
    pytest.param(OTHER, True, "10.9.0.2", "ipv4-bad-src", id="other-gateway"),
    pytest.param(OTHER, True, "10.9.0.3", "ipv4-bad-src", id="other-dns"),
    pytest.param(OTHER, True, "10.9.255.255", "ipv4-bad-src", id="other-broadcast"),
    pytest.param(OTHER, True, "10.9.0.255", None, id="other-not-a-broadcast"),
    pytest.param(OTHER, True, "10.0.2.2", None, id="default-gateway-in-other"),
    pytest.param(OTHER, True, "10.0.2.255", None, id="default-broadcast-in-other"),
    pytest.param(OTHER, True, "fd12:3456::2", "ipv6-bad-src", id="other-gateway6"),
    pytest.param(OTHER, True, "fd00::2", None, id="default-gateway6-in-other"),
]


@pytest.mark.parametrize("network, ipv6, src, reason", SOURCES)
def test_source_drop(network: Network, ipv6: bool, src: str, reason: str | None) -> None:
    assert plan(network, ipv6).source_drop(p(src)) == reason


# --- destinations --------------------------------------------------------------------------

NF4, IN4 = "ipv4-dst-not-forwarded", "ipv4-dst-in-network"
NF6, IN6 = "ipv6-dst-not-forwarded", "ipv6-dst-in-network"

DESTINATIONS = [
    # network, ipv6, destination, drop reason, host address (when forwarded)
    pytest.param(DEFAULT, True, "10.0.2.2", None, V4_LOOPBACK, id="gateway-is-loopback"),
    pytest.param(DEFAULT, True, "fd00::2", None, V6_LOOPBACK, id="gateway6-is-loopback"),
    pytest.param(DEFAULT, True, "192.0.2.1", None, "192.0.2.1", id="elsewhere"),
    pytest.param(DEFAULT, True, "2001:db8::1", None, "2001:db8::1", id="elsewhere6"),
    # this network, 0.0.0.0/8
    pytest.param(DEFAULT, True, "0.0.0.0", NF4, None, id="0/8-first"),
    pytest.param(DEFAULT, True, "0.255.255.255", NF4, None, id="0/8-last"),
    pytest.param(DEFAULT, True, "1.0.0.0", None, "1.0.0.0", id="0/8-above"),
    # loopback, 127.0.0.0/8
    pytest.param(DEFAULT, True, "126.255.255.255", None, "126.255.255.255", id="127/8-below"),
    pytest.param(DEFAULT, True, "127.0.0.0", NF4, None, id="127/8-first"),
    pytest.param(DEFAULT, True, "127.0.0.1", NF4, None, id="127/8-loopback"),
    pytest.param(DEFAULT, True, "127.255.255.255", NF4, None, id="127/8-last"),
    pytest.param(DEFAULT, True, "128.0.0.0", None, "128.0.0.0", id="127/8-above"),
    # multicast 224.0.0.0/4 and class E 240.0.0.0/4
    pytest.param(DEFAULT, True, "223.255.255.255", None, "223.255.255.255", id="224/4-below"),
    pytest.param(DEFAULT, True, "224.0.0.0", NF4, None, id="224/4-first"),
    pytest.param(DEFAULT, True, "239.255.255.255", NF4, None, id="224/4-last"),
    pytest.param(DEFAULT, True, "240.0.0.0", NF4, None, id="240/4-first"),
    pytest.param(DEFAULT, True, "255.255.255.254", NF4, None, id="240/4-last"),
    # broadcasts
    pytest.param(DEFAULT, True, "255.255.255.255", NF4, None, id="limited-broadcast"),
    pytest.param(DEFAULT, True, "10.0.2.255", NF4, None, id="network-broadcast"),
    # the guest's network
    pytest.param(DEFAULT, True, "10.0.2.0", IN4, None, id="network-first"),
    pytest.param(DEFAULT, True, "10.0.2.100", IN4, None, id="network-guest"),
    pytest.param(DEFAULT, True, "10.0.2.3", IN4, None, id="network-dns"),
    pytest.param(DEFAULT, True, "10.0.2.254", IN4, None, id="network-last-host"),
    pytest.param(DEFAULT, True, "10.0.1.255", None, "10.0.1.255", id="network-below"),
    pytest.param(DEFAULT, True, "10.0.3.0", None, "10.0.3.0", id="network-above"),
    # ::/96: unspecified, loopback, IPv4-compatible
    pytest.param(DEFAULT, True, "::", NF6, None, id="::/96-first"),
    pytest.param(DEFAULT, True, "::1", NF6, None, id="::/96-loopback"),
    pytest.param(DEFAULT, True, "::7f00:1", NF6, None, id="::/96-compatible"),
    pytest.param(DEFAULT, True, "::ffff:ffff", NF6, None, id="::/96-last"),
    pytest.param(DEFAULT, True, "::1:0:0", None, "::1:0:0", id="::/96-above"),
    # ::ffff:0:0/96: IPv4-mapped
    pytest.param(DEFAULT, True, "::fffe:ffff:ffff", None, "::fffe:ffff:ffff",
                 id="mapped-below"),
    pytest.param(DEFAULT, True, "::ffff:0:0", NF6, None, id="mapped-first"),
    pytest.param(DEFAULT, True, "::ffff:127.0.0.1", NF6, None, id="mapped-loopback"),
    pytest.param(DEFAULT, True, "::ffff:ffff:ffff", NF6, None, id="mapped-last"),
    pytest.param(DEFAULT, True, "::1:0:0:0", None, "::1:0:0:0", id="mapped-above"),
    # fe80::/10: link-local
    pytest.param(DEFAULT, True, "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None,
                 "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", id="fe80/10-below"),
    pytest.param(DEFAULT, True, "fe80::", NF6, None, id="fe80/10-first"),
    pytest.param(DEFAULT, True, "fe80::2", NF6, None, id="fe80/10-router"),
    pytest.param(DEFAULT, True, "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NF6, None,
                 id="fe80/10-last"),
    pytest.param(DEFAULT, True, "fec0::", None, "fec0::", id="fe80/10-above"),
    # ff00::/8: multicast
    pytest.param(DEFAULT, True, "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None,
                 "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", id="ff00/8-below"),
    pytest.param(DEFAULT, True, "ff00::", NF6, None, id="ff00/8-first"),
    pytest.param(DEFAULT, True, "ff02::1", NF6, None, id="ff00/8-all-nodes"),
    pytest.param(DEFAULT, True, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NF6, None,
                 id="ff00/8-last"),
    # the guest's IPv6 network
    pytest.param(DEFAULT, True, "fd00::", IN6, None, id="network6-first"),
    pytest.param(DEFAULT, True, "fd00::3", IN6, None, id="network6-dns"),
    pytest.param(DEFAULT, True, "fd00::100", IN6, None, id="network6-guest"),
    pytest.param(DEFAULT, True, "fd00::ffff:ffff:ffff:ffff", IN6, None, id="network6-last"),
    pytest.param(DEFAULT, True, "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None,
                 "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", id="network6-below"),
    pytest.param(DEFAULT, True, "fd00:0:0:1::", None, "fd00:0:0:1::", id="network6-above"),
    # the static deny list is the policy's business, not a drop
    pytest.param(DEFAULT, True, "169.254.169.254", None, "169.254.169.254", id="metadata"),
    pytest.param(DEFAULT, True, "64:ff9b::7f00:1", None, "64:ff9b::7f00:1", id="nat64"),
    # without -6 the IPv6 gateway is an address of the network like any other
    pytest.param(DEFAULT, False, "fd00::2", IN6, None, id="gateway6-without-v6"),
    pytest.param(DEFAULT, False, "10.0.2.2", None, V4_LOOPBACK, id="gateway-without-v6"),
    # another network
    pytest.param(OTHER, True, "10.9.0.2", None, V4_LOOPBACK, id="other-gateway"),
    pytest.param(OTHER, True, "fd12:3456::2", None, V6_LOOPBACK, id="other-gateway6"),
    pytest.param(OTHER, True, "10.9.0.0", IN4, None, id="other-first"),
    pytest.param(OTHER, True, "10.9.0.3", IN4, None, id="other-dns"),
    pytest.param(OTHER, True, "10.9.200.1", IN4, None, id="other-inside"),
    pytest.param(OTHER, True, "10.9.0.255", IN4, None, id="other-.255-inside"),
    pytest.param(OTHER, True, "10.9.255.255", NF4, None, id="other-broadcast"),
    pytest.param(OTHER, True, "10.8.255.255", None, "10.8.255.255", id="other-below"),
    pytest.param(OTHER, True, "10.10.0.0", None, "10.10.0.0", id="other-above"),
    pytest.param(OTHER, True, "10.0.2.2", None, "10.0.2.2", id="default-gateway-in-other"),
    pytest.param(OTHER, True, "10.0.2.255", None, "10.0.2.255", id="default-bcast-in-other"),
    pytest.param(OTHER, True, "fd12:3456::100", IN6, None, id="other6-guest"),
    pytest.param(OTHER, True, "fd12:3456:0:1::", None, "fd12:3456:0:1::", id="other6-above"),
    pytest.param(OTHER, True, "fd00::2", None, "fd00::2", id="default-gateway6-in-other"),
    pytest.param(OTHER, True, "ff02::1", NF6, None, id="other-multicast6"),
]


@pytest.mark.parametrize("network, ipv6, dst, reason, host", DESTINATIONS)
def test_destination(network: Network, ipv6: bool, dst: str, reason: str | None,
                     host: str | None) -> None:
    addrs = plan(network, ipv6)
    assert addrs.destination_drop(p(dst)) == reason
    if host is not None:
        assert addrs.host_address(p(dst)) == p(host)


def reference_drop(network: Network, ipv6: bool, dst: bytes) -> str | None:
    """The stack's classification before AddressPlan, with ipaddress objects."""
    gateways = {network.gateway.packed, *([network.gateway6.packed] if ipv6 else [])}
    if dst in gateways:
        return None
    if len(dst) == 16:
        addr6 = ipaddress.IPv6Address(dst)
        if any(addr6 in ipaddress.IPv6Network(n)
               for n in ("::/96", "::ffff:0:0/96", "fe80::/10", "ff00::/8")):
            return NF6
        return IN6 if addr6 in network.cidr6 else None
    addr = ipaddress.IPv4Address(dst)
    if dst in {b"\xff" * 4, network.cidr.broadcast_address.packed} or any(
            addr in ipaddress.IPv4Network(n)
            for n in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")):
        return NF4
    return IN4 if addr in network.cidr else None


def near(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[bytes]:
    """Packed addresses in and around *network*: the edges are where classifiers go wrong."""
    first, last = int(network.network_address), int(network.broadcast_address)
    size = network.max_prefixlen // 8
    return st.integers(max(first - 2, 0), min(last + 2, 2 ** network.max_prefixlen - 1)).map(
        lambda value: value.to_bytes(size, "big"))


ADDRESSES = st.one_of(
    near(ipaddress.IPv4Network("0.0.0.0/0")), near(ipaddress.IPv6Network("::/0")),
    *[near(n) for n in (*NEVER_FORWARDED.networks, DEFAULT.cidr, DEFAULT.cidr6, OTHER.cidr,
                        OTHER.cidr6)])


@given(st.sampled_from([DEFAULT, OTHER]), st.booleans(), ADDRESSES)
def test_destination_drop_agrees_with_the_ipaddress_reference(
        network: Network, ipv6: bool, dst: bytes) -> None:
    assert plan(network, ipv6).destination_drop(dst) == reference_drop(network, ipv6, dst)


# --- helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("addr, v6, text, endpoint", [
    ("10.0.2.2", False, "10.0.2.2", "10.0.2.2:80"),
    ("0.0.0.0", False, "0.0.0.0", "0.0.0.0:80"),
    ("fd00::2", True, "fd00::2", "[fd00::2]:80"),
    ("::", True, "::", "[::]:80"),
])
def test_text_helpers(addr: str, v6: bool, text: str, endpoint: str) -> None:
    assert is_ipv6(p(addr)) is v6
    assert address_text(p(addr)) == text
    assert endpoint_text(p(addr), 80) == endpoint
