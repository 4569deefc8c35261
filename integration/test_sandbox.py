"""Issue 13: slirpy confined by --enable-sandbox and --enable-seccomp, doing everything it
does unconfined.

Each scenario runs in a world of its own (see world.py). slirpy is started with both
flags; /proc/PID/status must then say Seccomp 2, NoNewPrivs 1 and no capability in any
set, and /proc/PID/root must be the empty read-only tmpfs holding only /etc (the world's
resolv.conf is /etc/resolv.conf). Then, confined: TCP (curl, IPv4 and IPv6), UDP, DNS
through 10.0.2.3 over UDP and TCP, ping, a remote SRV forward, the control socket's
commands (forwards added, used and removed at run time; rules added and removed; counters
and flows), a resolv.conf rewritten after start, SIGUSR1's dump, the host-address
watcher after an address is added, and a clean stop. `slirpy run` confines itself too,
as root and as an unprivileged user (who gets a user namespace of its own for the mount
namespace), and passes its command's status through after SIGTERM. podman's exact
invocation with both flags works. A sandbox the host refuses is one line and exit 1.

That the filter refuses what it should (execve, mount, socket(AF_PACKET), ...) is shown
in tests/test_hardening.py, in a forked child that loads it; here, that slirpy under it
still does all of the above, with no EPERM and no late import in its log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from integration.test_forwards import (TCP_SERVER, guest_server, report, srv_dns_server,
                                       tcp_exchange)
from integration.test_ipv6 import ADDRESSES, CONNECT
from integration.test_tcp import HTTP_PORT, http_servers
from integration.world import (INTERNET, INTERNET6, REPO, SLIRPY, WORK, Guest, Slirpy,
                               api_request, attached, dns_server, greeter, in_world,
                               set_nameservers, sh, udp_echo)

BOTH = ("--enable-sandbox", "--enable-seccomp")
CONFINED = {"Seccomp": "2", "NoNewPrivs": "1", "CapInh": "0" * 16, "CapPrm": "0" * 16,
            "CapEff": "0" * 16, "CapBnd": "0" * 16, "CapAmb": "0" * 16}
ST_RDONLY = 1
# What must never be in a confined slirpy's log: a module it failed to preload, an
# EPERM from the filter where the loop reports errors, a bug.
BAD_LOG = ("imported after slirpy was confined", "Operation not permitted", "errno 1)", "Traceback")

UDP_ONCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"confined", (sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode())
"""


def confinement(pid: int) -> dict[str, Any]:
    """What the kernel says of *pid*: its status lines that matter, and its root."""
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    root = f"/proc/{pid}/root"
    return {"status": {key: status[key] for key in CONFINED},
            "root": sorted(os.listdir(root)),
            "root_read_only": bool(os.statvfs(root).f_flag & ST_RDONLY),
            "resolv_conf": Path(root, "etc", "resolv.conf").read_text()}


def wait_for_log(slirpy: Slirpy, *words: str, timeout_s: float = 10) -> bool:
    """Whether a line of slirpy's log holds every one of *words* within *timeout_s*:
    slirpy writes its log in its own time, and no event says when (a SIGUSR1 dump, the
    host-address watcher's refresh)."""
    deadline = time.monotonic() + timeout_s
    while not any(all(word in line for word in words)
                  for line in slirpy.stderr_path.read_text(errors="replace").splitlines()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _api(path: Path, execute: str, **arguments: Any) -> Any:
    return api_request(path, {"execute": execute, "arguments": arguments})


def connect_result(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return "connected"
    except OSError as exc:
        return type(exc).__name__


# --- attach, everything at once ------------------------------------------------------------------

def scenario_attach_confined() -> dict[str, Any]:
    want = http_servers(1)
    dns_server("127.0.0.1")
    set_nameservers(["127.0.0.9"])  # nobody there yet: changed below, after start
    greeter(INTERNET6, 8000, b"internet6 greets")
    udp_echo(INTERNET, 7007)
    sh("ip addr add 192.0.2.53/32 dev lo")
    greeter(INTERNET, 8000, b"internet greets")
    srv_dns_server("192.0.2.53", {"_web._tcp.test": ("web.test", 8000, INTERNET)})
    api = WORK / "api.sock"
    out: dict[str, Any] = {}
    with attached("-c", "-6", *BOTH, "-a", str(api),
                  "-R", "10.0.2.2:9100:[_web._tcp.test@srv-192.0.2.53]:0") as (guest, slirpy):
        out["confinement"] = confinement(slirpy.proc.pid)
        # Guest traffic.
        out["curl"] = guest.run(f"curl -sS --max-time 30 http://{INTERNET}:{HTTP_PORT}/blob "
                                "| sha256sum").stdout.decode().split()[0]
        out["want"] = want
        out["udp"] = guest.python(UDP_ONCE, INTERNET, "7007").strip()
        out["ping"] = {dst: guest.run(f"ping -c 1 -W 3 {dst}", check=False).returncode
                       for dst in (INTERNET, "10.0.2.2")}
        out["srv"] = guest.python(CONNECT, "10.0.2.2", "9100").strip()
        out["slaac"] = bool(json.loads(guest.python(ADDRESSES))["routes"])
        out["tcp6"] = guest.python(CONNECT, INTERNET6, "8000").strip()
        # DNS, then the resolv.conf rewritten after start: the new upstream is used.
        out["dns_dead"] = guest.run("dig +tries=1 +time=5 @10.0.2.3 example.test",
                                    check=False).stdout.decode()
        set_nameservers(["127.0.0.1"])
        deadline = time.monotonic() + 10
        answer = ""
        while not answer and time.monotonic() < deadline:  # slirpy looks every 2 s
            answer = guest.run("dig +short +tries=1 +time=1 @10.0.2.3 example.test",
                               check=False).stdout.decode().strip()
        out["dns_after_change"] = answer
        out["dns_tcp"] = guest.run("dig +short +tcp +tries=1 +time=5 @10.0.2.3 other.test",
                                   check=False).stdout.decode().strip()
        out["getent"] = guest.run("getent ahostsv4 example.test", check=False).stdout.decode()
        # The control socket: a forward added at run time carries a connection, then goes.
        with guest_server(guest, TCP_SERVER, "80", "1000") as server:
            out["add"] = _api(api, "add_hostfwd", proto="tcp", host_addr="127.0.0.1",
                              host_port=18080, guest_port=80)
            out["list"] = _api(api, "list_hostfwd")
            out["client"] = tcp_exchange(("127.0.0.1", 18080), "127.0.0.1", 1000)
            out["server"] = report(server)
        out["remove"] = _api(api, "remove_hostfwd", id=out["add"]["return"]["id"])
        out["after_remove"] = connect_result(18080)
        out["add_udp"] = _api(api, "add_forward", kind="local",
                              spec="udp://127.0.0.1:18081:10.0.2.100:53")
        out["flows"] = _api(api, "list_flows")
        out["counters"] = _api(api, "counters")
        # Rules at run time.
        out["deny"] = _api(api, "add_rule", action="deny", spec=f"tcp://{INTERNET}:8000")
        out["denied"] = guest.python(CONNECT, INTERNET, "8000").strip()
        out["rules"] = _api(api, "list_rules")
        out["undeny"] = _api(api, "remove_rule", id=out["deny"]["return"]["ids"][0])
        out["allowed_again"] = guest.python(CONNECT, INTERNET, "8000").strip()
        # SIGUSR1: the dump reaches the log.
        slirpy.proc.send_signal(signal.SIGUSR1)
        out["dump"] = wait_for_log(slirpy, "drops:")
        out["still_confined"] = confinement(slirpy.proc.pid)["status"]
        out["status"] = slirpy.stop()
        out["log"] = slirpy.stderr_path.read_text(errors="replace")
    return out


def test_attach_confined_by_both_carries_everything() -> None:
    out = in_world(scenario_attach_confined, timeout=300)
    log = f"\n--- slirpy log (tail)\n{out['log'][-4000:]}"
    confined = out["confinement"]
    assert confined["status"] == CONFINED, confined
    assert confined["root"] == ["etc"] and confined["root_read_only"], confined
    assert confined["resolv_conf"] == "nameserver 127.0.0.9\n", "the world's, as bound"
    assert out["curl"] == out["want"], log
    assert out["udp"] == "confined", log
    assert out["ping"] == {INTERNET: 0, "10.0.2.2": 0}, log
    assert out["srv"] == "internet greets", log
    assert out["slaac"] and out["tcp6"] == "internet6 greets", log
    assert "status: SERVFAIL" in out["dns_dead"], log
    assert out["dns_after_change"] == INTERNET, "the rewritten resolv.conf was read" + log
    assert out["dns_tcp"] == "198.51.100.1" and out["getent"].split()[0] == INTERNET, log
    # The -R forward is 1: ids are shared by every kind of forward.
    assert out["add"] == {"return": {"id": 2}} and out["list"]["entries"][0]["host_port"] == 18080
    assert out["server"]["in_sha"] == out["client"]["up_sha"], log
    assert out["server"]["out_sha"] == out["client"]["down_sha"], log
    assert out["remove"] == {"return": {}} and out["after_remove"] == "ConnectionRefusedError"
    assert out["add_udp"] == {"return": {"ids": [3]}}, log
    assert "flows" in out["flows"]["return"] and out["counters"]["return"]["frames"]
    assert out["denied"] != "internet greets" and out["allowed_again"] == "internet greets", log
    assert out["rules"]["return"]["rules"] == [
        {"id": 1, "action": "deny", "rule": f"tcp://{INTERNET}:8000"}]
    assert out["dump"], log
    assert out["still_confined"] == CONFINED
    assert out["status"] == 0, log
    assert not [bad for bad in BAD_LOG if bad in out["log"]], log


# --- the host-address watcher (pyroute2) and rules, confined -------------------------------------

NEW_HOST = "203.0.113.50"  # routed into the blackhole until the world takes it


def scenario_host_addresses_confined() -> dict[str, Any]:
    api = WORK / "api.sock"
    out: dict[str, Any] = {}
    with attached("-c", "--restrict", "--enable-routing", *BOTH, "-a", str(api),
                  "--debug") as (guest, slirpy):
        out["confinement"] = confinement(slirpy.proc.pid)["status"]
        # Routed, so silence. (Port 81: the SYNs slirpy goes on sending for it must not
        # reach the server started on port 80 below once the address is the world's.)
        out["before"] = guest.python(CONNECT, NEW_HOST, "81").strip()
        sh(f"ip addr add {NEW_HOST}/32 dev lo")  # now one of the host's own: blocked
        greeter(NEW_HOST, 80, b"the new host address")
        out["watched"] = wait_for_log(slirpy, "host addresses and networks:", NEW_HOST)
        out["after"] = guest.python(CONNECT, NEW_HOST, "80").strip()
        out["allow"] = _api(api, "add_rule", action="allow", spec=f"tcp://{NEW_HOST}:80")
        out["allowed"] = guest.python(CONNECT, NEW_HOST, "80").strip()
        out["blocked"] = _api(api, "counters")["return"]["blocked"]
        out["status"] = slirpy.stop()
        out["log"] = slirpy.stderr_path.read_text(errors="replace")
    return out


def test_host_address_watcher_and_rules_work_confined() -> None:
    out = in_world(scenario_host_addresses_confined, timeout=180)
    quiet = "\n".join(line for line in out["log"].splitlines()  # without pyroute2's chatter
                      if not line.startswith(("slirpy: message", "slirpy: yield", "slirpy: get",
                                              "slirpy: await", "slirpy: SOCK")))
    log = f"\n--- slirpy log (tail)\n{quiet[-4000:]}"
    assert out["confinement"] == CONFINED
    assert out["before"].startswith("TimeoutError"), out["before"]
    assert out["watched"], "the new address was read through pyroute2, in the sandbox" + log
    assert out["after"].startswith("ConnectionRefusedError"), out["after"] + log
    assert out["allow"] == {"return": {"ids": [1]}}
    assert out["allowed"] == "the new host address", out["allowed"] + log
    assert sum(out["blocked"].values()) >= 1, out["blocked"]
    assert "sandbox: root is a read-only tmpfs holding /etc" in out["log"]
    assert "seccomp: " in out["log"] and "refused with EPERM" in out["log"]
    assert out["status"] == 0, log
    assert not [bad for bad in BAD_LOG if bad in out["log"]], log


# --- slirpy run --------------------------------------------------------------------------------

# CMD: say what it reached, then wait for stdin to close.
RUN_CMD = """
import socket, sys
with socket.create_connection((sys.argv[1], 8000), timeout=10) as s:
    print(s.recv(100).decode(), flush=True)
sys.stdin.read()
"""


def scenario_run_confined(unprivileged: bool, stop: str) -> dict[str, Any]:
    dns_server("127.0.0.1")
    greeter(INTERNET, 8000, b"internet greets")
    as_user = ["unshare", "--user", "--map-user=1000", "--map-group=1000"] if unprivileged \
        else []
    proc = subprocess.Popen([*as_user, *SLIRPY, "run", *BOTH, "--enable-host", "--",
                             sys.executable, "-c", RUN_CMD, INTERNET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    out: dict[str, Any] = {"reached": proc.stdout.readline().decode().strip()}
    # `unshare` execs slirpy: the pid is slirpy's either way.
    out["confinement"] = confinement(proc.pid) if out["reached"] else None
    if stop == "stdin":
        proc.stdin.close()  # CMD ends with status 0; so does slirpy
    else:
        proc.send_signal(signal.SIGTERM)  # slirpy stops, and signals CMD through its pidfd
    out["status"] = proc.wait(30)
    out["stderr"] = proc.stderr.read().decode()
    return out


def test_run_confines_itself_as_root_and_passes_the_status_through() -> None:
    for stop, status in (("stdin", 0), ("sigterm", 128 + signal.SIGTERM)):
        out = in_world(scenario_run_confined, False, stop)
        assert out["reached"] == "internet greets", out
        assert out["confinement"]["status"] == CONFINED, out
        assert out["confinement"]["root"] == ["etc"], out
        assert out["status"] == status, out
        assert not [bad for bad in BAD_LOG if bad in out["stderr"]], out


def test_run_confines_itself_as_an_unprivileged_user() -> None:
    out = in_world(scenario_run_confined, True, "stdin")
    assert out["reached"] == "internet greets", out
    assert out["confinement"]["status"] == CONFINED, out
    assert out["confinement"]["root"] == ["etc"], out
    assert out["status"] == 0, out


# --- a sandbox the host refuses -----------------------------------------------------------------

def scenario_sandbox_refused() -> dict[str, Any]:
    guest = Guest()
    sh("echo 0 > /proc/sys/user/max_mnt_namespaces")  # the guest has its one already
    ready_r, ready_w = os.pipe()
    try:
        done = subprocess.run([*SLIRPY, "-c", "-r", str(ready_w), *BOTH, str(guest.pid), "tap0"],
                              pass_fds=(ready_w,), capture_output=True, text=True, timeout=60)
        os.close(ready_w)
        ready = os.read(ready_r, 16).decode()
    finally:
        guest.stop()
    return {"status": done.returncode, "stderr": done.stderr, "ready": ready}


def test_a_sandbox_the_host_refuses_is_one_line_and_exit_1() -> None:
    out = in_world(scenario_sandbox_refused)
    assert out["status"] == 1, out
    assert out["stderr"].splitlines()[-1] == (
        "slirpy: --enable-sandbox: cannot unshare a mount namespace: No space left on device"
        " (--disable-sandbox runs without it)")
    assert "Traceback" not in out["stderr"], out
    assert out["ready"] == "", "never ready"


# --- podman's invocation with both flags, replayed --------------------------------------------

def scenario_podman_confined() -> dict[str, Any]:
    """podman 4.x (common/pkg/slirp4netns): `slirp4netns --disable-host-loopback
    --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 -c -r 3 -e 4 --api-socket
    TMPDIR/ID.net --netns-type=path NETNS tap0`, ExtraFiles [sync write end, exit read end],
    in a new mount namespace of its own (its workaround for slirp4netns#153) and process
    group; NETNS is a bind mount of the container's network namespace file."""
    guest = Guest()
    netns = WORK / "netns" / "netns-slirpy-test"
    netns.parent.mkdir()
    netns.touch()
    sh(f"mount --bind /proc/{guest.pid}/ns/net {netns}")
    api = WORK / "ctr.net"
    sync_r, sync_w = os.pipe()
    exit_r, exit_w = os.pipe()
    child = f"""
import os, sys
os.dup2({sync_w}, 3); os.dup2({exit_r}, 4)
os.execvp(sys.executable, [sys.executable, "-m", "slirpy", *sys.argv[1:]])
"""
    argv = ["--disable-host-loopback", "--mtu=65520", "--enable-sandbox", "--enable-seccomp",
            "--enable-ipv6", "-c", "-r", "3", "-e", "4", "--api-socket", str(api),
            "--netns-type=path", str(netns), "tap0"]
    log = open(WORK / "podman-slirpy.log", "wb")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable,
                             "-c", child, *argv], pass_fds=(sync_w, exit_r), stdout=log,
                            stderr=log, start_new_session=True)
    os.close(sync_w)
    os.close(exit_r)
    out: dict[str, Any] = {}
    try:
        out["ready"] = os.read(sync_r, 16).decode()
        out["confinement"] = confinement(proc.pid)
        with guest_server(guest, TCP_SERVER, "80", "1000") as server:
            request = json.dumps({"execute": "add_hostfwd", "arguments": {
                "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 18100,
                "guest_port": 80}}, separators=(",", ":")).encode() + b"\n"
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(api))
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
    out["log"] = (WORK / "podman-slirpy.log").read_text()
    return out


def test_podman_invocation_with_sandbox_and_seccomp() -> None:
    out = in_world(scenario_podman_confined, timeout=120)
    assert out["ready"] == "1", out["log"]
    assert out["confinement"]["status"] == CONFINED, out
    assert out["confinement"]["root"] == ["etc"], out
    assert out["reply"] == '{"return":{"id":1}}', out["log"]
    assert out["server"]["in_sha"] == out["client"]["up_sha"], out["log"]
    assert out["server"]["out_sha"] == out["client"]["down_sha"], out["log"]
    assert out["exit"] == 0, out["log"]
    assert not [bad for bad in BAD_LOG if bad in out["log"]], out["log"]
