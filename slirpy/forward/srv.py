"""SRV lookups for remote forwards whose target is `[NAME@srv-DNSSERVER:PORT]`.

A flow to such a forward waits while slirpy asks DNSSERVER (over UDP, on a host socket
like any flow's) for the SRV record NAME, picks a record (lowest priority, then highest
weight), and takes the target's address from the answer's additional section, or asks
the same server for it. The result is cached for the configured TTL, so a busy forward
asks once per TTL. A lookup that fails (an error answer, no usable record, no answer
in time, the server unreachable) fails the flows waiting for it, with one log line each
time, and is not cached: the next flow asks again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Final

from slirpy.effects import Close, Effect, OpenUdp, SendDatagram
from slirpy.events import HostError
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import SrvName
from slirpy.wire import Malformed
from slirpy.wire.dns import TYPE_A, TYPE_AAAA, TYPE_SRV, addresses_for, build_query, parse_response, pick_srv
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

Target = tuple[bytes, int]  # packed address, port
Waiter = Callable[[Target | None, float], list[Effect]]

LOOKUP_TIMEOUT_S: Final = 3.0
MAX_WAITERS: Final = 256  # flows waiting for one name; more are failed at once
_OURS: Final = b"\x00\x00\x00\x00"  # the "guest address" of lookup flows: never a guest's


class _Lookup:
    def __init__(self, srv: SrvName, key: FlowKey, deadline: float) -> None:
        self.srv = srv
        self.key = key
        self.deadline = deadline
        self.waiters: list[Waiter] = []
        self.port = 0  # from the SRV record, once known
        self.target_name = ""  # asked for its address in a second query
        self.address_queries: list[int] = []  # A, then AAAA, asked after the SRV query


class SrvResolver:
    def __init__(self, ttl_s: float, secret: bytes) -> None:
        self.ttl_s = ttl_s
        self.secret = secret
        self.counter = 0
        self.cache: dict[SrvName, tuple[Target, float]] = {}
        self.pending: dict[SrvName, _Lookup] = {}
        self.by_key: dict[FlowKey, _Lookup] = {}
        self.failures = 0

    def owns(self, key: FlowKey) -> bool:
        return key in self.by_key

    def lookup(self, srv: SrvName, now: float, waiter: Waiter) -> list[Effect]:
        """Call *waiter* with the target once known (maybe at once); its effects follow."""
        cached = self.cache.get(srv)
        if cached is not None and cached[1] > now:
            return waiter(cached[0], now)
        lookup = self.pending.get(srv)
        if lookup is not None:
            if len(lookup.waiters) >= MAX_WAITERS:
                return waiter(None, now)
            lookup.waiters.append(waiter)
            return []
        lookup = _Lookup(srv, self._key(srv), now + LOOKUP_TIMEOUT_S)
        try:
            query = build_query(lookup.key.guest_port, srv.name, TYPE_SRV)
        except ValueError as exc:  # the spec parser refuses such names: never asked
            log.warning("remote forward: cannot look up %r: %s", srv.name, exc)
            return waiter(None, now)
        lookup.waiters.append(waiter)
        self.pending[srv] = lookup
        self.by_key[lookup.key] = lookup
        return [OpenUdp(lookup.key, srv.server.packed, srv.port),
                SendDatagram(lookup.key, query)]

    def _key(self, srv: SrvName) -> FlowKey:
        self.counter += 1
        digest = hashlib.blake2s(self.counter.to_bytes(8, "big"), key=self.secret,
                                 digest_size=2).digest()
        return FlowKey(IpProto.UDP, _OURS, int.from_bytes(digest, "big"), srv.server.packed,
                       srv.port)

    def on_answer(self, key: FlowKey, data: bytes | memoryview, now: float) -> list[Effect]:
        lookup = self.by_key.get(key)
        if lookup is None:
            return []
        try:
            response = parse_response(data)
        except Malformed as exc:
            return self._fail(lookup, f"bad answer ({exc.reason})", now)
        if response.ident != key.guest_port:
            return []  # not ours: wait for the real one
        if response.rcode != 0:
            return self._fail(lookup, f"answer code {response.rcode}", now)
        records = response.answers + response.additional
        if not lookup.target_name:
            record = pick_srv(response.answers)
            if record is None:
                return self._fail(lookup, "no usable SRV record", now)
            lookup.port = record.port
            lookup.target_name = record.target.rstrip(".").lower()
        # Either family will do (a host socket reaches both); IPv4 first, as getaddrinfo.
        addresses = sorted(addresses_for(lookup.target_name, records), key=len)
        if addresses:
            return self._done(lookup, (addresses[0], lookup.port), now)
        qtype = next((t for t in (TYPE_A, TYPE_AAAA) if t not in lookup.address_queries), None)
        if qtype is None:
            return self._fail(lookup, f"no address for {lookup.target_name}", now)
        # Ask the same server for the target's address, on a new socket with a new id.
        self.by_key.pop(key)
        lookup.key = self._key(lookup.srv)
        lookup.address_queries.append(qtype)
        self.by_key[lookup.key] = lookup
        return [Close(key), OpenUdp(lookup.key, lookup.srv.server.packed, lookup.srv.port),
                SendDatagram(lookup.key, build_query(lookup.key.guest_port,
                                                     lookup.target_name, qtype))]

    def on_error(self, key: FlowKey, error: HostError, now: float) -> list[Effect]:
        lookup = self.by_key.get(key)
        if lookup is None:
            return []
        return self._fail(lookup, f"server unreachable (errno {error.errno})", now)

    def expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for lookup in [l for l in self.pending.values() if l.deadline <= now]:
            effects += self._fail(lookup, "no answer", now)
        return effects

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min((l.deadline for l in self.pending.values()), default=None)

    def _done(self, lookup: _Lookup, target: Target, now: float) -> list[Effect]:
        self.cache[lookup.srv] = (target, now + self.ttl_s)
        return self._finish(lookup, target, now)

    def _fail(self, lookup: _Lookup, why: str, now: float) -> list[Effect]:
        self.failures += 1
        log.warning("remote forward: SRV lookup of %s at %s:%d failed: %s; failing %d "
                    "flow(s)", lookup.srv.name, lookup.srv.server, lookup.srv.port, why,
                    len(lookup.waiters))
        return self._finish(lookup, None, now)

    def _finish(self, lookup: _Lookup, target: Target | None, now: float) -> list[Effect]:
        self.pending.pop(lookup.srv, None)
        self.by_key.pop(lookup.key, None)
        effects: list[Effect] = [Close(lookup.key)]
        for waiter in lookup.waiters:
            effects += waiter(target, now)
        return effects
