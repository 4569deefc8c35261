"""Every unit test holds slirpy to a strict receiver's standard.

Each frame the core hands the guest (a ToGuest effect out of `Stack.feed`, whoever
drives it: the harnesses or a test directly) goes through `tests.strict.check_to_guest`:
slirpy's own parsers and an independent check of every length and checksum, partial
checksums of offloaded frames included. A frame a strict guest would drop fails the test
that produced it, whatever that test asserts about it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from slirpy.effects import Effect, ToGuest
from slirpy.events import Event
from slirpy.stack import Stack
from tests.strict import check_to_guest

_FEED = Stack.feed


def _strict_feed(self: Stack, event: Event, now: float) -> list[Effect]:
    effects = _FEED(self, event, now)
    for effect in effects:
        if isinstance(effect, ToGuest):
            check_to_guest(effect)
    return effects


@pytest.fixture(autouse=True)
def strict_frames_to_guest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Stack, "feed", _strict_feed)
    yield
