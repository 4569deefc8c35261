"""slirpy's entry point: parse, set up, serve; user mistakes end as one line."""

from __future__ import annotations

import logging
import select
import signal
import sys
from typing import Final

from slirpy.cli.args import Attach, Exit, Run, parse
from slirpy.errors import SlirpyError
from slirpy.netns.attach import (LinkSetup, Target, open_tap, target_for_path, target_for_pid,
                                 write_ready)

log = logging.getLogger("slirpy")

GRACE_S: Final = 5.0


def main(argv: list[str] | None = None) -> int:
    try:
        parsed = parse(sys.argv[1:] if argv is None else argv)
    except Exit as done:
        print(done.text, end="")
        return 0
    except SlirpyError as exc:
        print(f"slirpy: {exc}", file=sys.stderr)  # one line, no traceback
        return exc.exit_code
    logging.basicConfig(level=parsed.log_level, format="slirpy: %(message)s", stream=sys.stderr)
    try:
        return attach(parsed) if isinstance(parsed, Attach) else run(parsed)
    except SlirpyError as exc:
        print(f"slirpy: {exc}", file=sys.stderr)
        return exc.exit_code


def attach(args: Attach) -> int:
    from slirpy.runtime.driver import serve

    if args.netns_type == "pid":
        target = target_for_pid(int(args.target))
    else:
        target = target_for_path(args.target, args.userns_path)
    setup = LinkSetup(args.config, args.mac) if args.configure else None
    tap_fd = open_tap(target, args.tap_name, setup)
    print(summary(args), flush=True)
    if args.config.host_loopback:
        log.info("127.0.0.1:* on the host is reachable as %s (--disable-host-loopback "
                 "prohibits it)", args.config.network.gateway)
    ready_fd = args.ready_fd
    serve(args.config, tap_fd, stop_fds=[args.exit_fd] if args.exit_fd is not None else [],
          on_ready=None if ready_fd is None else lambda: write_ready(ready_fd))
    return 0


def summary(args: Attach) -> str:
    net = args.config.network
    return "\n".join([
        "Starting slirpy",
        f"* MTU:             {args.config.mtu}",
        f"* Network:         {net.cidr.network_address}",
        f"* Netmask:         {net.cidr.netmask}",
        f"* Gateway:         {net.gateway}",
        f"* DNS:             {net.dns}" + ("" if args.config.dns else " (disabled)"),
        f"* DHCP begin:      {net.dhcp_start}",
        f"* DHCP end:        {net.dhcp_end}",
        f"* Recommended IP:  {net.guest}",
    ])


def run(args: Run) -> int:
    from slirpy.netns.spawn import spawn
    from slirpy.runtime.driver import serve

    if args.log_level == logging.INFO:
        logging.getLogger().setLevel(logging.WARNING)  # CMD's stderr is the user's
    guest = spawn(args.command, nameserver=str(args.config.network.dns))
    try:
        tap_fd = open_tap(Target(f"/proc/{guest.pid}/ns/net", f"/proc/{guest.pid}/ns/user"),
                          "tap0", LinkSetup(args.config))
    except SlirpyError:
        guest.signal(signal.SIGKILL)
        guest.wait()
        raise
    # Ctrl-C reaches CMD straight from the terminal; slirpy keeps CMD online meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(args.config, tap_fd, stop_fds=[guest.pidfd],
          stop_signals=(signal.SIGTERM, signal.SIGHUP), on_ready=guest.go)
    if not _exited(guest.pidfd, 0):
        guest.signal(signal.SIGTERM)  # we were asked to stop: so is CMD
        if not _exited(guest.pidfd, GRACE_S):
            guest.signal(signal.SIGKILL)
    return guest.wait()


def _exited(pidfd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(ready)


