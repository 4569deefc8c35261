"""slirpy's entry point: parse, set up, serve; user mistakes end as one line.

Both forms share one shape: parse the command line into a Config (cli.args), get a
tap fd for the guest (netns.attach, after netns.spawn has made the guest for `run`),
then hand both to serve() (slirpy.app), which returns when it is asked to stop. A
SlirpyError anywhere ends as `slirpy: <reason>` on stderr and exit status 1; anything
else is a bug and keeps its traceback. The runtime is imported only once the guest's
tap is open, so a mistake on the command line costs no more than parsing it.
`slirpy ctl ...` is the client of a running slirpy's API socket (slirpy.cli.ctl).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from slirpy.cli.args import Attach, Exit, Run, parse
from slirpy.config import Config
from slirpy.errors import SetupError, SlirpyError
from slirpy.netns.attach import (LinkSetup, open_tap, target_for_path, target_for_pid,
                                 write_ready)
from slirpy.observe import registry

if TYPE_CHECKING:
    from slirpy.runtime.tap import FrameDevice

log = logging.getLogger("slirpy")

GRACE_S: Final = 5.0


@dataclasses.dataclass(frozen=True)
class TapOptions:
    """How the tap is opened and read: the product's defaults; tests pass others to
    `main` to keep the plain path (no virtio-net header) and lossy links tested."""

    vnet_hdr: bool = True
    device: Callable[[int], FrameDevice] | None = None  # default: runtime.tap.TapDevice


def main(argv: list[str] | None = None, *, tap: TapOptions = TapOptions()) -> int:
    """Run slirpy with *argv* (default: sys.argv[1:]); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:  # the client: no guest, no logging set-up
        from slirpy.cli import ctl

        return ctl.main(argv[1:])
    try:
        parsed = parse(argv)
    except Exit as done:
        print(done.text, end="")
        return 0
    except SlirpyError as exc:
        print(f"slirpy: {exc}", file=sys.stderr)  # one line, no traceback
        return exc.exit_code
    logging.basicConfig(level=parsed.log_level, format="slirpy: %(message)s", stream=sys.stderr)
    try:
        return attach(parsed, tap) if isinstance(parsed, Attach) else run(parsed, tap)
    except SlirpyError as exc:
        print(f"slirpy: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT
        return 128 + signal.SIGINT


def attach(args: Attach, tap: TapOptions = TapOptions()) -> int:
    """The slirp4netns form: open the tap in the target, say ready, serve until told."""
    if args.netns_type == "pid":
        target = target_for_pid(int(args.target))
    else:
        target = target_for_path(args.target, args.userns_path)
    # --name without -a: a socket in the registry directory (nothing new otherwise).
    args = dataclasses.replace(args, config=with_api_socket(args.config, by_default=False))
    setup = LinkSetup(args.config, args.mac) if args.configure else None
    tap_fd = open_tap(target, args.tap_name, setup, vnet_hdr=tap.vnet_hdr)
    from slirpy.app import serve
    from slirpy.runtime.tap import TapDevice

    print(summary(args), flush=True)
    if args.config.host_loopback:
        log.info("127.0.0.1:* on the host is reachable as %s (--disable-host-loopback "
                 "prohibits it)", args.config.network.gateway)
        if args.config.ipv6:
            log.info("[::1]:* on the host is reachable as %s (--disable-host-loopback "
                     "prohibits it)", args.config.network.gateway6)
    ready_fd = args.ready_fd
    serve(args.config, tap_fd, stop_fds=[args.exit_fd] if args.exit_fd is not None else [],
          on_ready=None if ready_fd is None else lambda: write_ready(ready_fd),
          device=tap.device or TapDevice)
    return 0


def summary(args: Attach) -> str:
    """The start-up lines slirp4netns prints on stdout (no tool parses them)."""
    config, net = args.config, args.config.network
    fields: list[tuple[str, object]] = [
        ("MTU", config.mtu), ("Network", net.cidr.network_address),
        ("Netmask", net.cidr.netmask), ("Gateway", net.gateway),
        ("DNS", net.dns if config.dns else f"{net.dns} (disabled)"),
        ("DHCP begin", net.dhcp_start), ("DHCP end", net.dhcp_end),
        ("Recommended IP", net.guest)]
    if config.ipv6:  # slirp4netns -6 prints none: these follow its format
        fields += [
            ("IPv6 network", net.cidr6), ("IPv6 gateway", net.gateway6),
            ("IPv6 DNS", net.dns6 if config.dns else f"{net.dns6} (disabled)"),
            ("IPv6 router", net.link_local6), ("Recommended IP6", net.guest6)]
    fields += [
        ("Outbound IPv4", config.outbound_addr), ("Outbound IPv6", config.outbound_addr6),
        ("MAC address", args.mac), ("API socket", config.api_socket)]
    return "\n".join(["Starting slirpy", *(f"* {label + ':':<17}{value}"
                                           for label, value in fields if value is not None)])


def run(args: Run, tap: TapOptions = TapOptions()) -> int:
    """`slirpy run`: make the guest, put it online, serve until CMD exits; its status."""
    from slirpy.netns.spawn import spawn

    if args.log_level == logging.INFO:
        logging.getLogger().setLevel(logging.WARNING)  # CMD's stderr is the user's
    args = dataclasses.replace(args, config=with_api_socket(args.config, by_default=True))
    net = args.config.network
    nameservers = [str(net.dns), *([str(net.dns6)] if args.config.ipv6 else [])]
    guest = spawn(args.command, nameservers=nameservers if args.config.dns else [])
    try:
        tap_fd = open_tap(target_for_pid(guest.pid), "tap0", LinkSetup(args.config),
                          vnet_hdr=tap.vnet_hdr)
    except SlirpyError:
        guest.signal(signal.SIGKILL)
        guest.wait()
        raise
    from slirpy.app import serve
    from slirpy.runtime.tap import TapDevice

    # Ctrl-C reaches CMD straight from the terminal; slirpy keeps CMD online meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve(args.config, tap_fd, stop_fds=[guest.pidfd],
              stop_signals=(signal.SIGTERM, signal.SIGHUP), on_ready=guest.go,
              device=tap.device or TapDevice)
    except SlirpyError:  # e.g. a forward that cannot bind: CMD never started
        guest.signal(signal.SIGKILL)
        guest.wait()
        raise
    if not _exited(guest.pidfd, 0):
        guest.signal(signal.SIGTERM)  # we were asked to stop: so is CMD
        if not _exited(guest.pidfd, GRACE_S):
            guest.signal(signal.SIGKILL)
    return guest.wait()


def with_api_socket(config: Config, *, by_default: bool) -> Config:
    """*config* with an API socket in the registry directory (<dir>/<pid>.api) where it
    has none: `slirpy run` makes one by default (so `slirpy ctl` reaches any instance),
    and --name asks for one. A default that cannot be made is left out, with a warning;
    one --name asks for is a SetupError."""
    if config.api_socket is not None or not (by_default or config.name is not None):
        return config
    try:
        path = registry.default_api_socket()
    except SlirpyError as exc:
        if config.name is not None:
            raise
        log.warning("no API socket for slirpy ctl: %s", exc)
        return config
    if len(os.fsencode(path)) > registry.SUN_PATH_MAX:
        if config.name is not None:
            raise SetupError(f"--name {config.name}: the API socket path {path} is too "
                             "long for a unix socket: give --api-socket")
        log.warning("no API socket for slirpy ctl: %s is too long for a unix socket", path)
        return config
    return dataclasses.replace(config, api_socket=path)


def _exited(pidfd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(ready)


