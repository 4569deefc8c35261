"""--enable-sandbox: once set up, slirpy sees one directory of the filesystem, and holds
no capability.

When the loop is about to start, the tap is open and every configured forward and the
control socket are bound: from then on slirpy needs no path but the resolv.conf it
re-reads for its DNS upstreams. So, as slirp4netns's sandbox does:

1. a mount namespace of its own (unshare), every mount in it a slave (the host's
   changes still reach it, nothing made here goes back). Where slirpy lacks
   CAP_SYS_ADMIN over its user namespace (an unprivileged `slirpy run`), a new user
   namespace is made with the mount namespace, mapping our uid and gid to themselves;
2. a small tmpfs holding, read-only, the directory resolv.conf lives in and the symlinks
   its path resolves through (a symlink to /run/systemd/resolve/stub-resolv.conf gives a
   symlink and /run/systemd/resolve). The directory, not the file: resolvers replace
   resolv.conf by renaming a new file over it, which a bound file (one inode) would
   never show, and a bound directory does. pivot_root into the tmpfs, the old root
   detached, the tmpfs then read-only too;
3. every fd left open on a directory (it would reach the old root through openat)
   pointed at the new root instead, under the same number;
4. every capability dropped (ambient, the bounding set, then effective, permitted and
   inheritable), and no_new_privs set.

Where slirp4netns differs: it binds all of /etc and /run, and keeps
CAP_NET_BIND_SERVICE. slirpy binds one directory and keeps nothing, so a forward added
at run time through the control socket cannot bind a port below
net.ipv4.ip_unprivileged_port_start. The control socket's file is left behind at exit
(its path is out of reach), as slirp4netns always leaves its own; the next start
replaces it, as a stale one.

Python imports a module when it is first used, and after the pivot no module file can
be found (and under the seccomp filter alone, no directory listed): every module slirpy
may still need is imported before either (`preload`), and an import tried afterwards is
logged as the bug it is.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import errno
import importlib
import importlib.abc
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Final, NoReturn

from slirpy.errors import SetupError
from slirpy.netns.linux import (CLONE_NEWNS, CLONE_NEWUSER, MS_BIND, MS_NODEV, MS_NOEXEC,
                                MS_NOSUID, MS_REC)

log = logging.getLogger(__name__)

# Modules the standard library or slirpy may import lazily while serving: each is
# imported before the pivot, when the files can still be found.
PRELOAD: Final = (
    # codecs by name: what bytes.decode, open(encoding=...) and socket calls with a
    # non-ASCII host name look up on first use
    "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "encodings.idna",
    "stringprep", "unicodedata",
    # a bug's traceback after the pivot (the source lines themselves are then missing)
    "traceback", "linecache", "tokenize",
    # warnings.warn formats a ResourceWarning through these
    "warnings", "tracemalloc",
    # the control socket's requests and replies, forward specs and rules given at run time
    # (slirpy's own modules are all imported at start: a unit test holds them to that)
    "json", "json.decoder", "json.encoder", "json.scanner", "ipaddress", "re",
)
# The host-address watcher re-reads the addresses through pyroute2 after every change.
PRELOAD_HOST_ADDRESSES: Final = ("pyroute2",)
# Tried in turn for the tmpfs's mount point: any directory will do, since what is bound
# into the tmpfs is opened before it is covered, but not /proc, which the binds use.
MOUNT_POINTS: Final = ("/tmp", "/mnt", "/run", "/var/tmp")
MAX_SYMLINKS: Final = 40  # as the kernel's path walk (MAXSYMLINKS)
TMPFS_OPTIONS: Final = "size=64k,nr_inodes=256,mode=0755"
HINT: Final = " (--disable-sandbox runs without it)"  # it is `slirpy run`'s default

# <sys/mount.h>, <linux/mount.h>, <linux/prctl.h>, <linux/capability.h>: what
# slirpy.netns.linux (the namespace and mount flags both use) does not define.
MS_RDONLY: Final = 0x1
MS_REMOUNT: Final = 0x20
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_SLAVE: Final = 1 << 19
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MNT_DETACH: Final = 2
AT_FDCWD: Final = -100
AT_RECURSIVE: Final = 0x8000
MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8
SYS_MOUNT_SETATTR: Final = 442  # one number on every architecture (Linux 5.12)
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
ST_NOATIME: Final = 1024  # statvfs f_flag bits (<sys/statvfs.h>)
ST_NODIRATIME: Final = 2048
ST_RELATIME: Final = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


# --- what the new root holds ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """The part of the filesystem the sandbox keeps: paths bound read-only (directories,
    or a file where its directory is /), and symlinks recreated as (where, target)."""

    binds: tuple[str, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()


def view_of(path: str) -> View:
    """What *path* needs to resolve as it does now: each symlink met on the way (walked
    as the kernel walks a path, so a symlinked directory counts too), and the directory
    of the file it ends at. Nothing to bind when that directory does not exist."""
    symlinks: list[tuple[str, str]] = []
    current = "/"  # always a real directory: no symlink on its own path
    pending = [part for part in os.path.abspath(path).split("/") if part]
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            target = os.readlink(candidate)
        except OSError:  # EINVAL: not a symlink; ENOENT: missing, and so is what follows
            if pending:
                current = candidate
                continue
            break
        if len(symlinks) >= MAX_SYMLINKS:
            raise SetupError(f"--enable-sandbox: too many symlinks resolving {path}")
        symlinks.append((candidate, target))
        if target.startswith("/"):
            current = "/"
        pending[:0] = [part for part in target.split("/") if part]
    else:
        return View((), tuple(symlinks))  # the path ended in a directory (or "/")
    final = os.path.join(current, name)
    if not os.path.isdir(current):
        return View((), tuple(symlinks))
    bind = final if current == "/" else current  # never the whole root
    if bind == final and not os.path.isfile(final):
        return View((), tuple(symlinks))
    inside = tuple(link for link in symlinks if not _under(link[0], bind))
    return View((bind,), inside)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# --- modules, before the files go ----------------------------------------------------------------


def preload(host_addresses: bool) -> list[str]:
    """Import what slirpy may need once no module file can be read; the names imported.

    *host_addresses*: the host-address watcher runs (it re-reads through pyroute2).
    """
    names = [*PRELOAD, *(PRELOAD_HOST_ADDRESSES if host_addresses else ())]
    for name in names:
        importlib.import_module(name)
    for encoding in ("ascii", "latin-1", "utf-8", "idna"):
        codecs.lookup(encoding)  # the codec registry caches the search's answer
    time.localtime()  # the C library reads the time zone file once, on first use
    if host_addresses:
        from slirpy.runtime.hostaddrs import host_networks

        host_networks()  # pyroute2 imports more on its first dump
    return names


class ImportAfterConfinement(importlib.abc.MetaPathFinder):
    """First on sys.meta_path once confined: an import that reaches the finders names a
    module `preload` missed (in the sandbox no module file can be read; under seccomp
    alone no directory can be listed, so a package not yet looked into is not found).
    Said once per name, then left to fail or succeed as it will."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> None:
        if fullname not in self.seen:
            self.seen.add(fullname)
            log.warning("module %s was imported after slirpy was confined: a bug, it belongs "
                        "in slirpy.hardening.sandbox.PRELOAD", fullname)
        return None


def guard_imports() -> None:
    """From now on, say which module is imported late (see ImportAfterConfinement)."""
    if not any(isinstance(f, ImportAfterConfinement) for f in sys.meta_path):
        sys.meta_path.insert(0, ImportAfterConfinement())


# --- entering it -------------------------------------------------------------------------------


def enter(resolv_conf: str | None) -> None:
    """Confine this process: a mount namespace whose root holds only what *resolv_conf*
    (None: nothing) resolves through, read-only; no capabilities; no_new_privs.

    Raises SetupError with the step that was refused. Call it with one thread only (a
    new user namespace may be needed) and after `preload`.
    """
    view = view_of(resolv_conf) if resolv_conf is not None else View()
    try:
        _enter(view)
    except OSError as exc:  # a step the environment refused, not one of ours that failed
        raise SetupError(f"--enable-sandbox: {exc.filename or 'cannot build the new root'}: "
                         f"{exc.strerror}{HINT}") from None
    log.debug("sandbox: root is a read-only tmpfs holding %s",
              ", ".join([*view.binds, *(f"{w} -> {t}" for w, t in view.symlinks)]) or "nothing")


def _enter(view: View) -> None:
    _new_mount_namespace()
    outside = _directory_fds()
    _call("make every mount a slave", _libc.mount(None, b"/", None,
                                                    ctypes.c_ulong(MS_REC | MS_SLAVE), None))
    # Opened in the new namespace (a bind's source must be in it) and before the tmpfs
    # covers anything; bound from /proc/self/fd, which the kernel follows to the directory.
    sources = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in view.binds]
    try:
        root = _mount_tmpfs()
        for where, target in view.symlinks:
            os.makedirs(root + os.path.dirname(where), exist_ok=True)
            os.symlink(target, root + where)
        for path, fd in zip(view.binds, sources):
            _bind_read_only(f"/proc/self/fd/{fd}", path, root + path)
    finally:
        for fd in sources:
            os.close(fd)
    os.chdir(root)
    # pivot_root(2): new and old root may be the same directory; the old root is then
    # mounted over the new one, and detaching "." takes it away.
    _call("pivot_root", _libc.pivot_root(b".", b"."))
    _call("detach the old root", _libc.umount2(b".", MNT_DETACH))
    os.chdir("/")
    _repoint(outside)
    _call("make the new root read-only",
          _libc.mount(None, b"/", None, ctypes.c_ulong(MS_REMOUNT | MS_BIND | MS_RDONLY
                                                         | MS_NOSUID | MS_NODEV | MS_NOEXEC),
                      None))
    drop_capabilities()


def _directory_fds() -> list[int]:
    """Open fds on directories: each would reach the old root past the pivot (openat)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISDIR(os.fstat(int(name)).st_mode):
                found.append(int(name))
        except OSError:  # the listing's own fd, closed by now
            continue
    return found


def _repoint(fds: list[int]) -> None:
    """Point every fd of *fds* at the new root, under the same number (whoever holds
    one, e.g. a spare fd kept for accept() at the open-file limit, still holds an fd)."""
    if not fds:
        return
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for fd in fds:
            os.dup2(root, fd, inheritable=False)
    finally:
        os.close(root)
    log.debug("sandbox: fds %s held directories outside: now the new root",
              ", ".join(map(str, fds)))


def _new_mount_namespace() -> None:
    if _libc.unshare(CLONE_NEWNS) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EPERM:
        _fail("unshare a mount namespace", err)
    # No CAP_SYS_ADMIN over our user namespace: a new one gives it, over the new mount
    # namespace only. Our ids map to themselves, so files keep their owners.
    uid, gid = os.geteuid(), os.getegid()
    _call("unshare a mount namespace, nor a user namespace with one",
          _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    try:
        for file, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{file}", "w", encoding="ascii") as out:
                out.write(text)
    except OSError as exc:
        raise SetupError(f"--enable-sandbox: cannot map ids in a new user namespace: "
                         f"{exc.strerror}{HINT}") from None


def _mount_tmpfs() -> str:
    for where in MOUNT_POINTS:
        if os.path.isdir(where) and not os.path.islink(where):
            _call(f"mount a tmpfs on {where}",
                  _libc.mount(b"tmpfs", where.encode(), b"tmpfs",
                              ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                              TMPFS_OPTIONS.encode()))
            return where
    raise SetupError(f"--enable-sandbox: none of {', '.join(MOUNT_POINTS)} is a directory to "
                     f"mount its tmpfs on{HINT}")


def _bind_read_only(source: str, path: str, target: str) -> None:
    """Bind *source* (all mounts under it too) at *target*, every one read-only."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
    _call(f"bind {path}", _libc.mount(source.encode(), target.encode(), None,
                                      ctypes.c_ulong(MS_BIND | MS_REC), None))
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                      | MOUNT_ATTR_NOEXEC)
    if _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), target.encode(),
                     ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                     ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.ENOSYS, errno.EPERM):
        _fail(f"make {path} read-only", err)
    # Before Linux 5.12 (or under a container's filter that predates mount_setattr): the
    # bind itself only, a mount under it keeps its flags. A remount in a user namespace
    # must keep the atime flags it found.
    flags = os.statvfs(target).f_flag
    atime = ((MS_NOATIME if flags & ST_NOATIME else 0)
             | (MS_NODIRATIME if flags & ST_NODIRATIME else 0)
             | (MS_RELATIME if flags & ST_RELATIME else 0)
             | (0 if flags & (ST_NOATIME | ST_RELATIME) else MS_STRICTATIME))
    _call(f"make {path} read-only",
          _libc.mount(None, target.encode(), None,
                      ctypes.c_ulong(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
                                     | MS_NOEXEC | atime), None))
    log.debug("sandbox: no mount_setattr (%s): mounts under %s keep their flags",
              os.strerror(err), path)


def drop_capabilities() -> None:
    """Ambient, bounding, effective, permitted and inheritable: all empty; no_new_privs."""
    _call("clear the ambient capabilities",
          _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    cap = 0
    while _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:  # EINVAL past the last one
        _call(f"drop capability {cap} from the bounding set",
              _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
        cap += 1
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: two 32-bit words of each set
    _call("drop every capability", _libc.capset(ctypes.byref(header), data))
    _call("set no_new_privs", _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def _call(what: str, result: int) -> None:
    if result != 0:
        _fail(what, ctypes.get_errno())


def _fail(what: str, err: int) -> NoReturn:
    raise SetupError(f"--enable-sandbox: cannot {what}: {os.strerror(err)}{HINT}")
