"""Log lines a guest or a local client can trigger, rate-limited per key.

Anything an untrusted party can repeat at line rate (a refused flow, a malformed API
request, a listener at the fd limit) must not become a log line per occurrence: the
log would grow without bound and cost more CPU than the traffic. Each call site names
a key (a short constant, never built from input: the keys are few); per key, the first
`burst` lines of an interval are written, the rest only counted, and the first line
written after that says how many were left out. A line that says the same every time
(a cap reached) wants a burst of one; lines that name a client or an error, a few.

No clock is read here: the caller passes *now* (the core has only its events' time),
so it stays sans-IO and tests drive it with floats. A count of suppressed lines shows
only with the next line of its key; a key that falls silent keeps its count unsaid.
"""

from __future__ import annotations

import logging
from typing import Final

LINES_PER_INTERVAL: Final = 5
INTERVAL_S: Final = 60.0
MAX_KEYS: Final = 256  # keys are call-site constants; this only bounds a mistake


class _Window:
    __slots__ = ("start", "written", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.written = 0
        self.suppressed = 0


class RateLimitedLog:
    """A logger's lines, at most *burst* per key per *interval_s*."""

    def __init__(self, logger: logging.Logger, *, burst: int = LINES_PER_INTERVAL,
                 interval_s: float = INTERVAL_S) -> None:
        self.logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self._windows: dict[str, _Window] = {}

    def warning(self, key: str, now: float, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, now, msg, *args)

    def info(self, key: str, now: float, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, now, msg, *args)

    def log(self, level: int, key: str, now: float, msg: str, *args: object) -> bool:
        """Write the line unless *key* used its share of this interval; whether written."""
        window = self._windows.get(key)
        suppressed = 0
        if window is None or now - window.start >= self.interval_s or now < window.start:
            if window is not None:
                suppressed = window.suppressed
            elif len(self._windows) >= MAX_KEYS:
                del self._windows[next(iter(self._windows))]
            window = self._windows[key] = _Window(now)
        if window.written >= self.burst:
            window.suppressed += 1
            return False
        window.written += 1
        if suppressed:
            self.logger.log(level, msg + " (%d more like this suppressed)", *args, suppressed)
        else:
            self.logger.log(level, msg, *args)
        return True

    def reset(self) -> None:
        """Forget every interval: the next lines of each key are written."""
        self._windows.clear()

    def suppressed(self, key: str) -> int:
        """Lines of *key* counted but not written in its current interval."""
        window = self._windows.get(key)
        return 0 if window is None else window.suppressed
