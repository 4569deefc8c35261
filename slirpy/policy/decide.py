"""The egress decision for a new guest flow: pass, block, or "unreachable".

Sans-IO: the stack asks once per new flow (a SYN, the first datagram of a UDP flow, the
first echo of an ICMP one), before any host system call, and a blocked flow never
makes one. The order (first match wins):
1. a --deny rule blocks;
2. an --allow rule passes (the gateway then maps to host loopback, whatever the
   host-loopback setting);
3. the gateway: host loopback when it is on, else "unreachable" (slirp4netns's answer);
4. the static deny list blocks: link-local 169.254.0.0/16 with the cloud-metadata
   address 169.254.169.254, the IPv6 metadata address fd00:ec2::254, NAT64's
   64:ff9b::/96 and 64:ff9b:1::/48 (through which a host with NAT64 reaches IPv4, its
   loopback included). An --allow rule opens these only when it is as narrow as the
   range it opens: `--allow 169.254.169.254` does, `--allow 0.0.0.0/0` does not;
5. one of the host's own addresses or directly connected networks passes only with
   --enable-host (the runtime hands the host list over at start and on every change);
6. anything else passes only with --enable-routing.
Destinations a guest can reach only with crafted frames and that slirpy never forwards
whatever the rules (loopback, unspecified, IPv4-mapped and -compatible IPv6, multicast,
broadcast, the guest's own networks) are dropped before this, in the stack
(slirpy.addresses.AddressPlan). Addresses are matched as integers (slirpy.addresses.NetSet).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

from slirpy.addresses import STATIC_DENY, IPNetwork, NetSet
from slirpy.policy.rules import Action, Rule


class Outcome(enum.Enum):
    PASS = "pass"
    BLOCK = "block"
    UNREACHABLE = "unreachable"


class Verdict(NamedTuple):
    outcome: Outcome
    why: str  # the rule or the setting that decided, for the log and the counters
    rule: int | None = None  # the id of the rule that decided, if a rule did


class Policy:
    def __init__(self, *, routing: bool, host: bool, host_loopback: bool,
                 rules: Iterable[Rule] = ()) -> None:
        self.routing = routing
        self.host = host
        self.host_loopback = host_loopback
        self.rules: dict[int, Rule] = {}  # id -> rule, in the order given
        self.next_id = 1
        self._host = NetSet()
        self._deny: list[tuple[int, Rule]] = []
        self._allow: list[tuple[int, Rule]] = []
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> int:
        rule_id = self.next_id
        self.next_id += 1
        self.rules[rule_id] = rule
        self._split()
        return rule_id

    def remove(self, rule_id: int) -> Rule | None:
        rule = self.rules.pop(rule_id, None)
        self._split()
        return rule

    def _split(self) -> None:
        self._deny = [(i, r) for i, r in self.rules.items() if r.action is Action.DENY]
        self._allow = [(i, r) for i, r in self.rules.items() if r.action is Action.ALLOW]

    def listed(self) -> list[tuple[int, Rule]]:
        """Every rule with its id, in the order given."""
        return list(self.rules.items())

    def posture(self) -> dict[str, bool]:
        """What passes when no rule matches."""
        return {"routing": self.routing, "host": self.host,
                "host_loopback": self.host_loopback}

    def set_host_networks(self, networks: Iterable[IPNetwork]) -> None:
        """The host's own addresses (as /32 and /128) and its connected networks."""
        self._host = NetSet(networks)

    def decide(self, proto: int, addr: bytes, port: int, *, gateway: bool) -> Verdict:
        """May a new flow of *proto* go to *addr*:*port* (as the guest named it)?"""
        for rule_id, rule in self._deny:
            if rule.matches(proto, addr, port):
                return Verdict(Outcome.BLOCK, f"--deny {rule.text}", rule_id)
        static = STATIC_DENY.prefix_of(addr)
        for rule_id, rule in self._allow:
            if rule.matches(proto, addr, port) and rule.network.prefixlen >= (static or 0):
                return Verdict(Outcome.PASS, f"--allow {rule.text}", rule_id)
        if gateway:
            if self.host_loopback:
                return Verdict(Outcome.PASS, "host loopback")
            return Verdict(Outcome.UNREACHABLE, "host loopback is off")
        if static is not None:
            return Verdict(Outcome.BLOCK, "static deny list")
        if self._host.prefix_of(addr) is not None:
            return Verdict(Outcome.PASS if self.host else Outcome.BLOCK,
                           "host address" if self.host else "host address (--enable-host)")
        return Verdict(Outcome.PASS if self.routing else Outcome.BLOCK,
                       "routing" if self.routing else "routing is off (--enable-routing)")
