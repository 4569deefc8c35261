"""Frames from the guest: parsed once, checked, and handed to the part that owns them.

Every frame from the guest enters here; any `Malformed` raised while it is handled is
caught in one place, counted by reason and logged at debug: hostile input ends as a
count. IPv4 and IPv6 take one path: the parsed headers of both families have the same
fields, flows are keyed by packed addresses of either length, and the link builds
frames of either family. What differs stays at the edges: ARP or neighbour discovery,
DHCP or router advertisements, ICMP or ICMPv6 numbers.

Where a datagram from the guest goes is decided by its destination:
- a DNS address (network+3, prefix::3): port 53 is the forwarder's, anything else is
  "port unreachable";
- a gateway (network+2, prefix::2): the DHCP server on port 67 (IPv4), else the host's
  loopback (127.0.0.1, ::1) when host loopback is on (as slirp4netns does), else "net
  unreachable" (also as slirp4netns does);
- our addresses answer pings themselves;
- broadcast: DHCP only; addresses slirpy will never forward (see slirpy.addresses):
  dropped and counted;
- anything else: a flow on a host socket to that very address.

Before a new flow makes any host system call (the SYN, the first datagram, the first
echo), the egress policy decides (slirpy.policy.decide): a blocked TCP connection gets
an RST, a blocked datagram or echo "administratively prohibited"; each block is
counted by what decided it and logged at debug. Remote forwards, replies on local
forwards and the DNS forwarder are not subject to it: they are explicit.
Never done here: anything with a socket; the answers of the host side (slirpy.stack).
"""

from __future__ import annotations

import logging
from typing import Final

from slirpy.addresses import AddressPlan
from slirpy.config import Config
from slirpy.control import Control
from slirpy.effects import Effect, ToGuest
from slirpy.flows.key import ECHO_REMOTE_PORT, FlowKey
from slirpy.forward.nat import InboundUdpFlows
from slirpy.forward.spec import RemoteForward, SrvForward
from slirpy.forward.srv import SrvResolver
from slirpy.guest import GuestLink
from slirpy.icmp import EchoFlows
from slirpy.ndp import NeighborDiscovery
from slirpy.neighbours import Neighbours
from slirpy.policy.decide import Outcome, Policy, Verdict
from slirpy.reassembly import FragKey, Reassembler
from slirpy.reports import Measured, Reporter
from slirpy.services.dhcp import DhcpServer
from slirpy.services.dns import DnsForwarder
from slirpy.stats import Stats
from slirpy.tcp.flows import TcpFlows
from slirpy.udp import UdpFlows, unreachable
from slirpy.wire import Malformed
from slirpy.wire.arp import ArpOp, ArpPacket, build_arp, PACKET_LEN as ARP_LEN
from slirpy.wire.checksum import pseudo_header_sum
from slirpy.wire.dns import DNS_PORT
from slirpy.wire.dhcp import CLIENT_PORT, SERVER_PORT, DhcpMessage
from slirpy.wire.ethernet import HEADER_LEN as ETH_LEN, EtherType, EthernetHeader
from slirpy.wire.icmp import IcmpHeader, IcmpType, UnreachCode
from slirpy.wire.icmpv6 import ERROR_TYPES as ICMP6_ERRORS, MLD_TYPES, Icmp6Type
from slirpy.wire.ipv4 import IpProto, Ipv4Header
from slirpy.wire.ipv6 import UNSPECIFIED, Ipv6Header, is_multicast, walk_extensions
from slirpy.wire.tcp import SYN, TcpHeader
from slirpy.wire.udp import UdpHeader

log = logging.getLogger(__name__)

Ip = Ipv4Header | Ipv6Header
TRANSPORT_TCP: Final = "tcp"
TRANSPORT_UDP: Final = "udp"
PASSED_BY_DNS: Final = Verdict(Outcome.PASS, "dns forwarder")
PASSED_BY_NOTHING: Final = Verdict(Outcome.PASS, "")


class Ingress:
    def __init__(self, config: Config, addrs: AddressPlan, link: GuestLink, *,
                 tcp: TcpFlows, udp: UdpFlows, echo: EchoFlows, dns: DnsForwarder,
                 dhcp: DhcpServer, ndp: NeighborDiscovery, neighbours: Neighbours,
                 inbound: InboundUdpFlows, srv: SrvResolver, reassembler: Reassembler,
                 policy: Policy, control: Control, stats: Stats,
                 reports: Reporter | None = None) -> None:
        self.config = config
        self.addrs = addrs
        self.ipv6 = config.ipv6
        self.link = link
        self.tcp = tcp
        self.udp = udp
        self.echo = echo
        self.dns = dns
        self.dhcp = dhcp
        self.ndp = ndp
        self.neighbours = neighbours
        self.inbound = inbound
        self.srv = srv
        self.reassembler = reassembler
        self.policy = policy
        self.control = control
        self.stats = stats
        self.reports = reports or Reporter()
        self.passed = PASSED_BY_NOTHING  # what let the last new flow pass (its report)

    def on_frame(self, frame: bytes | bytearray | memoryview, checksum_ok: bool,
                 now: float) -> list[Effect]:
        """One frame from the guest. Hostile input ends here, as a count.

        *checksum_ok*: the tap's virtio-net header says the guest's kernel vouches for
        the transport checksum (partial, offloaded to us, or already checked).
        """
        try:
            return self._dispatch(EthernetHeader.parse(memoryview(frame)), now, checksum_ok)
        except Malformed as exc:
            self.stats.count_drop(exc.reason)
            log.debug("dropped frame: %s", exc.reason)
            return []

    def _dispatch(self, eth: EthernetHeader, now: float, checksum_ok: bool) -> list[Effect]:
        match eth.ethertype:
            case EtherType.IPV4:
                return self._on_ipv4(eth, Ipv4Header.parse(eth.payload), now, checksum_ok)
            case EtherType.ARP:
                return self._on_arp(eth, ArpPacket.parse(eth.payload))
            case EtherType.IPV6 if self.ipv6:
                return self._on_ipv6(eth, Ipv6Header.parse(eth.payload), now, checksum_ok)
            case EtherType.IPV6:
                raise Malformed("ipv6-disabled")
            case _:
                raise Malformed("eth-unsupported-type")

    def _on_arp(self, eth: EthernetHeader, arp: ArpPacket) -> list[Effect]:
        released: list[Effect] = []
        ours = self.addrs.ours
        if arp.sender_ip not in ours:
            self.link.learn(arp.sender_ip, arp.sender_mac)
            if self.link.held:
                released += self.link.release(arp.sender_ip)
        if arp.op != ArpOp.REQUEST or arp.target_ip not in ours:
            return released  # gratuitous ARP, replies, questions about others: nothing to say
        buf = self.link.ethernet(arp.sender_mac, EtherType.ARP, ETH_LEN + ARP_LEN)
        build_arp(buf, ETH_LEN, op=ArpOp.REPLY, sender_mac=self.link.our_mac,
                  sender_ip=arp.target_ip, target_mac=arp.sender_mac, target_ip=arp.sender_ip)
        return [ToGuest(buf), *released]

    def _on_ipv4(self, eth: EthernetHeader, ip: Ipv4Header, now: float,
                 checksum_ok: bool) -> list[Effect]:
        bad_source = self.addrs.source_drop(ip.src)
        if bad_source is not None:
            raise Malformed(bad_source)
        return self._on_ip(eth, ip, ip.proto, now, checksum_ok)

    def _on_ipv6(self, eth: EthernetHeader, ip: Ipv6Header, now: float,
                 checksum_ok: bool) -> list[Effect]:
        bad_source = self.addrs.source_drop(ip.src)
        if bad_source is not None:
            raise Malformed(bad_source)
        if is_multicast(ip.dst) or ip.src == UNSPECIFIED:
            # Multicast (neighbour and router solicitations, MLD reports) or DAD: ND only.
            if ip.proto != IpProto.ICMPV6 or ip.is_fragment:
                raise Malformed("ipv6-multicast-not-nd")
            return self._on_icmp6(eth, ip, self._icmp6(ip, ip.payload, checksum_ok), now)
        return self._on_ip(eth, ip, ip.proto, now, checksum_ok)

    def _on_ip(self, eth: EthernetHeader, ip: Ip, proto: int, now: float,
               checksum_ok: bool) -> list[Effect]:
        """A unicast datagram from the guest, either family; its source is checked."""
        self.link.learn(ip.src, eth.src)
        if self.link.held:
            released: list[Effect] = list(self.link.release(ip.src))
            if released:
                return released + self._on_ip(eth, ip, proto, now, checksum_ok)
        payload = ip.payload
        if ip.is_fragment:
            key = FragKey(ip.src, ip.dst, proto, ip.ident)
            whole = self.reassembler.on_fragment(key, ip.frag_offset, ip.more_fragments,
                                                 payload, now)
            if whole is None:
                return []
            payload = memoryview(whole)
            if isinstance(ip, Ipv6Header):  # the fragmentable part may start with headers
                proto, payload = walk_extensions(proto, payload)
        verify = not checksum_ok
        match proto:
            case IpProto.UDP:
                udp = UdpHeader.parse(payload, ip.src, ip.dst, verify_checksum=verify)
                return self._on_udp(ip, udp, now)
            case IpProto.TCP:
                seg = TcpHeader.parse(payload, ip.src, ip.dst, verify_checksum=verify)
                return self._on_tcp(ip, seg, now)
            case IpProto.ICMP if isinstance(ip, Ipv4Header):
                return self._on_icmp(ip, IcmpHeader.parse(payload, verify_checksum=verify), now)
            case IpProto.ICMPV6 if isinstance(ip, Ipv6Header):
                return self._on_icmp6(eth, ip, self._icmp6(ip, payload, checksum_ok), now)
            case _:
                raise Malformed("ip-unsupported-proto")

    @staticmethod
    def _icmp6(ip: Ipv6Header, message: memoryview, checksum_ok: bool) -> IcmpHeader:
        initial = pseudo_header_sum(ip.src, ip.dst, IpProto.ICMPV6, len(message))
        return IcmpHeader.parse(message, verify_checksum=not checksum_ok, initial=initial)

    def _on_udp(self, ip: Ip, udp: UdpHeader, now: float) -> list[Effect]:
        key = FlowKey(IpProto.UDP, ip.src, udp.src_port, ip.dst, udp.dst_port)
        if udp.dst_port == SERVER_PORT and (ip.dst in self.addrs.broadcasts
                                            or ip.dst == self.addrs.gateway4):
            return self._on_dhcp(udp, now)
        if key in self.inbound:
            return self.inbound.from_guest(key, udp.payload, now)
        fwd = self.control.remote_forward(TRANSPORT_UDP, ip.dst, udp.dst_port)
        if fwd is not None:
            return self._remote_udp(key, fwd, udp.payload, now)
        if ip.dst in self.addrs.dns:
            if not self.config.dns:
                # --disable-dns: an address of the network that answers only ping, as
                # slirp4netns's: no port unreachable, no DNS.
                raise Malformed("dns-disabled")
            if udp.dst_port == DNS_PORT:
                return self.dns.on_query(ip.dst, ip.src, udp.src_port, udp.payload, now)
            return unreachable(self.link, key, UnreachCode.PORT)
        host = self._host_address(ip.dst)
        if key not in self.udp:
            refused = self._egress(key, now)
            if refused is not None:
                return unreachable(self.link, key, refused)
            effects = self.udp.from_guest(key, host, udp.dst_port, udp.payload, now)
            self._opened(key, self.udp.traffic(key), now, self.passed)
            return effects
        return self.udp.from_guest(key, host, udp.dst_port, udp.payload, now)

    def _on_tcp(self, ip: Ip, seg: TcpHeader, now: float) -> list[Effect]:
        key = FlowKey(IpProto.TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        if key in self.tcp:
            return self.tcp.on_segment(key, seg, b"", now)
        fwd = self.control.remote_forward(TRANSPORT_TCP, ip.dst, seg.dst_port)
        if fwd is not None:
            return self._remote_tcp(key, fwd, seg, now)
        if ip.dst in self.addrs.dns:
            if not self.config.dns:
                raise Malformed("dns-disabled")  # no reset: a connect times out (see UDP)
            upstream = self.dns.preferred_upstream()
            if seg.dst_port != DNS_PORT or upstream is None:
                return self.tcp.reset_for(key, seg)
            host = upstream
            passed = PASSED_BY_DNS
        else:
            host = self._host_address(ip.dst)
            if seg.flags & SYN:  # a new connection, if the policy lets it be
                refused = self._egress(key, now)
                if refused is UnreachCode.NET:
                    return unreachable(self.link, key, UnreachCode.NET, seq=seg.seq)
                if refused is not None:
                    return self.tcp.reset_for(key, seg)
            passed = self.passed
        # A segment of no connection: a SYN opens one (then reported), else an RST.
        effects = self.tcp.on_segment(key, seg, host, now)
        self._opened(key, self.tcp.get(key), now, passed)
        return effects

    def _remote_tcp(self, key: FlowKey, fwd: RemoteForward | SrvForward, seg: TcpHeader,
                    now: float) -> list[Effect]:
        """A guest connection to remote forward *fwd*: on to its target on the host."""
        match fwd:
            case RemoteForward(target=target, target_port=port):
                effects = self.tcp.on_segment(key, seg, target.packed, now, port)
                self._opened_remote(key, self.tcp.get(key), fwd, now)
                return effects
            case SrvForward(target=srv, target_port=port):
                # The SYN is taken now; the connection waits for the lookup (RFC 2782).
                effects = self.tcp.on_segment(key, seg, None, now)
                if key not in self.tcp:
                    return effects
                self._opened_remote(key, self.tcp.get(key), fwd, now)

                def connect(found: tuple[bytes, int] | None, when: float) -> list[Effect]:
                    where = None if found is None else (found[0], port or found[1])
                    return self.tcp.connect_later(key, where, when)

                return effects + self.srv.lookup(srv, now, connect)

    def _remote_udp(self, key: FlowKey, fwd: RemoteForward | SrvForward, payload: memoryview,
                    now: float) -> list[Effect]:
        """A guest datagram to remote forward *fwd*: on to its target on the host."""
        match fwd:
            case RemoteForward() | SrvForward() if key in self.udp:
                return self.udp.from_guest(key, b"", 0, payload, now)  # its target is known
            case RemoteForward(target=target, target_port=port):
                effects = self.udp.from_guest(key, target.packed, port, payload, now)
                self._opened_remote(key, self.udp.traffic(key), fwd, now)
                return effects
            case SrvForward(target=srv, target_port=port):
                data = bytes(payload)  # it waits for the lookup

                def send(found: tuple[bytes, int] | None, when: float) -> list[Effect]:
                    if found is None:
                        return unreachable(self.link, key, UnreachCode.HOST)
                    new = key not in self.udp
                    effects = self.udp.from_guest(key, found[0], port or found[1],
                                                  memoryview(data), when)
                    if new:
                        self._opened_remote(key, self.udp.traffic(key), fwd, when)
                    return effects

                return self.srv.lookup(srv, now, send)

    def _on_dhcp(self, udp: UdpHeader, now: float) -> list[Effect]:
        reply = self.dhcp.on_message(DhcpMessage.parse(udp.payload), now)
        if reply is None:
            return []
        return list(self.link.udp(src=self.addrs.gateway4, src_port=SERVER_PORT,
                                  dst=reply.dst_ip, dst_port=CLIENT_PORT,
                                  payload=reply.payload, dst_mac=reply.dst_mac))

    def _on_icmp(self, ip: Ipv4Header, icmp: IcmpHeader, now: float) -> list[Effect]:
        if icmp.type != IcmpType.ECHO_REQUEST:
            raise Malformed("icmp-unsupported-type")  # errors the guest sends us: nothing to do
        return self._on_echo(ip, IpProto.ICMP, icmp, now)

    def _on_icmp6(self, eth: EthernetHeader, ip: Ipv6Header, icmp: IcmpHeader,
                  now: float) -> list[Effect]:
        if icmp.type == Icmp6Type.ECHO_REQUEST and not is_multicast(ip.dst) \
                and ip.src != UNSPECIFIED:
            return self._on_echo(ip, IpProto.ICMPV6, icmp, now)
        if Icmp6Type.ROUTER_SOLICITATION <= icmp.type <= Icmp6Type.NEIGHBOR_ADVERTISEMENT:
            if ip.is_fragment:
                raise Malformed("nd-fragmented")  # RFC 6980: never believed
            return self.ndp.on_message(ip, icmp, eth.src, self.addrs.ours, now)
        if icmp.type in MLD_TYPES:
            return []  # the guest joining its groups: nothing for a router of one host to do
        if icmp.type in ICMP6_ERRORS:
            raise Malformed("icmp6-error-from-guest")  # nothing to do with it, as for IPv4
        raise Malformed("icmp6-unsupported-type")

    def _on_echo(self, ip: Ip, proto: int, icmp: IcmpHeader, now: float) -> list[Effect]:
        if ip.dst in self.addrs.ours:
            return self.echo.answer_ourselves(ip.src, ip.dst, icmp)
        self._host_address(ip.dst)  # raises for destinations never forwarded
        key = FlowKey(proto, ip.src, icmp.echo_id, ip.dst, ECHO_REMOTE_PORT)
        if key not in self.echo:
            refused = self._egress(key, now)
            if refused is not None:
                return unreachable(self.link, key, refused)
            effects = self.echo.from_guest(ip.src, ip.dst, icmp, now)
            self._opened(key, self.echo.traffic(key), now, self.passed)
            return effects
        return self.echo.from_guest(ip.src, ip.dst, icmp, now)

    def _egress(self, key: FlowKey, now: float) -> UnreachCode | None:
        """None if a new flow on *key* may go (`passed` says why); else what to tell the
        guest (TCP: any code means RST, but "net unreachable" for the gateway without
        host loopback)."""
        verdict = self.policy.decide(key.proto, key.remote_addr, key.remote_port,
                                     gateway=key.remote_addr in self.addrs.gateways)
        if verdict.outcome is Outcome.PASS:
            self.passed = verdict
            return None
        if verdict.outcome is Outcome.UNREACHABLE:
            return UnreachCode.NET  # as slirp4netns answers for the gateway
        self.stats.count_block(verdict.why)
        self.reports.blocked(key, verdict.why, verdict.rule, now)
        log.debug("%s: blocked by %s", key, verdict.why)
        return UnreachCode.ADMIN_PROHIBITED

    # --- reports of new flows (slirpy.reports): once a flow, never a packet -------------------

    def _opened(self, key: FlowKey, flow: Measured | None, now: float,
                passed: Verdict) -> None:
        """A flow the guest opened on *key*, passed by *passed*; none if it was not made."""
        if flow is not None:
            self.reports.flow_new(key, key, now, flow, "guest", passed.why, rule=passed.rule)

    def _opened_remote(self, key: FlowKey, flow: Measured | None,
                       fwd: RemoteForward | SrvForward, now: float) -> None:
        if flow is not None:
            forward_id = self.control.remote_forward_id(fwd)  # once a flow: a short scan
            self.reports.flow_new(key, key, now, flow, "remote-forward", "remote forward",
                                  forward=forward_id)

    def _host_address(self, dst: bytes) -> bytes:
        """The host address a guest destination maps to (the gateway's: host loopback).

        Raises Malformed for destinations that are never forwarded.
        """
        reason = self.addrs.destination_drop(dst)
        if reason is not None:
            raise Malformed(reason)
        return self.addrs.host_address(dst)
