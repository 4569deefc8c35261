"""The core's one DNS client: every query slirpy itself sends to a DNS server.

Two parts ask questions of DNS servers: the DNS forwarder relays each guest query, its
bytes and id unchanged, to the host's resolvers (slirpy.services.dns), and the SRV
resolver of remote forwards builds its own queries (slirpy.forward.srv). Both ask here,
"send these bytes to that server, expect this id", and this client owns, for every
query of either:
- its key: a FlowKey whose guest end is (an address of the asker's, a port of ours),
  unique among all pending queries of both askers, so the runtime carries it like any
  UDP flow on a host socket of its own and no answer can reach another query;
- sending it (OpenUdp, SendDatagram), matching the answer by the key and the DNS id
  (RFC 5452 9.1), its deadline, and closing its socket (Close) whatever the outcome;
- telling the asker the outcome exactly once: the answer's bytes, or a `Failure`.
The stack routes every datagram and error of these keys here, once, and this client
hands it to the asker of that very query.

The key's port is a label, allocated in turn and checked free among the pending
queries: it never reaches the wire. The host socket is connected by the kernel from an
ephemeral port of its own choosing (randomised, RFC 6056), which is the source port an
off-path spoofer must guess (RFC 5452 9.2); the label only has to be unique, and the
next free one in turn is unique by construction, cheap, and deterministic in tests. The
other half of what a spoofer must guess is the DNS id (RFC 5452 4.2, 9.2): a query we
build takes `new_ident()`, a keyed hash of the constructor's secret and a counter,
unpredictable in use and deterministic in tests; a relayed guest query keeps the
guest's own id (its resolver chose it). A datagram on a query's socket that is not a
response or carries another id is ignored: the query waits on for its answer.

Never done here: sockets (the runtime); reading an answer past its header (each asker
reads its own); trying again (the forwarder tries its next upstream, the SRV resolver
asks its next question, from their `done` callbacks); deciding what to ask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
from collections.abc import Callable
from typing import Final

from slirpy.effects import Close, Effect, OpenUdp, SendDatagram
from slirpy.events import HostError
from slirpy.flows.key import FlowKey
from slirpy.wire.dns import DNS_PORT, response_ident
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

MAX_QUERIES: Final = 4096  # pending at once, both askers; far below the labels there are
LABEL_COUNT: Final = 65535  # key ports 1-65535 (0 is no port)
ID_BYTES: Final = 2  # a DNS id is 16 bits (RFC 1035 4.1.1)
_COUNTER_BYTES: Final = 8  # the hashed counter: never wraps in a run
_ID_PERSON: Final = b"dns-id"  # blake2s personalisation: these hashes are DNS ids only

NO_ANSWER: Final = "no answer in time"
TOO_MANY: Final = "too many DNS queries pending"


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A query that got no answer: why, in words for the asker's log line."""

    why: str


Outcome = bytes | memoryview | Failure  # the answer (its id checked), or why there is none
Done = Callable[[Outcome, float], list[Effect]]  # the asker's: (outcome, now) -> effects


@dataclasses.dataclass(slots=True)
class _Query:
    key: FlowKey
    ident: int  # the DNS id the answer must carry
    deadline: float
    serial: int  # tells this query's deadline entry from a stale one for the same key
    done: Done


class DnsClient:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.pending: dict[int, _Query] = {}  # key port -> query
        # (deadline, serial, key port); entries of answered queries are dropped lazily.
        self.deadlines: list[tuple[float, int, int]] = []
        self._next_port = 0
        self._serial = 0
        self._idents = 0

    def new_ident(self) -> int:
        """A DNS id for a query the caller builds: unpredictable without the secret."""
        self._idents += 1
        digest = hashlib.blake2s(self._idents.to_bytes(_COUNTER_BYTES, "big"), key=self.secret,
                                 digest_size=ID_BYTES, person=_ID_PERSON).digest()
        return int.from_bytes(digest, "big")

    def ask(self, origin: bytes, server: tuple[bytes, int], query: bytes, ident: int, *,
            now: float, deadline: float, done: Done) -> list[Effect]:
        """Send *query* to *server* (packed address, port) and expect an answer with id
        *ident* by *deadline*; *done* gets the outcome later (at once if the client is
        full). *origin* is the key's guest address: one of ours, never a guest's."""
        if len(self.pending) >= MAX_QUERIES:
            return done(Failure(TOO_MANY), now)
        self._serial += 1
        key = FlowKey(IpProto.UDP, origin, self._free_port(), server[0], server[1])
        self.pending[key.guest_port] = _Query(key, ident, deadline, self._serial, done)
        heapq.heappush(self.deadlines, (deadline, self._serial, key.guest_port))
        return [OpenUdp(key, server[0], server[1]), SendDatagram(key, query)]

    def _free_port(self) -> int:
        # The next label in turn that no pending query holds: at most MAX_QUERIES are
        # held, so the search ends within MAX_QUERIES + 1 steps.
        while True:
            self._next_port = self._next_port % LABEL_COUNT + 1
            if self._next_port not in self.pending:
                return self._next_port

    def owns(self, key: FlowKey) -> bool:
        """Whether *key* is one of our pending queries (its datagrams come here)."""
        query = self.pending.get(key.guest_port)
        return query is not None and query.key == key

    def on_datagram(self, key: FlowKey, data: bytes | memoryview, now: float) -> list[Effect]:
        query = self.pending.get(key.guest_port)
        if query is None or query.key != key or response_ident(data) != query.ident:
            return []  # stale, not a response, or not to what we asked: wait on
        del self.pending[key.guest_port]
        return [Close(key), *query.done(data, now)]

    def on_error(self, key: FlowKey, error: HostError, now: float) -> list[Effect]:
        query = self.pending.get(key.guest_port)
        if query is None or query.key != key:
            return []
        del self.pending[key.guest_port]
        return [Close(key), *query.done(Failure(f"unreachable (errno {error.errno})"), now)]

    def expire(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self.deadlines and self.deadlines[0][0] <= now:
            _, serial, port = heapq.heappop(self.deadlines)
            query = self.pending.get(port)
            if query is None or query.serial != serial:
                continue  # answered (or failed) already
            del self.pending[port]
            effects += [Close(query.key), *query.done(Failure(NO_ANSWER), now)]
        return effects

    def next_deadline(self) -> float | None:
        while self.deadlines:
            _, serial, port = self.deadlines[0]
            query = self.pending.get(port)
            if query is not None and query.serial == serial:
                return query.deadline
            heapq.heappop(self.deadlines)  # the query is gone: forget its deadline
        return None

    def __len__(self) -> int:
        return len(self.pending)
