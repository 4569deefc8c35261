"""`slirpy ctl` against a fake API server on a unix socket in a temporary directory:
arguments, the requests each command sends, tables and lines it prints, one-line errors."""

from __future__ import annotations

import array
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slirpy.cli import ctl
from slirpy.cli.main import main as slirpy_main
from slirpy.observe import registry

FLOWS = [
    {"proto": "udp", "guest": "10.0.2.100:5353", "remote": "192.0.2.1:53",
     "bytes_from_guest": 60, "bytes_to_guest": 120, "age_s": 2.5},
    {"proto": "tcp", "guest": "10.0.2.100:40000", "remote": "192.0.2.1:80",
     "bytes_from_guest": 2048, "bytes_to_guest": 5 << 20, "age_s": 65.0,
     "state": "ESTABLISHED"},
    {"proto": "tcp", "guest": "10.0.2.100:80", "remote": "10.0.2.2:50000",
     "bytes_from_guest": 10, "bytes_to_guest": 0, "age_s": 0.1, "state": "SYN-RECEIVED",
     "forward": 1},
]
COUNTERS = {"frames": {"from_guest": 10, "to_guest": 12}, "drops": {"ipv4-checksum": 2},
            "tap_errors": {}, "flows": {"tcp": 2, "udp": 1, "icmp": 0}, "forwards": 1,
            "blocked": {"rule 2": 3}, "uptime_s": 125.5, "build": "pure Python",
            "bytes": {"from_guest": 2118, "to_guest": 5243000}}
EVENTS = [
    {"event": "flow-new", "time": "2026-11-23T12:03:04.123456Z", "schema": 1, "id": 7,
     "proto": "tcp", "family": 4, "guest": {"addr": "10.0.2.100", "port": 40000},
     "remote": {"addr": "192.0.2.1", "port": 80}, "origin": "guest",
     "allowed_by": "routing"},
    {"event": "flow-done", "time": "2026-11-23T12:03:05.000001Z", "schema": 1, "id": 7,
     "proto": "tcp", "family": 4, "guest": {"addr": "10.0.2.100", "port": 40000},
     "remote": {"addr": "192.0.2.1", "port": 80}, "origin": "guest",
     "bytes": {"from_guest": 100, "to_guest": 2048}, "duration_s": 0.9, "reason": "fin"},
    {"event": "exit", "time": "2026-11-23T12:03:06.000000Z", "schema": 1, "reason": "signal"},
]


def reply_for(request: dict[str, Any], fds: list[int]) -> bytes:
    match request.get("execute"), request.get("arguments", {}):
        case "list_forwards", _:
            value: Any = {"return": {"forwards": [
                {"id": 1, "kind": "local", "spec": "tcp://127.0.0.1:8080:10.0.2.100:80",
                 "origin": "config"}]}}
        case "add_forward", {"spec": "bad"}:
            value = {"error": {"desc": "bad request: add_forward: bad spec"}}
        case "add_forward", _:
            value = {"return": {"ids": [4, 5]}}
        case "remove_forward" | "remove_rule", {"id": 1}:
            value = {"return": {}}
        case "remove_forward" | "remove_rule", _:
            value = {"error": {"desc": f"bad request: {request['execute']}: bad arguments.id"}}
        case "list_flows", _:
            value = {"return": {"flows": FLOWS}}
        case "counters", _:
            value = {"return": COUNTERS}
        case "list_rules", _:
            value = {"return": {"rules": [{"id": 1, "action": "deny", "rule": "192.0.2.9"}],
                                "routing": True, "host": False, "host_loopback": False}}
        case "add_rule", _:
            value = {"return": {"ids": [2]}}
        case "pcap_start", {"fd": True} if len(fds) == 1 and os.fstat(fds[0]).st_size:
            value = {"error": {"desc": "bad request: pcap_start: a capture to x is running"}}
        case "pcap_start", {"fd": True} if len(fds) == 1:
            os.write(fds[0], b"written by the server")
            value = {"return": {"path": "fd"}}
        case "pcap_stop", _:
            value = {"return": {"frames": 3, "bytes": 3000}}
        case "metrics", _:
            value = {"return": {"text": "# HELP x y\nslirpy_frames_total 1\n"}}
        case _:
            value = {"error": {"desc": "bad request: unknown execute"}}
    return json.dumps(value, separators=(",", ":")).encode()


class FakeSlirpy:
    """Answers one request per connection as slirpy does; `subscribe` streams EVENTS."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # a liveness probe hangs up early
                data, fds = b"", []
                while True:
                    chunk, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(16))
                    for level, kind, payload in ancdata:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            fds += array.array("i", payload[:len(payload) - len(payload) % 4])
                    data += chunk
                    try:
                        request = json.loads(data)
                        break
                    except ValueError:
                        if not chunk:
                            request = {}
                            break
                self.requests.append(request)
                if request.get("execute") == "subscribe":
                    conn.sendall(b'{"return":{"schema":1}}\n' + b"".join(
                        json.dumps(e).encode() + b"\n" for e in EVENTS))
                else:
                    conn.sendall(reply_for(request, fds))
                for fd in fds:
                    os.close(fd)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeSlirpy]:
    server = FakeSlirpy(tmp_path / "api.sock")
    yield server
    server.close()


def run_ctl(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = ctl.main(list(argv), out=out)
    return status, out.getvalue()


# --- arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([], "a command is needed"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["remove-forward"], "the following arguments are required: id"),
    (["remove-forward", "x"], "argument id: expected a positive integer, not 'x'"),
    (["flows", "--sort", "size"], "argument --sort: invalid choice: 'size'"),
    (["add-rule", "permit", "1.2.3.4"], "invalid choice: 'permit'"),
    (["-a", "/x", "--name", "web", "flows"], "-a and --name both choose a slirpy"),
    (["watch", "--once", "--count", "2"], "--once and --count contradict"),
    (["watch", "--interval", "0"], "argument --interval: a number of seconds"),
    (["--pid", "-3", "flows"], "argument --pid: expected a positive integer, not '-3'"),
])
def test_bad_arguments_are_one_line_and_status_2(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("slirpy ctl: ") and message in err and err.count("\n") == 1, err


def test_selector_and_json_may_come_before_or_after_the_command() -> None:
    before = ctl.parse(["-a", "/x", "--json", "flows", "--sort", "bytes"])
    after = ctl.parse(["flows", "--json", "-a", "/x", "--reverse"])
    assert (before.api_socket, before.json, before.sort) == ("/x", True, "bytes")
    assert (after.api_socket, after.json, after.reverse) == ("/x", True, True)
    assert ctl.parse(["watch", "--once"]).count == 1


def test_help_lists_every_option_the_parsers_take() -> None:
    assert ctl.main(["--help"], out=io.StringIO()) == 0
    options: set[str] = set()
    top = ctl.parser()
    subparsers = [a for a in top._actions if a.choices and isinstance(a.choices, dict)]
    for parser in [top, *subparsers[0].choices.values()]:
        options |= {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    assert options == set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", ctl.CTL_HELP))
    for name in subparsers[0].choices:
        assert f"  {name}" in ctl.CTL_HELP


def test_slirpy_ctl_is_dispatched_from_the_main_entry_point(
        fake: FakeSlirpy, capsys: pytest.CaptureFixture[str]) -> None:
    assert slirpy_main(["ctl", "-a", fake.path, "--json", "counters"]) == 0
    assert json.loads(capsys.readouterr().out) == {"return": COUNTERS}


# --- each command: the request sent, the output -----------------------------------------

def test_forwards_table(fake: FakeSlirpy) -> None:
    status, out = run_ctl("-a", fake.path, "forwards")
    assert status == 0
    assert out.splitlines() == ["ID  KIND   SPEC                                ORIGIN",
                                " 1  local  tcp://127.0.0.1:8080:10.0.2.100:80  config"]


def test_add_forward_local_by_default_remote_with_flag(fake: FakeSlirpy) -> None:
    assert run_ctl("-a", fake.path, "add-forward", "8080:80") == (
        0, "added local forwards 4, 5\n")
    assert run_ctl("-a", fake.path, "add-forward", "--remote", "10.0.2.2:53:192.0.2.1:53")[0] == 0
    assert fake.requests[-2:] == [
        {"execute": "add_forward", "arguments": {"kind": "local", "spec": "8080:80"}},
        {"execute": "add_forward", "arguments": {"kind": "remote",
                                                 "spec": "10.0.2.2:53:192.0.2.1:53"}}]


def test_refused_command_is_one_line_status_1(fake: FakeSlirpy,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl("-a", fake.path, "add-forward", "bad") == (1, "")
    assert capsys.readouterr().err == \
        "slirpy ctl: refused: bad request: add_forward: bad spec\n"
    assert run_ctl("-a", fake.path, "remove-rule", "9") == (1, "")
    assert capsys.readouterr().err == \
        "slirpy ctl: refused: bad request: remove_rule: bad arguments.id\n"


def test_refused_with_json_prints_the_raw_reply_too(
        fake: FakeSlirpy, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl("--json", "-a", fake.path, "remove-forward", "7") == (
        1, '{"error":{"desc":"bad request: remove_forward: bad arguments.id"}}\n')
    assert capsys.readouterr().err.count("\n") == 1


def test_remove_forward_and_rule(fake: FakeSlirpy) -> None:
    assert run_ctl("-a", fake.path, "remove-forward", "1") == (0, "removed forward 1\n")
    assert run_ctl("-a", fake.path, "remove-rule", "1") == (0, "removed rule 1\n")
    assert [r["arguments"] for r in fake.requests] == [{"id": 1}, {"id": 1}]


def test_flows_table_aligned_and_human_readable(fake: FakeSlirpy) -> None:
    status, out = run_ctl("-a", fake.path, "flows")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PROTO", "GUEST", "REMOTE", "STATE", "FROM", "GUEST", "TO",
                                "GUEST", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["tcp", "tcp", "udp"]  # by proto
    assert "5.0 MiB" in lines[1] and "2.0 KiB" in lines[1] and "1m05s" in lines[1]
    assert "SYN-RECEIVED (fwd 1)" in lines[2]
    assert len({line.index("REMOTE") for line in lines[:1]}) == 1
    columns = {lines[0].index("REMOTE")} | {line.index("192.0.2.1") for line in lines[1:]
                                            if "192.0.2.1" in line}
    assert len(columns) == 1, "columns are aligned"
    ends = {len(line) for line in lines}
    assert len(ends) == 1, "the last column (age) is right-aligned"


@pytest.mark.parametrize("argv, first", [
    (["--sort", "bytes"], "10.0.2.100:40000"),
    (["--sort", "bytes", "--reverse"], "10.0.2.100:80"),
    (["--sort", "age"], "10.0.2.100:40000"),
    (["--sort", "age", "--reverse"], "10.0.2.100:80"),
    (["--sort", "remote"], "10.0.2.100:80"),
    (["--sort", "proto", "--reverse"], "10.0.2.100:5353"),
])
def test_flows_sort(fake: FakeSlirpy, argv: list[str], first: str) -> None:
    status, out = run_ctl("-a", fake.path, "flows", *argv)
    assert status == 0
    assert out.splitlines()[1].split()[1] == first


def test_json_prints_the_raw_reply(fake: FakeSlirpy) -> None:
    status, out = run_ctl("-a", fake.path, "flows", "--json")
    assert status == 0 and json.loads(out) == {"return": {"flows": FLOWS}}
    assert out.count("\n") == 1


def test_rules_with_posture(fake: FakeSlirpy) -> None:
    assert run_ctl("-a", fake.path, "rules")[1].splitlines() == [
        "ID  ACTION  RULE", " 1  deny    192.0.2.9",
        "when no rule matches: routing on, host off, host loopback off"]
    assert run_ctl("-a", fake.path, "add-rule", "deny", "192.0.2.0/24:25") == (
        0, "added deny rule 2\n")
    assert fake.requests[-1] == {"execute": "add_rule",
                                 "arguments": {"action": "deny", "spec": "192.0.2.0/24:25"}}


def test_counters_readable(fake: FakeSlirpy) -> None:
    status, out = run_ctl("-a", fake.path, "counters")
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert status == 0
    assert lines["frames"].strip() == "from guest 10, to guest 12"
    assert lines["drops"].strip() == "ipv4-checksum 2"
    assert lines["uptime"].strip() == "2m05s"
    assert lines["bytes"].strip() == "from guest 2.1 KiB, to guest 5.0 MiB"
    assert "tap errors" in out and "none" in out


def test_events_human_and_json(fake: FakeSlirpy) -> None:
    status, out = run_ctl("-a", fake.path, "events")
    assert status == 0
    new, done, exited = out.splitlines()
    assert new.startswith("12:03:04.123 flow-new")
    assert "tcp 10.0.2.100:40000 -> 192.0.2.1:80" in new and "allowed_by=routing" in new
    assert "fin" in done and "from guest 100 B, to guest 2.0 KiB" in done and "in 900ms" in done
    assert exited.split()[1:] == ["exit", "signal"]
    assert fake.requests[-1] == {"execute": "subscribe"}
    status, out = run_ctl("-a", fake.path, "events", "--json")
    assert status == 0 and [json.loads(line) for line in out.splitlines()] == EVENTS


def test_event_forms() -> None:
    line = ctl.format_event({"event": "flow-new", "time": "2026-01-01T00:00:00.5Z",
                             "proto": "tcp", "origin": "local-forward", "forward": 2,
                             "guest": {"addr": "fd00::100", "port": 80},
                             "remote": {"addr": "::1", "port": 4000},
                             "client": {"addr": "127.0.0.1", "port": 5555}})
    assert "tcp [fd00::100]:80 <- [::1]:4000" in line and "via local-forward" in line
    assert "client=127.0.0.1:5555" in line and "forward=2" in line
    assert ctl.format_event({"event": "blocked", "proto": "icmp", "rule": 3, "count": 4,
                             "guest": {"addr": "10.0.2.100"},
                             "remote": {"addr": "192.0.2.9"}}) == \
        "blocked         icmp 10.0.2.100 -> 192.0.2.9 rule=3 count=4"


def test_pcap_start_passes_an_fd_opened_by_the_client(fake: FakeSlirpy, tmp_path: Path) -> None:
    target = tmp_path / "out.pcap"
    assert run_ctl("-a", fake.path, "pcap-start", str(target)) == (
        0, f"capturing to {target}\n")
    assert fake.requests[-1] == {"execute": "pcap_start", "arguments": {"fd": True}}
    assert target.read_bytes() == b"written by the server"
    assert run_ctl("-a", fake.path, "pcap-stop") == (0, "capture stopped: 3 frames, 2.9 KiB\n")


def test_pcap_start_makes_a_private_file_and_a_refusal_leaves_the_old_one(
        fake: FakeSlirpy, tmp_path: Path) -> None:
    target = tmp_path / "out.pcap"
    assert run_ctl("-a", fake.path, "pcap-start", str(target))[0] == 0
    assert target.stat().st_mode & 0o777 == 0o600  # a capture holds passwords and all
    # The fake refuses a file with something in it (standing for "a capture is running"):
    # slirpy is handed a new, empty file, so the fake must accept; make it see a full
    # one by filling what ctl opens: a refusal must leave the target as it was.
    target.write_bytes(b"the running capture")
    real_open = os.open

    def open_full(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        os.write(fd, b"x")
        return fd

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ctl.os, "open", open_full)
        assert run_ctl("-a", fake.path, "pcap-start", str(target))[0] == 1
    assert target.read_bytes() == b"the running capture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.sock", "out.pcap"]  # no leftover


def test_pcap_start_unwritable_file_one_line(fake: FakeSlirpy,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl("-a", fake.path, "pcap-start", "/nonexistent/x.pcap") == (1, "")
    assert capsys.readouterr().err == \
        "slirpy ctl: /nonexistent/x.pcap: No such file or directory\n"
    assert fake.requests == []


def test_metrics_text(fake: FakeSlirpy) -> None:
    assert run_ctl("-a", fake.path, "metrics") == (0, "# HELP x y\nslirpy_frames_total 1\n")


def test_unknown_execute_names_the_command() -> None:
    """An older slirpy, without the command: the line says which command it lacks."""
    with pytest.raises(ctl.Refused, match="unknown execute .this slirpy has no pcap-start "):
        ctl._decode(b'{"error":{"desc":"bad request: unknown execute"}}', "/x", "pcap_start")


# --- errors: no socket, a stale one -------------------------------------------------------

def test_no_socket_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl("-a", str(tmp_path / "x"), "counters") == (1, "")
    assert capsys.readouterr().err == (f"slirpy ctl: no slirpy API socket at {tmp_path}/x: "
                                       "start slirpy with --api-socket\n")


def test_stale_socket_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "stale"))  # bound, never listening: refuses
        assert run_ctl("-a", str(tmp_path / "stale"), "flows") == (1, "")
    err = capsys.readouterr().err
    assert err.startswith(f"slirpy ctl: no slirpy listens on {tmp_path}/stale") and \
        err.count("\n") == 1


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "slirpy", "ctl", "-a", str(tmp_path / "x"),
                           "flows"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == (f"slirpy ctl: no slirpy API socket at {tmp_path}/x: start slirpy "
                           "with --api-socket\n")


# --- watch -------------------------------------------------------------------------------

def test_watch_rates_from_byte_deltas() -> None:
    before = ctl.Sample(10.0, [dict(FLOWS[1], bytes_to_guest=1 << 20)],
                        dict(COUNTERS, bytes={"from_guest": 0, "to_guest": 0}, drops={}))
    after = ctl.Sample(12.0, FLOWS, COUNTERS)
    rates = {flow["guest"]: (up, down) for flow, up, down in ctl.rates(before, after)}
    assert rates["10.0.2.100:40000"] == (0.0, (4 << 20) / 2)
    assert rates["10.0.2.100:5353"] == (30.0, 60.0)  # new: all its bytes in this interval
    screen = ctl.render_watch(before, after, "web", width=200, height=30)
    text = "\n".join(screen)
    assert screen[0].startswith("slirpy web  up 2m05s  flows: tcp 2, udp 1, icmp 0")
    assert "to guest 2.5 MiB/s" in screen[1]
    assert "drops: ipv4-checksum 2 (+2)" in text and "blocked: rule 3" not in text
    assert "blocked: rule 2 3" in text
    assert "top talkers: 192.0.2.1 2.0 MiB/s" in text
    table = screen[screen.index("") + 1:]
    assert table[1].split()[2] == "192.0.2.1:80" and "2.0 MiB/s" in table[1]


def test_watch_count_prints_screens_one_after_the_other(fake: FakeSlirpy) -> None:
    out = io.StringIO()
    status = ctl.watch(ctl.Client(fake.path), "x", count=2, interval=0.05, out=out)
    assert status == 0
    text = out.getvalue()
    assert "\x1b" not in text and text.count("slirpy x  up") == 2
    assert [r["execute"] for r in fake.requests] == ["list_flows", "counters"] * 3


# --- discovery through the registry -------------------------------------------------------

def test_the_only_instance_is_used_several_are_listed(
        xdg: Path, fake: FakeSlirpy, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl("counters") == (1, "")
    assert "no running slirpy found in" in capsys.readouterr().err
    registration = registry.register(fake.path, "web")
    assert run_ctl("--json", "counters")[0] == 0
    assert run_ctl("--name", "web", "--json", "counters")[0] == 0
    assert run_ctl("--pid", str(os.getpid()), "--json", "counters")[0] == 0
    assert run_ctl("--name", "db", "counters") == (1, "")
    assert capsys.readouterr().err == \
        f"slirpy ctl: no slirpy named db is running (running: {os.getpid()} (web))\n"
    # A second live instance, registered as a child's pid: no choice is made for the user.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        (xdg / f"{child.pid}.sock").symlink_to(fake.path)
        assert run_ctl("counters") == (1, "")
        err = capsys.readouterr().err
        assert err == (f"slirpy ctl: 2 slirpy instances are running: "
                       f"{min(os.getpid(), child.pid)}{' (web)' if os.getpid() < child.pid else ''}"
                       f", {max(os.getpid(), child.pid)}"
                       f"{' (web)' if os.getpid() > child.pid else ''}; "
                       "choose one with --name or --pid\n")
    finally:
        child.communicate(b"")
    # The child is gone: its entry is stale, removed, and the one left is used again.
    assert run_ctl("--json", "counters")[0] == 0
    assert not (xdg / f"{child.pid}.sock").is_symlink()
    registration.close()
    assert sorted(os.listdir(xdg)) == []


def test_default_api_socket_for_run_and_for_a_name(xdg: Path) -> None:
    from slirpy.cli.main import with_api_socket
    from slirpy.config import Config

    own = str(xdg / f"{os.getpid()}.api")
    assert with_api_socket(Config(), by_default=True).api_socket == own
    assert with_api_socket(Config(), by_default=False).api_socket is None
    assert with_api_socket(Config(name="web"), by_default=False).api_socket == own
    assert with_api_socket(Config(api_socket="/x"), by_default=True).api_socket == "/x"


def test_default_api_socket_left_out_when_the_directory_is_unsafe(xdg: Path) -> None:
    from slirpy.cli.main import with_api_socket
    from slirpy.config import Config
    from slirpy.errors import SetupError

    xdg.write_text("not a directory")
    assert with_api_socket(Config(), by_default=True).api_socket is None  # a warning only
    with pytest.raises(SetupError, match="is not a directory"):
        with_api_socket(Config(name="web"), by_default=False)


def test_watch_keys_echo_flows_by_id_and_names_ipv6_talkers_whole() -> None:
    ping1 = {"proto": "icmp6", "guest": "fd00::100", "remote": "2001:db8::1", "echo_id": 1}
    ping2 = {**ping1, "echo_id": 2}
    assert ctl.flow_key(ping1) != ctl.flow_key(ping2)
    assert ctl.remote_host(ping1) == "2001:db8::1"
    assert ctl.remote_host({"proto": "tcp", "remote": "[2001:db8::1]:443"}) == "2001:db8::1"
    assert ctl.remote_host({"proto": "udp", "remote": "192.0.2.1:53"}) == "192.0.2.1"
