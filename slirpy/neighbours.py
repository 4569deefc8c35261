"""Frames slirpy starts towards a guest address it has not heard from, and the asking.

A connection a local forward opens, or a datagram one brings, may be the first thing
sent to a guest address: the guest's stack drops frames not sent to its MAC, so they
wait on the link while an ARP request (IPv4) or a neighbour solicitation (IPv6) asks
for it, once a second until the guest answers; its answer, or any frame from that
address, releases them. Timed: the re-asking is this component's deadline.
"""

from __future__ import annotations

from typing import Final

from slirpy.addresses import is_ipv6
from slirpy.effects import Effect, ToGuest
from slirpy.guest import GuestLink
from slirpy.ndp import NeighborDiscovery
from slirpy.wire.arp import ArpOp, PACKET_LEN as ARP_LEN, build_arp
from slirpy.wire.ethernet import BROADCAST, HEADER_LEN as ETH_LEN, MAC_LEN, EtherType

NO_MAC: Final = bytes(MAC_LEN)  # an ARP request's target MAC: the unknown


class Neighbours:
    def __init__(self, link: GuestLink, ndp: NeighborDiscovery, gateway4: bytes) -> None:
        self.link = link
        self.ndp = ndp
        self.gateway4 = gateway4  # who asks, in ARP requests

    def when_resolved(self, dst: bytes, effects: list[Effect], now: float) -> list[Effect]:
        """*effects* with their frames to *dst* held until its MAC is known."""
        to_guest = [e for e in effects if isinstance(e, ToGuest)]
        rest = [e for e in effects if not isinstance(e, ToGuest)]
        return [*rest, *self.link.when_resolved(dst, to_guest, now, self.solicit)]

    def solicit(self, target: bytes) -> ToGuest:
        """Ask the guest for *target*'s MAC: ARP, or a neighbour solicitation."""
        if is_ipv6(target):
            return self.ndp.solicit(target)
        buf = self.link.ethernet(BROADCAST, EtherType.ARP, ETH_LEN + ARP_LEN)
        build_arp(buf, ETH_LEN, op=ArpOp.REQUEST, sender_mac=self.link.our_mac,
                  sender_ip=self.gateway4, target_mac=NO_MAC, target_ip=target)
        return ToGuest(buf)

    def next_deadline(self) -> float | None:
        return self.link.next_ask()

    def expire(self, now: float) -> list[Effect]:
        return [self.solicit(ip) for ip in self.link.asks_due(now)]
