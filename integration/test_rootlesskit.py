"""rootlesskit drives slirpy as its slirp4netns binary, as it drives slirp4netns.

Debian's rootlesskit (1.1.0) runs a guest with `--net=slirp4netns --port-driver=slirp4netns
-p 127.0.0.1:PORT:80/tcp --slirp4netns-binary=BINARY`, inside a world (see world.py), once
with the real slirp4netns and once with slirpy behind a wrapper script. The guest serves a
file of a few MiB on port 80, which the world fetches through 127.0.0.1:PORT (sha256
compared); the guest reaches a world server on 127.0.0.1 through 10.0.2.2, except under
--disable-host-loopback; once rootlesskit has exited, 127.0.0.1:PORT refuses connections.
With --slirp4netns-sandbox=true --slirp4netns-seccomp=true the same holds, and the binary
runs with its seccomp filter in force (and slirpy with no capability left).

What rootlesskit 1.1.0 does with the binary (seen with strace -f and --debug, real
slirp4netns 1.2.0):
- probes: `<binary resolved on PATH> --help`, twice (network driver, port driver), output
  = stdout+stderr combined; it fails unless the exit status is 0 and the text contains
  "--netns-type" ("seems older than v0.4.0"); features are substrings: --cidr,
  --disable-host-loopback, --api-socket (required by the port driver), --enable-sandbox,
  --enable-seccomp, --enable-ipv6; a flag asked for but absent is an error (e.g. "lacks
  SupportsDisableHostLoopback"). No --version probe.
- it makes the tap first (`nsenter -t CHILD -n -m -U --preserve-credentials ip tuntap add
  name tap0 mode tap`, then `ip link set tap0 up`), then runs, argv[0] as given:
  `BINARY --mtu 65520 -r 3 [--disable-host-loopback] --api-socket STATE/.s4nn.sock CHILD
  tap0` (fd 3 = ready pipe; any bytes read = ready; Pdeathsig SIGKILL). The binary must
  attach to the existing tap and leave its configuration to rootlesskit's child.
- per -p, one connection to the api socket; it writes exactly
  `{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",
  "host_port":PORT,"guest_addr":"10.0.2.100","guest_port":80}}` + "\\n" (one write, keys in
  that order, no spaces), then shutdown(SHUT_WR), reads to EOF and json-decodes the whole;
  it needs `"return":{"id":<number>}` (or reports "error"). slirp4netns answers
  `{"return":{"id":1}}` (no newline), then shutdown+close. Ports are published before
  STATE/child_pid and STATE/api.sock appear.
- at exit it sends SIGKILL to the binary and waits for it; no remove_hostfwd is sent.

Flags that make rootlesskit run inside a world (root-mapped user namespace holding only
uid/gid 0): our own /etc/subuid and /etc/subgid bind-mounted ("root:100000:65536") with
--subid-source=static, and newuidmap/newgidmap stand-ins first on PATH that write only
the first mapping ("0 0 1"), since the world cannot map sub-ids; --state-dir in WORK; no
--copy-up needed.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import random
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from integration.world import REPO, WORK, greeter, in_world, sh

HOST_PORT = 8080  # the forward, on the world's 127.0.0.1
WORLD_PORT = 8000  # a world server on 127.0.0.1, for the guest as 10.0.2.2
WORLD_GREETING = b"hello from the world's loopback\n"
BLOB_SIZE = 4 << 20

# The guest rootlesskit runs: an HTTP server on 0.0.0.0:80 serving argv[1], a probe of
# 10.0.2.2:argv[2], one JSON line on stdout once both are done, then exit when stdin closes.
GUEST = """
import errno, functools, http.server, json, socket, sys, threading
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(
    ("0.0.0.0", 80), functools.partial(Quiet, directory=sys.argv[1]))
threading.Thread(target=server.serve_forever, daemon=True).start()
s = socket.socket()
s.settimeout(10)
try:
    s.connect(("10.0.2.2", int(sys.argv[2])))
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    probe = {"ok": True, "data": data.decode(errors="replace")}
except TimeoutError:
    probe = {"ok": False, "error": "timeout"}
except OSError as exc:
    probe = {"ok": False, "error": errno.errorcode.get(exc.errno, str(exc))}
print(json.dumps({"probe": probe}), flush=True)
sys.stdin.read()
server.shutdown()
"""


def slirpy_wrapper() -> str:
    """An executable that is slirpy, for --slirp4netns-binary (made in WORK)."""
    path = WORK / "bin" / "slirpy"
    path.write_text("#!/bin/sh\n"
                    f"PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}} "
                    f"exec {shlex.quote(sys.executable)} -m slirpy \"$@\"\n")
    path.chmod(0o755)
    return str(path)


BINARIES = {
    "slirp4netns": lambda: shutil.which("slirp4netns"),
    "slirpy": slirpy_wrapper,
}


def prepare_rootlesskit() -> None:
    """Let rootlesskit make its user namespace inside the world (which maps only 0)."""
    bin_dir = WORK / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, file in (("newuidmap", "uid_map"), ("newgidmap", "gid_map")):
        # argv: PID INSIDE OUTSIDE COUNT [INSIDE OUTSIDE COUNT]...: the world holds only
        # id 0, so only rootlesskit's first mapping ("0 0 1", itself) can be written.
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "$2 $3 $4" > /proc/$1/{file}\n')
        (bin_dir / tool).chmod(0o755)
    (WORK / "subid").write_text("root:100000:65536\n")
    sh(f"mount --bind {WORK}/subid /etc/subuid && mount --bind {WORK}/subid /etc/subgid")


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from the guest in time (so far {line!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"rootlesskit's stdout ended (exit {proc.wait()}): {line!r}")
        line += chunk
    return line


def connect_result(port: int) -> str:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
        return "connected"


def wait_for_forward(proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    """rootlesskit has no signal for "ports published" but its state dir, written after:
    poll the port itself, with a deadline, while rootlesskit lives."""
    while (result := connect_result(port)) != "connected":
        if proc.poll() is not None:
            raise AssertionError(f"rootlesskit exited ({proc.returncode}) before the forward "
                                 f"of {port} answered ({result})")
        if time.monotonic() > deadline:
            raise AssertionError(f"the forward of {port} still answers {result}")
        time.sleep(0.05)


def fetch(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scenario_rootlesskit(binary: str, disable_host_loopback: bool,
                         confined: bool = False) -> dict[str, Any]:
    prepare_rootlesskit()
    peers = greeter("127.0.0.1", WORLD_PORT, WORLD_GREETING)
    www = WORK / "www"
    www.mkdir()
    blob = random.Random(1).randbytes(BLOB_SIZE)
    (www / "blob").write_bytes(blob)
    state = WORK / "rootlesskit-state"
    argv = ["rootlesskit", "--debug", "--subid-source=static", "--state-dir", str(state),
            "--net=slirp4netns", f"--slirp4netns-binary={BINARIES[binary]()}",
            "--port-driver=slirp4netns", "-p", f"127.0.0.1:{HOST_PORT}:80/tcp",
            *(["--disable-host-loopback"] if disable_host_loopback else []),
            *(["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"] if confined else []),
            sys.executable, "-c", GUEST, str(www), str(WORLD_PORT)]
    log_path = WORK / "rootlesskit.log"
    env = {**os.environ, "PATH": f"{WORK}/bin:{os.environ['PATH']}"}
    result: dict[str, Any] = {"expected_sha": hashlib.sha256(blob).hexdigest()}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=env)
    try:
        deadline = time.monotonic() + 60
        result["guest"] = json.loads(read_line(proc, deadline))
        wait_for_forward(proc, HOST_PORT, deadline)
        result["binary_status"] = _binary_status(binary)
        status, body = fetch(HOST_PORT, "/blob")
        result["http_status"] = status
        result["got_size"] = len(body)
        result["got_sha"] = hashlib.sha256(body).hexdigest()
        assert proc.stdin is not None
        proc.stdin.close()  # the guest ends, then rootlesskit (which kills the binary)
        result["rootlesskit_status"] = proc.wait(60)
        result["after_exit"] = connect_result(HOST_PORT)
        result["world_peers"] = list(peers)
    except BaseException:
        print(f"--- rootlesskit log\n{log_path.read_text(errors='replace')[-6000:]}",
              file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result["log"] = log_path.read_text(errors="replace")[-6000:]
    return result


def _binary_status(binary: str) -> dict[str, str]:
    """Seccomp, NoNewPrivs and CapEff of the binary rootlesskit runs (it is the only one)."""
    name = "slirp4netns" if binary == "slirp4netns" else "python"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if os.path.basename(cmdline[0].decode()).startswith(name) and (
                binary == "slirp4netns" or b"slirpy" in cmdline):
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            return {key: fields[key] for key in ("Seccomp", "NoNewPrivs", "CapEff")}
    return {}


def _skip_without(binary: str) -> None:
    if shutil.which("rootlesskit") is None:
        pytest.skip("rootlesskit is not installed (Debian package rootlesskit)")
    if binary == "slirp4netns" and shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns is not installed (Debian package slirp4netns)")
    missing = [f for f in ("/etc/subuid", "/etc/subgid") if not os.path.isfile(f)]
    if missing:  # the world bind-mounts its own over them; it cannot create them in /etc
        pytest.skip(f"{' and '.join(missing)} missing: nothing to bind-mount the world's "
                    f"sub-ids over")


BINARY_PARAMS = [
    pytest.param("slirp4netns", id="slirp4netns"),
    pytest.param("slirpy", id="slirpy"),
]


@pytest.mark.parametrize("binary", BINARY_PARAMS)
@pytest.mark.parametrize("disable_host_loopback", [False, True],
                         ids=["host-loopback", "disable-host-loopback"])
def test_rootlesskit_forwards_a_port_and_reaches_host_loopback_unless_disabled(
        binary: str, disable_host_loopback: bool) -> None:
    _skip_without(binary)
    r = in_world(scenario_rootlesskit, binary, disable_host_loopback)
    log = f"\n--- rootlesskit log (tail)\n{r['log']}"
    assert "guest" in r and "got_sha" in r, f"scenario stopped early: {r}{log}"
    assert (r["http_status"], r["got_size"], r["got_sha"]) == \
        (200, BLOB_SIZE, r["expected_sha"]), log
    probe = r["guest"]["probe"]
    if disable_host_loopback:
        assert not probe["ok"], f"10.0.2.2 reached the world's loopback: {probe}{log}"
        assert r["world_peers"] == [], log
    else:
        assert probe == {"ok": True, "data": WORLD_GREETING.decode()}, f"{probe}{log}"
        assert r["world_peers"] == ["127.0.0.1"], log
    assert r["rootlesskit_status"] == 0, log
    assert r["after_exit"] == "ECONNREFUSED", \
        f"127.0.0.1:{HOST_PORT} after rootlesskit exited: {r['after_exit']}{log}"


@pytest.mark.parametrize("binary", BINARY_PARAMS)
def test_rootlesskit_with_slirp4netns_sandbox_and_seccomp_forwards_a_port(binary: str) -> None:
    """--slirp4netns-sandbox=true --slirp4netns-seccomp=true: rootlesskit passes
    --enable-sandbox --enable-seccomp (it probes --help for both first); the published
    port and the guest's reach of the world's loopback work as unconfined."""
    _skip_without(binary)
    r = in_world(scenario_rootlesskit, binary, False, True)
    log = f"\n--- rootlesskit log (tail)\n{r['log']}"
    assert "guest" in r and "got_sha" in r, f"scenario stopped early: {r}{log}"
    assert (r["http_status"], r["got_size"], r["got_sha"]) == \
        (200, BLOB_SIZE, r["expected_sha"]), log
    assert r["guest"]["probe"] == {"ok": True, "data": WORLD_GREETING.decode()}, log
    # The flags reached the binary: its filter is in force (rootlesskit logs no argv).
    assert r["binary_status"]["Seccomp"] == "2" and r["binary_status"]["NoNewPrivs"] == "1", \
        r["binary_status"]
    if binary == "slirpy":
        assert r["binary_status"]["CapEff"] == "0" * 16, r["binary_status"]
    assert r["rootlesskit_status"] == 0, log
    assert r["after_exit"] == "ECONNREFUSED", log
