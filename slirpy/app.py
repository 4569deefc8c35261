"""The composition root: one slirpy instance wired from its parts, and served.

Above everything else: it builds the sans-IO core (slirpy.stack) and the runtime
(slirpy.runtime.driver) that feeds it, opens the configured forwards and the control
socket, confines the process once all that is open (slirpy.hardening), and answers the
control socket's commands (slirpy.api.commands.Controller) by asking the core's control
surface and the runtime's forward sockets. Nothing below imports this module.
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from slirpy.addresses import address_text
from slirpy.api.commands import Api
from slirpy.api.server import ApiServer
from slirpy.config import Config
from slirpy.errors import SetupError
from slirpy.forward.spec import Forward, ForwardError, Kind, LocalForward
from slirpy.hardening import harden
from slirpy.observe import registry
from slirpy.observe.events import EventHub, Subscription
from slirpy.observe.pcap import CaptureError, PcapControl
from slirpy.policy.rules import Rule, format_rule
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.driver import STOP_SIGNALS, Driver
from slirpy.runtime.sockets import fit_to_fd_limit
from slirpy.runtime.tap import FrameDevice, TapDevice
import slirpy.stack
from slirpy.stack import Stack

if TYPE_CHECKING:  # imported when metrics may be asked for (start_metrics)
    from slirpy.observe.metrics import Metrics, MetricsServer

log = logging.getLogger(__name__)

DeviceFactory = Callable[[int], FrameDevice]


class Instance:
    """One guest link served: the core, the runtime, forwards and the control socket."""

    def __init__(self, config: Config, device: FrameDevice, secret: bytes) -> None:
        self.config = config
        self.device = device
        self.stack = Stack(config, secret=secret, offload=device.offload)
        self.driver = Driver(config, device, self.stack)
        self.driver.on_dump = self.dump_state
        self.forwards: dict[int, tuple[Forward, str]] = {}  # id -> (forward, origin)
        self.next_forward_id = 1
        # Forwards and rules change on a local client's word, as often as it likes.
        self.log = RateLimitedLog(log, burst=20)
        self.api: ApiServer | None = None
        self.metrics: Metrics | None = None  # made at start, if --metrics or the API is on
        self.metrics_server: MetricsServer | None = None
        self.pcap = PcapControl(self.driver, size_limit=config.pcap_size)
        # The event stream: the core reports flows only while a sink or subscriber listens.
        self.events = EventHub(self.driver.loop)
        self.events.on_change = self._events_on
        self.events.current = self._current_state
        self._events_on(False)

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
        self.api = ApiServer(path, self.driver.loop,
                             Api(self, self.config.network, ipv6=self.config.ipv6).handle)
        self.driver.runtime_timed.append(self.api)

    def start_metrics(self) -> None:
        """Before confinement: /proc/self/statm is opened now, the --metrics port bound.

        prometheus_client takes ~70 ms and ~3 MiB to import: only an instance whose
        metrics may be asked for pays for it (see serve).
        """
        from slirpy.observe.metrics import Metrics, MetricsServer

        self.metrics = Metrics(self.counters)
        if self.config.metrics is not None:
            address, port = self.config.metrics
            self.metrics_server = MetricsServer(address, port, self.driver.loop,
                                                self.metrics.text)
            self.driver.runtime_timed.append(self.metrics_server)

    def start_events(self, dest: str) -> None:
        """--events: opened now (a path is invisible once confined); SetupError if not."""
        self.events.open(dest)

    def _events_on(self, on: bool) -> None:
        self.stack.reports.set_on(on)
        self.driver.reports = self.events if on else None

    def _current_state(self) -> list[tuple[str, dict[str, object]]]:
        """For a subscriber joining late: the DNS upstream that answered last, as the
        dns-upstream event said it when it changed."""
        chosen = self.stack.dns.chosen
        if chosen is None:
            return []
        return [("dns-upstream", {"state": "chosen", "upstream": address_text(chosen)})]

    def emit_ready(self, sandbox: bool, seccomp: bool) -> None:
        """The ready event: addresses, MTU, forwards and what passes (once confined)."""
        config, net = self.config, self.config.network
        addresses: dict[str, Any] = {"network": str(net.cidr), "guest": str(net.guest),
                                     "gateway": str(net.gateway), "dns": str(net.dns)}
        if config.ipv6:
            addresses.update({"network6": str(net.cidr6), "guest6": str(net.guest6),
                              "gateway6": str(net.gateway6), "dns6": str(net.dns6)})
        self.events.emit("ready", {
            "version": slirpy.__version__, "build": build(), "pid": os.getpid(),
            "addresses": addresses, "mtu": config.mtu, "ipv6": config.ipv6,
            "dns": config.dns,
            "forwards": [_forward_fields(forward_id, fwd, origin)
                         for forward_id, fwd, origin in self.list_forwards()],
            "rules": [_rule_fields(rule_id, rule) for rule_id, rule in self.list_rules()],
            "posture": {**self.posture(), "sandbox": sandbox, "seccomp": seccomp}})

    def emit_exit(self, reason: str, error: str | None = None) -> None:
        self.stack.reports.end_all(self.driver.loop.now())  # flow-done, reason "exit"
        self._flow_reports()
        fields: dict[str, object] = {"reason": reason}
        if error is not None:
            fields["error"] = error
        self.events.emit("exit", fields)

    def subscribe(self) -> Subscription | None:
        return self.events.subscribe()

    def _flow_reports(self) -> None:
        """Reports the control surface made between events (flows of a removed forward)."""
        if self.stack.reports.outbox:
            self.driver.apply(self.stack.reports.take())

    def start_pcap(self, path: str) -> None:
        """--pcap: its files opened now, before confinement hides their paths."""
        try:
            self.pcap.start_path(path, rotate=self.config.pcap_rotate)
        except CaptureError as exc:
            raise SetupError(f"--pcap {exc}") from None

    # --- the control socket's commands (api.commands.Controller) ---------------------------

    def pcap_start(self, path: str | None, fd: int | None) -> str:
        """A capture to *path* or to *fd* (taken over); CaptureError with the reason."""
        if fd is not None:
            self.pcap.start_fd(fd)
            return "fd"
        assert path is not None
        self.pcap.start_path(path)
        return path

    def pcap_stop(self) -> dict[str, Any] | None:
        return self.pcap.stop()


    def add_forward(self, fwd: Forward, origin: str) -> tuple[int, Forward]:
        control = self.stack.control
        control.check(fwd)
        forward_id = self.next_forward_id
        match fwd:
            case LocalForward():  # a socket on the host; remote forwards have none
                fwd = self.driver.forward_sockets.open(forward_id, fwd)
        control.add(forward_id, fwd)
        self.next_forward_id += 1
        self.forwards[forward_id] = (fwd, origin)
        self.log.info("forwards", self.driver.loop.now(), "%s forward %d: %s", fwd.kind.value,
                      forward_id, fwd.spec())
        if origin != "config":  # those are in the ready event, the stream's first
            self.events.emit("forward-added", _forward_fields(forward_id, fwd, origin))
        return forward_id, fwd

    def remove_forward(self, forward_id: int) -> Forward | None:
        entry = self.forwards.pop(forward_id, None)
        if entry is None:
            return None
        fwd, origin = entry
        if fwd.kind is Kind.LOCAL:
            self.driver.forward_sockets.close(forward_id)
        self.stack.control.remove(forward_id, self.driver.loop.now())
        self._flow_reports()
        self.log.info("forwards", self.driver.loop.now(), "%s forward %d removed: %s",
                      fwd.kind.value, forward_id, fwd.spec())
        self.events.emit("forward-removed", _forward_fields(forward_id, fwd, origin))
        return fwd

    def list_forwards(self) -> list[tuple[int, Forward, str]]:
        return [(forward_id, fwd, origin)
                for forward_id, (fwd, origin) in sorted(self.forwards.items())]

    def list_flows(self) -> list[dict[str, Any]]:
        return self.stack.stats.flows(self.driver.loop.now())

    def counters(self) -> dict[str, Any]:
        stats = self.stack.stats
        return {"frames": {"from_guest": self.driver.frames_in,
                           "to_guest": self.driver.frames_out},
                "bytes": {"from_guest": self.driver.bytes_in,
                          "to_guest": self.driver.bytes_out},
                "drops": stats.drop_counts(),
                "tap_errors": dict(getattr(self.device, "errors", {})),
                "flows": stats.flow_counts(),
                "forwards": len(self.forwards),
                "blocked": stats.blocked_counts(),
                **stats.flow_totals(),
                "tcp": stats.tcp_counts(),
                "dns": stats.dns_counts(),
                "forward_connections": {str(forward_id): count for forward_id, count
                                        in sorted(self.stack.reports.forward_flows.items())},
                "events": {"lines": self.events.lines, "dropped": self.events.dropped(),
                           "subscribers": self.events.subscribers},
                "uptime_s": round(self.driver.loop.now() - self.driver.started, 3),
                "build": build()}

    def metrics_text(self) -> str:
        if self.metrics is None:  # not imported at start: unconfined, no --metrics
            self.start_metrics()
        assert self.metrics is not None
        return self.metrics.text().decode()

    def add_rule(self, rule: Rule) -> int:
        rule_id = self.stack.control.add_rule(rule)
        self.log.info("rules", self.driver.loop.now(), "rule %d: --%s %s", rule_id,
                      rule.action.value, rule.text)
        self.events.emit("rule-added", _rule_fields(rule_id, rule))
        return rule_id

    def remove_rule(self, rule_id: int) -> Rule | None:
        rule = self.stack.control.remove_rule(rule_id)
        if rule is not None:
            self.log.info("rules", self.driver.loop.now(), "rule %d removed: --%s %s", rule_id,
                          rule.action.value, rule.text)
            self.events.emit("rule-removed", _rule_fields(rule_id, rule))
        return rule

    def list_rules(self) -> list[tuple[int, Rule]]:
        return self.stack.control.rules()

    def posture(self) -> dict[str, bool]:
        return self.stack.control.posture()

    # --- diagnostics -----------------------------------------------------------------------------

    def dump_state(self) -> None:
        """SIGUSR1: counters and every TCP connection's state, to the log."""
        stats, streams = self.stack.stats, self.driver.streams
        log.warning("drops: %s; tap errors: %s; flows: %s", stats.drop_counts() or "none",
                    dict(getattr(self.device, "errors", {})) or "none", stats.flow_counts())
        for key, line in stats.describe_tcp():
            sock = streams.by_key.get(key)
            log.warning("%s; socket fd %s%s%s", line,
                        sock.fileno() if sock is not None else "none",
                        " connecting" if key in streams.connecting else "",
                        " watching-out" if key in streams.watching_out else "")

    def close(self) -> None:
        log.debug("frames dropped: %s; tap errors: %s",
                  self.stack.stats.drop_counts() or "none",
                  dict(getattr(self.device, "errors", {})) or "none")
        if self.api is not None:
            self.api.close()
        self.events.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.pcap.close()
        if self.metrics is not None:
            self.metrics.close()
        self.driver.close()


def _forward_fields(forward_id: int, fwd: Forward, origin: str) -> dict[str, object]:
    return {"id": forward_id, "kind": fwd.kind.value, "spec": fwd.spec(), "origin": origin}


def _rule_fields(rule_id: int, rule: Rule) -> dict[str, object]:
    return {"id": rule_id, "action": rule.action.value, "rule": format_rule(rule)}


def build() -> str:
    """"compiled (mypyc)" when the core runs as C extension modules, else "pure Python"."""
    compiled = slirpy.stack.__file__ is not None and slirpy.stack.__file__.endswith(
        tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return "compiled (mypyc)" if compiled else "pure Python"


def serve(config: Config, tap_fd: int, *, stop_fds: Sequence[int] = (),
          stop_signals: Sequence[int] = STOP_SIGNALS,
          on_ready: Callable[[], None] | None = None,
          device: DeviceFactory = TapDevice) -> None:
    """Carry the guest's traffic until a stop fd fires or a stop signal arrives.

    *on_ready* runs once everything the loop needs exists and slirpy is confined as
    *config* asks (--enable-sandbox, --enable-seccomp), as slirp4netns's ready fd says.
    *device* makes the frame device from the tap fd (tests wrap it, e.g. to lose frames).
    """
    # Every flow is an fd: take the hard limit, and fit the flow caps to it.
    config = fit_to_fd_limit(config)
    instance = Instance(config, device(tap_fd), secret=os.urandom(16))
    registration: registry.Registration | None = None
    exit_reason, exit_error = "error", None
    try:
        if config.events is not None:
            instance.start_events(config.events)
        instance.start_forwards()
        if config.pcap is not None:
            instance.start_pcap(config.pcap)
        if config.api_socket is not None:
            instance.start_api(config.api_socket)
            # For `slirpy ctl`: by pid, and by --name. Now: after harden() no path is left.
            registration = registry.register(config.api_socket, config.name)
        # prometheus_client costs ~3 MiB and ~70 ms: imported now for --metrics, or for
        # the API's `metrics` when confinement forbids a later import (the sandbox hides
        # the files; the hardening layer refuses imports once confined); an unconfined
        # instance imports it when first asked (metrics_text).
        if config.metrics is not None or config.api_socket is not None and (
                config.enable_sandbox or config.enable_seccomp):
            instance.start_metrics()
        for fd in stop_fds:
            instance.driver.watch_stop_fd(fd)
        # Everything slirpy opens at start is open: confine it (--enable-sandbox,
        # --enable-seccomp) before saying ready, as slirp4netns does.
        harden(config, host_addresses=instance.driver.host_addresses is not None,
               truncate_fds=instance.pcap.ring_fds())
        # Written before the ready fd is: whoever waits on it finds the line there.
        instance.emit_ready(sandbox=config.enable_sandbox, seccomp=config.enable_seccomp)
        if on_ready is not None:
            on_ready()
        instance.driver.run(stop_signals)
        exit_reason = instance.driver.stop_reason or "stopped"
    except BaseException as exc:
        exit_error = str(exc) or type(exc).__name__
        raise
    finally:
        instance.emit_exit(exit_reason, exit_error)
        instance.close()
        if registration is not None:
            registration.close()
