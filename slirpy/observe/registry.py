"""Where `slirpy ctl` finds running instances: a directory of symlinks to API sockets.

Layout, in a directory only we may enter (0700, owned by us):
    <pid>.sock  -> the API socket's absolute path     (every instance with an API socket)
    <name>.sock -> <pid>.sock                          (with --name NAME)
    <pid>.api      the API socket itself, where slirpy made one here (`slirpy run`'s
                   default, or --name without --api-socket)
Connecting to either link reaches the socket; a name's link names its pid. The directory
is $XDG_RUNTIME_DIR/slirpy, else /run/user/<uid>/slirpy where that runtime directory
exists and is ours, else /tmp/slirpy-<uid>; one that is not a directory of ours with no
access for others is refused, never used (anyone may create /tmp/slirpy-<uid> first).

Entries are registered before confinement; they are removed at a clean exit where the
filesystem can still be reached. Confined it cannot (--enable-sandbox: slirpy then sees
only its own tmpfs; --enable-seccomp: the filter refuses unlink), so readers treat an
entry as stale when its pid is gone or its socket refuses connections, and remove it. A name is held by a live instance only: a second
slirpy given a live name is refused at start, a stale holder is replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import socket
import stat
from typing import Final

from slirpy.errors import SetupError

log = logging.getLogger(__name__)

SUFFIX: Final = ".sock"
API_SUFFIX: Final = ".api"
PROBE_TIMEOUT_S: Final = 2.0
SUN_PATH_MAX: Final = 107
RUN_USER = "/run/user"  # systemd-logind's per-user runtime directories
TMP = "/tmp"
# A socket with nobody behind it, or no socket at all: the entry is stale.
_DEAD: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR, errno.ENOTSOCK,
                          errno.ELOOP, errno.EPROTOTYPE})


def directory_path() -> str:
    """The registry directory's path for this user (it may not exist yet)."""
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "slirpy")
    run_user = f"{RUN_USER}/{uid}"
    try:
        info = os.lstat(run_user)
    except OSError:
        pass
    else:
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:
            return os.path.join(run_user, "slirpy")
    return f"{TMP}/slirpy-{uid}"


def directory(*, create: bool) -> str | None:
    """The registry directory, made (0700) when *create*; None when it does not exist
    and *create* is false. SetupError (one line) when it is not safely ours."""
    path = directory_path()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SetupError(f"registry directory {path}: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"registry directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"registry directory {path} is not a directory: refusing it")
    if info.st_uid != os.getuid():
        raise SetupError(f"registry directory {path} belongs to uid {info.st_uid}, not to "
                         "us: refusing it")
    if info.st_mode & 0o077:
        try:  # ours, but others may enter it: close it
            os.chmod(path, 0o700)
        except OSError as exc:
            raise SetupError(f"registry directory {path}: {exc.strerror}") from None
    return path


def default_api_socket() -> str:
    """An API socket path in the registry directory for this process: <dir>/<pid>.api."""
    path = directory(create=True)
    assert path is not None  # created above
    return os.path.join(path, f"{os.getpid()}{API_SUFFIX}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered instance: its pid, name if any, and the link to connect to."""

    pid: int
    name: str | None
    link: str  # <dir>/<pid>.sock, or <dir>/<name>.sock when found by name
    socket: str  # the API socket's path, as registered

    def label(self) -> str:
        return f"{self.pid} ({self.name})" if self.name else str(self.pid)


class Registration:
    """This process's entries; `close` removes those still pointing at us."""

    def __init__(self, links: list[tuple[str, str]]) -> None:
        self.links = links  # (link path, what it points to)

    def close(self) -> None:
        for link, target in reversed(self.links):
            try:
                if os.readlink(link) == target:
                    os.unlink(link)
            except OSError:
                pass  # gone already, or out of reach once confined: readers prune it
        self.links = []


def register(api_socket: str, name: str | None) -> Registration:
    """Register this process's *api_socket* as <pid>.sock, and as <name>.sock with a
    name. With a name, SetupError (one line) when the directory is unsafe or the name
    is held by a live instance; without, a warning (the socket works all the same)."""
    if name is not None and name.isdigit():
        raise SetupError(f"--name {name}: a name of digits only would read as a pid")
    pid = os.getpid()
    target = os.path.abspath(api_socket)
    try:
        path = directory(create=True)
        assert path is not None
        pid_link = os.path.join(path, f"{pid}{SUFFIX}")
        _replace_link(pid_link, target)
    except SetupError as exc:
        if name is not None:
            raise
        log.warning("slirpy ctl will not find this instance without -a: %s", exc)
        return Registration([])
    registration = Registration([(pid_link, target)])
    if name is not None:
        try:
            _claim_name(path, name, pid)
        except BaseException:
            registration.close()
            raise
        registration.links.append((os.path.join(path, f"{name}{SUFFIX}"), f"{pid}{SUFFIX}"))
    return registration


def _replace_link(link: str, target: str) -> None:
    """*link* -> *target*, atomically: whatever held our pid before us is dead."""
    temporary = f"{link}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.symlink(target, temporary)
        os.replace(temporary, link)
    except OSError as exc:
        raise SetupError(f"cannot register the API socket as {link}: {exc.strerror}") from None


def _claim_name(path: str, name: str, pid: int) -> None:
    link = os.path.join(path, f"{name}{SUFFIX}")
    for _ in range(2):  # a stale holder is removed once; a racing starter wins
        try:
            os.symlink(f"{pid}{SUFFIX}", link)
            return
        except FileExistsError:
            holder = _entry_for_name(path, name)
            if holder is not None and holder.pid != pid and alive(holder):
                raise SetupError(f"--name {name}: slirpy {holder.pid} already runs under "
                                 f"that name (slirpy ctl --name {name} reaches it)") from None
            _remove(link)
        except OSError as exc:
            raise SetupError(f"cannot register --name {name} as {link}: "
                             f"{exc.strerror}") from None
    raise SetupError(f"--name {name}: another slirpy took that name just now")


def _entry_for_pid(path: str, pid: int, name: str | None = None,
                   link: str | None = None) -> Entry | None:
    pid_link = os.path.join(path, f"{pid}{SUFFIX}")
    try:
        target = os.readlink(pid_link)
    except OSError:
        return None
    return Entry(pid, name, link or pid_link, target)


def _entry_for_name(path: str, name: str) -> Entry | None:
    link = os.path.join(path, f"{name}{SUFFIX}")
    try:
        target = os.readlink(link)
    except OSError:
        return None
    pid_text = target.removesuffix(SUFFIX)
    if not target.endswith(SUFFIX) or not pid_text.isdigit():
        return None  # not a link we make
    entry = _entry_for_pid(path, int(pid_text), name, link)
    return entry or Entry(int(pid_text), name, link, "")  # a dangling name: stale


def alive(entry: Entry) -> bool:
    """Whether the instance behind *entry* runs: its pid exists and its socket takes
    connections (a pid alone may have been reused)."""
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: its socket says more
    if not entry.socket:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(entry.link)
        except OSError as exc:
            return exc.errno not in _DEAD
    return True


def find(*, name: str | None = None, pid: int | None = None) -> Entry | None:
    """The live entry for *name* or *pid*; a stale one is removed, and None returned."""
    path = directory(create=False)
    if path is None:
        return None
    entry = (_entry_for_name(path, name) if name is not None
             else _entry_for_pid(path, pid) if pid is not None else None)
    if entry is None:
        return None
    if alive(entry):
        return entry
    prune(path, entry.pid)
    if name is not None:
        _remove(os.path.join(path, f"{name}{SUFFIX}"))
    return None


def instances() -> list[Entry]:
    """Every live registered instance, by pid (with its name, if any); stale entries
    found on the way are removed."""
    path = directory(create=False)
    if path is None:
        return []
    try:
        files = sorted(os.listdir(path))
    except OSError as exc:
        raise SetupError(f"registry directory {path}: {exc.strerror}") from None
    names: dict[int, str] = {}
    for file in files:
        stem = file.removesuffix(SUFFIX)
        if file.endswith(SUFFIX) and not stem.isdigit():
            entry = _entry_for_name(path, stem)
            if entry is not None:
                names[entry.pid] = stem
    found: list[Entry] = []
    for file in files:
        stem = file.removesuffix(SUFFIX)
        if not (file.endswith(SUFFIX) and stem.isdigit()):
            continue
        entry = _entry_for_pid(path, int(stem), names.get(int(stem)))
        if entry is None:
            continue
        if alive(entry):
            found.append(entry)
        else:
            prune(path, entry.pid)
    for pid, name in names.items():  # names whose pid entry went away
        if all(entry.pid != pid for entry in found):
            _remove(os.path.join(path, f"{name}{SUFFIX}"))
    return sorted(found, key=lambda entry: entry.pid)


def prune(path: str, pid: int) -> None:
    """Remove a dead instance's entries: its pid link, its names, its own API socket."""
    pid_link = os.path.join(path, f"{pid}{SUFFIX}")
    try:
        files = os.listdir(path)
    except OSError:
        files = []
    for file in files:
        if file.endswith(SUFFIX) and not file.removesuffix(SUFFIX).isdigit():
            link = os.path.join(path, file)
            try:
                if os.readlink(link) == f"{pid}{SUFFIX}":
                    _remove(link)
            except OSError:
                pass
    _remove(pid_link)
    api = os.path.join(path, f"{pid}{API_SUFFIX}")
    try:
        if stat.S_ISSOCK(os.lstat(api).st_mode):
            _remove(api)
    except OSError:
        pass


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
