"""--enable-sandbox and --enable-seccomp (slirpy.hardening), short of a running slirpy.

What the sandbox's root holds is computed from a path (symlinks and directories in a
temporary tree); what slirpy may import once in it is checked against its own sources;
the seccomp tables are checked against libseccomp. Then the real thing, each in a forked
child so the test process stays as it was: the filter loaded, every call REFUSED names
fails with EPERM while what the loop needs still works; the sandbox entered, its root
holds only the resolv.conf's directory, read-only, and still shows a resolv.conf
replaced by rename; no capability is left; entering it where unshare is refused is one
line. integration/test_sandbox.py runs slirpy itself confined.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import fcntl
import json
import logging
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pyseccomp  # a dependency: --enable-seccomp needs it
import pytest

import slirpy
from slirpy.config import Config
from slirpy.errors import SetupError
from slirpy.hardening import harden, sandbox, seccomp
from slirpy.hardening.sandbox import View, view_of

ROOT = pathlib.Path(slirpy.__file__).parent
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PR_GET_NO_NEW_PRIVS = 39
AF_PACKET = 17
NETLINK_KOBJECT_UEVENT = 15
TIOCGWINSZ = 0x5413


def in_child(fn: Callable[[], Any], timeout_s: float = 30) -> Any:
    """Run *fn* in a forked child; what it returned (JSON), or its traceback raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            reply = json.dumps({"ok": fn()})
        except BaseException:
            reply = json.dumps({"error": traceback.format_exc()})
        os.write(write_fd, reply.encode())
        os._exit(0)
    os.close(write_fd)
    data = b""
    with os.fdopen(read_fd, "rb") as reader:
        while select.select([reader], [], [], timeout_s)[0]:
            chunk = reader.read1(65536)
            if not chunk:
                break
            data += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    result = json.loads(data or b'{"error": "the child said nothing"}')
    if "error" in result:
        raise AssertionError(f"in the child:\n{result['error']}")
    return result["ok"]


def raw_errno(name: str, *args: int) -> int:
    """errno of the raw system call *name* with *args* (all -1 if none): 0 if it worked."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    values = args or (-1,) * 6
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(v) for v in values))
    return ctypes.get_errno() if result == -1 else 0


def can_make_mount_namespaces() -> str | None:
    """None, or why a forked child cannot enter the sandbox here."""
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    done = subprocess.run(["unshare", "--user", "--mount", "true"], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else f"no mount namespaces here: {done.stderr.strip()}"


# --- what the sandbox's root holds ------------------------------------------------------------


def test_view_of_a_plain_file_binds_its_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    assert view_of(f"{tmp_path}/etc/resolv.conf") == View((f"{tmp_path}/etc",), ())


def test_view_of_a_symlink_to_a_stub_binds_the_stub_directory_and_keeps_the_link(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "run" / "resolve").mkdir(parents=True)
    (tmp_path / "run" / "resolve" / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "etc" / "resolv.conf").symlink_to("../run/resolve/stub-resolv.conf")
    assert view_of(f"{tmp_path}/etc/resolv.conf") == View(
        (f"{tmp_path}/run/resolve",),
        ((f"{tmp_path}/etc/resolv.conf", "../run/resolve/stub-resolv.conf"),))


def test_view_of_a_chain_through_a_symlinked_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real" / "nm").mkdir(parents=True)
    (tmp_path / "real" / "nm" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(tmp_path / "real")  # absolute, to a directory
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/./" + str(tmp_path / "var/run/nm/x/.."
                                                              "/resolv.conf").lstrip("/"))
    view = view_of(f"{tmp_path}/etc/resolv.conf")
    assert view.binds == (f"{tmp_path}/real/nm",)
    assert [where for where, _ in view.symlinks] == [f"{tmp_path}/etc/resolv.conf",
                                                     f"{tmp_path}/var/run"]


def test_view_of_a_link_inside_the_bound_directory_is_not_recreated(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf.real").write_text("nameserver 192.0.2.1\n")
    (tmp_path / "etc" / "resolv.conf").symlink_to("resolv.conf.real")
    assert view_of(f"{tmp_path}/etc/resolv.conf") == View((f"{tmp_path}/etc",), ())


def test_view_of_a_missing_file_still_binds_its_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "etc").mkdir()
    assert view_of(f"{tmp_path}/etc/resolv.conf") == View((f"{tmp_path}/etc",), ())


def test_view_of_a_file_in_a_missing_directory_binds_nothing(tmp_path: pathlib.Path) -> None:
    assert view_of(f"{tmp_path}/nowhere/resolv.conf") == View((), ())


def test_view_of_the_root_or_a_missing_file_at_the_root_binds_nothing() -> None:
    assert view_of("/") == View((), ())  # never the whole root
    assert view_of("/resolv-conf-slirpy-test-nonexistent") == View((), ())


def test_view_of_a_symlink_loop_is_a_setup_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(SetupError, match="too many symlinks"):
        view_of(f"{tmp_path}/a")


# --- what slirpy may import once confined ------------------------------------------------------

# Serving code: everything but what runs before the tap is open (cli, netns, __main__) and
# the hardening itself (it runs before the sandbox).
BEFORE_SERVING = ("slirpy/cli/", "slirpy/netns/", "slirpy/__main__.py", "slirpy/hardening/")
# (file, module) imported in a function that runs at start, before confinement, and only
# when its feature is on (prometheus_client costs ~70 ms): integration/test_metrics.py
# shows a confined slirpy serving metrics without a late import.
AT_START = {("slirpy/app.py", "slirpy.observe.metrics")}


def lazy_imports() -> dict[str, set[str]]:
    """Module -> what it imports inside a function (so on first use, not at start)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).as_posix()
        if rel.startswith(BEFORE_SERVING):
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found.setdefault(rel, set()).update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.setdefault(rel, set()).add(node.module)
    return found


def test_every_import_the_serving_code_makes_late_is_preloaded() -> None:
    code = "import json, sys, slirpy.app; print(json.dumps(list(sys.modules)))"
    started = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        text=True, check=True, cwd=ROOT.parent).stdout)
    preloaded = {*sandbox.PRELOAD, *sandbox.PRELOAD_HOST_ADDRESSES}
    late = {(where, name) for where, names in lazy_imports().items() for name in names
            if name not in started and name.split(".")[0] not in preloaded
            and (where, name) not in AT_START}
    assert not late, f"imported on first use, after the sandbox was entered: {sorted(late)}"


def test_preload_imports_every_listed_module_and_warms_the_codecs() -> None:
    names = in_child(lambda: sandbox.preload(True))
    assert set(names) == {*sandbox.PRELOAD, *sandbox.PRELOAD_HOST_ADDRESSES}
    assert {"encodings.idna", "pyroute2", "tracemalloc"} <= set(names)


# --- the seccomp tables ------------------------------------------------------------------------


def test_no_call_is_both_allowed_and_refused() -> None:
    allowed = set(seccomp.allowed_names()) | {r.syscall for r in seccomp.allowed_if(1)}
    refused = seccomp.refused_names()
    assert len(refused) == len(set(refused)), "a name is listed twice"
    assert not allowed & set(refused)


def test_the_brief_s_calls_are_refused_and_socket_and_open_only_with_arguments() -> None:
    refused = set(seccomp.refused_names())
    assert {"execve", "execveat", "ptrace", "mount", "umount2", "pivot_root", "unshare",
            "setns", "bpf", "init_module", "finit_module", "delete_module", "kexec_load",
            "keyctl", "add_key", "perf_event_open", "userfaultfd",
            "process_vm_writev"} <= refused
    conditional = {r.syscall for r in seccomp.allowed_if(1)}
    assert {"socket", "socketpair", "openat", "ioctl", "tgkill"} <= conditional
    assert not conditional & set(seccomp.allowed_names()), "allowed whatever the arguments"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="names checked on x86_64")
def test_every_name_in_the_tables_is_a_call_libseccomp_knows() -> None:
    names = {*seccomp.allowed_names(), *seccomp.refused_names(),
             *(r.syscall for r in seccomp.allowed_if(1))}
    unknown = sorted(n for n in names
                     if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) < 0)
    assert unknown == []


# --- the filter, loaded in a child -------------------------------------------------------------


def probe_calls(tmp: str) -> dict[str, Any]:
    """What the forbidden calls answer, and whether what the loop needs still works."""
    out: dict[str, Any] = {}
    for name in seccomp.refused_names():
        if name in ("fork", "vfork", "clone"):  # would make a child if allowed: see below
            continue
        out[name] = raw_errno(name, 0, 0) if name == "kill" else raw_errno(name)

    def attempt(fn: Callable[[], object]) -> str:
        try:
            fn()
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
        return "ok"

    def fork() -> None:
        if os.fork() == 0:
            os._exit(0)
        os.wait()

    def ioctl(request: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), request, bytes(8))

    def make(*args: int) -> None:
        socket.socket(*args).close()

    out["python"] = {
        "fork": attempt(fork),
        "exec": attempt(lambda: os.execv("/nonexistent/slirpy-test", ["x"])),  # else ENOENT
        "af_packet": attempt(lambda: make(AF_PACKET, socket.SOCK_RAW, 0)),
        "netlink_uevent": attempt(lambda: make(socket.AF_NETLINK, socket.SOCK_RAW,
                                               NETLINK_KOBJECT_UEVENT)),
        "netlink_route": attempt(lambda: make(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
        "inet": attempt(lambda: make(socket.AF_INET, socket.SOCK_DGRAM)),
        "inet6_stream": attempt(lambda: make(socket.AF_INET6, socket.SOCK_STREAM)),
        "unix": attempt(lambda: make(socket.AF_UNIX, socket.SOCK_STREAM)),
        "socketpair": attempt(lambda: [s.close() for s in socket.socketpair()]),
        "nonblocking": attempt(lambda: socket.socket().setblocking(False)),
        "outq": attempt(lambda: ioctl(0x5411)),
        "winsize": attempt(lambda: ioctl(TIOCGWINSZ)),
        "read_file": attempt(lambda: pathlib.Path(tmp, "resolv.conf").read_text()),
        "write_file": attempt(lambda: pathlib.Path(tmp, "new").write_text("x")),
        "append_file": attempt(lambda: open(pathlib.Path(tmp, "resolv.conf"), "a").close()),
        "epoll": attempt(lambda: select.epoll().poll(0)),
        "raise_to_self": attempt(lambda: signal.pthread_kill(threading.get_ident(), 0)),
    }
    return out


def test_the_filter_refuses_with_eperm_and_the_loop_s_calls_still_work(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.1\n")

    def filtered() -> dict[str, Any]:
        seccomp.install(seccomp.build())
        return probe_calls(str(tmp_path))

    without = in_child(lambda: probe_calls(str(tmp_path)))
    (tmp_path / "new").unlink()  # written by the child without the filter
    with_filter = in_child(filtered)
    not_eperm = {name: errno.errorcode.get(e, e) for name, e in with_filter.items()
                 if name != "python" and e != errno.EPERM}
    assert not_eperm == {}, "refused calls that did not fail with EPERM"
    # Without the filter the same calls fail otherwise (bad addresses, bad arguments) or
    # work: EPERM above is the filter's.
    assert without["execve"] == errno.EFAULT and without["kill"] == 0
    python = with_filter["python"]
    refused = ("fork", "exec", "af_packet", "netlink_uevent", "unix", "write_file",
               "append_file", "winsize")
    assert {k: python[k] for k in refused} == dict.fromkeys(refused, "EPERM")
    assert {k: v for k, v in python.items() if k not in refused} == dict.fromkeys(
        ("netlink_route", "inet", "inet6_stream", "socketpair", "nonblocking", "outq",
         "read_file", "epoll", "raise_to_self"), "ok")
    # Without it, each of those works or fails for another reason.
    unfiltered = {**dict.fromkeys(python, "ok"), "exec": "ENOENT", "winsize": "ENOTTY"}
    if os.geteuid() != 0:  # AF_PACKET needs CAP_NET_RAW
        del unfiltered["af_packet"], without["python"]["af_packet"]
    assert without["python"] == unfiltered
    assert not (tmp_path / "new").exists()


def test_the_filter_is_in_force_for_the_process_and_no_new_privs_is_set() -> None:
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.install(seccomp.build())
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        status = dict(line.split(":\t", 1) for line in
                      pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    finally:
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, ready_r):
            os.close(fd)
    assert (status["Seccomp"], status["NoNewPrivs"]) == ("2", "1")


# --- the sandbox, entered in a child -----------------------------------------------------------


def _status_of(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_sandbox_root_holds_the_resolv_conf_directory_read_only_and_follows_a_rename(
        tmp_path: pathlib.Path) -> None:
    why = can_make_mount_namespaces()
    if why:
        pytest.skip(why)
    stub = tmp_path / "run" / "resolve"
    stub.mkdir(parents=True)
    (stub / "stub-resolv.conf").write_text("nameserver 192.0.2.1\n")
    (stub / "other").write_text("not for slirpy, but in the same directory\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("../run/resolve/stub-resolv.conf")
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    resolv = f"{tmp_path}/etc/resolv.conf"
    held = os.open(tmp_path / "etc", os.O_RDONLY | os.O_DIRECTORY)  # a directory fd, open
    entered_r, entered_w = os.pipe()
    renamed_r, renamed_w = os.pipe()

    def confined() -> dict[str, Any]:
        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        logging.getLogger("slirpy.hardening").addHandler(Keep())
        logging.getLogger("slirpy.hardening").setLevel(logging.DEBUG)
        sandbox.preload(False)
        sandbox.enter(resolv)
        sandbox.guard_imports()
        out: dict[str, Any] = {"root": sorted(os.listdir("/")),
                               "before": pathlib.Path(resolv).read_text(),
                               "etc": sorted(os.listdir(f"{tmp_path}/etc")),
                               "stub_dir": sorted(os.listdir(str(stub)))}
        for name, path in (("write_stub", f"{stub}/new"), ("write_root", "/new")):
            try:
                pathlib.Path(path).write_text("x")
                out[name] = "ok"
            except OSError as exc:
                out[name] = errno.errorcode[exc.errno or 0]
        out["held_fd"] = sorted(os.listdir(held))  # the new root's, not etc's
        try:
            os.open("passwd", os.O_RDONLY, dir_fd=held)
            out["through_held_fd"] = "opened"
        except OSError as exc:
            out["through_held_fd"] = errno.errorcode[exc.errno or 0]
        out["nnp"] = _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        _libc.capget(header, data)
        out["caps"] = list(data)
        try:
            __import__("slirpy_no_such_module_for_the_sandbox_test")
        except ImportError:
            out["late_import"] = "ImportError"
        out["late_import_logged"] = any("slirpy_no_such_module" in r for r in records)
        os.write(entered_w, b"1")
        os.read(renamed_r, 1)
        out["after"] = pathlib.Path(resolv).read_text()
        out["log"] = records
        return out

    def replace_by_rename() -> None:
        assert os.read(entered_r, 1) == b"1"
        (stub / "stub-resolv.conf.new").write_text("nameserver 198.51.100.1\n")
        os.rename(stub / "stub-resolv.conf.new", stub / "stub-resolv.conf")
        os.write(renamed_w, b"1")

    renamer = threading.Thread(target=replace_by_rename, daemon=True)
    renamer.start()
    out = in_child(confined)
    renamer.join(5)
    os.close(held)
    assert out["root"] == [tmp_path.parts[1]]  # the top of the tree, inside the tmpfs
    assert out["before"] == "nameserver 192.0.2.1\n"
    assert out["after"] == "nameserver 198.51.100.1\n", "a rename over the file is seen"
    assert out["etc"] == ["resolv.conf"], "the symlink only, not the rest of its directory"
    assert set(out["stub_dir"]) >= {"stub-resolv.conf", "other"}
    assert (out["write_stub"], out["write_root"]) == ("EROFS", "EROFS")
    assert out["held_fd"] == out["root"] and out["through_held_fd"] == "ENOENT", \
        "a directory fd open before is the new root after"
    assert out["nnp"] == 1 and out["caps"] == [0] * 6
    assert out["late_import"] == "ImportError" and out["late_import_logged"]
    assert any("sandbox: root is a read-only tmpfs holding" in r for r in out["log"])


def test_harden_with_both_leaves_no_capability_and_a_filter_in_force(
        tmp_path: pathlib.Path) -> None:
    why = can_make_mount_namespaces()
    if why:
        pytest.skip(why)
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    config = Config(resolv_conf=str(tmp_path / "resolv.conf"), enable_sandbox=True,
                    enable_seccomp=True)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            harden(config, host_addresses=True)
            os.write(ready_w, b"1")
        except BaseException:
            traceback.print_exc()
        finally:
            os.read(go_r, 1)
            os._exit(0)
    os.close(ready_w)
    try:
        ready = os.read(ready_r, 1)
        status = _status_of(pid)
        root = sorted(os.listdir(f"/proc/{pid}/root"))
    finally:
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, ready_r):
            os.close(fd)
    assert ready == b"1"
    assert {k: status[k] for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapPrm", "CapBnd",
                                   "CapInh", "CapAmb")} == {
        "Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0" * 16, "CapPrm": "0" * 16,
        "CapBnd": "0" * 16, "CapInh": "0" * 16, "CapAmb": "0" * 16}
    assert root == [tmp_path.parts[1]]


def test_a_sandbox_that_cannot_be_entered_is_one_line(tmp_path: pathlib.Path) -> None:
    def refused() -> str:
        seccomp.install(seccomp.build())  # it refuses unshare, as a locked-down host would
        try:
            sandbox.enter(str(tmp_path / "resolv.conf"))
        except SetupError as exc:
            return str(exc)
        return "entered"

    message = in_child(refused)
    assert message.startswith("--enable-sandbox: cannot unshare a mount namespace, nor a "
                              "user namespace with one: ")
    assert message.endswith("Operation not permitted (--disable-sandbox runs without it)")
    assert "\n" not in message
