"""The single event path: the runtime's queue feeds the core one event at a time.

A fake core answers each event from a script, records what it is fed (copying any
peeked bytes at that moment), and fails if it is entered while it runs. The runtime is
the real one; the "host connections" are unix socketpairs adopted as a local forward's
client would be, so no packet goes anywhere and nothing of the runtime is patched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from slirpy.config import Config
from slirpy.effects import Effect, Peek, Send, ToGuest
from slirpy.events import Event, GuestFrame, HostData, Sent
from slirpy.flows.key import FlowKey
from slirpy.runtime.driver import Driver
from slirpy.runtime.tap import Frame
from slirpy.wire.ipv4 import IpProto

FLOW = FlowKey(IpProto.TCP, bytes([10, 0, 2, 100]), 40000, bytes([192, 0, 2, 1]), 80)
OTHER = FLOW._replace(guest_port=40001)


class FakeDevice:
    offload = False

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.written: list[ToGuest] = []
        self.errors: dict[str, int] = {}

    def fileno(self) -> int:
        return self.read_end

    def read_frames(self, limit: int) -> list[Frame]:
        return []

    def write(self, frame: ToGuest) -> None:
        self.written.append(frame)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class FakeCore:
    """Answers each event from a script; fails if fed while it is being fed."""

    def __init__(self, script: dict[type, list[Effect]]) -> None:
        self.script = script
        self.fed: list[tuple[str, FlowKey | None, object]] = []
        self.inside = False

    def feed(self, event: Event, now: float) -> list[Effect]:
        assert not self.inside, f"re-entered with {event} while handling {self.fed[-1]}"
        self.inside = True
        try:
            detail: object = None
            if isinstance(event, HostData):
                detail = bytes(event.data)  # what the view holds now, when it is fed
            elif isinstance(event, Sent):
                detail = (event.nbytes, event.wanted)
            self.fed.append((type(event).__name__, getattr(event, "flow", None), detail))
            return list(self.script.get(type(event), []))
        finally:
            self.inside = False

    def next_deadline(self) -> float | None:
        return None


@pytest.fixture
def world() -> Iterator[tuple[FakeDevice, dict[FlowKey, socket.socket]]]:
    """A frame device and, per flow, the far end of the flow's "host connection"."""
    device = FakeDevice()
    peers: dict[FlowKey, socket.socket] = {}
    yield device, peers
    for sock in peers.values():
        sock.close()
    device.close()


def driver_for(core: FakeCore, device: FakeDevice,
               peers: dict[FlowKey, socket.socket]) -> Driver:
    driver = Driver(Config(), device, core)
    for flow in (FLOW, OTHER):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        driver.streams.adopt(flow, ours)
        peers[flow] = theirs
    return driver


def test_results_of_effects_are_fed_after_the_whole_list_never_inside(
        world: tuple[FakeDevice, dict[FlowKey, socket.socket]]) -> None:
    device, peers = world
    frame = ToGuest(b"\x00" * 60)
    core = FakeCore({GuestFrame: [Send(FLOW, b"abc"), frame, Send(OTHER, b"de")]})
    driver = driver_for(core, device, peers)
    driver.post(GuestFrame(b"guest"))
    assert core.fed == [("GuestFrame", None, None), ("Sent", FLOW, (3, 3)),
                        ("Sent", OTHER, (2, 2))]
    assert device.written == [frame]  # written while the list was applied
    assert peers[FLOW].recv(16) == b"abc" and peers[OTHER].recv(16) == b"de"
    driver.close()


def test_a_peek_is_read_in_its_turn_once_with_the_latest_limit(
        world: tuple[FakeDevice, dict[FlowKey, socket.socket]]) -> None:
    device, peers = world
    core = FakeCore({GuestFrame: [Peek(FLOW, 10), Peek(OTHER, 5), Peek(FLOW, 2)]})
    driver = driver_for(core, device, peers)
    peers[FLOW].sendall(b"0123456789")
    peers[OTHER].sendall(b"abcdefgh")
    driver.post(GuestFrame(b"guest"))
    # One read per flow, the latest limit, and each view fed before the next read
    # reused the peek buffer: FLOW's two bytes are still its own when fed.
    assert core.fed == [("GuestFrame", None, None), ("HostData", FLOW, b"01"),
                        ("HostData", OTHER, b"abcde")]
    driver.close()


def test_host_data_that_filled_its_limit_says_more_may_follow(
        world: tuple[FakeDevice, dict[FlowKey, socket.socket]]) -> None:
    device, peers = world
    seen: list[bool] = []

    class Recording(FakeCore):
        def feed(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, HostData):
                seen.append(event.more)
            return super().feed(event, now)

    core = Recording({GuestFrame: [Peek(FLOW, 4), Peek(OTHER, 100)]})
    driver = driver_for(core, device, peers)
    peers[FLOW].sendall(b"0123456789")
    peers[OTHER].sendall(b"short")
    driver.post(GuestFrame(b"guest"))
    assert seen == [True, False]
    driver.close()
