"""The sans-IO stack for one guest link: frames and host events in, effects out.

Every frame from the guest enters through `on_frame`, the one place where hostile
input ends as a count: any `Malformed` raised below is caught there, counted in
`drops` by reason and logged at debug. Results of effects come back through
`on_host_datagram` and `on_host_error`; time passes through `on_timer`, due at
`next_deadline()`.

IPv4 and IPv6 take one path: the parsed headers of both families have the same
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
- broadcast: DHCP only; addresses slirpy will never forward (0/8, loopback, multicast,
  class E, the guest's own networks; for IPv6 also link-local, unspecified and the
  IPv4-mapped and -compatible ranges, through which a host socket would reach IPv4):
  dropped and counted;
- anything else: a flow on a host socket to that very address.

Before a new flow makes any host system call (the SYN, the first datagram, the first
echo), the egress policy decides (slirpy.policy.decide): a blocked TCP connection gets
an RST, a blocked datagram or echo "administratively prohibited"; each block is
counted by what decided it and logged at debug. Remote forwards, replies on local
forwards and the DNS forwarder are not subject to it: they are explicit.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

from slirpy.config import Config
from slirpy.effects import Effect, HostError
from slirpy.flows.key import FlowKey
from slirpy.forward.nat import InboundUdpFlows, free_key, visible_source
from slirpy.forward.spec import Forward, SrvName
from slirpy.forward.srv import SrvResolver
from slirpy.guest import GuestLink
from slirpy.icmp import EchoFlows
from slirpy.ndp import NeighborDiscovery
from slirpy.policy.decide import Outcome, Policy
from slirpy.reassembly import FragKey, Reassembler
from slirpy.services.dhcp import DhcpServer
from slirpy.services.dns import DNS_PORT, DnsForwarder
from slirpy.udp import UdpFlows, unreachable
from slirpy.wire import Malformed
from slirpy.wire.arp import ArpOp, ArpPacket, build_arp, PACKET_LEN as ARP_LEN
from slirpy.wire.dhcp import CLIENT_PORT, SERVER_PORT, DhcpMessage
from slirpy.wire.ethernet import BROADCAST, HEADER_LEN as ETH_LEN, EtherType, EthernetHeader
from slirpy.wire.checksum import pseudo_header_sum
from slirpy.wire.icmp import IcmpHeader, IcmpType, UnreachCode
from slirpy.wire.icmpv6 import ERROR_TYPES as ICMP6_ERRORS, Icmp6Type
from slirpy.wire.ipv4 import IpProto, Ipv4Header
from slirpy.wire.ipv6 import UNSPECIFIED, Ipv6Header, is_multicast, walk_extensions
from slirpy.wire.udp import UdpHeader
from slirpy.effects import ToGuest
from slirpy.tcp.conn import TcpConn, reset_for
from slirpy.tcp.flows import TcpFlows
from slirpy.wire.tcp import SYN, TcpHeader

log = logging.getLogger(__name__)


def _endpoint(addr: bytes, port: int) -> str:
    return f"{ipaddress.ip_address(addr)}:{port}" if len(addr) == 4 else \
        f"[{ipaddress.ip_address(addr)}]:{port}"


HOST_LOOPBACK4: Final = ipaddress.IPv4Address("127.0.0.1").packed
HOST_LOOPBACK6: Final = ipaddress.IPv6Address("::1").packed
_LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"
_NEVER_FORWARDED: Final = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
# ::/96 holds :: and ::1 and the deprecated IPv4-compatible addresses; through
# ::ffff:0:0/96 an IPv6 host socket reaches IPv4 (127.0.0.1 among them).
_NEVER_FORWARDED6: Final = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0/96", "fe80::/10", "ff00::/8"))
ICMP_FLOW_LIMIT: Final = 256
_MLD_TYPES: Final = frozenset({130, 131, 132, 143})  # MLD query, reports, done (RFC 3810)
Ip = Ipv4Header | Ipv6Header


class Stack:
    def __init__(self, config: Config, *, secret: bytes = b"slirpy",
                 offload: bool = False) -> None:
        net = config.network
        self.remote: dict[tuple[str, bytes, int], Forward] = {}  # (transport, addr, port)
        self.config = config
        self.gateway = net.gateway.packed  # IPv4's: DHCP's server and ARP's asker
        self.ipv6 = config.ipv6
        ipv6 = [net.gateway6.packed, net.dns6.packed] if self.ipv6 else []
        self.gateways = frozenset([self.gateway, *ipv6[:1]])
        self.dns_addrs = frozenset([net.dns.packed, *ipv6[1:]])
        self.our_addrs = self._our_addrs()
        self.broadcasts = frozenset({_LIMITED_BROADCAST, net.cidr.broadcast_address.packed})
        self.drops: Counter[str] = Counter()
        self.link = GuestLink(net.our_mac, config.mtu, offload=offload)
        self.reassembler = Reassembler()
        self.udp = UdpFlows(self.link, config.udp_flow_limit, config.udp_idle_s)
        self.echo = EchoFlows(self.link, ICMP_FLOW_LIMIT, config.icmp_idle_s)
        self.dhcp = DhcpServer(config)
        self.dns = DnsForwarder(self.link, self.dns_addrs, config.dns_timeout_s)
        self.ndp = NeighborDiscovery(self.link, net, config.mtu, dns=config.dns)
        self.tcp = TcpFlows(self.link, limit=config.tcp_conn_limit, secret=secret,
                            mtu=config.mtu)
        self.inbound = InboundUdpFlows(self.link, net, config.udp_flow_limit, config.udp_idle_s)
        self.srv = SrvResolver(config.dns_ttl_s, secret)
        self.tcp_clashes = 0
        self.policy = Policy(routing=config.routing, host=config.host,
                             host_loopback=config.host_loopback, rules=config.rules)
        self.blocked: Counter[str] = Counter()  # new flows refused, by what refused them

    # --- events in --------------------------------------------------------------------

    def on_frame(self, frame: bytes | bytearray | memoryview, now: float, *,
                 checksum_ok: bool = False) -> list[Effect]:
        """The one entry point for guest frames. Hostile input ends here, as a count.

        *checksum_ok*: the tap's virtio-net header says the guest's kernel vouches for
        the transport checksum (partial, offloaded to us, or already checked).
        """
        try:
            return self._dispatch(EthernetHeader.parse(memoryview(frame)), now, checksum_ok)
        except Malformed as exc:
            self.drops[exc.reason] += 1
            log.debug("dropped frame: %s", exc.reason)
            return []

    def on_host_datagram(self, flow: FlowKey, data: bytes | memoryview,
                         now: float) -> list[Effect]:
        if self.dns.owns(flow):
            return self.dns.on_answer(flow, data, now)
        if self.srv.owns(flow):
            return self.srv.on_answer(flow, data, now)
        if flow.proto in (IpProto.ICMP, IpProto.ICMPV6):
            return self.echo.on_host_datagram(flow, data, now)
        return self.udp.on_host_datagram(flow, data, now)

    def on_host_error(self, flow: FlowKey, error: HostError, now: float) -> list[Effect]:
        if self.dns.owns(flow):
            return self.dns.on_error(flow, error, now)
        if self.srv.owns(flow):
            return self.srv.on_error(flow, error, now)
        if flow.proto in (IpProto.ICMP, IpProto.ICMPV6):
            return self.echo.on_host_error(flow, error, now)
        return self.udp.on_host_error(flow, error, now)

    def on_timer(self, now: float) -> list[Effect]:
        self.reassembler.expire(now)
        self.inbound.expire(now)
        effects = [*self.udp.expire(now), *self.echo.expire(now), *self.dns.on_timer(now),
                   *self.tcp.on_timer(now), *self.srv.on_timer(now)]
        if self.ipv6:
            effects += self.ndp.on_timer(now)
        if self.link.held:  # guest addresses that did not answer ARP or NS yet: ask again
            effects += [self._solicit(ip) for ip in self.link.asks_due(now)]
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.udp.next_deadline(), self.echo.next_deadline(),
                                 self.dns.next_deadline(), self.reassembler.next_deadline(),
                                 self.tcp.next_deadline(), self.inbound.next_deadline(),
                                 self.srv.next_deadline(),
                                 self.ndp.next_deadline() if self.ipv6 else None)
                     if d is not None]
        return min(deadlines, default=None)

    # --- TCP events from the host (the runtime's answers to Connect, Send and reads) ---------

    def on_connected(self, flow: FlowKey, space: int, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_connected(space, now))

    def on_connect_failed(self, flow: FlowKey, error: int, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_connect_failed(error, now))

    def on_sent(self, flow: FlowKey, nbytes: int, wanted: int, space: int,
                now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_sent(nbytes, wanted, space, now))

    def on_writable(self, flow: FlowKey, space: int, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_writable(space, now))

    def on_host_data(self, flow: FlowKey, data: memoryview, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_host_data(data, now))

    def on_host_eof(self, flow: FlowKey, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_host_eof(now))

    def on_host_reset(self, flow: FlowKey, now: float) -> list[Effect]:
        return self._tcp(flow, lambda conn: conn.on_host_reset(now))

    def peek_limit(self, flow: FlowKey) -> int:
        """How many bytes the runtime may peek from the flow's socket now."""
        conn = self.tcp.get(flow)
        return 0 if conn is None else conn.peek_limit()

    def _tcp(self, flow: FlowKey, event: Callable[[TcpConn], list[Effect]]) -> list[Effect]:
        conn = self.tcp.get(flow)
        if conn is None:
            return []  # closed meanwhile; the runtime closes the socket on our Close
        return self.tcp.after(conn, event(conn))

    # --- forwards ------------------------------------------------------------------------------

    def on_forward_accept(self, fwd: Forward, client: tuple[bytes, int], space: int,
                          now: float, guest_port: int = 0) -> tuple[FlowKey | None, list[Effect]]:
        """A client connected to local forward *fwd* (from *client*, or as a PROXY header
        names it; *guest_port* from that header when the forward's port is 0). Returns
        the key to adopt the accepted socket under, or None: reset the client."""
        assert isinstance(fwd.target, ipaddress.IPv4Address | ipaddress.IPv6Address)
        port = fwd.target_port or guest_port
        if not port or (fwd.target.version == 6 and not self.ipv6):
            return None, []
        base = FlowKey(IpProto.TCP, fwd.target.packed, port,
                       visible_source(client[0], self.config.network, fwd.target.version),
                       client[1])
        key = free_key(base, lambda k: k in self.tcp.conns, self.tcp_clashes)
        if key is None:
            return None, []
        if key != base:
            self.tcp_clashes += 1
        syn = self.tcp.open_to_guest(key, space, now)
        if syn is None:
            return None, []
        return key, self._resolved(key.guest_addr, syn, now)

    def on_forward_datagram(self, forward_id: int, fwd: Forward, peer: tuple[bytes, int],
                            data: bytes | memoryview, now: float) -> list[Effect]:
        """A datagram local UDP forward *fwd* received from *peer*."""
        try:
            frames = self.inbound.from_host(forward_id, fwd, peer, data, now,
                                            lambda k: k in self.udp.table)
        except Malformed as exc:
            self.drops[exc.reason] += 1
            log.debug("dropped forwarded datagram from %s: %s", peer, exc.reason)
            return []
        assert isinstance(fwd.target, ipaddress.IPv4Address | ipaddress.IPv6Address)
        return self._resolved(fwd.target.packed, list(frames), now)

    def add_remote(self, fwd: Forward) -> None:
        """Answer inside the guest at fwd.bind:fwd.bind_port from now on."""
        self.remote[(fwd.transport, fwd.bind.packed, fwd.bind_port)] = fwd
        self.our_addrs = self._our_addrs()

    def remove_remote(self, fwd: Forward) -> None:
        self.remote.pop((fwd.transport, fwd.bind.packed, fwd.bind_port), None)
        self.our_addrs = self._our_addrs()

    def remove_local(self, forward_id: int) -> None:
        """A local forward is gone: forget its UDP flows (TCP ones run to their end)."""
        self.inbound.remove_forward(forward_id)

    def _our_addrs(self) -> frozenset[bytes]:
        """Addresses we answer ARP, NS and ping for: ours, and remote forwards' in the
        guest's networks."""
        net = self.config.network
        extra = {addr for (_, addr, _) in self.remote
                 if ipaddress.ip_address(addr) in (net.cidr if len(addr) == 4 else net.cidr6)}
        if self.ipv6:
            extra.add(net.link_local6.packed)
        return frozenset({*self.gateways, *self.dns_addrs, *extra})

    def _resolved(self, dst: bytes, frames: list[Effect], now: float) -> list[Effect]:
        """Frames we start towards *dst*: held until the guest's MAC is known."""
        to_guest = [f for f in frames if isinstance(f, ToGuest)]
        rest = [f for f in frames if not isinstance(f, ToGuest)]
        return [*rest, *self.link.when_resolved(dst, to_guest, now, self._solicit)]

    def _solicit(self, target: bytes) -> ToGuest:
        """Ask the guest for *target*'s MAC: ARP, or a neighbour solicitation."""
        if len(target) == 16:
            return self.ndp.solicit(target)
        buf = self.link.ethernet(BROADCAST, EtherType.ARP, ETH_LEN + ARP_LEN)
        build_arp(buf, ETH_LEN, op=ArpOp.REQUEST, sender_mac=self.link.our_mac,
                  sender_ip=self.gateway, target_mac=b"\0" * 6, target_ip=target)
        return ToGuest(buf)

    def set_dns_upstreams(self, servers: list[tuple[bytes, int]]) -> None:
        self.dns.set_upstreams(servers)

    def flows(self, now: float) -> list[dict[str, object]]:
        """Every live flow: protocol, both ends, bytes each way, age (for the API)."""
        def entry(proto: str, key: FlowKey, from_guest: float, to_guest: float,
                  created: float, **extra: object) -> dict[str, object]:
            return {"proto": proto, "guest": _endpoint(key.guest_addr, key.guest_port),
                    "remote": _endpoint(key.remote_addr, key.remote_port),
                    "bytes_from_guest": int(from_guest), "bytes_to_guest": int(to_guest),
                    "age_s": round(now - created, 3), **extra}

        found = []
        for conn in self.tcp.conns.values():
            sent, received = conn.bytes_each_way()
            found.append(entry("tcp", conn.key, sent, received, conn.created,
                               state=conn.state.value))
        for key in self.udp.table.keys():
            stats = self.udp.table.peek(key)
            if stats is not None and key.guest_addr not in self.our_addrs:
                found.append(entry("udp", key, stats[1], stats[2], stats[0]))
        for key in self.inbound.table.keys():
            flow = self.inbound.table.peek(key)
            if flow is not None:
                found.append(entry("udp", key, flow.stats[1], flow.stats[2], flow.stats[0],
                                   forward=flow.forward_id))
        return found

    def flow_counts(self) -> dict[str, int]:
        return {"tcp": len(self.tcp), "udp": len(self.udp.table) + len(self.inbound.table),
                "icmp": len(self.echo.table)}

    def counters(self) -> dict[str, int]:
        """Drops by reason, the stack's own and those of reassembly."""
        return dict(self.drops + self.reassembler.drops)

    def blocked_counts(self) -> dict[str, int]:
        """New flows the egress policy refused, by the rule or setting that did."""
        return dict(self.blocked)

    # --- frames from the guest ------------------------------------------------------------

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
        if arp.sender_ip not in self.our_addrs:
            self.link.learn(arp.sender_ip, arp.sender_mac)
            if self.link.held:
                released += self.link.release(arp.sender_ip)
        if arp.op != ArpOp.REQUEST or arp.target_ip not in self.our_addrs:
            return released  # gratuitous ARP, replies, questions about others: nothing to say
        buf = self.link.ethernet(arp.sender_mac, EtherType.ARP, ETH_LEN + ARP_LEN)
        build_arp(buf, ETH_LEN, op=ArpOp.REPLY, sender_mac=self.link.our_mac,
                  sender_ip=arp.target_ip, target_mac=arp.sender_mac, target_ip=arp.sender_ip)
        return [ToGuest(buf), *released]

    def _on_ipv4(self, eth: EthernetHeader, ip: Ipv4Header, now: float,
                 checksum_ok: bool) -> list[Effect]:
        if ip.src in self.our_addrs or ip.src in self.broadcasts:
            raise Malformed("ipv4-bad-src")
        return self._on_ip(eth, ip, ip.proto, now, checksum_ok)

    def _on_ipv6(self, eth: EthernetHeader, ip: Ipv6Header, now: float,
                 checksum_ok: bool) -> list[Effect]:
        if ip.src in self.our_addrs:
            raise Malformed("ipv6-bad-src")
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
            if len(ip.src) == 16:  # the fragmentable part may start with more headers
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
        if udp.dst_port == SERVER_PORT and (ip.dst in self.broadcasts or ip.dst == self.gateway):
            return self._on_dhcp(udp, now)
        if self.inbound.owns(key):
            return self.inbound.from_guest(key, udp.payload, now)
        fwd = self.remote.get(("udp", ip.dst, udp.dst_port)) if self.remote else None
        if fwd is not None:
            return self._remote_udp(key, fwd, udp.payload, now)
        if ip.dst in self.dns_addrs:
            if udp.dst_port == DNS_PORT and self.config.dns:
                return self.dns.on_query(ip.dst, ip.src, udp.src_port, udp.payload, now)
            return self._unreachable(key, UnreachCode.PORT)
        host = self._host_address(ip.dst)
        if key not in self.udp.table:
            refused = self._egress(key)
            if refused is not None:
                return self._unreachable(key, refused)
        return self.udp.from_guest(key, host, udp.dst_port, udp.payload, now)

    def _on_tcp(self, ip: Ip, seg: TcpHeader, now: float) -> list[Effect]:
        key = FlowKey(IpProto.TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        if key in self.tcp.conns:
            return self.tcp.on_segment(key, seg, b"", now)
        fwd = self.remote.get(("tcp", ip.dst, seg.dst_port)) if self.remote else None
        if fwd is not None:
            return self._remote_tcp(key, fwd, seg, now)
        if ip.dst in self.dns_addrs:
            if seg.dst_port != DNS_PORT or not self.config.dns or not self.dns.upstreams:
                return reset_for(self.link, key, seg)
            host = self.dns.upstreams[self.dns.preferred % len(self.dns.upstreams)][0]
        else:
            host = self._host_address(ip.dst)
            if seg.flags & SYN:  # a new connection, if the policy lets it be
                refused = self._egress(key)
                if refused is UnreachCode.NET:
                    return unreachable(self.link, key, UnreachCode.NET, seq=seg.seq)
                if refused is not None:
                    return reset_for(self.link, key, seg)
        return self.tcp.on_segment(key, seg, host, now)

    def _remote_tcp(self, key: FlowKey, fwd: Forward, seg: TcpHeader,
                    now: float) -> list[Effect]:
        """A guest connection to remote forward *fwd*: on to its target on the host."""
        target = fwd.target
        if not isinstance(target, SrvName):
            return self.tcp.on_segment(key, seg, target.packed, now, fwd.target_port)
        effects = self.tcp.on_segment(key, seg, None, now)
        if key not in self.tcp.conns:
            return effects

        def connect(found: tuple[bytes, int] | None, when: float) -> list[Effect]:
            where = None if found is None else (found[0], fwd.target_port or found[1])
            return self.tcp.connect_later(key, where, when)

        return effects + self.srv.lookup(target, now, connect)

    def _remote_udp(self, key: FlowKey, fwd: Forward, payload: memoryview,
                    now: float) -> list[Effect]:
        target = fwd.target
        if not isinstance(target, SrvName):
            return self.udp.from_guest(key, target.packed, fwd.target_port, payload, now)
        if key in self.udp.table:
            return self.udp.from_guest(key, b"", 0, payload, now)
        data = bytes(payload)  # it waits for the lookup

        def send(found: tuple[bytes, int] | None, when: float) -> list[Effect]:
            if found is None:
                return self._unreachable(key, UnreachCode.HOST)
            return self.udp.from_guest(key, found[0], fwd.target_port or found[1],
                                       memoryview(data), when)

        return self.srv.lookup(target, now, send)

    def _on_dhcp(self, udp: UdpHeader, now: float) -> list[Effect]:
        reply = self.dhcp.on_message(DhcpMessage.parse(udp.payload), now)
        if reply is None:
            return []
        return list(self.link.udp(src=self.gateway, src_port=SERVER_PORT, dst=reply.dst_ip,
                                  dst_port=CLIENT_PORT, payload=reply.payload,
                                  dst_mac=reply.dst_mac))

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
            return self.ndp.on_message(ip, icmp, eth.src, self.our_addrs, now)
        if icmp.type in _MLD_TYPES:
            return []  # the guest joining its groups: nothing for a router of one host to do
        if icmp.type in ICMP6_ERRORS:
            raise Malformed("icmp6-error-from-guest")  # nothing to do with it, as for IPv4
        raise Malformed("icmp6-unsupported-type")

    def _on_echo(self, ip: Ip, proto: int, icmp: IcmpHeader, now: float) -> list[Effect]:
        if ip.dst in self.our_addrs:
            return self.echo.answer_ourselves(ip.src, ip.dst, icmp)
        self._host_address(ip.dst)  # raises for destinations never forwarded
        key = FlowKey(proto, ip.src, icmp.echo_id, ip.dst, 0)
        if key not in self.echo.table:
            refused = self._egress(key)
            if refused is not None:
                return self._unreachable(key, refused)
        return self.echo.from_guest(ip.src, ip.dst, icmp, now)

    def _egress(self, key: FlowKey) -> UnreachCode | None:
        """None if a new flow on *key* may go; else what to tell the guest (TCP: any
        code means RST, but "net unreachable" for the gateway without host loopback)."""
        verdict = self.policy.decide(key.proto, key.remote_addr, key.remote_port,
                                     gateway=key.remote_addr in self.gateways)
        if verdict.outcome is Outcome.PASS:
            return None
        if verdict.outcome is Outcome.UNREACHABLE:
            return UnreachCode.NET  # as slirp4netns answers for the gateway
        self.blocked[verdict.why] += 1
        log.debug("%s: blocked by %s", key, verdict.why)
        return UnreachCode.ADMIN_PROHIBITED

    def _host_address(self, dst: bytes) -> bytes:
        """The host address a guest destination maps to (the gateway's: host loopback).

        Raises Malformed for destinations that are never forwarded.
        """
        if dst in self.gateways:
            return HOST_LOOPBACK4 if len(dst) == 4 else HOST_LOOPBACK6
        if len(dst) == 16:
            address6 = ipaddress.IPv6Address(dst)
            if any(address6 in net for net in _NEVER_FORWARDED6):
                raise Malformed("ipv6-dst-not-forwarded")
            if address6 in self.config.network.cidr6:
                raise Malformed("ipv6-dst-in-network")
            return dst
        address = ipaddress.IPv4Address(dst)
        if dst in self.broadcasts or any(address in net for net in _NEVER_FORWARDED):
            raise Malformed("ipv4-dst-not-forwarded")
        if address in self.config.network.cidr:
            raise Malformed("ipv4-dst-in-network")
        return dst

    def _unreachable(self, key: FlowKey, code: UnreachCode) -> list[Effect]:
        return unreachable(self.link, key, code)
