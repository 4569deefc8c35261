"""The DNS forwarder at network+3: the guest's queries, relayed to the host's resolvers.

Model: each query the guest sends to DNS:53 is relayed, unchanged, to one upstream
nameserver of the host's resolv.conf, through the core's one DNS client
(slirpy.services.dnsclient: a host UDP socket per attempt, so the kernel's random source
port, as a stub resolver would use). The answer goes back to the guest as if DNS:53
sent it. If the upstream reports an error (port unreachable) or says nothing within
the timeout, the next upstream is tried; when all have failed the guest gets SERVFAIL
at once rather than waiting out its own timeouts. The upstream that last answered is
tried first next time, so one dead resolver costs one timeout, not one per query.
The host sockets live in the host's namespaces, so a resolver on the host's loopback
(systemd-resolved, dnsmasq) works though the guest could never reach it itself.
The forwarder answers on the IPv4 DNS address and, with IPv6, on the IPv6 one; any
query goes to any upstream, whatever the families (an IPv6-only host serves IPv4
guests' queries, and the other way round).
Keys: each attempt's FlowKey has the DNS address asked as its guest address and a port
the client picks, so its answers cannot be confused with a guest flow's.
Not done here: reading resolv.conf (the runtime does, and passes the list in), caching,
keys, sockets, matching answers and timeouts (the DNS client).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
from typing import Final

from slirpy.addresses import address_text
from slirpy.effects import Effect
from slirpy.flows.key import FlowKey, Traffic
from slirpy.guest import GuestLink
from slirpy.reports import Reporter
from slirpy.services.dnsclient import DnsClient, Failure, Outcome
from slirpy.wire import Malformed
from slirpy.wire.dns import DNS_PORT, RCODE_SERVFAIL, DnsQuery, build_error_reply
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

MAX_PENDING: Final = 512  # a guest flooding queries is refused, not remembered
_NAMESERVER: Final = "nameserver"
_ZONE_SEP: Final = "%"  # fe80::1%eth0: the zone is the host's business, not the address


def parse_resolv_conf(text: str) -> list[tuple[bytes, int]]:
    """The nameservers of a resolv.conf, in order, as (packed address, port)."""
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == _NAMESERVER:
            try:
                address = ipaddress.ip_address(fields[1].split(_ZONE_SEP)[0])
            except ValueError:
                continue
            servers.append((address.packed, DNS_PORT))
    return servers


# eq=False: a query is its own identity (its report's handle: one guest socket may have
# two queries out at once, as glibc's A and AAAA).
@dataclasses.dataclass(slots=True, eq=False)
class _Pending:
    our_addr: bytes  # the DNS address the guest asked: the answer comes from it
    guest_addr: bytes
    guest_port: int
    query: bytes
    ident: int
    first: int  # index of the upstream tried first
    tried: int = 0  # how many upstreams were tried
    upstream: bytes = b""  # the one asked now
    traffic: Traffic | None = None  # the query's and the answer's bytes, for its report


class DnsForwarder:
    def __init__(self, link: GuestLink, timeout_s: float, client: DnsClient,
                 reports: Reporter | None = None) -> None:
        self.link = link
        self.timeout_s = timeout_s
        self.client = client
        self.reports = reports or Reporter()
        self.upstreams: list[tuple[bytes, int]] = []
        self.preferred = 0
        self.chosen: bytes | None = None  # the upstream that answered last (reported)
        self.in_flight = 0  # guest queries not yet answered (nor failed)
        self.queries = 0  # the guest's queries taken
        self.failures = 0  # of them, answered SERVFAIL: no upstream answered
        self.failovers = 0  # attempts that failed, so the next upstream was asked

    def set_upstreams(self, servers: list[tuple[bytes, int]]) -> None:
        if servers != self.upstreams:
            log.info("DNS upstreams: %s", ", ".join(
                str(ipaddress.ip_address(addr)) for addr, _ in servers) or "none")
            self.upstreams = servers
            self.preferred = 0

    def preferred_upstream(self) -> bytes | None:
        """The upstream tried first now (the one that last answered); None if none."""
        if not self.upstreams:
            return None
        return self.upstreams[self.preferred % len(self.upstreams)][0]

    def on_query(self, our_addr: bytes, guest_addr: bytes, guest_port: int,
                 payload: memoryview, now: float) -> list[Effect]:
        """A query the guest sent from *guest_addr*:*guest_port* to *our_addr*:53."""
        query = DnsQuery.parse(payload)  # Malformed goes to the stack's drop counter
        if self.in_flight >= MAX_PENDING:
            raise Malformed("dns-too-many-pending")
        self.queries += 1
        if not self.upstreams:
            self.failures += 1
            return self._servfail(our_addr, guest_addr, guest_port, query)
        self.in_flight += 1
        traffic = Traffic(now, len(payload), 0, 1)
        pending = _Pending(our_addr, guest_addr, guest_port, bytes(payload), query.ident,
                           self.preferred % len(self.upstreams), traffic=traffic)
        self.reports.flow_new(pending, FlowKey(IpProto.UDP, guest_addr, guest_port, our_addr,
                                               DNS_PORT),
                              now, traffic, "guest", "dns forwarder")
        return self._attempt(pending, now)

    def _attempt(self, pending: _Pending, now: float) -> list[Effect]:
        if pending.tried >= len(self.upstreams):
            self.in_flight -= 1
            self.failures += 1
            query = DnsQuery.parse(memoryview(pending.query))
            reply = self._servfail(pending.our_addr, pending.guest_addr, pending.guest_port,
                                   query)
            self._done_report(pending, now, "error", "no upstream answered (SERVFAIL)")
            return reply
        addr, port = self.upstreams[(pending.first + pending.tried) % len(self.upstreams)]
        pending.tried += 1
        pending.upstream = addr
        return self.client.ask(pending.our_addr, (addr, port), pending.query, pending.ident,
                               now=now, deadline=now + self.timeout_s,
                               done=functools.partial(self._done, pending))

    def _done(self, pending: _Pending, outcome: Outcome, now: float) -> list[Effect]:
        match outcome:
            case Failure(why):
                log.debug("DNS upstream %s: %s", address_text(pending.upstream), why)
                if pending.tried < len(self.upstreams):
                    self.failovers += 1
                self.reports.dns_upstream("failed", pending.upstream, why)
                return self._attempt(pending, now)
            case answer:
                self.in_flight -= 1
                self.preferred = (pending.first + pending.tried - 1) % max(len(self.upstreams),
                                                                           1)
                if pending.upstream != self.chosen:
                    self.chosen = pending.upstream
                    self.reports.dns_upstream("chosen", pending.upstream)
                if pending.traffic is not None:
                    pending.traffic.to_guest += len(answer)
                    pending.traffic.packets_to_guest += 1
                self._done_report(pending, now, "closed")
                return list(self.link.udp(src=pending.our_addr, src_port=DNS_PORT,
                                          dst=pending.guest_addr, dst_port=pending.guest_port,
                                          payload=answer))

    def _done_report(self, pending: _Pending, now: float, reason: str,
                     error: str = "") -> None:
        if pending.traffic is not None:
            self.reports.flow_done(pending, IpProto.UDP, now, reason, error)

    def _servfail(self, our_addr: bytes, guest_addr: bytes, guest_port: int,
                  query: DnsQuery) -> list[Effect]:
        return list(self.link.udp(src=our_addr, src_port=DNS_PORT, dst=guest_addr,
                                  dst_port=guest_port,
                                  payload=build_error_reply(query, RCODE_SERVFAIL)))
