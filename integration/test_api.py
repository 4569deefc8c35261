"""Issue 4: the --api-socket protocol, byte for byte beside slirp4netns, and as podman drives it.

The same requests go to slirp4netns 1.2 and to slirpy, each attached to a guest of its
own in the same world; the replies must be identical bytes. Then slirpy's own commands,
several API clients at once while a transfer runs through a forward, and podman's exact
invocation with its exit and ready pipes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from integration.test_forwards import TCP_SERVER, guest_server, report, tcp_exchange
from integration.world import SLIRPY, WORK, Guest, attached, in_world

MIB = 1 << 20


def ask(path: str, request: bytes, *, half_close: bool = True) -> bytes:
    """One request, one reply, as rootlesskit sends them (write, shut down, read to EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def add(proto: str, host_addr: str | None, host_port: object, guest_addr: str | None,
        guest_port: object) -> bytes:
    arguments: dict[str, Any] = {"proto": proto}
    if host_addr is not None:
        arguments["host_addr"] = host_addr
    arguments["host_port"] = host_port
    if guest_addr is not None:
        arguments["guest_addr"] = guest_addr
    arguments["guest_port"] = guest_port
    return json.dumps({"execute": "add_hostfwd", "arguments": arguments}).encode()


# Requests in order; the ids in the replies depend on the adds before them.
REQUESTS: list[bytes] = [
    b"not json",
    b"[1, 2]",
    b"{}",
    b'{"execute": 42}',
    b'{"execute": "frobnicate"}',
    add("sctp", None, 8080, None, 80),
    add("tcp", "localhost", 8080, None, 80),
    add("tcp", None, 0, None, 80),
    add("tcp", None, "8080", None, 80),
    add("tcp", None, 8080, "10.0.2.300", 80),
    add("tcp", None, 8080, None, 0),
    add("tcp", "127.0.0.1", 18080, "", 80),            # id 1, guest_addr "" = 10.0.2.100
    add("udp", "", 18081, "10.0.2.100", 53),           # id 2, host_addr "" = 0.0.0.0
    add("tcp", "127.0.0.1", 18080, None, 81),          # the port is taken: slirp fails
    add("tcp", "127.0.0.1", 18082, None, 82.7),        # id 3: numbers are truncated
    b'{"execute": "list_hostfwd"}',
    b'{"execute": "remove_hostfwd", "arguments": {"id": 9}}',
    b'{"execute": "remove_hostfwd", "arguments": {}}',
    b'{"execute": "remove_hostfwd", "arguments": {"id": 2}}',
    b'{"execute": "list_hostfwd", "arguments": {}}',
    b'{"execute":"list_hostfwd"}\n',
    b" " * 4096,
]


def scenario_side_by_side() -> dict[str, Any]:
    replies: dict[str, list[str]] = {}
    for name, command in (("slirp4netns", ["slirp4netns"]), ("slirpy", SLIRPY)):
        path = str(WORK / f"{name}.sock")
        with attached("-c", "--api-socket", path, command=command):
            replies[name] = [ask(path, request).decode() for request in REQUESTS]
            # Free the ports for the next connector: remove what is left.
            for forward_id in (1, 3):
                ask(path, b'{"execute":"remove_hostfwd","arguments":{"id":%d}}' % forward_id)
    return replies


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns is not installed")
def test_slirp4netns_api_replies_are_identical() -> None:
    replies = in_world(scenario_side_by_side, timeout=300)
    assert len(replies["slirpy"]) == len(REQUESTS)
    for request, theirs, ours in zip(REQUESTS, replies["slirp4netns"], replies["slirpy"],
                                     strict=True):
        assert ours == theirs, f"request {request[:80]!r}"
    # And they say what we think they say.
    assert replies["slirpy"][11] == '{"return":{"id":1}}'
    assert replies["slirpy"][13] == \
        '{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    assert replies["slirpy"][-1] == '{"error":{"desc":"bad request: too large message"}}'


# --- slirpy's own commands, concurrent clients, add -> reachable, remove -> closed --------

def scenario_api_while_traffic() -> dict[str, Any]:
    path = str(WORK / "api.sock")
    (WORK / "api.sock").write_text("stale")  # a stale file is replaced
    out: dict[str, Any] = {}
    with attached("-c", "--api-socket", path) as (guest, slirpy):
        out["mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
        with guest_server(guest, TCP_SERVER, "80", str(32 * MIB)) as server:
            out["add"] = json.loads(ask(path, json.dumps(
                {"execute": "add_forward",
                 "arguments": {"kind": "local", "spec": "127.0.0.1:18090-18091:80-81"}}
            ).encode()))
            results: dict[str, Any] = {}

            def transfer() -> None:
                results["client"] = tcp_exchange(("127.0.0.1", 18090), "127.0.0.1", 32 * MIB)

            thread = threading.Thread(target=transfer)
            thread.start()
            # Many API clients at once, some slow to finish their request, mid-transfer.
            answers: list[Any] = []

            def client(n: int) -> None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(10)
                    sock.connect(path)
                    request = json.dumps({"execute": "list_flows" if n % 2 else "counters"})
                    sock.sendall(request[:5].encode())
                    time.sleep(0.05)  # a slow writer: the loop must not wait for it
                    sock.sendall(request[5:].encode())  # no EOF: complete JSON is enough
                    reply = b""
                    while chunk := sock.recv(65536):
                        reply += chunk
                    answers.append(json.loads(reply))

            clients = [threading.Thread(target=client, args=(n,)) for n in range(16)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            thread.join()
            out["server"] = report(server)
            out["client"] = results["client"]
            out["answers"] = answers
        out["flows_after"] = json.loads(ask(path, b'{"execute":"list_flows"}'))
        out["forwards"] = json.loads(ask(path, b'{"execute":"list_forwards"}'))
        ids = out["add"]["return"]["ids"]
        out["remove"] = [json.loads(ask(path, json.dumps(
            {"execute": "remove_forward", "arguments": {"id": i}}).encode())) for i in ids]
        try:
            socket.create_connection(("127.0.0.1", 18090), timeout=5).close()
            out["after_remove"] = "connected"
        except ConnectionRefusedError:
            out["after_remove"] = "refused"
        out["any_port"] = json.loads(ask(path, json.dumps(
            {"execute": "add_forward", "arguments": {"kind": "local", "spec": "127.0.0.1:0:80"}}
        ).encode()))
        out["any_port_spec"] = [f["spec"] for f in json.loads(ask(
            path, b'{"execute":"list_forwards"}'))["return"]["forwards"]]
        out["bad"] = json.loads(ask(path, json.dumps(
            {"execute": "add_forward", "arguments": {"kind": "local", "spec": "udp://x"}}
        ).encode()))
        out["log"] = slirpy.log()
    out["gone"] = not os.path.exists(path)
    return out


def test_api_commands_with_concurrent_clients_while_traffic_flows() -> None:
    out = in_world(scenario_api_while_traffic, timeout=300)
    assert out["mode"] == "0o600"
    assert out["add"] == {"return": {"ids": [1, 2]}}
    assert out["server"]["in_sha"] == out["client"]["up_sha"]
    assert out["server"]["out_sha"] == out["client"]["down_sha"]
    assert len(out["answers"]) == 16
    counters = [a["return"] for a in out["answers"] if "frames" in a["return"]]
    flows = [a["return"]["flows"] for a in out["answers"]
             if isinstance(a["return"].get("flows"), list)]
    assert len(counters) == 8 and len(flows) == 8
    assert all(c["frames"]["from_guest"] > 0 and "drops" in c for c in counters)
    tcp = [f for listing in flows for f in listing if f["proto"] == "tcp"]
    assert tcp and all(f["guest"] == "10.0.2.100:80" and f["remote"].startswith("10.0.2.2:")
                       for f in tcp), flows
    assert [f["spec"] for f in out["forwards"]["return"]["forwards"]] == [
        "tcp://127.0.0.1:18090:10.0.2.100:80", "tcp://127.0.0.1:18091:10.0.2.100:81"]
    assert out["remove"] == [{"return": {}}, {"return": {}}]
    assert out["after_remove"] == "refused"
    assert out["any_port"] == {"return": {"ids": [3]}}
    (spec,) = out["any_port_spec"]
    port = int(spec.split(":")[2])
    assert spec == f"tcp://127.0.0.1:{port}:10.0.2.100:80" and port > 0, "bind port 0 picks one"
    assert f"local forward 3: {spec}" in out["log"], "and logs it"
    assert out["bad"]["error"]["desc"].startswith("bad request: add_forward: "), out["bad"]
    assert out["gone"], "the socket file is removed at exit"


# --- podman's invocation, replayed ---------------------------------------------------------

def scenario_podman() -> dict[str, Any]:
    guest = Guest()
    nspath = f"/proc/{guest.pid}/ns/net"
    api = str(WORK / "podman.sock")
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()
    # podman: cmd.ExtraFiles = [exit read end, ready write end] -> fds 3 and 4.
    child = f"""
import os, sys
os.dup2({exit_r}, 3); os.dup2({ready_w}, 4)
os.execvp(sys.executable, [sys.executable, "-m", "slirpy", *sys.argv[1:]])
"""
    argv = ["--disable-host-loopback", "--mtu=65520", "-c", "-e", "3", "-r", "4",
            "--api-socket", api, "--netns-type=path", nspath, "tap0"]
    log = open(WORK / "podman-slirpy.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", child, *argv],
                            pass_fds=(exit_r, ready_w), stdout=log, stderr=log,
                            env={**os.environ})
    os.close(exit_r)
    os.close(ready_w)
    out: dict[str, Any] = {}
    try:
        with os.fdopen(ready_r, "rb") as ready:
            out["ready"] = ready.read(1).decode()
        with guest_server(guest, TCP_SERVER, "80", "1000") as server:
            request = json.dumps({"execute": "add_hostfwd", "arguments": {
                "proto": "tcp", "host_addr": "127.0.0.1", "host_port": 18100,
                "guest_addr": "", "guest_port": 80}}).encode()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(api)
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                out["reply"] = sock.recv(2048).decode()  # podman: one read of 2048
            out["client"] = tcp_exchange(("127.0.0.1", 18100), "127.0.0.1", 1000)
            out["server"] = report(server)
        os.close(exit_w)  # podman's exit: the writer of the exit pipe goes away
        exit_w = -1
        out["exit"] = proc.wait(15)
    finally:
        if exit_w >= 0:
            os.close(exit_w)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        guest.stop()
        log.close()
    out["log"] = (WORK / "podman-slirpy.log").read_text()[-2000:]
    return out


def test_podman_invocation_replayed() -> None:
    out = in_world(scenario_podman, timeout=120)
    assert out["ready"] == "1", out["log"]
    assert out["reply"] == '{"return":{"id":1}}', out["log"]
    assert out["server"]["in_sha"] == out["client"]["up_sha"]
    assert out["server"]["peer"] == "10.0.2.2"
    assert out["exit"] == 0, out["log"]
