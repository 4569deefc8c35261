"""Issue 14: `slirpy ctl` against a running slirpy, every command in both forms.

A slirpy attached to a guest with --name and -L, a guest downloading slowly (so there is
a flow with a rate to see), and `slirpy ctl` run as the user runs it: a process of its
own, finding the socket by -a, --name, --pid or as the only instance. `ctl watch` runs
on a pty, and its screen is read back. Then `slirpy run` (confined, by default), found
with no flags at all, given a capture file it could not open itself, and pruned from
the registry once it is gone (confined, it cannot unregister itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

from integration.world import INTERNET, REPO, SLIRPY, WORK, Guest, attached, dns_server, \
    greeter, in_world, serve_forever

STREAM_PORT = 8001
CHUNK = 16 << 10
DOWNLOAD = """
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    end = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end and s.recv(65536):
        pass
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def slow_stream(addr: str, port: int) -> None:
    """Sends CHUNK every 20 ms (about 800 KiB/s) to each client until it hangs up."""
    srv = socket.create_server((addr, port))

    def client(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while True:
                conn.sendall(b"x" * CHUNK)
                time.sleep(0.02)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            serve_forever(client, conn)
    serve_forever(loop)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(WORK / "run")}


def ctl(*args: str) -> dict[str, Any]:
    done = subprocess.run([*SLIRPY, "ctl", *args], capture_output=True, text=True, timeout=30,
                          env=env())
    return {"status": done.returncode, "out": done.stdout, "err": done.stderr}


def both(*args: str) -> dict[str, Any]:
    """The human form and the --json form of one command."""
    human, raw = ctl(*args), ctl("--json", *args)
    with contextlib.suppress(ValueError):
        raw["json"] = json.loads(raw["out"])
    return {"human": human, "json": raw}


@contextlib.contextmanager
def download(guest: Guest, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["nsenter", "--target", str(guest.pid), "--net", "--mount",
                             "--user", "--preserve-credentials", sys.executable, "-c", DOWNLOAD,
                             INTERNET, str(STREAM_PORT), str(seconds)])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_for_flow(guest: Guest, port: int) -> bool:
    """Until the guest's connection to *port* is in slirpy's flow table (the download
    starts in the background)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        flows = ctl("--json", "flows")
        if flows["status"] == 0 and any(
                f["remote"] == f"{INTERNET}:{port}" for f in json.loads(flows["out"])["return"]
                ["flows"]):
            return True
        time.sleep(0.1)  # polled: no event says "the guest connected" without subscribe
    return False


def watch_on_pty(*args: str, until: re.Pattern[str]) -> dict[str, Any]:
    """`ctl watch` on a terminal 160x40: the screen (escapes removed) once *until*
    matches it, then q; the exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([*SLIRPY, "ctl", *args, "watch"], stdin=slave, stdout=slave,
                            stderr=slave, env={**env(), "TERM": "xterm"}, start_new_session=True)
    os.close(slave)
    raw = b""
    seen = ""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    raw += os.read(master, 65536)
                except OSError:
                    break
                screens = raw.decode(errors="replace").split("\x1b[H")
                seen = ANSI.sub("", screens[-1] if len(screens) > 1 else "")
                if until.search(seen):
                    break
        os.write(master, b"q")
        status = proc.wait(10)
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while select.select([master], [], [], 1)[0] and (chunk := os.read(master, 65536)):
                raw += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return {"screen": seen, "status": status, "alternate": b"\x1b[?1049h" in raw,
            "restored": raw.rstrip().endswith(b"\x1b[?1049l")}


def follow_events(guest: Guest) -> dict[str, Any]:
    """`ctl events` and `ctl --json events` while the guest makes connections; each
    stopped by Ctrl-C (SIGINT) once it showed a finished flow."""
    readers = {form: subprocess.Popen([*SLIRPY, "ctl", *flags, "events"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env())
               for form, flags in (("human", []), ("json", ["--json"]))}
    lines: dict[str, list[str]] = {form: [] for form in readers}
    done = {form: False for form in readers}
    deadline = time.monotonic() + 20
    while not all(done.values()) and time.monotonic() < deadline:
        # A new connection each round: a reader may subscribe after the first one.
        guest.python(f"import socket; socket.create_connection(('{INTERNET}', 8000)).recv(99)")
        end = time.monotonic() + 1
        while (left := end - time.monotonic()) > 0 and not all(done.values()):
            pipes = {readers[f].stdout: f for f in readers if not done[f]}
            ready, _, _ = select.select(list(pipes), [], [], left)
            for pipe in ready:
                form = pipes[pipe]
                assert pipe is not None
                line = pipe.readline().decode()
                if not line:
                    done[form] = True
                    continue
                lines[form].append(line.rstrip("\n"))
                done[form] = "flow-done" in line
    out: dict[str, Any] = {"lines": lines}
    for form, proc in readers.items():
        proc.send_signal(signal.SIGINT)
        out[f"{form}_status"] = proc.wait(10)
        assert proc.stderr is not None
        out[f"{form}_stderr"] = proc.stderr.read().decode()
    return out


def scenario_ctl_attached() -> dict[str, Any]:
    dns_server("127.0.0.1")
    greeter(INTERNET, 8000, b"hello")
    slow_stream(INTERNET, STREAM_PORT)
    (WORK / "run").mkdir(mode=0o700)
    out: dict[str, Any] = {"none_yet": ctl("counters")}
    api = str(WORK / "api.sock")
    with attached("-c", "--api-socket", api, "--name", "web", "-L", "127.0.0.1:18080:80",
                  env=env()) as (guest, slirpy):
        out["pid"] = slirpy.proc.pid
        out["registry"] = sorted(os.listdir(WORK / "run" / "slirpy"))
        out["forwards"] = both("forwards")
        out["add_forward"] = both("add-forward", "127.0.0.1:18081:81")
        out["add_remote"] = ctl("add-forward", "--remote", "10.0.2.2:9000:192.0.2.1:8000")
        out["forwards_after"] = ctl("--json", "forwards")
        added = [f["id"] for f in json.loads(out["forwards_after"]["out"])["return"]["forwards"]]
        out["remove_forward"] = [ctl("remove-forward", str(i)) for i in added[1:]]
        out["remove_missing"] = ctl("remove-forward", "99")
        out["rules"] = both("rules")
        out["add_rule"] = both("add-rule", "deny", "192.0.2.99")
        out["bad_rule"] = ctl("add-rule", "allow", "example.test")
        out["rules_after"] = ctl("rules")
        out["remove_rule"] = ctl("remove-rule", "1")
        out["counters"] = both("counters")
        out["metrics"] = both("metrics")
        pcap = WORK / "capture.pcap"
        out["pcap_start"] = ctl("--name", "web", "pcap-start", str(pcap))
        with download(guest, 20):
            out["flow_seen"] = wait_for_flow(guest, STREAM_PORT)
            out["flows"] = both("flows", "--sort", "bytes")
            out["by_name"] = ctl("--name", "web", "--json", "counters")
            out["by_pid"] = ctl("--pid", str(slirpy.proc.pid), "--json", "counters")
            out["watch_once"] = ctl("watch", "--once", "--interval", "0.5")
            out["watch"] = watch_on_pty("--name", "web", until=re.compile(
                rf"{INTERNET}:{STREAM_PORT}\s+\S+\s+[0-9.]+ B/s\s+[0-9.]+ [KM]iB/s"))
        out["pcap_stop"] = both("pcap-stop")  # stops, then: nothing to stop
        out["pcap_head"] = pcap.read_bytes()[:4].hex() if pcap.exists() else None
        out["events"] = follow_events(guest)
        out["no_socket"] = ctl("-a", str(WORK / "nothing.sock"), "counters")
        out["no_name"] = ctl("--name", "db", "counters")
    out["registry_after"] = sorted(os.listdir(WORK / "run" / "slirpy"))
    out["after_exit"] = ctl("counters")
    return out


def test_every_ctl_command_against_an_attached_slirpy() -> None:
    out = in_world(scenario_ctl_attached, timeout=120)
    assert out["none_yet"]["status"] == 1
    assert out["none_yet"]["err"].startswith("slirpy ctl: no running slirpy found in "), out
    pid = out["pid"]
    assert out["registry"] == [f"{pid}.sock", "web.sock"]

    forwards = out["forwards"]
    header, row = forwards["human"]["out"].splitlines()
    assert (header.split(), row.split()) == (
        ["ID", "KIND", "SPEC", "ORIGIN"],
        ["1", "local", "tcp://127.0.0.1:18080:10.0.2.100:80", "config"]), forwards
    assert header.index("SPEC") == row.index("tcp://"), "aligned"
    assert forwards["json"]["json"]["return"]["forwards"][0]["id"] == 1
    assert out["add_forward"]["human"]["out"] == "added local forward 2\n"
    assert out["add_forward"]["json"]["status"] == 1  # the same port again: refused
    assert out["add_forward"]["json"]["err"].startswith("slirpy ctl: refused: "), out
    assert out["add_remote"]["out"] == "added remote forward 3\n", out["add_remote"]
    assert [f["kind"] for f in json.loads(out["forwards_after"]["out"])["return"]["forwards"]] \
        == ["local", "local", "remote"]
    assert [r["out"] for r in out["remove_forward"]] == ["removed forward 2\n",
                                                        "removed forward 3\n"]
    assert out["remove_missing"] == {
        "status": 1, "out": "",
        "err": "slirpy ctl: refused: bad request: remove_forward: bad arguments.id\n"}

    assert out["rules"]["human"]["out"] == \
        "no rules\nwhen no rule matches: routing on, host on, host loopback on\n"
    assert out["rules"]["json"]["json"]["return"]["rules"] == []
    assert out["add_rule"]["human"]["out"] == "added deny rule 1\n"
    assert out["add_rule"]["json"]["json"] == {"return": {"ids": [2]}}
    assert out["bad_rule"]["status"] == 1 and out["bad_rule"]["err"].count("\n") == 1
    assert "names are resolved at start only" in out["bad_rule"]["err"]
    assert out["rules_after"]["out"].splitlines()[:3] == [
        "ID  ACTION  RULE", " 1  deny    192.0.2.99", " 2  deny    192.0.2.99"]
    assert out["remove_rule"]["out"] == "removed rule 1\n"

    counters = out["counters"]
    assert counters["human"]["status"] == 0
    assert re.search(r"^frames\s+from guest [0-9]+, to guest [0-9]+$",
                     counters["human"]["out"], re.M), counters
    assert counters["json"]["json"]["return"]["forwards"] == 1
    assert "slirpy_" in out["metrics"]["human"]["out"], out["metrics"]
    assert "slirpy_" in out["metrics"]["json"]["json"]["return"]["text"]

    assert out["flow_seen"], out["flows"]
    table = out["flows"]["human"]["out"].splitlines()
    assert table[0].split()[:4] == ["PROTO", "GUEST", "REMOTE", "STATE"], table
    row = table[1].split()
    assert row[0] == "tcp" and row[2] == f"{INTERNET}:{STREAM_PORT}", table
    assert row[3] == "ESTABLISHED" and row[7] in ("KiB", "MiB"), table
    assert any(f["remote"] == f"{INTERNET}:{STREAM_PORT}"
               for f in out["flows"]["json"]["json"]["return"]["flows"])
    for found in (out["by_name"], out["by_pid"]):
        assert found["status"] == 0 and "frames" in json.loads(found["out"])["return"]

    once = out["watch_once"]
    assert once["status"] == 0 and "\x1b" not in once["out"], once
    assert once["out"].startswith(f"slirpy {pid}  up "), once
    assert f"{INTERNET}:{STREAM_PORT}" in once["out"] and "top talkers: 192.0.2.1" in once["out"]
    watch = out["watch"]
    assert watch["status"] == 0, watch
    assert watch["screen"].startswith("slirpy web  up "), watch
    assert re.search(r"guest link: from guest [0-9.]+ [KM]?i?B/s, to guest [0-9.]+ [KM]iB/s",
                     watch["screen"]), watch
    assert watch["alternate"] and watch["restored"], watch

    assert out["pcap_start"]["status"] == 0, out["pcap_start"]
    assert out["pcap_start"]["out"].startswith("capturing to /"), out["pcap_start"]
    assert re.fullmatch(r"capture stopped: [1-9][0-9]* frames, [0-9.]+ [KM]iB\n",
                        out["pcap_stop"]["human"]["out"]), out["pcap_stop"]
    assert out["pcap_head"] in ("4d3cb2a1", "d4c3b2a1"), out["pcap_head"]  # pcap magic, LE
    assert out["pcap_stop"]["json"]["status"] == 1  # nothing to stop now

    events = out["events"]
    assert events["human_status"] == 0 and events["json_status"] == 0, events
    assert events["human_stderr"] == events["json_stderr"] == "", events
    done = [line for line in events["lines"]["human"] if "flow-done" in line]
    assert done and re.search(rf"tcp 10\.0\.2\.100:[0-9]+ -> {INTERNET}:8000 ", done[0]), events
    assert "to guest 5 B" in done[0], events
    parsed = [json.loads(line) for line in events["lines"]["json"]]
    assert any(e["event"] == "flow-done" and e["bytes"]["to_guest"] == 5 for e in parsed), events

    assert out["no_socket"]["status"] == 1
    assert out["no_socket"]["err"].endswith("nothing.sock: start slirpy with --api-socket\n")
    assert out["no_name"]["err"] == f"slirpy ctl: no slirpy named db is running (running: " \
                                    f"{pid} (web))\n"
    assert out["registry_after"] == [], "a clean exit unregisters"
    assert out["after_exit"]["status"] == 1


RUN_CMD = """
import socket, sys
for _ in range(2):  # once at start, once more when asked (a line on stdin)
    with socket.create_connection((sys.argv[1], 8000), timeout=10) as s:
        print(s.recv(100).decode(), flush=True)
    sys.stdin.readline()
sys.stdin.read()
"""


def scenario_ctl_run() -> dict[str, Any]:
    """`slirpy run` with no flags: confined, with a default API socket and no name."""
    dns_server("127.0.0.1")
    greeter(INTERNET, 8000, b"hello")
    (WORK / "run").mkdir(mode=0o700)
    # --enable-host: the "internet" lives on the world's own addresses
    proc = subprocess.Popen([*SLIRPY, "run", "--enable-host", "--", sys.executable, "-c",
                             RUN_CMD, INTERNET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    out: dict[str, Any] = {"reached": proc.stdout.readline().decode().strip(), "pid": proc.pid}
    try:
        out["registry"] = sorted(os.listdir(WORK / "run" / "slirpy"))
        out["counters"] = ctl("counters")
        out["flows"] = ctl("--json", "flows")
        # A file only this user can open; slirpy, confined, could not open any path.
        out["pcap_start"] = ctl("pcap-start", str(WORK / "run.pcap"))
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        out["again"] = proc.stdout.readline().decode().strip()
        out["pcap_stop"] = ctl("pcap-stop")
        out["pcap_size"] = (WORK / "run.pcap").stat().st_size
    finally:
        proc.stdin.close()
        out["status"] = proc.wait(30)
    out["stderr"] = proc.stderr.read().decode()
    out["registry_left"] = sorted(os.listdir(WORK / "run" / "slirpy"))
    out["after"] = ctl("counters")
    out["registry_pruned"] = sorted(os.listdir(WORK / "run" / "slirpy"))
    return out


def test_slirpy_run_is_found_with_no_flags_and_pruned_once_gone() -> None:
    out = in_world(scenario_ctl_run, timeout=120)
    assert out["reached"] == "hello", out
    pid = out["pid"]
    assert out["registry"] == [f"{pid}.api", f"{pid}.sock"], out
    assert out["counters"]["status"] == 0, out
    assert re.search(r"^frames\s+from guest [1-9]", out["counters"]["out"], re.M), out
    assert out["pcap_start"]["status"] == 0, out
    assert out["again"] == "hello", out
    assert re.match(r"capture stopped: [1-9]", out["pcap_stop"]["out"]), out
    assert out["pcap_size"] > 24 + 10 * 16, out  # a header, and ten frames at least
    assert out["status"] == 0 and out["stderr"] == "", out
    # Confined, slirpy could not remove its entries; the next ctl finds them stale.
    assert out["registry_left"] == [f"{pid}.api", f"{pid}.sock"], out
    assert out["after"]["status"] == 1, out
    assert out["after"]["err"].startswith("slirpy ctl: no running slirpy found in "), out
    assert out["registry_pruned"] == [], out
