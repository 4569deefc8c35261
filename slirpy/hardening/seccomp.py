"""--enable-seccomp: once set up, slirpy may make only the system calls its loop needs.

An allowlist, where slirp4netns blocks a list (it says finding what libslirp needs is
hard; here the loop is ours and small). Everything not in ALLOWED fails with EPERM,
never a kill (a wrong architecture's call too): a call we missed shows as an error the
loop logs, not a dead network. REFUSED names the calls that would matter most to an
attacker who took over the process; they fail as anything unlisted does, and are listed
so that a reader (and a test) sees that they do. Some calls are allowed for some
arguments only: socket() for IPv4, IPv6 and route netlink sockets (no AF_PACKET, no
other netlink family, and no unix socket: the control socket's are made by accept(), and
a new one could reach the abstract unix sockets of the host's network namespace, which
no mount namespace hides), socketpair() for unix pairs only, open() for reading only,
ioctl() for the few requests CPython and the runtime make, tgkill() to ourselves,
ftruncate() on a rotating packet capture's two files. No new process, no exec, no file
opened for writing, renamed or removed (so the control socket's file is left behind at
exit, as slirp4netns always leaves its own; a packet capture's files are opened before
the filter is loaded). mmap and mprotect are not
limited to non-executable memory: ctypes and the C extensions loaded at start may need
it, and the filter's job is the kernel's surface, not exploit mitigation inside the
process.

What was measured: strace of slirpy serving TCP, UDP, DNS (UDP and TCP), ping, SRV
lookups, the control socket's commands (forwards and rules added and removed), SIGUSR1,
a resolv.conf change and a host address change; what CPython's own paths add (memory,
timeouts on sockets, a bug's traceback, `slirpy run`'s wait for its command) is listed
from its sources.

A refused call is not seen in-process: seccomp can only fail it (ERRNO), or raise SIGSYS
(TRAP), whose handler Python runs too late to make the call fail cleanly, or hand it to a
supervisor process (USER_NOTIF), which slirpy does not have. The filter is loaded with
SECCOMP_FILTER_FLAG_LOG instead, so the kernel's audit log names every refused call
(`type=1326 ... syscall=N`), and the loop logs the EPERM wherever it handles errors.

The binding: pyseccomp, one ctypes module over the system's libseccomp.so.2. What
needs maintaining is libseccomp (system call tables, architectures, the BPF it emits),
and that is the distribution's libseccomp2; the binding only passes our table through
seccomp_rule_add, a C API stable for a decade, in a few hundred lines anyone can read
(its last release is from 2021, and it needs no more). It needs no compiler and no
Python headers, so it installs beside the pure and the compiled build alike, and its
API is the one of libseccomp's own Python bindings (python3-seccomp: Cython, shipped by
Debian for the system Python only, on PyPI only as third-party rebuilds), so moving to
those is an import line. It is imported only when --enable-seccomp is given.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
from collections.abc import Sequence
from typing import Final, Protocol

from slirpy.errors import SetupError

log = logging.getLogger(__name__)

# Allowed whatever the arguments, by what needs them.
ALLOWED: Final[dict[str, tuple[str, ...]]] = {
    "memory (CPython's allocator, malloc)":
        ("brk", "mmap", "munmap", "mremap", "madvise", "mprotect"),
    "fds: the tap, sockets, resolv.conf, stderr":
        ("read", "readv", "pread64", "write", "writev", "close", "lseek", "fcntl", "dup",
         "dup2", "dup3", "fstat", "newfstatat", "stat", "lstat", "statx"),
    "the loop, and CPython's socket timeouts":
        ("epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
         "ppoll", "select", "pselect6"),
    "host sockets, forwards, the control socket, netlink":
        ("bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
         "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg",
         "recvmmsg", "shutdown"),
    "clocks and waits":
        ("clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep",
         "clock_nanosleep", "restart_syscall"),
    "signals: stop signals, SIGUSR1, the wake-up fd":
        ("rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack"),
    "threads and locks (CPython's GIL)": ("futex", "sched_yield"),
    "who we are (log lines, CPython)":
        ("getpid", "gettid", "getuid", "geteuid", "getgid", "getegid"),
    "randomness": ("getrandom",),
    "`slirpy run`: signal and reap its command (through the pidfd it holds)":
        ("pidfd_send_signal", "wait4", "waitid"),
    "leaving": ("exit", "exit_group"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    """Argument *index*, masked with *mask* (None: whole), equals *value*."""

    index: int
    value: int
    mask: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AllowIf:
    """*syscall* is allowed when every comparison holds."""

    syscall: str
    why: str
    compares: tuple[Compare, ...]


NETLINK_ROUTE: Final = 0
_WRITING: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# ioctl requests (<asm-generic/ioctls.h>): set and clear O_NONBLOCK and FD_CLOEXEC
# (CPython's setblocking and set_inheritable), isatty (open()'s buffering choice), bytes
# queued for sending (SIOCOUTQ) and waiting to be read (SIOCINQ).
FIONBIO: Final = 0x5421
FIOCLEX: Final = 0x5451
FIONCLEX: Final = 0x5450
TCGETS: Final = 0x5401
TIOCOUTQ: Final = 0x5411
FIONREAD: Final = 0x541B


def allowed_if(pid: int, truncate_fds: Sequence[int] = ()) -> tuple[AllowIf, ...]:
    """The calls allowed for some arguments only; *pid*: the process the filter is for;
    *truncate_fds*: the files of a rotating packet capture (--pcap-size SIZE,rotate)."""
    return (
        # A ring of two capture files, opened at start, is emptied in turn: ftruncate on
        # those two fds only, so no other file (the fds are opened for writing already).
        *(AllowIf("ftruncate", "the rotating packet capture's two files only",
                  (Compare(0, fd),)) for fd in truncate_fds),
        *(AllowIf("socket", "host sockets of either family, forwards", (Compare(0, family),))
          for family in (socket.AF_INET, socket.AF_INET6)),
        AllowIf("socket", "route netlink only: the host-address watcher",
                (Compare(0, socket.AF_NETLINK), Compare(2, NETLINK_ROUTE))),
        AllowIf("socketpair", "unix: pyroute2's event loop", (Compare(0, socket.AF_UNIX),)),
        AllowIf("openat", "for reading only: resolv.conf", (Compare(2, 0, _WRITING),)),
        AllowIf("open", "for reading only: resolv.conf", (Compare(1, 0, _WRITING),)),
        *(AllowIf("ioctl", "O_NONBLOCK, FD_CLOEXEC, isatty, socket queues",
                  (Compare(1, request),))
          for request in (FIONBIO, FIOCLEX, FIONCLEX, TCGETS, TIOCOUTQ, FIONREAD)),
        AllowIf("tgkill", "a signal to ourselves only (abort)", (Compare(0, pid),)),
    )


# Refused (EPERM) as anything unlisted is: named for the reader, and for the tests that
# check each one fails.
REFUSED: Final[dict[str, tuple[str, ...]]] = {
    "run a program": ("execve", "execveat"),
    "new processes and threads": ("fork", "vfork", "clone", "clone3"),
    "other processes": ("ptrace", "process_vm_readv", "process_vm_writev", "kill", "tkill",
                        "pidfd_open", "pidfd_getfd"),
    "mounts and namespaces": ("mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
                              "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
                              "open_tree", "mount_setattr"),
    "the kernel": ("bpf", "init_module", "finit_module", "delete_module", "kexec_load",
                   "kexec_file_load", "perf_event_open", "userfaultfd", "reboot", "swapon",
                   "swapoff", "iopl", "ioperm"),
    "keys": ("keyctl", "add_key", "request_key"),
    "files by handle, and writing files": ("open_by_handle_at", "name_to_handle_at",
                                           "openat2", "creat", "unlink", "unlinkat",
                                           "rename", "renameat", "renameat2", "mkdir",
                                           "mkdirat", "chmod", "fchmod", "fchmodat",
                                           "chown", "fchown", "fchownat", "truncate",
                                           "link", "linkat", "symlink", "symlinkat"),
    # ftruncate is refused too, but for the rotating capture's files (allowed_if).
    "credentials and process attributes": ("setuid", "setgid", "setreuid", "setregid",
                                           "setresuid", "setresgid", "setgroups", "capset",
                                           "prctl", "seccomp", "personality",
                                           "landlock_create_ruleset",
                                           "landlock_add_rule", "landlock_restrict_self"),
    "the clock": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex"),
    "io_uring, which would bypass this filter's view of I/O":
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
}


def allowed_names() -> list[str]:
    return [name for names in ALLOWED.values() for name in names]


def refused_names() -> list[str]:
    return [name for names in REFUSED.values() for name in names]


class Filter(Protocol):
    """A filter built and not loaded yet (a pyseccomp.SyscallFilter)."""

    def load(self) -> None: ...


def build(truncate_fds: Sequence[int] = ()) -> Filter:
    """The filter for this process, built (libseccomp loaded, every rule added) but not
    loaded yet. Raises SetupError if libseccomp or pyseccomp is missing.
    *truncate_fds*: see allowed_if."""
    try:
        import pyseccomp  # type: ignore[import-untyped]  # no py.typed marker
    except (ImportError, RuntimeError) as exc:  # RuntimeError: no libseccomp.so.2
        raise SetupError(f"--enable-seccomp needs the pyseccomp package and libseccomp "
                         f"(Debian: libseccomp2): {exc} (--disable-seccomp runs without "
                         f"it)") from None
    eperm = pyseccomp.ERRNO(errno.EPERM)
    syscall_filter = pyseccomp.SyscallFilter(eperm)
    syscall_filter.set_attr(pyseccomp.Attr.ACT_BADARCH, eperm)  # never a kill, even there
    syscall_filter.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)  # every thread, if there are any
    try:
        syscall_filter.set_attr(pyseccomp.Attr.CTL_LOG, 1)  # refusals in the audit log
    except OSError:  # a libseccomp or kernel without SECCOMP_FILTER_FLAG_LOG
        log.debug("seccomp: refused calls will not be logged by the kernel")
    try:  # a binary tree of system call numbers, not a list (libseccomp >= 2.5)
        syscall_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        log.debug("seccomp: the filter is a list (libseccomp < 2.5)")

    def known(name: str) -> bool:
        """Whether *name* is a call of this architecture (x86_64's `open` is not arm64's)."""
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0:
            return True
        unknown.add(name)
        return False

    # REFUSED needs no rule (libseccomp takes none with the default's action): it must
    # only never be allowed.
    overlap = set(refused_names()) & (set(allowed_names()) | {r.syscall for r in allowed_if(0)})
    assert not overlap, f"both allowed and refused: {sorted(overlap)}"
    unknown: set[str] = set()
    for name in allowed_names():
        if known(name):
            syscall_filter.add_rule(pyseccomp.ALLOW, name)
    for rule in allowed_if(os.getpid(), truncate_fds):
        if known(rule.syscall):
            syscall_filter.add_rule(pyseccomp.ALLOW, rule.syscall, *(
                pyseccomp.Arg(c.index, pyseccomp.EQ, c.value) if c.mask is None
                else pyseccomp.Arg(c.index, pyseccomp.MASKED_EQ, c.mask, c.value)
                for c in rule.compares))
    if unknown:
        log.debug("seccomp: not calls of this architecture: %s", " ".join(sorted(unknown)))
    filter_: Filter = syscall_filter
    return filter_


def install(syscall_filter: Filter) -> None:
    """Load the filter into the kernel: from here on it holds, for good."""
    try:
        syscall_filter.load()
    except OSError as exc:
        raise SetupError(f"--enable-seccomp: cannot load the filter: {exc.strerror} "
                         f"(--disable-seccomp runs without it)") from None
    log.debug("seccomp: %d system calls allowed (some for some arguments only), the rest "
              "refused with EPERM", len(set(allowed_names())
                                        | {rule.syscall for rule in allowed_if(0)}))
