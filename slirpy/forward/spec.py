"""The -L/-R forward grammar: `[proto://][bind_ip:]bind_port[:ip:port]`, ranges expanded.

    -L/--local-forward   host -> guest: slirpy listens on the host at bind_ip:bind_port
                         (default 127.0.0.1) and opens each connection to the guest at
                         ip:port (default the guest address, network + 100, and bind_port).
    -R/--remote-forward  guest -> host: slirpy answers inside the guest at bind_ip:bind_port
                         (default the gateway) and connects each flow to ip:port on the
                         host (default 127.0.0.1 and bind_port).

The address:port pairs are split on ':' outside brackets (as slirpnetstack does), so an
IPv6 address is written `[::1]`. Forms with two or three parts are told apart by whether
the first part is an address: `8080:80` is bind_port:port, `127.0.0.1:8080` is
bind_ip:bind_port, `8080:10.0.2.100:80` is bind_port:ip:port. Ports may be ranges of
the same length on both sides (`8000-8010:9000-9010`); each port becomes one forward.

A remote forward's target may be `[NAME@srv-DNSSERVER[:PORT]]` (the brackets may be left
out when a target port follows: `8080:NAME@srv-192.0.2.53:53:0`): the SRV record NAME,
asked of DNSSERVER when a flow starts (cached), names the host and port; a target port
of 0 takes the port from the record (the port part must be given: `8080:[...]:0`).

Protocols: tcp (default), udp, and for local forwards tcppp (the client starts with a
PROXY protocol v1/v2 header naming the real client; a guest port of 0 takes the
destination port from that header), udpspp (every datagram carries the 38-byte "simple
proxy protocol" header), udprpc (a UDP flow ends after the guest's first reply).

A parsed spec is one forward per port, of the type that says which way it goes:
`LocalForward` (its target an address in the guest's network), `RemoteForward` (its
target an address on the host) or `SrvForward` (its target an SRV name, looked up per
flow); `Forward` is any of them. All three have the fields the API, the command line and
the log use (`kind`, `proto`, `bind`, `bind_port`, `target`, `target_port`), their
`transport`, their address in the guest's network (`guest_side`) and their canonical
`spec()` text. Checking a forward against the running stack (IPv6 off, a guest address
and port taken) is slirpy.control's; this module only parses and prints.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Final, TypeAlias

from slirpy.addresses import LOOPBACK4
from slirpy.wire.dns import DNS_PORT, TYPE_SRV, build_query

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_RANGE: Final = 1024  # ports in one spec: each is a socket
MAX_PORT: Final = 65535
LOOPBACK: Final = ipaddress.IPv4Address(LOOPBACK4)  # a local forward's bind, a remote's target
SRV_MARK: Final = "@srv-"  # NAME@srv-DNSSERVER[:PORT]
PROTO_SEP: Final = "://"


class ForwardError(ValueError):
    """A spec that does not parse; the message names the bad part."""


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    TCPPP = "tcppp"
    UDPSPP = "udpspp"
    UDPRPC = "udprpc"

    @property
    def transport(self) -> str:
        return "tcp" if self in (Proto.TCP, Proto.TCPPP) else "udp"


REMOTE_PROTOS: Final = frozenset({Proto.TCP, Proto.UDP})


class Kind(enum.StrEnum):
    LOCAL = "local"
    REMOTE = "remote"


@dataclasses.dataclass(frozen=True, slots=True)
class SrvName:
    """A target to look up: the SRV record *name* at the DNS server *server*:*port*."""

    name: str
    server: IPAddress
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.name}@srv-{_host(self.server)}:{self.port}]"


def _spec(proto: Proto, bind: IPAddress, bind_port: int, target: str, target_port: int) -> str:
    """A forward's canonical spec text: parses back to the same forward."""
    return f"{proto}://{_host(bind)}:{bind_port}:{target}:{target_port}"


# The three kinds of forward are plain frozen dataclasses with the same fields in the
# same order and the same read-only properties (`kind`, `transport`, `guest_side`) and
# `spec()`; `Forward` is any of them. No shared base class: a dataclass over an
# annotated base (with a ClassVar `kind`) is one the compiled build (mypyc) mis-builds.


@dataclasses.dataclass(frozen=True, slots=True)
class LocalForward:
    """-L, host -> guest: slirpy listens at *bind*:*bind_port* on the host and takes each
    client on to *target*:*target_port*, an address in the guest's network (a port of
    0: the one a tcppp client's PROXY header names)."""

    proto: Proto
    bind: IPAddress
    bind_port: int
    target: IPAddress
    target_port: int

    @property
    def kind(self) -> Kind:
        return Kind.LOCAL

    @property
    def transport(self) -> str:
        return self.proto.transport

    @property
    def guest_side(self) -> IPAddress:
        """The forward's address inside the guest's network: its target."""
        return self.target

    def spec(self) -> str:
        return _spec(self.proto, self.bind, self.bind_port, _host(self.target),
                     self.target_port)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteForward:
    """-R, guest -> host: slirpy answers at *bind*:*bind_port* in the guest's network
    and connects each flow to *target*:*target_port* on the host."""

    proto: Proto
    bind: IPAddress
    bind_port: int
    target: IPAddress
    target_port: int

    @property
    def kind(self) -> Kind:
        return Kind.REMOTE

    @property
    def transport(self) -> str:
        return self.proto.transport

    @property
    def guest_side(self) -> IPAddress:
        """The forward's address inside the guest's network: where it answers."""
        return self.bind

    def spec(self) -> str:
        return _spec(self.proto, self.bind, self.bind_port, _host(self.target),
                     self.target_port)


@dataclasses.dataclass(frozen=True, slots=True)
class SrvForward:
    """-R to an SRV name (RFC 2782): as RemoteForward, but each flow waits for the
    record *target* to name the host and port to connect to (a *target_port* of 0:
    the record's port)."""

    proto: Proto
    bind: IPAddress
    bind_port: int
    target: SrvName
    target_port: int

    @property
    def kind(self) -> Kind:
        return Kind.REMOTE

    @property
    def transport(self) -> str:
        return self.proto.transport

    @property
    def guest_side(self) -> IPAddress:
        """The forward's address inside the guest's network: where it answers."""
        return self.bind

    def spec(self) -> str:
        return _spec(self.proto, self.bind, self.bind_port, str(self.target),
                     self.target_port)


Forward: TypeAlias = LocalForward | RemoteForward | SrvForward


def _host(addr: IPAddress) -> str:
    return f"[{addr}]" if isinstance(addr, ipaddress.IPv6Address) else str(addr)


def split_parts(text: str) -> list[str]:
    """Split on ':' outside brackets; one level of brackets is removed."""
    parts: list[str] = []
    part: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            if depth:
                part.append(char)
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ForwardError(f"unbalanced ']' in {text!r}")
            if depth:
                part.append(char)
        elif char == ":" and depth == 0:
            parts.append("".join(part))
            part = []
        else:
            part.append(char)
    if depth:
        raise ForwardError(f"unbalanced '[' in {text!r}")
    parts.append("".join(part))
    return parts


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_ports(text: str, what: str, *, zero_ok: bool) -> range:
    """A port or a range `A-B` (inclusive)."""
    low_text, dash, high_text = text.partition("-")
    bounds = []
    for part in (low_text, high_text) if dash else (low_text,):
        if not part.isdigit() or not part.isascii() or int(part) > MAX_PORT:
            raise ForwardError(f"{what} must be a port number 0-{MAX_PORT} or a range, not "
                               f"{text!r}")
        bounds.append(int(part))
    low, high = bounds[0], bounds[-1]
    if high < low:
        raise ForwardError(f"{what} range {text!r} ends before it starts")
    if low == 0 and (dash or not zero_ok):
        raise ForwardError(f"{what} 0 is not allowed here")
    if high - low + 1 > MAX_RANGE:
        raise ForwardError(f"{what} range {text!r} is longer than {MAX_RANGE} ports")
    return range(low, high + 1)


def _address(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ForwardError(f"{what} is not an IP address: {text!r}") from None


def _srv(text: str) -> SrvName:
    name, _, server = text.partition(SRV_MARK)
    if not name or not server:
        raise ForwardError(f"an SRV target is NAME@srv-DNSSERVER[:PORT], not {text!r}")
    parts = split_parts(server)
    if len(parts) > 2:
        raise ForwardError(f"bad DNS server in SRV target {text!r}")
    address = _address(parts[0], "the SRV DNS server")
    port = DNS_PORT
    if len(parts) == 2:
        ports = parse_ports(parts[1], "the SRV DNS server port", zero_ok=False)
        if len(ports) != 1:
            raise ForwardError(f"the SRV DNS server port must be one port, not {parts[1]!r}")
        port = ports[0]
    try:
        build_query(0, name, TYPE_SRV)  # the very check the query will pass
    except ValueError as exc:
        raise ForwardError(f"bad SRV name {name!r}: {exc}") from None
    return SrvName(name.rstrip(".").lower(), address, port)


def _join_srv_server_port(parts: list[str]) -> list[str]:
    """`NAME@srv-SERVER:PORT` written without brackets: its PORT is the part after it
    when a target port still follows (`8080:NAME@srv-192.0.2.53:53:0`)."""
    for i, part in enumerate(parts):
        if SRV_MARK in part and i + 2 < len(parts) and ":" not in part:
            return [*parts[:i], f"{part}:{parts[i + 1]}", *parts[i + 2:]]
    return parts


def parse_forward(kind: Kind, text: str, *, guest: IPAddress, gateway: IPAddress) -> list[Forward]:
    """Parse one -L/-R spec; *guest* and *gateway* are the network's defaults."""
    proto_text, sep, rest = text.partition(PROTO_SEP)
    if not sep:
        proto_text, rest = Proto.TCP, text
    try:
        proto = Proto(proto_text)
    except ValueError:
        raise ForwardError(f"unknown protocol {proto_text!r} (tcp, udp, tcppp, udpspp, "
                           f"udprpc)") from None
    if kind is Kind.REMOTE and proto not in REMOTE_PROTOS:
        raise ForwardError(f"protocol {proto} is for local forwards only")
    parts = _join_srv_server_port(split_parts(rest))
    bind_text: str | None = None
    target_text: str | None = None
    target_ports_text: str | None = None
    match parts:
        case [bind_ports_text]:
            pass
        case [first, second] if _is_address(first):
            bind_text, bind_ports_text = first, second
        case [bind_ports_text, target_ports_text]:
            pass
        case [first, second, third] if _is_address(first):
            bind_text, bind_ports_text, target_ports_text = first, second, third
        case [bind_ports_text, target_text, target_ports_text]:
            pass
        case [bind_text, bind_ports_text, target_text, target_ports_text]:
            pass
        case _:
            raise ForwardError(f"too many ':' parts in {text!r}: "
                               f"[proto://][bind_ip:]bind_port[:ip:port]")
    local = kind is Kind.LOCAL
    what = "bind port"
    bind_ports = parse_ports(bind_ports_text, what, zero_ok=local)
    if bind_text is not None and bind_text != "":
        bind = _address(bind_text, "bind address")
    else:
        bind = LOOPBACK if local else gateway
    srv: SrvName | None = None  # an SRV target, else the address below
    address = guest if local else LOOPBACK
    if target_text and SRV_MARK in target_text:
        if local:
            raise ForwardError("SRV targets are for remote forwards only")
        srv = _srv(target_text)
    elif target_text:
        address = _address(target_text, "target address")
    port_zero_ok = srv is not None or proto is Proto.TCPPP
    if target_ports_text is None or target_ports_text == "":
        target_ports = range(0, 1) if srv is not None else bind_ports
    else:
        target_ports = parse_ports(target_ports_text, "target port", zero_ok=port_zero_ok)
    if target_ports == range(0, 1) and bind_ports.start == 0:
        raise ForwardError("bind port 0 needs an explicit target port")
    if target_ports == range(0, 1):
        target_ports = range(0, 0)  # one 0 for each bind port, below
    elif len(target_ports) != len(bind_ports):
        raise ForwardError(f"port ranges differ in length: {bind_ports_text} and "
                           f"{target_ports_text}")
    forwards: list[Forward] = []
    for i, port in enumerate(bind_ports):
        target_port = target_ports[i] if len(target_ports) else 0
        if srv is not None:
            forwards.append(SrvForward(proto, bind, port, srv, target_port))
        elif local:
            forwards.append(LocalForward(proto, bind, port, address, target_port))
        else:
            forwards.append(RemoteForward(proto, bind, port, address, target_port))
    return forwards
