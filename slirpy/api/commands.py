"""The control socket's requests: the slirp4netns JSON API exactly, then slirpy's own.

One request per connection, `{"execute": NAME, "arguments": {...}}`. slirp4netns's
three commands answer byte for byte as slirp4netns 1.2 does (tools compare replies and
error texts): `add_hostfwd` -> `{"return":{"id":N}}`, `list_hostfwd` ->
`{"entries":[...]}` (no "return" wrapper: slirp4netns sends none), `remove_hostfwd` ->
`{"return":{}}`, errors `{"error":{"desc":"bad request: ..."}}`. Where slirp4netns
crashes (no "proto" at all) or misreads (a port of 70000 truncated), slirpy answers
with the error slirp4netns gives for that field.

Beyond slirp4netns 1.2 (which refuses any IPv6 address there): `add_hostfwd`'s
host_addr and guest_addr may each be IPv6 (`::1`, `fd00::100`), in either mix of
families; an IPv6 guest_addr needs IPv6 on, or the reply says `bad
arguments.guest_addr: IPv6 is off (...)`. list_hostfwd shows IPv6 addresses in their
compressed form. Every IPv4 request is answered as before, byte for byte.

slirpy's own commands use the same envelope:
    add_forward     {"kind": "local"|"remote", "spec": SPEC}   -> {"return":{"ids":[...]}}
    list_forwards                                              -> {"return":{"forwards":[...]}}
    remove_forward  {"id": N}                                  -> {"return":{}}
    list_flows                                                 -> {"return":{"flows":[...]}}
    counters                                                   -> {"return":{...}}
    metrics                     -> {"return":{"text": "<Prometheus text exposition>"}}
    add_rule        {"action": "allow"|"deny", "spec": RULES}  -> {"return":{"ids":[...]}}
    list_rules                 -> {"return":{"rules":[{"id","action","rule"}...], "routing",
                                             "host", "host_loopback"}}
    remove_rule     {"id": N}                                  -> {"return":{}}
    pcap_start      {"path": P} or {"fd": true} + one fd (SCM_RIGHTS) -> {"return":{"path": P|"fd"}}
    pcap_stop                   -> {"return":{"frames": N, "bytes": N[, "stopped": WHY]}}
    subscribe       -> {"return":{"schema":1}} then one event a line, until the client closes
slirpy's own names may be written with "-" for "_" (`pcap-start`); slirp4netns's three
are taken only as slirp4netns spells them.
Rules take effect for flows started from then on; host names are resolved at start only
(a request with one is refused: the loop never waits on a resolver).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Final, Protocol

from slirpy.addresses import Network
from slirpy.control import Ipv6Off, check_family
from slirpy.forward.spec import (MAX_PORT, Forward, ForwardError, IPAddress, Kind, LocalForward,
                                 Proto, parse_forward)
from slirpy.observe.events import Subscription
from slirpy.observe.pcap import CaptureError
from slirpy.policy.rules import Action, Rule, RuleError, format_rule, parse_rules

MAX_REQUEST: Final = 4096  # slirp4netns's buffer: a request this long is "too large"
INT_LIMIT: Final = 2**31  # slirp4netns reads numbers into a C int
IPV6_OFF: Final = "IPv6 is off (slirpy -6 turns it on)"
SLIRP4NETNS_COMMANDS: Final = frozenset({"add_hostfwd", "list_hostfwd", "remove_hostfwd"})


class Controller(Protocol):
    """What the API drives: the runtime's forwards and the stack's state."""

    def add_forward(self, fwd: Forward, origin: str) -> tuple[int, Forward]:
        """Add and start *fwd*; its id and the forward as bound. Raises OSError or
        ForwardError with a reason. *origin*: "hostfwd", "api" or "config"."""
        ...

    def remove_forward(self, forward_id: int) -> Forward | None: ...

    def list_forwards(self) -> list[tuple[int, Forward, str]]:
        """(id, forward, origin) with origin "hostfwd" for add_hostfwd's."""
        ...

    def list_flows(self) -> list[dict[str, Any]]: ...

    def counters(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str:
        """The counters and the process's CPU and memory, as Prometheus text."""
        ...

    def add_rule(self, rule: Rule) -> int: ...

    def remove_rule(self, rule_id: int) -> Rule | None: ...

    def list_rules(self) -> list[tuple[int, Rule]]: ...

    def posture(self) -> dict[str, bool]:
        """routing, host, host_loopback: what passes when no rule matches."""
        ...

    def pcap_start(self, path: str | None, fd: int | None) -> str:
        """Capture to *path*, or to *fd* (taken over, closed if refused): "fd" or the path.
        Raises CaptureError with the reason (one running already, a path not writable)."""
        ...

    def pcap_stop(self) -> dict[str, Any] | None:
        """The capture's frames and bytes (and why, if it stopped on its own); None if
        none was started."""
        ...

    def subscribe(self) -> Subscription | None:
        """A new event stream for this connection; None if too many listen already."""
        ...


def _no_names(name: str) -> list[IPAddress]:
    raise RuleError(f"host name {name!r}: names are resolved at start only; give addresses")


def _dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def error(desc: str) -> bytes:
    return _dump({"error": {"desc": f"bad request: {desc}"}})


TOO_LARGE: Final = error("too large message")


class Api:
    """*ipv6*: whether the guest has IPv6 (Config.ipv6); forwards to an IPv6 guest
    address are refused without it."""

    def __init__(self, controller: Controller, network: Network, *, ipv6: bool = False) -> None:
        self.ctl = controller
        self.network = network
        self.ipv6 = ipv6

    def handle(self, request: bytes, fds: list[int] | None = None) -> bytes | Subscription:
        """The reply to one request (the bytes read before EOF, under MAX_REQUEST).

        *fds*: passed with it (SCM_RIGHTS); the handler takes one over by removing it from
        the list, the server closes the rest."""
        fds = [] if fds is None else fds
        try:
            value = json.loads(request.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return error("cannot parse JSON")
        if not isinstance(value, dict):
            return error("json_object() failed")
        execute = value.get("execute")
        if not isinstance(execute, str):
            return error("no execute found")
        arguments = value.get("arguments")
        args: dict[str, Any] = arguments if isinstance(arguments, dict) else {}
        if "-" in execute and execute.replace("-", "_") not in SLIRP4NETNS_COMMANDS:
            execute = execute.replace("-", "_")  # slirpy's own: pcap-start is pcap_start
        match execute:
            case "add_hostfwd":
                return self._add_hostfwd(args)
            case "list_hostfwd":
                return self._list_hostfwd()
            case "remove_hostfwd":
                return self._remove_hostfwd(args)
            case "add_forward":
                return self._add_forward(args)
            case "list_forwards":
                return self._list_forwards()
            case "remove_forward":
                return self._remove_forward(args)
            case "list_flows":
                return _dump({"return": {"flows": self.ctl.list_flows()}})
            case "counters":
                return _dump({"return": self.ctl.counters()})
            case "metrics":
                return _dump({"return": {"text": self.ctl.metrics_text()}})
            case "add_rule":
                return self._add_rule(args)
            case "list_rules":
                return _dump({"return": {"rules": [
                    {"id": rule_id, "action": rule.action.value, "rule": format_rule(rule)}
                    for rule_id, rule in self.ctl.list_rules()], **self.ctl.posture()}})
            case "remove_rule":
                rule_id = _number(args.get("id"))
                if rule_id is None or self.ctl.remove_rule(rule_id) is None:
                    return error("remove_rule: bad arguments.id")
                return _dump({"return": {}})
            case "pcap_start":
                return self._pcap_start(args, fds)
            case "pcap_stop":
                counts = self.ctl.pcap_stop()
                if counts is None:
                    return error("pcap_stop: no capture was started")
                return _dump({"return": counts})
            case "subscribe":
                subscription = self.ctl.subscribe()
                if subscription is None:
                    return error("subscribe: too many subscribers")
                return subscription
            case _:
                return error("unknown execute")

    # --- slirp4netns ------------------------------------------------------------------------

    def _add_hostfwd(self, args: dict[str, Any]) -> bytes:
        proto = args.get("proto")
        if proto not in ("tcp", "udp"):
            return error("add_hostfwd: bad arguments.proto")
        host_addr = _address(args.get("host_addr"), "0.0.0.0")
        if host_addr is None:
            return error("add_hostfwd: bad arguments.host_addr")
        host_port = _port(args.get("host_port"))
        if host_port is None:
            return error("add_hostfwd: bad arguments.host_port")
        guest_addr = _address(args.get("guest_addr"), str(self.network.guest))
        if guest_addr is None or isinstance(guest_addr, ipaddress.IPv6Address) and (
                guest_addr.scope_id is not None or guest_addr.ipv4_mapped is not None):
            return error("add_hostfwd: bad arguments.guest_addr")  # no guest has those
        try:  # before guest_port: slirp4netns reports the fields in this order
            check_family(guest_addr, ipv6=self.ipv6)
        except Ipv6Off:
            return error(f"add_hostfwd: bad arguments.guest_addr: {IPV6_OFF}")
        guest_port = _port(args.get("guest_port"))
        if guest_port is None:
            return error("add_hostfwd: bad arguments.guest_port")
        fwd = LocalForward(Proto(proto), host_addr, host_port, guest_addr, guest_port)
        try:
            forward_id, _ = self.ctl.add_forward(fwd, "hostfwd")
        except (OSError, ForwardError):
            return error("add_hostfwd: slirp_add_hostfwd failed")
        return _dump({"return": {"id": forward_id}})

    def _list_hostfwd(self) -> bytes:
        entries = [{"id": forward_id, "proto": fwd.proto.value, "host_addr": str(fwd.bind),
                    "host_port": fwd.bind_port, "guest_addr": str(fwd.target),
                    "guest_port": fwd.target_port}
                   for forward_id, fwd, origin in self.ctl.list_forwards()
                   if origin == "hostfwd"]
        return _dump({"entries": entries})

    def _remove_hostfwd(self, args: dict[str, Any]) -> bytes:
        forward_id = _number(args.get("id"))
        hostfwds = {i for i, _, origin in self.ctl.list_forwards() if origin == "hostfwd"}
        if forward_id is None or forward_id not in hostfwds:
            return error("remove_hostfwd: bad arguments.id")
        self.ctl.remove_forward(forward_id)
        return _dump({"return": {}})

    # --- slirpy's own -----------------------------------------------------------------------

    def _add_forward(self, args: dict[str, Any]) -> bytes:
        kind_text, spec = args.get("kind"), args.get("spec")
        if kind_text not in ("local", "remote"):
            return error("add_forward: arguments.kind must be \"local\" or \"remote\"")
        if not isinstance(spec, str):
            return error("add_forward: arguments.spec must be a forward spec string")
        try:
            forwards = parse_forward(Kind(kind_text), spec, guest=self.network.guest,
                                     gateway=self.network.gateway)
        except ForwardError as exc:
            return error(f"add_forward: {exc}")
        try:  # before any is added: all of a range, or none of it
            for fwd in forwards:
                check_family(fwd.guest_side, ipv6=self.ipv6)
        except Ipv6Off as exc:
            return error(f"add_forward: the guest address {exc.address} is IPv6: {IPV6_OFF}")
        added: list[int] = []
        for fwd in forwards:
            try:
                forward_id, _ = self.ctl.add_forward(fwd, "api")
            except (OSError, ForwardError) as exc:
                for forward_id in added:  # all of a range, or none of it
                    self.ctl.remove_forward(forward_id)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                return _dump({"error": {"desc": f"add_forward: {fwd.spec()}: {reason}"}})
            added.append(forward_id)
        return _dump({"return": {"ids": added}})

    def _add_rule(self, args: dict[str, Any]) -> bytes:
        action, spec = args.get("action"), args.get("spec")
        if action not in ("allow", "deny"):
            return error("add_rule: arguments.action must be \"allow\" or \"deny\"")
        if not isinstance(spec, str):
            return error("add_rule: arguments.spec must be a rule string")
        try:
            rules = parse_rules(Action(action), spec, _no_names)
        except RuleError as exc:
            return error(f"add_rule: {exc}")
        return _dump({"return": {"ids": [self.ctl.add_rule(rule) for rule in rules]}})

    def _pcap_start(self, args: dict[str, Any], fds: list[int]) -> bytes:
        path, by_fd = args.get("path"), args.get("fd")
        fd: int | None = None
        if by_fd is True:
            if len(fds) != 1:
                return error(f"pcap_start: arguments.fd: pass one fd with the request "
                             f"(SCM_RIGHTS), not {len(fds)}")
            fd = fds.pop()  # ours now, whatever happens
        elif not (isinstance(path, str) and path):
            return error("pcap_start: arguments.path must be a file name, or arguments.fd "
                         "true with one fd passed")
        try:
            started = self.ctl.pcap_start(None if fd is not None else path, fd)
        except CaptureError as exc:
            return error(f"pcap_start: {exc}")
        return _dump({"return": {"path": started}})

    def _list_forwards(self) -> bytes:
        return _dump({"return": {"forwards": [
            {"id": forward_id, "kind": fwd.kind.value, "spec": fwd.spec(), "origin": origin}
            for forward_id, fwd, origin in self.ctl.list_forwards()]}})

    def _remove_forward(self, args: dict[str, Any]) -> bytes:
        forward_id = _number(args.get("id"))
        if forward_id is None or self.ctl.remove_forward(forward_id) is None:
            return error("remove_forward: bad arguments.id")
        return _dump({"return": {}})


def _address(value: object, default: str) -> IPAddress | None:
    """An IPv4 address as slirp4netns reads it (inet_pton), or else an IPv6 address."""
    if value is None or value == "":
        value = default
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        pass
    try:
        return ipaddress.IPv6Address(value)
    except ValueError:
        return None


def _number(value: object) -> int | None:
    """A JSON number as slirp4netns reads it: (int) of a double; anything else, None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or abs(value) > INT_LIMIT:  # NaN, or beyond an int
        return None
    return int(value)


def _port(value: object) -> int | None:
    port = _number(value)
    return port if port is not None and 0 < port <= MAX_PORT else None
