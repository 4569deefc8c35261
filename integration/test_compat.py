"""Issue 13: slirp4netns compatibility seen from a real guest.

--disable-dns leaves the DNS address silent (a connect times out, a query gets no
answer) while ping still gets its reply; our own echo replies carry TTL 255 (hop limit
255); options may follow the positional arguments, as getopt allows. Where slirp4netns
can run the same scenario, it runs beside slirpy and both must agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from integration.world import SLIRPY, WORK, Guest, api_request, attached, dns_server, in_world

CONNECTORS = {"slirpy": SLIRPY, "slirp4netns": ["slirp4netns"]}  # the attach form

# TCP to port 53 and a DNS query over UDP, each with a short timeout: what each got.
DNS_PROBE = r"""
import errno, json, socket, sys
addr = sys.argv[1]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = {}
tcp = socket.socket(family)
tcp.settimeout(2)
try:
    tcp.connect((addr, 53))
    out["tcp"] = "connected"
except TimeoutError:
    out["tcp"] = "timeout"
except OSError as exc:
    out["tcp"] = errno.errorcode[exc.errno]
udp = socket.socket(family, socket.SOCK_DGRAM)
udp.settimeout(2)
udp.connect((addr, 53))
query = b"\x12\x34\x01\x00\x00\x01" + bytes(6) + b"\x07example\x04test\x00\x00\x01\x00\x01"
try:
    udp.send(query)
    out["udp"] = "answer" if udp.recv(4096)[:2] == b"\x12\x34" else "garbled"
except TimeoutError:
    out["udp"] = "timeout"
except OSError as exc:
    out["udp"] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def ping_ttl(guest: Guest, addr: str) -> int | None:
    """The TTL (hop limit) of the reply to one ping, None if none came."""
    done = guest.run(["ping", "-c", "1", "-W", "2", addr], check=False)
    found = re.search(r"ttl=(\d+)", done.stdout.decode())
    return int(found.group(1)) if found else None


# --- --disable-dns ---

def scenario_dns_address(command: list[str], disable: bool) -> dict[str, Any]:
    dns_server("127.0.0.1")  # the world's resolv.conf names it: the forwarder's upstream
    flags = ["--disable-dns"] if disable else []
    with attached("-c", *flags, command=command) as (guest, _):
        probe = json.loads(guest.python(DNS_PROBE, "10.0.2.3", timeout=30))
        return {**probe, "ping": ping_ttl(guest, "10.0.2.3") is not None}


@pytest.mark.parametrize("connector", CONNECTORS)
@pytest.mark.parametrize("disable, expected", [
    (False, {"tcp": "connected", "udp": "answer", "ping": True}),
    (True, {"tcp": "timeout", "udp": "timeout", "ping": True}),
], ids=["dns", "disable-dns"])
def test_disable_dns_leaves_the_dns_address_silent_but_for_ping(
        connector: str, disable: bool, expected: dict[str, Any]) -> None:
    assert in_world(scenario_dns_address, CONNECTORS[connector], disable) == expected


# --- our echo replies: TTL 255 ---

def scenario_echo_ttl(command: list[str], ipv6: bool) -> dict[str, int | None]:
    targets = ["10.0.2.2", "10.0.2.3", *(["fd00::2", "fd00::3"] if ipv6 else [])]
    with attached("-c", *(["-6"] if ipv6 else []), command=command) as (guest, _):
        return {addr: ping_ttl(guest, addr) for addr in targets}


@pytest.mark.parametrize("connector, ipv6", [("slirpy", True), ("slirp4netns", False)])
def test_echo_replies_from_gateway_and_dns_carry_ttl_255(connector: str, ipv6: bool) -> None:
    ttls = in_world(scenario_echo_ttl, CONNECTORS[connector], ipv6)
    assert set(ttls.values()) == {255}, ttls


# --- options after the positional arguments ---

def scenario_options_after_positionals() -> dict[str, Any]:
    guest = Guest()
    api = WORK / "api.sock"
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([*SLIRPY, "-c", str(guest.pid), "tap0", "--mtu", "1400",
                             f"--ready-fd={write_fd}", "--api-socket", str(api),
                             "--max-flows", "64"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as ready:
            if ready.read(1) != b"1":
                raise AssertionError(f"not ready: {proc.communicate(timeout=10)[1]}")
        link = guest.run("ip -o link show tap0").stdout.decode()
        mtu = re.search(r" mtu (\d+)", link).group(1)  # type: ignore[union-attr]
        listed = api_request(api, {"execute": "list_hostfwd"})
        return {"mtu": mtu, "api": listed, "ping": ping_ttl(guest, "10.0.2.2")}
    finally:
        proc.terminate()
        proc.wait(10)
        guest.stop()


def test_attach_takes_options_after_pid_and_tap_name() -> None:
    assert in_world(scenario_options_after_positionals) == {
        "mtu": "1400", "api": {"entries": []}, "ping": 255}


def scenario_run_options_and_command() -> dict[str, Any]:
    # No `--`: the command starts at its first word and keeps its own options.
    done = subprocess.run([*SLIRPY, "run", "--mtu", "1400", "--disable-sandbox",
                           "--disable-seccomp", "--max-pending-connects=8", "sh", "-c",
                           "ip -o link show tap0; echo \"$@\"", "sh", "--mtu", "9"],
                          capture_output=True, text=True, timeout=60)
    mtu = re.search(r" mtu (\d+)", done.stdout)
    return {"status": done.returncode, "mtu": mtu.group(1) if mtu else None,
            "args": done.stdout.splitlines()[-1:], "err": done.stderr}


def test_run_takes_its_options_before_the_command_and_leaves_the_rest_to_it() -> None:
    result = in_world(scenario_run_options_and_command)
    assert (result["status"], result["mtu"], result["args"]) == (0, "1400", ["--mtu 9"]), \
        result["err"]
