"""Issue 4: local and remote forwards end to end, real client addresses, PROXY protocol.

Each test runs in a world of its own (see world.py). Guest servers are Python programs
started in the guest that print one line once listening, then one JSON line per
client they served (the address they saw, sha256 of what they read). World clients
connect from chosen source addresses: a documentation address on the world's
loopback (a "real" client) or 127.0.0.1 (a local one).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from integration.world import (INTERNET, INTERNET2, Guest, attached, greeter, in_world,
                               serve_forever, sh, udp_echo)
from slirpy.wire.proxy import SPP_HEADER_LEN, SppHeader, build_proxy_v1, build_proxy_v2, \
    build_spp, parse_spp

GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"
MIB = 1 << 20

# A TCP server in the guest: per client, report the peer, read to EOF, then send back
# DOWN bytes of a seeded stream and close; print what it saw as one JSON line.
TCP_SERVER = """
import hashlib, json, random, socket, sys, threading
port, down = int(sys.argv[1]), int(sys.argv[2])
srv = socket.create_server(("0.0.0.0", port), backlog=64)
print("listening", flush=True)
def serve(conn, peer):
    digest, got = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk); got += len(chunk)
    rng, sent, out = random.Random(peer[1]), 0, hashlib.sha256()
    while sent < down:
        block = rng.randbytes(min(1 << 20, down - sent))
        conn.sendall(block); out.update(block); sent += len(block)
    conn.close()
    print(json.dumps({"peer": peer[0], "port": peer[1], "in": got, "in_sha": digest.hexdigest(),
                      "out_sha": out.hexdigest()}), flush=True)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=serve, args=(conn, peer)).start()
"""

# A UDP server in the guest: answer every datagram with REPLIES copies of it; print
# each new peer once.
UDP_SERVER = """
import json, socket, sys
port, replies = int(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("0.0.0.0", port))
print("listening", flush=True)
seen = set()
while True:
    data, peer = sock.recvfrom(65535)
    if peer not in seen:
        seen.add(peer)
        print(json.dumps({"peer": peer[0], "port": peer[1]}), flush=True)
    for _ in range(replies):
        sock.sendto(data, peer)
"""


@contextmanager
def guest_server(guest: Guest, code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python server in the guest, up once it printed its first line."""
    proc = subprocess.Popen(["nsenter", "--target", str(guest.pid), "--net", "--mount",
                             "--user", "--preserve-credentials", sys.executable, "-c", code,
                             *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "listening\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the guest server ended without a report"
    return dict(json.loads(line))


def tcp_exchange(dest: tuple[str, int], source: str, up: int, *, preamble: bytes = b"",
                 ) -> dict[str, Any]:
    """Send *preamble* then *up* seeded bytes, half-close, read to EOF: both sha256s."""
    with socket.create_connection(dest, source_address=(source, 0), timeout=60) as sock:
        port = sock.getsockname()[1]
        sock.sendall(preamble)
        rng, digest = random.Random(port ^ 0x5A5A), hashlib.sha256()
        sent = 0
        while sent < up:
            block = rng.randbytes(min(MIB, up - sent))
            sock.sendall(block)
            digest.update(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        received, got = hashlib.sha256(), 0
        while chunk := sock.recv(MIB):
            received.update(chunk)
            got += len(chunk)
    return {"port": port, "up_sha": digest.hexdigest(), "down": got,
            "down_sha": received.hexdigest()}


# --- TCP local forwards ------------------------------------------------------------------

def scenario_tcp_local(size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with attached("-c", "-L", "127.0.0.1:8080:10.0.2.100:80", "-L", f"{INTERNET}:8081:80",
                  ) as (guest, _):
        with guest_server(guest, TCP_SERVER, "80", str(size)) as server:
            for name, dest, source in (("real", (INTERNET, 8081), INTERNET2),
                                       ("loopback", ("127.0.0.1", 8080), "127.0.0.1")):
                client = tcp_exchange(dest, source, size)
                results[name] = {"client": client, "server": report(server)}
    return results


def test_tcp_local_forward_shows_real_client_and_carries_64mib_each_way() -> None:
    size = 64 * MIB
    results = in_world(scenario_tcp_local, size, timeout=600)
    real, loopback = results["real"], results["loopback"]
    assert real["server"]["peer"] == INTERNET2, "a real client must be seen as itself"
    assert real["server"]["port"] == real["client"]["port"]
    assert loopback["server"]["peer"] == GATEWAY, "a loopback client appears as the gateway"
    for name, result in results.items():
        assert result["server"]["in"] == size, name
        assert result["server"]["in_sha"] == result["client"]["up_sha"], f"{name}: up corrupted"
        assert result["client"]["down"] == size, name
        assert result["server"]["out_sha"] == result["client"]["down_sha"], \
            f"{name}: down corrupted"


# --- UDP local forwards ---------------------------------------------------------------------

def udp_exchange(dest: tuple[str, int], source: str, total: int, size: int,
                 header: bytes = b"") -> dict[str, Any]:
    """Ping-pong *total* bytes in *size*-byte datagrams (each echoed): both digests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    rng = random.Random(7)
    up, down, sent, lost = hashlib.sha256(), hashlib.sha256(), 0, 0
    while sent < total:
        data = rng.randbytes(min(size, total - sent))
        up.update(data)
        sent += len(data)
        for _ in range(5):
            sock.sendto(header + data, dest)
            try:
                reply = sock.recv(65535)
                break
            except TimeoutError:
                lost += 1
        else:
            raise AssertionError(f"no echo after 5 tries at {sent} bytes")
        if header:
            assert reply[:SPP_HEADER_LEN] == header, "the SPP header must come back"
            reply = reply[SPP_HEADER_LEN:]
        down.update(reply)
    port = sock.getsockname()[1]
    sock.close()
    return {"port": port, "up": up.hexdigest(), "down": down.hexdigest(), "retries": lost}


def scenario_udp_local(total: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with attached("-c", "-L", "udp://127.0.0.1:5353:10.0.2.100:53",
                  "-L", f"udp://{INTERNET}:5354:53") as (guest, _):
        with guest_server(guest, UDP_SERVER, "53", "1") as server:
            for name, dest, source in (("real", (INTERNET, 5354), INTERNET2),
                                       ("loopback", ("127.0.0.1", 5353), "127.0.0.1")):
                client = udp_exchange(dest, source, total, 32000)
                results[name] = {"client": client, "server": report(server)}
    return results


def test_udp_local_forward_shows_real_client_and_carries_64mib_each_way() -> None:
    results = in_world(scenario_udp_local, 64 * MIB, timeout=600)
    assert results["real"]["server"]["peer"] == INTERNET2
    assert results["real"]["server"]["port"] == results["real"]["client"]["port"]
    assert results["loopback"]["server"]["peer"] == GATEWAY
    for name, result in results.items():
        assert result["client"]["up"] == result["client"]["down"], f"{name}: corrupted"


# --- PROXY protocol and the UDP variants ----------------------------------------------------

def scenario_proxy_protocols() -> dict[str, Any]:
    results: dict[str, Any] = {}
    # Without host loopback, the guest's answers after the end of a udprpc flow (to the
    # gateway, as loopback clients appear) go nowhere, so the client sees only the first.
    with attached("-c", "--disable-host-loopback",
                  "-L", "tcppp://127.0.0.1:8082:10.0.2.100:80",
                  "-L", "tcppp://127.0.0.1:8083:10.0.2.100:0",
                  "-L", "udpspp://127.0.0.1:5355:10.0.2.100:53",
                  "-L", "udprpc://127.0.0.1:5356:10.0.2.100:54",
                  "-L", "udp://127.0.0.1:5357:10.0.2.100:54") as (guest, slirpy):
        with guest_server(guest, TCP_SERVER, "80", "1000") as server:
            v1 = build_proxy_v1(("203.0.113.7", 4444), ("192.0.2.80", 443))
            results["v1"] = {"client": tcp_exchange(("127.0.0.1", 8082), "127.0.0.1", 5000,
                                                    preamble=v1),
                             "server": report(server)}
            # Guest port 0: the destination port of the header (80) picks the service.
            v2 = build_proxy_v2(("203.0.113.8", 5555), ("192.0.2.80", 80), tlvs=b"\x04\x00\x01x")
            results["v2"] = {"client": tcp_exchange(("127.0.0.1", 8083), "127.0.0.1", 5000,
                                                    preamble=v2),
                             "server": report(server)}
            try:
                tcp_exchange(("127.0.0.1", 8082), "127.0.0.1", 10, preamble=b"GET / HTTP/1.0\r\n")
                results["garbage"] = "answered"
            except ConnectionResetError:
                results["garbage"] = "reset"
        with guest_server(guest, UDP_SERVER, "53", "1") as server:
            spp = build_spp(SppHeader((socket.inet_aton("203.0.113.9"), 6666),
                                      (socket.inet_aton("192.0.2.80"), 53)))
            results["spp"] = {"client": udp_exchange(("127.0.0.1", 5355), "127.0.0.1",
                                                     100_000, 1000, header=spp),
                              "server": report(server)}
            assert parse_spp(spp)[0].client[1] == 6666
        with guest_server(guest, UDP_SERVER, "54", "2") as server:
            for name, port in (("rpc", 5356), ("udp", 5357)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(1)
                replies = 0
                for n in range(3):
                    sock.sendto(b"ask %d" % n, ("127.0.0.1", port))
                    try:
                        while sock.recv(100):
                            replies += 1
                    except TimeoutError:
                        pass
                sock.close()
                results[name] = replies
    results["log"] = slirpy.log()
    return results


def test_tcppp_udpspp_and_udprpc_forwards() -> None:
    results = in_world(scenario_proxy_protocols, timeout=300)
    for version, (peer, port) in (("v1", ("203.0.113.7", 4444)),
                                  ("v2", ("203.0.113.8", 5555))):
        result = results[version]
        assert (result["server"]["peer"], result["server"]["port"]) == (peer, port), version
        assert result["server"]["in"] == 5000, f"{version}: the header must not reach the guest"
        assert result["server"]["in_sha"] == result["client"]["up_sha"], version
        assert result["server"]["out_sha"] == result["client"]["down_sha"], version
    assert results["garbage"] == "reset", "no valid PROXY header: the client is reset"
    assert (results["spp"]["server"]["peer"], results["spp"]["server"]["port"]) == \
        ("203.0.113.9", 6666)
    assert results["spp"]["client"]["up"] == results["spp"]["client"]["down"]
    # The guest answers every datagram twice: udprpc ends the flow at the first answer.
    assert results["rpc"] == 3, results["log"]
    assert results["udp"] == 6, results["log"]


# --- remote forwards --------------------------------------------------------------------------

def srv_dns_server(addr: str, records: dict[str, tuple[str, int, str]]) -> list[str]:
    """Answers SRV queries for *records* (name -> target, port, target address) with the
    target's A record in the additional section; returns the names asked."""
    from scapy.layers.dns import DNS, DNSRR, DNSRRSRV  # type: ignore[import-untyped]

    asked: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, 53))

    def loop() -> None:
        while True:
            data, peer = sock.recvfrom(4096)
            query = DNS(data)
            name = query.qd[0].qname.decode().rstrip(".").lower()
            asked.append(name)
            if name in records:
                target, port, address = records[name]
                reply = DNS(id=query.id, qr=1, aa=1, rd=query.rd, qd=query.qd,
                            an=DNSRRSRV(rrname=name, ttl=30, priority=0, weight=5, port=port,
                                        target=target),
                            ar=DNSRR(rrname=target, type="A", ttl=30, rdata=address))
            else:
                reply = DNS(id=query.id, qr=1, aa=1, rd=query.rd, qd=query.qd, rcode=3)
            sock.sendto(bytes(reply), peer)
    serve_forever(loop)
    return asked


REMOTE_CLIENT = """
import json, socket, sys
out = {}
for name, host, port in json.loads(sys.argv[1]):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            out[name] = s.recv(100).decode()
    except OSError as exc:
        out[name] = type(exc).__name__
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(5)
for name, host, port in json.loads(sys.argv[2]):
    try:
        udp.sendto(name.encode(), (host, port))
        out[name] = udp.recv(100).decode()
    except OSError as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""


def scenario_remote() -> dict[str, Any]:
    sh("ip addr add 192.0.2.53/32 dev lo")
    internet_seen = greeter(INTERNET, 8000, b"internet")
    local_seen = greeter("127.0.0.1", 9001, b"loopback")
    udp_echo(INTERNET, 7007)
    asked = srv_dns_server("192.0.2.53", {"_web._tcp.test": ("web.test", 8000, INTERNET)})
    with attached("-c", "--disable-host-loopback",
                  "-R", "10.0.2.50:9000:192.0.2.1:8000",     # an address in the network
                  "-R", "9001",                               # the gateway, to 127.0.0.1
                  "-R", "203.0.113.50:9002:192.0.2.1:8000",   # an address nothing routes
                  "-R", "udp://10.0.2.2:5300:192.0.2.1:7007",
                  "-R", "10.0.2.2:9100:[_web._tcp.test@srv-192.0.2.53]:0",
                  "-R", "10.0.2.2:9101:[_web._tcp.test@srv-198.51.100.53:53]:0",
                  "-R", "10.0.2.2:9102:[_none._tcp.test@srv-192.0.2.53]:0",
                  ) as (guest, slirpy):
        tcp = [["in-network", "10.0.2.50", 9000], ["gateway", GATEWAY, 9001],
               ["unrouted", "203.0.113.50", 9002], ["srv", GATEWAY, 9100],
               ["srv-again", GATEWAY, 9100], ["srv-down", GATEWAY, 9101],
               ["srv-nxdomain", GATEWAY, 9102], ["not-forwarded", GATEWAY, 9003]]
        udp = [["udp-echo", GATEWAY, 5300]]
        out = json.loads(guest.python(REMOTE_CLIENT, json.dumps(tcp), json.dumps(udp)))
        log = slirpy.log()
    return {"out": out, "asked": asked, "internet_seen": internet_seen,
            "local_seen": local_seen, "log": log}


def test_remote_forwards_tcp_udp_and_srv() -> None:
    result = in_world(scenario_remote, timeout=300)
    out = result["out"]
    assert out["in-network"] == "internet", result
    assert out["gateway"] == "loopback", "-R overrides --disable-host-loopback for its port"
    assert out["unrouted"] == "internet"
    assert out["srv"] == "internet" and out["srv-again"] == "internet"
    assert result["asked"].count("_web._tcp.test") == 1, "the SRV answer is cached"
    assert out["srv-down"] == "ConnectionRefusedError", result
    assert out["srv-nxdomain"] == "ConnectionRefusedError", result
    assert "SRV lookup of _web._tcp.test at 198.51.100.53:53 failed" in result["log"]
    assert "SRV lookup of _none._tcp.test at 192.0.2.53:53 failed" in result["log"]
    assert out["not-forwarded"] in ("OSError", "ConnectionRefusedError"), \
        "other gateway ports stay closed under --disable-host-loopback"
    assert out["udp-echo"] == "udp-echo"


# --- errors at start --------------------------------------------------------------------------

def scenario_bind_failure() -> dict[str, Any]:
    busy = socket.create_server(("127.0.0.1", 8090))
    guest = Guest()
    try:
        done = subprocess.run([sys.executable, "-m", "slirpy", "-L", "127.0.0.1:8090:80",
                               str(guest.pid), "tap0"], capture_output=True, text=True,
                              timeout=60)
    finally:
        guest.stop()
        busy.close()
    return {"code": done.returncode, "stderr": done.stderr}


def test_a_forward_that_cannot_bind_is_one_line_and_exit_1() -> None:
    result = in_world(scenario_bind_failure)
    assert result["code"] == 1
    lines = [line for line in result["stderr"].splitlines() if line.startswith("slirpy: ")]
    assert lines[-1] == ("slirpy: cannot forward tcp://127.0.0.1:8090:10.0.2.100:80: "
                         "Address already in use"), result
    assert "Traceback" not in result["stderr"]


# --- the YAML config file, end to end, in the run form ----------------------------------------

RUN_CMD = """
import socket, subprocess, sys
link = subprocess.run(["ip", "-o", "link", "show", "tap0"], capture_output=True, text=True)
mtu = link.stdout.split(" mtu ")[1].split()[0]
srv = socket.create_server(("0.0.0.0", 80))
print("listening", mtu, flush=True)
conn, peer = srv.accept()
conn.sendall(f"{peer[0]}".encode())
conn.close()
"""


def scenario_config_file() -> dict[str, Any]:
    from integration.world import SLIRPY, WORK

    config = WORK / "slirpy.yaml"
    config.write_text(f"mtu: 9000\nlocal-forward:\n  - {INTERNET}:8085:80\n"
                      f"disable_dns: false\n")
    proc = subprocess.Popen([*SLIRPY, "run", "--config", str(config), "--mtu", "4000", "--",
                             sys.executable, "-c", RUN_CMD], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        with socket.create_connection((INTERNET, 8085), source_address=(INTERNET2, 0),
                                      timeout=10) as sock:
            seen = sock.recv(100).decode()
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = WORK / "bad.yaml"
    bad.write_text("mtu: 9000\nlocal_forwards: [8080]\n")
    refused = subprocess.run([*SLIRPY, "run", "--config", str(bad), "--", "true"],
                             capture_output=True, text=True, timeout=30)
    return {"first": first, "seen": seen, "code": code,
            "refused": [refused.returncode, refused.stderr]}


def test_run_form_with_a_yaml_config_file() -> None:
    result = in_world(scenario_config_file)
    assert result["first"] == ["listening", "4000"], "the flag's MTU wins over the file's"
    assert result["seen"] == INTERNET2, "the forward from the file carries a real client"
    assert result["code"] == 0
    code, stderr = result["refused"]
    assert code == 1
    assert stderr.strip().endswith("unknown key 'local_forwards'"), stderr
