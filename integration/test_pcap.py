"""Issue 14: packet capture of the guest link, read back by tcpdump and scapy.

Each scenario runs in a world of its own (see world.py) with an HTTP server on the
world's "internet" address, and a guest that fetches from it with curl:
- confined (--enable-sandbox --enable-seccomp): --pcap from the start, then pcap_stop
  and pcap-start with an fd passed over the control socket (SCM_RIGHTS), where a path
  is refused; each file holds the TCP handshake (SYN, SYN-ACK, ACK with the right
  numbers) and the HTTP request and answer, both ways, as tcpdump -r and scapy read it;
- confined with --pcap-size 1M,rotate: a download three times the size turns the ring
  of two files (the seccomp filter lets slirpy empty them), both readable, each within
  the size, and the filter refused nothing;
- a tiny tmpfs fills during a download: the capture stops with one log line, the
  download completes intact, and the guest's next fetch works; pcap_start with a path
  then captures again (unconfined, where paths can be opened).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from integration.world import INTERNET, WORK, api_request, attached, in_world, serve_forever, sh

PORT = 8080
GUEST = "10.0.2.100"
GREETING = b"hello from the world, captured\n"
CONFINED = ("--enable-sandbox", "--enable-seccomp")
CURL = f"curl -sS --max-time 30 http://{INTERNET}:{PORT}"


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET / answers GREETING; GET /N answers N zero bytes."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        size = self.path.strip("/")
        body = bytes(int(size)) if size else GREETING
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def http_server() -> None:
    serve_forever(http.server.ThreadingHTTPServer((INTERNET, PORT), _Handler).serve_forever)


def with_fd(path: Path, request: dict[str, Any], fd: int) -> Any:
    """*request* with *fd* passed alongside (SCM_RIGHTS), as `slirpy ctl` sends it."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        socket.send_fds(sock, [json.dumps(request).encode()], [fd])
        sock.shutdown(socket.SHUT_WR)
        return json.loads(sock.makefile().read())


def tcpdump(path: Path) -> dict[str, Any]:
    """tcpdump -r of *path*: its status and lines. It runs in a user namespace of its own
    (uid "nobody"): as root it would try to drop to its own user, which this world cannot
    map, so the file is handed over on stdin."""
    with open(path, "rb") as file:
        done = subprocess.run(["unshare", "--user", "tcpdump", "-nn", "-r", "-"], stdin=file,
                              capture_output=True, text=True, timeout=30)
    return {"rc": done.returncode, "lines": done.stdout.splitlines(),
            "stderr": done.stderr[-500:]}


def session(path: Path) -> dict[str, Any]:
    """What a capture of the guest's `curl /` shows: the handshake and the payloads,
    read with scapy, and tcpdump's view of the handshake."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import rdpcap

    packets = [p for p in rdpcap(str(path)) if TCP in p and PORT in (p[TCP].sport, p[TCP].dport)]
    to_server = [p for p in packets if p[IP].src == GUEST and p[TCP].dport == PORT]
    to_guest = [p for p in packets if p[IP].dst == GUEST and p[TCP].sport == PORT]
    syn = next(p for p in to_server if p[TCP].flags == "S")
    syn_ack = next(p for p in to_guest if p[TCP].flags == "SA")
    ack = next(p for p in to_server if p[TCP].flags == "A" and p[TCP].seq == syn[TCP].seq + 1)
    request = b"".join(bytes(p[TCP].payload) for p in to_server)
    answer = b"".join(bytes(p[TCP].payload) for p in to_guest)
    dump = tcpdump(path)
    guest_end, server_end = f"{GUEST}.{syn[TCP].sport}", f"{INTERNET}.{PORT}"
    return {
        "handshake": [syn_ack[TCP].ack == syn[TCP].seq + 1, ack[TCP].ack == syn_ack[TCP].seq + 1],
        "order": packets.index(syn) < packets.index(syn_ack) < packets.index(ack),
        "request": request.startswith(b"GET / HTTP/1.1\r\n"),
        "answer": answer.startswith(b"HTTP/1.0 200") and answer.endswith(GREETING),
        "tcpdump": {
            "rc": dump["rc"],
            "syn": any(f"{guest_end} > {server_end}: Flags [S]," in line for line in dump["lines"]),
            "syn_ack": any(f"{server_end} > {guest_end}: Flags [S.]," in line
                           for line in dump["lines"]),
            "http": any("HTTP" in line for line in dump["lines"]),
            "stderr": dump["stderr"],
        },
    }


GOOD_SESSION = {"handshake": [True, True], "order": True, "request": True, "answer": True,
                "tcpdump": {"rc": 0, "syn": True, "syn_ack": True, "http": True}}


def good(summary: dict[str, Any]) -> dict[str, Any]:
    summary["tcpdump"].pop("stderr")
    return summary


# --- confined: --pcap at start, then pcap_stop and pcap-start with an fd ------------------------


def scenario_confined() -> dict[str, Any]:
    http_server()
    api = WORK / "api.sock"
    at_start, by_fd = WORK / "start.pcap", WORK / "fd.pcap"
    with attached("-c", *CONFINED, "--pcap", str(at_start), "-a", str(api)) as (guest, slirpy):
        first = guest.run(CURL).stdout
        counters = api_request(api, {"execute": "counters"})["return"]
        stopped = api_request(api, {"execute": "pcap_stop"})
        fd = os.open(by_fd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = with_fd(api, {"execute": "pcap-start", "arguments": {"fd": True}}, fd)
        os.close(fd)
        second = guest.run(CURL).stdout
        stopped_fd = api_request(api, {"execute": "pcap-stop"})
        by_path = api_request(api, {"execute": "pcap_start",
                                    "arguments": {"path": str(WORK / "path.pcap")}})
        log = slirpy.log()
    return {"fetched": [first.decode(), second.decode()], "bytes": counters["bytes"],
            "stopped": stopped, "started": started, "stopped_fd": stopped_fd,
            "by_path": by_path, "log": log, "start": good(session(at_start)),
            "fd": good(session(by_fd)), "fd_size": by_fd.stat().st_size, "work": str(WORK)}


def test_confined_capture_at_start_and_by_fd_reads_back_with_handshake_and_payload() -> None:
    r = in_world(scenario_confined, timeout=60)
    assert r["fetched"] == [GREETING.decode()] * 2
    assert r["start"] == GOOD_SESSION, r["log"]
    assert r["fd"] == GOOD_SESSION, r["log"]
    stopped = r["stopped"]["return"]
    # The capture holds a subset of the frames counted (ARP and DHCP came before it too,
    # and counted frames are what both record).
    assert stopped["frames"] > 6 and 0 < stopped["bytes"] <= sum(r["bytes"].values())
    assert r["bytes"]["from_guest"] > 0 and r["bytes"]["to_guest"] > 0
    assert r["started"] == {"return": {"path": "fd"}}
    assert r["stopped_fd"]["return"]["frames"] > 6
    assert r["fd_size"] == 24 + 16 * r["stopped_fd"]["return"]["frames"] \
        + r["stopped_fd"]["return"]["bytes"]
    # Confined, no path can be opened for writing: the reply says so, in one line.
    desc = r["by_path"]["error"]["desc"]
    assert desc == f"bad request: pcap_start: {r['work']}/path.pcap: Operation not permitted"
    assert "Traceback" not in r["log"] and "imported after" not in r["log"]


# --- confined rotation: the ring of two files turns under the seccomp filter ---------------------


def scenario_rotate() -> dict[str, Any]:
    http_server()
    ring = WORK / "ring.pcap"
    api = WORK / "api.sock"
    with attached("-c", *CONFINED, "--pcap", str(ring), "--pcap-size", "1M,rotate",
                  "-a", str(api)) as (guest, slirpy):
        size = guest.run(f"{CURL}/3500000 | wc -c").stdout.decode().strip()
        greeting = guest.run(CURL).stdout.decode()
        counted = api_request(api, {"execute": "counters"})["return"]["bytes"]
    log = slirpy.log()  # stopped: the files are complete
    files = [ring, Path(f"{ring}.1")]
    return {"size": size, "greeting": greeting, "log": log, "counted": counted,
            "sizes": [f.stat().st_size for f in files],
            "read": [tcpdump(f)["rc"] for f in files],
            "last": tcpdump(files[0])["lines"][-3:] + tcpdump(files[1])["lines"][-3:]}


def test_confined_rotation_keeps_two_files_within_the_size() -> None:
    r = in_world(scenario_rotate, timeout=60)
    assert r["size"] == "3500000" and r["greeting"] == GREETING.decode()
    # Each file within the size, one of them filled; together far less than the link
    # carried, so the ring turned and the oldest traffic was dropped.
    assert all(size <= 1 << 20 for size in r["sizes"]) and max(r["sizes"]) > 900_000, r["sizes"]
    assert sum(r["counted"].values()) > 3_500_000 > 1_500_000 + sum(r["sizes"])
    assert r["read"] == [0, 0]
    # The greeting came last: one of the two files holds it (the ring's newest).
    assert any("HTTP" in line for line in r["last"]), r["last"]
    assert "stopped" not in r["log"] and "Operation not permitted" not in r["log"], r["log"]


# --- a full disk stops the capture, not slirpy --------------------------------------------------


def scenario_full_disk() -> dict[str, Any]:
    http_server()
    small, api = WORK / "small", WORK / "api.sock"
    small.mkdir()
    sh(f"mount -t tmpfs -o size=256k tmpfs {small}")
    with attached("-c", "--pcap", str(small / "c.pcap"), "-a", str(api)) as (guest, slirpy):
        size = guest.run(f"{CURL}/2000000 | wc -c").stdout.decode().strip()
        after = guest.run(CURL).stdout.decode()
        stopped = api_request(api, {"execute": "pcap_stop"})
        again = WORK / "again.pcap"
        started = api_request(api, {"execute": "pcap_start", "arguments": {"path": str(again)}})
        guest.run(CURL)
        stopped_again = api_request(api, {"execute": "pcap_stop"})
        log = slirpy.log()
    return {"size": size, "after": after, "stopped": stopped, "started": started,
            "stopped_again": stopped_again, "again": good(session(again)),
            "lines": [line for line in log.splitlines() if "stopped" in line],
            "disk": os.statvfs(small).f_bfree, "work": str(WORK)}


def test_full_disk_stops_the_capture_with_one_line_and_traffic_flows() -> None:
    r = in_world(scenario_full_disk, timeout=60)
    assert r["size"] == "2000000" and r["after"] == GREETING.decode()
    assert r["stopped"]["return"]["stopped"] == "No space left on device"
    assert r["disk"] == 0
    assert len(r["lines"]) == 1 and r["lines"][0].endswith(
        f"packet capture to {r['work']}/small/c.pcap stopped: No space left on device"), r["lines"]
    assert r["started"] == {"return": {"path": f"{r['work']}/again.pcap"}}
    assert "stopped" not in r["stopped_again"]["return"]
    assert r["again"] == GOOD_SESSION
