"""The single event path: the runtime's queue feeds the core one event at a time.

A fake core records what it is fed and fails if it is entered while it runs; the
runtime's parts that would answer from the kernel are replaced by ones that post the
same events at once, as the real ones do from inside `apply`. No socket carries data.
"""

from __future__ import annotations

import os
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
        self.fed: list[Event] = []
        self.inside = False

    def feed(self, event: Event, now: float) -> list[Effect]:
        assert not self.inside, f"re-entered with {event} while handling {self.fed[-1]}"
        self.inside = True
        try:
            self.fed.append(event)
            return list(self.script.get(type(event), []))
        finally:
            self.inside = False

    def next_deadline(self) -> float | None:
        return None


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    yield dev
    dev.close()


def driver_for(core: FakeCore, device: FakeDevice) -> tuple[Driver, list[tuple[FlowKey, int]]]:
    """A driver around *core*, and the list of the reads it does."""
    driver = Driver(Config(), device, core)
    # The kernel's answers, posted from inside apply as the real runtime parts do.
    driver.streams.send = lambda flow, data: driver.post(  # type: ignore[method-assign]
        Sent(flow, len(data), len(data), 4096))
    reads: list[tuple[FlowKey, int]] = []

    def read(flow: FlowKey, limit: int) -> Event | None:
        reads.append((flow, limit))
        return HostData(flow, memoryview(b"x" * min(limit, 3)))

    driver.streams.read = read  # type: ignore[method-assign]
    return driver, reads


def test_results_of_effects_are_fed_after_the_whole_list_never_inside(
        device: FakeDevice) -> None:
    frame = ToGuest(b"\x00" * 60)
    core = FakeCore({GuestFrame: [Send(FLOW, b"abc"), frame, Send(OTHER, b"de")]})
    driver, _ = driver_for(core, device)
    driver.post(GuestFrame(b"guest"))
    assert [type(e) for e in core.fed] == [GuestFrame, Sent, Sent]
    assert [(e.flow, e.nbytes) for e in core.fed[1:]] == [(FLOW, 3), (OTHER, 2)]  # type: ignore[union-attr]
    assert device.written == [frame]  # written while applying, before the Sents were fed
    driver.close()


def test_a_peek_is_read_in_its_turn_with_the_latest_limit_once(device: FakeDevice) -> None:
    core = FakeCore({GuestFrame: [Peek(FLOW, 10), Peek(OTHER, 5), Peek(FLOW, 2)]})
    driver, reads = driver_for(core, device)
    driver.post(GuestFrame(b"guest"))
    assert reads == [(FLOW, 2), (OTHER, 5)]
    fed = [(type(e).__name__, getattr(e, "flow", None)) for e in core.fed]
    assert fed == [("GuestFrame", None), ("HostData", FLOW), ("HostData", OTHER)]
    driver.close()


def test_each_peeked_view_is_fed_before_the_next_read(device: FakeDevice) -> None:
    """The peek buffer is shared: a read may not happen before the last one was fed."""
    core = FakeCore({GuestFrame: [Peek(FLOW, 3), Peek(OTHER, 3)]})
    driver, _ = driver_for(core, device)
    order: list[str] = []
    original_read = driver.streams.read

    def read(flow: FlowKey, limit: int) -> Event | None:
        order.append(f"read {flow.guest_port}")
        return original_read(flow, limit)

    original_feed = core.feed

    def feed(event: Event, now: float) -> list[Effect]:
        order.append(f"feed {type(event).__name__}")
        return original_feed(event, now)

    driver.streams.read = read  # type: ignore[method-assign]
    core.feed = feed  # type: ignore[method-assign]
    driver.post(GuestFrame(b"guest"))
    assert order == ["feed GuestFrame", "read 40000", "feed HostData", "read 40001",
                     "feed HostData"]
    driver.close()
