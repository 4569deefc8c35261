"""The layers hold: the sans-IO core does no I/O, imports go down the floors only, and
nothing reachable from a running core was injected by the runtime (design review, #11).

Three checks, each shown to fail on a deliberate break:

1. The sans-IO core is computed, not listed: every module under slirpy/ except the
   groups that are legitimately outside it (runtime/, netns/, api/, cli/, app.py,
   __main__.py). A module added anywhere else is core by default and held to its rules.
   Its imports (absolute, relative, `from x import y`, inside functions, under
   TYPE_CHECKING, `__import__("x")`) must avoid FORBIDDEN and stay within CORE_STDLIB;
   it calls none of the builtins that do I/O.
2. Floors: every import edge inside slirpy goes to a group its own group may import
   (FLOORS); the table itself only ever points down or sideways.
3. No injected calls at run time: a real Stack wired into a real slirpy.app.Instance (a
   socketpair for a tap, the forwards and the control socket opened, guest traffic fed
   through the driver's one event path), then the objects reachable from the stack, the
   core's classes and the core's module globals are walked (tests/objgraph.py): no
   callable or object from outside the core and the stdlib whitelist.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import ipaddress
import os
import pathlib
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, Final

import pytest

import slirpy
from slirpy.stack import Stack
from tests.objgraph import DATA_MODULES, GENERATED_PREFIXES, CoreGraph, Report

ROOT: Final = pathlib.Path(slirpy.__file__).parent
PACKAGE: Final = ROOT.name

# --- the partition: which group each module of slirpy belongs to ------------------------------

LEAVES: Final = frozenset({"slirpy", "slirpy.errors", "slirpy.addresses"})  # import no slirpy
# Outside the sans-IO core, each for a reason:
OUTSIDE: Final = {
    "slirpy.runtime": "runtime",  # the event loop, sockets, the tap fd, the host's addresses
    "slirpy.netns": "netns",  # namespaces, links and processes (setns, pyroute2, fork)
    "slirpy.api": "api",  # the control socket: its server, and its commands over the app
    "slirpy.hardening": "hardening",  # the sandbox and the seccomp filter, once set up
    "slirpy.observe": "observe",  # events, packet capture, metrics: files and listeners
    "slirpy.app": "app",  # the composition root: core + runtime + forwards + control socket
    "slirpy.cli": "cli",  # argv, config files, logging setup, the process's lifetime
    "slirpy.__main__": "main",  # `python -m slirpy`
}
# group: (floor, the groups whose modules it may import). A group may import its own
# modules only where it lists itself: the leaves import nothing of slirpy at all.
FLOORS: Final[dict[str, tuple[int, frozenset[str]]]] = {
    "leaf": (0, frozenset()),
    "wire": (1, frozenset({"wire"})),
    "core": (2, frozenset({"leaf", "wire", "core"})),
    "runtime": (3, frozenset({"leaf", "wire", "core", "runtime"})),
    "netns": (3, frozenset({"leaf", "wire", "core", "netns"})),
    "observe": (4, frozenset({"leaf", "wire", "core", "runtime", "observe"})),
    "api": (4, frozenset({"leaf", "wire", "core", "runtime", "observe", "api"})),
    "hardening": (4, frozenset({"leaf", "wire", "core", "runtime", "netns", "hardening"})),
    "app": (5, frozenset({"leaf", "wire", "core", "runtime", "observe", "api", "hardening"})),
    "cli": (6, frozenset({"leaf", "wire", "core", "runtime", "netns", "observe", "api", "app",
                          "cli"})),
    "main": (7, frozenset({"cli"})),
}
SANS_IO: Final = frozenset({"leaf", "wire", "core"})

# What the sans-IO core may not import, and why.
FORBIDDEN: Final = {
    "socket": "sockets", "select": "polling", "selectors": "polling", "os": "fds and files",
    "time": "a clock (time is each event's `now`)", "subprocess": "processes",
    "pyroute2": "netlink", "fcntl": "ioctls", "signal": "signals", "threading": "threads",
    "random": "randomness (it comes from the constructor's secret)",
    "importlib": "dynamic imports (they would get past this test)",
    "slirpy.runtime": "the runtime", "slirpy.api": "the control socket",
    "slirpy.cli": "the command line", "slirpy.netns": "namespaces",
    "slirpy.app": "the composition root",
}
# The stdlib the core uses (or may: pure computation), top-level names. Anything else is
# refused until added here: a denylist alone would let `shutil`, `pathlib`, `datetime`,
# `uuid` or `secrets` in.
CORE_STDLIB: Final = frozenset({
    "__future__", "typing", "collections", "dataclasses", "enum", "errno", "hashlib",
    "heapq", "ipaddress", "logging", "re", "struct",  # used today
    "abc", "bisect", "functools", "itertools", "math", "operator",  # pure, welcome
    "builtins",  # `from builtins import memoryview` for mypyc; I/O builtins are caught by call
})
IO_BUILTINS: Final = frozenset({"open", "print", "input", "exec", "eval", "compile",
                                "__import__", "breakpoint"})


def group_of(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module == f"{PACKAGE}.wire" or module.startswith(f"{PACKAGE}.wire."):
        return "wire"
    for prefix, group in OUTSIDE.items():
        if module == prefix or module.startswith(prefix + "."):
            return group
    return "core"


def is_core(module: str) -> bool:
    return _in_package(module) and group_of(module) in SANS_IO


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


# --- the sources and their imports -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    path: str  # relative to the package's parent, for messages
    text: str
    is_package: bool  # an __init__.py: relative imports start from the module itself


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # absolute, relative imports resolved; a submodule where `from` names one
    line: int


def load_tree(root: pathlib.Path = ROOT) -> dict[str, Source]:
    """Every module under *root* (a package directory), by dotted name."""
    tree: dict[str, Source] = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        tree[name] = Source(str(path.relative_to(root.parent)), path.read_text(), is_package)
    return tree


@functools.lru_cache(maxsize=None)
def _nodes(path: str, text: str) -> tuple[ast.AST, ...]:
    return tuple(ast.walk(ast.parse(text, path)))


def imports_of(module: str, source: Source, known: set[str]) -> list[Import]:
    """What *module* imports; *known*: slirpy's modules, to tell `from pkg import submodule`."""
    found: list[Import] = []
    for node in _nodes(source.path, source.text):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if source.is_package else module.split(".")[:-1]
                if node.level - 1 >= len(package):
                    found.append(Import(f"<relative import beyond {PACKAGE}>", node.lineno))
                    continue
                anchor = ".".join(package[:len(package) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            if len(subs) < len(node.names):  # some names are attributes of *base* itself
                found.append(Import(base, node.lineno))
            found += [Import(sub, node.lineno) for sub in subs]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            arg = node.args[0] if node.args else None
            target = arg.value if isinstance(arg, ast.Constant) else "<dynamic>"
            found.append(Import(str(target), node.lineno))
    return found


def io_builtin_calls(source: Source) -> list[tuple[str, int]]:
    return [(node.func.id, node.lineno) for node in _nodes(source.path, source.text)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in IO_BUILTINS]


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def sans_io_violations(tree: dict[str, Source]) -> list[str]:
    """Every import or call by which a module of the sans-IO core could do I/O."""
    known = set(tree)
    bad: list[str] = []
    for module, source in sorted(tree.items()):
        if not is_core(module):
            continue
        for imp in imports_of(module, source, known):
            reason = next((why for name, why in FORBIDDEN.items() if _matches(imp.module, name)),
                          None)
            if reason is None and not _in_package(imp.module) \
                    and imp.module.split(".")[0] not in CORE_STDLIB:
                reason = "not in CORE_STDLIB (add it there if it does no I/O)"
            if reason is not None:
                bad.append(f"{module} imports {imp.module} ({source.path}:{imp.line}): {reason}")
        for name, line in io_builtin_calls(source):
            bad.append(f"{module} calls {name}() ({source.path}:{line}): an I/O builtin")
    return bad


def floor_violations(tree: dict[str, Source]) -> list[str]:
    """Every import edge inside slirpy that goes to a group its importer may not import."""
    known = set(tree)
    bad: list[str] = []
    for module, source in sorted(tree.items()):
        group = group_of(module)
        floor, allowed = FLOORS[group]
        for imp in imports_of(module, source, known):
            if not _in_package(imp.module):
                continue
            target = group_of(imp.module)
            if target not in allowed:
                bad.append(f"{module} ({group}, floor {floor}) -> {imp.module} "
                           f"({target}, floor {FLOORS[target][0]}) at {source.path}:{imp.line}")
    return bad


TREE: Final = load_tree()


# --- 1. the sans-IO core is every module of the core ---------------------------------------


def test_partition_is_computed_and_covers_the_tree() -> None:
    groups: dict[str, list[str]] = {}
    for module in TREE:
        groups.setdefault(group_of(module), []).append(module)
    for group, modules in sorted(groups.items(), key=lambda item: FLOORS[item[0]][0]):
        print(f"{group:8} floor {FLOORS[group][0]}: {' '.join(sorted(modules))}")
    assert set(groups) == set(FLOORS), "a group of the table has no module, or the reverse"
    core = {m for m in TREE if is_core(m)}
    # The modules #11 found missing from the old hand-written list are in it now.
    for module in ("slirpy.stack", "slirpy.ndp", "slirpy.tcp.conn", "slirpy.tcp.flows",
                   "slirpy.forward.nat", "slirpy.forward.srv", "slirpy.policy.decide",
                   "slirpy.policy.rules", "slirpy.ingress", "slirpy.hostside",
                   "slirpy.control", "slirpy.timers", "slirpy.neighbours",
                   "slirpy.wire.ipv4", "slirpy.errors", "slirpy.addresses"):
        assert module in core, module
    # Outside the core: exactly the groups named in OUTSIDE, nothing else.
    assert {group_of(m) for m in set(TREE) - core} == set(OUTSIDE.values())


def test_sans_io_core_does_no_io() -> None:
    bad = sans_io_violations(TREE)
    assert not bad, "\n".join(bad)


# --- 2. floors -------------------------------------------------------------------------------


def test_floor_table_points_down_or_sideways_only() -> None:
    for group, (floor, allowed) in FLOORS.items():
        for target in allowed:
            assert FLOORS[target][0] <= floor, f"{group} may import the higher {target}"
            if target != group and FLOORS[target][0] == floor:
                assert group not in FLOORS[target][1], f"{group} and {target} import each other"


def test_imports_respect_the_floors() -> None:
    bad = floor_violations(TREE)
    assert not bad, "imports going up a floor:\n" + "\n".join(bad)


def test_every_edge_was_checked() -> None:
    """The checker sees the edges there are (no silent zero): both directions of use."""
    edges = {(m, imp.module) for m, src in TREE.items()
             for imp in imports_of(m, src, set(TREE)) if _in_package(imp.module)}
    assert ("slirpy.app", "slirpy.runtime.driver") in edges
    assert ("slirpy.stack", "slirpy.tcp.flows") in edges
    assert ("slirpy.wire.ipv4", "slirpy.wire.checksum") in edges
    assert len(edges) > 150


# --- proof that the import checks fail when they should --------------------------------------

BROKEN_SOURCES: Final = [
    # (module, its source, what the report must say)
    ("slirpy.udp", "import socket\n", "slirpy.udp imports socket"),
    ("slirpy.forward.nat", "from os import path\n", "slirpy.forward.nat imports os"),
    ("slirpy.ndp", "import os.path\n", "slirpy.ndp imports os.path"),
    ("slirpy.policy.decide", "import shutil\n", "imports shutil (slirpy/policy/decide.py:1): "
     "not in CORE_STDLIB"),
    ("slirpy.tcp.conn", "\n\nfrom ..runtime import loop\n",
     "slirpy.tcp.conn imports slirpy.runtime.loop (slirpy/tcp/conn.py:3): the runtime"),
    ("slirpy.tcp.conn", "from .. import app\n", "slirpy.tcp.conn imports slirpy.app"),
    ("slirpy.udp", "def f():\n    return __import__('time')\n", "slirpy.udp imports time"),
    ("slirpy.udp", "def f():\n    return open('/etc/hosts')\n", "slirpy.udp calls open()"),
    ("slirpy.metrics", "import time\n", "slirpy.metrics imports time"),  # a new module
    ("slirpy.wire", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from slirpy.netns import link\n", "slirpy.wire imports slirpy.netns.link"),
]


@pytest.mark.parametrize(("module", "text", "expected"), BROKEN_SOURCES,
                         ids=[f"{m}:{t.strip().splitlines()[-1]}" for m, t, _ in BROKEN_SOURCES])
def test_sans_io_check_flags_a_broken_core_module(module: str, text: str, expected: str) -> None:
    is_package = module in TREE and TREE[module].is_package
    path = module.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    tree = {**TREE, module: Source(path, text, is_package)}
    bad = sans_io_violations(tree)
    assert any(expected in line for line in bad), bad


BROKEN_EDGES: Final = [
    ("slirpy.wire.ipv4", "from slirpy.flows.key import FlowKey\n",
     "slirpy.wire.ipv4 (wire, floor 1) -> slirpy.flows.key (core, floor 2)"),
    ("slirpy.wire.dns", "from slirpy.errors import UsageError\n",
     "slirpy.wire.dns (wire, floor 1) -> slirpy.errors (leaf, floor 0)"),
    ("slirpy.addresses", "from slirpy.errors import UsageError\n",
     "slirpy.addresses (leaf, floor 0) -> slirpy.errors (leaf, floor 0)"),
    ("slirpy.errors", "from . import wire\n", "slirpy.errors (leaf, floor 0) -> slirpy.wire "),
    ("slirpy.stack", "from slirpy.runtime.loop import EventLoop\n",
     "slirpy.stack (core, floor 2) -> slirpy.runtime.loop (runtime, floor 3)"),
    ("slirpy.runtime.loop", "from slirpy.app import Instance\n",
     "slirpy.runtime.loop (runtime, floor 3) -> slirpy.app (app, floor 5)"),
    ("slirpy.runtime.tap", "from ..api import commands\n",
     "slirpy.runtime.tap (runtime, floor 3) -> slirpy.api.commands (api, floor 4)"),
    ("slirpy.runtime.driver", "import slirpy.netns.link\n",
     "slirpy.runtime.driver (runtime, floor 3) -> slirpy.netns.link (netns, floor 3)"),
    ("slirpy.netns.link", "from slirpy import cli\n",
     "slirpy.netns.link (netns, floor 3) -> slirpy.cli (cli, floor 6)"),
    ("slirpy.api.commands", "import slirpy.app\n",
     "slirpy.api.commands (api, floor 4) -> slirpy.app (app, floor 5)"),
    ("slirpy.api.server", "from slirpy.cli.args import parse\n",
     "slirpy.api.server (api, floor 4) -> slirpy.cli.args (cli, floor 6)"),
]


@pytest.mark.parametrize(("module", "text", "expected"), BROKEN_EDGES,
                         ids=[f"{m}:{t.strip()}" for m, t, _ in BROKEN_EDGES])
def test_floor_check_flags_an_edge_going_up(module: str, text: str, expected: str) -> None:
    tree = {**TREE, module: dataclasses.replace(TREE[module], text=text)}
    bad = floor_violations(tree)
    assert any(line.startswith(expected) for line in bad), bad


def test_a_real_copy_of_the_tree_with_udp_importing_os_fails(tmp_path: pathlib.Path) -> None:
    """The whole package copied, one real line added to the copy's udp.py, loaded from disk."""
    copy = tmp_path / PACKAGE
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert sans_io_violations(load_tree(copy)) == []
    udp = copy / "udp.py"
    lines = udp.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("import ")
              or line.startswith("from slirpy"))
    udp.write_text("".join([*lines[:at], "import os\n", *lines[at:]]))
    bad = sans_io_violations(load_tree(copy))
    assert bad == [f"slirpy.udp imports os (slirpy/udp.py:{at + 1}): fds and files"]


# --- 3. nothing injected is reachable from a running core ------------------------------------

GUEST_MAC = "02:00:00:00:00:64"
OUR_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS_ADDR = "10.0.2.3"
GUEST6 = "fd00::100"
GATEWAY6 = "fd00::2"


def _udp_listener(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _config(kind: str, resolv_conf: str) -> Any:
    from slirpy.config import Config
    from slirpy.forward.spec import Kind, parse_forward
    from slirpy.policy.rules import Action, parse_rules

    if kind == "defaults":
        return Config(resolv_conf=resolv_conf)
    guest, gateway = ipaddress.IPv4Address(GUEST), ipaddress.IPv4Address(GATEWAY)
    forwards = [*parse_forward(Kind.LOCAL, "127.0.0.1:0:10.0.2.100:80", guest=guest,
                               gateway=gateway),
                *parse_forward(Kind.LOCAL, "udp://127.0.0.1:0:10.0.2.100:53", guest=guest,
                               gateway=gateway),
                *parse_forward(Kind.REMOTE, "9000", guest=guest, gateway=gateway)]
    rules = [*parse_rules(Action.DENY, "198.51.100.0/24, udp://[2001:db8::/32]:53"),
             *parse_rules(Action.ALLOW, "tcp://192.0.2.0/24:443")]
    # host=False: the runtime watches the host's addresses (netlink, pyroute2) and tells
    # the core through HostNetworks events -- the very path of issue #11.
    return Config(ipv6=True, host=False, forwards=tuple(forwards), rules=tuple(rules),
                  resolv_conf=resolv_conf)


@dataclasses.dataclass
class Wired:
    instance: Any  # slirpy.app.Instance
    guest_end: socket.socket  # the guest's end of the socketpair the "tap" is
    v6: bool


@pytest.fixture(params=["defaults", "ipv6-forwards-rules-hostwatch"])
def wired(request: pytest.FixtureRequest, tmp_path: pathlib.Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Wired]:
    """An Instance wired as `slirpy.app.serve` wires it, on a socketpair for a tap."""
    from slirpy.app import Instance
    from slirpy.runtime.tap import TapDevice

    # Instance builds the real Stack (slirpy.app imported it before tests/conftest.py
    # put its checking wrapper under the name); the module's global is put back too, so
    # the walk sees production's objects only.
    from tests.conftest import CoreStack

    monkeypatch.setattr(slirpy.stack, "Stack", CoreStack)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    config = _config(request.param, str(resolv))
    guest_end, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    device = TapDevice(os.dup(tap_end.fileno()))  # a non-tap fd: plain frames, no offload
    tap_end.close()
    instance = Instance(config, device, secret=b"layering-test-secret")
    try:
        instance.start_forwards()
        instance.start_api(str(tmp_path / "api.sock"))
        yield Wired(instance, guest_end, config.ipv6)
    finally:
        instance.close()
        device.close()
        guest_end.close()


def _guest_traffic(wired: Wired) -> None:
    """Guest frames written to the "tap" and read by the driver's loop (its `_on_tap` polls
    the host-address watch first, as in #11), host sockets that answer, forwards' clients."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6ND_RS, IPv6
    from scapy.layers.l2 import ARP, Ether

    from slirpy.events import TimerDue

    driver = wired.instance.driver
    udp_peer = _udp_listener(socket.AF_INET, "127.0.0.1")
    udp_peer.setblocking(False)
    tcp_peer = socket.create_server(("127.0.0.1", 0))
    clients: list[socket.socket] = []
    to_us = Ether(src=GUEST_MAC, dst=OUR_MAC)
    frames = [
        Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST,
                                                             pdst=GATEWAY),
        Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex("020000000064"), xid=7)
        / DHCP(options=[("message-type", "discover"), "end"]),
        to_us / IP(src=GUEST, dst=GATEWAY) / UDP(sport=40000, dport=udp_peer.getsockname()[1])
        / b"hello",
        to_us / IP(src=GUEST, dst=GATEWAY) / TCP(sport=40001, dport=tcp_peer.getsockname()[1],
                                                 flags="S", seq=1000),
        to_us / IP(src=GUEST, dst=GATEWAY) / ICMP(id=7, seq=1) / b"ping",
        to_us / IP(src=GUEST, dst=DNS_ADDR) / UDP(sport=40002, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="example.com")),
        to_us / IP(src=GUEST, dst="198.51.100.7") / UDP(sport=40003, dport=9) / b"denied?",
        to_us / IP(src=GUEST, dst="192.0.2.9") / TCP(sport=40004, dport=443, flags="S"),
    ]
    if wired.v6:
        frames += [
            Ether(src=GUEST_MAC, dst="33:33:00:00:00:02") / IPv6(src="fe80::64", dst="ff02::2")
            / ICMPv6ND_RS(),
            Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02") / IPv6(src=GUEST6, dst="ff02::1:ff00:2")
            / ICMPv6ND_NS(tgt=GATEWAY6),
            to_us / IPv6(src=GUEST6, dst=GATEWAY6) / UDP(sport=40005, dport=9) / b"six",
            to_us / IPv6(src=GUEST6, dst="2001:db8::5") / ICMPv6EchoRequest(id=3, seq=1),
        ]
    def pump(seconds: float) -> None:
        """Run the loop as `Driver.run` does, answering as the host and the guest would."""
        until = time.monotonic() + seconds
        while True:
            driver.loop.wait(driver.loop.now() + min(0.01, seconds))
            for sock, answer in ((udp_peer, True), (wired.guest_end, False)):
                while True:
                    try:
                        data, peer = sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    if answer:
                        sock.sendto(b"reply:" + data, peer)  # back through the host socket
            if time.monotonic() >= until:
                return

    wired.guest_end.setblocking(False)
    try:
        driver._check_resolv_conf(driver.loop.now())  # as `run` does, every 2 s
        for frame in frames:  # one at a time: an AF_UNIX datagram queue may hold only 10
            wired.guest_end.send(bytes(frame))
            pump(0.0)
        for listener in list(driver.forward_sockets.sockets.values()):  # local forwards' clients
            client = socket.socket(listener.family, listener.type)
            clients.append(client)
            client.setblocking(False)
            if listener.type == socket.SOCK_STREAM:
                client.connect_ex(listener.getsockname())
            else:
                client.sendto(b"to the guest", listener.getsockname())
        pump(0.2)
        driver.post(TimerDue())
        assert driver.frames_in == len(frames)  # all read from the "tap" by the loop
    finally:
        for sock in (udp_peer, tcp_peer, *clients):
            sock.close()


def core_modules() -> list[str]:
    modules = sorted(m for m in TREE if is_core(m))
    for module in modules:
        importlib.import_module(module)
    return modules


def core_roots(stack: Stack) -> list[tuple[str, object]]:
    """The stack, and every global of every core module (classes lead to their dicts)."""
    roots: list[tuple[str, object]] = [("stack", stack)]
    for module in core_modules():
        for key, value in vars(sys.modules[module]).items():
            if key in ("__builtins__", "__loader__", "__spec__"):
                continue  # the import machinery's, not the module's
            if getattr(value, "__name__", None) == f"{module}.{key}" and \
                    isinstance(value, type(sys)):
                continue  # a submodule set on its package by the import system
            roots.append((f"{module}.{key}", value))
    return roots


def walk(stack: Stack) -> Report:
    return CoreGraph(is_core).walk(core_roots(stack))


def test_no_injected_callable_or_runtime_object_is_reachable_from_the_core(wired: Wired) -> None:
    stack = wired.instance.stack
    assert wired.instance.driver.core is stack
    _guest_traffic(wired)
    counts = stack.stats.flow_counts()
    assert counts["tcp"] and counts["udp"], counts  # flows exist: there was state to walk
    report = walk(stack)
    print(f"walked {report.visited} objects; whitelisted modules met: "
          f"{dict(report.whitelist_hits.most_common())}")
    assert not report.findings, "\n".join(map(str, report.findings))
    assert set(report.whitelist_hits) <= DATA_MODULES | {f"{p}*" for p in GENERATED_PREFIXES}


# --- proof that the object walk fails when it should -----------------------------------------


def _inject(name: str, wired: Wired, monkeypatch: pytest.MonkeyPatch) -> str:
    """Break the core as #11 did (and in neighbouring ways); the path the walk must report."""
    import slirpy.udp
    from slirpy.policy.decide import Policy

    stack, driver = wired.instance.stack, wired.instance.driver
    match name:
        case "runtime-bound-method":  # the shape of #11: a runtime method set on the policy
            monkeypatch.setattr(stack.policy, "refresh", driver.streams.read, raising=False)
            return "stack.policy.refresh"
        case "host-addresses-poll":  # #11 itself, where the host-address watch exists
            assert driver.host_addresses is not None
            monkeypatch.setattr(stack.policy, "refresh_hosts", driver.host_addresses.poll,
                                raising=False)
            return "stack.policy.refresh_hosts"
        case "runtime-closure":  # a closure written outside the core, over the loop
            loop = driver.loop
            monkeypatch.setattr(stack.timers, "clock", lambda: loop.now(), raising=False)
            return "stack.timers.clock"
        case "partial-over-runtime":  # a core function, partially applied to a runtime object
            monkeypatch.setattr(stack.dns, "later",
                                functools.partial(type(stack).next_deadline, driver), raising=False)
            return "stack.dns.later.args[0]"
        case "handlers-in-a-container":  # runtime handlers deep in a core container
            handler = driver.loop.handlers[wired.instance.device.fileno()]  # Driver._on_tap
            monkeypatch.setattr(stack.udp, "extra", {"h": [(handler,)]}, raising=False)
            return "stack.udp.extra['h'][0][0]"
        case "socket-object":
            sock = socket.socket()
            monkeypatch.setattr(stack.link, "sock", sock, raising=False)
            return "stack.link.sock"
        case "os-module":
            monkeypatch.setattr(stack.ndp, "os", os, raising=False)
            return "stack.ndp.os"
        case "builtin-clock":
            monkeypatch.setattr(stack.reassembler, "now", time.monotonic, raising=False)
            return "stack.reassembler.now"
        case "class-level-patch":  # onto a core class, not an instance
            monkeypatch.setattr(Policy, "refresh", staticmethod(os.urandom), raising=False)
            return "slirpy.policy.decide.Policy.refresh.__func__"
        case "module-global":  # into a core module's globals
            monkeypatch.setattr(slirpy.udp, "clock", driver.loop.now, raising=False)
            return "slirpy.udp.clock"
        case "event-loop-object":
            monkeypatch.setattr(stack.control, "loop", driver.loop, raising=False)
            return "stack.control.loop"
        case "open-builtin":
            monkeypatch.setattr(stack.srv, "reader", open, raising=False)
            return "stack.srv.reader"
    raise AssertionError(name)


INJECTIONS: Final = ["runtime-bound-method", "host-addresses-poll", "runtime-closure",
                     "partial-over-runtime", "handlers-in-a-container", "socket-object",
                     "os-module", "builtin-clock", "class-level-patch", "module-global",
                     "event-loop-object", "open-builtin"]


@pytest.mark.parametrize("wired", ["ipv6-forwards-rules-hostwatch"], indirect=True)
@pytest.mark.parametrize("name", INJECTIONS)
def test_object_walk_reports_an_injected_callable(name: str, wired: Wired,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stack = wired.instance.stack
    assert walk(stack).findings == []
    try:
        expected = _inject(name, wired, monkeypatch)
    except AttributeError as exc:
        # The compiled build's native classes take no new attributes and no replaced
        # methods: there the injection is refused before any walk could see it.
        assert (slirpy.stack.__file__ or "").endswith(".so"), exc
        pytest.skip(f"the compiled core refuses the injection itself: {exc}")
    try:
        findings = walk(stack).findings
    finally:
        if name == "socket-object":
            stack.link.sock.close()
    print("\n".join(map(str, findings)))
    assert [f.path for f in findings] == [expected], findings
