"""`slirpy run`: new namespaces for a command, which slirpy then puts online.

Process tree, and why each level exists:

    slirpy (caller's namespaces: the data path and every host socket)
    └── keeper: unshare(user, net, mount, pid), then maps the caller's uid and gid
        to root inside, as `unshare -Urn` does. unshare(CLONE_NEWPID) only moves the
        caller's *children* into the new PID namespace, hence one more fork.
        slirpy attaches to the keeper's network namespace (/proc/KEEPER/ns/net) as
        it would to any PID; the keeper waits for its one child and exits with its
        status.
        └── init (PID 1 of the new PID namespace): makes every mount private (so
            nothing leaks back to the caller), mounts a /proc of its own PID
            namespace, bind-mounts a resolv.conf naming slirpy's DNS address over
            /etc/resolv.conf, says "ready", then waits for "go" (the tap is up and
            configured) before it runs CMD.
            └── CMD (PID 2)

When CMD exits, init exits with its status, and the kernel kills whatever CMD left
running in the PID namespace: nothing is left behind. Each level dies with its parent
(PR_SET_PDEATHSIG), so a slirpy killed with SIGKILL takes the whole tree with it.
SIGTERM and SIGHUP are passed down to CMD; SIGINT is ignored on the way (the terminal
delivers it to CMD itself, which is in the same process group).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Final, NoReturn

from slirpy.errors import SetupError
from slirpy.netns.linux import (CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                                MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC,
                                mount, set_parent_death_signal, unshare)

RESOLV_CONF: Final = "/etc/resolv.conf"
_FORWARDED: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)
# Python ignores these at start-up; an exec'd program must get the defaults back
# (or `yes | head -1` never ends), as subprocess's restore_signals does.
_RESTORED: Final = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED)
_READY: Final = b"ok"
_GO: Final = b"g"
# Exit statuses, as a shell gives them.
_EXIT_SIGNALLED: Final = 128  # plus the signal's number
_EXIT_NOT_EXECUTABLE: Final = 126
_EXIT_NOT_FOUND: Final = 127
_EX_SOFTWARE: Final = 70  # <sysexits.h>: an internal error (a bug in a forked child)


class Guest:
    """The keeper process of a command's namespaces, seen from slirpy."""

    def __init__(self, pid: int, go_fd: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)  # readable once the keeper (so CMD) has exited
        self._go_fd = go_fd
        self.status: int | None = None

    def go(self) -> None:
        """The network is up: let CMD run."""
        os.write(self._go_fd, _GO)
        os.close(self._go_fd)

    def signal(self, sig: int) -> None:
        """Send *sig* to the keeper, which passes SIGTERM and SIGHUP down to CMD."""
        if self.status is None:
            signal.pidfd_send_signal(self.pidfd, sig)

    def wait(self) -> int:
        """Reap the keeper; CMD's exit status (128 + N when signal N ended it)."""
        if self.status is None:
            _, raw = os.waitpid(self.pid, 0)
            self.status = exit_status(raw)
            os.close(self.pidfd)
        return self.status


def exit_status(raw: int) -> int:
    """A shell's view of a wait status: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(raw)
    return _EXIT_SIGNALLED - code if code < 0 else code


def spawn(cmd: list[str], nameservers: list[str]) -> Guest:
    """Make the namespaces and start CMD's init, which waits for Guest.go().

    *nameservers* go into the guest's resolv.conf, in order (none: keep the host's file).
    Raises SetupError, with the reason, if the namespaces cannot be made.
    """
    uid, gid = os.getuid(), os.getgid()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def start_keeper() -> NoReturn:
        os.close(ready_r)
        os.close(go_w)
        _keeper(cmd, nameservers, uid, gid, ready_w, go_r)

    pid = _fork(start_keeper)
    os.close(ready_w)
    os.close(go_r)
    with os.fdopen(ready_r, "rb") as ready:
        answer = ready.read()  # until every copy of ready_w is closed
    if answer != _READY:
        os.close(go_w)
        _, raw = os.waitpid(pid, 0)
        reason = answer.decode(errors="replace")
        raise SetupError(reason or f"the namespace keeper died (status {exit_status(raw)})")
    return Guest(pid, go_w)


def _keeper(cmd: list[str], nameservers: list[str], uid: int, gid: int, ready_w: int,
            go_r: int) -> NoReturn:
    try:
        set_parent_death_signal(signal.SIGKILL)
        unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID)
        _write("/proc/self/setgroups", "deny")  # or an unprivileged gid_map is refused
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as exc:
        _fail(ready_w, f"cannot make namespaces: {exc.strerror or exc}")

    def start_init() -> NoReturn:
        _init(cmd, nameservers, ready_w, go_r)

    os._exit(_supervise(start_init, theirs=(ready_w, go_r)))


def _init(cmd: list[str], nameservers: list[str], ready_w: int, go_r: int) -> NoReturn:
    try:
        set_parent_death_signal(signal.SIGKILL)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if nameservers and os.path.exists(RESOLV_CONF):
            _bind_resolv_conf(nameservers)
    except OSError as exc:
        _fail(ready_w, f"cannot set up the guest's mounts: {exc.strerror or exc}")
    os.write(ready_w, _READY)
    os.close(ready_w)
    with os.fdopen(go_r, "rb") as go:
        if go.read(1) != _GO:
            os._exit(1)  # slirpy could not bring the network up; it says why

    def start_cmd() -> NoReturn:
        _exec(cmd)

    os._exit(_supervise(start_cmd))


def _fork(start: Callable[[], NoReturn]) -> int:
    """Fork a child that runs *start* and never returns into its caller's code."""
    pid = os.fork()
    if pid == 0:
        try:
            start()
        except BaseException:  # a bug: show it, but never unwind into slirpy's own code
            traceback.print_exc()
        os._exit(_EX_SOFTWARE)
    return pid


def _supervise(start: Callable[[], NoReturn], theirs: tuple[int, ...] = ()) -> int:
    """Fork a child running *start*; pass signals on to it; return its exit status.

    *theirs* are fds only the child uses: closed here once it has them. Every child
    is reaped while waiting, as PID 1 must (orphans are re-parented to it); the wait
    ends with *start*'s child, whatever else is still running.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to CMD as well
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)  # none may slip past the fork

    def unblocked_start() -> NoReturn:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        start()

    child = _fork(unblocked_start)
    for fd in theirs:
        os.close(fd)
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _: os.kill(child, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    while True:
        try:
            pid, raw = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            return exit_status(raw)


def _exec(cmd: list[str]) -> NoReturn:
    """Become CMD with default signal dispositions; 127 or 126 as a shell would."""
    for sig in _RESTORED:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        _say(f"{cmd[0]}: command not found")
        os._exit(_EXIT_NOT_FOUND)
    except OSError as exc:
        _say(f"{cmd[0]}: {exc.strerror}")
        os._exit(_EXIT_NOT_EXECUTABLE)


def _bind_resolv_conf(nameservers: list[str]) -> None:
    """Bind a file naming *nameservers* over /etc/resolv.conf (or what it links to).

    mount(2) follows a symlinked /etc/resolv.conf to its target. The file is removed
    at once: the mount keeps it alive, and nothing is left in /tmp afterwards.
    """
    fd, path = tempfile.mkstemp(prefix="slirpy-resolv-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write("# written by slirpy run\n"
                       + "".join(f"nameserver {server}\n" for server in nameservers))
        os.chmod(path, 0o644)
        mount(path, RESOLV_CONF, None, MS_BIND)
    finally:
        os.unlink(path)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(text)


def _say(text: str) -> None:
    """One line on stderr, written at once (forked children leave with os._exit)."""
    os.write(sys.stderr.fileno(), f"slirpy: {text}\n".encode(errors="replace"))


def _fail(ready_w: int, reason: str) -> NoReturn:
    """Tell slirpy why the guest cannot start (it prints the line), and exit."""
    os.write(ready_w, reason.encode(errors="replace"))
    os._exit(1)
