"""The Ethernet link towards the guest: whom to address, and how to fit the MTU.

Owns the neighbour table learnt from the guest's own frames (its MAC per IPv4
address), the IP identification counter, and fragmentation of datagrams larger than
the link MTU (RFC 791). Everything slirpy sends to the guest leaves through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from slirpy.effects import ToGuest
from slirpy.wire.ethernet import BROADCAST, HEADER_LEN as ETH_LEN, EtherType, build_ethernet
from slirpy.wire.icmp import build_icmp
from slirpy.wire.ipv4 import FLAG_DF, HEADER_LEN as IP_LEN, IpProto, build_ipv4, fragment_offsets
from slirpy.wire.udp import HEADER_LEN as UDP_LEN, build_udp

log = logging.getLogger(__name__)

NEIGHBOUR_LIMIT: Final = 256  # one guest, a few addresses; a flood must not grow it
HELD_FRAMES_MAX: Final = 32  # frames waiting for one address's ARP answer
HELD_ADDRESSES_MAX: Final = 16
ARP_RETRY_S: Final = 1.0
Payload = bytes | bytearray | memoryview


class GuestLink:
    def __init__(self, our_mac: bytes, mtu: int, *, offload: bool = False) -> None:
        self.our_mac = our_mac
        self.mtu = mtu
        self.offload = offload  # the tap takes partial checksums and TCP super-segments
        self.neighbours: dict[bytes, bytes] = {}  # guest IPv4 address -> MAC
        self.last_mac: bytes | None = None
        self._ident = 0
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

    def release(self, ip: bytes) -> list[ToGuest]:
        """Held frames for *ip*, addressed now that its MAC is known."""
        frames = self.held.pop(ip, [])
        self.asked.pop(ip, None)
        mac = self.neighbours.get(ip)
        if mac is None:
            return []
        for frame in frames:
            memoryview(frame.headers)[0:6] = mac
        return frames

    def learn(self, ip: bytes, mac: bytes) -> None:
        """Remember *mac* for *ip* from a frame the guest sent."""
        if mac[0] & 1:  # a multicast source MAC is never a neighbour
            return
        self.last_mac = mac
        if ip == b"\0\0\0\0" or self.neighbours.get(ip) == mac:
            return
        if ip not in self.neighbours and len(self.neighbours) >= NEIGHBOUR_LIMIT:
            self.neighbours.pop(next(iter(self.neighbours)))
        self.neighbours[ip] = mac

    def mac_for(self, ip: bytes) -> bytes:
        return self.neighbours.get(ip) or self.last_mac or BROADCAST

    def ethernet(self, dst_mac: bytes, ethertype: int, size: int) -> bytearray:
        """A buffer of *size* bytes that starts with an Ethernet header from us."""
        buf = bytearray(size)
        build_ethernet(buf, 0, dst=dst_mac, src=self.our_mac, ethertype=ethertype)
        return buf

    def ipv4(self, *, src: bytes, dst: bytes, proto: int, l4: Payload,
             payload: Payload = b"", dst_mac: bytes | None = None,
             csum_offset: int = 0, gso_size: int = 0) -> list[ToGuest]:
        """Frames carrying one IPv4 datagram whose payload is *l4* then *payload*.

        Fits in one frame: headers and *payload* leave gathered, never joined.
        Too big for the MTU: fragmented, which joins them once (rare, off the hot path).
        With *csum_offset* (offload only), the transport checksum is left to the guest's
        kernel, and with *gso_size* so is cutting the datagram to the MTU.
        """
        mac = dst_mac or self.mac_for(dst)
        size = len(l4) + len(payload)
        self._ident = (self._ident + 1) & 0xFFFF
        if IP_LEN + size <= self.mtu or gso_size:
            buf = self.ethernet(mac, EtherType.IPV4, ETH_LEN + IP_LEN + len(l4))
            offset = build_ipv4(buf, ETH_LEN, src=src, dst=dst, proto=proto, payload_len=size,
                                ident=self._ident, frag=FLAG_DF)
            buf[offset:] = l4
            if csum_offset:
                return [ToGuest(buf, payload, ETH_LEN + IP_LEN, csum_offset, gso_size)]
            return [ToGuest(buf, payload)]
        whole = memoryview(bytes(l4) + bytes(payload))
        frames = []
        for start, end, more in fragment_offsets(size, self.mtu):
            buf = self.ethernet(mac, EtherType.IPV4, ETH_LEN + IP_LEN)
            build_ipv4(buf, ETH_LEN, src=src, dst=dst, proto=proto, payload_len=end - start,
                       ident=self._ident, frag=(0x2000 if more else 0) | start // 8)
            frames.append(ToGuest(buf, whole[start:end]))
        return frames

    def udp(self, *, src: bytes, src_port: int, dst: bytes, dst_port: int, payload: Payload,
            dst_mac: bytes | None = None) -> list[ToGuest]:
        header = bytearray(UDP_LEN)
        build_udp(header, 0, src=src, dst=dst, src_port=src_port, dst_port=dst_port,
                  payload=payload)
        return self.ipv4(src=src, dst=dst, proto=IpProto.UDP, l4=header, payload=payload,
                         dst_mac=dst_mac)

    def icmp(self, *, src: bytes, dst: bytes, icmp_type: int, code: int, rest: bytes,
             payload: Payload) -> list[ToGuest]:
        return self.ipv4(src=src, dst=dst, proto=IpProto.ICMP,
                         l4=build_icmp(icmp_type, code, rest, payload))
