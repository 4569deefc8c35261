"""A guest made of scapy frames: frames in, frames and effects out, a clock the test moves."""

from __future__ import annotations

import dataclasses
import ipaddress

from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from slirpy.config import Config
from slirpy.effects import Effect, HostError, ToGuest
from slirpy.flows.key import FlowKey
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
        return self._split(self.stack.on_frame(bytes(frame), self.now))

    def host_datagram(self, flow: FlowKey, data: bytes) -> list[Ether]:
        return self._split(self.stack.on_host_datagram(flow, data, self.now))

    def host_error(self, flow: FlowKey, error: HostError) -> list[Ether]:
        return self._split(self.stack.on_host_error(flow, error, self.now))

    def advance(self, seconds: float) -> list[Ether]:
        self.now += seconds
        deadline = self.stack.next_deadline()
        if deadline is None or deadline > self.now:
            self.effects = []
            return []
        return self._split(self.stack.on_timer(self.now))

    def _split(self, effects: list[Effect]) -> list[Ether]:
        """Frames to the guest as scapy packets; the other effects stay in self.effects."""
        self.effects = [e for e in effects if not isinstance(e, ToGuest)]
        return [Ether(e.frame) for e in effects if isinstance(e, ToGuest)]

    def of_type(self, kind: type) -> list[Effect]:
        return [e for e in self.effects if isinstance(e, kind)]
