"""Issue 6: the egress policy, posture by posture, and the known bypasses, end to end.

The world here has three kinds of destination, each with a listener on ports 7000-7010
(TCP greeting and UDP echo, both families) that logs every contact it gets:
- the host's loopback (127.0.0.1, ::1), which the guest reaches through the gateway;
- a host address: 203.0.113.1 and 2001:db8:1::1, the world's side of a veth pair, so
  also a directly connected network;
- the internet: 198.51.100.77 and 2001:db8:77::1 in a namespace of their own behind
  that veth, routed, so not an address of the host slirpy runs on.
A guest probe tries TCP, UDP and ping to each and says how each went; the listeners'
logs say what really arrived. Crafted frames, written onto the guest's tap with an
AF_PACKET socket, try the addresses a guest kernel would keep to itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.world import SLIRPY, WORK, Guest, Slirpy, api_request, in_world, sh

HOST4, HOST6 = "203.0.113.1", "2001:db8:1::1"
NET4, NET6 = "198.51.100.77", "2001:db8:77::1"

LISTENER = """
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp(family, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(64)
    while True:
        conn, peer = s.accept()
        log.write(f"tcp {conn.getsockname()[0]} {port} from {peer[0]}\\n")
        conn.sendall(b"hello")
        conn.close()
def udp(family, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, 49, 1)  # IPV6_RECVPKTINFO: which address
    else:
        s.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    while True:
        data, anc, _, peer = s.recvmsg(2048, 256)
        local, reply = "?", []
        for level, kind, value in anc:  # answer from the address asked, as a server must
            if level == socket.IPPROTO_IP:
                local = socket.inet_ntop(socket.AF_INET, value[8:12])
                reply = [(level, 8, bytes(4) + value[8:12] + bytes(4))]  # IP_PKTINFO
            elif level == socket.IPPROTO_IPV6:
                local = socket.inet_ntop(socket.AF_INET6, value[:16])
                reply = [(level, 50, value[:16] + bytes(4))]  # IPV6_PKTINFO
        log.write(f"udp {local} {port} from {peer[0]}\\n")
        s.sendmsg([data], reply, 0, peer)
for port in list(range(7000, 7011)) + [80]:
    for family in (socket.AF_INET, socket.AF_INET6):
        threading.Thread(target=tcp, args=(family, port), daemon=True).start()
        threading.Thread(target=udp, args=(family, port), daemon=True).start()
print("up", flush=True)
threading.Event().wait()
"""

PROBE = """
import errno, json, socket, subprocess, sys
out = {}
for target in sys.argv[1:]:
    proto, addr, port = target.split(" ")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if proto == "ping":
        done = subprocess.run(["ping", "-c", "1", "-W", "2", addr], capture_output=True)
        out[target] = "ok" if done.returncode == 0 else "no reply"
        continue
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    if proto == "udp":  # IP_RECVERR / IPV6_RECVERR: ICMP errors surface as errnos
        s.setsockopt(*((socket.IPPROTO_IP, 11) if family == socket.AF_INET
                       else (socket.IPPROTO_IPV6, 25)), 1)
    s.settimeout(3)
    try:
        s.connect((addr, int(port)))
        if proto == "udp":
            s.send(b"hi")
        got = s.recv(100)
        out[target] = "ok" if got in (b"hello", b"hi") else f"got {got!r}"
    except socket.timeout:
        out[target] = "timeout"
    except OSError as exc:
        out[target] = errno.errorcode.get(exc.errno, str(exc))
    finally:
        s.close()
print(json.dumps(out))
"""


def build_internet() -> subprocess.Popen[bytes]:
    """A namespace of its own holding the internet addresses, behind a veth pair whose
    world end is the host address; returns its keeper process."""
    keeper = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    netns = f"/proc/{keeper.pid}/ns/net"
    deadline = time.monotonic() + 5
    while os.readlink(netns) == os.readlink("/proc/self/ns/net"):
        if time.monotonic() > deadline:
            raise AssertionError("internet namespace did not appear")
        time.sleep(0.01)  # unshare has no readiness signal
    inside = f"nsenter --net={netns}"
    sh(f"ip link add veth-h type veth peer name veth-i netns {keeper.pid}")
    sh(f"ip addr add {HOST4}/24 dev veth-h && ip -6 addr add {HOST6}/64 dev veth-h nodad"
       " && ip link set veth-h up")
    sh(f"ip route add {NET4}/32 via 203.0.113.2 && ip -6 route add {NET6}/128 via "
       "2001:db8:1::2")
    sh(f"{inside} sh -c 'ip link set lo up && ip link set veth-i up"
       f" && ip addr add 203.0.113.2/24 dev veth-i && ip addr add {NET4}/32 dev lo"
       f" && ip -6 addr add 2001:db8:1::2/64 dev veth-i nodad"
       f" && ip -6 addr add {NET6}/128 dev lo"
       f" && ip route add default via {HOST4} && ip -6 route add default via {HOST6}'")
    sh("ip addr add 169.254.169.254/32 dev lo")  # a "metadata service" on the host
    return keeper


@contextlib.contextmanager
def internet_and_listeners() -> Iterator[tuple[Path, Path]]:
    """build_internet, with a listener on the host and one in the internet; yields their
    logs; everything stops on the way out."""
    keeper = build_internet()
    host_log, net_log = WORK / "host.log", WORK / "net.log"
    listeners = [start_listener(host_log), start_listener(net_log, f"/proc/{keeper.pid}/ns/net")]
    try:
        yield host_log, net_log
    finally:
        for proc in [*listeners, keeper]:
            proc.kill()
            proc.wait()


def in_guest(form: str, flags: list[str], script: str, args: list[str],
             command: list[str] | None = None) -> Any:
    """Run the Python *script* with *args* in a guest online through slirpy (`slirpy run`,
    or the attach form with -c -6, or *command* attached in slirpy's place); its JSON."""
    if form == "run":
        done = subprocess.run([*SLIRPY, "run", *flags, "--", sys.executable, "-c", script,
                               *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    guest = Guest()
    try:
        connector = Slirpy(guest, "-c", "-6", *flags, command=command)
        try:
            return json.loads(guest.python(script, *args))
        finally:
            connector.stop()
    finally:
        guest.stop()


def start_listener(log: Path, netns: str | None = None) -> subprocess.Popen[str]:
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    proc = subprocess.Popen([*prefix, sys.executable, "-c", LISTENER, str(log)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def scenario_posture(form: str, flags: list[str], targets: list[str]) -> dict[str, Any]:
    with internet_and_listeners() as (host_log, net_log):
        got = in_guest(form, flags, PROBE, targets)
    seen = [line.split()[:3] for log in (host_log, net_log) if log.exists()
            for line in log.read_text().splitlines()]
    return {"got": got, "seen": seen}


def _arrived(result: dict[str, Any], target: str) -> bool:
    """Whether a listener logged the probe *target* ("tcp ADDR PORT")."""
    proto, addr, port = target.split(" ")
    local = {"10.0.2.2": "127.0.0.1", "fd00::2": "::1"}.get(addr, addr)
    return [proto, local, port] in result["seen"]


OK, REFUSED = "ok", "ECONNREFUSED"
PROHIBITED4 = "EHOSTUNREACH"  # Linux's errno for ICMP "administratively prohibited"
PROHIBITED6 = "EACCES"  # and for ICMPv6's
NETUNREACH = "ENETUNREACH"

def reach(*, loopback: bool, host: bool, routing: bool) -> dict[str, str]:
    """The outcome of each probe when the posture opens host loopback, the host's
    addresses and routing as given: what is open answers, what is closed fails as the
    policy says (the gateway without loopback: net unreachable, as slirp4netns)."""
    expected: dict[str, str] = {}
    for addr in ("10.0.2.2", "fd00::2"):
        for proto in ("tcp", "udp"):
            expected[f"{proto} {addr} 7000"] = OK if loopback else NETUNREACH
    for (v4, v6), open_ in (((HOST4, HOST6), host), ((NET4, NET6), routing)):
        expected |= {f"tcp {v4} 7000": OK if open_ else REFUSED,
                     f"udp {v4} 7000": OK if open_ else PROHIBITED4,
                     f"tcp {v6} 7000": OK if open_ else REFUSED,
                     f"udp {v6} 7000": OK if open_ else PROHIBITED6}
    expected["tcp 169.254.169.254 80"] = REFUSED  # the static list, in every posture
    for addr, open_ in ((NET4, routing), (NET6, routing), (HOST4, host)):
        expected[f"ping {addr} 0"] = OK if open_ else "no reply"
    return expected


# posture -> (form, flags, {probe: expected outcome})
POSTURES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "slirp4netns form": ("attach", [], reach(loopback=True, host=True, routing=True)),
    "--restrict": ("attach", ["--restrict"], reach(loopback=False, host=False, routing=False)),
    "--restrict --enable-host": ("attach", ["--restrict", "--enable-host"],
                                 reach(loopback=False, host=True, routing=False)),
    "--restrict --enable-routing": ("attach", ["--restrict", "--enable-routing"],
                                    reach(loopback=False, host=False, routing=True)),
    "slirpy run": ("run", [], reach(loopback=False, host=False, routing=True)),
}

COMBOS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    # allow a TCP port range, deny one port inside it: deny wins; UDP and ping are not
    # in the rule; the host stays closed although the range's port matches.
    "restrict, allow range, deny inside": ("attach", [
        "--restrict", "--allow", f"tcp://{NET4}:7001-7005,tcp://[{NET6}]:7002",
        "--deny", f"tcp://{NET4}:7003"], {
        f"tcp {NET4} 7000": REFUSED, f"tcp {NET4} 7001": OK, f"tcp {NET4} 7003": REFUSED,
        f"tcp {NET4} 7005": OK, f"tcp {NET4} 7006": REFUSED, f"udp {NET4} 7001": PROHIBITED4,
        f"ping {NET4} 0": "no reply", f"tcp {NET6} 7002": OK, f"tcp {HOST4} 7002": REFUSED}),
    # the slirp4netns form with a deny on a prefix and an allow for ping inside it
    "deny prefix, allow icmp": ("attach", [
        "--deny", "198.51.100.0/24:1-65535", "--allow", f"icmp://{NET4}",
        "--deny", f"tcp://{HOST4}:7002"], {
        f"tcp {NET4} 7000": REFUSED, f"tcp {NET4} 7001": REFUSED, f"tcp {NET4} 7003": REFUSED,
        f"tcp {NET4} 7005": REFUSED, f"tcp {NET4} 7006": REFUSED,
        f"udp {NET4} 7001": PROHIBITED4, f"ping {NET4} 0": OK, f"tcp {NET6} 7002": OK,
        f"tcp {HOST4} 7002": REFUSED}),
    # slirpy run: the host opened by a rule for one port only
    "run, allow one host port": ("run", ["--allow", f"tcp://{HOST4}:7005"], {
        f"tcp {NET4} 7000": OK, f"tcp {NET4} 7001": OK, f"tcp {NET4} 7003": OK,
        f"tcp {NET4} 7005": OK, f"tcp {NET4} 7006": OK, f"udp {NET4} 7001": OK,
        f"ping {NET4} 0": OK, f"tcp {NET6} 7002": OK, f"tcp {HOST4} 7002": REFUSED}),
}


def _check(result: dict[str, Any], expected: dict[str, str]) -> None:
    got = result["got"]
    wrong = {t: (got.get(t), want) for t, want in expected.items() if got.get(t) != want}
    assert not wrong, f"probe: (got, expected): {wrong}"
    for target, outcome in expected.items():
        if target.startswith("ping"):
            continue
        # What was let through reached its listener; what was refused reached nothing.
        assert _arrived(result, target) == (outcome == OK), (target, outcome, result["seen"])


@pytest.mark.parametrize("posture", list(POSTURES))
def test_posture_decides_what_the_guest_reaches_and_how_it_fails(posture: str) -> None:
    form, flags, expected = POSTURES[posture]
    result = in_world(scenario_posture, form, flags, list(expected))
    _check(result, expected)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_allow_and_deny_rules_with_port_ranges(combo: str) -> None:
    form, flags, expected = COMBOS[combo]
    result = in_world(scenario_posture, form, flags, list(expected))
    _check(result, expected)


# --- bypasses: crafted frames for what a guest kernel keeps to itself ---

CRAFTER = """
import json, socket, subprocess, sys
from scapy.layers.l2 import Ether
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
link = json.loads(subprocess.run(["ip", "-j", "link", "show", "tap0"], capture_output=True,
                                 check=True).stdout)[0]
ours = "52:55:0a:00:02:02"  # slirpy's and slirp4netns's MAC: 52:55 and the gateway
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("tap0", 0))
sent = 0
for i, target in enumerate(sys.argv[1:]):
    dst, port = target.rsplit(" ", 1)
    ip = IPv6(src="fd00::100", dst=dst) if ":" in dst else IP(src="10.0.2.100", dst=dst)
    eth = Ether(src=link["address"], dst=ours)
    raw.send(bytes(eth / ip / TCP(sport=41000 + i, dport=int(port), flags="S", seq=7)))
    raw.send(bytes(eth / ip / UDP(sport=41000 + i, dport=int(port)) / b"leak?"))
    sent += 2
# slirpy (and slirp4netns) take frames in order: once the gateway answers this ping,
# every crafted frame before it has been dealt with.
ok = subprocess.run(["ping", "-c", "1", "-W", "5", "10.0.2.2"], capture_output=True)
print(json.dumps({"sent": sent, "sentinel": ok.returncode}))
"""

BYPASSES = ["127.0.0.1 7000", "127.0.0.2 7000", "::1 7000", "::ffff:127.0.0.1 7000",
            "::127.0.0.1 7000", "64:ff9b::7f00:1 7000", "0.0.0.0 7000",
            "169.254.169.254 80", "10.0.2.3 7000", "10.0.2.255 7000",
            "255.255.255.255 7000", "fd00::3 7000"]
# After the guest's sentinel, the world itself contacts each listener socket a crafted
# frame could have reached: a socket's queue is first in, first out, so anything
# crafted that got through is logged before the world's own contact.
SENTINELS = [("tcp", "127.0.0.1", 7000), ("udp", "127.0.0.1", 7000), ("tcp", "::1", 7000),
             ("udp", "::1", 7000), ("tcp", "169.254.169.254", 80),
             ("udp", "169.254.169.254", 80)]


def _world_contact(proto: str, addr: str, port: int, log: Path) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect((addr, port))
        if proto == "udp":
            s.send(b"sentinel")
        s.recv(100)  # the greeting or the echo: the listener logged us first
    assert any(line.split()[:3] == [proto, addr, str(port)]
               for line in log.read_text().splitlines())


def scenario_bypass(command: list[str] | None, form: str, flags: list[str]) -> dict[str, Any]:
    with internet_and_listeners() as (log, _):
        crafted = in_guest(form, flags, CRAFTER, BYPASSES, command)
        for proto, addr, port in SENTINELS:
            _world_contact(proto, addr, port, log)
    return {"crafted": crafted, "seen": [line.split() for line in log.read_text().splitlines()]}


def _leaks(result: dict[str, Any]) -> list[list[str]]:
    """What the listeners logged besides the world's own sentinel contacts."""
    leaks = list(result["seen"])
    for proto, addr, port in SENTINELS:
        leaks.remove([proto, addr, str(port), "from", addr])
    return leaks


BYPASS_POSTURES = {
    "slirp4netns form": ("attach", []),
    "--disable-host-loopback": ("attach", ["--disable-host-loopback"]),
    "--restrict": ("attach", ["--restrict"]),
    "everything enabled": ("attach", ["--restrict", "--enable-routing", "--enable-host",
                                      "--enable-host-loopback"]),
    "allow everything": ("attach", ["--allow", "0.0.0.0/0,[::/0]"]),
    "slirpy run": ("run", []),
    "slirpy run, host open": ("run", ["--enable-host", "--enable-host-loopback"]),
}


@pytest.mark.parametrize("posture", list(BYPASS_POSTURES))
def test_crafted_frames_to_loopback_mapped_nat64_metadata_and_broadcast_reach_nothing(
        posture: str) -> None:
    form, flags = BYPASS_POSTURES[posture]
    result = in_world(scenario_bypass, None, form, flags)
    assert result["crafted"] == {"sent": 2 * len(BYPASSES), "sentinel": 0}, result
    assert _leaks(result) == [], f"{posture}: crafted frames reached the host: {_leaks(result)}"


def test_the_same_crafted_syn_reaches_host_loopback_through_slirp4netns() -> None:
    """The test can see a leak: slirp4netns 1.2.0, even with --disable-host-loopback,
    connects a crafted SYN for 127.0.0.1 to the host's loopback."""
    result = in_world(scenario_bypass, ["slirp4netns"], "attach", ["--disable-host-loopback"])
    assert result["crafted"]["sentinel"] == 0
    assert ["tcp", "127.0.0.1", "7000", "from", "127.0.0.1"] in _leaks(result), result["seen"]


# --- a new host address, rules at runtime, rules from the config file ---

def _api(request: dict[str, Any]) -> Any:
    return api_request(WORK / "api.sock", request)


def scenario_runtime() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with internet_and_listeners() as (host_log, _):
        guest = Guest()
        slirpy = Slirpy(guest, "-c", "--restrict", "--enable-routing", "-a",
                        str(WORK / "api.sock"))
        try:
            def probe(*targets: str) -> dict[str, str]:
                return json.loads(guest.python(PROBE, *targets))  # type: ignore[no-any-return]

            out["before"] = probe(f"tcp {NET4} 7000")
            sh(f"ip addr add {NET4}/32 dev lo")  # now it is one of the host's own
            out["host now"] = probe(f"tcp {NET4} 7000", f"udp {NET4} 7000")
            sh(f"ip addr del {NET4}/32 dev lo")
            out["routed again"] = probe(f"tcp {NET4} 7000")
            out["closed"] = probe(f"tcp {HOST4} 7004")
            added = _api({"execute": "add_rule",
                          "arguments": {"action": "allow", "spec": f"tcp://{HOST4}:7004"}})
            out["added"] = added
            out["listed"] = _api({"execute": "list_rules"})
            out["opened"] = probe(f"tcp {HOST4} 7004", f"tcp {HOST4} 7005")
            out["removed"] = _api({"execute": "remove_rule",
                                   "arguments": {"id": added["return"]["ids"][0]}})
            out["closed again"] = probe(f"tcp {HOST4} 7004")
            out["counters"] = _api({"execute": "counters"})["return"]["blocked"]
        finally:
            slirpy.stop()
            guest.stop()
        config = WORK / "policy.yaml"
        config.write_text(f"restrict: true\nallow:\n  - tcp://{NET4}:7001\n"
                          f"deny: [tcp://{NET4}:7002]\nenable-routing: true\n")
        out["config file"] = in_guest("run", ["--config", str(config)], PROBE, [
            f"tcp {NET4} 7001", f"tcp {NET4} 7002", f"tcp {NET4} 7003"])
    out["host seen"] = [line.split()[:3] for line in host_log.read_text().splitlines()]
    return out


def test_new_host_address_rules_at_runtime_and_from_the_config_file() -> None:
    result = in_world(scenario_runtime)
    assert result["before"] == {f"tcp {NET4} 7000": OK}
    # The address became the host's own while slirpy ran: blocked from the next flow on.
    assert result["host now"] == {f"tcp {NET4} 7000": REFUSED, f"udp {NET4} 7000": PROHIBITED4}
    assert [p for p in result["host seen"] if p[1] == NET4] == [], "the host saw nothing"
    assert result["routed again"] == {f"tcp {NET4} 7000": OK}
    assert result["closed"] == {f"tcp {HOST4} 7004": REFUSED}
    assert "ids" in result["added"]["return"]
    listed = result["listed"]["return"]
    assert listed["rules"] == [{"id": result["added"]["return"]["ids"][0], "action": "allow",
                                "rule": f"tcp://{HOST4}:7004"}]
    assert (listed["routing"], listed["host"], listed["host_loopback"]) == (True, False, False)
    assert result["opened"] == {f"tcp {HOST4} 7004": OK, f"tcp {HOST4} 7005": REFUSED}
    assert result["removed"] == {"return": {}}
    assert result["closed again"] == {f"tcp {HOST4} 7004": REFUSED}
    assert result["counters"].get("host address (--enable-host)", 0) >= 5, result["counters"]
    assert result["config file"] == {f"tcp {NET4} 7001": OK, f"tcp {NET4} 7002": REFUSED,
                                     f"tcp {NET4} 7003": OK}
