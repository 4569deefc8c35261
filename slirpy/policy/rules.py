"""The --allow/--deny grammar: a comma list of `[tcp|udp|icmp://]HOST[/PREFIX][:PORT[-PORT]]`.

    tcp://10.0.0.0/8:443           TCP to 10.0.0.0/8, port 443
    udp://[2001:db8::]/32:53       UDP to 2001:db8::/32 (`[2001:db8::/32]:53` is the same)
    icmp://192.0.2.1, 1.1.1.1      ICMP/ICMPv6 to one host; every protocol to another
    tcp://example.com:8000-8010    TCP to each address of the name, ports 8000 to 8010

Items are separated by commas (spaces around them are ignored). The protocol is tcp, udp
or icmp (ICMP and ICMPv6), any case; without one the rule covers every protocol. HOST is
an IPv4 address, an IPv6 address in brackets (the /PREFIX inside or after them), or a
host name made of letters, digits, '-' and '.': the injected resolver turns it into one
rule per address (/32 or /128); a name takes no prefix. A prefix must not leave host bits
set. PORT is 1-65535 or an inclusive range LO-HI; icmp takes no port, and a rule with a
port matches only protocols with ports (never ICMP). `0.0.0.0/0` and `[::/0]` match a
whole family (never the other); there is no bare `*`.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Callable
from typing import Final

from slirpy.addresses import IPNetwork, net_entry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[IPAddress]]

ICMP: Final = frozenset({1, 58})  # ICMP and ICMPv6
PROTOS: Final[dict[str, frozenset[int]]] = {
    "tcp": frozenset({6}), "udp": frozenset({17}), "icmp": ICMP}
_PROTO_NAMES: Final = {protos: name for name, protos in PROTOS.items()}
_NAME: Final = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")


class RuleError(ValueError):
    """A rule that does not parse or resolve; the message names the bad part."""


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One egress rule; *protos* None means every protocol, *ports* None every port."""

    action: Action
    protos: frozenset[int] | None
    network: IPNetwork
    ports: tuple[int, int] | None
    text: str
    _size: int = dataclasses.field(init=False, repr=False, compare=False)
    _net: int = dataclasses.field(init=False, repr=False, compare=False)
    _mask: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The precomputation NetSet uses, inlined below: a NetSet of one network costs
        # two more calls per match, and every rule is tried on every new flow.
        entry = net_entry(self.network)
        object.__setattr__(self, "_size", entry.size)
        object.__setattr__(self, "_net", entry.net)
        object.__setattr__(self, "_mask", entry.mask)

    def matches(self, proto: int, addr: bytes, port: int) -> bool:
        """Whether a new flow (IP protocol, packed destination, port) falls under this rule."""
        if len(addr) != self._size:
            return False
        if self.protos is not None and proto not in self.protos:
            return False
        if int.from_bytes(addr, "big") & self._mask != self._net:
            return False
        ports = self.ports
        # A port range narrows a rule to protocols with ports: never ICMP.
        return ports is None or (proto not in ICMP and ports[0] <= port <= ports[1])


def format_rule(rule: Rule) -> str:
    """The canonical text, defaults left out: `tcp://[2001:db8::]/32:80-90`."""
    text = "" if rule.protos is None else f"{_PROTO_NAMES[rule.protos]}://"
    net = rule.network
    addr = str(net.network_address)
    text += f"[{addr}]" if net.version == 6 else addr
    if net.prefixlen != net.max_prefixlen:
        text += f"/{net.prefixlen}"
    if rule.ports is not None:
        low, high = rule.ports
        text += f":{low}" if low == high else f":{low}-{high}"
    return text


def parse_rules(action: Action, text: str, resolve: Resolver | None = None) -> list[Rule]:
    """One --allow/--deny value: a comma list of [tcp|udp|icmp://]HOST[/PREFIX][:PORT[-PORT]]."""
    rules: list[Rule] = []
    for number, item in enumerate(text.split(","), 1):
        item = item.strip()
        if not item:
            raise RuleError(f"empty item {number} in {text!r}")
        rules.extend(_parse_item(action, item, resolve))
    return rules


def _parse_item(action: Action, item: str, resolve: Resolver | None) -> list[Rule]:
    proto_text, sep, rest = item.partition("://")
    protos: frozenset[int] | None = None
    if sep:
        if proto_text.lower() not in PROTOS:
            raise RuleError(f"unknown protocol {proto_text!r} in {item!r} (tcp, udp, icmp)")
        protos = PROTOS[proto_text.lower()]
    else:
        rest = item
        if bad := re.match(r"[A-Za-z]+:/", item):
            raise RuleError(f"bad protocol separator {bad.group()!r} in {item!r}: "
                            f"write {bad.group()[:-2]}://")
    host, prefix_text, port_text = _split(rest, item)
    ports = None
    if port_text is not None:
        if protos == ICMP:
            raise RuleError(f"icmp takes no port: {':' + port_text!r} in {item!r}")
        ports = _ports(port_text, item)
    addresses = _resolve(host, prefix_text, item, resolve)
    networks = [_network(addresses[0], prefix_text, item)] if prefix_text is not None else [
        ipaddress.ip_network(addr.packed) for addr in addresses]  # packed: no %zone
    return [Rule(action, protos, net, ports, item) for net in networks]


def _split(rest: str, item: str) -> tuple[str, str | None, str | None]:
    """HOST, PREFIX (or None) and PORT (or None) of *rest*, brackets removed."""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise RuleError(f"unclosed '[' in {item!r}")
        inside, after = rest[1:close], rest[close + 1:]
        if after and after[0] not in "/:":
            raise RuleError(f"unexpected {after!r} after ']' in {item!r}")
        host, slash, prefix = inside.partition("/")
        outer, colon, port = after.partition(":")
        if outer:
            if slash:
                raise RuleError(f"two prefixes in {item!r}")
            slash, prefix = "/", outer[1:]
        if not re.fullmatch(r"[0-9A-Fa-f:.]*", host):  # no names, no %zone
            raise RuleError(f"{host!r} in brackets is not an IP address, in {item!r}")
    else:
        if "[" in rest or "]" in rest:
            raise RuleError(f"misplaced bracket in {item!r}")
        if rest.count(":") > 1 and "." in rest.partition(":")[0]:
            raise RuleError(f"too many ':' in {item!r}")
        if rest.count(":") > 1:
            hint = f"[{rest}]" if re.fullmatch(r"[0-9A-Fa-f:.]+(/\d+)?", rest) else "[::1]:53"
            raise RuleError(f"the IPv6 address in {item!r} must be in brackets, as {hint}")
        hostpart, colon, port = rest.partition(":")
        host, slash, prefix = hostpart.partition("/")
    if not host:
        raise RuleError(f"missing host in {item!r}")
    return host, prefix if slash else None, port if colon else None


def _resolve(host: str, prefix: str | None, item: str, resolve: Resolver | None
             ) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        raise RuleError(f"bad IPv4 address {host!r} in {item!r}")
    if not _NAME.fullmatch(host):
        raise RuleError(f"bad host {host!r} in {item!r}: an IP address or a host name"
                        + (" (a bare '*' is not supported: use 0.0.0.0/0 and [::/0])"
                           if "*" in host else ""))
    if prefix is not None:
        raise RuleError(f"a host name takes no prefix: {host + '/' + prefix!r} in {item!r}")
    try:
        found = resolve(host) if resolve is not None else []
    except OSError as exc:
        raise RuleError(f"cannot resolve {host!r}: {exc}") from None
    if not found:
        raise RuleError(f"cannot resolve {host!r}"
                        + (": no addresses" if resolve is not None else ": no resolver"))
    return list(dict.fromkeys(found))  # getaddrinfo repeats an address per socket type


def _network(addr: IPAddress, prefix: str, item: str) -> IPNetwork:
    if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > addr.max_prefixlen:
        raise RuleError(f"bad prefix {'/' + prefix!r} in {item!r}: IPv{addr.version} "
                        f"prefixes are 0-{addr.max_prefixlen}")
    try:
        return ipaddress.ip_network(f"{addr}/{int(prefix)}")
    except ValueError:
        net = ipaddress.ip_network(f"{addr}/{int(prefix)}", strict=False)
        mean = f"[{net}]" if net.version == 6 else str(net)
        raise RuleError(f"{str(addr) + '/' + prefix!r} in {item!r} has host bits set: "
                        f"did you mean {mean}?") from None


def _ports(text: str, item: str) -> tuple[int, int]:
    if not text:
        raise RuleError(f"missing port after ':' in {item!r}")
    low_text, dash, high_text = text.partition("-")
    bounds = []
    for part in (low_text, high_text) if dash else (low_text,):
        if not part:
            raise RuleError(f"bad port range {text!r} in {item!r}: a bound is missing")
        if not (part.isascii() and part.isdigit()) or not 1 <= int(part) <= 65535:
            raise RuleError(f"bad port {part!r} in {item!r}: ports are 1-65535")
        bounds.append(int(part))
    if bounds[0] > bounds[-1]:
        raise RuleError(f"bad port range {text!r} in {item!r}: the first port is above "
                        f"the last")
    return bounds[0], bounds[-1]
