"""--config FILE.yaml: the command line's settings as a YAML mapping.

Keys are the long option names (`mtu`, `disable-host-loopback`, `local-forward`...;
`_` works for `-`). Switches take true/false, repeatable options a list (or one
string), the rest a scalar. The file's settings become option tokens placed before
the command line's, so a flag given on the command line wins (repeatable options add
up; the host-loopback, IPv6, sandbox and seccomp pairs are taken from the command line
when it names either).
An unknown key, a value of the wrong type or a value the option refuses is an error
naming the file and the key.

    # slirpy.yaml
    mtu: 65520
    enable-ipv6: true
    cidr6: fd00:1::/64
    disable-host-loopback: true
    api-socket: /run/user/1000/slirpy.sock
    enable-sandbox: true
    max-flows: 2048
    local-forward:
      - 8080:80
      - udp://5353:53
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import yaml

from slirpy.errors import UsageError

SWITCHES: Final = frozenset({"disable-host-loopback", "enable-host-loopback", "disable-dns",
                             "debug", "quiet", "configure", "enable-ipv6", "disable-ipv6",
                             "restrict", "enable-routing", "enable-host", "enable-sandbox",
                             "disable-sandbox", "enable-seccomp", "disable-seccomp"})
REPEATABLE: Final = frozenset({"local-forward", "remote-forward", "allow", "deny"})
VALUES: Final = frozenset({"mtu", "cidr", "cidr6", "outbound-addr", "outbound-addr6",
                           "api-socket", "dns-ttl", "exit-fd", "ready-fd", "netns-type",
                           "userns-path", "macaddress", "target-type", "max-flows",
                           "max-pending-connects", "name", "events", "pcap", "pcap-size",
                           "metrics"})
ATTACH_ONLY: Final = frozenset({"configure", "exit-fd", "ready-fd", "netns-type",
                                "userns-path", "macaddress", "target-type"})
_EXCLUSIVE: Final = (frozenset({"disable-host-loopback", "enable-host-loopback"}),
                     frozenset({"disable-ipv6", "enable-ipv6"}),
                     frozenset({"disable-sandbox", "enable-sandbox"}),
                     frozenset({"disable-seccomp", "enable-seccomp"}))
_SHORT_FLAGS: Final = {"6": "enable-ipv6", "c": "configure"}
_SHORT_VALUES: Final = {"m": "mtu", "a": "api-socket", "e": "exit-fd", "r": "ready-fd",
                        "L": "local-forward", "R": "remote-forward"}


class _Loader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers: `2222:22` and a MAC address stay strings."""


_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+"
                                                 r"(?:[eE][-+]?[0-9]+)?$"),
                              list("-+.0123456789"))


def load_tokens(path: str, cli: list[str], *, run: bool,
                check: Callable[[list[str], bool], None]) -> list[str]:
    """Option tokens for the settings in *path*; *check* parses one setting's tokens
    (raising UsageError), so a bad value is reported with its key."""
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.load(file, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"--config {path}: not valid YAML{line}") from None
    if document is None:
        return []
    if not isinstance(document, dict):
        raise UsageError(f"--config {path}: the file must be a mapping of settings")
    given = _named_on_command_line(cli)
    tokens: list[str] = []
    for raw_key, value in document.items():
        key = str(raw_key).replace("_", "-")
        if key not in SWITCHES | REPEATABLE | VALUES or (run and key in ATTACH_ONLY):
            raise UsageError(f"--config {path}: unknown key '{raw_key}'")
        if any(key in pair and given & pair for pair in _EXCLUSIVE):
            continue  # the command line decides
        setting = _tokens(path, str(raw_key), key, value)
        try:
            check(setting, run)
        except UsageError as exc:
            raise UsageError(f"--config {path}: key '{raw_key}': {exc}") from None
        tokens += setting
    return tokens


def _tokens(path: str, raw_key: str, key: str, value: object) -> list[str]:
    bad = f"--config {path}: key '{raw_key}':"
    option = f"--{key}"
    if key in SWITCHES:
        if not isinstance(value, bool):
            raise UsageError(f"{bad} must be true or false")
        return [option] if value else []
    if key in REPEATABLE:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str | int) and not isinstance(item, bool)
                   for item in items):
            kind = "rule" if key in ("allow", "deny") else "forward spec"
            raise UsageError(f"{bad} must be a {kind} or a list of them")
        return [token for item in items for token in (option, str(item))]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{bad} must be a single value")
    return [f"{option}={value}"]


def _named_on_command_line(cli: list[str]) -> set[str]:
    named = set()
    for arg in cli:
        if arg == "--":
            break
        if arg.startswith("--"):
            named.add(arg.split("=", 1)[0][2:])
        elif arg.startswith("-"):  # short options, clustered as getopt allows: -c6, -6m1400
            for char in arg[1:]:
                if char in _SHORT_FLAGS:
                    named.add(_SHORT_FLAGS[char])
                    continue
                if char in _SHORT_VALUES:
                    named.add(_SHORT_VALUES[char])
                break  # the rest of the token is this option's value (or unknown)
    return named
