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
from typing import Any

from slirpy.api.commands import Api
from slirpy.api.server import ApiServer
from slirpy.config import Config
from slirpy.errors import SetupError
from slirpy.forward.spec import Forward, ForwardError, Kind, LocalForward
from slirpy.hardening import harden
from slirpy.policy.rules import Rule
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.driver import STOP_SIGNALS, Driver
from slirpy.runtime.sockets import fit_to_fd_limit
from slirpy.runtime.tap import FrameDevice, TapDevice
import slirpy.stack
from slirpy.stack import Stack

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

    # --- the control socket's commands (api.commands.Controller) ---------------------------

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
        return forward_id, fwd

    def remove_forward(self, forward_id: int) -> Forward | None:
        entry = self.forwards.pop(forward_id, None)
        if entry is None:
            return None
        fwd = entry[0]
        if fwd.kind is Kind.LOCAL:
            self.driver.forward_sockets.close(forward_id)
        self.stack.control.remove(forward_id)
        self.log.info("forwards", self.driver.loop.now(), "%s forward %d removed: %s",
                      fwd.kind.value, forward_id, fwd.spec())
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
                "drops": stats.drop_counts(),
                "tap_errors": dict(getattr(self.device, "errors", {})),
                "flows": stats.flow_counts(),
                "forwards": len(self.forwards),
                "blocked": stats.blocked_counts(),
                "uptime_s": round(self.driver.loop.now() - self.driver.started, 3),
                "build": build()}

    def add_rule(self, rule: Rule) -> int:
        rule_id = self.stack.control.add_rule(rule)
        self.log.info("rules", self.driver.loop.now(), "rule %d: --%s %s", rule_id,
                      rule.action.value, rule.text)
        return rule_id

    def remove_rule(self, rule_id: int) -> Rule | None:
        rule = self.stack.control.remove_rule(rule_id)
        if rule is not None:
            self.log.info("rules", self.driver.loop.now(), "rule %d removed: --%s %s", rule_id,
                          rule.action.value, rule.text)
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
        self.driver.close()


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
    try:
        instance.start_forwards()
        if config.api_socket is not None:
            instance.start_api(config.api_socket)
        for fd in stop_fds:
            instance.driver.watch_stop_fd(fd)
        # Everything slirpy opens at start is open: confine it (--enable-sandbox,
        # --enable-seccomp) before saying ready, as slirp4netns does.
        harden(config, host_addresses=instance.driver.host_addresses is not None)
        if on_ready is not None:
            on_ready()
        instance.driver.run(stop_signals)
    finally:
        instance.close()
