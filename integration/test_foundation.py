"""Issue 2: attach, `slirpy run`, DHCP, DNS, UDP, ICMP, ready and exit fds, end to end.

Each test runs one scenario in a world of its own (see world.py); the scenario drives
real clients in a guest namespace and asserts on what they got.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from integration.world import (INTERNET, NOBODY, SLIRPY, WORK, Guest, attached, dns_server,
                               in_world, set_nameservers, sh, udp_echo)

UDP_CLIENT = """
import hashlib, json, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
sizes = [int(s) for s in sys.argv[3].split(",")]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.settimeout(3)
bad = []
for n in sizes:
    sent = bytes((i * 7 + n) % 251 for i in range(n))
    s.sendto(sent, (addr, port))
    got = s.recv(65535)
    if hashlib.sha256(got).digest() != hashlib.sha256(sent).digest():
        bad.append(n)
print(json.dumps(bad))
"""


# --- slirpy run ---

def scenario_run_configures_guest_and_returns_status() -> dict[str, Any]:
    done = subprocess.run([*SLIRPY, "run", "--", "sh", "-c",
                           "ip -j addr show tap0; echo ===; ip -j route; exit 7"],
                          capture_output=True, text=True, timeout=60)
    addrs, routes = done.stdout.split("===")
    return {"status": done.returncode, "addrs": addrs, "routes": routes, "err": done.stderr}


def test_run_gives_command_an_address_and_default_route_and_returns_its_status() -> None:
    import json
    result = in_world(scenario_run_configures_guest_and_returns_status)
    assert result["status"] == 7, result["err"]
    (link,) = json.loads(result["addrs"])
    v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("10.0.2.100", 24)]
    default = [r for r in json.loads(result["routes"]) if r["dst"] == "default"]
    assert default and default[0]["gateway"] == "10.0.2.2"


def scenario_run_resolves_through_world_dns_on_loopback() -> dict[str, Any]:
    dns_server("127.0.0.1")  # the world's resolv.conf names 127.0.0.1: unreachable to a guest
    done = subprocess.run([*SLIRPY, "run", "--", "getent", "hosts", "example.test"],
                          capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "out": done.stdout, "err": done.stderr}


def test_run_resolves_names_with_a_resolver_on_host_loopback() -> None:
    result = in_world(scenario_run_resolves_through_world_dns_on_loopback)
    assert result["status"] == 0, result["err"]
    assert result["out"].split()[0] == INTERNET


def scenario_run_host_loopback(enable: bool) -> dict[str, Any]:
    udp_echo("127.0.0.1", 9000)
    flags = ["--enable-host-loopback"] if enable else []
    done = subprocess.run([*SLIRPY, "run", *flags, "--", sys.executable, "-c", UDP_CLIENT,
                           "10.0.2.2", "9000", "1,100,1472"],
                          capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "out": done.stdout, "err": done.stderr}


def test_run_reaches_world_loopback_via_gateway_only_with_enable_host_loopback() -> None:
    enabled = in_world(scenario_run_host_loopback, True)
    assert enabled["status"] == 0 and enabled["out"].strip() == "[]", enabled["err"]
    disabled = in_world(scenario_run_host_loopback, False)
    assert disabled["status"] != 0
    assert "unreachable" in disabled["err"].lower() or "timed out" in disabled["err"], disabled


# --- the attach form ---

def scenario_attach_configure() -> dict[str, Any]:
    with attached("-c") as (guest, _):
        return {"addr": guest.run("ip -o -4 addr show tap0").stdout.decode(),
                "route": guest.run("ip route show default").stdout.decode()}


def test_attach_with_configure_sets_address_and_route() -> None:
    result = in_world(scenario_attach_configure)
    assert "10.0.2.100/24" in result["addr"]
    assert result["route"].startswith("default via 10.0.2.2 dev tap0")


def scenario_attach_dhcp() -> str:
    script = WORK / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "ip=$ip router=$router dns=$dns '
                      f'mask=$mask mtu=$mtu" > {WORK}/lease\nexit 0\n')
    script.chmod(0o755)
    with attached() as (guest, _):
        guest.run("ip link set tap0 up")
        guest.run(f"udhcpc -i tap0 -n -q -f -t 5 -T 1 -s {script}", timeout=30)
    return (WORK / "lease").read_text()


def test_attach_without_configure_udhcpc_gets_a_lease_with_router_and_dns() -> None:
    lease = in_world(scenario_attach_dhcp)
    assert "ip=10.0.2.15 " in lease and "router=10.0.2.2 " in lease
    assert "dns=10.0.2.3 " in lease and "mask=24" in lease


# --- DNS ---

def scenario_dns_failover(first: str) -> dict[str, Any]:
    dns_server("127.0.0.1")
    set_nameservers([first, "127.0.0.1"])
    with attached("-c") as (guest, _):
        start = time.monotonic()
        getent = guest.run("getent hosts example.test", check=False)
        elapsed = time.monotonic() - start
        dig = guest.run("dig +short +tries=1 +time=5 @10.0.2.3 other.test", check=False)
        dig_tcp = guest.run("dig +short +tcp +tries=1 +time=5 @10.0.2.3 example.test", check=False)
    return {"getent": getent.stdout.decode(), "elapsed": elapsed,
            "dig": dig.stdout.decode().strip(), "dig_tcp": dig_tcp.stdout.decode().strip()}


@pytest.mark.parametrize("first", ["127.0.0.9", NOBODY], ids=["refused", "silent"])
def test_names_resolve_through_forwarder_when_first_nameserver_is_dead(first: str) -> None:
    result = in_world(scenario_dns_failover, first)
    assert result["getent"].split()[0] == INTERNET
    assert result["elapsed"] < 5.0  # one upstream timeout at most, not the guest's retries
    assert result["dig"] == "198.51.100.1"
    assert result["dig_tcp"] == INTERNET


def scenario_dns_follows_resolv_conf() -> dict[str, Any]:
    dns_server("127.0.0.1")
    set_nameservers(["127.0.0.9"])  # nobody there
    with attached("-c") as (guest, _):
        start = time.monotonic()
        dead = guest.run("dig +tries=1 +time=5 @10.0.2.3 example.test", check=False)
        dead_s = time.monotonic() - start
        set_nameservers(["127.0.0.1"])
        deadline = time.monotonic() + 10
        answer = ""
        while not answer and time.monotonic() < deadline:  # slirpy looks every 2 s
            answer = guest.run("dig +short +tries=1 +time=1 @10.0.2.3 example.test",
                               check=False).stdout.decode().strip()
    return {"dead": dead.stdout.decode(), "dead_s": dead_s, "answer": answer}


def test_dns_answers_servfail_fast_and_follows_resolv_conf_changes() -> None:
    result = in_world(scenario_dns_follows_resolv_conf)
    assert "status: SERVFAIL" in result["dead"] and result["dead_s"] < 3.0
    assert result["answer"] == INTERNET


# --- UDP ---

SIZES = ",".join(str(n) for n in [1, 2, 7, 8, 9, 63, 64, 100, 511, 512, 513, 1000, 1024,
                                  1400, 1471, 1472])


def scenario_udp_echo() -> dict[str, Any]:
    udp_echo("127.0.0.1", 9000)
    udp_echo(INTERNET, 9001)
    with attached("-c") as (guest, _):
        return {
            "loopback": guest.python(UDP_CLIENT, "10.0.2.2", "9000", SIZES),
            "internet": guest.python(UDP_CLIENT, INTERNET, "9001", SIZES),
            "fragmented": guest.python(UDP_CLIENT, INTERNET, "9001", "60000,65507"),
        }


def test_udp_echo_is_intact_for_every_size_and_fragmented_datagrams() -> None:
    result = in_world(scenario_udp_echo)
    assert result == {"loopback": "[]\n", "internet": "[]\n", "fragmented": "[]\n"}


# --- ICMP ---

def scenario_ping() -> dict[str, int]:
    with attached("-c") as (guest, _):
        def ping(addr: str) -> int:
            return guest.run(f"ping -c 1 -W 2 {addr}", check=False).returncode
        return {"gateway": ping("10.0.2.2"), "dns": ping("10.0.2.3"),
                "internet": ping(INTERNET), "nobody": ping(NOBODY)}


def test_ping_is_answered_by_us_for_ours_and_for_real_for_others() -> None:
    assert in_world(scenario_ping) == {"gateway": 0, "dns": 0, "internet": 0, "nobody": 1}


def scenario_ping_unanswered_when_address_removed() -> dict[str, int]:
    with attached("-c") as (guest, _):
        before = guest.run(f"ping -c 1 -W 2 {INTERNET}", check=False).returncode
        sh(f"ip addr del {INTERNET}/32 dev lo")
        after = guest.run(f"ping -c 1 -W 2 {INTERNET}", check=False).returncode
    return {"before": before, "after": after}


def test_ping_reply_is_never_invented() -> None:
    assert in_world(scenario_ping_unanswered_when_address_removed) == {"before": 0, "after": 1}


# --- ready and exit fds, beside slirp4netns ---

CONNECTORS = {"slirpy": SLIRPY, "slirp4netns": ["slirp4netns"]}


def scenario_exit_fd(connector: str, close_at_start: bool) -> dict[str, Any]:
    guest = Guest()
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()
    fd = exit_r
    if close_at_start:
        os.close(exit_r)
        fd = 99  # not open in the connector
    proc = subprocess.Popen([*CONNECTORS[connector], "-r", str(ready_w), "-e", str(fd),
                             str(guest.pid), "tap0"], pass_fds=(ready_w,) if close_at_start
                            else (ready_w, exit_r), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(ready_w)
    if not close_at_start:
        os.close(exit_r)
    ready = os.read(ready_r, 16)  # "1", or EOF if it exited first
    start = time.monotonic()
    os.close(exit_w)
    status = proc.wait(10)
    guest.stop()
    return {"ready": ready.decode(), "status": status, "elapsed": time.monotonic() - start}


@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_ready_fd_says_1_and_closing_exit_fd_stops_with_status_0(connector: str) -> None:
    result = in_world(scenario_exit_fd, connector, False)
    assert result["ready"] == "1" and result["status"] == 0
    assert result["elapsed"] < 2.0


@pytest.mark.parametrize("connector", list(CONNECTORS))
def test_exit_fd_that_is_not_open_stops_at_once(connector: str) -> None:
    result = in_world(scenario_exit_fd, connector, True)
    assert result["status"] == 0 and result["elapsed"] < 2.0


def scenario_bad_target() -> dict[str, Any]:
    out = {}
    for name, args in {"nopid": ["999999"], "longtap": ["1", "a" * 16]}.items():
        done = subprocess.run([*SLIRPY, *args], capture_output=True, text=True, timeout=30)
        out[name] = (done.returncode, done.stderr)
    return out


def test_bad_targets_fail_with_one_line() -> None:
    for status, err in in_world(scenario_bad_target).values():
        assert status == 1 and err.count("\n") == 1 and "Traceback" not in err


