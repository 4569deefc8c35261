"""Address translation for forwards: who the guest sees, and where its answers go.

Local forwards (host -> guest) show the guest the real client: a forwarded connection
or datagram comes from the client's own address and port, as on a real network, so a
guest server logs and filters real addresses. The exceptions are addresses the guest
could not answer or would misread: host loopback (127/8), the guest's own network,
unspecified, multicast and broadcast addresses, and another family than the guest's.
Those clients appear as the gateway, which the guest reaches through slirpy anyway.
The client's port is kept unless that exact conversation exists already (two loopback
clients with the same port both appear as the gateway); then a free port is taken.

UDP through a local forward is connectionless on both sides: a flow is remembered per
(guest end, client as seen) so the guest's replies find the client, and goes after an
idle time. udpspp flows keep the proxy's header to put back on each reply; udprpc flows
end after the guest's first reply.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Final, NamedTuple

from slirpy.addresses import LIMITED_BROADCAST, Network, is_ipv6
from slirpy.effects import Effect, SendTo
from slirpy.flows.key import FlowKey, FlowRecord, Traffic
from slirpy.flows.table import FlowTable
from slirpy.wire.proxy import SppHeader, build_spp, parse_spp
from slirpy.forward.spec import LocalForward, Proto
from slirpy.guest import GuestLink
from slirpy.reports import Reporter
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

EPHEMERAL_FIRST: Final = 49152  # RFC 6335's dynamic ports: where a clash moves to
EPHEMERAL_COUNT: Final = 65536 - EPHEMERAL_FIRST
IPV4: Final = 4  # ipaddress versions
IPV6: Final = 6


_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96 (RFC 4291 2.5.5.2)


def visible_source(client: bytes, network: Network, version: int = IPV4) -> bytes:
    """The address a guest reached over IPv*version* sees for a client at *client*.

    A client of the other family appears as the gateway of the guest's family; an
    IPv4 client accepted on a dual-stack IPv6 socket (::ffff:a.b.c.d) counts as IPv4.
    """
    if is_ipv6(client) and client.startswith(_MAPPED_PREFIX):
        client = client[len(_MAPPED_PREFIX):]
    guest_ipv6 = version == IPV6
    gateway = (network.gateway6 if guest_ipv6 else network.gateway).packed
    if is_ipv6(client) != guest_ipv6:
        return gateway
    addr = ipaddress.ip_address(client)
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
        return gateway
    if isinstance(addr, ipaddress.IPv4Address):
        if addr in network.cidr or client == LIMITED_BROADCAST:
            return gateway
    elif addr in network.cidr6 or addr.is_link_local:
        return gateway
    return client


def free_key(base: FlowKey, taken: Callable[[FlowKey], bool], start: int) -> FlowKey | None:
    """*base* if free, else *base* with the first free dynamic port from *start* on."""
    if not taken(base):
        return base
    for step in range(EPHEMERAL_COUNT):
        key = base._replace(remote_port=EPHEMERAL_FIRST + (start + step) % EPHEMERAL_COUNT)
        if not taken(key):
            return key
    return None


_Client = tuple[int, tuple[bytes, int], tuple[bytes, int]]  # forward id, peer, client


class InboundUdp(NamedTuple):
    """Where a guest's reply on a forwarded UDP flow goes."""

    forward_id: int
    peer: tuple[bytes, int]  # the datagram's real sender: the client, or the SPP proxy
    client: tuple[bytes, int]  # the client as named (by the SPP header, else the peer)
    spp: SppHeader | None
    rpc: bool  # udprpc: the flow ends with the first reply
    traffic: Traffic


class InboundUdpFlows:
    def __init__(self, link: GuestLink, network: Network, limit: int, idle_s: float,
                 reports: Reporter | None = None) -> None:
        self.link = link
        self.network = network
        self.table: FlowTable[InboundUdp] = FlowTable(limit, idle_s)
        self.reports = reports or Reporter()
        # (forward id, peer, client) -> key: a client's next datagram finds its flow
        self.by_client: dict[_Client, FlowKey] = {}
        self.client_of: dict[FlowKey, _Client] = {}
        self.clashes = 0

    def from_host(self, forward_id: int, fwd: LocalForward, peer: tuple[bytes, int],
                  data: bytes | memoryview, now: float,
                  taken: Callable[[FlowKey], bool]) -> list[Effect]:
        """A datagram the local UDP forward *fwd* received from *peer*. *taken* says
        whether a key is used by an outgoing flow. Malformed SPP headers raise."""
        spp: SppHeader | None = None
        client = peer
        payload: bytes | memoryview = data
        if fwd.proto is Proto.UDPSPP:
            spp, payload = parse_spp(memoryview(data))
            client = spp.client
        key = self.by_client.get((forward_id, peer, client))
        flow = None if key is None else self.table.get(key, now)
        if key is None or flow is None:
            base = FlowKey(IpProto.UDP, fwd.target.packed, fwd.target_port,
                           visible_source(client[0], self.network, fwd.target.version),
                           client[1])
            key = free_key(base, lambda k: k in self.table or taken(k), self.clashes)
            if key is None:
                return []
            if key != base:
                self.clashes += 1
            flow = InboundUdp(forward_id, peer, client, spp, fwd.proto is Proto.UDPRPC,
                              Traffic(now))
            for old in self.table.add(key, flow, now):
                self._forget(old)
                self.reports.flow_done(old, old.proto, now, "closed", "evicted: flow limit")
            self.by_client[(forward_id, peer, client)] = key
            self.client_of[key] = (forward_id, peer, client)
            log.debug("%s: new forwarded flow from %s", key, peer)
            self.reports.flow_new(key, key, now, flow.traffic, "local-forward", "local forward",
                                  forward=forward_id, client=client)
        flow.traffic.to_guest += len(payload)
        flow.traffic.packets_to_guest += 1
        return list(self.link.udp(src=key.remote_addr, src_port=key.remote_port,
                                  dst=key.guest_addr, dst_port=key.guest_port, payload=payload))

    def __contains__(self, key: FlowKey) -> bool:
        return key in self.table

    def from_guest(self, key: FlowKey, payload: memoryview, now: float) -> list[Effect]:
        """The guest's reply on a forwarded flow: to the client, through its forward."""
        flow = self.table.get(key, now)
        if flow is None:
            return []
        flow.traffic.from_guest += len(payload)
        flow.traffic.packets_from_guest += 1
        prefix = build_spp(flow.spp) if flow.spp is not None else b""
        if flow.rpc:
            self.table.remove(key)
            self._forget(key)
            self.reports.flow_done(key, key.proto, now, "closed")
        return [SendTo(flow.forward_id, flow.peer[0], flow.peer[1], payload, prefix)]

    def remove_forward(self, forward_id: int, now: float) -> None:
        for key in self.table.keys():
            flow = self.table.peek(key)
            if flow is not None and flow.forward_id == forward_id:
                self.table.remove(key)
                self._forget(key)
                self.reports.flow_done(key, key.proto, now, "closed", "forward removed")

    def expire(self, now: float) -> list[Effect]:
        """Forget idle flows (they hold no socket of their own: nothing to close)."""
        for key in self.table.expire(now):
            self._forget(key)
            self.reports.flow_done(key, key.proto, now, "timeout")
        return []

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def __len__(self) -> int:
        return len(self.table)

    def records(self) -> list[FlowRecord]:
        return [FlowRecord("udp", key, flow.traffic, forward_id=flow.forward_id)
                for key, flow in self.table.items()]

    def _forget(self, key: FlowKey) -> None:
        client = self.client_of.pop(key, None)
        if client is not None:
            self.by_client.pop(client, None)
