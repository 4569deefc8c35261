"""What the core tells the event stream: flows opened and ended, refusals, DNS upstreams.

Every flow's opening and end passes here once, never a packet: the parts that own flows
(TCP connections, UDP and echo flows, forwarded UDP flows, the DNS forwarder's queries)
say "opened" with what let the flow pass, and "ended" with why. The counts of flows
opened and closed by protocol are always kept (plain increments). With reports on (an
event sink or an API subscriber is attached; the composition root sets `on`), each
opening and end also becomes a `Report` effect the runtime hands to the event hub, with
the flow's bytes and packets each way, read from the counters the flow keeps anyway.
While reports are off nothing is remembered per flow, so a flow opened then has no
flow-done either.

Refused flows become `blocked` reports folded per (what refused it, remote address):
the first at once, those within the next FOLD_S seconds as one report with their count
when the window ends (a timed part), so a flood makes a line a second per destination.
At most FOLDS_MAX destinations are folded at once; beyond that, refusals are only
counted (slirpy.stats), not reported.
Never done here: time of day, JSON, writing (slirpy.observe.events).
"""

from __future__ import annotations

from typing import Final, Protocol

from slirpy.addresses import address_text, is_ipv6
from slirpy.effects import Effect, Report
from slirpy.flows.key import FlowKey
from slirpy.wire.ipv4 import IpProto

FOLD_S: Final = 1.0
FOLDS_MAX: Final = 256
_TCP: Final = int(IpProto.TCP)
_UDP: Final = int(IpProto.UDP)
_ICMP6: Final = int(IpProto.ICMPV6)

Fields = dict[str, object]


class Measured(Protocol):
    """A flow's own counters: (bytes from the guest, bytes to it, packets from, to)."""

    def counts(self) -> tuple[int, int, int, int]: ...


def proto_name(proto: int) -> str:
    if proto == _TCP:
        return "tcp"
    if proto == _UDP:
        return "udp"
    return "icmp6" if proto == _ICMP6 else "icmp"


def counter_bucket(proto: int) -> str:
    """The counters' protocol: ICMPv6 echo counts as "icmp"."""
    return "tcp" if proto == _TCP else "udp" if proto == _UDP else "icmp"


_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96 (RFC 4291 2.5.5.2)


def endpoint(addr: bytes, port: int) -> Fields:
    """An address and port; an IPv4 client seen on a dual-stack socket, as IPv4."""
    if len(addr) == 16 and addr.startswith(_MAPPED_PREFIX):
        addr = addr[len(_MAPPED_PREFIX):]
    return {"addr": address_text(addr), "port": port}


def flow_fields(key: FlowKey) -> Fields:
    """Protocol, family and both ends of *key*, as every flow report names them."""
    return {"proto": proto_name(key.proto), "family": 6 if is_ipv6(key.guest_addr) else 4,
            "guest": endpoint(key.guest_addr, key.guest_port),
            "remote": endpoint(key.remote_addr, key.remote_port)}


class _Open:
    __slots__ = ("created", "measured", "fields")

    def __init__(self, created: float, measured: Measured, fields: Fields) -> None:
        self.created = created
        self.measured = measured
        self.fields = fields


def _proto_of(fields: Fields) -> int:
    """The IP protocol number of a report's "proto" field (for the closed counters)."""
    return {"tcp": _TCP, "udp": _UDP, "icmp6": _ICMP6}.get(str(fields["proto"]), 1)


class _Fold:
    __slots__ = ("until", "count", "fields")

    def __init__(self, until: float, fields: Fields) -> None:
        self.until = until
        self.count = 0  # refusals since the last report
        self.fields = fields


class Reporter:
    def __init__(self, on: bool = False) -> None:
        self.on = on
        self.opened: dict[str, int] = {"tcp": 0, "udp": 0, "icmp": 0}
        self.closed: dict[str, int] = {"tcp": 0, "udp": 0, "icmp": 0}
        self.forward_flows: dict[int, int] = {}  # forward id -> flows it carried
        self.next_id = 1
        self.open: dict[object, _Open] = {}  # handle (a flow key, a query) -> open flow
        self.folds: dict[tuple[str, bytes], _Fold] = {}
        self.outbox: list[Effect] = []  # reports made while the current event is fed

    def set_on(self, on: bool) -> None:
        """Start or stop reporting; stopping forgets the flows it was following."""
        self.on = on
        if not on:
            self.open.clear()
            self.folds.clear()
            self.outbox.clear()

    def take(self) -> list[Effect]:
        """The reports made since the last take (the stack adds them to its effects)."""
        reports, self.outbox = self.outbox, []
        return reports

    # --- flows -------------------------------------------------------------------------

    def flow_new(self, handle: object, key: FlowKey, now: float, measured: Measured,
                 origin: str, allowed_by: str, *, forward: int | None = None,
                 client: tuple[bytes, int] | None = None, rule: int | None = None) -> None:
        """A flow opened on *key*: *origin* "guest", "local-forward" or "remote-forward";
        *allowed_by*: the rule or setting that let it pass. *handle* names it until
        `flow_done` (the key, unless one key may carry several flows at once)."""
        self.opened[counter_bucket(key.proto)] += 1
        if forward is not None:
            self.forward_flows[forward] = self.forward_flows.get(forward, 0) + 1
        if not self.on:
            return
        fields = flow_fields(key)
        fields["id"] = self.next_id
        self.next_id += 1
        fields["origin"] = origin
        fields["allowed_by"] = allowed_by
        if rule is not None:
            fields["rule"] = rule
        if forward is not None:
            fields["forward"] = forward
        if client is not None:
            fields["client"] = endpoint(client[0], client[1])
        self.open[handle] = _Open(now, measured, fields)
        self.outbox.append(Report("flow-new", dict(fields)))

    def flow_done(self, handle: object, proto: int, now: float, reason: str,
                  error: str = "") -> None:
        """The flow *handle* of protocol *proto* ended: *reason* is fin, reset, timeout,
        refused, error (with *error* saying what) or closed (by slirpy: evicted at the
        flow cap, its forward removed, answered)."""
        self.closed[counter_bucket(proto)] += 1
        if not self.on:
            return
        entry = self.open.pop(handle, None)
        if entry is None:
            return  # opened before reports were on
        from_guest, to_guest, packets_from, packets_to = entry.measured.counts()
        fields = dict(entry.fields)
        fields["bytes"] = {"from_guest": from_guest, "to_guest": to_guest}
        fields["packets"] = {"from_guest": packets_from, "to_guest": packets_to}
        fields["duration_s"] = round(max(0.0, now - entry.created), 6)
        fields["reason"] = reason
        if error:
            fields["error"] = error
        self.outbox.append(Report("flow-done", fields))

    def end_all(self, now: float) -> None:
        """slirpy stops: every flow still followed ends, with reason "exit" (its bytes so
        far), so each flow-new of the stream has its flow-done."""
        for handle, entry in list(self.open.items()):
            self.flow_done(handle, _proto_of(entry.fields), now, "exit")

    # --- refusals and DNS ------------------------------------------------------------------

    def blocked(self, key: FlowKey, why: str, rule: int | None, now: float) -> None:
        """A new flow on *key* refused by *why* (rule number *rule*, if a rule did)."""
        if not self.on:
            return
        fold = self.folds.get((why, key.remote_addr))
        if fold is not None:
            fold.count += 1
            return
        if len(self.folds) >= FOLDS_MAX:
            return  # a scan of many destinations: counted (slirpy.stats), not reported
        fields = flow_fields(key)
        fields["by"] = why
        if rule is not None:
            fields["rule"] = rule
        self.folds[(why, key.remote_addr)] = _Fold(now + FOLD_S, fields)
        fields = dict(fields)
        fields["count"] = 1
        self.outbox.append(Report("blocked", fields))

    def dns_upstream(self, state: str, upstream: bytes, error: str = "") -> None:
        """The DNS forwarder's upstream *state*: "chosen" (answers are taken from it
        first now) or "failed" (an attempt failed; the next upstream is tried)."""
        if not self.on:
            return
        fields: Fields = {"state": state, "upstream": address_text(upstream)}
        if error:
            fields["error"] = error
        self.outbox.append(Report("dns-upstream", fields))

    # --- the timed part: folded refusals ------------------------------------------------------

    def next_deadline(self) -> float | None:
        if not self.folds:
            return None
        return min(fold.until for fold in self.folds.values())

    def expire(self, now: float) -> list[Effect]:
        reports: list[Effect] = []
        for fold_key, fold in list(self.folds.items()):
            if fold.until > now:
                continue
            del self.folds[fold_key]
            if fold.count:
                fields = dict(fold.fields)
                fields["count"] = fold.count
                reports.append(Report("blocked", fields))
        return reports
