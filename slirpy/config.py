"""Settings of one slirpy instance, validated once at the edge (CLI or YAML)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Final

from slirpy.addresses import Network
from slirpy.errors import UsageError
from slirpy.forward.spec import Forward
from slirpy.policy.rules import Rule

DEFAULT_MTU: Final = 1500
MAX_MTU: Final = 65521
MIN_MTU: Final = 68  # RFC 791: every IPv4 host must take a 68-byte datagram


# slirp4netns's grammar of --cidr: four dotted numbers, a slash, a one- or two-digit prefix.
_CIDR: Final = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})/([0-9]{1,2})")


def _host_bits_clear(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                     network: ipaddress.IPv4Network | ipaddress.IPv6Network, text: str,
                     label: str) -> None:
    if address != network.network_address:
        raise UsageError(f"{label} needs to be a network address like {network}, not like {text}")


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """Validate --cidr the way slirp4netns does, with its error texts and in its order:
    the form, the address, the prefix length, then host bits."""
    match = _CIDR.fullmatch(text)
    if match is None:
        raise UsageError(f"invalid CIDR: {text}")
    address, prefix = match.groups()
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise UsageError(f"invalid network address: {address}") from None
    if not 1 <= int(prefix) <= 25:
        raise UsageError("prefix length needs to be 1-25")
    network = ipaddress.IPv4Network((ip, int(prefix)), strict=False)
    _host_bits_clear(ip, network, text, "CIDR")
    return network


def parse_cidr6(text: str) -> ipaddress.IPv6Network:
    """Validate --cidr6: a unicast network address with a /64 prefix, the length SLAAC
    needs (RFC 4862 with RFC 4291's 64-bit interface identifiers); the prefix length is
    checked before host bits, as --cidr's is."""
    try:
        iface = ipaddress.IPv6Interface(text)
    except ValueError:
        raise UsageError(f"invalid IPv6 CIDR: {text}") from None
    if "/" not in text:
        raise UsageError(f"invalid IPv6 CIDR: {text} (a prefix like fd00::/64)")
    net = iface.network
    if net.prefixlen != 64:
        raise UsageError("IPv6 prefix length needs to be 64 (SLAAC takes a /64)")
    _host_bits_clear(iface.ip, net, text, "IPv6 CIDR")
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
    # How many flows may hold a host socket at once (None: the runtime derives it from
    # RLIMIT_NOFILE at start) and how many TCP connects may be in progress at once.
    max_flows: int | None = None
    max_pending_connects: int | None = None
    # Confine the process once set up: a mount namespace and pivot_root (--enable-sandbox),
    # a seccomp filter (--enable-seccomp). slirp4netns's options; `slirpy run` turns both on.
    enable_sandbox: bool = False
    enable_seccomp: bool = False
    # Observability (slirpy.observe): all off by default, and off costs nothing.
    name: str | None = None  # --name: the API socket's registered name (slirpy ctl --name)
    events: str | None = None  # --events DEST: a path, "-" (stderr) or "fd:N"
    pcap: str | None = None  # --pcap FILE
    pcap_size: int | None = None  # --pcap-size: bytes per capture file
    pcap_rotate: bool = False  # --pcap-size SIZE,rotate: start a new file instead of stopping
    metrics: tuple[str, int] | None = None  # --metrics ADDR:PORT
