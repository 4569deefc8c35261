"""The operator's side of the core: forwards and egress rules, changed while it runs.

The composition root calls these between events (from the control socket, or at start
for the configured forwards and rules); they answer with values and never with effects:
a forward or a rule takes effect for flows that start from then on. The forward ids are
the composition root's, shared with the runtime's listening sockets.
"""

from __future__ import annotations

import ipaddress
import logging

from slirpy.addresses import AddressPlan
from slirpy.forward.nat import InboundUdpFlows
from slirpy.forward.spec import Forward, ForwardError, Kind
from slirpy.policy.decide import Policy
from slirpy.policy.rules import Rule

log = logging.getLogger(__name__)

RemoteKey = tuple[str, bytes, int]  # transport, address in the guest's network, port


class Control:
    def __init__(self, addrs: AddressPlan, policy: Policy, inbound: InboundUdpFlows, *,
                 ipv6: bool) -> None:
        self.addrs = addrs
        self.policy = policy
        self.inbound = inbound
        self.ipv6 = ipv6
        self.local: dict[int, Forward] = {}
        self.remote: dict[RemoteKey, Forward] = {}
        self.remote_ids: dict[int, RemoteKey] = {}

    # --- forwards --------------------------------------------------------------------

    def check(self, fwd: Forward) -> None:
        """Raise ForwardError if *fwd* cannot be added (said once, for every origin)."""
        if not self.ipv6 and isinstance(fwd.guest_side, ipaddress.IPv6Address):
            raise ForwardError("an IPv6 guest address needs IPv6 on (-6, --enable-ipv6)")
        if fwd.kind is Kind.REMOTE and self._remote_key(fwd) in self.remote:
            raise ForwardError("that guest address and port is forwarded already")

    def add(self, forward_id: int, fwd: Forward) -> None:
        """Carry *fwd* from now on (checked first: see `check`)."""
        self.check(fwd)
        if fwd.kind is Kind.LOCAL:
            self.local[forward_id] = fwd
            return
        key = self._remote_key(fwd)
        self.remote[key] = fwd
        self.remote_ids[forward_id] = key
        self.addrs.set_remote_addresses(addr for _, addr, _ in self.remote)

    def remove(self, forward_id: int) -> None:
        """Forget a forward: a local one's UDP flows go with it (TCP ones run to their
        end); a remote one's address stops being answered."""
        if self.local.pop(forward_id, None) is not None:
            self.inbound.remove_forward(forward_id)
        key = self.remote_ids.pop(forward_id, None)
        if key is not None:
            del self.remote[key]
            self.addrs.set_remote_addresses(addr for _, addr, _ in self.remote)

    def local_forward(self, forward_id: int) -> Forward | None:
        return self.local.get(forward_id)

    def remote_forward(self, transport: str, addr: bytes, port: int) -> Forward | None:
        """The remote forward answering at *addr*:*port* inside the guest, if any."""
        return self.remote.get((transport, addr, port)) if self.remote else None

    @staticmethod
    def _remote_key(fwd: Forward) -> RemoteKey:
        return (fwd.transport, fwd.bind.packed, fwd.bind_port)

    # --- egress rules ----------------------------------------------------------------

    def add_rule(self, rule: Rule) -> int:
        rule_id = self.policy.add(rule)
        log.info("rule %d: --%s %s", rule_id, rule.action.value, rule.text)
        return rule_id

    def remove_rule(self, rule_id: int) -> Rule | None:
        rule = self.policy.remove(rule_id)
        if rule is not None:
            log.info("rule %d removed: --%s %s", rule_id, rule.action.value, rule.text)
        return rule

    def rules(self) -> list[tuple[int, Rule]]:
        return self.policy.listed()

    def posture(self) -> dict[str, bool]:
        """What passes when no rule matches."""
        return self.policy.posture()
