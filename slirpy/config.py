"""Settings of one slirpy instance, validated once at the edge (CLI or YAML)."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Final

from slirpy.errors import UsageError
from slirpy.forward.spec import Forward
from slirpy.policy.rules import Rule

DEFAULT_CIDR: Final = "10.0.2.0/24"
DEFAULT_CIDR6: Final = "fd00::/64"
DEFAULT_MTU: Final = 1500
MAX_MTU: Final = 65521
MIN_MTU: Final = 68  # RFC 791: every IPv4 host must take a 68-byte datagram
DHCP_POOL_SIZE: Final = 16  # libslirp's NB_BOOTP_CLIENTS: .15 to .30
# libslirp's address for itself: 52:55 then the gateway's IPv4 address.
OUR_MAC_PREFIX: Final = b"\x52\x55"
ROUTER_LINK_LOCAL: Final = ipaddress.IPv6Address("fe80::2")


def _network_address(text: str, kind: type[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                     label: str, example: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """*text* as an interface whose address is its network's, or a UsageError."""
    try:
        iface = kind(text)
    except ValueError:
        raise UsageError(f"invalid {label}: {text}") from None
    if "/" not in text:
        raise UsageError(f"invalid {label}: {text}{example}")
    if iface.ip != iface.network.network_address:
        raise UsageError(
            f"{label} needs to be a network address like {iface.network}, not like {text}")
    return iface


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """Validate --cidr the way slirp4netns does, with its error texts."""
    network = _network_address(text, ipaddress.IPv4Interface, "CIDR", "").network
    assert isinstance(network, ipaddress.IPv4Network)
    if not 1 <= network.prefixlen <= 25:
        raise UsageError("prefix length needs to be 1-25")
    return network


def parse_cidr6(text: str) -> ipaddress.IPv6Network:
    """Validate --cidr6: a unicast network address with a /64 prefix, the length SLAAC
    needs (RFC 4862 with RFC 4291's 64-bit interface identifiers)."""
    net = _network_address(text, ipaddress.IPv6Interface, "IPv6 CIDR",
                           " (a prefix like fd00::/64)").network
    assert isinstance(net, ipaddress.IPv6Network)
    if net.prefixlen != 64:
        raise UsageError("IPv6 prefix length needs to be 64 (SLAAC takes a /64)")
    if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified or (
            net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96"))):
        raise UsageError(f"IPv6 CIDR {text} is not a unicast prefix a guest can use")
    return net


def parse_mtu(text: str | int) -> int:
    try:
        mtu = int(text)
    except ValueError:
        mtu = -1
    if not 0 < mtu <= MAX_MTU:
        raise UsageError(f"MTU must be a positive integer (< {MAX_MTU + 1})")
    if mtu < MIN_MTU:
        raise UsageError(f"MTU must be at least {MIN_MTU}")
    return mtu


@dataclasses.dataclass(frozen=True, slots=True)
class Network:
    """The guest's networks, IPv4 and IPv6, and the addresses slirpy gives out or owns.

    The same host numbers in both, as written: gateway 2, DNS 3, guest 100 (fd00::2,
    fd00::3, fd00::100 by default; IPv6's ::100 is hexadecimal). On the link slirpy also owns fe80::2, the router's
    link-local address its router advertisements come from (as libslirp's).
    """

    cidr: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_CIDR)
    cidr6: ipaddress.IPv6Network = ipaddress.IPv6Network(DEFAULT_CIDR6)

    def _nth(self, n: int) -> ipaddress.IPv4Address:
        return self.cidr.network_address + n

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self._nth(2)

    @property
    def dns(self) -> ipaddress.IPv4Address:
        return self._nth(3)

    @property
    def guest(self) -> ipaddress.IPv4Address:
        return self._nth(100)

    @property
    def dhcp_start(self) -> ipaddress.IPv4Address:
        return self._nth(15)

    @property
    def dhcp_end(self) -> ipaddress.IPv4Address:
        return self._nth(15 + DHCP_POOL_SIZE - 1)

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        return self.cidr6.network_address + 2

    @property
    def dns6(self) -> ipaddress.IPv6Address:
        return self.cidr6.network_address + 3

    @property
    def guest6(self) -> ipaddress.IPv6Address:
        return self.cidr6.network_address + 0x100  # written ::100, as slirp4netns's docs

    @property
    def link_local6(self) -> ipaddress.IPv6Address:
        return ROUTER_LINK_LOCAL

    @property
    def our_mac(self) -> bytes:
        return OUR_MAC_PREFIX + self.gateway.packed


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Everything one slirpy instance needs to know; the sans-IO stack reads only this."""

    network: Network = Network()
    mtu: int = DEFAULT_MTU
    host_loopback: bool = True  # slirp4netns form default; `slirpy run` passes False
    # Egress (slirpy.policy.decide): may new flows go beyond the host, to the host's own
    # addresses and networks, and by which --allow/--deny rules. slirp4netns's reach by
    # default; --restrict and `slirpy run` narrow it.
    routing: bool = True
    host: bool = True
    rules: tuple[Rule, ...] = ()
    ipv6: bool = False  # -6; `slirpy run` turns it on
    dns: bool = True  # --disable-dns turns the forwarder at network+3 off
    outbound_addr: ipaddress.IPv4Address | None = None
    outbound_addr6: ipaddress.IPv6Address | None = None
    resolv_conf: str = "/etc/resolv.conf"
    forwards: tuple[Forward, ...] = ()  # -L and -R, ranges expanded
    api_socket: str | None = None
    dns_ttl_s: float = 60.0  # how long an SRV answer of a remote forward is used
    # Flow limits; the defaults suit one container.
    udp_flow_limit: int = 1024
    udp_idle_s: float = 120.0
    icmp_idle_s: float = 30.0
    dns_timeout_s: float = 2.0
    tcp_conn_limit: int = 4096
    # Test-only knob: share of frames the tap layer drops (see TESTING.md: no netem here).
    test_drop_rate: float = 0.0
