"""The key every host socket is known by, from the guest's point of view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from slirpy.addresses import address_text
from slirpy.wire.ipv4 import IpProto

# How a flow's protocol reads in logs: IpProto's names, ICMPv6's shortened to "icmp6".
_PROTO_NAMES: Final[dict[int, str]] = {
    proto: "icmp6" if proto is IpProto.ICMPV6 else proto.name.lower()
    for proto in IpProto}
ECHO_REMOTE_PORT: Final = 0  # an ICMP echo flow's remote_port: echo has none


class FlowKey(NamedTuple):
    """One guest conversation: protocol, the guest's end, the far end as the guest named it.

    Addresses are packed bytes (4 or 16). For ICMP echo, guest_port is the echo id and
    remote_port is ECHO_REMOTE_PORT (0). Services of slirpy's own that talk to the host
    (the DNS forwarder) use their own address as guest_addr, so their keys never collide
    with the guest's.
    """

    proto: int
    guest_addr: bytes
    guest_port: int
    remote_addr: bytes
    remote_port: int

    def __str__(self) -> str:
        return (f"{_PROTO_NAMES.get(self.proto, self.proto)} "
                f"{address_text(self.guest_addr)}:{self.guest_port}"
                f" -> {address_text(self.remote_addr)}:{self.remote_port}")


@dataclass(slots=True)
class Traffic:
    """What one flow carried: payload bytes and packets each way since it was *created*."""

    created: float
    from_guest: int = 0
    to_guest: int = 0
    packets_from_guest: int = 0
    packets_to_guest: int = 0

    def counts(self) -> tuple[int, int, int, int]:
        """(bytes from the guest, bytes to it, packets from, packets to): for reports."""
        return self.from_guest, self.to_guest, self.packets_from_guest, self.packets_to_guest


class FlowRecord(NamedTuple):
    """One live flow as the control socket lists it."""

    proto: str  # "tcp", "udp"
    key: FlowKey
    traffic: Traffic
    state: str | None = None  # TCP's
    forward_id: int | None = None  # a local forward's flow
