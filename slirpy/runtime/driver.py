"""The loop that feeds the core, one event at a time, and carries its effects out.

Owns the tap, the host sockets, the timers, the signals and the watch on the host's
resolv.conf and addresses. The core decides; this module only carries its decisions
out, in one exhaustive `match`, and turns what happens into events.

The single event path: everything that happens (a frame on the tap, readiness of a
host socket, the result of an effect just applied, the clock) becomes an event on one
queue, and the queue is drained, event by event, until empty: feed the core, apply
the effects it returned. Applying an effect never calls the core; what it produces
(bytes sent, a connect that failed at once, data peeked) is queued behind it. A Peek is
queued as a read still to do, and done only when its turn comes, so the one peek
buffer is never overwritten before the core has seen what it holds. No runtime object
holds the core; only this loop feeds it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, assert_never

from slirpy.config import Config
from slirpy.effects import (AdoptStream, Close, Connect, Consume, Effect, OpenPing, OpenUdp, Peek,
                            RefuseStream, Report, Rewind, Send, SendDatagram, SendTo,
                            ShutdownWrite, ToGuest, WatchWritable)
from slirpy.events import DnsUpstreams, Event, GuestFrame, TimerDue
from slirpy.flows.key import FlowKey
from slirpy.runtime.forwards import ForwardSockets
from slirpy.runtime.hostaddrs import HostAddresses
from slirpy.runtime.loop import EventLoop, ReadBudget
from slirpy.runtime.sockets import HostSockets
from slirpy.runtime.streams import HostStreams
from slirpy.runtime.tap import FrameDevice
from slirpy.services.dns import parse_resolv_conf
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

TAP_BATCH: Final = 64  # frames read per wake-up at most, so other fds get their turn
RESOLV_CONF_CHECK_S: Final = 2.0
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GLIBC_DEFAULT_NAMESERVER: Final = (socket.inet_aton("127.0.0.1"), 53)  # none listed
_UNREADABLE: Final = (-1, -1, -1)  # the resolv.conf's stamp while it cannot be read


class Core(Protocol):
    """The sans-IO core as the loop sees it: one door in, one deadline."""

    def feed(self, event: Event, now: float) -> list[Effect]: ...

    def next_deadline(self) -> float | None: ...


class FrameCapture(Protocol):
    """A tee of the guest link (slirpy.observe.pcap): sees every frame, both ways, before
    the core handles it or the tap sends it, and keeps no reference to it."""

    def from_guest(self, frame: memoryview) -> None: ...

    def to_guest(self, frame: ToGuest) -> None: ...


class ReportSink(Protocol):
    """Where the core's reports go: the event hub (slirpy.observe.events), when on."""

    def emit(self, event: str, fields: dict[str, object]) -> None: ...


class RuntimeTimed(Protocol):
    """A runtime part with deadlines of its own (PROXY headers owed, API clients)."""

    def next_deadline(self) -> float | None: ...

    def expire(self, now: float) -> None: ...


@dataclass(slots=True)
class _ReadDue:
    """A Peek still to do, in its turn on the queue (the limit is the latest asked)."""

    flow: FlowKey


class Driver:
    def __init__(self, config: Config, device: FrameDevice, core: Core,
                 loop: EventLoop | None = None) -> None:
        self.config = config
        self.device = device
        self.core = core
        self.loop = loop or EventLoop()
        self.queue: deque[Event | _ReadDue] = deque()
        self.draining = False
        self.read_limits: dict[FlowKey, int] = {}  # flows with a read on the queue
        self.sockets = HostSockets(config, self.loop, self.post)
        self.streams = HostStreams(config, self.loop, self.post)
        self.forward_sockets = ForwardSockets(self.loop, self.streams, self.post)
        self.runtime_timed: list[RuntimeTimed] = [self.forward_sockets]
        # The host's addresses matter only when routing and host reach differ.
        self.host_addresses = HostAddresses(self.loop, self.post) \
            if config.routing != config.host else None
        self.frames_in = 0
        self.bytes_in = 0  # frame lengths, as the tap gives them (no virtio-net header)
        self.tap_reads = ReadBudget(self.loop, TAP_BATCH)
        self.frames_out = 0
        self.bytes_out = 0
        self.capture: FrameCapture | None = None  # --pcap, pcap_start: only while one runs
        self.started = self.loop.now()
        self.stopping = False
        self.stop_reason = ""  # why the loop stopped: the exit event says it
        self.reports: ReportSink | None = None  # the event hub, while events are on
        self.on_dump: Callable[[], None] = lambda: None
        self._resolv_stamp: tuple[int, int, int] | None = None
        self._resolv_check_at = 0.0
        self.loop.add(device.fileno(), self._on_tap)
        # Signals wake the loop through this pair (signal.set_wakeup_fd).
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        for end in (self._wakeup_r, self._wakeup_w):
            end.setblocking(False)
        self.loop.add(self._wakeup_r.fileno(), self._on_signal)
        self._stop_signals: frozenset[int] = frozenset()

    # --- the event path ------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Queue *event*; drain the queue unless this is called while it drains."""
        self.queue.append(event)
        if not self.draining:
            self._drain()

    def _drain(self) -> None:
        self.draining = True
        try:
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, _ReadDue):
                    limit = self.read_limits.pop(item.flow)
                    event = self.streams.read(item.flow, limit)
                    if event is None:
                        continue
                else:
                    event = item
                self.apply(self.core.feed(event, self.loop.now()))
        finally:
            self.draining = False

    def _on_tap(self, mask: int) -> None:
        if self.host_addresses is not None:
            # Address changes first: one made before a flow's first frame counts for it.
            self.host_addresses.poll()
        frames = self.device.read_frames(self.tap_reads.take())
        self.tap_reads.used(len(frames))
        for frame in frames:
            self.frames_in += 1
            self.bytes_in += len(frame.data)
            if self.capture is not None:  # before the core: its replies come after
                self.capture.from_guest(frame.data)
            self.post(GuestFrame(frame.data, frame.checksum_ok))

    # --- effects from the core --------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case ToGuest():
                    self.frames_out += 1
                    self.bytes_out += len(effect.headers) + len(effect.payload)
                    if self.capture is not None:
                        self.capture.to_guest(effect)
                    self.device.write(effect)
                case OpenUdp(flow, host_addr, host_port):
                    self.sockets.open_udp(flow, host_addr, host_port)
                case OpenPing(flow, host_addr):
                    self.sockets.open_ping(flow, host_addr)
                case SendDatagram(flow, data):
                    self.sockets.send(flow, data)
                case Send(flow, data):
                    self.streams.send(flow, data)
                case Consume(flow, nbytes):
                    self.streams.consume(flow, nbytes)
                case Peek(flow, limit):
                    if flow not in self.read_limits:
                        self.queue.append(_ReadDue(flow))
                    self.read_limits[flow] = limit
                case Rewind(flow):
                    self.streams.rewind(flow)
                case WatchWritable(flow):
                    self.streams.watch_writable(flow)
                case ShutdownWrite(flow):
                    self.streams.shutdown_write(flow)
                case Connect(flow, host_addr, host_port):
                    self.streams.connect(flow, host_addr, host_port)
                case Close(flow, reset) if flow.proto == IpProto.TCP:
                    self.streams.close(flow, reset)
                case Close(flow):
                    self.sockets.close(flow)
                case SendTo(forward_id, addr, port, data, prefix):
                    self.forward_sockets.send_to(forward_id, addr, port, data, prefix)
                case AdoptStream(token, flow):
                    self.streams.adopt(flow, self.forward_sockets.take_accepted(token))
                case RefuseStream(token):
                    self.forward_sockets.refuse(token)
                case Report(event, fields):
                    if self.reports is not None:
                        self.reports.emit(event, fields)
                case _:
                    assert_never(effect)

    # --- the loop ------------------------------------------------------------------------------

    def watch_stop_fd(self, fd: int) -> None:
        """Stop when *fd* becomes readable or hangs up; at once if it is not open."""
        try:
            self.loop.add(fd, self._on_stop_fd)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.EPERM):
                raise
            log.debug("stop fd %d is not open: stopping", fd)
            self._stop(f"stop fd {fd} is not open")

    def _on_stop_fd(self, mask: int) -> None:
        log.debug("stop fd event")
        self._stop("stop fd")

    def _stop(self, reason: str) -> None:
        if not self.stopping:
            self.stop_reason = reason
        self.stopping = True

    def _on_signal(self, mask: int) -> None:
        try:
            signals = self._wakeup_r.recv(64)
        except BlockingIOError:
            return
        if signal.SIGUSR1 in signals:
            self.on_dump()
        stops = self._stop_signals.intersection(signals)
        if stops:
            log.debug("stop signal")
            self._stop(f"signal {signal.Signals(min(stops)).name}")

    def _check_resolv_conf(self, now: float) -> None:
        self._resolv_check_at = now + RESOLV_CONF_CHECK_S
        path = self.config.resolv_conf
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._resolv_stamp:
                return
            with open(path, encoding="utf-8", errors="replace") as file:
                servers = parse_resolv_conf(file.read())
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return  # no fd to read it with: keep the upstreams, try again next time
            if self._resolv_stamp == _UNREADABLE:
                return  # said already
            stamp = _UNREADABLE
            servers = []
            log.warning("cannot read %s: %s", path, exc)
        self._resolv_stamp = stamp
        self.post(DnsUpstreams(tuple(servers or [GLIBC_DEFAULT_NAMESERVER])))

    def run(self, stop_signals: Sequence[int] = STOP_SIGNALS) -> None:
        """Serve until a stop fd fires or one of *stop_signals* arrives."""
        self._stop_signals = frozenset(stop_signals)
        previous = {sig: signal.signal(sig, _ignore) for sig in (*stop_signals, signal.SIGUSR1)}
        old_wakeup = signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        try:
            while not self.stopping:
                now = self.loop.now()
                if self.config.dns and now >= self._resolv_check_at:
                    self._check_resolv_conf(now)
                deadline = self.core.next_deadline()
                if deadline is not None and deadline <= now:
                    self.post(TimerDue())
                    continue
                runtime_deadline = self._runtime_deadline()
                if runtime_deadline is not None and runtime_deadline <= now:
                    for part in self.runtime_timed:
                        part.expire(now)
                    continue
                self.loop.wait(min((d for d in (deadline, runtime_deadline,
                                                self._resolv_check_at if self.config.dns
                                                else None) if d is not None), default=None))
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _runtime_deadline(self) -> float | None:
        """The runtime's own deadlines: PROXY headers owed, API clients mid-request."""
        return min((d for d in (part.next_deadline() for part in self.runtime_timed)
                    if d is not None), default=None)

    def close(self) -> None:
        if self.host_addresses is not None:
            self.host_addresses.close()
        self.forward_sockets.close_all()
        self.streams.close_all()
        self.sockets.close_all()
        self.loop.remove(self._wakeup_r.fileno())
        self._wakeup_r.close()
        self._wakeup_w.close()
        self.loop.close()


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal reaches the wakeup fd (SIG_IGN would not)."""
