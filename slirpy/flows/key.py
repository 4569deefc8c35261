"""The key every host socket is known by, from the guest's point of view."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple


class FlowKey(NamedTuple):
    """One guest conversation: protocol, the guest's end, the far end as the guest named it.

    Addresses are packed bytes (4 or 16). For ICMP echo, guest_port is the echo id and
    remote_port is 0. Services of slirpy's own that talk to the host (the DNS forwarder)
    use their own address as guest_addr, so their keys never collide with the guest's.
    """

    proto: int
    guest_addr: bytes
    guest_port: int
    remote_addr: bytes
    remote_port: int

    def __str__(self) -> str:
        names = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}
        guest = ipaddress.ip_address(self.guest_addr)
        remote = ipaddress.ip_address(self.remote_addr)
        return (f"{names.get(self.proto, self.proto)} {guest}:{self.guest_port}"
                f" -> {remote}:{self.remote_port}")


@dataclass(slots=True)
class Traffic:
    """What one flow carried: payload bytes each way since it was *created*."""

    created: float
    from_guest: int = 0
    to_guest: int = 0


class FlowRecord(NamedTuple):
    """One live flow as the control socket lists it."""

    proto: str  # "tcp", "udp"
    key: FlowKey
    traffic: Traffic
    state: str | None = None  # TCP's
    forward_id: int | None = None  # a local forward's flow
