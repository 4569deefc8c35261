"""The control socket's file handling and reading rules (a unix socket in tmp_path)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from slirpy.api.commands import MAX_REQUEST
from slirpy.api.server import ApiServer
from slirpy.errors import SetupError
from slirpy.runtime.loop import EventLoop


def serve_until_closed(loop: EventLoop, server: ApiServer, client: socket.socket) -> bytes:
    """Run the loop until the server closed *client*'s connection; the reply."""
    reply = b""
    client.setblocking(False)
    for _ in range(200):
        loop.wait(loop.now() + 0.01)
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            continue
        if not chunk:
            return reply
        reply += chunk
    raise AssertionError("no reply")


@pytest.fixture
def loop() -> EventLoop:
    return EventLoop()


def test_a_path_too_long_for_a_unix_socket_is_an_error(loop: EventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / ("x" * 120))
    with pytest.raises(SetupError, match="too long for a unix socket"):
        ApiServer(path, loop, lambda request, fds: b"")


def test_stale_file_replaced_and_mode_0600(loop: EventLoop, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("stale")
    server = ApiServer(str(path), loop, lambda request, fds: b"{}")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    server.close()
    assert not path.exists()


@pytest.mark.parametrize("request_bytes, half_close, want", [
    (b'{"a": 1}', True, b"got:" + b'{"a": 1}'),
    (b'{"a": 1}', False, b"got:" + b'{"a": 1}'),  # whole JSON: no EOF needed
    (b"not json", True, b"got:not json"),  # EOF: the handler decides
    (b" " * MAX_REQUEST, False, b'{"error":{"desc":"bad request: too large message"}}'),
])
def test_reading_rules(loop: EventLoop, tmp_path: Path, request_bytes: bytes,
                       half_close: bool, want: bytes) -> None:
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, lambda request, fds: b"got:" + request)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(request_bytes)
    if half_close:
        client.shutdown(socket.SHUT_WR)
    assert serve_until_closed(loop, server, client) == want
    client.close()
    server.close()


def test_a_silent_client_is_dropped_at_its_deadline(loop: EventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = ApiServer(path, loop, lambda request, fds: b"")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    loop.wait(loop.now() + 0.05)
    assert len(server.clients) == 1
    deadline = server.next_deadline()
    assert deadline is not None
    server.expire(deadline)
    assert not server.clients
    assert client.recv(10) == b""
    client.close()
    server.close()
