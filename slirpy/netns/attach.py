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
from typing import Final

from slirpy.config import Config
from slirpy.errors import SetupError, UsageError
from slirpy.netns.linux import CLONE_NEWNET, CLONE_NEWUSER, same_namespace, setns

TUNSETIFF: Final = 0x400454CA
IFF_TAP: Final = 0x0002
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
IFNAMSIZ: Final = 16


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The guest's network namespace and the user namespace to join first (if any)."""

    netns: str
    userns: str | None


def target_for_pid(pid: int) -> Target:
    netns = f"/proc/{pid}/ns/net"
    if not os.path.exists(netns):
        raise SetupError(f"no such process: {pid}")
    userns = f"/proc/{pid}/ns/user"
    try:
        joined = None if same_namespace(userns, "/proc/self/ns/user") else userns
    except OSError as exc:
        raise SetupError(f"cannot read the namespaces of process {pid}: {exc.strerror}") from None
    return Target(netns, joined)


def target_for_path(path: str, userns_path: str | None) -> Target:
    if not os.path.exists(path):
        raise UsageError(f"existing path expected when --netns-type=path: {path}")
    return Target(path, userns_path)


def check_tap_name(name: str) -> str:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name:
        raise UsageError(f"invalid tap name {name!r}: 1 to {IFNAMSIZ - 1} bytes, no '/' or spaces")
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSetup:
    """What `-c` configures in the guest: what slirp4netns's --configure does."""

    config: Config
    mac: str | None = None


# Tests only: open the tap without the virtio-net header, to keep the plain path tested.
PLAIN_TAP_ENV: Final = "SLIRPY_TEST_PLAIN_TAP"


def open_tap(target: Target, tap_name: str, setup: LinkSetup | None, *,
             vnet_hdr: bool | None = None) -> int:
    """Return a tap fd for *tap_name* in *target*, usable from our namespaces."""
    if vnet_hdr is None:
        vnet_hdr = not os.environ.get(PLAIN_TAP_ENV)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the helper: never returns
        parent_end.close()
        status = 0
        try:
            fd = _open_in_namespace(target, tap_name, setup, vnet_hdr)
            socket.send_fds(child_end, [b"ok"], [fd])
        except BaseException as exc:  # noqa: B036 - anything must reach the parent, then exit
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            child_end.send(f"error: {text}".encode()[:4000])
            status = 1
        finally:
            os._exit(status)
    child_end.close()
    try:
        reply, fds, _, _ = socket.recv_fds(parent_end, 4096, 1)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    if reply != b"ok" or not fds:
        raise SetupError(reply.decode(errors="replace").removeprefix("error: ")
                         or "the tap helper died")
    return fds[0]


def _open_in_namespace(target: Target, tap_name: str, setup: LinkSetup | None,
                       vnet_hdr: bool) -> int:
    if target.userns is not None:
        setns(target.userns, CLONE_NEWUSER)
    setns(target.netns, CLONE_NEWNET)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap_name.encode(), flags))
    except OSError as exc:
        raise SetupError(f"cannot create tap {tap_name}: {exc.strerror}") from None
    if setup is not None:
        configure_link(tap_name, setup)
    return fd


def configure_link(tap_name: str, setup: LinkSetup) -> None:
    """lo up; the tap's MTU, MAC, address network+100 and default route via network+2."""
    from pyroute2 import IPRoute  # here: only the helper needs it, and it is slow to import

    net = setup.config.network
    with IPRoute() as ipr:
        (lo,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=lo, state="up")
        (tap,) = ipr.link_lookup(ifname=tap_name)
        extra = {"address": setup.mac} if setup.mac else {}
        ipr.link("set", index=tap, mtu=setup.config.mtu, **extra)
        ipr.link("set", index=tap, state="up")
        ipr.addr("add", index=tap, address=str(net.guest), prefixlen=net.cidr.prefixlen)
        ipr.route("add", dst="0.0.0.0/0", gateway=str(net.gateway), oif=tap)


def parse_mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise UsageError(f"invalid MAC address: {text}")
    try:
        value = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise UsageError(f"invalid MAC address: {text}") from None
    if value[0] & 1:
        raise UsageError(f"invalid MAC address: {text} (a multicast address)")
    return text.lower()


def write_ready(fd: int) -> None:
    """Write "1" to the ready fd and close it, as slirp4netns does."""
    try:
        os.write(fd, b"1")
        os.close(fd)
    except OSError as exc:
        raise SetupError(f"cannot write to ready fd {fd}: {exc.strerror}") from None


