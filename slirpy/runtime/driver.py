"""The runtime of one slirpy process: the loop that feeds the stack and applies its effects.

Owns the tap, the host sockets, the timers, the signals and the watch on the host's
resolv.conf. The stack decides; this module only carries its decisions out, in one
exhaustive `match`, and feeds results back as events.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final, assert_never

from slirpy.config import Config
from slirpy.api.commands import Api
from slirpy.api.server import ApiServer
from slirpy.effects import (Close, Connect, Consume, Effect, HostError, KickRead, OpenPing,
                            OpenUdp, Rewind, Send, SendDatagram, SendTo, ShutdownWrite,
                            ToGuest, WatchWritable)
from slirpy.errors import SetupError
from slirpy.flows.key import FlowKey
from slirpy.forward.spec import Forward, ForwardError, Kind
from slirpy.policy.rules import Rule
from slirpy.runtime.forwards import ForwardSockets
from slirpy.runtime.hostaddrs import HostAddresses
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.sockets import HostSockets
from slirpy.runtime.streams import HostStreams
from slirpy.runtime.tap import FrameDevice, TapDevice
from slirpy.services.dns import parse_resolv_conf
from slirpy.stack import Stack
from slirpy.wire.ipv4 import IpProto

log = logging.getLogger(__name__)

TAP_BATCH: Final = 64
RESOLV_CONF_CHECK_S: Final = 2.0
# Tests only (no netem qdisc here): the share of frames the tap loses in each direction.
TEST_DROP_RATE_ENV: Final = "SLIRPY_TEST_DROP_RATE"
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Driver:
    def __init__(self, config: Config, device: FrameDevice, secret: bytes) -> None:
        self.config = config
        self.device = device
        self.loop = EventLoop()
        self.stack = Stack(config, secret=secret, offload=device.offload)
        self.sockets = HostSockets(config, self.loop, self._on_datagram, self._on_error)
        self.streams = HostStreams(config, self.loop, self.stack, self.apply)
        self.forward_sockets = ForwardSockets(self.loop, self.stack, self.streams, self.apply)
        self.forwards: dict[int, tuple[Forward, str]] = {}  # id -> (forward, origin)
        self.next_forward_id = 1
        self.api: ApiServer | None = None
        # The host's addresses matter only when routing and host reach differ.
        self.host_addresses = HostAddresses(self.loop, self.stack.policy) \
            if config.routing != config.host else None
        if self.host_addresses is not None:
            self.stack.policy.refresh_hosts = self.host_addresses.poll
        self.frames_in = 0
        self.frames_out = 0
        self.started = self.loop.now()
        self.stopping = False
        self._resolv_stamp: tuple[int, int, int] | None = None
        self._resolv_check_at = 0.0
        self.loop.add(device.fileno(), self._on_tap)
        # Signals wake the loop through this pair (signal.set_wakeup_fd).
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        for end in (self._wakeup_r, self._wakeup_w):
            end.setblocking(False)
        self.loop.add(self._wakeup_r.fileno(), self._on_signal)
        self._stop_signals: frozenset[int] = frozenset()

    # --- events to the stack -------------------------------------------------------------

    def _on_tap(self, mask: int) -> None:
        for frame in self.device.read_frames(TAP_BATCH):
            self.frames_in += 1
            self.apply(self.stack.on_frame(frame.data, self.loop.now(),
                                           checksum_ok=frame.checksum_ok))

    def _on_datagram(self, flow: FlowKey, data: bytes) -> None:
        self.apply(self.stack.on_host_datagram(flow, data, self.loop.now()))

    def _on_error(self, flow: FlowKey, error: HostError) -> None:
        self.apply(self.stack.on_host_error(flow, error, self.loop.now()))

    # --- effects from the stack --------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case ToGuest():
                    self.frames_out += 1
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
                case KickRead(flow):
                    self.streams.read(flow)
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
                case _:
                    assert_never(effect)

    # --- forwards and the control socket (api.commands.Controller) --------------------------

    def start_forwards(self) -> None:
        """The configured -L/-R forwards; a bind that fails stops slirpy at start."""
        for fwd in self.config.forwards:
            try:
                self.add_forward(fwd, "config")
            except OSError as exc:
                raise SetupError(f"cannot forward {fwd.spec()}: {exc.strerror or exc}") from None
            except ForwardError as exc:
                raise SetupError(f"cannot forward {fwd.spec()}: {exc}") from None

    def start_api(self, path: str) -> None:
        self.api = ApiServer(path, self.loop,
                             Api(self, self.config.network, ipv6=self.config.ipv6).handle)

    def add_forward(self, fwd: Forward, origin: str) -> tuple[int, Forward]:
        guest = fwd.target if fwd.kind is Kind.LOCAL else fwd.bind
        if isinstance(guest, ipaddress.IPv6Address) and not self.config.ipv6:
            raise ForwardError("an IPv6 guest address needs IPv6 on (-6, --enable-ipv6)")
        if fwd.kind is Kind.LOCAL:
            forward_id = self.next_forward_id
            port = self.forward_sockets.open(forward_id, fwd)
            if port != fwd.bind_port:
                fwd = dataclasses.replace(fwd, bind_port=port)
                self.forward_sockets.forwards[forward_id] = fwd
        else:
            if any(f.kind is Kind.REMOTE and (f.transport, f.bind, f.bind_port)
                   == (fwd.transport, fwd.bind, fwd.bind_port)
                   for f, _ in self.forwards.values()):
                raise ForwardError("that guest address and port is forwarded already")
            forward_id = self.next_forward_id
            self.stack.add_remote(fwd)
        self.next_forward_id += 1
        self.forwards[forward_id] = (fwd, origin)
        log.info("%s forward %d: %s", fwd.kind.value, forward_id, fwd.spec())
        return forward_id, fwd

    def remove_forward(self, forward_id: int) -> Forward | None:
        entry = self.forwards.pop(forward_id, None)
        if entry is None:
            return None
        fwd = entry[0]
        if fwd.kind is Kind.LOCAL:
            self.forward_sockets.close(forward_id)
            self.stack.remove_local(forward_id)
        else:
            self.stack.remove_remote(fwd)
        log.info("%s forward %d removed: %s", fwd.kind.value, forward_id, fwd.spec())
        return fwd

    def list_forwards(self) -> list[tuple[int, Forward, str]]:
        return [(forward_id, fwd, origin)
                for forward_id, (fwd, origin) in sorted(self.forwards.items())]

    def list_flows(self) -> list[dict[str, Any]]:
        return self.stack.flows(self.loop.now())

    def counters(self) -> dict[str, Any]:
        return {"frames": {"from_guest": self.frames_in, "to_guest": self.frames_out},
                "drops": self.stack.counters(),
                "tap_errors": dict(getattr(self.device, "errors", {})),
                "flows": self.stack.flow_counts(),
                "forwards": len(self.forwards),
                "blocked": self.stack.blocked_counts(),
                "uptime_s": round(self.loop.now() - self.started, 3)}

    def add_rule(self, rule: Rule) -> int:
        rule_id = self.stack.policy.add(rule)
        log.info("rule %d: --%s %s", rule_id, rule.action.value, rule.text)
        return rule_id

    def remove_rule(self, rule_id: int) -> Rule | None:
        rule = self.stack.policy.remove(rule_id)
        if rule is not None:
            log.info("rule %d removed: --%s %s", rule_id, rule.action.value, rule.text)
        return rule

    def list_rules(self) -> list[tuple[int, Rule]]:
        return list(self.stack.policy.rules.items())

    def posture(self) -> dict[str, bool]:
        policy = self.stack.policy
        return {"routing": policy.routing, "host": policy.host,
                "host_loopback": policy.host_loopback}

    # --- the loop ------------------------------------------------------------------------------

    def watch_stop_fd(self, fd: int) -> None:
        """Stop when *fd* becomes readable or hangs up; at once if it is not open."""
        try:
            self.loop.add(fd, self._on_stop_fd)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.EPERM):
                raise
            log.debug("stop fd %d is not open: stopping", fd)
            self.stopping = True

    def _on_stop_fd(self, mask: int) -> None:
        log.debug("stop fd event")
        self.stopping = True

    def _on_signal(self, mask: int) -> None:
        try:
            signals = self._wakeup_r.recv(64)
        except BlockingIOError:
            return
        if signal.SIGUSR1 in signals:
            self.dump_state()
        if self._stop_signals.intersection(signals):
            log.debug("stop signal")
            self.stopping = True

    def dump_state(self) -> None:
        """SIGUSR1: counters and every TCP connection's state, to the log."""
        log.warning("drops: %s; tap errors: %s; udp flows %d; tcp connections %d",
                    self.stack.counters() or "none",
                    dict(getattr(self.device, "errors", {})) or "none",
                    len(self.stack.udp.table), len(self.stack.tcp))
        for conn in self.stack.tcp.conns.values():
            sock = self.streams.by_key.get(conn.key)
            log.warning("%s; socket fd %s%s%s", conn.describe(),
                        sock.fileno() if sock is not None else "none",
                        " connecting" if conn.key in self.streams.connecting else "",
                        " watching-out" if conn.key in self.streams.watching_out else "")

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
            stamp = None
            servers = []
            log.warning("cannot read %s: %s", path, exc)
        if not servers:
            servers = [(socket.inet_aton("127.0.0.1"), 53)]  # glibc's default: none listed
        self._resolv_stamp = stamp
        self.stack.set_dns_upstreams(servers)

    def run(self, stop_signals: Sequence[int] = STOP_SIGNALS) -> None:
        """Serve until a stop fd fires or one of *stop_signals* arrives."""
        self._stop_signals = frozenset(stop_signals)
        previous = {sig: signal.signal(sig, lambda *_: None)
                    for sig in (*stop_signals, signal.SIGUSR1)}
        old_wakeup = signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        try:
            while not self.stopping:
                now = self.loop.now()
                if self.config.dns and now >= self._resolv_check_at:
                    self._check_resolv_conf(now)
                deadline = self.stack.next_deadline()
                if deadline is not None and deadline <= now:
                    self.apply(self.stack.on_timer(now))
                    continue
                runtime_deadline = self._runtime_deadline()
                if runtime_deadline is not None and runtime_deadline <= now:
                    self.forward_sockets.expire(now)
                    if self.api is not None:
                        self.api.expire(now)
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
        if not self.forward_sockets.pending and (self.api is None or not self.api.clients):
            return None  # the usual case, checked on every turn of the loop
        api = self.api.next_deadline() if self.api is not None else None
        return min((d for d in (self.forward_sockets.next_deadline(), api) if d is not None),
                   default=None)

    def close(self) -> None:
        log.debug("frames dropped: %s; tap errors: %s", self.stack.counters() or "none",
                  dict(getattr(self.device, "errors", {})) or "none")
        if self.api is not None:
            self.api.close()
        if self.host_addresses is not None:
            self.host_addresses.close()
        self.forward_sockets.close_all()
        self.streams.close_all()
        self.sockets.close_all()
        self.loop.remove(self._wakeup_r.fileno())
        self._wakeup_r.close()
        self._wakeup_w.close()
        self.loop.close()


def raise_fd_limit() -> None:
    """Every flow is an fd: take the hard limit, as servers do, rather than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(config: Config, tap_fd: int, *, stop_fds: Sequence[int] = (),
          stop_signals: Sequence[int] = STOP_SIGNALS,
          on_ready: Callable[[], None] | None = None) -> None:
    """Carry the guest's traffic until a stop fd fires or a stop signal arrives.

    *on_ready* runs once everything the loop needs exists (slirp4netns's ready fd).
    """
    raise_fd_limit()
    drop_rate = float(os.environ.get(TEST_DROP_RATE_ENV, config.test_drop_rate))
    if drop_rate:
        log.warning("test mode: dropping %.1f%% of frames on the tap", drop_rate * 100)
    driver = Driver(config, TapDevice(tap_fd, drop_rate=drop_rate), secret=os.urandom(16))
    try:
        driver.start_forwards()
        if config.api_socket is not None:
            driver.start_api(config.api_socket)
        for fd in stop_fds:
            driver.watch_stop_fd(fd)
        if on_ready is not None:
            on_ready()
        driver.run(stop_signals)
    finally:
        driver.close()
