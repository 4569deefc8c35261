"""What the host side says about datagram flows, and the clients of local forwards.

A datagram or an error on a host socket goes to the part whose socket it is: the DNS
client's queries first (it hands each to its asker, the DNS forwarder or the SRV
resolver), then echo, then UDP flows. A client a local forward accepted becomes a
connection the core opens towards the guest, from the address the guest should see
(slirpy.forward.nat); a datagram a UDP forward received goes on to the guest the same
way. A local forward's target is an address in the guest's network by its type
(slirpy.forward.spec.LocalForward): nothing to check here. Frames we start towards a
guest address not heard from yet wait for its MAC (slirpy.neighbours).
Never done here: sockets (the runtime), TCP's own answers (slirpy.tcp.flows).
"""

from __future__ import annotations

import logging

from slirpy.config import Config
from slirpy.control import Control
from slirpy.effects import AdoptStream, Effect, RefuseStream
from slirpy.events import ForwardAccepted, ForwardDatagram, HostError
from slirpy.flows.key import FlowKey
from slirpy.forward.nat import InboundUdpFlows, free_key, visible_source
from slirpy.icmp import EchoFlows
from slirpy.neighbours import Neighbours
from slirpy.reports import Reporter
from slirpy.services.dnsclient import DnsClient
from slirpy.stats import Stats
from slirpy.tcp.flows import TcpFlows
from slirpy.udp import UdpFlows
from slirpy.wire import Malformed
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)


class HostSide:
    def __init__(self, config: Config, *, neighbours: Neighbours, tcp: TcpFlows,
                 udp: UdpFlows, echo: EchoFlows, dns_client: DnsClient,
                 inbound: InboundUdpFlows, control: Control, stats: Stats,
                 reports: Reporter | None = None) -> None:
        self.network = config.network
        self.neighbours = neighbours
        self.tcp = tcp
        self.udp = udp
        self.echo = echo
        self.dns_client = dns_client
        self.inbound = inbound
        self.control = control
        self.stats = stats
        self.reports = reports or Reporter()
        self.tcp_clashes = 0  # forwarded clients that could not keep their own port

    def on_datagram(self, flow: FlowKey, data: bytes | memoryview,
                    now: float) -> list[Effect]:
        if self.dns_client.owns(flow):
            return self.dns_client.on_datagram(flow, data, now)
        if flow.proto in (IpProto.ICMP, IpProto.ICMPV6):
            return self.echo.on_host_datagram(flow, data, now)
        return self.udp.on_host_datagram(flow, data, now)

    def on_failure(self, flow: FlowKey, error: HostError, now: float) -> list[Effect]:
        if self.dns_client.owns(flow):
            return self.dns_client.on_error(flow, error, now)
        if flow.proto in (IpProto.ICMP, IpProto.ICMPV6):
            return self.echo.on_host_error(flow, error, now)
        return self.udp.on_host_error(flow, error, now)

    def on_forward_accepted(self, event: ForwardAccepted, now: float) -> list[Effect]:
        """A client of a local TCP forward: our SYN to the guest, and the key the runtime
        carries the client's socket under; or its refusal (a reset for the client)."""
        refuse: list[Effect] = [RefuseStream(event.token)]
        fwd = self.control.local_forward(event.forward_id)
        if fwd is None:
            return refuse  # removed meanwhile
        port = fwd.target_port or event.guest_port
        if not port or not event.client[1]:
            return refuse  # no guest port known; or a PROXY header naming port 0 (no TCP's)
        base = FlowKey(IpProto.TCP, fwd.target.packed, port,
                       visible_source(event.client[0], self.network, fwd.target.version),
                       event.client[1])
        key = free_key(base, lambda k: k in self.tcp, self.tcp_clashes)
        if key is None:
            return refuse
        if key != base:
            self.tcp_clashes += 1
        syn = self.tcp.open_to_guest(key, event.space, now)
        conn = self.tcp.get(key)
        if syn is None or conn is None:
            return refuse
        self.reports.flow_new(key, key, now, conn, "local-forward", "local forward",
                              forward=event.forward_id, client=event.client)
        return [AdoptStream(event.token, key),
                *self.neighbours.when_resolved(key.guest_addr, syn, now)]

    def on_forward_datagram(self, event: ForwardDatagram, now: float) -> list[Effect]:
        """A datagram a local UDP forward received: on to the guest."""
        fwd = self.control.local_forward(event.forward_id)
        if fwd is None:
            return []  # removed meanwhile
        if not event.peer[1]:
            # From port 0 (a raw socket can send that): the guest could never answer it.
            self.stats.count_drop("udp-port-zero")
            return []
        try:
            frames = self.inbound.from_host(event.forward_id, fwd, event.peer, event.data,
                                            now, lambda k: k in self.udp)
        except Malformed as exc:
            self.stats.count_drop(exc.reason)
            log.debug("dropped forwarded datagram from %s: %s", event.peer, exc.reason)
            return []
        return self.neighbours.when_resolved(fwd.target.packed, frames, now)
