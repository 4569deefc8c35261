"""ICMP and ICMPv6 echo from the guest: answered by us for our own addresses, for real
otherwise.

Model: an echo request to the gateway or the DNS address is answered here (also with
the DNS forwarder off, as slirp4netns does), with TTL 255. Any other
destination is pinged for real through an unprivileged ping socket (SOCK_DGRAM,
IPPROTO_ICMP, or IPPROTO_ICMPV6), one per (guest, echo id, destination); the kernel
rewrites the echo id to the socket's own, so replies get the guest's id back before they
go to the guest. A reply is never invented for a host that did not answer: no answer, no
reply.
Host-side errors (host unreachable, TTL exceeded) reach the guest as ICMP errors.
"""

from __future__ import annotations

import logging
from typing import Final

from slirpy.addresses import is_ipv6
from slirpy.effects import Close, Effect, OpenPing, SendDatagram
from slirpy.events import HostError
from slirpy.flows.key import ECHO_REMOTE_PORT, FlowKey, FlowRecord, Traffic
from slirpy.flows.table import FlowTable
from slirpy.guest import GuestLink
from slirpy.reports import Reporter
from slirpy.udp import icmp_error_for, os_error_text
from slirpy.wire import Malformed
from slirpy.wire.icmp import IcmpHeader, IcmpType, build_icmp, echo_rest
from slirpy.wire.icmpv6 import Icmp6Type
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

ECHO_CODE: Final = 0  # echo requests and replies have no other code, in either family
# Our own echo replies leave with TTL (hop limit) 255, as slirp4netns's do (libslirp's
# MAXTTL and IP6_HOP_LIMIT), so a guest's ping reads the same under either.
OWN_REPLY_HOP_LIMIT: Final = 255


def _echo_types(addr: bytes) -> tuple[int, int, int]:
    """(protocol, request type, reply type) of echo in *addr*'s family."""
    if is_ipv6(addr):
        return IpProto.ICMPV6, Icmp6Type.ECHO_REQUEST, Icmp6Type.ECHO_REPLY
    return IpProto.ICMP, IcmpType.ECHO_REQUEST, IcmpType.ECHO_REPLY


class EchoFlows:
    def __init__(self, link: GuestLink, limit: int, idle_s: float,
                 reports: Reporter | None = None) -> None:
        self.link = link
        self.table: FlowTable[Traffic] = FlowTable(limit, idle_s)  # ICMP payload bytes
        self.reports = reports or Reporter()

    def answer_ourselves(self, src: bytes, dst: bytes, echo: IcmpHeader) -> list[Effect]:
        return list(self.link.icmp(src=dst, dst=src, icmp_type=_echo_types(src)[2],
                                   code=ECHO_CODE, rest=echo.rest, payload=echo.payload,
                                   hop_limit=OWN_REPLY_HOP_LIMIT))

    def from_guest(self, src: bytes, dst: bytes, echo: IcmpHeader, now: float) -> list[Effect]:
        proto, request_type, _ = _echo_types(src)
        key = FlowKey(proto, src, echo.echo_id, dst, ECHO_REMOTE_PORT)
        effects: list[Effect] = []
        traffic = self.table.get(key, now)
        if traffic is None:
            traffic = Traffic(now)
            for old in self.table.add(key, traffic, now):
                self.reports.flow_done(old, old.proto, now, "closed", "evicted: flow limit")
                effects.append(Close(old))
            effects.append(OpenPing(key, dst))
        traffic.from_guest += len(echo.payload)
        traffic.packets_from_guest += 1
        # The kernel sets the id and, for ICMPv6 too, the checksum.
        request = build_icmp(request_type, ECHO_CODE, echo.rest, echo.payload)
        effects.append(SendDatagram(key, request))
        return effects

    def on_host_datagram(self, key: FlowKey, data: bytes | memoryview,
                         now: float) -> list[Effect]:
        traffic = self.table.get(key, now)
        if traffic is None:
            return []
        try:  # the kernel checked it (an ICMPv6 sum needs addresses the socket hides)
            reply = IcmpHeader.parse(memoryview(data), verify_checksum=False)
        except Malformed:
            return []  # a short read is all that could go wrong
        reply_type = _echo_types(key.guest_addr)[2]
        if reply.type != reply_type:
            return []
        traffic.to_guest += len(reply.payload)
        traffic.packets_to_guest += 1
        rest = echo_rest(key.guest_port, reply.echo_seq)  # the guest's id back
        return list(self.link.icmp(src=key.remote_addr, dst=key.guest_addr,
                                   icmp_type=reply_type, code=ECHO_CODE, rest=rest,
                                   payload=reply.payload))

    def on_host_error(self, key: FlowKey, error: HostError, now: float) -> list[Effect]:
        if key not in self.table:
            return []
        if error.icmp_type is None:
            self.table.remove(key)  # no ping socket to be had: the guest sees silence
            self.reports.flow_done(key, key.proto, now, "error", os_error_text(error.errno))
            return [Close(key)]
        return icmp_error_for(self.link, key, error.icmp_type, error.icmp_code or 0, error.info)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)

    def expire(self, now: float) -> list[Effect]:
        expired = self.table.expire(now)
        for key in expired:
            self.reports.flow_done(key, key.proto, now, "timeout")
        return [Close(key) for key in expired]

    def traffic(self, key: FlowKey) -> Traffic | None:
        return self.table.peek(key)

    def records(self) -> list[FlowRecord]:
        return [FlowRecord("icmp6" if key.proto == IpProto.ICMPV6 else "icmp", key, traffic)
                for key, traffic in self.table.items()]

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()
