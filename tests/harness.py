"""A guest made of scapy frames: frames in, frames and effects out, a clock the test moves."""

from __future__ import annotations

import dataclasses
import ipaddress

from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.config import Config
from slirpy.effects import AdoptStream, Effect, RefuseStream, ToGuest
from slirpy.events import (Event, ForwardAccepted, ForwardDatagram, GuestFrame, HostDatagram,
                           HostError, HostFailed, TimerDue)
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Forward
from slirpy.stack import Stack

GUEST_MAC = "02:00:00:00:00:64"
GUEST_IP = "10.0.2.100"
OUR_MAC = "52:55:0a:00:02:02"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


@dataclasses.dataclass
class GuestHarness:
    config: Config = dataclasses.field(default_factory=Config)
    now: float = 1000.0

    def __post_init__(self) -> None:
        self.stack = Stack(self.config)
        self.effects: list[Effect] = []

    def send(self, frame: Ether | bytes) -> list[Ether]:
        """Send a frame from the guest; return the frames that came back to it."""
        return self.feed(GuestFrame(bytes(frame)))

    def host_datagram(self, flow: FlowKey, data: bytes) -> list[Ether]:
        return self.feed(HostDatagram(flow, data))

    def host_error(self, flow: FlowKey, error: HostError) -> list[Ether]:
        return self.feed(HostFailed(flow, error))

    def feed(self, event: Event) -> list[Ether]:
        """Feed *event* now; return the frames that came back to the guest."""
        return self._split(self.stack.feed(event, self.now))

    def advance(self, seconds: float) -> list[Ether]:
        self.now += seconds
        deadline = self.stack.next_deadline()
        if deadline is None or deadline > self.now:
            self.effects = []
            return []
        return self._split(self.stack.feed(TimerDue(), self.now))

    def _split(self, effects: list[Effect]) -> list[Ether]:
        """Frames to the guest as scapy packets; the other effects stay in self.effects."""
        self.effects = [e for e in effects if not isinstance(e, ToGuest)]
        return [Ether(e.frame) for e in effects if isinstance(e, ToGuest)]

    def of_type(self, kind: type) -> list[Effect]:
        return [e for e in self.effects if isinstance(e, kind)]


# --- forwards, as the composition root registers and the runtime announces them ---

ACCEPTED_TOKEN = 99  # the fd of an accepted client, as the runtime names it


def forward_id_of(stack: Stack, fwd: Forward) -> int:
    """The id *fwd* is registered under with the stack's control (registered if new)."""
    control = stack.control
    for forward_id, known in control.local.items():
        if known == fwd:
            return forward_id
    for forward_id, key in control.remote_ids.items():
        if control.remote.get(key) == fwd:
            return forward_id
    forward_id = max([0, *control.local, *control.remote_ids]) + 1
    control.add(forward_id, fwd)
    return forward_id


def add_remote(stack: Stack, fwd: Forward) -> int:
    return forward_id_of(stack, fwd)


def remove_remote(stack: Stack, fwd: Forward) -> None:
    stack.control.remove(forward_id_of(stack, fwd))


def forward_accept(stack: Stack, fwd: Forward, client: tuple[bytes, int], space: int,
                   now: float, guest_port: int = 0) -> tuple[FlowKey | None, list[Effect]]:
    """A client of local forward *fwd*: the key the stack adopts it under (None: it was
    refused), and the other effects."""
    event = ForwardAccepted(ACCEPTED_TOKEN, forward_id_of(stack, fwd), client, space,
                            guest_port)
    effects = stack.feed(event, now)
    adopted = [e.flow for e in effects if isinstance(e, AdoptStream)]
    refused = [e for e in effects if isinstance(e, RefuseStream)]
    assert len(adopted) + len(refused) == 1, effects  # one answer, always
    assert all(e.token == ACCEPTED_TOKEN for e in [*refused])
    rest = [e for e in effects if not isinstance(e, AdoptStream | RefuseStream)]
    return (adopted[0] if adopted else None), rest


def forward_datagram(stack: Stack, forward_id: int, fwd: Forward, peer: tuple[bytes, int],
                     data: bytes, now: float) -> list[Effect]:
    """A datagram local UDP forward *fwd* (registered as *forward_id*) received."""
    if stack.control.local_forward(forward_id) is None:
        stack.control.add(forward_id, fwd)
    return stack.feed(ForwardDatagram(forward_id, peer, data), now)
