"""Every unit test holds slirpy to a strict receiver's standard.

Each frame the core hands the guest (a ToGuest effect out of `Stack.feed`, whoever
drives it: the harnesses or a test directly) goes through `tests.strict.check_to_guest`:
slirpy's own parsers and an independent check of every length and checksum, partial
checksums of offloaded frames included. A frame a strict guest would drop fails the test
that produced it, whatever that test asserts about it.

Tests get a `StrictStack` wherever they import `slirpy.stack.Stack`: it wraps a real
stack and checks what `feed` returns. It wraps rather than patches, because in the
compiled build `Stack` is a native class whose methods cannot be replaced. (The
composition root, `slirpy.app`, keeps the real class: it imported it itself.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import slirpy.app  # noqa: F401  (binds the real Stack before the name is replaced below)
import slirpy.stack
from slirpy.effects import Effect, ToGuest
from slirpy.events import Event
from tests.strict import check_to_guest

CoreStack = slirpy.stack.Stack


class StrictStack:
    """A Stack whose every frame to the guest is checked on the way out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.core = CoreStack(*args, **kwargs)

    def feed(self, event: Event, now: float) -> list[Effect]:
        effects = self.core.feed(event, now)
        for effect in effects:
            if isinstance(effect, ToGuest):
                check_to_guest(effect)
        return effects

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


slirpy.stack.Stack = StrictStack  # type: ignore[misc, assignment]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR for the API socket registry; its slirpy/ directory."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime / "slirpy"
