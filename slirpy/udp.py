"""UDP flows from the guest, each carried by one connected host socket.

Model: the first datagram of a (guest address, guest port, remote address, remote
port) opens a host socket connected to the remote (or to host loopback when the guest
named the gateway); later datagrams reuse it; what the host socket receives goes back
to the guest as coming from the address the guest named. Host-side errors reported
through IP_RECVERR (the kernel saw an ICMP error) become the same ICMP error for the
guest, quoting a header rebuilt from the flow key, which is all the guest's kernel
needs to find its socket (RFC 1122 3.2.2). Flows expire after an idle time and are
capped (see FlowTable).
Not done here: sockets (the runtime), the choice of host address (the stack).
"""

from __future__ import annotations

import errno
import logging
import struct
from typing import Final

from slirpy.addresses import is_ipv6
from slirpy.effects import Close, Effect, OpenUdp, SendDatagram
from slirpy.events import HostError
from slirpy.flows.key import FlowKey, FlowRecord, Traffic
from slirpy.flows.table import FlowTable
from slirpy.guest import GuestLink
from slirpy.reports import Reporter
from slirpy.wire.icmp import IcmpType, UnreachCode
from slirpy.wire.icmpv6 import Icmp6Type, Unreach6Code
from slirpy.wire.ipv4 import HEADER_LEN as IP_LEN, IpProto, build_ipv4
from slirpy.wire.ipv6 import HEADER_LEN as IP6_LEN, build_ipv6
from slirpy.wire.udp import HEADER_LEN as UDP_LEN

log = logging.getLogger(__name__)

# An ICMP error quotes the IP header and the first 8 bytes after it (RFC 792): what the
# guest's kernel needs of the transport header to find its socket.
QUOTED_L4_LEN: Final = 8
_ECHO_QUOTE: Final = struct.Struct("!BBHHH")  # type, code, checksum, id, sequence
_TCP_QUOTE: Final = struct.Struct("!HHI")  # ports, sequence number
_UDP_QUOTE: Final = struct.Struct("!HHHH")  # ports, length, checksum
_NO_CHECKSUM: Final = 0
_PTB_REST: Final = struct.Struct("!I")  # ICMPv6 packet too big: the MTU (RFC 4443 3.2)
_FRAG_NEEDED_REST: Final = struct.Struct("!HH")  # unused, next-hop MTU (RFC 1191)
_NEXT_HOP_MTU_MASK: Final = 0xFFFF  # the low 16 bits of the four


class UdpFlows:
    def __init__(self, link: GuestLink, limit: int, idle_s: float,
                 reports: Reporter | None = None) -> None:
        self.link = link
        self.table: FlowTable[Traffic] = FlowTable(limit, idle_s)
        self.reports = reports or Reporter()

    def from_guest(self, key: FlowKey, host_addr: bytes, host_port: int, payload: memoryview,
                   now: float) -> list[Effect]:
        """A datagram from the guest; a new flow's opening is reported by the caller,
        which knows what let it pass (`traffic`)."""
        traffic = self.table.get(key, now)
        if traffic is not None:
            traffic.from_guest += len(payload)
            traffic.packets_from_guest += 1
            return [SendDatagram(key, payload)]
        effects: list[Effect] = []
        for old in self.table.add(key, Traffic(now, len(payload), 0, 1), now):
            log.debug("%s: evicted, flow limit %d reached", old, self.table.limit)
            self.reports.flow_done(old, old.proto, now, "closed", "evicted: flow limit")
            effects.append(Close(old))
        log.debug("%s: new flow", key)
        effects += [OpenUdp(key, host_addr, host_port), SendDatagram(key, payload)]
        return effects

    def on_host_datagram(self, key: FlowKey, data: bytes | memoryview,
                         now: float) -> list[Effect]:
        traffic = self.table.get(key, now)
        if traffic is None:
            return []
        traffic.to_guest += len(data)
        traffic.packets_to_guest += 1
        return list(self.link.udp(src=key.remote_addr, src_port=key.remote_port,
                                  dst=key.guest_addr, dst_port=key.guest_port, payload=data))

    def on_host_error(self, key: FlowKey, error: HostError, now: float) -> list[Effect]:
        if key not in self.table:
            return []
        if error.icmp_type is None:
            # The socket could not be made or used at all: the guest learns "unreachable".
            self.table.remove(key)
            self.reports.flow_done(key, key.proto, now, "error", os_error_text(error.errno))
            return [Close(key), *unreachable(self.link, key, UnreachCode.HOST)]
        return icmp_error_for(self.link, key, error.icmp_type, error.icmp_code or 0, error.info)

    def expire(self, now: float) -> list[Effect]:
        expired = self.table.expire(now)
        for key in expired:
            self.reports.flow_done(key, key.proto, now, "timeout")
        return [Close(key) for key in expired]

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def __contains__(self, key: FlowKey) -> bool:
        return key in self.table

    def traffic(self, key: FlowKey) -> Traffic | None:
        """The flow's counters (for its report), marking it used by no one."""
        return self.table.peek(key)

    def __len__(self) -> int:
        return len(self.table)

    def records(self) -> list[FlowRecord]:
        return [FlowRecord("udp", key, traffic) for key, traffic in self.table.items()]


def os_error_text(errno_value: int) -> str:
    """An errno as an event's error text: its symbolic name (the core has no strerror)."""
    name = errno.errorcode.get(errno_value)
    return name if name is not None else f"errno {errno_value}"


def quoted_header(key: FlowKey, seq: int = 0) -> bytes:
    """The start of a datagram the guest sent on *key*, as an ICMP error quotes it.

    For TCP, *seq* is the sequence number the guest's kernel checks the error against.
    """
    v6 = is_ipv6(key.guest_addr)
    ip_len = IP6_LEN if v6 else IP_LEN
    quote = bytearray(ip_len + QUOTED_L4_LEN)
    if v6:
        build_ipv6(quote, 0, src=key.guest_addr, dst=key.remote_addr, next_header=key.proto,
                   payload_len=QUOTED_L4_LEN)
    else:
        build_ipv4(quote, 0, src=key.guest_addr, dst=key.remote_addr, proto=key.proto,
                   payload_len=QUOTED_L4_LEN)
    if key.proto in (IpProto.ICMP, IpProto.ICMPV6):
        echo = IcmpType.ECHO_REQUEST if key.proto == IpProto.ICMP else Icmp6Type.ECHO_REQUEST
        _ECHO_QUOTE.pack_into(quote, ip_len, echo, 0, _NO_CHECKSUM, key.guest_port, 0)
    elif key.proto == IpProto.TCP:
        _TCP_QUOTE.pack_into(quote, ip_len, key.guest_port, key.remote_port, seq)
    else:
        _UDP_QUOTE.pack_into(quote, ip_len, key.guest_port, key.remote_port, UDP_LEN,
                             _NO_CHECKSUM)
    return bytes(quote)


def icmp_error_for(link: GuestLink, key: FlowKey, icmp_type: int, code: int,
                   info: int, seq: int = 0) -> list[Effect]:
    """An ICMP error about *key*, from the address the guest was talking to.

    *icmp_type* and *code* are of the key's family (ICMPv6's for an IPv6 flow), as the
    host's error queue reports them; `unreachable` speaks for both families.
    """
    if is_ipv6(key.guest_addr):
        if icmp_type not in (Icmp6Type.DEST_UNREACHABLE, Icmp6Type.PACKET_TOO_BIG,
                             Icmp6Type.TIME_EXCEEDED):
            return []
        # "Packet too big" carries the MTU (RFC 4443 3.2).
        rest = _PTB_REST.pack(info if icmp_type == Icmp6Type.PACKET_TOO_BIG else 0)
    else:
        if icmp_type not in (IcmpType.DEST_UNREACHABLE, IcmpType.TIME_EXCEEDED):
            return []
        # "Fragmentation needed" carries the next-hop MTU in the low 16 bits (RFC 1191).
        rest = _FRAG_NEEDED_REST.pack(
            0, info & _NEXT_HOP_MTU_MASK if code == UnreachCode.FRAG_NEEDED else 0)
    return list(link.icmp(src=key.remote_addr, dst=key.guest_addr, icmp_type=icmp_type,
                          code=code, rest=rest, payload=quoted_header(key, seq)))


_UNREACH6: Final = {UnreachCode.NET: Unreach6Code.NO_ROUTE, UnreachCode.HOST: Unreach6Code.ADDRESS,
                    UnreachCode.PORT: Unreach6Code.PORT,
                    UnreachCode.NET_PROHIBITED: Unreach6Code.ADMIN_PROHIBITED,
                    UnreachCode.HOST_PROHIBITED: Unreach6Code.ADMIN_PROHIBITED,
                    UnreachCode.ADMIN_PROHIBITED: Unreach6Code.ADMIN_PROHIBITED}


def unreachable(link: GuestLink, key: FlowKey, code: UnreachCode, seq: int = 0) -> list[Effect]:
    """"Destination unreachable" about *key*, in its family: *code* is named as ICMPv4's
    and becomes its ICMPv6 counterpart (RFC 4443 3.1) for an IPv6 flow."""
    if is_ipv6(key.guest_addr):
        return icmp_error_for(link, key, Icmp6Type.DEST_UNREACHABLE, _UNREACH6[code], 0, seq)
    return icmp_error_for(link, key, IcmpType.DEST_UNREACHABLE, code, 0, seq)
