"""`slirpy ctl`: the control socket for people, and for scripts with --json.

Each command is one request on one connection to a running slirpy's API socket
(slirpy.api.commands), answered as a table or a few lines, or as the raw reply with
--json. `events` keeps its connection open (`subscribe`); `watch` asks for the flows and
the counters once a second and shows rates from the difference between two answers.
The socket is -a PATH, or found in the registry (slirpy.observe.registry) by --name or
--pid, or is the only registered live instance. Every failure ends as one line on
stderr and a non-zero status: 2 for a usage mistake, 1 for anything else (no socket,
a refused command, a lost connection).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import json
import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Final, NoReturn

from slirpy.errors import SetupError, SlirpyError, UsageError
from slirpy.observe import registry

REQUEST_TIMEOUT_S: Final = 10.0
WATCH_INTERVAL_S: Final = 1.0

CTL_HELP: Final = """\
Usage: slirpy ctl [-a PATH | --name NAME | --pid PID] [--json] COMMAND [ARG]...
Talk to a running slirpy through its API socket.

-a, --api-socket=PATH    the API socket to use
--name=NAME              the slirpy started with --name NAME
--pid=PID                the slirpy with this process id
                         (default: the only running slirpy that registered a socket)
--json                   print the raw JSON reply (events: one event per line)
-h, --help               show this help and exit

Commands:
  forwards               list the forwards
  add-forward [--remote] SPEC
                         add a local forward (-L SPEC), or a remote one (-R SPEC)
  remove-forward ID      remove a forward
  flows [--sort=KEY] [--reverse]
                         list the flows; KEY: bytes, age, proto (default), remote
  rules                  list the egress rules and what passes when none matches
  add-rule allow|deny SPEC
                         add a rule as slirpy's allow or deny options take it
                         (addresses only: names are resolved at start)
  remove-rule ID         remove a rule
  counters               frames, bytes, drops, blocked flows, flows by protocol
  events                 follow the event stream until Ctrl-C
  watch [--once | --count=N] [--interval=SECONDS]
                         a live view of rates per flow, top talkers, drops; q quits
  pcap-start FILE        capture the guest link to FILE (opened here, with your rights)
  pcap-stop              stop the capture
  metrics                the Prometheus metrics, as text
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (UsageError) and no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class Refused(SlirpyError):
    """slirpy answered with an error: *raw*, the reply (--json prints it)."""

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


# --- talking to slirpy --------------------------------------------------------------------

@dataclasses.dataclass
class Reply:
    raw: bytes
    value: dict[str, Any]

    @property
    def result(self) -> Any:
        return self.value.get("return", {})


class Client:
    """One request per connection to the API socket at *path*."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(REQUEST_TIMEOUT_S)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise SetupError(_connect_error(self.path, exc)) from None
        return sock

    def request(self, execute: str, arguments: dict[str, Any] | None = None, *,
                fds: tuple[int, ...] = ()) -> Reply:
        """Send one request (with *fds* by SCM_RIGHTS); the reply. Refused on an error."""
        message: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        data = json.dumps(message).encode()
        with self._connect() as sock:
            try:
                if fds:
                    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", fds))])
                else:
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            except TimeoutError:
                raise SetupError(f"slirpy at {self.path} did not answer in "
                                 f"{REQUEST_TIMEOUT_S:g} s") from None
            except OSError as exc:
                raise SetupError(f"lost the connection to slirpy at {self.path}: "
                                 f"{exc.strerror or exc}") from None
        return _decode(raw, self.path, execute)

    def subscribe(self) -> Iterator[bytes]:
        """The event stream's lines (the first, the reply, checked and not yielded)."""
        with self._connect() as sock:
            # No half-close: the end of our side would end the subscription.
            sock.sendall(json.dumps({"execute": "subscribe"}).encode())
            sock.settimeout(None)
            reader = sock.makefile("rb")
            first = reader.readline()
            if not first:
                raise SetupError(f"slirpy at {self.path} closed the connection")
            _decode(first, self.path, "subscribe")
            yield from reader


def _connect_error(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no slirpy API socket at {path}: start slirpy with --api-socket"
    if isinstance(exc, ConnectionRefusedError):
        return f"no slirpy listens on {path}: a stale socket (slirpy has exited?)"
    if isinstance(exc, TimeoutError):
        return f"slirpy at {path} did not answer in {REQUEST_TIMEOUT_S:g} s"
    return f"{path}: {exc.strerror or exc}"


def _decode(raw: bytes, path: str, execute: str) -> Reply:
    try:
        value = json.loads(raw)
    except ValueError:
        raise SetupError(f"unreadable reply from {path}: {raw[:80]!r}") from None
    if not isinstance(value, dict):
        raise SetupError(f"unreadable reply from {path}: {raw[:80]!r}")
    error = value.get("error")
    if error is not None:
        desc = error.get("desc", "") if isinstance(error, dict) else str(error)
        if desc.endswith("unknown execute"):
            desc += f" (this slirpy has no {execute.replace('_', '-')} command)"
        raise Refused(f"refused: {desc}", raw)
    return Reply(raw, value)


# --- finding the socket -------------------------------------------------------------------

def socket_path(api_socket: str | None, name: str | None, pid: int | None) -> str:
    """-a PATH, or the registered --name or --pid, or the only live instance."""
    if api_socket is not None:
        return api_socket
    if name is not None:
        entry = registry.find(name=name)
        if entry is None:
            raise SetupError(f"no slirpy named {name} is running{_running()}")
        return entry.link
    if pid is not None:
        entry = registry.find(pid=pid)
        if entry is None:
            raise SetupError(f"no slirpy with pid {pid} registered an API socket{_running()}")
        return entry.link
    live = registry.instances()
    if not live:
        raise SetupError(f"no running slirpy found in {registry.directory_path()}: give "
                         "-a PATH, or start slirpy with --api-socket or --name")
    if len(live) > 1:
        raise SetupError(f"{len(live)} slirpy instances are running: "
                         f"{', '.join(entry.label() for entry in live)}; "
                         "choose one with --name or --pid")
    return live[0].link


def _running() -> str:
    live = registry.instances()
    return f" (running: {', '.join(entry.label() for entry in live)})" if live else ""


# --- formatting ---------------------------------------------------------------------------

def human_bytes(count: float) -> str:
    """1023 B, 1.5 KiB, 12 MiB: three significant digits at most."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_s: float) -> str:
    return f"{human_bytes(bytes_per_s)}/s"


def human_age(seconds: float) -> str:
    """15ms, 4.2s, 3m05s, 2h07m, 3d04h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns aligned to their widest cell; those in *right* (numbers) to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


SORT_KEYS: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    # the natural order of each: most bytes first, oldest first, then by name
    "bytes": lambda f: -(f.get("bytes_from_guest", 0) + f.get("bytes_to_guest", 0)),
    "age": lambda f: -f.get("age_s", 0),
    "proto": lambda f: (f.get("proto", ""), f.get("guest", ""), f.get("remote", "")),
    "remote": lambda f: (f.get("remote", ""), f.get("proto", ""), f.get("guest", "")),
}


def sort_flows(flows: list[dict[str, Any]], key: str = "proto",
               reverse: bool = False) -> list[dict[str, Any]]:
    return sorted(flows, key=SORT_KEYS[key], reverse=reverse)


FLOW_HEADER: Final = ["PROTO", "GUEST", "REMOTE", "STATE", "FROM GUEST", "TO GUEST", "AGE"]


def flow_row(flow: dict[str, Any]) -> list[str]:
    state = str(flow.get("state", "-"))
    if flow.get("forward") is not None:
        state += f" (fwd {flow['forward']})"
    return [str(flow.get("proto", "?")), str(flow.get("guest", "?")),
            str(flow.get("remote", "?")), state,
            human_bytes(flow.get("bytes_from_guest", 0)),
            human_bytes(flow.get("bytes_to_guest", 0)), human_age(flow.get("age_s", 0))]


def format_flows(flows: list[dict[str, Any]]) -> str:
    if not flows:
        return "no flows"
    return table(FLOW_HEADER, [flow_row(flow) for flow in flows], right=frozenset({4, 5, 6}))


def format_forwards(forwards: list[dict[str, Any]]) -> str:
    if not forwards:
        return "no forwards"
    return table(["ID", "KIND", "SPEC", "ORIGIN"],
                 [[str(f.get("id")), str(f.get("kind")), str(f.get("spec")),
                   str(f.get("origin"))] for f in forwards], right=frozenset({0}))


def format_rules(result: dict[str, Any]) -> str:
    rules = result.get("rules", [])
    lines = [table(["ID", "ACTION", "RULE"],
                   [[str(r.get("id")), str(r.get("action")), str(r.get("rule"))]
                    for r in rules], right=frozenset({0}))] if rules else ["no rules"]
    posture = [f"{key.replace('_', ' ')} {'on' if result[key] else 'off'}"
               for key in ("routing", "host", "host_loopback") if key in result]
    if posture:
        lines.append(f"when no rule matches: {', '.join(posture)}")
    return "\n".join(lines)


def _words(key: str) -> str:
    return key.replace("_", " ")


def format_counters(counters: dict[str, Any]) -> str:
    """One line per counter; a group as `name  a 1, b 2`, bytes and times for people."""
    rows: list[list[str]] = []
    for key, value in counters.items():
        label = _words(key.removesuffix("_s"))
        if key.endswith("_s") and isinstance(value, int | float):
            text = human_age(value)
        elif isinstance(value, dict):
            parts = [f"{_words(str(k))} {_counter_value(key, v)}" for k, v in value.items()]
            text = ", ".join(parts) if parts else "none"
        else:
            text = _counter_value(key, value)
        rows.append([label, text])
    width = max((len(row[0]) for row in rows), default=0)
    return "\n".join(f"{label.ljust(width)}  {text}" for label, text in rows)


def _counter_value(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if key == "bytes" and isinstance(value, int | float):
        return human_bytes(value)
    return str(value)


def endpoint(value: Any) -> str:
    """{"addr","port"} as addr:port ([addr]:port for IPv6); a string as it is."""
    if not isinstance(value, dict):
        return str(value)
    addr, port = str(value.get("addr", "?")), value.get("port")
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# Shown in their own form, or left out of the line for people (--json has them all).
_EVENT_SHOWN: Final = frozenset({"event", "time", "schema", "proto", "guest", "remote",
                                 "origin", "id", "bytes", "duration_s", "reason", "packets",
                                 "family"})


def format_event(event: dict[str, Any]) -> str:
    """One line for people: time (UTC), name, the flow's ends, then the other fields."""
    stamp = str(event.get("time", ""))
    if "T" in stamp:  # 2026-11-23T12:03:04.123456Z -> 12:03:04.123
        stamp = stamp.split("T", 1)[1].rstrip("Z")[:12]
    name = str(event.get("event", "?"))
    parts = [stamp, f"{name:<15}"] if stamp else [f"{name:<15}"]
    if "guest" in event or "remote" in event:
        arrow = "<-" if str(event.get("origin", "guest")).endswith("forward") else "->"
        ends = f"{endpoint(event.get('guest', '?'))} {arrow} {endpoint(event.get('remote', '?'))}"
        parts.append(f"{event.get('proto', '')} {ends}".strip())
    elif "proto" in event:
        parts.append(str(event["proto"]))
    if "id" in event:
        parts.append(f"#{event['id']}")
    if "reason" in event:
        parts.append(str(event["reason"]))
    traffic = event.get("bytes")
    if isinstance(traffic, dict):
        parts.append(f"from guest {human_bytes(traffic.get('from_guest', 0))}, "
                     f"to guest {human_bytes(traffic.get('to_guest', 0))}")
    if isinstance(event.get("duration_s"), int | float):
        parts.append(f"in {human_age(event['duration_s'])}")
    if event.get("origin") not in (None, "guest"):
        parts.append(f"via {event['origin']}")
    for key, value in event.items():
        if key in _EVENT_SHOWN or key == "origin" or value is None:
            continue
        shown = endpoint(value) if isinstance(value, dict) and "addr" in value else (
            json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list)
            else str(value))
        parts.append(f"{key}={shown}")
    return " ".join(parts)


# --- watch ------------------------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    when: float
    flows: list[dict[str, Any]]
    counters: dict[str, Any]


def flow_key(flow: dict[str, Any]) -> tuple[str, ...]:
    if "id" in flow:
        return (str(flow["id"]),)
    return (str(flow.get("proto")), str(flow.get("guest")), str(flow.get("remote")),
            str(flow.get("echo_id", "")))  # echo flows have addresses for ends, and an id


def remote_host(flow: dict[str, Any]) -> str:
    """The far end's address: "192.0.2.1:80" and "[2001:db8::1]:80" lose the port; an
    echo flow's remote is an address already."""
    remote = str(flow.get("remote", "?"))
    if "echo_id" in flow:
        return remote
    if remote.startswith("["):
        return remote[1:].partition("]")[0]
    return remote.rsplit(":", 1)[0]


def rates(before: Sample, after: Sample) -> list[tuple[dict[str, Any], float, float]]:
    """(flow, bytes/s from the guest, bytes/s to the guest) for every flow of *after*;
    a flow new since *before* counts all its bytes as of this interval."""
    elapsed = max(after.when - before.when, 1e-6)
    earlier = {flow_key(flow): flow for flow in before.flows}
    found = []
    for flow in after.flows:
        old = earlier.get(flow_key(flow), {})
        up = flow.get("bytes_from_guest", 0) - old.get("bytes_from_guest", 0)
        down = flow.get("bytes_to_guest", 0) - old.get("bytes_to_guest", 0)
        found.append((flow, max(up, 0) / elapsed, max(down, 0) / elapsed))
    return found


def _delta(before: dict[str, Any], after: dict[str, Any], key: str) -> dict[str, int]:
    old, new = before.get(key) or {}, after.get(key) or {}
    if not isinstance(new, dict):
        return {}
    return {k: v - old.get(k, 0) for k, v in new.items() if isinstance(v, int)}


def render_watch(before: Sample, after: Sample, label: str, width: int = 100,
                 height: int = 40) -> list[str]:
    """The lines of one screen of `watch`."""
    elapsed = max(after.when - before.when, 1e-6)
    counters = after.counters
    flow_rates = sorted(rates(before, after), key=lambda r: -(r[1] + r[2]))
    traffic = _delta(before.counters, counters, "bytes")
    if traffic:
        up, down = traffic.get("from_guest", 0) / elapsed, traffic.get("to_guest", 0) / elapsed
    else:
        up, down = sum(r[1] for r in flow_rates), sum(r[2] for r in flow_rates)
    flows_open = counters.get("flows", {})
    open_text = ", ".join(f"{k} {v}" for k, v in flows_open.items()) if isinstance(
        flows_open, dict) else str(flows_open)
    lines = [f"slirpy {label}  up {human_age(counters.get('uptime_s', 0))}  "
             f"flows: {open_text or 'none'}  forwards: {counters.get('forwards', 0)}",
             f"guest link: from guest {human_rate(up)}, to guest {human_rate(down)}"]
    for key in ("drops", "blocked"):
        totals = counters.get(key) or {}
        if not isinstance(totals, dict) or not totals:
            lines.append(f"{key}: none")
            continue
        new = _delta(before.counters, counters, key)
        lines.append(f"{key}: " + ", ".join(
            f"{reason} {count}" + (f" (+{new[reason]})" if new.get(reason) else "")
            for reason, count in sorted(totals.items(), key=lambda kv: -kv[1])))
    talkers: dict[str, float] = {}
    for flow, from_guest, to_guest in flow_rates:
        remote = remote_host(flow)
        talkers[remote] = talkers.get(remote, 0.0) + from_guest + to_guest
    top = sorted(((rate, remote) for remote, rate in talkers.items() if rate > 0), reverse=True)
    lines.append("top talkers: " + (", ".join(f"{remote} {human_rate(rate)}"
                                              for rate, remote in top[:5]) or "none"))
    lines.append("")
    room = max(height - len(lines) - 2, 1)
    rows = [[str(flow.get("proto", "?")), str(flow.get("guest", "?")),
             str(flow.get("remote", "?")), str(flow.get("state", "-")),
             human_rate(from_guest), human_rate(to_guest),
             human_bytes(flow.get("bytes_from_guest", 0)),
             human_bytes(flow.get("bytes_to_guest", 0)), human_age(flow.get("age_s", 0))]
            for flow, from_guest, to_guest in flow_rates[:room]]
    if rows:
        lines += table(["PROTO", "GUEST", "REMOTE", "STATE", "FROM GUEST/s", "TO GUEST/s",
                        "FROM GUEST", "TO GUEST", "AGE"], rows,
                       right=frozenset({4, 5, 6, 7, 8})).split("\n")
        if len(flow_rates) > room:
            lines.append(f"... {len(flow_rates) - room} more")
    else:
        lines.append("no flows")
    return [line[:width] for line in lines]


def watch(client: Client, label: str, *, count: int | None, interval: float,
          out: IO[str] = sys.stdout, keys: IO[str] | None = None) -> int:
    """Redraw every *interval* until q, Ctrl-C or *count* screens; on a terminal in
    place, else one screen after the other."""
    live = out.isatty() and count is None

    def sample() -> Sample:
        flows = client.request("list_flows").result.get("flows", [])
        return Sample(time.monotonic(), flows, client.request("counters").result)

    with _keyboard(keys if live else None) as key_fd:
        if live:
            out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor
        try:
            before, shown = sample(), 0
            while count is None or shown < count:
                if _quit_pressed(key_fd, interval):
                    return 0
                after = sample()
                size = shutil.get_terminal_size()
                lines = (render_watch(before, after, label, size.columns, size.lines) if live
                         else render_watch(before, after, label, 10_000, 10_000))
                if live:
                    out.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines)
                              + "\x1b[J")
                else:
                    out.write(("\n" if shown else "") + "\n".join(lines) + "\n")
                out.flush()
                before, shown = after, shown + 1
        finally:
            if live:
                out.write("\x1b[?25h\x1b[?1049l")
                out.flush()
    return 0


@contextlib.contextmanager
def _keyboard(keys: IO[str] | None) -> Iterator[int | None]:
    """Keys one at a time, unechoed, from a terminal *keys*; None when there is none."""
    if keys is None or not keys.isatty():
        yield None
        return
    import termios
    import tty

    fd = keys.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(key_fd: int | None, timeout: float) -> bool:
    """Wait *timeout* seconds; True if q (or Q) was pressed meanwhile."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if key_fd is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([key_fd], [], [], left)
        if ready:
            key = os.read(key_fd, 1)
            if key in (b"q", b"Q") or not key:
                return True
    return False


# --- the command line ---------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """The selector and --json go before or after the command (default=SUPPRESS on the
    subcommands keeps one given before from being reset)."""
    top = _Parser(prog="slirpy ctl", add_help=False, allow_abbrev=False)
    _selectors(top, argparse.SUPPRESS)
    commands = top.add_subparsers(dest="command", parser_class=_Parser)
    subs: dict[str, argparse.ArgumentParser] = {}
    for name in ("forwards", "add-forward", "remove-forward", "flows", "rules", "add-rule",
                 "remove-rule", "counters", "events", "watch", "pcap-start", "pcap-stop",
                 "metrics"):
        subs[name] = commands.add_parser(name, add_help=False, allow_abbrev=False)
        _selectors(subs[name], argparse.SUPPRESS)
    subs["add-forward"].add_argument("--remote", action="store_true")
    subs["add-forward"].add_argument("spec")
    subs["remove-forward"].add_argument("id", type=_id)
    subs["flows"].add_argument("--sort", choices=sorted(SORT_KEYS), default="proto")
    subs["flows"].add_argument("--reverse", action="store_true")
    subs["add-rule"].add_argument("action", choices=["allow", "deny"])
    subs["add-rule"].add_argument("spec")
    subs["remove-rule"].add_argument("id", type=_id)
    subs["watch"].add_argument("--once", action="store_true")
    subs["watch"].add_argument("--count", type=_id)
    subs["watch"].add_argument("--interval", type=_interval, default=WATCH_INTERVAL_S)
    subs["pcap-start"].add_argument("file")
    return top


def _selectors(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-h", "--help", action="store_true", default=default)
    parser.add_argument("-a", "--api-socket", default=default)
    parser.add_argument("--name", default=default)
    parser.add_argument("--pid", type=_id, default=default)
    parser.add_argument("--json", action="store_true", default=default)


def _id(text: str) -> int:
    if not text.isdecimal() or not text.isascii() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"a number of seconds from 0.05 to 3600, not {text!r}")
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    ns = parser().parse_args(argv)
    for option, default in (("help", False), ("api_socket", None), ("name", None),
                            ("pid", None), ("json", False)):
        if not hasattr(ns, option):
            setattr(ns, option, default)
    if ns.help:
        return ns
    if ns.command is None:
        raise UsageError("a command is needed (see slirpy ctl --help)")
    chosen = [option for option, value in (("-a", ns.api_socket), ("--name", ns.name),
                                           ("--pid", ns.pid)) if value is not None]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} both choose a slirpy: give one")
    if ns.command == "watch":
        if ns.once and ns.count is not None:
            raise UsageError("--once and --count contradict")
        if ns.once:
            ns.count = 1
    return ns


def main(argv: list[str], *, out: IO[str] | None = None) -> int:
    """`slirpy ctl ARGV`; the exit status. Every error is one line on stderr."""
    out = out or sys.stdout
    try:
        ns = parse(argv)
    except UsageError as exc:
        print(f"slirpy ctl: {exc}", file=sys.stderr)
        return 2
    if ns.help:
        out.write(CTL_HELP)
        return 0
    try:
        path = socket_path(ns.api_socket, ns.name, ns.pid)
        return run(ns, Client(path), out)
    except Refused as exc:
        if ns.json:  # the reply as it came, for scripts; the line for people
            out.write(exc.raw.decode(errors="replace").strip() + "\n")
            out.flush()
        print(f"slirpy ctl: {exc}", file=sys.stderr)
        return 1
    except SlirpyError as exc:
        print(f"slirpy ctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if ns.command in ("events", "watch") else 130
    except BrokenPipeError:  # `slirpy ctl events | head`: the reader is done
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), (out or sys.stdout).fileno())
        return 0


def run(ns: argparse.Namespace, client: Client, out: IO[str]) -> int:
    def show(reply: Reply, human: Callable[[Any], str]) -> int:
        out.write(reply.raw.decode(errors="replace").strip() + "\n" if ns.json
                  else human(reply.result) + "\n")
        return 0

    match ns.command:
        case "forwards":
            return show(client.request("list_forwards"),
                        lambda r: format_forwards(r.get("forwards", [])))
        case "add-forward":
            kind = "remote" if ns.remote else "local"
            return show(client.request("add_forward", {"kind": kind, "spec": ns.spec}),
                        lambda r: _added(f"{kind} forward", r.get("ids", [])))
        case "remove-forward":
            return show(client.request("remove_forward", {"id": ns.id}),
                        lambda r: f"removed forward {ns.id}")
        case "flows":
            return show(client.request("list_flows"), lambda r: format_flows(
                sort_flows(r.get("flows", []), ns.sort, ns.reverse)))
        case "rules":
            return show(client.request("list_rules"), format_rules)
        case "add-rule":
            return show(client.request("add_rule", {"action": ns.action, "spec": ns.spec}),
                        lambda r: _added(f"{ns.action} rule", r.get("ids", [])))
        case "remove-rule":
            return show(client.request("remove_rule", {"id": ns.id}),
                        lambda r: f"removed rule {ns.id}")
        case "counters":
            return show(client.request("counters"), format_counters)
        case "events":
            return events(client, ns.json, out)
        case "watch":
            label = os.path.basename(client.path).removesuffix(registry.SUFFIX)
            return watch(client, label, count=ns.count, interval=ns.interval, out=out,
                         keys=sys.stdin)
        case "pcap-start":
            return pcap_start(client, ns.file, ns.json, out)
        case "pcap-stop":
            return show(client.request("pcap_stop"), lambda r: (
                f"capture stopped: {r.get('frames', 0)} frames, "
                f"{human_bytes(r.get('bytes', 0))}"))
        case "metrics":
            return show(client.request("metrics"), lambda r: str(r.get("text", "")).rstrip())
    raise AssertionError(ns.command)


def _added(what: str, ids: list[int]) -> str:
    plural = "s" if len(ids) != 1 else ""
    return f"added {what}{plural} {', '.join(str(i) for i in ids)}"


def events(client: Client, raw: bool, out: IO[str]) -> int:
    """Follow the stream until Ctrl-C (status 0), or until slirpy ends it: after its
    `exit` event that is the end of the story (0), before it a lost connection (1)."""
    last = None
    for line in client.subscribe():
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            last = event.get("event")
        if raw:
            out.write(line.decode(errors="replace"))
        elif isinstance(event, dict):
            out.write(format_event(event) + "\n")
        out.flush()
    if last != "exit":
        raise SetupError(f"slirpy at {client.path} ended the event stream")
    return 0


def pcap_start(client: Client, path: str, raw: bool, out: IO[str]) -> int:
    """Open the capture here, with the caller's rights, and hand slirpy the fd: a
    confined slirpy sees no paths, and a file made here belongs to the user who asked.

    The file is made new beside *path* (0600: a capture holds whatever the guest sent,
    passwords included) and renamed over *path* only once slirpy took it: a refused
    request (a capture already running) leaves *path*, perhaps that very capture, as
    it was."""
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.part")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SetupError(f"{path}: {exc.strerror}") from None
    try:
        try:
            reply = client.request("pcap_start", {"fd": True}, fds=(fd,))
        finally:
            os.close(fd)  # slirpy holds its own copy
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    out.write(reply.raw.decode(errors="replace").strip() + "\n" if raw
              else f"capturing to {path}\n")
    return 0
