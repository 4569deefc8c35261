"""Issue 13: floods and exhaustion from an untrusted guest or local client, for real.

Each scenario runs in a world of its own with one connector attached to a guest, floods
it, and returns what it saw: whether the connector lived, what the guest's clients got,
how many log lines it wrote, its peak RSS (VmHWM). The tests run them on slirpy and hold
it to #13; `python -m integration.test_floods` runs each on slirp4netns too and prints
the figures side by side.

- fd exhaustion: the connector under `prlimit --nofile=256` (hard limit too: it cannot
  raise it), or with the limit lowered under it once running; the guest opens 1000
  connections, checks that those it holds still carry data, closes them and opens one
  more.
- SYN flood: the guest's raw socket sends SYNs from spoofed addresses of its network, so
  the SYN-ACKs are never answered (the guest's kernel drops them: not its address); the
  host service counts what it accepts; then a real client connects.
- UDP flood: datagrams to 100k destinations nobody answers (the blackhole), then an echo.
- fragment flood: first fragments of 50k datagrams that never complete, then an echo.
- API flood: clients sending requests too large, while the guest exchanges data.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


from integration.world import (INTERNET, SLIRPY, WORK, Slirpy, attached, in_world, serve_forever,
                               udp_echo)

ECHO_PORT = 9000
FLOOD_PORT = 9100
UDP_ECHO_PORT = 9200
CONNECTORS: dict[str, list[str]] = {"slirpy": SLIRPY, "slirp4netns": ["slirp4netns"]}


# --- servers and measurements in the world ---


def echo_server(port: int) -> dict[str, int]:
    """A TCP echo server holding every client until it closes (one thread, selectors);
    the dict counts the clients it accepted."""
    counts = {"accepted": 0}
    srv = socket.create_server((INTERNET, port), backlog=4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)

    def loop() -> None:
        while True:
            for key, _ in sel.select():
                if key.fileobj is srv:
                    try:
                        conn, _ = srv.accept()
                    except OSError:
                        continue
                    counts["accepted"] += 1
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        conn.sendall(data)
                    except OSError:
                        pass
                else:
                    sel.unregister(conn)
                    conn.close()
    serve_forever(loop)
    return counts


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def log_lines(connector: Slirpy) -> list[str]:
    return connector.stderr_path.read_text(errors="replace").splitlines()


def finish(connector: Slirpy, started_lines: int, **result: Any) -> dict[str, Any]:
    """What every scenario reports about the connector once the flood is over."""
    alive = connector.proc.poll() is None
    lines = log_lines(connector)[started_lines:]
    return {**result, "alive": alive, "peak_rss_kib": peak_rss_kib(connector.proc.pid)
            if alive else None, "log_lines": len(lines), "log_sample": lines[:12]}


# --- fd exhaustion ---

GUEST_CONNECTIONS = """
import errno, json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, refused, timeouts, other = [], 0, 0, {}
start = time.monotonic()
for i in range(n):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        held.append(s)
    except ConnectionRefusedError:
        refused += 1; s.close()
    except socket.timeout:
        timeouts += 1; s.close()
    except OSError as exc:
        other[exc.errno] = other.get(exc.errno, 0) + 1; s.close()
opened_s = time.monotonic() - start
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new UDP flow, fds all taken
udp.settimeout(2)
udp.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR: host unreachable is no hard error
udp.connect((host, int(sys.argv[4])))
try:
    udp.send(b"udp?"); udp_while_full = udp.recv(100).decode()
except socket.timeout:
    udp_while_full = "timeout"
except OSError as exc:  # ICMP "host unreachable" from the connector: EHOSTUNREACH
    udp_while_full = errno.errorcode.get(exc.errno, str(exc.errno))
udp.close()
carried = 0
for s in held[:: max(1, len(held) // 20)]:  # held connections still carry data
    try:
        s.sendall(b"still here"); carried += s.recv(100) == b"still here"
    except OSError:
        pass
for s in held:
    s.close()
time.sleep(1)
start = time.monotonic()
after = None
while after is None and time.monotonic() - start < 10:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"hello"); after = s.recv(100).decode()
    except OSError:
        time.sleep(0.2)
print(json.dumps({"held": len(held), "refused": refused, "timeouts": timeouts,
                  "other": other, "opened_s": round(opened_s, 2), "carried": carried,
                  "sampled": len(held[:: max(1, len(held) // 20)]), "after": after,
                  "udp_while_full": udp_while_full,
                  "after_s": round(time.monotonic() - start, 2)}))
"""


def scenario_fd_exhaustion(name: str, lower_after_start: bool) -> dict[str, Any]:
    """*name* at an open-file limit of 256: from its start (prlimit), or lowered under it
    once it runs (its caps were sized for a larger one: the refusals come from EMFILE)."""
    echo_server(ECHO_PORT)
    udp_echo(INTERNET, UDP_ECHO_PORT)
    prefix = [] if lower_after_start else ["prlimit", "--nofile=256"]
    with attached("-c", command=[*prefix, *CONNECTORS[name]]) as (guest, connector):
        if lower_after_start:
            subprocess.run(["prlimit", "--pid", str(connector.proc.pid), "--nofile=256:256"],
                           check=True)
        started = len(log_lines(connector))
        out = guest.python(GUEST_CONNECTIONS, INTERNET, str(ECHO_PORT), "1000",
                           str(UDP_ECHO_PORT), timeout=90)
        time.sleep(0.5)
        return finish(connector, started, **json.loads(out))


def check_fd_exhaustion(result: dict[str, Any]) -> None:
    assert result["alive"], result
    assert result["held"] >= 50 and result["refused"] + result["held"] == 1000, result
    assert result["timeouts"] == 0 and not result["other"], result  # refused at once: an RST
    assert result["carried"] == result["sampled"], result  # existing flows go on
    assert result["after"] == "hello", result  # and new ones work once fds free up
    assert result["log_lines"] <= 12, result  # rate-limited, not one per refusal


def test_fd_limit_from_the_start_refuses_cleanly_and_recovers() -> None:
    result = in_world(scenario_fd_exhaustion, "slirpy", False, timeout=120)
    check_fd_exhaustion(result)
    # Its flow caps leave fds for UDP (then it echoes) unless it could not size them.
    assert result["udp_while_full"] in ("udp?", "EHOSTUNREACH"), result


def test_fd_limit_lowered_under_a_running_slirpy_refuses_cleanly_and_recovers() -> None:
    result = in_world(scenario_fd_exhaustion, "slirpy", True, timeout=120)
    check_fd_exhaustion(result)
    assert any("no file descriptor" in line for line in result["log_sample"]), result
    assert result["udp_while_full"] == "EHOSTUNREACH", result  # ICMP host unreachable


# --- SYN flood ---

RAW_SENDER = r"""
import json, socket, struct, sys, time

def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

kind, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
daddr = socket.inet_aton(dst)
sent = dropped = 0
start = time.monotonic()
for i in range(count):
    saddr = socket.inet_aton("10.0.2.%d" % (200 + i % 50))  # not the guest's: never answered
    if kind == "syn":
        sport = 1024 + (i // 50) % 60000
        tcp = struct.pack("!HHIIBBHHH", sport, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
        pseudo = saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0,
                         saddr, daddr)
        packet = ip + tcp
    else:  # the first fragment of a UDP datagram that never completes
        payload = b"f" * 1400
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), i & 0xFFFF, 0x2000,
                         64, 17, 0, saddr, daddr)
        packet = ip + payload
    try:
        raw.sendto(packet, (dst, 0))
        sent += 1
    except OSError:  # the tap's queue is full: the connector is behind
        dropped += 1
        time.sleep(0.0005)
print(json.dumps({"sent": sent, "send_failed": dropped,
                  "send_s": round(time.monotonic() - start, 2)}))
"""

REAL_CLIENT = """
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
answer = None
while answer is None and time.monotonic() - start < 90:
    try:  # the kernel sends its SYN again after 1, 3, 7, 15 s...
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"hello"); answer = s.recv(100).decode()
    except OSError:
        time.sleep(0.2)
print(json.dumps({"answer": answer, "connect_s": round(time.monotonic() - start, 2)}))
"""


def scenario_syn_flood(name: str, count: int) -> dict[str, Any]:
    counts = echo_server(FLOOD_PORT)
    with attached("-c", command=CONNECTORS[name]) as (guest, connector):
        started = len(log_lines(connector))
        flood = json.loads(guest.python(RAW_SENDER, "syn", INTERNET, str(FLOOD_PORT),
                                        str(count), timeout=60))
        time.sleep(1)  # what the connector had queued
        accepted_by_flood = counts["accepted"]
        flood_ended = time.monotonic()
        real = json.loads(guest.python(REAL_CLIENT, INTERNET, str(FLOOD_PORT), timeout=120))
        return finish(connector, started, **flood, accepted_by_flood=accepted_by_flood,
                      recovered_s=round(time.monotonic() - flood_ended, 2), **real)


def test_syn_flood_holds_the_pending_cap_and_new_connections_follow() -> None:
    result = in_world(scenario_syn_flood, "slirpy", 20000, timeout=150)
    assert result["alive"], result
    # The host service saw at most the pending cap (a quarter of 4096), not a connection
    # per SYN; the flood's half-open connections are given up within 7 s (the cap was
    # crowded), so a real client gets through soon after.
    assert result["accepted_by_flood"] <= 1024 + 64, result
    assert result["answer"] == "hello" and result["recovered_s"] < 30, result
    assert result["log_lines"] <= 12, result


# --- UDP and fragment floods ---

UDP_SPRAY = """
import json, socket, sys, time
count = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start, failed = time.monotonic(), 0
for i in range(count):
    try:
        s.sendto(b"x", ("203.0.113.%d" % (1 + i % 250), 1024 + i // 250))
    except OSError:
        failed += 1
        time.sleep(0.0005)
print(json.dumps({"sent": count - failed, "send_failed": failed,
                  "send_s": round(time.monotonic() - start, 2)}))
"""

UDP_ECHO_CHECK = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
start, answer = time.monotonic(), None
while answer is None and time.monotonic() - start < 20:
    s.sendto(b"echo?", (sys.argv[1], int(sys.argv[2])))
    try:
        answer = s.recv(100).decode()
    except OSError:
        pass
print(json.dumps({"echo": answer, "echo_s": round(time.monotonic() - start, 2)}))
"""


def scenario_udp_flood(name: str, kind: str, count: int) -> dict[str, Any]:
    udp_echo(INTERNET, UDP_ECHO_PORT)
    with attached("-c", command=CONNECTORS[name]) as (guest, connector):
        started = len(log_lines(connector))
        if kind == "udp":
            flood = json.loads(guest.python(UDP_SPRAY, str(count), timeout=90))
        else:
            flood = json.loads(guest.python(RAW_SENDER, "fragments", INTERNET, "0", str(count),
                                            timeout=90))
        time.sleep(1)
        sockets = connector.sockets()
        echo = json.loads(guest.python(UDP_ECHO_CHECK, INTERNET, str(UDP_ECHO_PORT)))
        return finish(connector, started, **flood, sockets_after=sockets, **echo)


def test_udp_flood_to_100k_destinations_is_held_at_the_cap() -> None:
    result = in_world(scenario_udp_flood, "slirpy", "udp", 100_000, timeout=150)
    assert result["alive"] and result["echo"] == "echo?", result
    assert result["sockets_after"] <= 1024 + 16, result  # the UDP flow cap
    assert result["log_lines"] <= 12, result


def test_fragment_flood_is_bounded() -> None:
    result = in_world(scenario_udp_flood, "slirpy", "fragments", 50_000, timeout=150)
    assert result["alive"] and result["echo"] == "echo?", result
    assert result["peak_rss_kib"] < 128 * 1024, result  # 4 MiB of fragments at most
    assert result["log_lines"] <= 12, result


# --- API flood ---

GUEST_PINGPONG = """
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
worst, rounds = 0.0, 0
with socket.create_connection((host, port), timeout=10) as s:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        s.sendall(b"ping"); assert s.recv(100) == b"ping"
        worst = max(worst, time.monotonic() - t); rounds += 1
        time.sleep(0.01)
print(json.dumps({"rounds": rounds, "worst_rtt_s": round(worst, 3)}))
"""


def api_abuser(path: str, stop: threading.Event, sent: list[int]) -> None:
    junk = b"x" * (256 * 1024)
    while not stop.is_set():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            try:
                sock.connect(path)
            except OSError:
                time.sleep(0.001)  # the backlog is full
                continue
            sent[0] += 1
            try:  # the connector answers after 4 KiB (slirpy) and closes: a reset, often
                sock.sendall(junk)
                sock.recv(1000)
            except OSError:
                pass


def scenario_api_flood(name: str, seconds: float) -> dict[str, Any]:
    echo_server(ECHO_PORT)
    path = str(WORK / "api.sock")
    with attached("-c", "--api-socket", path, command=CONNECTORS[name]) as (guest, connector):
        started = len(log_lines(connector))
        stop, sent = threading.Event(), [0]
        abusers = [threading.Thread(target=api_abuser, args=(path, stop, sent), daemon=True)
                   for _ in range(8)]
        for thread in abusers:
            thread.start()
        try:
            pingpong = json.loads(guest.python(GUEST_PINGPONG, INTERNET, str(ECHO_PORT),
                                               str(seconds), timeout=60))
        finally:
            stop.set()
            for thread in abusers:
                thread.join(5)
        too_large = sum("too large" in line for line in log_lines(connector)[started:])
        return finish(connector, started, **pingpong, api_requests=sent[0],
                      too_large_lines=too_large)


def test_api_flood_logs_a_few_lines_and_leaves_the_data_path_alone() -> None:
    result = in_world(scenario_api_flood, "slirpy", 8.0, timeout=90)
    assert result["alive"] and result["api_requests"] > 100, result
    assert result["too_large_lines"] <= 6, result  # 5 a minute, then a count
    assert result["rounds"] > 100 and result["worst_rtt_s"] < 1.0, result


# --- side by side, for the report ---

SCENARIOS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "fd limit 256 at start": (scenario_fd_exhaustion, (False,)),
    "fd limit lowered to 256": (scenario_fd_exhaustion, (True,)),
    "SYN flood 20k": (scenario_syn_flood, (20000,)),
    "UDP flood 100k dst": (scenario_udp_flood, ("udp", 100_000)),
    "fragment flood 50k": (scenario_udp_flood, ("fragments", 50_000)),
    "API flood 8 s": (scenario_api_flood, (8.0,)),
}


def main() -> None:
    import integration.test_floods as this  # run as __main__: the world imports it by name
    names = [n for n in CONNECTORS if n == "slirpy" or shutil.which(CONNECTORS[n][0])]
    only = sys.argv[1:]
    for title, (scenario, args) in SCENARIOS.items():
        if only and not any(o in title for o in only):
            continue
        for name in names:
            try:
                result = in_world(getattr(this, scenario.__name__), name, *args, timeout=240)
            except AssertionError as exc:
                result = {"failed": str(exc)[-800:]}
            result.pop("log_sample", None) if result.get("alive") else None
            print(f"{title:26} {name:12} {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    main()
