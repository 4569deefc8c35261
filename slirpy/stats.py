"""What the core counts and can list: drops by reason, blocks by rule, live flows.

Read-only for everyone but the core's own parts, which count into it: a hostile or odd
frame as a drop (by its short, stable reason), a new flow the egress policy refused as
a block (by the rule or setting that refused it). The queries change nothing.
"""

from __future__ import annotations

from collections import Counter

from slirpy.addresses import address_text, endpoint_text
from slirpy.flows.key import FlowKey, FlowRecord
from slirpy.forward.nat import InboundUdpFlows
from slirpy.icmp import EchoFlows
from slirpy.reassembly import Reassembler
from slirpy.reports import Reporter
from slirpy.services.dns import DnsForwarder
from slirpy.tcp.flows import TcpFlows
from slirpy.udp import UdpFlows


class Stats:
    def __init__(self, tcp: TcpFlows, udp: UdpFlows, inbound: InboundUdpFlows,
                 echo: EchoFlows, reassembler: Reassembler, dns: DnsForwarder | None = None,
                 reports: Reporter | None = None) -> None:
        self.tcp = tcp
        self.udp = udp
        self.inbound = inbound
        self.echo = echo
        self.reassembler = reassembler
        self.dns = dns
        self.reports = reports or Reporter()
        self.drops: Counter[str] = Counter()
        self.blocked: Counter[str] = Counter()  # new flows refused, by what refused them

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def count_block(self, why: str) -> None:
        self.blocked[why] += 1

    def drop_counts(self) -> dict[str, int]:
        """Drops by reason, the stack's own and those of reassembly."""
        return dict(self.drops + self.reassembler.drops)

    def blocked_counts(self) -> dict[str, int]:
        """New flows the egress policy refused, by the rule or setting that did."""
        return dict(self.blocked)

    def flow_counts(self) -> dict[str, int]:
        return {"tcp": len(self.tcp), "udp": len(self.udp) + len(self.inbound),
                "icmp": len(self.echo)}

    def flow_totals(self) -> dict[str, dict[str, int]]:
        """Flows opened and closed since start, by protocol (ICMPv6 echo as "icmp")."""
        return {"flows_opened": dict(self.reports.opened),
                "flows_closed": dict(self.reports.closed)}

    def tcp_counts(self) -> dict[str, int]:
        """Retransmissions (timeouts and fast retransmits, SYN and SYN-ACK included),
        RSTs sent to the guest and RSTs from the guest that reset a connection."""
        counters = self.tcp.counters
        return {"retransmits": counters.retransmits, "resets_sent": counters.resets_sent,
                "resets_received": counters.resets_received}

    def dns_counts(self) -> dict[str, int]:
        """The guest's queries to the forwarder, those answered SERVFAIL (no upstream
        answered), and attempts that failed over to the next upstream."""
        dns = self.dns
        if dns is None:
            return {"queries": 0, "failures": 0, "failovers": 0}
        return {"queries": dns.queries, "failures": dns.failures, "failovers": dns.failovers}

    def records(self) -> list[FlowRecord]:
        return [*(conn.record() for conn in self.tcp.connections()), *self.udp.records(),
                *self.inbound.records(), *self.echo.records()]

    def flows(self, now: float) -> list[dict[str, object]]:
        """Every live flow: protocol, both ends, bytes each way, age (for the API)."""
        found: list[dict[str, object]] = []
        for record in self.records():
            key, traffic = record.key, record.traffic
            echo = record.proto.startswith("icmp")  # guest_port is the echo id; no ports
            entry: dict[str, object] = {
                "proto": record.proto,
                "guest": address_text(key.guest_addr) if echo
                else endpoint_text(key.guest_addr, key.guest_port),
                "remote": address_text(key.remote_addr) if echo
                else endpoint_text(key.remote_addr, key.remote_port),
                "bytes_from_guest": traffic.from_guest, "bytes_to_guest": traffic.to_guest,
                "age_s": round(now - traffic.created, 3)}
            if record.state is not None:
                entry["state"] = record.state
            if record.forward_id is not None:
                entry["forward"] = record.forward_id
            if echo:
                entry["echo_id"] = key.guest_port
            found.append(entry)
        return found

    def describe_tcp(self) -> list[tuple[FlowKey, str]]:
        """(flow key, one line of state) for every TCP connection: SIGUSR1's dump."""
        return [(conn.key, conn.describe()) for conn in self.tcp.connections()]
