"""The sans-IO core for one guest link: events in through `feed`, effects out.

One door in, one door out: the runtime feeds events (slirpy.events) one at a time and
applies the effects (slirpy.effects) each returns; what applying them produces comes
back as further events. The core never calls out, never reads a clock (time is the
`now` of each event) and is never re-entered while it runs. Between events, the
composition root may use `control` (forwards and rules: values in, values out, no
effects) and read `stats`; `next_deadline` says when the clock is next wanted.

The work is split by job:
- slirpy.ingress: frames from the guest, parsed once, checked, demultiplexed;
- slirpy.hostside and slirpy.tcp.flows: what the host side says about flows, and the
  clients of local forwards;
- slirpy.control: forwards and egress rules; slirpy.stats: counts and listings;
- slirpy.timers: every timed part behind one contract, in one list;
- slirpy.addresses: the one classifier of addresses, built once from the config.
Randomness (TCP's initial sequence numbers, the ids of the DNS queries the core builds)
comes from the constructor's *secret*.
"""

from __future__ import annotations

from typing import Final, assert_never

from slirpy.addresses import AddressPlan
from slirpy.config import Config
from slirpy.control import Control
from slirpy.effects import Effect
from slirpy.events import (ConnectFailed, Connected, DnsUpstreams, Event, ForwardAccepted,
                           ForwardDatagram, GuestFrame, HostData, HostDatagram, HostEof,
                           HostFailed, HostNetworks, HostReset, Readable, Sent, TimerDue,
                           Writable)
from slirpy.forward.nat import InboundUdpFlows
from slirpy.forward.srv import SrvResolver
from slirpy.guest import GuestLink
from slirpy.hostside import HostSide
from slirpy.icmp import EchoFlows
from slirpy.ingress import Ingress
from slirpy.ndp import NeighborDiscovery
from slirpy.neighbours import Neighbours
from slirpy.policy.decide import Policy
from slirpy.reassembly import Reassembler
from slirpy.reports import Reporter
from slirpy.services.dhcp import DhcpServer
from slirpy.services.dns import DnsForwarder
from slirpy.services.dnsclient import DnsClient
from slirpy.stats import Stats
from slirpy.tcp.flows import TcpFlows
from slirpy.timers import Timed, Timers
from slirpy.udp import UdpFlows

ICMP_FLOW_LIMIT: Final = 256


class Stack:
    def __init__(self, config: Config, *, secret: bytes = b"slirpy",
                 offload: bool = False) -> None:
        net = config.network
        self.config = config
        self.addrs = AddressPlan(net, ipv6=config.ipv6)
        self.link = GuestLink(net.our_mac, config.mtu, offload=offload)
        self.reassembler = Reassembler()
        # Flow reports for the event stream: on while a sink or subscriber listens (the
        # composition root turns it on and off); the flow counters always.
        self.reports = Reporter(on=config.events is not None)
        self.udp = UdpFlows(self.link, config.udp_flow_limit, config.udp_idle_s, self.reports)
        self.echo = EchoFlows(self.link, ICMP_FLOW_LIMIT, config.icmp_idle_s, self.reports)
        self.dhcp = DhcpServer(config)
        # One DNS client for every query the core sends: the forwarder's and SRV's.
        self.dns_client = DnsClient(secret)
        self.dns = DnsForwarder(self.link, config.dns_timeout_s, self.dns_client, self.reports)
        self.ndp = NeighborDiscovery(self.link, net, config.mtu, dns=config.dns)
        self.neighbours = Neighbours(self.link, self.ndp, self.addrs.gateway4)
        self.tcp = TcpFlows(self.link, limit=config.tcp_conn_limit,
                            pending_limit=config.max_pending_connects, secret=secret,
                            mtu=config.mtu, reports=self.reports)
        self.inbound = InboundUdpFlows(self.link, net, config.udp_flow_limit, config.udp_idle_s,
                                       self.reports)
        self.srv = SrvResolver(self.dns_client, config.dns_ttl_s)
        self.policy = Policy(routing=config.routing, host=config.host,
                             host_loopback=config.host_loopback, rules=config.rules)
        timed: list[Timed] = [self.tcp, self.udp, self.echo, self.dns_client,
                              self.inbound, self.reassembler, self.neighbours, self.reports]
        if config.ipv6:
            timed.append(self.ndp)  # router advertisements
        self.timers = Timers(timed)
        self.control = Control(self.addrs, self.policy, self.inbound, ipv6=config.ipv6)
        self.stats = Stats(self.tcp, self.udp, self.inbound, self.echo, self.reassembler,
                           self.dns, self.reports)
        self.ingress = Ingress(config, self.addrs, self.link, tcp=self.tcp, udp=self.udp,
                               echo=self.echo, dns=self.dns, dhcp=self.dhcp, ndp=self.ndp,
                               neighbours=self.neighbours, inbound=self.inbound,
                               srv=self.srv, reassembler=self.reassembler,
                               policy=self.policy, control=self.control, stats=self.stats,
                               reports=self.reports)
        self.host = HostSide(config, neighbours=self.neighbours, tcp=self.tcp, udp=self.udp,
                             echo=self.echo, dns_client=self.dns_client,
                             inbound=self.inbound, control=self.control, stats=self.stats,
                             reports=self.reports)

    def feed(self, event: Event, now: float) -> list[Effect]:
        """The one door in: handle *event* at time *now*; the effects to apply."""
        self.timers.touch()
        match event:
            case GuestFrame(frame, checksum_ok):
                effects = self.ingress.on_frame(frame, checksum_ok, now)
            case (Connected() | ConnectFailed() | Sent() | Writable() | Readable() | HostData()
                  | HostEof() | HostReset()):
                effects = self.tcp.on_host_event(event, now)
            case HostDatagram(flow, data):
                effects = self.host.on_datagram(flow, data, now)
            case HostFailed(flow, error):
                effects = self.host.on_failure(flow, error, now)
            case TimerDue():
                effects = self.timers.expire(now)
            case ForwardAccepted():
                effects = self.host.on_forward_accepted(event, now)
            case ForwardDatagram():
                effects = self.host.on_forward_datagram(event, now)
            case HostNetworks(networks):
                self.policy.set_host_networks(networks)
                return []
            case DnsUpstreams(servers):
                self.dns.set_upstreams(list(servers))
                return []
            case _:
                assert_never(event)
        if self.reports.outbox:  # flows opened or ended while reports are on
            effects = effects + self.reports.take()  # a new list: a part's may be kept
        return effects

    def next_deadline(self) -> float | None:
        """When the core next wants a TimerDue; None: not until something happens."""
        return self.timers.next_deadline()
