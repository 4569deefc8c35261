"""Both command lines, parsed into a Config and the attach or run details.

The slirp4netns form keeps slirp4netns's options, short forms and error texts, so
rootlesskit and podman drive slirpy unchanged; tools probe `--help` for option names,
so it lists exactly what slirpy implements, the options slirp4netns has in its words.
As with getopt, options may follow the positional arguments of that form; in `slirpy run`
everything from COMMAND on (or after `--`) is COMMAND's.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any, Final, NoReturn, TypeVar

from slirpy import __version__
from slirpy.addresses import DEFAULT_CIDR, DEFAULT_CIDR6, Network
from slirpy.config import DEFAULT_MTU, MAX_MTU, Config, parse_cidr, parse_cidr6, parse_mtu
from slirpy.control import Ipv6Off, check_family
from slirpy.errors import UsageError
from slirpy.forward.spec import Forward, ForwardError, Kind, parse_forward
from slirpy.netns.attach import check_tap_name
from slirpy.netns.link import interface_address
from slirpy.policy.rules import Action, Rule, RuleError, parse_rules

IPV6_MIN_MTU: Final = 1280
MAX_DNS_TTL_S: Final = 86400  # a day: --dns-ttl's upper bound
_MAC: Final = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_MAC_GROUP_BIT: Final = 0x01  # the first octet's I/G bit: a multicast address (IEEE 802)

_RULES_HELP: Final = """\
--allow=RULES            let new flows reach these, repeatable; a comma list of
                         [tcp|udp|icmp://]HOST[/PREFIX][:PORT[-PORT]] (IPv6 in [])
--deny=RULES             block these, repeatable (deny wins over allow)
--restrict               only --allow rules and forwards pass: no routing, no host
--enable-routing         with --restrict: reach beyond the host again
"""

# slirp4netns's own lines, word for word: rootlesskit and podman grep --help for them.
_CONFINE_HELP: Final = (
    "--enable-sandbox         create a new mount namespace (and drop all caps except "
    "CAP_NET_BIND_SERVICE if running as the root)\n"
    "--enable-seccomp         enable seccomp to limit syscalls (experimental)\n")

_OBSERVE_HELP: Final = """\
--name=NAME              register the API socket as NAME for `slirpy ctl --name`
--events=DEST            write events as JSON lines to DEST: a file, - (stderr), fd:N
--pcap=FILE              capture every frame on the guest link to FILE (pcap)
--pcap-size=SIZE[,rotate] stop the capture at SIZE bytes (k, M, G), or turn between FILE and FILE.1
--metrics=ADDR:PORT      serve Prometheus metrics over HTTP (ADDR defaults to 127.0.0.1)
"""

_LIMITS_HELP: Final = """\
--max-flows=N            at most N TCP connections and UDP flows at once
                         (default: from the open-file limit)
--max-pending-connects=N at most N TCP connects to the host under way at once
                         (default: a quarter of the TCP connections allowed)
"""

ATTACH_HELP: Final = f"""\
Usage: slirpy [OPTION]... PID|PATH [TAPNAME]
       slirpy run [OPTION]... -- COMMAND [ARG]...
       slirpy ctl [OPTION]... COMMAND [ARG]...
User-mode networking for unprivileged network namespaces.

-c, --configure          bring up the interface
-e, --exit-fd=FD         specify the FD for terminating slirpy
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default={DEFAULT_MTU}, max={MAX_MTU})
-6, --enable-ipv6        enable IPv6 (default off here, on in `slirpy run`)
--disable-ipv6           IPv4 only (default here)
--cidr=CIDR              specify network address CIDR (default={DEFAULT_CIDR})
--cidr6=CIDR             specify IPv6 network prefix, a /64 (default={DEFAULT_CIDR6}; needs -6)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--enable-host-loopback   allow connecting to 127.0.0.1:* on the host as the gateway (default here)
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path
--outbound-addr=IPv4     sets outbound ipv4 address (or interface) to bind to
--outbound-addr6=IPv6    sets outbound ipv6 address (or interface) to bind to
--disable-dns            disables the DNS forwarder at the network's third address
{_CONFINE_HELP}--disable-sandbox        no new mount namespace (default here)
--disable-seccomp        no seccomp filter (default here)
{_LIMITS_HELP}{_OBSERVE_HELP}\
-a, --api-socket=PATH    specify API socket path (the slirp4netns JSON API)
-L, --local-forward=SPEC forward a host port to the guest, repeatable:
                         [proto://][bind_ip:]bind_port[:guest_ip:guest_port]
                         proto tcp (default), udp, tcppp, udpspp, udprpc
-R, --remote-forward=SPEC forward a guest address to a host service, repeatable:
                         [proto://][guest_ip:]port[:host:host_port], proto tcp or udp;
                         host may be [NAME@srv-DNSSERVER:PORT] (an SRV lookup)
--dns-ttl=SECONDS        cache SRV answers of remote forwards this long (default 60)
{_RULES_HELP}--enable-host            with --restrict: reach the host's own addresses again
--config=FILE.yaml       read settings from a YAML file; flags override it
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
--disable-ipv6           IPv4 only: no IPv6 in the guest
-6, --enable-ipv6        enable IPv6 (the default of this form)
--cidr=CIDR              specify network address CIDR (default={DEFAULT_CIDR})
--cidr6=CIDR             specify IPv6 network prefix, a /64 (default={DEFAULT_CIDR6})
--enable-host-loopback   allow connecting to 127.0.0.1:* on the host as the gateway
--disable-host-loopback  prohibit it (the default of this form)
--outbound-addr=IPv4     sets outbound ipv4 address (or interface) to bind to
--outbound-addr6=IPv6    sets outbound ipv6 address (or interface) to bind to
--disable-dns            disables the DNS forwarder at the network's third address
--disable-sandbox        keep slirpy out of a new mount namespace, with its capabilities
--disable-seccomp        do not limit slirpy's syscalls with seccomp
--enable-sandbox         confine slirpy in a new mount namespace (the default of this form)
--enable-seccomp         limit slirpy's syscalls with seccomp (the default of this form)
{_LIMITS_HELP}{_OBSERVE_HELP}\
-a, --api-socket=PATH    specify API socket path (the slirp4netns JSON API)
-L, --local-forward=SPEC forward a host port to the guest (see `slirpy --help`)
-R, --remote-forward=SPEC forward a guest address to a host service
--dns-ttl=SECONDS        cache SRV answers of remote forwards this long (default 60)
{_RULES_HELP}--enable-host            reach the host's own addresses and networks (off here)
--config=FILE.yaml       read settings from a YAML file; flags override it
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


def version_text() -> str:
    """--version: slirp4netns's lines (tools read them), then which build is running."""
    from slirpy.app import build

    return f"{VERSION}build: {build()}\n"


@dataclasses.dataclass(frozen=True, slots=True)
class Attach:
    """The slirp4netns form: what to attach to, and how."""

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
    """`slirpy run`: the command to run in new namespaces."""

    config: Config
    command: list[str]
    log_level: int


class Exit(Exception):
    """--help or --version: print *text* and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as UsageError: one line, no usage dump, exit 1."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("-m", "--mtu", default=str(DEFAULT_MTU))
    parser.add_argument("--cidr", default=DEFAULT_CIDR)
    parser.add_argument("-6", "--enable-ipv6", action="store_true")
    parser.add_argument("--disable-ipv6", action="store_true")
    parser.add_argument("--cidr6")
    parser.add_argument("--disable-host-loopback", action="store_true")
    parser.add_argument("--enable-host-loopback", action="store_true")
    parser.add_argument("--outbound-addr")
    parser.add_argument("--outbound-addr6")
    parser.add_argument("--disable-dns", action="store_true")
    parser.add_argument("--enable-sandbox", action="store_true")
    parser.add_argument("--disable-sandbox", action="store_true")
    parser.add_argument("--enable-seccomp", action="store_true")
    parser.add_argument("--disable-seccomp", action="store_true")
    parser.add_argument("--max-flows", type=_positive("max-flows"))
    parser.add_argument("--max-pending-connects", type=_positive("max-pending-connects"))
    parser.add_argument("-a", "--api-socket")
    parser.add_argument("--name")
    parser.add_argument("--events")
    parser.add_argument("--pcap")
    parser.add_argument("--pcap-size")
    parser.add_argument("--metrics")
    parser.add_argument("-L", "--local-forward", action="append", default=[])
    parser.add_argument("-R", "--remote-forward", action="append", default=[])
    parser.add_argument("--dns-ttl", default="60")
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--deny", action="append", default=[])
    parser.add_argument("--restrict", action="store_true")
    parser.add_argument("--enable-routing", action="store_true")
    parser.add_argument("--enable-host", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    # An option named like a negative number ("-6") makes argparse take every "-1" for an
    # option; getopt, as slirp4netns, takes `-r -1` as the value -1 (and refuses it).
    parser._has_negative_number_optionals.clear()


def _attach_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slirpy", add_help=False, allow_abbrev=False)
    _common(parser)
    parser.add_argument("-c", "--configure", action="store_true")
    parser.add_argument("-e", "--exit-fd", type=_fd("exit-fd"))
    parser.add_argument("-r", "--ready-fd", type=_fd("ready-fd"))
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


def _fd(name: str) -> Callable[[str], int]:
    """A parser of fd numbers for option *name*, with slirp4netns's error text."""

    def parse_fd(text: str) -> int:
        if not text.isdigit():  # also refuses "-1" and "+1"
            raise UsageError(f"{name} must be a non-negative integer")
        return int(text)

    return parse_fd


def _positive(name: str) -> Callable[[str], int]:
    """A parser of counts for option *name*: a positive decimal integer."""

    def parse_count(text: str) -> int:
        if not text.isdecimal() or not text.isascii() or int(text) == 0:
            raise UsageError(f"--{name} must be a positive integer, not {text}")
        return int(text)

    return parse_count


def parse(argv: list[str]) -> Attach | Run:
    """Parse either form; raises UsageError (one line) or Exit (help, version)."""
    run = argv[:1] == ["run"]
    options = argv[1:] if run else argv
    _resolved.clear()
    ours = _run_options(options) if run else options
    config_path = _config_path(ours)
    if config_path is not None:
        from slirpy.cli.config_file import load_tokens

        tokens = load_tokens(config_path, ours, run=run, check=_check_tokens)
        options = tokens + options
    return _parse_run(options) if run else _parse_attach(options)


def _run_options(options: list[str]) -> list[str]:
    """`slirpy run`'s own options: those before COMMAND (or `--`); the rest is COMMAND's,
    even what looks like one of ours (`slirpy run curl --config x`)."""
    command = _run_parser().parse_args(options).command
    return options[:len(options) - len(command)]


def _config_path(options: list[str]) -> str | None:
    """The --config option's value, read before the rest (its settings come first)."""
    path = None
    for i, arg in enumerate(options):
        if arg == "--":
            break
        if arg == "--config":
            if i + 1 >= len(options):
                raise UsageError("argument --config: expected one argument")
            path = options[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def _check_tokens(tokens: list[str], run: bool) -> None:
    """Parse one config file setting on its own, so an error can name its key."""
    if run:
        _parse_run([*tokens, "--", "true"])
    else:
        needs_c = any(token.startswith("--macaddress") for token in tokens)
        needs_6 = any(token.startswith("--cidr6") for token in tokens)
        _parse_attach([*tokens, *(["-c"] if needs_c else []), *(["-6"] if needs_6 else []),
                       "1"])


def _parse_attach(argv: list[str]) -> Attach:
    # Intermixed, as getopt permutes: `slirpy 1234 tap0 --mtu 1500`. After `--` only
    # positional arguments: split off here, as argparse's intermixed parsing would take
    # `-- -c` for the option.
    after = argv.index("--") if "--" in argv else len(argv)
    ns = _attach_parser().parse_intermixed_args(argv[:after])
    ns.positional = [*ns.positional, *argv[after + 1:]]
    if ns.help:
        raise Exit(ATTACH_HELP)
    if ns.version:
        raise Exit(version_text())
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
        config=_config(ns, host_loopback_default=True, ipv6_default=False, host_default=True,
                       confine_default=False),
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
    return Run(_config(ns, host_loopback_default=False, ipv6_default=True, host_default=False,
                       confine_default=True),
               command, _log_level(ns))


def _config(ns: argparse.Namespace, *, host_loopback_default: bool,
            ipv6_default: bool, host_default: bool, confine_default: bool) -> Config:
    """The settings of either form. Postures: the slirp4netns form reaches what
    slirp4netns reaches; `run` keeps the host's addresses and loopback closed; --restrict
    closes routing, host and host loopback, and each --enable-* opens one again. The
    sandbox and seccomp are slirp4netns's opt-ins, and on by default in `run`."""
    if ns.disable_host_loopback and ns.enable_host_loopback:
        raise UsageError("--disable-host-loopback and --enable-host-loopback contradict")
    if ns.restrict:
        host_loopback_default = host_default = False
    host_loopback = (ns.enable_host_loopback or host_loopback_default
                     and not ns.disable_host_loopback)
    ipv6 = _ipv6(ns, ipv6_default)
    network = Network(parse_cidr(ns.cidr), parse_cidr6(ns.cidr6 or DEFAULT_CIDR6))
    if ns.cidr6 is not None and not ipv6:
        raise UsageError("--cidr6 is for IPv6, which --disable-ipv6 turns off"
                         if ns.disable_ipv6 else "--cidr6 is for IPv6, which is off: add -6")
    mtu = parse_mtu(ns.mtu)
    if ipv6 and mtu < IPV6_MIN_MTU:
        instead = "add --disable-ipv6" if ipv6_default else "drop -6"
        raise UsageError(f"IPv6 needs an MTU of at least {IPV6_MIN_MTU} (RFC 8200): raise "
                         f"--mtu, or {instead}")
    return Config(
        network=network, mtu=mtu,
        forwards=_forwards(ns, network, ipv6), api_socket=ns.api_socket or None,
        dns_ttl_s=_dns_ttl(ns.dns_ttl),
        host_loopback=host_loopback, ipv6=ipv6, dns=not ns.disable_dns,
        routing=ns.enable_routing or not ns.restrict, host=ns.enable_host or host_default,
        rules=_rules(ns),
        enable_sandbox=_switch(ns, "sandbox", confine_default),
        enable_seccomp=_switch(ns, "seccomp", confine_default),
        max_flows=ns.max_flows, max_pending_connects=ns.max_pending_connects,
        **_observe(ns),
        outbound_addr=_outbound(ns.outbound_addr, ipaddress.IPv4Address)
        if ns.outbound_addr else None,
        outbound_addr6=_outbound(ns.outbound_addr6, ipaddress.IPv6Address)
        if ns.outbound_addr6 else None)


_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
PCAP_MIN_SIZE: Final = 1 << 20  # a capture file holds a few 64 KiB segments at least


def _observe(ns: argparse.Namespace) -> dict[str, Any]:
    """--name, --events, --pcap, --pcap-size, --metrics: checked here for their form;
    whether a path can be written or a port bound is found out at start."""
    if ns.name is not None and not _NAME.fullmatch(ns.name):
        raise UsageError(f"--name {ns.name!r}: use letters, digits, '.', '_' and '-' "
                         "(at most 64, starting with a letter or digit)")
    if ns.events is not None:
        if not ns.events:
            raise UsageError("--events needs a destination: a file, - (stderr) or fd:N")
        if ns.events.startswith("fd:"):
            _fd("events")(ns.events[3:])
    if ns.pcap is not None and not ns.pcap:
        raise UsageError("--pcap needs a file name")
    size, rotate = _pcap_size(ns.pcap_size) if ns.pcap_size is not None else (None, False)
    return {"name": ns.name, "events": ns.events, "pcap": ns.pcap, "pcap_size": size,
            "pcap_rotate": rotate,
            "metrics": parse_listen(ns.metrics) if ns.metrics is not None else None}


def _pcap_size(text: str) -> tuple[int, bool]:
    """SIZE[k|M|G][,rotate] -> (bytes, rotate)."""
    size_text, _, mode = text.partition(",")
    match = re.fullmatch(r"([0-9]+)([kKmMgG]?)", size_text.strip())
    if match is None or mode not in ("", "rotate", "stop"):
        raise UsageError(f"--pcap-size {text!r}: a size like 100M, optionally ',rotate'")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size < PCAP_MIN_SIZE:
        raise UsageError(f"--pcap-size {text!r}: at least 1M")
    return size, mode == "rotate"


def parse_listen(text: str) -> tuple[str, int]:
    """--metrics ADDR:PORT, [ADDR6]:PORT or PORT (on 127.0.0.1) -> (address, port)."""
    address, port_text = "127.0.0.1", text
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UsageError(f"--metrics {text!r}: write an IPv6 address as [ADDR]:PORT")
        port_text = rest[1:]
    elif ":" in text:
        address, _, port_text = text.rpartition(":")
        address = address or "127.0.0.1"
    try:
        ipaddress.ip_address(address)
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9464") from None
    if not 0 < port < 65536:
        raise UsageError(f"--metrics {text!r}: the port must be 1-65535")
    return address, port


def _switch(ns: argparse.Namespace, name: str, default: bool) -> bool:
    """--enable-NAME or --disable-NAME, else *default*; both at once contradict."""
    enable, disable = getattr(ns, f"enable_{name}"), getattr(ns, f"disable_{name}")
    if enable and disable:
        raise UsageError(f"--disable-{name} and --enable-{name} contradict")
    return bool(enable or default and not disable)


def _ipv6(ns: argparse.Namespace, default: bool) -> bool:
    if ns.enable_ipv6 and ns.disable_ipv6:
        raise UsageError("--disable-ipv6 and --enable-ipv6 contradict")
    return bool(ns.enable_ipv6 or default and not ns.disable_ipv6)


def _forwards(ns: argparse.Namespace, network: Network, ipv6: bool) -> tuple[Forward, ...]:
    found: list[Forward] = []
    for option, kind, specs in (("-L", Kind.LOCAL, ns.local_forward),
                                ("-R", Kind.REMOTE, ns.remote_forward)):
        for spec in specs:
            try:
                forwards = parse_forward(kind, spec, guest=network.guest,
                                         gateway=network.gateway)
            except ForwardError as exc:
                raise UsageError(f"{option} {spec}: {exc}") from None
            try:
                for fwd in forwards:
                    check_family(fwd.guest_side, ipv6=ipv6)
            except Ipv6Off as exc:
                raise UsageError(f"{option} {spec}: the guest address {exc.address} is IPv6, "
                                 "and IPv6 is off (-6 turns it on)") from None
            found += forwards
    return tuple(found)


def _rules(ns: argparse.Namespace) -> tuple[Rule, ...]:
    """--deny and --allow rules; host names are resolved here, once, at start."""
    found: list[Rule] = []
    for action, specs in ((Action.DENY, ns.deny), (Action.ALLOW, ns.allow)):
        for spec in specs:
            try:
                found += parse_rules(action, spec, resolve_name)
            except RuleError as exc:
                raise UsageError(f"--{action.value} {spec}: {exc}") from None
    return tuple(found)


_resolved: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}


def resolve_name(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """A rule's host name, as the host's resolver knows it now: asked once per parse
    (a config file's setting is parsed alone first, to name its key in errors)."""
    if name not in _resolved:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):  # UnicodeError: idna refuses the name (a long label)
            infos = []
        _resolved[name] = list(dict.fromkeys(
            ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    return _resolved[name]


def _dns_ttl(text: str) -> float:
    try:
        ttl = float(text)
    except ValueError:
        ttl = -1.0
    if not 0 <= ttl <= MAX_DNS_TTL_S:
        raise UsageError(f"--dns-ttl must be a number of seconds from 0 to {MAX_DNS_TTL_S}, "
                         f"not {text}")
    return ttl


_Address = TypeVar("_Address", ipaddress.IPv4Address, ipaddress.IPv6Address)


def _outbound(text: str, kind: type[_Address]) -> _Address:
    """--outbound-addr[6]: an address, or the first address of the named interface."""
    version = kind(0).version  # 4 or 6
    option = "outbound-addr" if version == 4 else "outbound-addr6"
    wrong = UsageError(f"{option} has to be valid ipv{version} address or interface name.")
    try:
        return kind(text)
    except ValueError:
        pass  # not an address of this family: perhaps an interface name
    try:
        address = interface_address(check_tap_name(text), version)
    except (UsageError, LookupError):  # not an interface name, or no such interface
        raise wrong from None
    if not isinstance(address, kind):
        raise UsageError(f"interface {text} has no ipv{version} address")
    return address


def parse_mac(text: str) -> str:
    """--macaddress: six two-digit hex bytes separated by ':', and not multicast."""
    if not _MAC.fullmatch(text) or int(text[:2], 16) & _MAC_GROUP_BIT:
        raise UsageError(f"macaddress has to be a valid unicast MAC address (hex string, "
                         f"6 bytes, each byte separated by a ':'): {text}")
    return text.lower()


def _log_level(ns: argparse.Namespace) -> int:
    if ns.debug:
        return logging.DEBUG
    return logging.ERROR if ns.quiet else logging.INFO
