"""The address model: the guest's networks, slirpy's own addresses, and what each
address a guest frame names means.

This module owns every answer to "what is this address?":
- `Network`: the guest's IPv4 and IPv6 networks and the addresses slirpy gives out or
  owns in them (gateway at +2, DNS at +3, the guest at +100, the DHCP pool);
- `NetSet`: networks of either family, matched with integer arithmetic;
- the fixed ranges: those slirpy never forwards to (`NEVER_FORWARDED`) and those the
  egress policy denies unless a rule as narrow opens them (`STATIC_DENY`);
- `AddressPlan`: built once from the network and the -6 setting, the one classifier the
  stack asks per packet (is this source acceptable, is this destination forwardable,
  which host address does it map to) and that the policy shares;
- family-neutral helpers (`is_ipv6`, `address_text`, `endpoint_text`), so the rest of
  the tree does not test `len(addr)` itself.

It never does I/O, never keeps per-flow state, and builds no ipaddress object per packet:
ipaddress is used to parse and precompute once, at construction; the per-packet methods
are set lookups and integer arithmetic on packed addresses.

Addresses are packed bytes of their native length, 4 for IPv4 and 16 for IPv6, not
IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, as passt keeps them): the wire parsers hand
out native lengths and flow keys are built from them, so a mapped form would cost a
conversion on every packet in and out, and the length already says the family. The
classifier here is the one place where the family matters.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CIDR: Final = "10.0.2.0/24"
DEFAULT_CIDR6: Final = "fd00::/64"
DHCP_POOL_SIZE: Final = 16  # libslirp's NB_BOOTP_CLIENTS: .15 to .30
# libslirp's address for itself: 52:55 then the gateway's IPv4 address.
OUR_MAC_PREFIX: Final = b"\x52\x55"
ROUTER_LINK_LOCAL: Final = ipaddress.IPv6Address("fe80::2")

LOOPBACK4: Final = ipaddress.IPv4Address("127.0.0.1").packed
LOOPBACK6: Final = ipaddress.IPv6Address("::1").packed
LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"


@dataclasses.dataclass(frozen=True, slots=True)
class Network:
    """The guest's networks, IPv4 and IPv6, and the addresses slirpy gives out or owns.

    The same host numbers in both, as written: gateway 2, DNS 3, guest 100 (fd00::2,
    fd00::3, fd00::100 by default; IPv6's ::100 is hexadecimal). On the link slirpy also
    owns fe80::2, the router's link-local address its router advertisements come from
    (as libslirp's).
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


# --- networks as integers --------------------------------------------------------------


class NetEntry(NamedTuple):
    """One network precomputed for matching: *addr* is in it when
    `len(addr) == size and int.from_bytes(addr, "big") & mask == net`."""

    size: int  # packed address length: 4 or 16
    net: int
    mask: int
    prefixlen: int


def net_entry(network: IPNetwork) -> NetEntry:
    """The one precomputation of a network for integer matching (NetSet's and rules')."""
    return NetEntry(4 if network.version == 4 else 16, int(network.network_address),
                    int(network.netmask), network.prefixlen)


class NetSet:
    """Networks of either family, in the order given, matched with integer arithmetic."""

    __slots__ = ("networks", "entries", "_by_size")

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks: Final[tuple[IPNetwork, ...]] = tuple(networks)
        self.entries: Final[tuple[NetEntry, ...]] = tuple(map(net_entry, self.networks))
        # Per address length, (net, mask, prefix length) in order: a lookup tries only
        # its own family's networks and converts the address once.
        by_size: dict[int, list[tuple[int, int, int]]] = {4: [], 16: []}
        for entry in self.entries:
            by_size[entry.size].append((entry.net, entry.mask, entry.prefixlen))
        self._by_size: Final[dict[int, tuple[tuple[int, int, int], ...]]] = {
            size: tuple(found) for size, found in by_size.items()}

    @classmethod
    def of(cls, *texts: str) -> NetSet:
        """A NetSet of networks written as text: `NetSet.of("10.0.0.0/8", "fd00::/8")`."""
        return cls(ipaddress.ip_network(text) for text in texts)

    def prefix_of(self, addr: bytes) -> int | None:
        """The prefix length of the first network holding *addr*; None if none does."""
        entries = self._by_size.get(len(addr))
        if entries:
            value = int.from_bytes(addr, "big")
            for net, mask, prefixlen in entries:
                if value & mask == net:
                    return prefixlen
        return None

    def __contains__(self, addr: bytes) -> bool:
        return self.prefix_of(addr) is not None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self.networks)

    def __repr__(self) -> str:
        return f"NetSet.of({', '.join(repr(str(n)) for n in self.networks)})"


# Destinations slirpy never forwards to, whatever the policy: "this network", loopback,
# multicast and class E (broadcast among them); for IPv6 ::/96 (::, ::1 and the
# deprecated IPv4-compatible addresses), ::ffff:0:0/96 (through which an IPv6 host
# socket reaches IPv4, 127.0.0.1 among it), link-local and multicast.
NEVER_FORWARDED: Final = NetSet.of(
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "::ffff:0:0/96", "fe80::/10", "ff00::/8")

# The egress policy's static deny list (slirpy.policy.decide): link-local with the cloud
# metadata address, the IPv6 metadata address, NAT64's prefixes (a host with NAT64
# reaches IPv4 through them, its loopback included).
STATIC_DENY: Final = NetSet.of(
    "169.254.0.0/16", "fd00:ec2::254/128", "64:ff9b::/96", "64:ff9b:1::/48")


# --- the classifier --------------------------------------------------------------------

_BAD_SRC4: Final = "ipv4-bad-src"
_BAD_SRC6: Final = "ipv6-bad-src"
_NOT_FORWARDED4: Final = "ipv4-dst-not-forwarded"
_NOT_FORWARDED6: Final = "ipv6-dst-not-forwarded"
_IN_NETWORK4: Final = "ipv4-dst-in-network"
_IN_NETWORK6: Final = "ipv6-dst-in-network"


class AddressPlan:
    """slirpy's addresses on one guest link, and the per-packet classification of the
    addresses a guest names: built once from the network and the -6 setting.

    Every per-packet method is set lookups and integer arithmetic on packed addresses.
    """

    static_deny: Final = STATIC_DENY

    def __init__(self, network: Network, ipv6: bool) -> None:
        self.network: Final = network
        self.ipv6: Final = ipv6
        self.gateway4: Final = network.gateway.packed  # DHCP's server and ARP's asker
        self.gateway6: Final = network.gateway6.packed if ipv6 else None
        self.link_local6: Final = network.link_local6.packed if ipv6 else None
        # A gateway is the host's loopback; any other address is itself.
        self._host_of: Final = {self.gateway4: LOOPBACK4,
                                **({self.gateway6: LOOPBACK6} if self.gateway6 else {})}
        self.gateways: Final = frozenset(self._host_of)
        self.dns: Final = frozenset([network.dns.packed, *([network.dns6.packed] if ipv6 else [])])
        self.broadcasts: Final = frozenset(
            {LIMITED_BROADCAST, network.cidr.broadcast_address.packed})
        # Both families' networks, whether or not -6 is on (remote forwards' binds are
        # judged by them; with -6 off no IPv6 frame gets this far).
        self.guest_networks: Final = NetSet([network.cidr, network.cidr6])
        # Per address length: (net, mask, drop reason), the first match wins. The
        # never-forwarded ranges come before the guest's own network.
        drops: dict[int, list[tuple[int, int, str]]] = {4: [], 16: []}
        for entry in NEVER_FORWARDED.entries:
            drops[entry.size].append(
                (entry.net, entry.mask, _NOT_FORWARDED4 if entry.size == 4 else _NOT_FORWARDED6))
        for entry in self.guest_networks.entries:
            drops[entry.size].append(
                (entry.net, entry.mask, _IN_NETWORK4 if entry.size == 4 else _IN_NETWORK6))
        self._drops: Final[dict[int, tuple[tuple[int, int, str], ...]]] = {
            size: tuple(found) for size, found in drops.items()}
        self.ours: frozenset[bytes] = frozenset()
        self._bad_sources: frozenset[bytes] = frozenset()
        self.set_remote_addresses(())

    def set_remote_addresses(self, addrs: Iterable[bytes]) -> None:
        """The remote forwards' bind addresses changed: those inside the guest's
        networks are ours (answered for ARP, NS and ping) from now on."""
        own = {*self.gateways, *self.dns}
        if self.link_local6 is not None:
            own.add(self.link_local6)
        own.update(addr for addr in addrs if addr in self.guest_networks)
        self.ours = frozenset(own)
        self._bad_sources = self.ours | self.broadcasts

    def source_drop(self, src: bytes) -> str | None:
        """Why a guest frame from *src* is dropped, or None: a source may not be one of
        ours, a broadcast or multicast. The unspecified address is allowed (DHCP's
        DISCOVER comes from 0.0.0.0, duplicate address detection from ::)."""
        if is_ipv6(src):
            return _BAD_SRC6 if src in self._bad_sources or src[0] == 0xFF else None  # ff00::/8
        if src in self._bad_sources or src[0] & 0xF0 == 0xE0:  # 224.0.0.0/4
            return _BAD_SRC4
        return None

    def destination_drop(self, dst: bytes) -> str | None:
        """Why a guest datagram to *dst* is not forwarded, or None: broadcasts and the
        never-forwarded ranges, then the guest's own network. A gateway is forwarded
        (to host loopback, `host_address`)."""
        if dst in self._host_of:
            return None
        if dst in self.broadcasts:
            return _NOT_FORWARDED4
        value = int.from_bytes(dst, "big")
        for net, mask, reason in self._drops[len(dst)]:
            if value & mask == net:
                return reason
        return None

    def host_address(self, dst: bytes) -> bytes:
        """The host address a forwarded destination maps to: a gateway's is the host's
        loopback (127.0.0.1 or ::1), any other is *dst* itself."""
        return self._host_of.get(dst, dst)


# --- family-neutral helpers -------------------------------------------------------------


def is_ipv6(addr: bytes) -> bool:
    """Whether a packed address is IPv6 (16 bytes) rather than IPv4 (4)."""
    return len(addr) == 16


def address_text(addr: bytes) -> str:
    """A packed address of either family as text: `10.0.2.2`, `fd00::2`."""
    return str(ipaddress.ip_address(addr))


def endpoint_text(addr: bytes, port: int) -> str:
    """An address and port as text, IPv6 in brackets: `10.0.2.2:80`, `[fd00::2]:80`."""
    return f"[{address_text(addr)}]:{port}" if is_ipv6(addr) else f"{address_text(addr)}:{port}"
