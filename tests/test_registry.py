"""The registry of API sockets (slirpy.observe.registry): where it lives, what it refuses,
how names are held, and how stale entries are told apart and removed."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slirpy.errors import SetupError
from slirpy.observe import registry


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[str]:
    """A socket that takes connections, as a live slirpy's does."""
    path = str(tmp_path / "api.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen(16)
        yield path


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_directory_is_xdg_runtime_dir_slirpy_made_0700(xdg: Path) -> None:
    assert registry.directory(create=False) is None
    assert registry.directory(create=True) == str(xdg)
    assert stat.S_IMODE(xdg.stat().st_mode) == 0o700


def test_directory_without_xdg_run_user_if_ours_else_tmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(registry, "RUN_USER", str(tmp_path / "run-user"))
    monkeypatch.setattr(registry, "TMP", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert registry.directory_path() == f"{tmp_path}/tmp/slirpy-{os.getuid()}"
    (tmp_path / "run-user" / str(os.getuid())).mkdir(parents=True)
    assert registry.directory_path() == f"{tmp_path}/run-user/{os.getuid()}/slirpy"
    assert registry.directory(create=True) == f"{tmp_path}/run-user/{os.getuid()}/slirpy"


def test_directory_open_to_others_is_closed(xdg: Path) -> None:
    xdg.mkdir(mode=0o755)
    os.chmod(xdg, 0o777)
    assert registry.directory(create=True) == str(xdg)
    assert stat.S_IMODE(xdg.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory of another uid needs root")
def test_directory_of_another_user_is_refused(xdg: Path) -> None:
    xdg.mkdir(mode=0o700)
    os.chown(xdg, 4242, -1)
    with pytest.raises(SetupError, match="belongs to uid 4242, not to us: refusing it"):
        registry.directory(create=True)


def test_directory_that_is_a_symlink_is_refused(xdg: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    xdg.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SetupError, match="is not a directory: refusing it"):
        registry.directory(create=True)


def test_register_links_pid_and_name_close_removes_them(xdg: Path, listening: str) -> None:
    registration = registry.register(listening, "web")
    pid = os.getpid()
    assert os.readlink(xdg / f"{pid}.sock") == listening
    assert os.readlink(xdg / "web.sock") == f"{pid}.sock"
    (entry,) = registry.instances()
    assert (entry.pid, entry.name, entry.label()) == (pid, "web", f"{pid} (web)")
    assert registry.find(name="web") == registry.Entry(pid, "web", str(xdg / "web.sock"),
                                                       listening)
    assert registry.find(pid=pid) is not None
    registration.close()
    assert os.listdir(xdg) == []


def test_a_live_name_is_refused_a_stale_one_taken_over(xdg: Path, listening: str) -> None:
    xdg.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        (xdg / f"{holder.pid}.sock").symlink_to(listening)
        (xdg / "web.sock").symlink_to(f"{holder.pid}.sock")
        with pytest.raises(SetupError, match=f"--name web: slirpy {holder.pid} already runs "
                                             "under that name"):
            registry.register(listening, "web")
        assert not (xdg / f"{os.getpid()}.sock").is_symlink(), "nothing half-registered"
    finally:
        holder.communicate(b"")
    registration = registry.register(listening, "web")  # the holder is gone now
    assert os.readlink(xdg / "web.sock") == f"{os.getpid()}.sock"
    registration.close()


def test_digits_only_name_is_refused(xdg: Path, listening: str) -> None:
    with pytest.raises(SetupError, match="a name of digits only would read as a pid"):
        registry.register(listening, "1234")


def test_close_leaves_links_that_point_elsewhere_now(xdg: Path, listening: str) -> None:
    registration = registry.register(listening, None)
    link = xdg / f"{os.getpid()}.sock"
    link.unlink()
    link.symlink_to("/elsewhere")
    registration.close()
    assert os.readlink(link) == "/elsewhere"


def test_stale_entries_are_pruned(xdg: Path, tmp_path: Path, listening: str) -> None:
    xdg.mkdir(mode=0o700)
    gone = dead_pid()
    # A dead pid (with its own socket file and a name), and a live pid whose socket refuses.
    api = xdg / f"{gone}.api"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(api))
    (xdg / f"{gone}.sock").symlink_to(api)
    (xdg / "old.sock").symlink_to(f"{gone}.sock")
    refusing = tmp_path / "refusing.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(refusing))
    (xdg / f"{os.getppid()}.sock").symlink_to(refusing)
    (xdg / "unrelated.txt").write_text("left alone")
    assert registry.instances() == []
    assert sorted(os.listdir(xdg)) == ["unrelated.txt"]


def test_find_of_a_stale_name_removes_it(xdg: Path) -> None:
    xdg.mkdir(mode=0o700)
    gone = dead_pid()
    (xdg / f"{gone}.sock").symlink_to("/nonexistent/api.sock")
    (xdg / "web.sock").symlink_to(f"{gone}.sock")
    assert registry.find(name="web") is None
    assert registry.find(pid=gone) is None
    assert os.listdir(xdg) == []


def test_unsafe_directory_is_a_warning_without_a_name(xdg: Path, listening: str,
                                                      tmp_path: Path) -> None:
    xdg.write_text("not a directory")
    assert registry.register(listening, None).links == []
    with pytest.raises(SetupError, match="is not a directory"):
        registry.register(listening, "web")
