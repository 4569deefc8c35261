"""Opening the guest's tap from the caller's namespaces.

Every host socket must live in the namespaces slirpy was started in, but the tap
must be created (or opened, when rootlesskit made it first) inside the guest's
network namespace, and an unprivileged caller may only join that after joining the
guest's user namespace, which can never be left again. So a short-lived helper is
forked: single-threaded, as joining a user namespace requires, it joins the user
namespace (unless it is ours already) and the network namespace, opens the tap,
optionally configures the guest's link with pyroute2 (`-c`), and passes the fd back
over a socketpair (SCM_RIGHTS) before it exits. The parent never changes namespace.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import struct
import sys
import traceback
from typing import Final, NoReturn

from slirpy.config import Config
from slirpy.errors import SetupError, SlirpyError, UsageError
from slirpy.netns.linux import CLONE_NEWNET, CLONE_NEWUSER, same_namespace, setns

TUNSETIFF: Final = 0x400454CA
IFF_TAP: Final = 0x0002
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
IFNAMSIZ: Final = 16
_IFREQ: Final = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union
_OWN_USERNS: Final = "/proc/self/ns/user"
_REPLY_MAX: Final = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The guest's network namespace, and the user namespace that owns it (if known).

    The helper joins *userns* first unless it is ours already (joining one's own user
    namespace fails with EINVAL); None means "do not join any".
    """

    netns: str
    userns: str | None


def target_for_pid(pid: int) -> Target:
    """The namespaces of process *pid* (`--netns-type=pid`)."""
    netns = f"/proc/{pid}/ns/net"
    if not os.path.exists(netns):
        raise SetupError(f"no such process: {pid}")
    return Target(netns, f"/proc/{pid}/ns/user")


def target_for_path(path: str, userns_path: str | None) -> Target:
    """A network namespace file (`--netns-type=path`), and `--userns-path` if given."""
    if not os.path.exists(path):
        raise UsageError(f"existing path expected when --netns-type=path: {path}")
    return Target(path, userns_path)


def check_tap_name(name: str) -> str:
    """A valid interface name: what the kernel's dev_valid_name() accepts."""
    if (not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..")
            or any(c == "/" or c == ":" or c.isspace() for c in name)):
        raise UsageError(f"invalid tap name {name!r}: 1 to {IFNAMSIZ - 1} bytes, "
                         "no '/', ':' or spaces")
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSetup:
    """What `-c` configures in the guest: what slirp4netns's --configure does."""

    config: Config
    mac: str | None = None


def open_tap(target: Target, tap_name: str, setup: LinkSetup | None, *,
             vnet_hdr: bool = True) -> int:
    """Return a tap fd for *tap_name* in *target*, usable from our namespaces.

    The tap is created if missing and opened if it exists (rootlesskit makes it
    first); with *setup*, the guest's link is configured as `-c` does. *vnet_hdr*
    adds IFF_VNET_HDR (tests turn it off, to keep the plain path tested).
    Raises SetupError with the helper's one-line reason when anything is refused.
    """
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        _helper(child_end, target, tap_name, setup, flags)
    child_end.close()
    try:
        reply, fds, _, _ = socket.recv_fds(parent_end, _REPLY_MAX, 1, socket.MSG_CMSG_CLOEXEC)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    if reply == b"ok" and fds:
        return fds[0]
    for fd in fds:
        os.close(fd)
    kind, _, text = reply.decode(errors="replace").partition(": ")
    if kind == "bug":  # the helper printed its traceback to our stderr
        raise RuntimeError(f"the tap helper failed: {text}")
    raise SetupError(text or "the tap helper died without a word")


def _helper(sock: socket.socket, target: Target, tap_name: str, setup: LinkSetup | None,
            flags: int) -> NoReturn:
    """The forked helper: open the tap in *target*, send the fd or the reason, exit."""
    status = 1
    try:
        fd = _open_in_namespace(target, tap_name, setup, flags)
        socket.send_fds(sock, [b"ok"], [fd])
        status = 0
    except SlirpyError as exc:
        sock.send(f"error: {exc}".encode()[:_REPLY_MAX])
    except BaseException as exc:  # a bug: keep its traceback, and tell the parent
        traceback.print_exc()
        sys.stderr.flush()
        sock.send(f"bug: {type(exc).__name__}: {exc}".encode()[:_REPLY_MAX])
    finally:
        os._exit(status)


def _open_in_namespace(target: Target, tap_name: str, setup: LinkSetup | None,
                       flags: int) -> int:
    if target.userns is not None and not _is_our_userns(target.userns):
        _join(target.userns, CLONE_NEWUSER, "user")
    _join(target.netns, CLONE_NEWNET, "network")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(tap_name.encode(), flags))
    except OSError as exc:
        raise SetupError(f"cannot create tap {tap_name}: {exc.strerror}") from None
    if setup is not None:
        from slirpy.netns.link import configure_link

        configure_link(tap_name, setup.config, setup.mac)
    return fd


def _is_our_userns(path: str) -> bool:
    try:
        return same_namespace(path, _OWN_USERNS)
    except OSError as exc:
        raise SetupError(f"cannot read user namespace {path}: {exc.strerror}") from None


def _join(path: str, nstype: int, kind: str) -> None:
    try:
        setns(path, nstype)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SetupError(f"cannot join {kind} namespace {path}: {reason}") from None


def write_ready(fd: int) -> None:
    """Write "1" to the ready fd and close it, as slirp4netns does."""
    try:
        os.write(fd, b"1")
        os.close(fd)
    except OSError as exc:
        raise SetupError(f"cannot write to ready fd {fd}: {exc.strerror}") from None
