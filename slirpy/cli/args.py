"""Both command lines, parsed into a Config and the attach or run details.

The slirp4netns form keeps slirp4netns's options, short forms and error texts, so
rootlesskit and podman drive slirpy unchanged; tools probe `--help` for option names,
so it lists exactly what slirpy implements. Options slirp4netns has and slirpy does not
(yet) are refused with one line, never accepted and ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
from typing import Final, NoReturn

from slirpy import __version__
from slirpy.config import DEFAULT_CIDR, DEFAULT_MTU, MAX_MTU, Config, Network, parse_cidr, parse_mtu
from slirpy.errors import UsageError
from slirpy.netns.attach import check_tap_name, parse_mac

UNSUPPORTED: Final = {
    "-6": "--enable-ipv6", "--enable-ipv6": "--enable-ipv6",
    "-a": "--api-socket", "--api-socket": "--api-socket",
    "--enable-sandbox": "--enable-sandbox", "--enable-seccomp": "--enable-seccomp",
}

ATTACH_HELP: Final = f"""\
Usage: slirpy [OPTION]... PID|PATH [TAPNAME]
       slirpy run [OPTION]... -- COMMAND [ARG]...
User-mode networking for unprivileged network namespaces.

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirpy
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default={DEFAULT_MTU}, max={MAX_MTU})
--cidr=CIDR              specify network address CIDR (default={DEFAULT_CIDR})
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--enable-host-loopback   allow connecting to 127.0.0.1:* on the host as the gateway (default here)
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path
--outbound-addr=IPv4     sets outbound ipv4 address (or interface) to bind to
--outbound-addr6=IPv6    sets outbound ipv6 address (or interface) to bind to
--disable-dns            disables the DNS forwarder at the network's third address
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns], default=netns)
--debug                  log every decision at debug level
--quiet                  log only errors
-h, --help               show this help and exit
-v, --version            show version and exit

TAPNAME defaults to tap0. `slirpy run --help` shows the run form.
"""

RUN_HELP: Final = f"""\
Usage: slirpy run [OPTION]... -- COMMAND [ARG]...
Run COMMAND in new user and network namespaces, online through slirpy.
COMMAND's exit status is slirpy's; nothing it started outlives it.

-m, --mtu=MTU            specify MTU (default={DEFAULT_MTU}, max={MAX_MTU})
--cidr=CIDR              specify network address CIDR (default={DEFAULT_CIDR})
--enable-host-loopback   allow connecting to 127.0.0.1:* on the host as the gateway
--disable-host-loopback  prohibit it (the default of this form)
--outbound-addr=IPv4     sets outbound ipv4 address (or interface) to bind to
--outbound-addr6=IPv6    sets outbound ipv6 address (or interface) to bind to
--disable-dns            disables the DNS forwarder at the network's third address
--debug                  log every decision at debug level
--quiet                  log only errors
-h, --help               show this help and exit
"""

VERSION: Final = f"""\
slirpy version {__version__}
commit: none
libslirp: 4.7.0
SLIRP_CONFIG_VERSION_MAX: 4
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Attach:
    config: Config
    target: str  # a PID or a path
    netns_type: str
    userns_path: str | None
    tap_name: str
    configure: bool
    mac: str | None
    ready_fd: int | None
    exit_fd: int | None
    log_level: int


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    config: Config
    command: list[str]
    log_level: int


class Exit(Exception):
    """--help or --version: print *text* and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("-m", "--mtu", default=str(DEFAULT_MTU))
    parser.add_argument("--cidr", default=DEFAULT_CIDR)
    parser.add_argument("--disable-host-loopback", action="store_true")
    parser.add_argument("--enable-host-loopback", action="store_true")
    parser.add_argument("--outbound-addr")
    parser.add_argument("--outbound-addr6")
    parser.add_argument("--disable-dns", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--quiet", action="store_true")


def _attach_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slirpy", add_help=False, allow_abbrev=False)
    _common(parser)
    parser.add_argument("-c", "--configure", action="store_true")
    parser.add_argument("-e", "--exit-fd", type=_fd)
    parser.add_argument("-r", "--ready-fd", type=_fd)
    parser.add_argument("--netns-type", default="pid")
    parser.add_argument("--userns-path")
    parser.add_argument("--macaddress")
    parser.add_argument("--target-type", default="netns")
    parser.add_argument("-v", "--version", action="store_true")
    parser.add_argument("positional", nargs="*")
    return parser


def _run_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slirpy run", add_help=False, allow_abbrev=False)
    _common(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def _fd(text: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        raise UsageError(f"invalid file descriptor: {text}") from None
    if fd < 0:
        raise UsageError(f"invalid file descriptor: {text}")
    return fd


def parse(argv: list[str]) -> Attach | Run:
    """Parse either form; raises UsageError (one line) or Exit (help, version)."""
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED:
            raise UsageError(f"{UNSUPPORTED[name]} is not supported by slirpy yet")
    if argv[:1] == ["run"]:
        return _parse_run(argv[1:])
    return _parse_attach(argv)


def _parse_attach(argv: list[str]) -> Attach:
    ns = _attach_parser().parse_args(argv)
    if ns.help:
        raise Exit(ATTACH_HELP)
    if ns.version:
        raise Exit(VERSION)
    if not ns.positional:
        raise UsageError("PID or PATH of the network namespace is required (see --help)")
    if len(ns.positional) > 2:
        raise UsageError("too many arguments")
    if ns.netns_type not in ("pid", "path"):
        raise UsageError(f"--netns-type must be pid or path, not {ns.netns_type!r}")
    if ns.target_type != "netns":
        raise UsageError(f"--target-type={ns.target_type} is not supported (only netns)")
    if ns.netns_type == "pid" and not ns.positional[0].isdigit():
        raise UsageError(f"not a PID: {ns.positional[0]} (use --netns-type=path for a path)")
    if ns.macaddress is not None and not ns.configure:
        raise UsageError("--macaddr cannot be specified when --configure or -c is not specified")
    if ns.userns_path is not None and not os.path.exists(ns.userns_path):
        raise UsageError(f"userns path doesn't exist: {ns.userns_path}")
    return Attach(
        config=_config(ns, host_loopback_default=True),
        target=ns.positional[0], netns_type=ns.netns_type, userns_path=ns.userns_path,
        tap_name=check_tap_name(ns.positional[1] if len(ns.positional) > 1 else "tap0"),
        configure=ns.configure,
        mac=parse_mac(ns.macaddress) if ns.macaddress is not None else None,
        ready_fd=ns.ready_fd, exit_fd=ns.exit_fd, log_level=_log_level(ns))


def _parse_run(argv: list[str]) -> Run:
    ns = _run_parser().parse_args(argv)
    if ns.help:
        raise Exit(RUN_HELP)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        raise UsageError("run needs a command: slirpy run [OPTION]... -- COMMAND [ARG]...")
    return Run(_config(ns, host_loopback_default=False), command, _log_level(ns))


def _config(ns: argparse.Namespace, *, host_loopback_default: bool) -> Config:
    if ns.disable_host_loopback and ns.enable_host_loopback:
        raise UsageError("--disable-host-loopback and --enable-host-loopback contradict")
    host_loopback = (host_loopback_default or ns.enable_host_loopback) \
        and not ns.disable_host_loopback
    return Config(
        network=Network(parse_cidr(ns.cidr)), mtu=parse_mtu(ns.mtu),
        host_loopback=host_loopback, dns=not ns.disable_dns,
        outbound_addr=_outbound4(ns.outbound_addr) if ns.outbound_addr else None,
        outbound_addr6=_outbound6(ns.outbound_addr6) if ns.outbound_addr6 else None)


def _outbound4(text: str) -> ipaddress.IPv4Address:
    address = _outbound(text, 4)
    assert isinstance(address, ipaddress.IPv4Address)  # _outbound checked the family
    return address


def _outbound6(text: str) -> ipaddress.IPv6Address:
    address = _outbound(text, 6)
    assert isinstance(address, ipaddress.IPv6Address)
    return address


def _outbound(text: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, or the first address of that family on the named interface."""
    name = "ipv4" if version == 4 else "ipv6"
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = _interface_address(text, version)
    if address.version != version:
        raise UsageError(f"outbound-addr{'' if version == 4 else '6'} has to be valid {name} "
                         f"address or interface name.")
    return address


def _interface_address(name: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    from pyroute2 import IPRoute

    flag = "" if version == 4 else "6"
    error = UsageError(f"outbound-addr{flag} has to be valid ipv{version} address or "
                       f"interface name.")
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise error
        family = 2 if version == 4 else 10
        for msg in ipr.get_addr(index=links[0], family=family):
            return ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
    raise UsageError(f"interface {name} has no ipv{version} address")


def _log_level(ns: argparse.Namespace) -> int:
    if ns.debug:
        return logging.DEBUG
    return logging.ERROR if ns.quiet else logging.INFO
