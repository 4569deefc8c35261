"""Throwaway worlds for integration tests: everything a test touches, it made.

A test calls `in_world(scenario)`: the scenario function runs in a new user, network,
mount and PID namespace (the world) and returns a JSON-able result. In the world:
- lo is up and carries the "internet": documentation addresses (192.0.2.1,
  198.51.100.1, 2001:db8::1, 2001:db8::2) on which test servers listen, beside the
  world's own 127.0.0.1 and ::1;
- the default routes (IPv4 and IPv6) go into a tun device nobody reads, so an address
  nobody holds stays silent, as on a real network, and nothing leaves the world;
- /tmp is a private tmpfs (unless the checkout or the Python in use lives under /tmp:
  then it stays visible), WORK (a new directory, a tmpfs inside the world) holds its
  files, and /etc/resolv.conf is a file of the world's own naming a DNS server the
  world runs, so no real resolver is ever asked;
- unprivileged ping sockets are allowed; no fd above 2 is inherited from pytest.
A guest is `unshare -Urn sleep infinity` inside the world, and slirpy is started
with --ready-fd, so nothing waits on a sleep. The PID namespace ends every process
with the world; each helper still stops what it started.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SLIRPY = [sys.executable, "-m", "slirpy"]
INTERNET = "192.0.2.1"
INTERNET2 = "198.51.100.1"
INTERNET6 = "2001:db8::1"
INTERNET6_2 = "2001:db8::2"
NOBODY = "203.0.113.99"  # routed into the blackhole: never answers
NOBODY6 = "2001:db8:dead::99"
NAMES = {"example.test.": INTERNET, "other.test.": INTERNET2}
NAMES6 = {"example.test.": INTERNET6, "other.test.": INTERNET6_2}
WORLD_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
                 "--mount-proc", "--kill-child=SIGTERM"]
_RESULT = "@@world-result@@"
_WORK_ENV = "SLIRPY_WORLD_DIR"
WORK = Path(os.environ.get(_WORK_ENV, "/nonexistent"))  # set inside a world


# --- from the test: run a scenario in a new world ---

def in_world(scenario: Callable[..., Any], *args: Any, timeout: float = 240) -> Any:
    """Run *scenario(*args)* inside a new world; return what it returned."""
    code = (f"import json, sys; from integration.world import _enter; "
            f"_enter({scenario.__module__!r}, {scenario.__name__!r}, json.loads(sys.argv[1]))")
    cmd = [*WORLD_UNSHARE, sys.executable, "-c", code, json.dumps(args)]
    work = tempfile.mkdtemp(prefix="slirpy-world-")
    env = {**os.environ, "PYTHONPATH": str(REPO), _WORK_ENV: work,
           _DEADLINE_ENV: str(max(timeout - 10, 1))}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env)
    except subprocess.TimeoutExpired as exc:  # the world's own deadline should come first
        raise AssertionError(f"scenario {scenario.__name__} still running after {timeout} s:\n"
                             f"--- stdout\n{_text(exc.stdout)[-3000:]}\n"
                             f"--- stderr\n{_text(exc.stderr)[-6000:]}") from None
    finally:
        with contextlib.suppress(OSError):  # the world's tmpfs went with it: it is empty
            os.rmdir(work)
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    raise AssertionError(f"scenario {scenario.__name__} failed (exit {done.returncode}):\n"
                         f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-6000:]}")


_DEADLINE_ENV = "SLIRPY_WORLD_DEADLINE"


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _enter(module: str, name: str, args: list[Any]) -> None:
    # fds inherited from pytest must not leak into slirpy (an --exit-fd test would wait
    # on a pipe some parent holds open).
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # As PID 1 of its namespace this process ignores signals it has no handler for, so
    # unshare's --kill-child would not end it: exit on SIGTERM (the kernel then ends
    # every process of the world), and dump where every thread stood first.
    signal.signal(signal.SIGTERM, _terminated)
    faulthandler.dump_traceback_later(float(os.environ.get(_DEADLINE_ENV, "230")), exit=True)
    build_world()
    result = getattr(importlib.import_module(module), name)(*args)
    print(_RESULT + json.dumps(result), flush=True)


def _terminated(signum: int, frame: object) -> None:
    faulthandler.dump_traceback(all_threads=True)
    os._exit(128 + signum)


# --- inside the world ---

def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def build_world(nameservers: tuple[str, ...] = ("127.0.0.1",)) -> None:
    sh("ip link set lo up")
    sh(f"ip addr add {INTERNET}/32 dev lo && ip addr add {INTERNET2}/32 dev lo")
    sh(f"ip -6 addr add {INTERNET6}/128 dev lo && ip -6 addr add {INTERNET6_2}/128 dev lo")
    sh("ip tuntap add mode tun name blackhole0 && ip link set blackhole0 up "
       "&& ip route add default dev blackhole0 && ip -6 route add default dev blackhole0")
    if not any(Path(p).resolve().is_relative_to("/tmp")
               for p in (str(REPO), sys.prefix, sys.base_prefix, sys.executable, *sys.path)
               if p):
        sh("mount -t tmpfs tmpfs /tmp")  # WORK, made under the outer /tmp, is made anew
    WORK.mkdir(parents=True, exist_ok=True)
    sh(f"mount -t tmpfs tmpfs {WORK}")
    sh("sysctl -qw net.ipv4.ping_group_range='0 0'")
    set_nameservers(nameservers)
    sh(f"mount --bind {WORK}/resolv.conf /etc/resolv.conf")


def set_nameservers(nameservers: tuple[str, ...] | list[str]) -> None:
    (WORK / "resolv.conf").write_text("".join(f"nameserver {n}\n" for n in nameservers))


class Guest:
    """A guest namespace as rootless containers have: its own user namespace too."""

    def __init__(self) -> None:
        # Its own mount namespace too, for a resolv.conf naming slirpy's DNS address.
        (WORK / "guest-resolv.conf").write_text("nameserver 10.0.2.3\n")
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "sh", "-c",
             f"mount --bind {WORK}/guest-resolv.conf /etc/resolv.conf && echo up >/dev/fd/{write_fd}"
             f" && exec sleep infinity"], pass_fds=(write_fd,))
        os.close(write_fd)
        with os.fdopen(read_fd) as ready:
            if ready.readline() != "up\n":
                raise RuntimeError("guest namespace did not come up")
        self.pid = self.proc.pid

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 120,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
        done = subprocess.run(["nsenter", "--target", str(self.pid), "--net", "--mount",
                               "--user", "--preserve-credentials", *argv],
                              capture_output=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"guest command failed ({done.returncode}): {cmd}\n"
                                 f"{done.stdout[-2000:]!r}\n{done.stderr[-2000:]!r}")
        return done

    def python(self, code: str, *args: str, timeout: float = 120) -> str:
        return self.run([sys.executable, "-c", code, *args], timeout=timeout).stdout.decode()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Slirpy:
    """slirpy (or a compatible connector) attached to a guest, up once it said ready."""

    def __init__(self, guest: Guest, *args: str, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        read_fd, write_fd = os.pipe()
        argv = [*(command or SLIRPY), "-r", str(write_fd), *args, str(guest.pid), "tap0"]
        self.stderr_path = WORK / f"slirpy-{time.monotonic_ns()}.log"
        with open(self.stderr_path, "wb") as log:
            self.proc = subprocess.Popen(argv, pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                                         stderr=log, env={**os.environ, **(env or {})})
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            if ready.read(1) != b"1":
                self.proc.wait(5)
                raise AssertionError(f"connector not ready: {self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def dump_to_stderr(self) -> None:
        """On a failure: slirpy's connection states (SIGUSR1) and log, for the report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)  # the dump is written by slirpy's loop; no signal says when
        print(f"--- slirpy log\n{self.log()}", file=sys.stderr)

    def sockets(self) -> int:
        """Open socket fds: every flow holds one (pipes and the tap are not counted: the
        ready fd is closed just after "1" is written, racing a count taken then)."""
        fd_dir = f"/proc/{self.proc.pid}/fd"
        count = 0
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                count += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
        return count

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def attached(*args: str, env: dict[str, str] | None = None,
             command: list[str] | None = None) -> Iterator[tuple[Guest, Slirpy]]:
    """A guest with slirpy (or *command*, a compatible connector) attached as tap0."""
    guest = Guest()
    try:
        slirpy = Slirpy(guest, *args, command=command, env=env)
        try:
            yield guest, slirpy
        except BaseException:
            slirpy.dump_to_stderr()
            raise
        finally:
            slirpy.stop()
    finally:
        guest.stop()


# --- servers in the world ---

def serve_forever(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def greeter(addr: str, port: int, text: bytes) -> list[str]:
    """A TCP server that sends *text* to each client and closes; the list returned fills
    with the address of each client seen."""
    seen: list[str] = []
    srv = socket.create_server((addr, port), family=_family(addr))

    def loop() -> None:
        while True:
            conn, peer = srv.accept()
            seen.append(peer[0])
            with conn:
                conn.sendall(text)
    serve_forever(loop)
    return seen


def udp_echo(addr: str, port: int) -> list[tuple[int, str]]:
    """Echo every datagram; the list returned fills with (size, sha256) of each one
    received, so a test can check what arrived at this end as well as what came back."""
    sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((addr, port))
    received: list[tuple[int, str]] = []

    def loop() -> None:
        while True:
            data, peer = sock.recvfrom(65535)
            received.append((len(data), sha256(data)))
            sock.sendto(data, peer)
    serve_forever(loop)
    return received


def dns_server(addr: str = "127.0.0.1", port: int = 53) -> None:
    """Answers A queries for NAMES and AAAA queries for NAMES6 over UDP and TCP;
    NXDOMAIN for anything else. *addr* may be of either family."""
    from scapy.layers.dns import DNS, DNSRR  # type: ignore[import-untyped]

    def answer(query: bytes) -> bytes:
        q = DNS(query)
        name = q.qd[0].qname.decode().lower()
        qtype = q.qd[0].qtype
        if name in NAMES and qtype in (1, 28):
            rtype, rdata = ("A", NAMES[name]) if qtype == 1 else ("AAAA", NAMES6[name])
            return bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd,
                             an=DNSRR(rrname=name, type=rtype, ttl=60, rdata=rdata)))
        return bytes(DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd,
                         rcode=0 if name in NAMES else 3))

    udp = socket.socket(_family(addr), socket.SOCK_DGRAM)
    udp.bind((addr, port))

    def udp_loop() -> None:
        while True:
            data, peer = udp.recvfrom(4096)
            udp.sendto(answer(data), peer)

    tcp = socket.create_server((addr, port), family=_family(addr))

    def tcp_loop() -> None:
        while True:
            conn, _ = tcp.accept()
            with conn:
                length = int.from_bytes(conn.recv(2), "big")
                data = b""
                while len(data) < length:
                    data += conn.recv(length - len(data))
                reply = answer(data)
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
    serve_forever(udp_loop)
    serve_forever(tcp_loop)


def api_request(path: Path, request: dict[str, Any]) -> Any:
    """One request to a slirp4netns-style API socket; the reply, decoded."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        return json.loads(sock.makefile().read())


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
