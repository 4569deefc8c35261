"""The operator's side of the core: forwards and egress rules, changed while it runs.

The composition root calls these between events (from the control socket, or at start
for the configured forwards and rules); they answer with values and never with effects:
a forward or a rule takes effect for flows that start from then on. The forward ids are
the composition root's, shared with the runtime's listening sockets.

`check_family` is the one "IPv6 is off" check of a forward, whatever its origin: the
command line and the control API call it to word the refusal their own way
(slirp4netns's texts), and `Control.check` calls it for every forward added.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from slirpy.addresses import AddressPlan
from slirpy.forward.nat import InboundUdpFlows
from slirpy.forward.spec import (Forward, ForwardError, IPAddress, LocalForward, RemoteForward,
                                 SrvForward)
from slirpy.policy.decide import Policy
from slirpy.policy.rules import Rule

RemoteKey = tuple[str, bytes, int]  # transport, address in the guest's network, port
IPV6_OFF: Final = "an IPv6 guest address needs IPv6 on (-6, --enable-ipv6)"


class Ipv6Off(ForwardError):
    """A forward whose address in the guest's network (*address*) is IPv6, and the guest
    has no IPv6."""

    def __init__(self, address: ipaddress.IPv6Address) -> None:
        super().__init__(IPV6_OFF)
        self.address = address


def check_family(guest_side: IPAddress, *, ipv6: bool) -> None:
    """Raise Ipv6Off if a forward at *guest_side* in the guest's network cannot be, with
    IPv6 on (*ipv6*) or off. The host side's family never matters: a host socket of
    either family serves a guest of either."""
    if not ipv6 and isinstance(guest_side, ipaddress.IPv6Address):
        raise Ipv6Off(guest_side)


class Control:
    def __init__(self, addrs: AddressPlan, policy: Policy, inbound: InboundUdpFlows, *,
                 ipv6: bool) -> None:
        self.addrs = addrs
        self.policy = policy
        self.inbound = inbound
        self.ipv6 = ipv6
        self.local: dict[int, LocalForward] = {}
        self.remote: dict[RemoteKey, RemoteForward | SrvForward] = {}
        self.remote_ids: dict[int, RemoteKey] = {}

    # --- forwards --------------------------------------------------------------------

    def check(self, fwd: Forward) -> None:
        """Raise ForwardError if *fwd* cannot be added (said once, for every origin)."""
        check_family(fwd.guest_side, ipv6=self.ipv6)
        match fwd:
            case RemoteForward() | SrvForward() if self._remote_key(fwd) in self.remote:
                raise ForwardError("that guest address and port is forwarded already")

    def add(self, forward_id: int, fwd: Forward) -> None:
        """Carry *fwd* from now on (checked first: see `check`)."""
        self.check(fwd)
        match fwd:
            case LocalForward():
                self.local[forward_id] = fwd
            case RemoteForward() | SrvForward():
                key = self._remote_key(fwd)
                self.remote[key] = fwd
                self.remote_ids[forward_id] = key
                self.addrs.set_remote_addresses(addr for _, addr, _ in self.remote)

    def remove(self, forward_id: int, now: float = 0.0) -> None:
        """Forget a forward: a local one's UDP flows go with it (TCP ones run to their
        end); a remote one's address stops being answered."""
        if self.local.pop(forward_id, None) is not None:
            self.inbound.remove_forward(forward_id, now)
        key = self.remote_ids.pop(forward_id, None)
        if key is not None:
            del self.remote[key]
            self.addrs.set_remote_addresses(addr for _, addr, _ in self.remote)

    def local_forward(self, forward_id: int) -> LocalForward | None:
        return self.local.get(forward_id)

    def remote_forward(self, transport: str, addr: bytes,
                       port: int) -> RemoteForward | SrvForward | None:
        """The remote forward answering at *addr*:*port* inside the guest, if any."""
        return self.remote.get((transport, addr, port)) if self.remote else None

    def remote_forward_id(self, fwd: RemoteForward | SrvForward) -> int | None:
        """The id remote forward *fwd* was added under (for a flow's report)."""
        key = self._remote_key(fwd)
        for forward_id, known in self.remote_ids.items():
            if known == key:
                return forward_id
        return None

    @staticmethod
    def _remote_key(fwd: RemoteForward | SrvForward) -> RemoteKey:
        return (fwd.transport, fwd.bind.packed, fwd.bind_port)

    # --- egress rules ----------------------------------------------------------------

    def add_rule(self, rule: Rule) -> int:
        return self.policy.add(rule)

    def remove_rule(self, rule_id: int) -> Rule | None:
        return self.policy.remove(rule_id)

    def rules(self) -> list[tuple[int, Rule]]:
        return self.policy.listed()

    def posture(self) -> dict[str, bool]:
        """What passes when no rule matches."""
        return self.policy.posture()
