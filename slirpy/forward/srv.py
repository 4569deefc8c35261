"""SRV lookups for remote forwards whose target is `[NAME@srv-DNSSERVER:PORT]`.

A flow to such a forward waits while slirpy asks DNSSERVER for the SRV record NAME
(RFC 2782), through the core's one DNS client (slirpy.services.dnsclient: over UDP, on a
host socket like any flow's), picks a record (lowest priority, then highest weight),
and takes the target's address from the answer's additional section, or asks the same
server for it (A, then AAAA). The result is cached for the configured TTL, so a busy
forward asks once per TTL. A lookup that fails (an error answer, no usable record, no
answer in time, the server unreachable) fails the flows waiting for it, with one log
line each time, and is not cached: the next flow asks again.
Owned here: the questions, reading their answers, the cache, the waiting flows.
Never done here: keys, sockets, ids, matching answers, timeouts (the DNS client).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Final

from slirpy.addresses import is_ipv6
from slirpy.effects import Effect
from slirpy.forward.spec import SrvName
from slirpy.ratelog import RateLimitedLog
from slirpy.services.dnsclient import DnsClient, Failure, Outcome
from slirpy.wire import Malformed
from slirpy.wire.dns import (RCODE_NOERROR, TYPE_A, TYPE_AAAA, TYPE_SRV, addresses_for,
                             build_query, parse_response, pick_srv)

log = logging.getLogger(__name__)

Target = tuple[bytes, int]  # packed address, port
Waiter = Callable[[Target | None, float], list[Effect]]

LOOKUP_TIMEOUT_S: Final = 3.0  # for the whole lookup, the address questions included
MAX_WAITERS: Final = 256  # flows waiting for one name; more are failed at once
ORIGIN: Final = bytes(4)  # 0.0.0.0, the lookups' "guest address": never a guest's
ADDRESS_TYPES: Final = (TYPE_A, TYPE_AAAA)  # asked in turn when the answer had no address


class _Lookup:
    def __init__(self, srv: SrvName, deadline: float) -> None:
        self.srv = srv
        self.deadline = deadline
        self.waiters: list[Waiter] = []
        self.port = 0  # from the SRV record, once known
        self.target_name = ""  # asked for its address in a further query
        self.address_queries: list[int] = []  # A, then AAAA, asked after the SRV query


class SrvResolver:
    def __init__(self, client: DnsClient, ttl_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.cache: dict[SrvName, tuple[Target, float]] = {}
        self.pending: dict[SrvName, _Lookup] = {}
        self.failures = 0
        self.log = RateLimitedLog(log)  # a guest's connections start lookups at will

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
        lookup = _Lookup(srv, now + LOOKUP_TIMEOUT_S)
        lookup.waiters.append(waiter)
        self.pending[srv] = lookup
        return self._ask(lookup, srv.name, TYPE_SRV, now)

    def _ask(self, lookup: _Lookup, name: str, qtype: int, now: float) -> list[Effect]:
        ident = self.client.new_ident()
        try:
            query = build_query(ident, name, qtype)
        except ValueError as exc:  # the spec parser refuses such names; a record's may be
            return self._fail(lookup, f"cannot ask for {name!r} ({exc})", now)
        server = (lookup.srv.server.packed, lookup.srv.port)
        return self.client.ask(ORIGIN, server, query, ident, now=now, deadline=lookup.deadline,
                               done=functools.partial(self._answered, lookup))

    def _answered(self, lookup: _Lookup, outcome: Outcome, now: float) -> list[Effect]:
        match outcome:
            case Failure(why):
                return self._fail(lookup, why, now)
            case answer:
                return self._read(lookup, answer, now)

    def _read(self, lookup: _Lookup, data: bytes | memoryview, now: float) -> list[Effect]:
        try:
            response = parse_response(data)
        except Malformed as exc:
            return self._fail(lookup, f"bad answer ({exc.reason})", now)
        if response.rcode != RCODE_NOERROR:
            return self._fail(lookup, f"answer code {response.rcode}", now)
        records = response.answers + response.additional
        if not lookup.target_name:
            record = pick_srv(response.answers)
            if record is None:
                return self._fail(lookup, "no usable SRV record", now)
            lookup.port = record.port
            lookup.target_name = record.target.rstrip(".").lower()
        # Either family will do (a host socket reaches both); IPv4 first, as getaddrinfo.
        addresses = sorted(addresses_for(lookup.target_name, records), key=is_ipv6)
        if addresses:
            return self._done(lookup, (addresses[0], lookup.port), now)
        qtype = next((t for t in ADDRESS_TYPES if t not in lookup.address_queries), None)
        if qtype is None:
            return self._fail(lookup, f"no address for {lookup.target_name}", now)
        lookup.address_queries.append(qtype)
        return self._ask(lookup, lookup.target_name, qtype, now)

    def _done(self, lookup: _Lookup, target: Target, now: float) -> list[Effect]:
        self.cache[lookup.srv] = (target, now + self.ttl_s)
        return self._finish(lookup, target, now)

    def _fail(self, lookup: _Lookup, why: str, now: float) -> list[Effect]:
        self.failures += 1
        self.log.warning("srv", now, "remote forward: SRV lookup of %s at %s:%d failed: %s; "
                         "failing %d flow(s)", lookup.srv.name, lookup.srv.server,
                         lookup.srv.port, why, len(lookup.waiters))
        return self._finish(lookup, None, now)

    def _finish(self, lookup: _Lookup, target: Target | None, now: float) -> list[Effect]:
        self.pending.pop(lookup.srv, None)
        effects: list[Effect] = []
        for waiter in lookup.waiters:
            effects += waiter(target, now)
        return effects
