#!/usr/bin/env python3
"""Benchmark slirpy beside slirp4netns and pasta, in one run, in a throwaway world.

    sudo -E python3 integration/bench.py            # or as any user who may unshare
    python3 integration/bench.py --quick            # shorter runs
    python3 integration/bench.py --baseline base-11 # also slirpy at a git revision
    python3 integration/bench.py --connectors slirp4netns,slirpy,slirpy-pure --json out.json

Run it with an interpreter that has slirpy's dependencies (pyroute2, PyYAML), e.g. the
project's .venv/bin/python: every slirpy runs under that same interpreter.

`slirpy` is the working tree as it is: compiled if `python setup.py build_ext --inplace`
left mypyc's `.so` files next to the sources (Python then loads those), pure otherwise.
`slirpy-pure` is the working tree's sources without them: slirpy/ is copied, minus `*.so`
and `__pycache__`, into a temporary directory at start (a snapshot: later edits are not
seen) and run from there, so one run compares the compiled build with the pure one (a
`slirpy/pure` ratio column). The default connectors are slirp4netns,pasta,slirpy, plus
slirpy-pure when the working tree is compiled (has `.so` files under slirpy/). Each
slirpy's build is the last line of its `--version` (`build: compiled (mypyc)` or `build:
pure Python`), printed at start and shown under its column. `slirpy-confined` is the
working tree run with --enable-sandbox --enable-seccomp: the cost of confinement, as a
`confined/slirpy` ratio column. `slirpy-observed` is the working tree with --events,
--pcap (rotating) and --metrics all on: their cost, as an `observed/slirpy` column;
`slirpy-events`, `slirpy-pcap` and `slirpy-metrics` turn on one each.

--baseline REV exports REV (a tag, a branch, any commit-ish) with `git archive` into a
temporary directory, removed at exit, and adds the connector `slirpy@REV`: it runs like
`slirpy`, the working tree, and the table gains a `slirpy/base` ratio column (working
tree over baseline), to show that a change costs nothing beyond noise. `slirpy@REV` may
also be named in --connectors, to place it or to compare several revisions. An export
has no `.so` files: `slirpy@REV` is always the pure build (with slirpy-pure in the run,
the table also has `pure/base`: the same build on both sides). Every slirpy is launched
as `python -P -m slirpy` from its own tree with PYTHONPATH set to that tree, and which
file `import slirpy` resolves to is checked once before measuring.
--json FILE writes the raw numbers (per connector, per metric) and each slirpy's build
for later comparison.

The script re-runs itself inside a new user, network, mount and PID namespace (the
"world"); nothing leaves it. In the world: the "host" services listen on loopback
and on 192.0.2.1 (a documentation address on lo); a tun device nobody reads carries
the default route, which pasta needs to find an "external" interface. For each
connector a guest namespace is made (`unshare -Urn`), the connector attached to it,
and real clients run in the guest:
- throughput: iperf3 guest -> host (and host -> guest with -R) at MTU 1500 and 65520,
  with the connector's CPU seconds per GB moved; the same over IPv6 to 2001:db8::1
  (slirpy and slirp4netns with -6, pasta copying the uplink's IPv6 address);
- through a local forward (-L, add_hostfwd, pasta -t) on 192.0.2.1: a world client on
  198.51.100.1 (not loopback) sends to an iperf3 server in the guest;
- connections per second: short connections to a server on the world's loopback,
  reached through the address each connector maps to host loopback, for a few seconds,
  with the connector's CPU microseconds per connection;
- request/response latency: 64-byte ping-pong on one TCP connection to an echo server
  on 192.0.2.1, client, server and connector pinned to CPU 0 (unpinned numbers on a small
  VM measure the scheduler), for a few seconds: p50 and p99, and the connector's CPU
  microseconds per exchange; the same with UDP datagrams to a UDP echo server (p50 and
  CPU per exchange; a datagram unanswered in 0.5 s is counted lost, still an exchange);
- peak RSS of the connector (VmHWM).
The connector's CPU time is utime+stime of its process from /proc/PID/stat, read before
and after a run (ticks of 1/CLK_TCK s: the runs are long enough that one tick is noise);
CPU s/GB divides it by the bytes moved, CPU us/connection and us/exchange by the count.
It prints one table with ratios to slirp4netns (and of slirpy to its baseline and to its
pure build). It asserts nothing about the numbers: it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_ADDR = "192.0.2.1"  # the "internet" server's address, on the world's lo
HOST_ADDR6 = "2001:db8::1"
UPLINK_ADDR6 = "2001:db8:1::1/64"
UPLINK_GW6 = "2001:db8:1::fe"
UPLINK_ADDR = "203.0.113.1/24"
UPLINK_GW = "203.0.113.254"
IPERF_PORT = 5201
FORWARD_PORT = 15201  # a local forward on HOST_ADDR to the guest's iperf3 server
CLIENT_ADDR = "198.51.100.1"  # a non-loopback world client of that forward
S4N_API = "/tmp/slirp4netns-api.sock"
CPS_PORT = 7001
RR_PORT = 7002  # TCP and UDP echo servers on HOST_ADDR
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLIRPY = "slirpy"  # the working tree's connector; f"{SLIRPY}@{rev}" is slirpy at rev
PURE = "slirpy-pure"  # the working tree's sources without the compiled extensions
CONFINED = "slirpy-confined"  # the working tree with --enable-sandbox --enable-seccomp
# The working tree with observability on: every feature (events to a file, a rotating
# capture, the metrics listener), or one of them; off is what `slirpy` measures.
OBSERVED = "slirpy-observed"
_EVENTS = ("--events", "/tmp/bench-events.jsonl")
_PCAP = ("--pcap", "/tmp/bench.pcap", "--pcap-size", "256M,rotate")
_METRICS = ("--metrics", "127.0.0.1:19464")
VARIANTS: dict[str, tuple[str, ...]] = {
    CONFINED: ("--enable-sandbox", "--enable-seccomp"),
    OBSERVED: (*_EVENTS, *_PCAP, *_METRICS),
    "slirpy-events": _EVENTS, "slirpy-pcap": _PCAP, "slirpy-metrics": _METRICS}
CPS_MAX = 20000  # connections per run: the guest's ephemeral ports outlast TIME_WAIT


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


# --- the world ---

def enter_world(argv: list[str], pass_fds: tuple[int, ...] = ()) -> int:
    cmd = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
           "--mount-proc", "--kill-child=SIGTERM", sys.executable, __file__, "--inner", *argv]
    return subprocess.run(cmd, pass_fds=pass_fds).returncode


def build_world() -> None:
    sh("ip link set lo up")
    sh(f"ip addr add {HOST_ADDR}/32 dev lo && ip addr add {CLIENT_ADDR}/32 dev lo")
    # pasta copies the addresses of an Ethernet-like interface with the default route.
    sh("ip tuntap add mode tap name uplink0 && ip link set uplink0 up")
    sh(f"ip addr add {UPLINK_ADDR} dev uplink0 && ip route add default via {UPLINK_GW}")
    sh(f"ip -6 addr add {HOST_ADDR6}/128 dev lo")
    sh(f"ip -6 addr add {UPLINK_ADDR6} dev uplink0 nodad"
       f" && ip -6 route add default via {UPLINK_GW6} dev uplink0")
    sh("mount -t tmpfs tmpfs /tmp")
    Path("/tmp/resolv.conf").write_text(f"nameserver {HOST_ADDR}\n")
    sh("mount --bind /tmp/resolv.conf /etc/resolv.conf")


# --- connectors ---

def is_slirpy(name: str) -> bool:
    return name in (SLIRPY, PURE, *VARIANTS) or name.startswith(SLIRPY + "@")


def compiled_files(tree: Path) -> list[Path]:
    """The extension modules under *tree*'s slirpy/ (mypyc's, built in place)."""
    return sorted((tree / "slirpy").rglob("*.so"))


def stale_extensions(tree: Path) -> list[str]:
    """Sources edited after their module was compiled: the compiled build runs the
    older code (mypyc names its files MODULE.<tag>.so and MODULE__mypyc.<tag>.so)."""
    stale = []
    for so in compiled_files(tree):
        stem = so.name.split(".")[0].removesuffix("__mypyc")
        source = so.with_name(stem + ".py")
        try:
            if source.stat().st_mtime > so.stat().st_mtime:
                stale.append(str(source.relative_to(tree)))
        except (OSError, ValueError):
            continue
    return sorted(set(stale))


def copy_pure(tree: Path, into: Path) -> None:
    """Copy *tree*'s slirpy package into *into*, without compiled modules or caches."""
    shutil.copytree(tree / "slirpy", into / "slirpy",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    print(f"bench: {PURE} is {tree / 'slirpy'} without *.so, copied to {into}",
          file=sys.stderr)


def slirpy_python(tree: Path) -> tuple[list[str], dict[str, str]]:
    """(interpreter argv, environment) that make `import slirpy` load *tree*'s package:
    PYTHONPATH is the tree alone, and -P keeps `-m`/`-c` from putting the current
    directory (maybe another checkout) ahead of it. Run it with cwd=*tree* as well."""
    return [sys.executable, "-P"], {**os.environ, "PYTHONPATH": str(tree)}


def check_slirpy_tree(name: str, tree: Path) -> str:
    """Ask an interpreter launched like the connector which slirpy it imports: the
    tree's, or the bench stops (a comparison with the wrong tree is worse than none).
    A tree that does not import (mid-refactor), or whose `slirpy --version` fails, raises
    RuntimeError: that one is skipped. Returns the build, the last line of `slirpy --version` without its "build: "."""
    argv, env = slirpy_python(tree)
    done = subprocess.run([*argv, "-c", "import slirpy; print(slirpy.__file__)"],
                          env=env, cwd=tree, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"import slirpy failed: {done.stderr.strip()[-800:]}")
    imported = Path(done.stdout.strip()).resolve()
    if not imported.is_relative_to(tree.resolve()):
        sys.exit(f"bench: {name} imports {imported}, not from {tree}")
    version = subprocess.run([*argv, "-m", "slirpy", "--version"], env=env, cwd=tree,
                             capture_output=True, text=True, timeout=60)
    if version.returncode != 0:  # the connector would not start either
        raise RuntimeError(f"slirpy --version failed: {version.stderr.strip()[-800:]}")
    last = (version.stdout.strip().splitlines() or [""])[-1]
    if last.startswith("build: "):
        build = last.removeprefix("build: ")
    else:  # a revision from before the build line: without .so files, it is pure
        build = "pure Python?" if not compiled_files(tree) else "unknown"
    print(f"bench: {name} imports {imported}; build: {build}", file=sys.stderr, flush=True)
    if build.startswith("compiled") and (stale := stale_extensions(tree)):
        print(f"bench: warning: {name}: {len(stale)} source(s) newer than their compiled "
              f"module, which is what runs: {', '.join(stale[:5])}", file=sys.stderr)
    return build


def short_build(build: str) -> str:
    """The column label: "mypyc" for "compiled (mypyc)", "pure" for "pure Python"."""
    if build.startswith("compiled"):
        return build.partition("(")[2].rstrip(")") or "compiled"
    return {"pure Python": "pure", "pure Python?": "pure?"}.get(build, build)


@dataclass
class Connector:
    name: str
    loopback_addr: str  # what the guest dials to reach the world's loopback
    tree: Path | None = None  # for slirpy: the source tree it runs from
    proc: subprocess.Popen[bytes] | None = None
    guest: subprocess.Popen[bytes] | None = None

    def command(self, pid: int, mtu: int, ready_fd: int) -> list[str]:
        if self.tree is not None:  # slirpy, of the working tree or of a revision
            return [*slirpy_python(self.tree)[0], "-m", "slirpy", "-c", "-6", "-m", str(mtu),
                    "-r", str(ready_fd), *VARIANTS.get(self.name, ()),
                    "-L", f"{HOST_ADDR}:{FORWARD_PORT}:10.0.2.100:{IPERF_PORT}",
                    str(pid), "tap0"]
        match self.name:
            case "slirp4netns":  # its forward is added through the API once it is ready
                return ["slirp4netns", "-c", "-6", "-m", str(mtu), "-r", str(ready_fd),
                        "--api-socket", S4N_API, str(pid), "tap0"]
            case "pasta":
                return ["pasta", "-f", "-q", "--config-net", "--runas", "0", "-m", str(mtu),
                        "-t", f"{HOST_ADDR}/{FORWARD_PORT}:{IPERF_PORT}", "-u", "none",
                        "-T", "none", "-U", "none", str(pid)]
        raise ValueError(self.name)

    @contextmanager
    def attached(self, mtu: int) -> Iterator[Connector]:
        self.guest = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net",
                                       "sleep", "infinity"])
        wait_for(lambda: ns_differs(self.guest.pid), "guest namespace")  # type: ignore[union-attr]
        read_fd, write_fd = os.pipe()
        env = slirpy_python(self.tree)[1] if self.tree is not None else None
        self.proc = subprocess.Popen(self.command(self.guest.pid, mtu, write_fd),
                                     pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, cwd=self.tree)
        os.close(write_fd)
        try:
            if self.name == "pasta":
                os.close(read_fd)
                wait_for(lambda: "default" in guest_run(self, "ip route", capture=True),
                         "pasta to configure the guest")
            else:
                with os.fdopen(read_fd, "rb") as ready:
                    if ready.read(1) != b"1":
                        raise RuntimeError(f"{self.name} did not get ready: "
                                           f"{self.proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            if self.name == "pasta":
                link = "$(ip -o link | awk -F': ' '$2!=\"lo\"{print $2}' | head -1)"
                guest_run(self, f"ip link set dev {link} mtu {mtu}")
            if self.name == "slirp4netns":
                add_hostfwd(S4N_API, HOST_ADDR, FORWARD_PORT, IPERF_PORT)
            yield self
        finally:
            for proc in (self.proc, self.guest):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def ns_differs(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def wait_for(check: object, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)  # no readiness signal exists for this one: poll with a deadline
    raise RuntimeError(f"timed out waiting for {what}")


def guest_run(conn: Connector, cmd: str, *, capture: bool = False, timeout: float = 120,
              cpu: int | None = None) -> str:
    assert conn.guest is not None
    prefix = ["nsenter", "--target", str(conn.guest.pid), "--net", "--user",
              "--preserve-credentials"]
    if cpu is not None:
        prefix = ["taskset", "-c", str(cpu), *prefix]
    done = subprocess.run([*prefix, "sh", "-c", cmd], capture_output=True, timeout=timeout,
                          text=True)
    if done.returncode != 0 and not capture:
        raise RuntimeError(f"guest command failed: {cmd}\n{done.stderr[-1000:]}")
    return done.stdout


# --- servers in the world ---

def accept_each(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Serve connections one at a time until the listening socket is closed."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            handle(conn)


def short_reply(conn: socket.socket) -> None:
    conn.recv(64)
    conn.sendall(b"ok")


def echo(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(4096):
        conn.sendall(data)


def start_server(addr: str, port: int, handle: Callable[[socket.socket], None]) -> socket.socket:
    sock = socket.create_server((addr, port), backlog=512, reuse_port=True)
    threading.Thread(target=accept_each, args=(sock, handle), daemon=True).start()
    return sock


def udp_echo(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)
        except OSError:
            return


def start_udp_echo(addr: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    threading.Thread(target=udp_echo, args=(sock,), daemon=True).start()
    return sock


# The clients run in the guest as `python -c '...'`: no single quote in them. Each runs
# for a number of seconds (enough connector CPU that a 1/CLK_TCK tick is noise), prints
# one JSON object, and says how many connections or exchanges it made.
CPS_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    addr, port, seconds, most = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    start = time.perf_counter(); end, count = start + seconds, 0
    while count < most and time.perf_counter() < end:
        s = socket.create_connection((addr, port))
        s.sendall(b"x"); s.recv(8); s.close()
        count += 1
    print(json.dumps({"count": count, "seconds": time.perf_counter() - start}))
""")

RR_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.create_connection((addr, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload, samples = b"p" * 64, []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter(); s.sendall(payload)
        got = 0
        while got < 64:
            got += len(s.recv(64 - got))
        samples.append(time.perf_counter() - t)
    count, samples = len(samples), sorted(samples) or [float("nan")]
    print(json.dumps({"count": count, "lost": 0, "p50": samples[len(samples) // 2],
                      "p99": samples[max(int(len(samples) * 0.99) - 1, 0)]}))
""")

UDP_RR_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port)); s.settimeout(0.5)
    samples, lost, seq = [], 0, 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        seq += 1; payload = seq.to_bytes(8, "big") + b"p" * 56
        t = time.perf_counter(); s.send(payload)
        try:
            while s.recv(128) != payload:
                pass
        except (socket.timeout, ConnectionRefusedError):
            lost += 1
            continue
        samples.append(time.perf_counter() - t)
    samples = sorted(samples) or [float("nan")]
    print(json.dumps({"count": seq, "lost": lost, "p50": samples[len(samples) // 2],
                      "p99": samples[max(int(len(samples) * 0.99) - 1, 0)]}))
""")


# --- measurements ---

@dataclass
class Result:
    values: dict[str, float] = field(default_factory=dict)


def timed_iperf(conn: Connector, server_cmd: list[str],
                client: Callable[[], str]) -> tuple[float, float]:
    """(Gbit/s, connector CPU seconds per GB) for one iperf3 run: *server_cmd* serves
    once, *client* runs the client and returns its JSON report."""
    server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # iperf3 has no readiness signal
        cpu_before = conn.cpu_seconds()
        out = client()
        cpu = conn.cpu_seconds() - cpu_before
    finally:
        server.kill()
        server.wait()
    try:
        end = json.loads(out)["end"]
        moved = end["sum_received"]["bytes"]
        bps = end["sum_received"]["bits_per_second"]
    except (KeyError, ValueError):
        return float("nan"), float("nan")
    return bps / 1e9, cpu / (moved / 1e9) if moved else float("nan")


def iperf(conn: Connector, seconds: int, reverse: bool,
          host: str = HOST_ADDR) -> tuple[float, float]:
    """iperf3 from the guest to the world's *host* (with -R: the other way)."""
    return timed_iperf(
        conn, ["iperf3", "-s", "-1", "-B", host, "-p", str(IPERF_PORT)],
        lambda: guest_run(conn, f"iperf3 -c {host} -p {IPERF_PORT} -t {seconds} -J"
                          + (" -R" if reverse else ""), capture=True, timeout=seconds + 60))


def has_ipv6_route(conn: Connector) -> bool:
    """The guest has a usable global IPv6 address (DAD done) and a default route."""
    addrs = guest_run(conn, "ip -6 -o addr show scope global", capture=True)
    return "default" in guest_run(conn, "ip -6 route show default", capture=True) and any(
        "tentative" not in line for line in addrs.splitlines())


def add_hostfwd(path: str, host_addr: str, host_port: int, guest_port: int) -> None:
    request = json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": host_addr, "host_port": host_port,
        "guest_port": guest_port}}).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(4096)
    if b'"return"' not in reply:
        raise RuntimeError(f"add_hostfwd failed: {reply!r}")


def iperf_forward(conn: Connector, seconds: int) -> tuple[float, float]:
    """A world client on CLIENT_ADDR sends to an iperf3 server in the guest through the
    connector's local forward HOST_ADDR:FORWARD_PORT."""
    assert conn.guest is not None
    return timed_iperf(
        conn, ["nsenter", "--target", str(conn.guest.pid), "--net", "--user",
               "--preserve-credentials", "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
        lambda: subprocess.run(["iperf3", "-c", HOST_ADDR, "-B", CLIENT_ADDR, "-p",
                                str(FORWARD_PORT), "-t", str(seconds), "-J"],
                               capture_output=True, text=True, timeout=seconds + 60).stdout)


def timed_client(conn: Connector, what: str, script: str, argv: list[object],
                 cpu: int | None = None) -> tuple[dict[str, float], float]:
    """Run one of the guest clients above; return its JSON report ({} if it failed) and
    the connector's CPU seconds over the run (utime+stime from /proc/PID/stat)."""
    cpu_before = conn.cpu_seconds()
    out = guest_run(conn, f"{sys.executable} -c '{script}' " + " ".join(map(str, argv)),
                    capture=True, cpu=cpu)
    used = conn.cpu_seconds() - cpu_before
    try:
        report = json.loads(out)
    except ValueError:
        print(f"bench: {conn.name}: {what} client failed", file=sys.stderr)
        return {}, used
    if report.get("lost"):
        print(f"bench: {conn.name}: {what}: {report['lost']} of {report['count']} "
              "exchanges unanswered", file=sys.stderr)
    return report, used


def per_count_us(cpu_s: float, report: dict[str, float]) -> float:
    """Connector CPU microseconds per connection or exchange of a client's run."""
    count = report.get("count", 0)
    return cpu_s / count * 1e6 if count else float("nan")


def measure(name: str, args: argparse.Namespace, tree: Path | None = None) -> Result:
    loopback = "10.0.2.2" if is_slirpy(name) else {"slirp4netns": "10.0.2.2",
                                                    "pasta": UPLINK_GW}[name]
    conn = Connector(name, loopback, tree)
    result = Result()
    seconds = 3 if args.quick else 8
    peak = 0.0
    for mtu in (1500, 65520):
        with conn.attached(mtu):
            gbps, cpu_gb = iperf(conn, seconds, reverse=False)
            result.values[f"guest->host Gbit/s mtu {mtu}"] = gbps
            result.values[f"CPU s/GB guest->host mtu {mtu}"] = cpu_gb
            gbps, cpu_gb = iperf(conn, seconds, reverse=True)
            result.values[f"host->guest Gbit/s mtu {mtu}"] = gbps
            gbps, cpu_gb = iperf_forward(conn, seconds)
            result.values[f"fwd host->guest Gbit/s mtu {mtu}"] = gbps
            result.values[f"CPU s/GB fwd host->guest mtu {mtu}"] = cpu_gb
            # pasta copies no IPv6 from an uplink without carrier (our world's): n/a.
            try:
                wait_for(lambda: has_ipv6_route(conn), "IPv6 in the guest", 5.0)
                v6 = iperf(conn, seconds, reverse=False, host=HOST_ADDR6)
                v6_back = iperf(conn, seconds, reverse=True, host=HOST_ADDR6)
            except RuntimeError as exc:
                print(f"bench: {name}: no IPv6 ({exc})", file=sys.stderr)
                v6 = v6_back = (float("nan"), float("nan"))
            result.values[f"IPv6 guest->host Gbit/s mtu {mtu}"] = v6[0]
            result.values[f"CPU s/GB IPv6 guest->host mtu {mtu}"] = v6[1]
            result.values[f"IPv6 host->guest Gbit/s mtu {mtu}"] = v6_back[0]
            if mtu == 1500:
                short = 2 if args.quick else 5  # seconds of each of the runs below
                cps, cpu_s = timed_client(conn, "connections/s", CPS_CLIENT,
                                          [loopback, CPS_PORT, short, CPS_MAX])
                result.values["connections/s"] = (
                    cps["count"] / cps["seconds"] if cps.get("seconds") else float("nan"))
                result.values["CPU us/connection"] = per_count_us(cpu_s, cps)
                assert conn.proc is not None
                subprocess.run(["taskset", "-acp", "0", str(conn.proc.pid)],
                               stdout=subprocess.DEVNULL, check=False)
                rr, cpu_s = timed_client(conn, "RR", RR_CLIENT, [HOST_ADDR, RR_PORT, short],
                                         cpu=0)
                result.values["RR p50 us (pinned)"] = rr.get("p50", math.nan) * 1e6
                result.values["RR p99 us (pinned)"] = rr.get("p99", math.nan) * 1e6
                result.values["CPU us/exchange RR (pinned)"] = per_count_us(cpu_s, rr)
                udp, cpu_s = timed_client(conn, "UDP RR", UDP_RR_CLIENT,
                                          [HOST_ADDR, RR_PORT, short], cpu=0)
                result.values["UDP RR p50 us (pinned)"] = udp.get("p50", math.nan) * 1e6
                result.values["CPU us/exchange UDP RR (pinned)"] = per_count_us(cpu_s, udp)
            peak = max(peak, conn.peak_rss_mib())
    result.values["peak RSS MiB"] = peak
    return result


# Which way is better for each metric, to print ratios that read the same way.
LOWER_IS_BETTER = ("CPU", "RR", "RSS")


def ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def report(results: dict[str, Result], baseline: str | None = None,
           builds: dict[str, str] | None = None) -> str:
    """The table: one column per connector, then each one's ratio to slirp4netns, then
    the working tree's slirpy over *baseline* (a `slirpy@REV` column) and over its pure
    build (slirpy-pure), and slirpy-pure over the baseline, of those that ran. *builds*
    (name: `--version`'s build) labels each slirpy's columns on a second header line."""
    names = list(results)
    metrics = list(dict.fromkeys(m for r in results.values() for m in r.values))
    label = {n: short_build(b) for n, b in (builds or {}).items() if n in results}

    def value(name: str, metric: str) -> float:
        return results[name].values.get(metric, float("nan"))

    def pair_label(a: str, b: str) -> str:
        return f"{label[a]}/{label[b]}" if a in label and b in label else label.get(a, "")

    # (header, build label, width, numerator, denominator or None for a value column)
    columns: list[tuple[str, str, int, str, str | None]] = [
        (n, label.get(n, ""), max(14, len(n) + 2, len(label.get(n, "")) + 2), n, None)
        for n in names]
    ratios = [(f"{n}/s4n", n, "slirp4netns") for n in names if n != "slirp4netns"
              ] if "slirp4netns" in results else []
    if SLIRPY in results and baseline is not None and baseline in results:
        ratios.append(("slirpy/base", SLIRPY, baseline))
    if SLIRPY in results and PURE in results:
        ratios.append(("slirpy/pure", SLIRPY, PURE))
    for variant in VARIANTS:  # each variant's cost, beside plain slirpy in the same run
        if SLIRPY in results and variant in results:
            ratios.append((f"{variant.removeprefix('slirpy-')}/slirpy", variant, SLIRPY))
    if PURE in results and baseline is not None and baseline in results:
        ratios.append(("pure/base", PURE, baseline))
    for head, a, b in ratios:
        sub = pair_label(a, b) if b != "slirp4netns" else label.get(a, "")
        columns.append((head, sub, max(16, len(head) + 2, len(sub) + 2), a, b))

    def cell(metric: str, width: int, a: str, b: str | None) -> str:
        if b is None:
            return f"{value(a, metric):{width}.2f}"
        return f"{ratio(value(a, metric), value(b, metric)):{width - 1}.2f}x"

    lines = [f"{'metric':32}" + "".join(f"{c[0]:>{c[2]}}" for c in columns)]
    if label:
        lines.append(f"{'build':32}" + "".join(f"{c[1]:>{c[2]}}" for c in columns))
    for metric in metrics:
        lines.append(f"{metric:32}" + "".join(cell(metric, *c[2:]) for c in columns))
    note = "ratios are value / slirp4netns"
    for head, a, b in ratios:
        if b != "slirp4netns":
            note += f"; {head} is {a} / {b}"
    lines.append(f"({note}; for CPU, RR and RSS lower is better)")
    return "\n".join(lines)


def default_connectors() -> str:
    """slirp4netns, pasta and slirpy; and slirpy-pure when the working tree is compiled."""
    return "slirp4netns,pasta,slirpy" + (f",{PURE}" if compiled_files(REPO) else "")


def connector_names(args: argparse.Namespace) -> list[str]:
    spec = args.connectors if args.connectors is not None else default_connectors()
    names = list(dict.fromkeys(n for n in spec.split(",") if n))
    if args.baseline is not None and f"{SLIRPY}@{args.baseline}" not in names:
        names.append(f"{SLIRPY}@{args.baseline}")
    return names


def baseline_name(args: argparse.Namespace, names: list[str]) -> str | None:
    if args.baseline is not None:
        return f"{SLIRPY}@{args.baseline}"
    return next((n for n in names if n.startswith(SLIRPY + "@")), None)


def inner(args: argparse.Namespace) -> int:
    names = connector_names(args)
    trees = {SLIRPY: REPO, **{variant: REPO for variant in VARIANTS}}
    for spec in args.tree:  # NAME=DIR, from outer()
        name, _, path = spec.rpartition("=")
        trees[name] = Path(path)
    broken, builds = {}, {}
    for name in names:  # once, before measuring anything: a wrong tree stops the bench
        if is_slirpy(name):
            try:
                builds[name] = check_slirpy_tree(name, trees[name])
            except (RuntimeError, subprocess.TimeoutExpired, KeyError) as exc:
                broken[name] = exc
    build_world()
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    subprocess.run(["taskset", "-cp", "1", str(os.getpid())], stdout=subprocess.DEVNULL,
                   check=False)  # the harness itself stays off CPU 0
    servers = [start_server("127.0.0.1", CPS_PORT, short_reply),
               start_server(HOST_ADDR, RR_PORT, echo), start_udp_echo(HOST_ADDR, RR_PORT)]
    subprocess.run(["taskset", "-acp", "0", str(os.getpid())], stdout=subprocess.DEVNULL,
                   check=False)
    results = {}
    for name in names:
        if name in broken:
            print(f"bench: {name} failed: {broken[name]}", file=sys.stderr)
            continue
        if not is_slirpy(name) and shutil.which(name) is None:
            print(f"bench: {name} not installed, skipped", file=sys.stderr)
            continue
        print(f"bench: measuring {name}...", file=sys.stderr, flush=True)
        try:
            results[name] = measure(name, args, trees.get(name))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"bench: {name} failed: {exc}", file=sys.stderr)
    for server in servers:
        server.close()
    if args.json_fd is not None:  # first: the raw numbers survive a bug in report()
        with os.fdopen(args.json_fd, "w") as out:
            json.dump({"results": {name: r.values for name, r in results.items()},
                       "builds": builds}, out)
    if results:
        print(report(results, baseline_name(args, names), builds))
    return 0


def git(*argv: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def export_revision(rev: str, into: Path) -> str:
    """Extract the files of *rev* (any commit-ish) into *into*; return its commit."""
    try:
        commit = git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"bench: {rev!r} is not a commit in {REPO}") from None
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                               stdout=subprocess.PIPE)
    assert archive.stdout is not None
    tar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        raise SystemExit(f"bench: could not export {rev} into {into}")
    print(f"bench: {SLIRPY}@{rev} is {commit[:12]}, exported to {into}", file=sys.stderr)
    return commit


def scratch_dir() -> Path:
    """A temporary directory the world can see: the world mounts its own /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if base == Path("/tmp") or base.is_relative_to("/tmp"):
        base = Path("/var/tmp")
    return Path(tempfile.mkdtemp(prefix="slirpy-bench-", dir=base))


def finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


def outer(args: argparse.Namespace) -> int:
    # SIGTERM, like ^C, unwinds: the world is killed and the exported trees removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = connector_names(args)
    revs = [n.partition("@")[2] for n in names if n.startswith(SLIRPY + "@")]
    argv = [*sys.argv[1:], "--connectors", ",".join(names)]  # the world sees these ones
    scratch = scratch_dir() if revs or PURE in names else None
    commits = {}
    try:
        with tempfile.TemporaryFile("w+") as raw:
            for i, rev in enumerate(revs):
                assert scratch is not None
                tree = scratch / str(i)
                tree.mkdir()
                commits[f"{SLIRPY}@{rev}"] = export_revision(rev, tree)
                argv += ["--tree", f"{SLIRPY}@{rev}={tree}"]
            if PURE in names:
                assert scratch is not None
                copy_pure(REPO, scratch / "pure")
                argv += ["--tree", f"{PURE}={scratch / 'pure'}"]
            if args.json is not None:
                argv += ["--json-fd", str(raw.fileno())]
            code = enter_world(argv, pass_fds=(raw.fileno(),) if args.json else ())
            if args.json is not None:
                raw.seek(0)
                inner_out = json.loads(raw.read() or "{}")
                results = inner_out.get("results", {})
                head = git("rev-parse", "HEAD")
                dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD",
                                        "--", "slirpy"]).returncode != 0
                Path(args.json).write_text(json.dumps({
                    "quick": args.quick,
                    "python": sys.version.split()[0],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "revisions": {SLIRPY: {"head": head, "slirpy_modified": dirty}}
                    | ({PURE: {"head": head, "slirpy_modified": dirty,
                               "copy_of": "the working tree, without *.so"}}
                       if PURE in names else {})
                    | {name: {"commit": c} for name, c in commits.items()},
                    "builds": inner_out.get("builds", {}),
                    "baseline": baseline_name(args, names),
                    "results": {name: finite_or_none(v) for name, v in results.items()},
                }, indent=2) + "\n")
                print(f"bench: raw results written to {args.json}", file=sys.stderr)
            return code
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--connectors",
                        help="comma-separated: slirp4netns, pasta, slirpy (the working "
                             "tree, compiled if built in place), slirpy-pure (the working "
                             "tree's sources without *.so), slirpy-confined (the working "
                             "tree with --enable-sandbox --enable-seccomp), slirpy-observed "
                             "(with --events, --pcap and --metrics), slirpy-events, "
                             "slirpy-pcap, slirpy-metrics (one each), slirpy@REV "
                             "(slirpy at a git revision, pure); default: slirp4netns, "
                             "pasta, slirpy, plus slirpy-pure if the working tree is "
                             "compiled")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run slirpy@REV and print the working tree's slirpy "
                             "over it (slirpy/base)")
    parser.add_argument("--json", metavar="FILE",
                        help="write the raw results, per connector and metric, to FILE")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--json-fd", type=int, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.inner:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        return inner(args)
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
