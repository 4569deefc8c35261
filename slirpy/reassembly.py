"""Bounded reassembly of IPv4 and IPv6 fragments from the guest (IPv4: RFC 791 section
3.2, RFC 815; IPv6: RFC 8200 section 4.5).

A queue per (src, dst, proto, id) holds the pieces seen so far, for either family (the
address lengths keep them apart); a datagram is handed on once pieces cover 0..end with
the last one (MF clear, or M for IPv6) present. For IPv6 the pieces are the fragmentable
part: the caller walks the extension headers at its start once it is whole. Everything
is capped so a guest cannot grow our memory: the number of queues (the oldest is
evicted), the bytes held across all queues, the pieces per queue, the datagram size
(65535: IPv4's total length, IPv6's payload length), and the time a queue may wait
(Linux's ipfrag_time, 30 s). Overlapping pieces drop the whole queue, as RFC 5722 asks
for IPv6 and Linux has done for IPv4 too since FragmentSmack (CVE-2018-5391); an exact
duplicate is only ignored, since a retransmission can repeat one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Final, NamedTuple

from slirpy.addresses import is_ipv6
from slirpy.effects import Effect
from slirpy.wire.ipv4 import FRAGMENT_UNIT, HEADER_LEN, MAX_DATAGRAM

log = logging.getLogger(__name__)

MAX_QUEUES: Final = 64
MAX_BYTES: Final = 4 * 1024 * 1024
MAX_PIECES: Final = 256  # 65535 bytes at the smallest MTU IPv4 allows (68) is ~1400: absurd
TIMEOUT_S: Final = 30.0


class FragKey(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    ident: int


@dataclasses.dataclass(slots=True)
class _Queue:
    deadline: float
    pieces: dict[int, bytes] = dataclasses.field(default_factory=dict)  # start -> data
    end: int | None = None  # known once the piece with MF clear arrived
    held_bytes: int = 0


class Reassembler:
    def __init__(self, *, max_queues: int = MAX_QUEUES, max_bytes: int = MAX_BYTES,
                 max_pieces: int = MAX_PIECES, timeout_s: float = TIMEOUT_S) -> None:
        self.max_queues = max_queues
        self.max_bytes = max_bytes
        self.max_pieces = max_pieces
        self.timeout_s = timeout_s
        self.queues: dict[FragKey, _Queue] = {}  # insertion order == deadline order
        self.held_bytes = 0
        self.drops: Counter[str] = Counter()

    def on_fragment(self, key: FragKey, offset: int, more: bool, data: memoryview,
                    now: float) -> bytes | None:
        """Add one fragment; return the whole payload once it is complete."""
        self.expire(now)
        end = offset + len(data)
        # The whole must fit a datagram: IPv4's total length counts its header, IPv6's
        # payload length only what follows the fixed header.
        if end + (0 if is_ipv6(key.src) else HEADER_LEN) > MAX_DATAGRAM:
            return self._drop(key, "frag-too-big")
        if more and (len(data) % FRAGMENT_UNIT or not data):
            return self._drop(key, "frag-bad-length")
        queue = self.queues.get(key)
        if queue is None:
            if len(self.queues) >= self.max_queues:
                oldest = next(iter(self.queues))
                self._drop(oldest, "frag-evicted")
            queue = self.queues[key] = _Queue(deadline=now + self.timeout_s)
        if queue.pieces.get(offset) == bytes(data):
            return None  # an exact duplicate: harmless
        if self._overlaps(queue, offset, end) or (not more and queue.end is not None):
            return self._drop(key, "frag-overlap")
        if not more:
            if any(start + len(piece) > end for start, piece in queue.pieces.items()):
                return self._drop(key, "frag-overlap")
            queue.end = end
        elif queue.end is not None and end > queue.end:
            return self._drop(key, "frag-overlap")
        if len(queue.pieces) >= self.max_pieces:
            return self._drop(key, "frag-too-many-pieces")
        if self.held_bytes + len(data) > self.max_bytes:
            return self._drop(key, "frag-memory-limit")
        queue.pieces[offset] = bytes(data)
        queue.held_bytes += len(data)
        self.held_bytes += len(data)
        return self._complete(key, queue)

    def _overlaps(self, queue: _Queue, start: int, end: int) -> bool:
        return any(start < other + len(piece) and other < end
                   for other, piece in queue.pieces.items())

    def _complete(self, key: FragKey, queue: _Queue) -> bytes | None:
        if queue.end is None or queue.held_bytes != queue.end:
            return None  # no overlaps are kept, so held == end means no holes
        self._forget(key)
        return b"".join(queue.pieces[start] for start in sorted(queue.pieces))

    def _drop(self, key: FragKey, reason: str) -> bytes | None:
        """Forget *key*'s queue, counting why; None, so callers can return it."""
        self.drops[reason] += 1
        log.debug("fragments %s dropped: %s", key, reason)
        self._forget(key)
        return None

    def _forget(self, key: FragKey) -> None:
        queue = self.queues.pop(key, None)
        if queue is not None:
            self.held_bytes -= queue.held_bytes

    def expire(self, now: float) -> list[Effect]:
        """Give up on datagrams whose pieces stopped coming (nothing to tell anyone)."""
        while self.queues:
            key, queue = next(iter(self.queues.items()))
            if queue.deadline > now:
                break
            self._drop(key, "frag-timeout")
        return []

    def next_deadline(self) -> float | None:
        return next(iter(self.queues.values())).deadline if self.queues else None
