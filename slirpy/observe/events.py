"""The event stream: one JSON object per line, to --events and to API subscribers.

Every line is `{"event": NAME, "time": RFC 3339 UTC with microseconds, "schema": 1,
...}` (the fields of each event: events.schema.json beside this module, and the man
page). The core makes flow reports only while someone listens (`on_change` tells the
composition root, which turns the core's reports on and off); the rest (ready, exit,
forwards, rules) the composition root emits itself.

Writing never blocks the loop. A regular file is written directly (a write to it does
not wait for a reader). A pipe, a terminal or a socket may stall: each sink writes
without blocking (a pipe or terminal through a file description of its own, opened
again through /proc with O_NONBLOCK, so the flags of the description the fd shares
with others, stderr's above all, are left alone; a socket with MSG_DONTWAIT) and keeps
what the reader has not taken in a bounded buffer (SINK_BUFFER_BYTES). Past it, whole
lines are dropped and counted; once the buffer drains, a `dropped` line says how many.
A line is never cut: what a short write left of one is kept even beyond the bound.
A reader that goes away (EPIPE, a subscriber hanging up) is dropped with one log line;
slirpy goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import select
import socket
import stat
import time
from collections.abc import Callable
from typing import Final

from slirpy.errors import SetupError
from slirpy.runtime.loop import EventLoop

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
SINK_BUFFER_BYTES: Final = 256 * 1024
MAX_SUBSCRIBERS: Final = 16
SUBSCRIBED: Final = b'{"return":{"schema":1}}\n'
SCHEMA_FILE: Final = pathlib.Path(__file__).with_name("events.schema.json")  # JSON Schema
_HANGUP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR

Fields = dict[str, object]


# Two lines a connection (flow-new, flow-done) are on the connection's own path: one
# encoder made once (json.dumps with separators builds one per call), and the time
# formatted from time.gmtime (half the cost of datetime's strftime): ~7 against ~16 µs.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def timestamp(wall: float) -> str:
    """*wall* (seconds since the epoch) as RFC 3339 UTC with microseconds."""
    seconds, micros = divmod(round(wall * 1_000_000), 1_000_000)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{micros:06d}Z")


def event_line(event: str, fields: Fields, wall: float) -> bytes:
    """One event as its line: the envelope first, then *fields*."""
    body: Fields = {"event": event, "time": timestamp(wall), "schema": SCHEMA_VERSION}
    body.update(fields)
    return _ENCODER.encode(body).encode() + b"\n"


class _Sink:
    """One reader of the stream: an fd written without blocking, a bounded buffer."""

    def __init__(self, hub: EventHub, fd: int, name: str, *, sock: socket.socket | None = None,
                 pollable: bool = True, limit: int = SINK_BUFFER_BYTES) -> None:
        self.hub = hub
        self.fd = fd
        self.name = name
        self.sock = sock  # a subscriber's connection (written with MSG_DONTWAIT)
        self.pollable = pollable  # not a regular file: epoll can say when it drains
        self.limit = limit
        self.buffer = bytearray()
        self.dropped = 0  # lines lost since the last `dropped` line
        self.dropped_total = 0
        self.watching = False
        self.closed = False
        self.subscriber = False  # an API subscriber's (counted apart)
        if sock is not None:
            # A subscriber is told apart from its hang-up only: nothing it sends is read.
            hub.loop.add(fd, self._on_ready, select.EPOLLRDHUP)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.buffer:
            self._flush()
        if self.buffer:
            if len(self.buffer) + len(data) > self.limit:
                self.dropped += 1
                self.dropped_total += 1
                return
            self.buffer += data
            return
        if self.dropped:  # drained since the last drop: say so first
            data = self._dropped_line() + data
        sent = self._send(memoryview(data))
        if sent is not None and sent < len(data):
            self.buffer += data[sent:]
            self._watch(True)

    def _dropped_line(self) -> bytes:
        count, self.dropped = self.dropped, 0
        return event_line("dropped", {"count": count}, self.hub.wall())

    def _send(self, data: memoryview) -> int | None:
        """Bytes taken; None if the reader is gone (the sink is closed then)."""
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                # A full disk: this line is lost, the next may fit (space may come back).
                self.dropped += 1
                self.dropped_total += 1
                self.hub.note_failure(self, exc)
                return len(data)
            self.hub.note_failure(self, exc)
            self.close()
            return None

    def _flush(self) -> None:
        while self.buffer:
            sent = self._send(memoryview(self.buffer))
            if not sent:
                return
            del self.buffer[:sent]
        self._watch(False)
        if self.dropped:
            line = self._dropped_line()
            sent = self._send(memoryview(line))
            if sent is not None and sent < len(line):
                self.buffer += line[sent:]
                self._watch(True)

    def _watch(self, on: bool) -> None:
        if on == self.watching or not self.pollable or self.closed:
            return
        self.watching = on
        events = select.EPOLLOUT if on else 0
        if self.sock is not None:
            self.hub.loop.epoll.modify(self.fd, events | select.EPOLLRDHUP)
        elif on:
            self.hub.loop.add(self.fd, self._on_ready, events)
        else:
            self.hub.loop.remove(self.fd)

    def _on_ready(self, mask: int) -> None:
        if self.sock is not None and mask & _HANGUP:
            log.debug("events: %s hung up", self.name)
            self.close()
            return
        self._flush()  # a reader gone makes the write fail, and closes the sink

    def flush_now(self) -> None:
        """At exit: one more try at what is buffered, without waiting."""
        if not self.closed:
            self._flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock is not None or self.watching:
            self.hub.loop.remove(self.fd)
        self.watching = False
        if self.sock is not None:
            self.sock.close()
        elif self.fd > 2:
            os.close(self.fd)
        self.hub.forget(self)


class Subscription:
    """What the API's `subscribe` answers: the server hands the connection over with
    `attach` once the request is read; from then on the hub owns it."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def attach(self, sock: socket.socket) -> None:
        self.hub.attach(sock)


class EventHub:
    def __init__(self, loop: EventLoop, wall: Callable[[], float] = time.time,
                 buffer_bytes: int = SINK_BUFFER_BYTES) -> None:
        self.loop = loop
        self.wall = wall
        self.buffer_bytes = buffer_bytes  # each sink's bound
        self.sinks: list[_Sink] = []
        self.subscribers = 0
        self.lines = 0  # lines emitted (to at least one sink)
        # Told whether anyone listens now: the core makes flow reports only then.
        self.on_change: Callable[[bool], None] = lambda on: None
        # What a subscriber joining late is told first: state an event said earlier and
        # does not say again until it changes (the DNS upstream in use).
        self.current: Callable[[], list[tuple[str, Fields]]] = lambda: []
        self._failed: set[tuple[str, int]] = set()  # (sink, errno) said once in the log

    @property
    def active(self) -> bool:
        return bool(self.sinks)

    # --- sinks -----------------------------------------------------------------------------

    def open(self, dest: str) -> None:
        """--events DEST: a path, "-" (stderr) or "fd:N". A path is opened now (appended
        to, created 0600); what cannot be opened is a SetupError of one line."""
        if dest == "-":
            self._add(self._reopen(2, "stderr"))
        elif dest.startswith("fd:"):
            fd = int(dest[3:])
            try:
                os.fstat(fd)
            except OSError as exc:
                raise SetupError(f"--events {dest}: {exc.strerror}") from None
            self._add(self._reopen(fd, dest))
        else:
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                             | os.O_NOCTTY | os.O_NONBLOCK, 0o600)
            except OSError as exc:
                why = "no reader on the FIFO" if exc.errno == errno.ENXIO else exc.strerror
                raise SetupError(f"--events {dest}: {why}") from None
            self._add(_Sink(self, fd, dest, pollable=not stat.S_ISREG(os.fstat(fd).st_mode),
                            limit=self.buffer_bytes))

    def _reopen(self, fd: int, name: str) -> _Sink:
        """A sink on an fd someone gave us, written without blocking and without
        changing the flags the fd's description has for others."""
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return _Sink(self, os.dup(fd), name, pollable=False, limit=self.buffer_bytes)
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            return _Sink(self, sock.fileno(), name, sock=sock, limit=self.buffer_bytes)
        try:  # a pipe or a terminal: a description of our own, non-blocking
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                          | os.O_NOCTTY)
        except OSError:
            own = os.dup(fd)
            os.set_blocking(own, False)  # shared with the fd's other users: the fallback
        return _Sink(self, own, name, limit=self.buffer_bytes)

    def _add(self, sink: _Sink) -> None:
        self.sinks.append(sink)
        if len(self.sinks) == 1:
            self.on_change(True)

    def subscribe(self) -> Subscription | None:
        """A new subscriber may come (None: MAX_SUBSCRIBERS listen already)."""
        if self.subscribers >= MAX_SUBSCRIBERS:
            return None
        return Subscription(self)

    def attach(self, sock: socket.socket) -> None:
        """Stream to *sock* (an API connection whose `subscribe` was just read)."""
        self.subscribers += 1
        sock.setblocking(False)
        sink = _Sink(self, sock.fileno(), "an API subscriber", sock=sock,
                     limit=self.buffer_bytes)
        sink.subscriber = True
        self._add(sink)
        sink.write(SUBSCRIBED)
        for event, fields in self.current():
            sink.write(event_line(event, fields, self.wall()))

    def forget(self, sink: _Sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
            if sink.subscriber:
                self.subscribers -= 1
            if not self.sinks:
                self.on_change(False)

    def note_failure(self, sink: _Sink, exc: OSError) -> None:
        if sink.subscriber and exc.errno in (errno.EPIPE, errno.ECONNRESET):
            log.debug("events: %s went away", sink.name)
            return
        if (sink.name, exc.errno or 0) not in self._failed:
            self._failed.add((sink.name, exc.errno or 0))
            log.warning("events: cannot write to %s: %s%s", sink.name, exc.strerror,
                        "; lines are dropped until there is room" if exc.errno == errno.ENOSPC
                        else "; no more events there")

    # --- events ----------------------------------------------------------------------------

    def emit(self, event: str, fields: Fields) -> None:
        """One event to every sink (nothing if none listens)."""
        if not self.sinks:
            return
        line = event_line(event, fields, self.wall())
        self.lines += 1
        for sink in list(self.sinks):
            sink.write(line)

    def dropped(self) -> int:
        """Lines lost so far to sinks that could not keep up (those still open)."""
        return sum(sink.dropped_total for sink in self.sinks)

    def close(self) -> None:
        """At exit: flush what can be without waiting, then close every sink."""
        for sink in list(self.sinks):
            sink.flush_now()
            sink.close()
