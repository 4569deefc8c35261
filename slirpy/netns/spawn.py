"""`slirpy run`: new namespaces for a command, which slirpy then puts online.

Process tree, and why:
    slirpy (caller's namespaces: the data path and every host socket)
    └── keeper: unshare(user, net, mount, pid); maps the caller's uid and gid to
        root inside, as `unshare -Urn` does; waits for its one child
        └── init (PID 1 of the new PID namespace): private mounts, a fresh /proc,
            a resolv.conf naming slirpy's DNS address bind-mounted over
            /etc/resolv.conf; waits for "go" (the network is up); runs CMD
            └── CMD (PID 2)
slirpy attaches to the keeper's network namespace as it would to any PID. When CMD
exits, init exits with its status, and the kernel kills whatever CMD left running
in the PID namespace: nothing is left behind. Each level dies with its parent
(PR_SET_PDEATHSIG), so a killed slirpy takes the whole tree with it.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Final, NoReturn

from slirpy.errors import SetupError
from slirpy.netns.linux import (CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                                MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC,
                                mount, set_parent_death_signal, unshare)

RESOLV_CONF: Final = "/etc/resolv.conf"
_FORWARDED: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)


class Guest:
    """The keeper process of a command's namespaces, seen from slirpy."""

    def __init__(self, pid: int, go_fd: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self._go_fd = go_fd
        self.status: int | None = None

    def go(self) -> None:
        """The network is up: let CMD run."""
        os.write(self._go_fd, b"g")
        os.close(self._go_fd)

    def signal(self, sig: int) -> None:
        if self.status is None:
            os.kill(self.pid, sig)

    def wait(self) -> int:
        if self.status is None:
            _, raw = os.waitpid(self.pid, 0)
            self.status = exit_status(raw)
            os.close(self.pidfd)
        return self.status


def exit_status(raw: int) -> int:
    """A shell's view of a wait status: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(raw)
    return 128 - code if code < 0 else code


def spawn(cmd: list[str], nameserver: str) -> Guest:
    uid, gid = os.getuid(), os.getgid()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _keeper(cmd, nameserver, uid, gid, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    with os.fdopen(ready_r, "rb") as ready:
        answer = ready.read()
    if answer != b"ok":
        os.waitpid(pid, 0)
        raise SetupError(answer.decode(errors="replace") or "could not make namespaces")
    return Guest(pid, go_w)


def _keeper(cmd: list[str], nameserver: str, uid: int, gid: int, ready_w: int,
            go_r: int) -> NoReturn:
    try:
        set_parent_death_signal(signal.SIGKILL)
        unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        resolv = _resolv_conf_file(nameserver)
    except OSError as exc:
        os.write(ready_w, f"cannot make namespaces: {exc.strerror or exc}".encode())
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to CMD as well
    init = os.fork()
    if init == 0:
        os.close(ready_w)
        _init(cmd, resolv, go_r)
    os.close(go_r)
    os.write(ready_w, b"ok")
    os.close(ready_w)
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _: os.kill(init, signum))
    while True:
        try:
            _, raw = os.waitpid(init, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    os._exit(exit_status(raw))


def _init(cmd: list[str], resolv: str, go_r: int) -> NoReturn:
    try:
        set_parent_death_signal(signal.SIGKILL)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if os.path.exists(RESOLV_CONF):
            mount(resolv, RESOLV_CONF, None, MS_BIND)
    except OSError as exc:
        print(f"slirpy: {exc.strerror or exc}", file=sys.stderr)
        os._exit(1)
    finally:
        os.unlink(resolv)
    with os.fdopen(go_r, "rb") as go:
        if go.read(1) != b"g":
            os._exit(1)  # slirpy could not bring the network up; it says why
    child = os.fork()
    if child == 0:
        for sig in (signal.SIGINT, *_FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(cmd[0], cmd)
        except FileNotFoundError:
            print(f"slirpy: {cmd[0]}: command not found", file=sys.stderr)
            os._exit(127)
        except OSError as exc:
            print(f"slirpy: {cmd[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(126)
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _: os.kill(child, signum))
    status = 1
    while True:  # PID 1 reaps every orphan until CMD itself is gone
        try:
            pid, raw = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            status = exit_status(raw)
            break
    os._exit(status)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _resolv_conf_file(nameserver: str) -> str:
    fd, path = tempfile.mkstemp(prefix="slirpy-resolv-", suffix=".conf")
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(f"# written by slirpy run\nnameserver {nameserver}\n")
    os.chmod(path, 0o644)
    return path
