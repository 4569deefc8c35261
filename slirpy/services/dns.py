"""The DNS forwarder at network+3: the guest's queries, relayed to the host's resolvers.

Model: each query the guest sends to DNS:53 is relayed, unchanged, over a fresh host
UDP socket (so a random source port, as a stub resolver would use) to one upstream
nameserver of the host's resolv.conf. The answer goes back to the guest as if DNS:53
sent it. If the upstream reports an error (port unreachable) or says nothing within
the timeout, the next upstream is tried; when all have failed the guest gets SERVFAIL
at once rather than waiting out its own timeouts. The upstream that last answered is
tried first next time, so one dead resolver costs one timeout, not one per query.
The host sockets live in the host's namespaces, so a resolver on the host's loopback
(systemd-resolved, dnsmasq) works though the guest could never reach it itself.
The forwarder answers on the IPv4 DNS address and, with IPv6, on the IPv6 one; any
query goes to any upstream, whatever the families (an IPv6-only host serves IPv4
guests' queries, and the other way round).
Keys: each attempt is a FlowKey whose guest end is (the DNS address asked, a port of
ours), so the runtime handles it like any UDP flow and answers cannot be confused with
the guest's.
Not done here: reading resolv.conf (the runtime does, and passes the list in), caching.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import Final

from slirpy.effects import Close, Effect, OpenUdp, SendDatagram
from slirpy.events import HostError
from slirpy.flows.key import FlowKey
from slirpy.guest import GuestLink
from slirpy.wire import Malformed
from slirpy.wire.dns import RCODE_SERVFAIL, DnsQuery, build_error_reply, response_ident
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

DNS_PORT: Final = 53
MAX_PENDING: Final = 512  # a guest flooding queries is refused, not remembered


def parse_resolv_conf(text: str) -> list[tuple[bytes, int]]:
    """The nameservers of a resolv.conf, in order, as (packed address, port)."""
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            servers.append((address.packed, DNS_PORT))
    return servers


@dataclasses.dataclass(slots=True)
class _Pending:
    our_addr: bytes  # the DNS address the guest asked: the answer comes from it
    guest_addr: bytes
    guest_port: int
    query: bytes
    ident: int
    first: int  # index of the upstream tried first
    tried: int  # how many upstreams were tried
    deadline: float


class DnsForwarder:
    def __init__(self, link: GuestLink, our_addrs: frozenset[bytes], timeout_s: float) -> None:
        self.link = link
        self.our_addrs = our_addrs
        self.timeout_s = timeout_s
        self.upstreams: list[tuple[bytes, int]] = []
        self.preferred = 0
        self.pending: dict[FlowKey, _Pending] = {}  # insertion order == deadline order
        self._next_port = 0

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
        if len(self.pending) >= MAX_PENDING:
            raise Malformed("dns-too-many-pending")
        if not self.upstreams:
            return self._servfail(our_addr, guest_addr, guest_port, query)
        pending = _Pending(our_addr, guest_addr, guest_port, bytes(payload), query.ident,
                           self.preferred % len(self.upstreams), 0, now)
        return self._attempt(pending, now)

    def _attempt(self, pending: _Pending, now: float) -> list[Effect]:
        if pending.tried >= len(self.upstreams):
            query = DnsQuery.parse(memoryview(pending.query))
            return self._servfail(pending.our_addr, pending.guest_addr, pending.guest_port,
                                  query)
        addr, port = self.upstreams[(pending.first + pending.tried) % len(self.upstreams)]
        pending.tried += 1
        pending.deadline = now + self.timeout_s
        key = FlowKey(IpProto.UDP, pending.our_addr, self._port(), addr, port)
        self.pending[key] = pending
        return [OpenUdp(key, addr, port), SendDatagram(key, pending.query)]

    def _port(self) -> int:
        # Unique among pending attempts: at most MAX_PENDING of them, 65535 to pick from.
        while True:
            self._next_port = self._next_port % 65535 + 1
            if all(key.guest_port != self._next_port for key in self.pending):
                return self._next_port

    def owns(self, key: FlowKey) -> bool:
        return key.guest_addr in self.our_addrs and key.proto == IpProto.UDP

    def on_answer(self, key: FlowKey, data: bytes | memoryview, now: float) -> list[Effect]:
        pending = self.pending.get(key)
        if pending is None or response_ident(data) != pending.ident:
            return []  # stale, or not an answer to what we asked: keep waiting
        del self.pending[key]
        self.preferred = (pending.first + pending.tried - 1) % max(len(self.upstreams), 1)
        return [Close(key), *self.link.udp(src=pending.our_addr, src_port=DNS_PORT,
                                          dst=pending.guest_addr, dst_port=pending.guest_port,
                                          payload=data)]

    def on_error(self, key: FlowKey, error: HostError, now: float) -> list[Effect]:
        pending = self.pending.pop(key, None)
        if pending is None:
            return []
        log.debug("DNS upstream %s failed: errno %d", ipaddress.ip_address(key.remote_addr),
                  error.errno)
        return [Close(key), *self._attempt(pending, now)]

    def expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self.pending:
            key, pending = next(iter(self.pending.items()))
            if pending.deadline > now:
                break
            del self.pending[key]
            log.debug("DNS upstream %s timed out", ipaddress.ip_address(key.remote_addr))
            effects += [Close(key), *self._attempt(pending, now)]
        return effects

    def next_deadline(self) -> float | None:
        return next(iter(self.pending.values())).deadline if self.pending else None

    def _servfail(self, our_addr: bytes, guest_addr: bytes, guest_port: int,
                  query: DnsQuery) -> list[Effect]:
        return list(self.link.udp(src=our_addr, src_port=DNS_PORT, dst=guest_addr,
                                  dst_port=guest_port,
                                  payload=build_error_reply(query, RCODE_SERVFAIL)))
