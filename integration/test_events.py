"""Issue 14: the event stream in real namespaces.

A guest's curl, DNS lookup and ping, a connection refused by a --deny rule and a
connection through a local forward each appear as the right events: curl's flow-done
bytes match what the server saw each way, the local forward's flow-new names the real
client (address and port), the refusal is a `blocked` event naming the rule. The same
lines reach a subscriber of the control socket. Every line written, to the file and to
the subscriber, validates against the JSON Schema in the package. Then once more
confined (--enable-sandbox --enable-seccomp): the file and the socket were opened before
confinement and keep working; the exit event says why slirpy stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from integration.world import (INTERNET, INTERNET2, WORK, attached, dns_server, in_world,
                               serve_forever)
from slirpy.observe.events import SCHEMA_FILE

HTTP_PORT = 8080
BODY = b"b" * 5000
DENIED = f"tcp://{INTERNET2}:9"
FORWARD_PORT = 2222
GUEST_PORT = 8000
GUEST_SERVER = f"""
import socket
srv = socket.create_server(("0.0.0.0", {GUEST_PORT}))
print("listening", flush=True)
conn, peer = srv.accept()
conn.sendall(b"hi from the guest")
conn.close()
print(peer[0], peer[1], flush=True)
"""


def http_server() -> list[tuple[int, int]]:
    """An HTTP/1.0-ish server on INTERNET: (bytes received, bytes sent) per connection."""
    seen: list[tuple[int, int]] = []
    srv = socket.create_server((INTERNET, HTTP_PORT))

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                reply = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(BODY)) + BODY
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)
                while chunk := conn.recv(4096):  # to the client's FIN: all it sent
                    request += chunk
                seen.append((len(request), len(reply)))
    serve_forever(loop)
    return seen


class Subscriber:
    """An API client that subscribed: every line it is sent, read in a thread."""

    def __init__(self, api: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(api))
        self.sock.sendall(b'{"execute":"subscribe"}')
        self.file = self.sock.makefile("rb")
        self.header = self.file.readline()
        self.lines: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.file:
            self.lines.append(line)

    def finish(self) -> list[dict[str, Any]]:
        self.thread.join(10)  # slirpy closes the connection when it stops
        return [json.loads(line) for line in self.lines]


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(path: Path, *match: dict[str, Any], timeout_s: float = 10) -> dict[str, Any]:
    """The first event in *path* with all the fields of one of *match*, once written
    (flows end in slirpy's own time: no signal says when)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for event in read_events(path):
            if any(all(event.get(k) == v for k, v in want.items()) for want in match):
                return event
        if time.monotonic() > deadline:
            raise AssertionError(f"no event {match} in {path.read_text()[-3000:]}")
        time.sleep(0.05)


def scenario_events(confined: bool) -> dict[str, Any]:
    dns_server()
    served = http_server()
    events, api = WORK / "events.jsonl", WORK / "api.sock"
    args = ["-c", "--events", str(events), "-a", str(api), "--deny", DENIED,
            "-L", f"tcp://{INTERNET}:{FORWARD_PORT}:10.0.2.100:{GUEST_PORT}"]
    if confined:
        args += ["--enable-sandbox", "--enable-seccomp"]
    out: dict[str, Any] = {}
    with attached(*args) as (guest, slirpy):
        out["ready"] = read_events(events)[0]  # written before the ready fd
        sub = Subscriber(api)
        out["header"] = sub.header.decode()
        curl = guest.run(f"curl -sS -o /dev/null -w '%{{size_request}} %{{size_download}}' "
                         f"http://{INTERNET}:{HTTP_PORT}/").stdout.decode().split()
        out["curl"] = [int(n) for n in curl]
        out["curl_done"] = wait_for(events, {"event": "flow-done", "proto": "tcp",
                                             "remote": {"addr": INTERNET, "port": HTTP_PORT}})
        out["served"] = served
        if not confined:
            out["getent"] = guest.run("getent ahostsv4 example.test",
                                      check=False).stdout.decode()
            out["dns_done"] = wait_for(events, {"event": "flow-done", "proto": "udp",
                                                "remote": {"addr": "10.0.2.3", "port": 53}})
            out["ping"] = guest.run(f"ping -c 1 -W 3 {INTERNET}", check=False).returncode
            out["refused"] = guest.run(f"curl -sS --max-time 5 http://{INTERNET2}:9/",
                                       check=False).returncode
            proc = subprocess.Popen(["nsenter", "--target", str(guest.pid), "--net", "--mount",
                                     "--user", "--preserve-credentials", sys.executable, "-c",
                                     GUEST_SERVER], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
            with socket.create_connection((INTERNET, FORWARD_PORT), timeout=10,
                                          source_address=(INTERNET2, 0)) as client:
                out["client_port"] = client.getsockname()[1]
                out["forwarded"] = client.makefile("rb").read().decode()
            out["guest_saw"] = proc.stdout.readline().split()
            proc.wait(10)
            out["forward_done"] = wait_for(events, {"event": "flow-done",
                                                    "origin": "local-forward"})
        out["status"] = slirpy.stop()
        out["subscriber"] = sub.finish()
        out["log"] = slirpy.log()
    out["events"] = read_events(events)
    return out


def check_schema(*streams: list[dict[str, Any]]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for stream in streams:
        assert stream
        for event in stream:
            validator.validate(event)


def test_guest_traffic_appears_as_events_with_the_right_bytes() -> None:
    out = in_world(scenario_events, False, timeout=90)
    events, sub = out["events"], out["subscriber"]
    check_schema(events, sub)
    assert out["header"] == '{"return":{"schema":1}}\n'
    ready = out["ready"]
    assert ready["event"] == "ready" and ready["mtu"] == 1500
    assert ready["addresses"]["guest"] == "10.0.2.100"
    assert ready["rules"] == [{"id": 1, "action": "deny", "rule": DENIED}]
    assert [f["spec"] for f in ready["forwards"]] == [
        f"tcp://{INTERNET}:{FORWARD_PORT}:10.0.2.100:{GUEST_PORT}"]
    assert ready["posture"]["sandbox"] is False
    # curl: what the server received and sent, each way, is what the flow carried.
    ((received, sent),) = out["served"]
    assert out["curl"] == [received, len(BODY)]
    done = out["curl_done"]
    assert done["bytes"] == {"from_guest": received, "to_guest": sent}
    assert done["packets"]["from_guest"] >= 4 and done["packets"]["to_guest"] >= 3
    assert done["reason"] == "fin" and done["origin"] == "guest"
    assert done["allowed_by"] == "routing" and done["guest"]["addr"] == "10.0.2.100"
    new = [e for e in events if e["event"] == "flow-new" and e["id"] == done["id"]]
    assert len(new) == 1 and new[0]["remote"] == done["remote"]
    # DNS: a flow to the forwarder, answered; the upstream chosen.
    assert "192.0.2.1" in out["getent"]
    assert out["dns_done"]["reason"] == "closed" and out["dns_done"]["bytes"]["to_guest"] > 0
    assert {"state": "chosen", "upstream": "127.0.0.1"}.items() <= next(
        e for e in events if e["event"] == "dns-upstream").items()
    # ping: an ICMP flow, still open (idle) when slirpy stops: it ends with reason exit.
    assert out["ping"] == 0
    pings = [e for e in events if e["event"] == "flow-new" and e["proto"] == "icmp"]
    assert [p["remote"]["addr"] for p in pings] == [INTERNET]
    (ping_done,) = [e for e in events if e["event"] == "flow-done" and e["id"] == pings[0]["id"]]
    assert ping_done["reason"] == "exit" and ping_done["packets"] == {"from_guest": 1,
                                                                      "to_guest": 1}
    assert events.index(ping_done) < len(events) - 1  # before the exit event
    # The refused connection: blocked, by rule 1.
    assert out["refused"] != 0
    (blocked,) = [e for e in events if e["event"] == "blocked"]
    assert (blocked["rule"], blocked["by"], blocked["count"]) == (1, f"--deny {DENIED}", 1)
    assert blocked["remote"] == {"addr": INTERNET2, "port": 9}
    # The local forward: the real client, address and port.
    assert out["forwarded"] == "hi from the guest"
    fwd = out["forward_done"]
    assert fwd["client"] == {"addr": INTERNET2, "port": out["client_port"]}
    assert fwd["forward"] == 1 and fwd["guest"] == {"addr": "10.0.2.100", "port": GUEST_PORT}
    assert out["guest_saw"] == [INTERNET2, str(out["client_port"])]  # as the guest saw it
    assert fwd["bytes"]["to_guest"] == 0 and fwd["bytes"]["from_guest"] == 17
    # The end: the exit event, last in the file and to the subscriber.
    assert out["status"] == 0
    assert events[-1]["event"] == "exit" and events[-1]["reason"] == "signal SIGTERM"
    assert sub[-1] == {**events[-1], "time": sub[-1]["time"]}
    # The subscriber saw the same flows as the file (it subscribed after ready).
    flow_lines = [(e["event"], e["id"]) for e in events if e["event"].startswith("flow-")]
    assert [(e["event"], e["id"]) for e in sub if e["event"].startswith("flow-")] == flow_lines
    assert "Traceback" not in out["log"]


def test_events_work_confined_by_sandbox_and_seccomp() -> None:
    out = in_world(scenario_events, True, timeout=90)
    check_schema(out["events"], out["subscriber"])
    assert out["ready"]["posture"]["sandbox"] is True
    assert out["ready"]["posture"]["seccomp"] is True
    ((received, sent),) = out["served"]
    assert out["curl_done"]["bytes"] == {"from_guest": received, "to_guest": sent}
    assert out["status"] == 0 and out["events"][-1]["event"] == "exit"
    assert out["subscriber"][-1]["event"] == "exit"
    assert "Operation not permitted" not in out["log"] and "Traceback" not in out["log"]
