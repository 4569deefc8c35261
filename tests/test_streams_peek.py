"""The host byte stream of a guest's connection, in the kernel: peek, consume, rewind.

HostStreams keeps no copy of what it carries to the guest: bytes stay in the host
socket until the guest acknowledges them, read with MSG_PEEK at the kernel's peek
offset, dropped with MSG_TRUNC once acknowledged. These tests hold a real loopback TCP
connection and check, byte by byte, that every read starts where the core expects: at
the first byte not yet sent (snd_nxt), or after a rewind at the first one not yet
acknowledged (snd_una), including the case where the guest acknowledges more than was
sent again since the rewind (the kernel stops the offset at 0).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from slirpy.config import Config
from slirpy.events import Event, HostData
from slirpy.flows.key import FlowKey
from slirpy.runtime.loop import EventLoop
from slirpy.runtime.streams import HostStreams
from slirpy.wire.ipv4 import IpProto

FLOW = FlowKey(IpProto.TCP, bytes([10, 0, 2, 100]), 40000, bytes([192, 0, 2, 1]), 80)
DATA = bytes(range(251)) * 200  # a prime period: no two nearby offsets hold the same byte


@pytest.fixture
def pair() -> Iterator[tuple[HostStreams, socket.socket]]:
    """HostStreams carrying FLOW on a loopback connection; the far end sends what it wants."""
    loop = EventLoop()
    streams = HostStreams(Config(), loop, lambda event: None)
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
    HostStreams.prepare(ours)
    ours.setblocking(False)
    streams.adopt(FLOW, ours)
    try:
        yield streams, theirs
    finally:
        streams.close_all()
        theirs.close()
        loop.close()


def read(streams: HostStreams, limit: int) -> bytes:
    for _ in range(1000):  # loopback delivery is quick but not synchronous
        event: Event | None = streams.read(FLOW, limit)
        if event is not None:
            assert isinstance(event, HostData)
            return bytes(event.data)
    raise AssertionError("nothing to read")


def read_all(streams: HostStreams, nbytes: int) -> bytes:
    """Peek until *nbytes* came, asking for more each time: the last read drains."""
    got = b""
    while len(got) < nbytes:
        got += read(streams, 1 << 20)
    return got


def test_reads_continue_after_consumes(pair: tuple[HostStreams, socket.socket]) -> None:
    streams, theirs = pair
    theirs.sendall(DATA[:100])
    assert read_all(streams, 100) == DATA[:100]
    streams.consume(FLOW, 60)  # snd_una = 60, snd_nxt = 100
    theirs.sendall(DATA[100:200])
    assert read_all(streams, 100) == DATA[100:200]
    streams.rewind(FLOW)  # from snd_una = 60
    assert read(streams, 5) == DATA[60:65]


def test_acknowledged_beyond_a_rewind(pair: tuple[HostStreams, socket.socket]) -> None:
    """Bytes sent before a rewind arrive after all: the guest acknowledges past what was
    sent again. The next read must start after them, not inside them."""
    streams, theirs = pair
    theirs.sendall(DATA[:40])
    assert read_all(streams, 40) == DATA[:40]
    streams.consume(FLOW, 10)  # snd_una = 10
    streams.rewind(FLOW)  # snd_nxt = 10
    assert read(streams, 5) == DATA[10:15]  # sent again: 10..15
    streams.consume(FLOW, 20)  # the old 10..30 is acknowledged: snd_una = snd_nxt = 30
    assert read(streams, 10) == DATA[30:40]


def test_graceful_close_sends_a_fin(pair: tuple[HostStreams, socket.socket]) -> None:
    streams, theirs = pair
    theirs.sendall(DATA[:300])
    assert read_all(streams, 300) == DATA[:300]
    streams.consume(FLOW, 300)
    streams.close(FLOW, reset=False)
    theirs.settimeout(5)
    assert theirs.recv(16) == b""  # a FIN, not ECONNRESET
