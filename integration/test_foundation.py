"""Issue 2: attach, `slirpy run`, DHCP, DNS, UDP, ICMP, ready and exit fds, end to end.

Each test runs one scenario in a world of its own (see world.py); the scenario drives
real clients in a guest namespace and asserts on what they got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from integration.world import (INTERNET, NOBODY, SLIRPY, WORK, Guest, attached, dns_server,
                               in_world, set_nameservers, sh, udp_echo)

UDP_CLIENT = """
import errno, hashlib, json, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
sizes = [int(s) for s in sys.argv[3].split(",")]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
if sys.argv[4:] == ["df"]:  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: never fragment, send DF
    s.setsockopt(socket.IPPROTO_IP, 10, 2)
s.settimeout(3)
bad, sent_sha = [], {}
for n in sizes:
    sent = bytes((i * 7 + n) % 251 for i in range(n))
    try:
        s.sendto(sent, (addr, port))
        got = s.recv(65535)
    except TimeoutError:
        bad.append([n, "timeout"])
        continue
    except OSError as exc:
        bad.append([n, errno.errorcode[exc.errno]])
        continue
    sent_sha[n] = hashlib.sha256(sent).hexdigest()
    if hashlib.sha256(got).hexdigest() != sent_sha[n]:
        bad.append([n, f"got {len(got)} bytes, other than sent"])
print(json.dumps({"bad": bad, "sent": sent_sha}))
"""

# One datagram to the gateway: the echo, or the error an ICMP error became (ENETUNREACH
# for "net unreachable": a soft error, which Linux reports only with IP_RECVERR), or a
# timeout.
PROBE = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"probe")
    print("echo" if s.recv(100) == b"probe" else "garbled")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""

CONNECTORS = {"slirpy": SLIRPY, "slirp4netns": ["slirp4netns"]}  # the attach form


# --- slirpy run ---

def scenario_run_configures_guest_and_returns_status() -> dict[str, Any]:
    done = subprocess.run([*SLIRPY, "run", "--", "sh", "-c",
                           "ip -j addr show tap0; echo ===; ip -j route; exit 7"],
                          capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "out": done.stdout, "err": done.stderr}


def test_run_gives_command_an_address_and_default_route_and_returns_its_status() -> None:
    result = in_world(scenario_run_configures_guest_and_returns_status)
    assert result["status"] == 7 and "===" in result["out"], \
        f"exit {result['status']}\n--- stdout\n{result['out']}\n--- stderr\n{result['err']}"
    addrs, routes = result["out"].split("===")
    (link,) = json.loads(addrs)
    v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("10.0.2.100", 24)]
    default = [r for r in json.loads(routes) if r["dst"] == "default"]
    assert default and default[0]["gateway"] == "10.0.2.2"


def scenario_run_resolves_through_world_dns_on_loopback() -> dict[str, Any]:
    dns_server("127.0.0.1")  # the world's resolv.conf names 127.0.0.1: unreachable to a guest
    done = subprocess.run([*SLIRPY, "run", "--", "getent", "ahostsv4", "example.test"],
                          capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "out": done.stdout, "err": done.stderr}


def test_run_resolves_names_with_a_resolver_on_host_loopback() -> None:
    result = in_world(scenario_run_resolves_through_world_dns_on_loopback)
    assert result["status"] == 0, result["err"]
    assert result["out"].split()[0] == INTERNET


def scenario_run_host_loopback(enable: bool) -> dict[str, Any]:
    udp_echo("127.0.0.1", 9000)
    flags = ["--enable-host-loopback"] if enable else []
    done = subprocess.run([*SLIRPY, "run", *flags, "--", sys.executable, "-c", PROBE,
                           "10.0.2.2", "9000"], capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "out": done.stdout.strip(), "err": done.stderr}


@pytest.mark.parametrize("enable, outcome", [(True, "echo"), (False, "ENETUNREACH")],
                         ids=["enabled", "default"])
def test_run_reaches_world_loopback_via_gateway_only_with_enable_host_loopback(
        enable: bool, outcome: str) -> None:
    result = in_world(scenario_run_host_loopback, enable)
    assert (result["status"], result["out"]) == (0, outcome), result["err"]


# --- the attach form ---

def scenario_attach_configure() -> dict[str, Any]:
    with attached("-c") as (guest, _):
        return {"addr": guest.run("ip -o -4 addr show tap0").stdout.decode(),
                "route": guest.run("ip route show default").stdout.decode()}


def test_attach_with_configure_sets_address_and_route() -> None:
    result = in_world(scenario_attach_configure)
    assert "10.0.2.100/24" in result["addr"]
    assert result["route"].startswith("default via 10.0.2.2 dev tap0")


def scenario_attach_host_loopback(connector: str, flags: list[str]) -> str:
    udp_echo("127.0.0.1", 9000)
    with attached("-c", *flags, command=CONNECTORS[connector]) as (guest, _):
        return guest.python(PROBE, "10.0.2.2", "9000").strip()


@pytest.mark.parametrize("connector", ["slirpy", "slirp4netns"])
@pytest.mark.parametrize("flags, outcome", [([], "echo"),
                                            (["--disable-host-loopback"], "ENETUNREACH")],
                         ids=["default", "disabled"])
def test_attach_reaches_world_loopback_via_gateway_unless_disabled(
        connector: str, flags: list[str], outcome: str) -> None:
    assert in_world(scenario_attach_host_loopback, connector, flags) == outcome


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
        getent = guest.run("getent ahostsv4 example.test", check=False)
        elapsed = time.monotonic() - start
        dig = guest.run("dig +short +tries=1 +time=5 @10.0.2.3 other.test", check=False)
        dig_tcp = guest.run("dig +short +tcp +tries=1 +time=5 @10.0.2.3 example.test", check=False)
        python = guest.python("import socket; print(socket.getaddrinfo('other.test', 53, "
                              "socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])")
    return {"getent": getent.stdout.decode(), "elapsed": elapsed, "python": python.strip(),
            "dig": dig.stdout.decode().strip(), "dig_tcp": dig_tcp.stdout.decode().strip()}


@pytest.mark.parametrize("first", ["127.0.0.9", NOBODY], ids=["refused", "silent"])
def test_names_resolve_through_forwarder_when_first_nameserver_is_dead(first: str) -> None:
    result = in_world(scenario_dns_failover, first)
    assert result["getent"].split()[0] == INTERNET
    assert result["elapsed"] < 5.0  # one upstream timeout at most, not the guest's retries
    assert result["dig"] == "198.51.100.1"
    assert result["dig_tcp"] == INTERNET
    assert result["python"] == "198.51.100.1"


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

# Every size up to 64, then a stride through to 1472 (the most a datagram can carry
# unfragmented at MTU 1500), with the boundaries of common buffer sizes.
SIZES = ",".join(str(n) for n in sorted({*range(1, 65), *range(65, 1472, 29),
                                         255, 256, 257, 511, 512, 513, 1023, 1024, 1025,
                                         1400, 1471, 1472}))
FRAGMENTED = [60000, 65507]


def scenario_udp_echo() -> dict[str, Any]:
    at_loopback = udp_echo("127.0.0.1", 9000)
    at_internet = udp_echo(INTERNET, 9001)
    with attached("-c") as (guest, _):
        out = {
            # DF set: each datagram crosses the tap whole, in one frame each way
            "loopback": guest.python(UDP_CLIENT, "10.0.2.2", "9000", SIZES, "df"),
            "internet": guest.python(UDP_CLIENT, INTERNET, "9001", SIZES, "df"),
            "too-big-for-df": guest.python(UDP_CLIENT, INTERNET, "9001", "1473", "df"),
            "fragmented": guest.python(UDP_CLIENT, INTERNET, "9001",
                                       ",".join(map(str, FRAGMENTED))),
            "fragmented-loopback": guest.python(UDP_CLIENT, "10.0.2.2", "9000", "60000"),
        }
    results = {name: json.loads(text) for name, text in out.items()}
    return {**results, "at_loopback": at_loopback, "at_internet": at_internet}


def test_udp_echo_is_intact_for_every_size_and_fragmented_datagrams() -> None:
    result = in_world(scenario_udp_echo)
    sizes = [int(n) for n in SIZES.split(",")]
    for name in ("loopback", "internet", "fragmented", "fragmented-loopback"):
        assert result[name]["bad"] == [], name
    assert sorted(map(int, result["loopback"]["sent"])) == sizes
    # The guest's own kernel refuses 1473 with DF: 1472 really is the unfragmented limit.
    assert result["too-big-for-df"]["bad"] == [[1473, "EMSGSIZE"]]
    # What arrived at the servers is byte for byte what the guest sent (the echo checks
    # the way back): every sampled size, and the fragmented datagrams reassembled.
    at_internet = {n: sha for n, sha in result["at_internet"]}
    for name in ("internet", "fragmented"):
        for n, sha in result[name]["sent"].items():
            assert at_internet[int(n)] == sha, (name, n)
    assert sorted(n for n, _ in result["at_internet"] if n > 1472) == FRAGMENTED
    assert [sha for n, sha in result["at_loopback"] if n == 60000] == \
        [result["fragmented-loopback"]["sent"]["60000"]]


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
    out: dict[str, Any] = {}
    for name, args in {"nopid": ["999999"], "longtap": ["1", "a" * 16]}.items():
        done = subprocess.run([*SLIRPY, *args], capture_output=True, text=True, timeout=30)
        out[name] = (done.returncode, done.stderr)
    out["links"] = sh("ip -o link show | cut -d: -f2").split()  # no tap was left behind
    return out


def test_bad_targets_fail_with_one_line() -> None:
    result = in_world(scenario_bad_target)
    assert sorted(result.pop("links")) == ["blackhole0", "lo"]
    for status, err in result.values():
        assert status == 1 and err.count("\n") == 1 and err.startswith("slirpy: "), err
        assert "Traceback" not in err


def _pid_nobody_has() -> str:
    with open("/proc/sys/kernel/pid_max") as f:
        return f.read().strip()  # PIDs run up to pid_max - 1


@pytest.mark.no_world
@pytest.mark.parametrize("args", [
    ["--cidr", "foo", "1"],
    ["--cidr", "10.0.2.100/24", "1"],
    ["--mtu", "70000", "1"],
    ["--mtu", "abc", "1"],
    ["--no-such-option", "1"],
    [],
    ["pid-nobody-has"],
    ["run", "--cidr", "foo", "--", "true"],
    ["run"],
], ids=lambda args: " ".join(args) or "no-pid")
def test_bad_command_line_gives_one_stderr_line_and_non_zero_exit(args: list[str]) -> None:
    args = [_pid_nobody_has() if a == "pid-nobody-has" else a for a in args]
    done = subprocess.run([*SLIRPY, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.startswith("slirpy: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
