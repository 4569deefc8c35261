"""The Ethernet link towards the guest: whom to address, and how to fit the MTU.

Owns the neighbour table learnt from the guest's own frames (its MAC per IPv4 or
IPv6 address), the identification counters, and fragmentation of datagrams larger
than the link MTU (RFC 791; for IPv6, RFC 8200 4.5, slirpy being the source of what
it sends the guest). Everything slirpy sends to the guest leaves through here, and
`ip` is the one builder for both families: the source address's family picks one.
`TcpTemplate` is its fast path for one TCP connection's segments (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from slirpy.addresses import is_ipv6
from slirpy.effects import ToGuest
from slirpy.wire.ethernet import (BROADCAST, GROUP_BIT, HEADER_LEN as ETH_LEN, MAC_LEN,
                                  EtherType, build_ethernet)
from slirpy.wire.checksum import checksum, fold, pseudo_header_sum
from slirpy.wire.icmp import HEADER_LEN as ICMP_LEN, build_icmp
from slirpy.wire.ipv4 import (DEFAULT_TTL, FLAG_DF, FLAG_MF, FRAGMENT_UNIT, HEADER_LEN as IP_LEN,
                              IpProto, build_ipv4, build_ipv4_template, fill_ipv4,
                              fragment_offsets)
from slirpy.wire.ipv6 import (FRAGMENT, FRAGMENT_LEN, HEADER_LEN as IP6_LEN,
                              build_fragment_header, build_ipv6, fill_ipv6_length,
                              fragment_offsets6, is_multicast, multicast_mac)
from slirpy.wire.tcp import (CHECKSUM_OFFSET as TCP_CHECKSUM_OFFSET, HEADER_LEN as TCP_LEN,
                             build_tcp_template, fill_tcp)
from slirpy.wire.udp import HEADER_LEN as UDP_LEN, build_udp

log = logging.getLogger(__name__)

NEIGHBOUR_LIMIT: Final = 256  # one guest, a few addresses; a flood must not grow it
HELD_FRAMES_MAX: Final = 32  # frames waiting for one address's ARP answer
HELD_ADDRESSES_MAX: Final = 16
ARP_RETRY_S: Final = 1.0
IDENT_MASK: Final = 0xFFFF  # IPv4's identification field: 16 bits
IDENT6_MASK: Final = 0xFFFFFFFF  # the IPv6 fragment header's: 32 bits
_TCP: Final = int(IpProto.TCP)  # a plain int: an enum member's lookup costs per segment
Payload = bytes | bytearray | memoryview


class GuestLink:
    """The guest's end of the Ethernet link, as every frame slirpy sends sees it.

    Owns what the link needs to address and fit a frame: our MAC and the MTU, whether
    the tap takes offloads, the neighbour table learnt from the guest's own frames, the
    IPv4 and IPv6 fragment identification counters, and frames held for an address
    whose MAC is being asked for (with when each was last asked).

    Builds frames and hands them back as ToGuest effects: it never writes to the tap
    nor reads a clock (callers pass *now*), never decides what to send or whether a
    datagram may go (the flows and the stack do), and keeps no per-flow state.
    """

    def __init__(self, our_mac: bytes, mtu: int, *, offload: bool = False) -> None:
        self.our_mac = our_mac
        self.mtu = mtu
        self.offload = offload  # the tap takes partial checksums and TCP super-segments
        self.neighbours: dict[bytes, bytes] = {}  # guest IPv4 or IPv6 address -> MAC
        self.last_mac: bytes | None = None
        # Counts the changes to the two above (`learn` makes them all): a TcpTemplate
        # made at another count asks `mac_for` again before its next segment.
        self.mac_epoch = 0
        self._ident = 0
        self._ident6 = 0
        # Frames we start (forwarded connections) to an address not yet heard from: held
        # while an ARP request asks for it (a TCP stack drops frames not sent to its MAC).
        self.held: dict[bytes, list[ToGuest]] = {}
        self.asked: dict[bytes, float] = {}

    def when_resolved(self, dst: bytes, frames: list[ToGuest], now: float,
                      arp_request: Callable[[bytes], ToGuest]) -> list[ToGuest]:
        """*frames* for *dst* now if its MAC is known; else held, and an ARP request."""
        if dst in self.neighbours:
            return frames
        if dst not in self.held and len(self.held) >= HELD_ADDRESSES_MAX:
            return []  # a lost frame: the flow's own retransmission tries again
        self._hold(dst, frames)
        if now < self.asked.get(dst, -ARP_RETRY_S) + ARP_RETRY_S:
            return []
        self.asked[dst] = now
        return [arp_request(dst)]

    def unless_pending(self, dst: bytes, frames: list[ToGuest]) -> list[ToGuest]:
        """*frames*, or none if *dst* is still asked for: then they wait with the others
        (a retransmission before the guest answered ARP)."""
        if dst not in self.held:
            return frames
        self._hold(dst, frames)
        return []

    def _hold(self, dst: bytes, frames: list[ToGuest]) -> None:
        held = self.held.setdefault(dst, [])
        held.extend(frames[:HELD_FRAMES_MAX - len(held)])

    def asks_due(self, now: float) -> list[bytes]:
        """Addresses still unanswered whose ARP request may be sent again now."""
        due = [ip for ip in self.held if now >= self.asked.get(ip, -ARP_RETRY_S) + ARP_RETRY_S]
        for ip in due:
            self.asked[ip] = now
        return due

    def next_ask(self) -> float | None:
        """When an unanswered address may be asked for again; None if none waits."""
        return min((self.asked.get(ip, -ARP_RETRY_S) + ARP_RETRY_S for ip in self.held),
                   default=None)

    def release(self, ip: bytes) -> list[ToGuest]:
        """Held frames for *ip*, addressed now that its MAC is known."""
        frames = self.held.pop(ip, [])
        self.asked.pop(ip, None)
        mac = self.neighbours.get(ip)
        if mac is None:
            return []
        for frame in frames:
            memoryview(frame.headers)[0:MAC_LEN] = mac  # the destination, first
        return frames

    def learn(self, ip: bytes, mac: bytes) -> None:
        """Remember *mac* for *ip* from a frame the guest sent."""
        if mac[0] & GROUP_BIT:  # a multicast source MAC is never a neighbour
            return
        if mac != self.last_mac:
            self.last_mac = mac
            self.mac_epoch += 1
        if not any(ip) or self.neighbours.get(ip) == mac:  # 0.0.0.0 or ::: not an address
            return
        if ip not in self.neighbours and len(self.neighbours) >= NEIGHBOUR_LIMIT:
            self.neighbours.pop(next(iter(self.neighbours)))
        self.neighbours[ip] = mac
        self.mac_epoch += 1

    def mac_for(self, ip: bytes) -> bytes:
        """The destination MAC of a frame to *ip*: its own if known, else the guest's
        last seen (a frame held for an unknown address gets its own on `release`)."""
        if is_ipv6(ip) and is_multicast(ip):
            return multicast_mac(ip)
        return self.neighbours.get(ip) or self.last_mac or BROADCAST

    def ethernet(self, dst_mac: bytes, ethertype: int, size: int) -> bytearray:
        """A buffer of *size* bytes that starts with an Ethernet header from us."""
        buf = bytearray(size)
        build_ethernet(buf, 0, dst=dst_mac, src=self.our_mac, ethertype=ethertype)
        return buf

    def next_ident(self) -> int:
        """The identification of the next IPv4 datagram: one counter for all we send."""
        self._ident = (self._ident + 1) & IDENT_MASK
        return self._ident

    def ip(self, *, src: bytes, dst: bytes, proto: int, l4: Payload,
           payload: Payload = b"", dst_mac: bytes | None = None,
           csum_offset: int = 0, gso_size: int = 0,
           hop_limit: int = DEFAULT_TTL) -> list[ToGuest]:
        """Frames carrying one IPv4 or IPv6 datagram whose payload is *l4* then *payload*.

        Fits in one frame: headers and *payload* leave gathered, never joined.
        Too big for the MTU: fragmented, which joins them once (rare, off the hot path).
        With *csum_offset* (offload only), the transport checksum is left to the guest's
        kernel, and with *gso_size* so is cutting the datagram to the MTU.
        """
        mac = dst_mac or self.mac_for(dst)
        size = len(l4) + len(payload)
        v6 = is_ipv6(src)
        ip_len = IP6_LEN if v6 else IP_LEN
        if ip_len + size <= self.mtu or gso_size:
            if v6:
                buf = self.ethernet(mac, EtherType.IPV6, ETH_LEN + ip_len + len(l4))
                build_ipv6(buf, ETH_LEN, src=src, dst=dst, next_header=proto,
                           payload_len=size, hop_limit=hop_limit)
            else:
                buf = self.ethernet(mac, EtherType.IPV4, ETH_LEN + ip_len + len(l4))
                build_ipv4(buf, ETH_LEN, src=src, dst=dst, proto=proto, payload_len=size,
                           ident=self.next_ident(), frag=FLAG_DF, ttl=hop_limit)
            buf[ETH_LEN + ip_len:] = l4
            if csum_offset:
                return [ToGuest(buf, payload, ETH_LEN + ip_len, csum_offset, gso_size)]
            return [ToGuest(buf, payload)]
        whole = memoryview(bytes(l4) + bytes(payload))
        return self._fragments6(mac, src, dst, proto, whole, hop_limit) if v6 else \
            self._fragments4(mac, src, dst, proto, whole, hop_limit)

    def _fragments4(self, mac: bytes, src: bytes, dst: bytes, proto: int,
                    whole: memoryview, ttl: int) -> list[ToGuest]:
        ident = self.next_ident()
        frames = []
        for start, end, more in fragment_offsets(len(whole), self.mtu):
            buf = self.ethernet(mac, EtherType.IPV4, ETH_LEN + IP_LEN)
            build_ipv4(buf, ETH_LEN, src=src, dst=dst, proto=proto, payload_len=end - start,
                       ident=ident, frag=(FLAG_MF if more else 0) | start // FRAGMENT_UNIT,
                       ttl=ttl)
            frames.append(ToGuest(buf, whole[start:end]))
        return frames

    def _fragments6(self, mac: bytes, src: bytes, dst: bytes, proto: int,
                    whole: memoryview, hop_limit: int) -> list[ToGuest]:
        self._ident6 = (self._ident6 + 1) & IDENT6_MASK
        frames = []
        for start, end, more in fragment_offsets6(len(whole), self.mtu):
            buf = self.ethernet(mac, EtherType.IPV6, ETH_LEN + IP6_LEN + FRAGMENT_LEN)
            offset = build_ipv6(buf, ETH_LEN, src=src, dst=dst, next_header=FRAGMENT,
                                payload_len=FRAGMENT_LEN + end - start, hop_limit=hop_limit)
            build_fragment_header(buf, offset, next_header=proto, frag_offset=start,
                                  more=more, ident=self._ident6)
            frames.append(ToGuest(buf, whole[start:end]))
        return frames

    def udp(self, *, src: bytes, src_port: int, dst: bytes, dst_port: int, payload: Payload,
            dst_mac: bytes | None = None) -> list[ToGuest]:
        header = bytearray(UDP_LEN)
        build_udp(header, 0, src=src, dst=dst, src_port=src_port, dst_port=dst_port,
                  payload=payload)
        return self.ip(src=src, dst=dst, proto=IpProto.UDP, l4=header, payload=payload,
                       dst_mac=dst_mac)

    def icmp(self, *, src: bytes, dst: bytes, icmp_type: int, code: int, rest: bytes,
             payload: Payload, dst_mac: bytes | None = None,
             hop_limit: int = DEFAULT_TTL) -> list[ToGuest]:
        """An ICMP message, or an ICMPv6 one (with its pseudo-header) between IPv6 ends."""
        if not is_ipv6(src):
            return self.ip(src=src, dst=dst, proto=IpProto.ICMP, dst_mac=dst_mac,
                           l4=build_icmp(icmp_type, code, rest, payload), hop_limit=hop_limit)
        pseudo = pseudo_header_sum(src, dst, IpProto.ICMPV6, ICMP_LEN + len(payload))
        return self.ip(src=src, dst=dst, proto=IpProto.ICMPV6, dst_mac=dst_mac,
                       l4=build_icmp(icmp_type, code, rest, payload, pseudo),
                       hop_limit=hop_limit)


class TcpTemplate:
    """The headers of one TCP connection's segments to the guest, made once and copied.

    Of the Ethernet, IP and TCP headers of a segment without options, most never
    change along a connection: the MACs, the addresses, the ports, the protocol, the
    TTL (hop limit), DF, the data offset. They are written once into `headers`, the
    fields that change left 0. A segment is a copy of it with those fields set: IPv4's
    total length, identification and header checksum (IPv6: its payload length), and
    TCP's sequence and acknowledgment numbers, flags, window and checksum. The copy is
    the frame's own: frames still unsent in an event's effects, or held on the link,
    keep theirs.

    The checksums come from partial sums made with the template (RFC 1071 2: a ones'
    complement sum may be split, regrouped and folded late; see `wire.checksum`):
    - IPv4's header checksum (RFC 791): `ip_sum`, the sum of the template's header
      with the changing fields 0, plus the total length and identification: RFC 1624's
      incremental update from those zeros, with nothing to subtract.
    - The TCP pseudo-header (RFC 9293 3.1; over IPv6, RFC 8200 8.1): `pseudo_sum` holds
      the addresses and the protocol, and each segment adds its TCP length. With
      checksum offload that folded sum is all the field holds (not complemented): the
      guest's kernel adds the header and the payload (`link.offload`).
    - Else the checksum adds `header_sum` (ports and data offset), the segment's own
      fields, then sums the payload on top (`ones_sum` with an initial value). A 32-bit
      field adds as its value (2**16 == 1 mod 0xFFFF), and the flags as theirs: they
      are the low byte of the word whose high byte, the data offset, is in header_sum.

    The destination MAC is `link.mac_for`'s answer when made; when the link learns
    another MAC for the guest (`mac_epoch` moved), the template asks again before its
    next segment. Segments with options (SYNs), and segments too big for the MTU
    without offload (fragmented), take `GuestLink.ip`; an answer to a segment of no
    connection (no template) too.
    """

    def __init__(self, link: GuestLink, *, src: bytes, dst: bytes, src_port: int,
                 dst_port: int) -> None:
        self.link = link
        self.dst = dst
        self.v6 = is_ipv6(src)
        ip_len = IP6_LEN if self.v6 else IP_LEN
        self.tcp_start = ETH_LEN + ip_len
        # Without offload, a larger payload is fragmented: the general path's business.
        self.max_payload = link.mtu - ip_len - TCP_LEN
        self.mac_epoch = link.mac_epoch
        self.headers = link.ethernet(link.mac_for(dst),
                                     EtherType.IPV6 if self.v6 else EtherType.IPV4,
                                     self.tcp_start + TCP_LEN)
        if self.v6:
            build_ipv6(self.headers, ETH_LEN, src=src, dst=dst, next_header=_TCP,
                       payload_len=0, hop_limit=DEFAULT_TTL)
            self.ip_sum = 0  # IPv6 has no header checksum
        else:
            self.ip_sum = build_ipv4_template(self.headers, ETH_LEN, src=src, dst=dst,
                                              proto=_TCP, ttl=DEFAULT_TTL, frag=FLAG_DF)
        self.pseudo_sum = pseudo_header_sum(src, dst, _TCP, 0)
        self.header_sum = build_tcp_template(self.headers, self.tcp_start,
                                             src_port=src_port, dst_port=dst_port)

    def segment(self, seq: int, ack: int, flags: int, window: int, payload: Payload = b"",
                partial: bool = False, gso_size: int = 0) -> ToGuest:
        """A segment carrying *payload*; with *partial* (offload only), its checksum is
        left to the guest's kernel, and with *gso_size* cutting it to the MTU too."""
        if self.mac_epoch != self.link.mac_epoch:
            self._readdress()
        buf = bytearray(self.headers)
        tcp_len = TCP_LEN + len(payload)
        if self.v6:
            fill_ipv6_length(buf, ETH_LEN, tcp_len)
        else:
            fill_ipv4(buf, ETH_LEN, self.ip_sum, IP_LEN + tcp_len, self.link.next_ident())
        pseudo = self.pseudo_sum + tcp_len
        if partial:
            fill_tcp(buf, self.tcp_start, seq, ack, flags, window, fold(pseudo))
            return ToGuest(buf, payload, self.tcp_start, TCP_CHECKSUM_OFFSET, gso_size)
        total = pseudo + self.header_sum + seq + ack + flags + window
        fill_tcp(buf, self.tcp_start, seq, ack, flags, window, checksum(payload, total))
        return ToGuest(buf, payload)

    def _readdress(self) -> None:
        """The link's neighbours changed: address the guest's MAC as it is now (the
        MAC is in no checksum)."""
        self.mac_epoch = self.link.mac_epoch
        self.headers[0:MAC_LEN] = self.link.mac_for(self.dst)
