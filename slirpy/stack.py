"""The sans-IO stack for one guest link: frames and host events in, effects out.

Every frame from the guest enters through `on_frame`, the one place where hostile
input ends as a count: any `Malformed` raised below is caught there, counted in
`drops` by reason and logged at debug. Results of effects come back through
`on_host_datagram` and `on_host_error`; time passes through `on_timer`, due at
`next_deadline()`.

Where a datagram from the guest goes is decided by its destination:
- the DNS address: port 53 is the forwarder's, anything else is "port unreachable";
- the gateway: the DHCP server on port 67, else the host's loopback when host loopback
  is on (as slirp4netns does), else "net unreachable" (also as slirp4netns does);
- our addresses answer pings themselves;
- broadcast: DHCP only; addresses slirpy will never forward (0/8, loopback, multicast,
  class E, the guest's own network): dropped and counted;
- anything else: a flow on a host socket to that very address.
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
from slirpy.reassembly import FragKey, Reassembler
from slirpy.services.dhcp import DhcpServer
from slirpy.services.dns import DNS_PORT, DnsForwarder
from slirpy.udp import UdpFlows, icmp_error_for
from slirpy.wire import Malformed
from slirpy.wire.arp import ArpOp, ArpPacket, build_arp, PACKET_LEN as ARP_LEN
from slirpy.wire.dhcp import CLIENT_PORT, SERVER_PORT, DhcpMessage
from slirpy.wire.ethernet import BROADCAST, HEADER_LEN as ETH_LEN, EtherType, EthernetHeader
from slirpy.wire.icmp import IcmpHeader, IcmpType, UnreachCode
from slirpy.wire.ipv4 import IpProto, Ipv4Header
from slirpy.wire.udp import UdpHeader
from slirpy.effects import ToGuest
from slirpy.tcp.conn import TcpConn, reset_for
from slirpy.tcp.flows import TcpFlows
from slirpy.wire.tcp import SYN, TcpHeader

log = logging.getLogger(__name__)


def _endpoint(addr: bytes, port: int) -> str:
    return f"{ipaddress.ip_address(addr)}:{port}"

HOST_LOOPBACK4: Final = ipaddress.IPv4Address("127.0.0.1").packed
_LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"
_NEVER_FORWARDED: Final = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
ICMP_FLOW_LIMIT: Final = 256


class Stack:
    def __init__(self, config: Config, *, secret: bytes = b"slirpy",
                 offload: bool = False) -> None:
        net = config.network
        self.config = config
        self.gateway = net.gateway.packed
        self.dns_addr = net.dns.packed
        self.our_addrs = frozenset({self.gateway, self.dns_addr})
        self.broadcasts = frozenset({_LIMITED_BROADCAST, net.cidr.broadcast_address.packed})
        self.drops: Counter[str] = Counter()
        self.link = GuestLink(net.our_mac, config.mtu, offload=offload)
        self.reassembler = Reassembler()
        self.udp = UdpFlows(self.link, config.udp_flow_limit, config.udp_idle_s)
        self.echo = EchoFlows(self.link, ICMP_FLOW_LIMIT, config.icmp_idle_s)
        self.dhcp = DhcpServer(config)
        self.dns = DnsForwarder(self.link, self.dns_addr, config.dns_timeout_s)
        self.tcp = TcpFlows(self.link, limit=config.tcp_conn_limit, secret=secret,
                            mtu=config.mtu)
        self.inbound = InboundUdpFlows(self.link, net, config.udp_flow_limit, config.udp_idle_s)
        self.remote: dict[tuple[str, bytes, int], Forward] = {}  # (transport, addr, port)
        self.srv = SrvResolver(config.dns_ttl_s, secret)
        self.tcp_clashes = 0

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
        if flow.proto == IpProto.ICMP:
            return self.echo.on_host_datagram(flow, data, now)
        return self.udp.on_host_datagram(flow, data, now)

    def on_host_error(self, flow: FlowKey, error: HostError, now: float) -> list[Effect]:
        if self.dns.owns(flow):
            return self.dns.on_error(flow, error, now)
        if self.srv.owns(flow):
            return self.srv.on_error(flow, error, now)
        if flow.proto == IpProto.ICMP:
            return self.echo.on_host_error(flow, error, now)
        return self.udp.on_host_error(flow, error, now)

    def on_timer(self, now: float) -> list[Effect]:
        self.reassembler.expire(now)
        self.inbound.expire(now)
        effects = [*self.udp.expire(now), *self.echo.expire(now), *self.dns.on_timer(now),
                   *self.tcp.on_timer(now), *self.srv.on_timer(now)]
        if self.link.held:  # guest addresses that did not answer ARP yet: ask again
            effects += [self._arp_request(ip) for ip in self.link.asks_due(now)]
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.udp.next_deadline(), self.echo.next_deadline(),
                                 self.dns.next_deadline(), self.reassembler.next_deadline(),
                                 self.tcp.next_deadline(), self.inbound.next_deadline(),
                                 self.srv.next_deadline())
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
        if not port or fwd.target.version != 4:
            return None, []
        base = FlowKey(IpProto.TCP, fwd.target.packed, port,
                       visible_source(client[0], self.config.network), client[1])
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
        """Addresses we answer ARP and ping for: ours, and remote forwards' in the network."""
        extra = {addr for (_, addr, _) in self.remote
                 if len(addr) == 4 and ipaddress.IPv4Address(addr) in self.config.network.cidr}
        return frozenset({self.gateway, self.dns_addr, *extra})

    def _resolved(self, dst: bytes, frames: list[Effect], now: float) -> list[Effect]:
        """Frames we start towards *dst*: held until the guest's MAC is known."""
        to_guest = [f for f in frames if isinstance(f, ToGuest)]
        rest = [f for f in frames if not isinstance(f, ToGuest)]
        return [*rest, *self.link.when_resolved(dst, to_guest, now, self._arp_request)]

    def _arp_request(self, target: bytes) -> ToGuest:
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

    # --- frames from the guest ------------------------------------------------------------

    def _dispatch(self, eth: EthernetHeader, now: float, checksum_ok: bool) -> list[Effect]:
        match eth.ethertype:
            case EtherType.IPV4:
                return self._on_ipv4(eth, Ipv4Header.parse(eth.payload), now, checksum_ok)
            case EtherType.ARP:
                return self._on_arp(eth, ArpPacket.parse(eth.payload))
            case EtherType.IPV6:
                raise Malformed("ipv6-unsupported")
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
        self.link.learn(ip.src, eth.src)
        if self.link.held:
            released: list[Effect] = list(self.link.release(ip.src))
            if released:
                return released + self._on_ipv4(eth, ip, now, checksum_ok)
        payload = ip.payload
        if ip.is_fragment:
            key = FragKey(ip.src, ip.dst, ip.proto, ip.ident)
            whole = self.reassembler.on_fragment(key, ip.frag_offset, ip.more_fragments,
                                                 payload, now)
            if whole is None:
                return []
            payload = memoryview(whole)
        verify = not checksum_ok
        match ip.proto:
            case IpProto.UDP:
                udp = UdpHeader.parse(payload, ip.src, ip.dst, verify_checksum=verify)
                return self._on_udp(ip, udp, now)
            case IpProto.ICMP:
                return self._on_icmp(ip, IcmpHeader.parse(payload, verify_checksum=verify), now)
            case IpProto.TCP:
                seg = TcpHeader.parse(payload, ip.src, ip.dst, verify_checksum=verify)
                return self._on_tcp(ip, seg, now)
            case _:
                raise Malformed("ipv4-unsupported-proto")

    def _on_udp(self, ip: Ipv4Header, udp: UdpHeader, now: float) -> list[Effect]:
        key = FlowKey(IpProto.UDP, ip.src, udp.src_port, ip.dst, udp.dst_port)
        if udp.dst_port == SERVER_PORT and (ip.dst in self.broadcasts or ip.dst == self.gateway):
            return self._on_dhcp(udp, now)
        if self.inbound.owns(key):
            return self.inbound.from_guest(key, udp.payload, now)
        fwd = self.remote.get(("udp", ip.dst, udp.dst_port)) if self.remote else None
        if fwd is not None:
            return self._remote_udp(key, fwd, udp.payload, now)
        if ip.dst == self.dns_addr:
            if udp.dst_port == DNS_PORT and self.config.dns:
                return self.dns.on_query(ip.src, udp.src_port, udp.payload, now)
            return self._unreachable(key, UnreachCode.PORT)
        host = self._host_address(ip.dst)
        if host is None:
            return self._unreachable(key, UnreachCode.NET)
        return self.udp.from_guest(key, host, udp.dst_port, udp.payload, now)

    def _on_tcp(self, ip: Ipv4Header, seg: TcpHeader, now: float) -> list[Effect]:
        key = FlowKey(IpProto.TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        if key in self.tcp.conns:
            return self.tcp.on_segment(key, seg, b"", now)
        fwd = self.remote.get(("tcp", ip.dst, seg.dst_port)) if self.remote else None
        if fwd is not None:
            return self._remote_tcp(key, fwd, seg, now)
        if ip.dst == self.dns_addr:
            if seg.dst_port != DNS_PORT or not self.config.dns or not self.dns.upstreams:
                return reset_for(self.link, key, seg)
            host = self.dns.upstreams[self.dns.preferred % len(self.dns.upstreams)][0]
        else:
            found = self._host_address(ip.dst)
            if found is None:
                if not seg.flags & SYN:
                    return reset_for(self.link, key, seg)
                return icmp_error_for(self.link, key, IcmpType.DEST_UNREACHABLE,
                                      UnreachCode.NET, 0, seq=seg.seq)
            host = found
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
        if ip.dst in self.our_addrs:
            return self.echo.answer_ourselves(ip.src, ip.dst, icmp)
        if self._host_address(ip.dst) is None:
            return self._unreachable(FlowKey(IpProto.ICMP, ip.src, icmp.echo_id, ip.dst, 0),
                                     UnreachCode.NET)
        return self.echo.from_guest(ip.src, ip.dst, icmp, now)

    def _host_address(self, dst: bytes) -> bytes | None:
        """The host address a guest destination maps to; None for "unreachable".

        Raises Malformed for destinations that are never forwarded.
        """
        if dst == self.gateway:
            return HOST_LOOPBACK4 if self.config.host_loopback else None
        address = ipaddress.IPv4Address(dst)
        if dst in self.broadcasts or any(address in net for net in _NEVER_FORWARDED):
            raise Malformed("ipv4-dst-not-forwarded")
        if address in self.config.network.cidr:
            raise Malformed("ipv4-dst-in-network")
        return dst

    def _unreachable(self, key: FlowKey, code: UnreachCode) -> list[Effect]:
        return icmp_error_for(self.link, key, IcmpType.DEST_UNREACHABLE, code, 0)
