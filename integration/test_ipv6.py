"""Issue 5: IPv6 end to end: SLAAC from slirpy's router advertisements, ping, TCP, UDP,
DNS (AAAA, over an IPv6 upstream), forwards of both families and across them, and a
world with no IPv4 upstream at all.

Each test runs one scenario in a world of its own (see world.py): the world's
"internet" holds 2001:db8::1 and 2001:db8::2 on its loopback beside the IPv4 ones.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
from typing import Any

from integration.test_tcp import BLOB, HTTP_PORT, _Handler
from integration.world import (INTERNET, INTERNET2, INTERNET6, INTERNET6_2, NOBODY6, SLIRPY, WORK,
                               api_request, attached, dns_server, greeter, in_world, serve_forever,
                               set_nameservers, sh, udp_echo)

ADDRESSES = """
import json, subprocess, sys, time
# The guest's global addresses and default route once SLAAC is done (no "tentative").
deadline = time.monotonic() + 20
while True:
    addrs = json.loads(subprocess.run(["ip", "-j", "-6", "addr", "show", "dev", "tap0",
                                       "scope", "global"], capture_output=True).stdout)
    infos = [i for a in addrs for i in a.get("addr_info", [])]
    routes = json.loads(subprocess.run(["ip", "-j", "-6", "route", "show", "default"],
                                       capture_output=True).stdout)
    slaac = [i for i in infos if i.get("dynamic") and not i.get("tentative")]
    if (slaac and routes) or time.monotonic() > deadline:
        break
    time.sleep(0.1)  # polls the kernel's state: no event to wait on from a shell
print(json.dumps({"addrs": infos, "routes": routes}))
"""


class _Http6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def http_servers6(size_mib: int, addrs: tuple[str, ...] = ("::1", INTERNET6)) -> str:
    """The blob over HTTP on IPv6 addresses of the world; its sha256."""
    BLOB.parent.mkdir(exist_ok=True)
    sh(f"head -c {size_mib}M /dev/urandom > {BLOB}")
    for addr in addrs:
        serve_forever(_Http6Server((addr, HTTP_PORT), _Handler).serve_forever)
    return sh(f"sha256sum < {BLOB}").split()[0]


def curl_both_ways(hosts: tuple[str, ...]) -> str:
    return "set -e\n" + "".join(
        f'echo "down {h} $(curl -gsS --max-time 120 http://{h}:{HTTP_PORT}/blob'
        f' | sha256sum | cut -d" " -f1)"\n'
        f'echo "up {h} $(curl -gsS --max-time 120 -T {BLOB} http://{h}:{HTTP_PORT}/up)"\n'
        for h in hosts)


# --- SLAAC, router advertisements, ping ---

CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
        print(conn.recv(100).decode())
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


def scenario_slaac_and_ping() -> dict[str, Any]:
    greeter("::1", 9003, b"loopback6 greets")
    with attached("-6", "--disable-host-loopback") as (guest, _):
        guest.run("ip link set lo up && ip link set tap0 up")
        state = json.loads(guest.python(ADDRESSES))
        pings = {dst: guest.run(f"ping -6 -c 2 -W 3 {dst}", check=False).returncode
                 for dst in ("fd00::2", "fd00::3", "fe80::2%tap0", INTERNET6, NOBODY6)}
        loopback = guest.python(CONNECT, "fd00::2", "9003").strip()
    return {**state, "pings": pings, "loopback": loopback}


def test_guest_gets_slaac_address_and_default_route_and_pings_for_real() -> None:
    result = in_world(scenario_slaac_and_ping)
    slaac = [a for a in result["addrs"] if a.get("dynamic")]
    assert slaac, result
    assert all(a["local"].startswith("fd00::") and a["prefixlen"] == 64 for a in slaac), result
    assert any(r.get("gateway") == "fe80::2" and r.get("dev") == "tap0"
               for r in result["routes"]), result
    pings = result["pings"]
    assert pings["fd00::2"] == 0 and pings["fd00::3"] == 0 and pings["fe80::2%tap0"] == 0
    assert pings[INTERNET6] == 0, "a world address answers for real"
    assert pings[NOBODY6] != 0, "nobody holds it: no reply may be invented"
    # --disable-host-loopback holds for ::1 as for 127.0.0.1: "no route", at once.
    assert result["loopback"] == "OSError 101", result["loopback"]


# --- TCP: 64 MiB each way to host ::1 through the gateway and to a world address ---

def scenario_curl6(form: str) -> dict[str, Any]:
    want = http_servers6(64)
    script = curl_both_ways(("[fd00::2]", f"[{INTERNET6}]"))
    if form == "run":
        # The world's "internet" addresses sit on its lo: to slirpy they are the host's.
        done = subprocess.run([*SLIRPY, "run", "--enable-host-loopback", "--enable-host", "--",
                               "sh", "-c", script], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        out = done.stdout
    else:
        with attached("-c", "-6") as (guest, _):
            out = guest.run(script, timeout=600).stdout.decode()
    return {"want": want, "got": out.split("\n")}


def test_curl_64mib_each_way_over_ipv6_to_host_loopback_and_world_intact() -> None:
    for form in ("attach", "run"):
        result = in_world(scenario_curl6, form, timeout=600)
        lines = [line.split() for line in result["got"] if line]
        assert len(lines) == 4, (form, result)
        for direction, host, digest in lines:
            assert digest == result["want"], f"{form}: {direction} via {host} corrupted"


# --- UDP and DNS over IPv6 ---

UDP6_CLIENT = """
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
out = []
for n in (1, 1000, 1452, 1500, 8000, 65000):
    sent = bytes((i * 7 + n) % 251 for i in range(n))
    s.sendto(sent, (sys.argv[1], int(sys.argv[2])))
    out.append([n, hashlib.sha256(s.recv(65535)).hexdigest() == hashlib.sha256(sent).hexdigest()])
# Nothing listens on port 9: the world's ICMPv6 "port unreachable" must reach us.
closed = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
closed.settimeout(3)
closed.connect((sys.argv[1], 9))
closed.send(b"anyone?")
try:
    closed.recv(100)
    refused = "answered"
except OSError as exc:
    refused = type(exc).__name__
print(json.dumps({"echo": out, "closed port": refused}))
"""


def scenario_udp_and_dns6() -> dict[str, Any]:
    received = udp_echo(INTERNET6, 7007)
    dns_server(INTERNET6_2)  # the only upstream, reached over IPv6
    set_nameservers([INTERNET6_2])
    with attached("-c", "-6") as (guest, _):
        udp = json.loads(guest.python(UDP6_CLIENT, INTERNET6, "7007"))
        dig = {f"{server} {qtype}": guest.run(
            f"dig +short +tries=1 +time=3 @{server} {qtype} example.test",
            check=False).stdout.decode().strip()
            for server in ("fd00::3", "10.0.2.3") for qtype in ("AAAA", "A")}
        tcp = guest.run("dig +short +tcp +time=3 @fd00::3 AAAA other.test",
                        check=False).stdout.decode().strip()
    return {**udp, "received": len(received), "dig": dig, "tcp": tcp}


def test_udp_echo_and_aaaa_lookups_over_ipv6() -> None:
    result = in_world(scenario_udp_and_dns6)
    assert all(ok for _, ok in result["echo"]), result["echo"]
    assert result["received"] == 6
    assert result["closed port"] == "ConnectionRefusedError"
    assert result["dig"] == {"fd00::3 AAAA": INTERNET6, "fd00::3 A": INTERNET,
                             "10.0.2.3 AAAA": INTERNET6, "10.0.2.3 A": INTERNET}, result
    assert result["tcp"] == INTERNET6_2


# --- forwards over IPv6 and across families ---

GUEST_SERVER = """
import socket, sys, threading
def serve(family, addr, port):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind((addr, port))
    srv.listen(16)
    def loop():
        while True:
            conn, peer = srv.accept()
            conn.sendall(f"you are {peer[0]}".encode())
            conn.close()
    threading.Thread(target=loop, daemon=True).start()
serve(socket.AF_INET6, "::", 80)
serve(socket.AF_INET, "0.0.0.0", 81)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::", 82))
print("up", flush=True)
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(f"you are {peer[0]}".encode(), peer)
"""

REMOTE_CLIENT = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            out[target] = conn.recv(100).decode()
    except OSError as exc:
        out[target] = f"error {exc}"
print(json.dumps(out))
"""


def _ask(bind: str, host: str, port: int) -> str:
    """Connect from *bind* (a world address) to *host*:*port*; what the server says."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((bind, 0))
        sock.connect((host, port))
        return sock.recv(100).decode()


def _ask_udp(bind: str, host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((bind, 0))
        sock.sendto(b"hello", (host, port))
        return sock.recv(100).decode()


def scenario_forwards6() -> dict[str, Any]:
    greeter(INTERNET6, 9000, b"host6 greets")
    greeter(INTERNET, 9002, b"host4 greets")
    greeter("::1", 9003, b"loopback6 greets")
    args = ["-c", "-6",
            "-L", "[::1]:8001:[fd00::100]:80",            # v6 loopback client -> v6 guest
            "-L", f"[{INTERNET6}]:8002:[fd00::100]:80",   # real v6 client -> v6 guest
            "-L", f"{INTERNET}:8003:[fd00::100]:80",      # v4 client -> v6 guest
            "-L", f"[{INTERNET6}]:8004:10.0.2.100:81",    # v6 client -> v4 guest
            "-L", f"udp://[{INTERNET6}]:8005:[fd00::100]:82",
            "-R", f"[fd00::5]:9000:[{INTERNET6}]:9000",   # v6 guest -> v6 host
            "-R", f"10.0.2.5:9001:[{INTERNET6}]:9000",    # v4 guest -> v6 host
            "-R", f"[fd00::6]:9002:{INTERNET}:9002",      # v6 guest -> v4 host
            "-R", "[2001:db8:ffff::7]:9003:[::1]:9003",   # outside the prefix, routed
            "-a", str(WORK / "api.sock")]
    with attached(*args) as (guest, _):
        server = subprocess.Popen(
            ["nsenter", "--target", str(guest.pid), "--net", "--user",
             "--preserve-credentials", "python3", "-c", GUEST_SERVER],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "up\n"
            local = {
                "v6 loopback": _ask("::1", "::1", 8001),
                "v6 real": _ask(INTERNET6_2, INTERNET6, 8002),
                "v4 to v6": _ask(INTERNET, INTERNET, 8003),
                "v6 to v4": _ask(INTERNET6_2, INTERNET6, 8004),
                "udp v6 real": _ask_udp(INTERNET6_2, INTERNET6, 8005),
            }
            api = [_api({"execute": "add_hostfwd", "arguments": {
                "proto": "tcp", "host_addr": INTERNET6, "host_port": 8006,
                "guest_addr": "fd00::100", "guest_port": 80}}),
                _api({"execute": "add_forward", "arguments": {
                    "kind": "local", "spec": f"{INTERNET}:8007:[fd00::100]:80"}})]
            local["api add_hostfwd v6"] = _ask(INTERNET6_2, INTERNET6, 8006)
            local["api add_forward v4 to v6"] = _ask(INTERNET2, INTERNET, 8007)
            listed = _api({"execute": "list_hostfwd"})
            remote = json.loads(guest.python(
                REMOTE_CLIENT, "[fd00::5]:9000", "10.0.2.5:9001", "[fd00::6]:9002",
                "[2001:db8:ffff::7]:9003"))
        finally:
            server.kill()
            server.wait()
    return {"local": local, "remote": remote, "api": api, "listed": listed}


def _api(request: dict[str, Any]) -> Any:
    return api_request(WORK / "api.sock", request)


def test_ipv6_forwards_both_ways_across_families_with_real_client_addresses() -> None:
    result = in_world(scenario_forwards6)
    assert result["local"] == {
        "v6 loopback": "you are fd00::2",
        "v6 real": f"you are {INTERNET6_2}",
        "v4 to v6": "you are fd00::2",
        "v6 to v4": "you are 10.0.2.2",
        "udp v6 real": f"you are {INTERNET6_2}",
        "api add_hostfwd v6": f"you are {INTERNET6_2}",
        "api add_forward v4 to v6": "you are fd00::2",
    }, result
    assert all("return" in reply for reply in result["api"]), result["api"]
    assert {"id": result["api"][0]["return"]["id"], "proto": "tcp", "host_addr": INTERNET6,
            "host_port": 8006, "guest_addr": "fd00::100", "guest_port": 80} \
        in result["listed"]["entries"], result["listed"]
    assert result["remote"] == {
        "[fd00::5]:9000": "host6 greets",
        "10.0.2.5:9001": "host6 greets",
        "[fd00::6]:9002": "host4 greets",
        "[2001:db8:ffff::7]:9003": "loopback6 greets",
    }, result


# --- a world without IPv4 upstream ---

def scenario_ipv6_only_world() -> dict[str, Any]:
    # No IPv4 beyond the world's loopback: addresses and the default route go.
    sh(f"ip addr del {INTERNET}/32 dev lo && ip addr del 198.51.100.1/32 dev lo"
       " && ip route del default")
    want = http_servers6(8, (INTERNET6,))
    dns_server(INTERNET6_2)
    set_nameservers([INTERNET6_2])
    with attached("-c", "-6") as (guest, slirpy):
        down = guest.run(f"curl -gsS --max-time 60 http://[{INTERNET6}]:{HTTP_PORT}/blob"
                         " | sha256sum", check=False).stdout.decode().split(" ")[0]
        name = guest.run("dig +short +time=3 @10.0.2.3 AAAA example.test",
                         check=False).stdout.decode().strip()
        by_name = guest.run(f"curl -sS --max-time 60 http://example.test:{HTTP_PORT}/blob"
                            " | sha256sum", check=False).stdout.decode().split(" ")[0]
        ping = guest.run(f"ping -6 -c 1 -W 3 {INTERNET6}", check=False).returncode
        v4 = guest.run(f"curl -sS --max-time 5 http://{INTERNET}:{HTTP_PORT}/blob",
                       check=False)
    return {"want": want, "down": down, "name": name, "by_name": by_name, "ping": ping,
            "v4": [v4.returncode, v4.stderr.decode()[-200:]]}


def test_ipv6_only_world_serves_the_guest() -> None:
    result = in_world(scenario_ipv6_only_world)
    assert result["down"] == result["want"], result
    assert result["name"] == INTERNET6
    assert result["by_name"] == result["want"], "curl resolves AAAA through slirpy and connects"
    assert result["ping"] == 0
    assert result["v4"][0] != 0, "no IPv4 upstream: IPv4 fails"
