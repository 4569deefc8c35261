"""IPv6 Neighbor Discovery on the guest link (RFC 4861): slirpy as router and neighbour.

Model: slirpy owns a few IPv6 addresses on the link (the router's link-local fe80::2,
the gateway and DNS addresses of the prefix, remote forwards' addresses in it) and
answers neighbour solicitations for them, from the guest's ordinary resolution (a
solicited advertisement, unicast) and from its duplicate address detection (an
unsolicited one to all nodes, so the guest sees that the address is taken: RFC 4861
7.2.4). A DAD probe for any other address, such as the guest's own, gets silence, which
is what lets the guest keep it. The guest's own solicitations and advertisements teach
us its MAC address per IPv6 address, as its ARP does for IPv4.

Router advertisements go to all nodes at start, every RA_INTERVAL_S, and at once on a
router solicitation: the prefix (on-link, autonomous: the guest makes a SLAAC address),
the link MTU, RDNSS naming the DNS address (RFC 8106), and a router lifetime that
makes the router's link-local address the guest's default route.

Every ND message is checked as RFC 4861 asks before anything is believed: hop limit
255 (it was not forwarded), code 0, options well formed, a solicitation from the
unspecified address sent to a solicited-node group and without a link-layer option.
"""

from __future__ import annotations

import logging
from typing import Final

from slirpy.addresses import Network
from slirpy.effects import Effect, ToGuest
from slirpy.guest import GuestLink
from slirpy.wire import Malformed
from slirpy.wire.icmp import IcmpHeader
from slirpy.wire.icmpv6 import (NA_OVERRIDE, NA_ROUTER, NA_SOLICITED, ND_CODE, ND_HOP_LIMIT,
                                NS_REST, Icmp6Type, NdOption, NeighborMessage, na_rest,
                                neighbor_body, parse_options, router_advertisement)
from slirpy.wire.ipv6 import ALL_NODES, UNSPECIFIED, Ipv6Header, solicited_node

log = logging.getLogger(__name__)

RA_INTERVAL_S: Final = 120.0
ROUTER_LIFETIME_S: Final = 1800  # RFC 4861 6.2.1: 3 x MaxRtrAdvInterval, rounded up
PREFIX_VALID_S: Final = 86400
PREFIX_PREFERRED_S: Final = 14400


class NeighborDiscovery:
    def __init__(self, link: GuestLink, network: Network, mtu: int, *, dns: bool) -> None:
        self.link = link
        self.router = network.link_local6.packed
        self.prefix = network.cidr6.network_address.packed
        self.prefix_len = network.cidr6.prefixlen
        self.mtu = mtu
        self.dns = network.dns6.packed if dns else None
        self.next_advert = 0.0  # the first one goes out with the first timer, at start

    def on_message(self, ip: Ipv6Header, icmp: IcmpHeader, eth_src: bytes,
                   ours: frozenset[bytes], now: float) -> list[Effect]:
        """A router or neighbour solicitation, or a neighbour advertisement."""
        if ip.ttl != ND_HOP_LIMIT or icmp.code != ND_CODE:
            raise Malformed("nd-not-from-link")
        match icmp.type:
            case Icmp6Type.ROUTER_SOLICITATION:
                options = parse_options(icmp.payload, NdOption.SOURCE_LINK_ADDR)
                if ip.src == UNSPECIFIED and options.link_addr is not None:
                    raise Malformed("nd-unspecified-with-link-addr")
                if options.link_addr is not None:
                    self.link.learn(ip.src, options.link_addr)
                return self.advertise(now)
            case Icmp6Type.NEIGHBOR_SOLICITATION:
                return self._on_solicitation(ip, icmp, ours)
            case Icmp6Type.NEIGHBOR_ADVERTISEMENT:
                message = NeighborMessage.parse(icmp.payload, NdOption.TARGET_LINK_ADDR)
                if message.target in ours:
                    log.debug("guest claims our address %s", message.target.hex())
                    return []
                self.link.learn(message.target, message.options.link_addr or eth_src)
                return list(self.link.release(message.target))
            case _:
                raise Malformed("nd-unexpected-type")  # redirects, a guest's own adverts

    def _on_solicitation(self, ip: Ipv6Header, icmp: IcmpHeader,
                         ours: frozenset[bytes]) -> list[Effect]:
        message = NeighborMessage.parse(icmp.payload, NdOption.SOURCE_LINK_ADDR)
        dad = ip.src == UNSPECIFIED
        if dad:
            if ip.dst != solicited_node(message.target):
                raise Malformed("nd-dad-not-to-solicited-node")
            if message.options.link_addr is not None:
                raise Malformed("nd-unspecified-with-link-addr")
        elif message.options.link_addr is not None:
            self.link.learn(ip.src, message.options.link_addr)
        if message.target not in ours:
            return []  # another address: the guest's own DAD among them, which must succeed
        flags = NA_ROUTER | NA_OVERRIDE | (0 if dad else NA_SOLICITED)
        dst = ALL_NODES if dad else ip.src
        return list(self.link.icmp(
            src=message.target, dst=dst, icmp_type=Icmp6Type.NEIGHBOR_ADVERTISEMENT,
            code=ND_CODE, rest=na_rest(flags), hop_limit=ND_HOP_LIMIT,
            payload=neighbor_body(message.target, NdOption.TARGET_LINK_ADDR,
                                  self.link.our_mac)))

    def solicit(self, target: bytes) -> ToGuest:
        """A neighbour solicitation for a guest address we have not heard from."""
        (frame,) = self.link.icmp(
            src=self.router, dst=solicited_node(target),
            icmp_type=Icmp6Type.NEIGHBOR_SOLICITATION, code=ND_CODE, rest=NS_REST,
            hop_limit=ND_HOP_LIMIT,
            payload=neighbor_body(target, NdOption.SOURCE_LINK_ADDR, self.link.our_mac))
        return frame

    def advertise(self, now: float) -> list[Effect]:
        self.next_advert = now + RA_INTERVAL_S
        rest, body = router_advertisement(
            our_mac=self.link.our_mac, mtu=self.mtu, prefix=self.prefix,
            prefix_len=self.prefix_len, dns=self.dns, router_lifetime_s=ROUTER_LIFETIME_S,
            valid_s=PREFIX_VALID_S, preferred_s=PREFIX_PREFERRED_S)
        return list(self.link.icmp(src=self.router, dst=ALL_NODES,
                                   icmp_type=Icmp6Type.ROUTER_ADVERTISEMENT, code=ND_CODE,
                                   rest=rest, payload=body, hop_limit=ND_HOP_LIMIT))

    def expire(self, now: float) -> list[Effect]:
        return self.advertise(now) if now >= self.next_advert else []

    def next_deadline(self) -> float:
        return self.next_advert
