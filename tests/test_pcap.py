"""Packet capture (slirpy.observe.pcap): the file's layout, records both ways, the size
limit (stop, or a ring of two files), write errors that stop the capture and nothing
else, and the capture wired into a real Instance: the driver's tee, the byte counters,
--pcap at start and pcap_start/pcap_stop on the control API (a path, and an fd)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from slirpy.api.commands import Api
from slirpy.config import Config
from slirpy.effects import ToGuest
from slirpy.errors import SetupError
from slirpy.observe.pcap import (FLUSH_BYTES, FLUSH_S, MAGIC_NS, RECORD, SNAPLEN, Capture,
                                 CaptureError, PcapControl, open_files)

GUEST_MAC = "02:00:00:00:00:64"
T0_NS = 1_700_000_000_123_456_789


class Clock:
    def __init__(self) -> None:
        self.ns = T0_NS
        self.mono = 100.0

    def now_ns(self) -> int:
        self.ns += 1000
        return self.ns

    def monotonic(self) -> float:
        return self.mono


def capture_to(path: pathlib.Path, clock: Clock, *, rotate: bool = False,
               size_limit: int | None = None) -> tuple[Capture, list[Capture]]:
    stopped: list[Capture] = []
    capture = Capture(open_files(str(path), rotate), str(path), size_limit=size_limit,
                      on_stop=stopped.append, clock_ns=clock.now_ns, monotonic=clock.monotonic)
    return capture, stopped


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(ts_sec, ts_nsec, frame) of each record, checking incl_len == orig_len."""
    out = []
    at = 24
    while at < len(data):
        sec, nsec, incl, orig = RECORD.unpack_from(data, at)
        assert incl == orig
        at += RECORD.size
        out.append((sec, nsec, data[at:at + incl]))
        at += incl
    assert at == len(data), "a record runs past the end"
    return out


def arp(n: int = 2) -> bytes:
    """An ARP request from the guest for 10.0.2.N (slirpy answers for the gateway, .2)."""
    return bytes(Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=GUEST_MAC, psrc="10.0.2.100", pdst=f"10.0.2.{n}"))


def segment(payload: bytes) -> ToGuest:
    whole = bytes(Ether(dst=GUEST_MAC) / IP(src="192.0.2.1", dst="10.0.2.100")
                  / TCP(sport=80, dport=40000, flags="PA") / payload)
    cut = len(whole) - len(payload)
    return ToGuest(bytearray(whole[:cut]), memoryview(whole)[cut:])


# --- the file -------------------------------------------------------------------------------


def test_file_header_is_classic_pcap_with_nanoseconds_ethernet_and_tcpdump_s_snaplen(
        tmp_path: pathlib.Path) -> None:
    capture, _ = capture_to(tmp_path / "c.pcap", Clock())
    capture.stop()
    data = (tmp_path / "c.pcap").read_bytes()
    assert len(data) == 24
    assert struct.unpack("=IHHiIII", data) == (MAGIC_NS, 2, 4, 0, 0, SNAPLEN, 1)
    assert SNAPLEN == 262144 and MAGIC_NS == 0xA1B23C4D
    assert oct(os.stat(tmp_path / "c.pcap").st_mode & 0o777) == "0o600"


def test_frames_both_ways_are_records_with_nanosecond_times_and_read_back(
        tmp_path: pathlib.Path) -> None:
    clock = Clock()
    capture, _ = capture_to(tmp_path / "c.pcap", clock)
    capture.from_guest(memoryview(arp()))
    big = bytes(range(256)) * 254  # a ~64 KiB offloaded super-segment: one record, unsplit
    capture.to_guest(segment(big))
    capture.to_guest(ToGuest(arp(3)))  # headers only
    assert (capture.frames, capture.bytes) == (3, 2 * len(arp()) + len(segment(big).frame))
    capture.stop()
    data = (tmp_path / "c.pcap").read_bytes()
    got = records(data)
    assert [frame for _, _, frame in got] == [arp(), segment(big).frame, arp(3)]
    assert [(sec * 10**9 + nsec) for sec, nsec, _ in got] == [
        T0_NS + 1000, T0_NS + 2000, T0_NS + 3000]
    packets = rdpcap(str(tmp_path / "c.pcap"))  # scapy reads the nanosecond format
    assert packets[1][TCP].load == big and packets[0][ARP].pdst == "10.0.2.2"


def test_records_are_buffered_until_the_timer_or_the_buffer_fills(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    path = tmp_path / "c.pcap"
    capture, _ = capture_to(path, clock)
    capture.from_guest(memoryview(arp()))
    assert path.stat().st_size == 24  # buffered
    assert capture.next_deadline() == clock.mono + FLUSH_S
    capture.expire(clock.mono + FLUSH_S - 0.01)
    assert path.stat().st_size == 24
    capture.expire(clock.mono + FLUSH_S)
    assert path.stat().st_size == 24 + RECORD.size + len(arp())
    assert capture.next_deadline() is None
    frame = segment(bytes(60000))
    while path.stat().st_size < FLUSH_BYTES:  # full buffers are written without the timer
        capture.to_guest(frame)
    capture.stop()
    assert len(records(path.read_bytes())) == capture.frames


# --- the size limit --------------------------------------------------------------------------


def test_size_limit_without_rotate_stops_before_the_file_passes_it(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.pcap"
    capture, stopped = capture_to(path, Clock(), size_limit=200_000)
    frame = segment(bytes(30000))
    with caplog.at_level(logging.INFO, logger="slirpy.observe.pcap"):
        for _ in range(10):
            capture.to_guest(frame)
    assert stopped == [capture] and not capture.running
    assert capture.stopped == "reached --pcap-size (200000 bytes)"
    assert [r.message for r in caplog.records if "stopped" in r.message] == [
        f"packet capture to {path} stopped: it reached --pcap-size (200000 bytes)"]
    size = path.stat().st_size
    assert size <= 200_000 and len(records(path.read_bytes())) == capture.frames == 6
    capture.to_guest(frame)  # a frame in flight after the stop: ignored
    assert path.stat().st_size == size


def test_rotate_writes_a_ring_of_two_files_each_within_the_limit(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.pcap"
    capture, stopped = capture_to(path, Clock(), rotate=True, size_limit=100_000)
    assert len(capture.ring_fds()) == 2
    for n in range(20):  # 20 frames of ~30 KiB: 3 a file, so the ring turns several times
        capture.to_guest(segment(n.to_bytes(1, "big") * 30000))
    capture.stop()
    assert stopped == [capture] and capture.rotations >= 5
    first, second = path.read_bytes(), pathlib.Path(f"{path}.1").read_bytes()
    assert len(first) <= 100_000 and len(second) <= 100_000
    # The latest frames are in the ring, every file reads back on its own, and they are
    # the last ones written, in order.
    kept = sorted(records(first) + records(second))
    assert [frame[-1] for _, _, frame in kept] == list(range(20 - len(kept), 20))
    assert len(rdpcap(str(path))) + len(rdpcap(f"{path}.1")) == len(kept)


# --- errors -----------------------------------------------------------------------------------


def test_write_error_stops_the_capture_with_one_log_line(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.pcap"
    capture, stopped = capture_to(path, Clock())
    capture.from_guest(memoryview(arp()))
    capture.flush()
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, capture.fds[0])  # the disk fills: the next write fails with ENOSPC
    os.close(full)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            capture.from_guest(memoryview(arp()))
            capture.flush()
    assert [r.getMessage() for r in caplog.records] == [
        f"packet capture to {path} stopped: No space left on device"]
    assert caplog.records[0].levelno == logging.WARNING
    assert stopped == [capture] and capture.stopped == "No space left on device"
    assert len(records(path.read_bytes())) == 1


def test_a_full_device_at_start_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="^/dev/full: No space left on device$"):
        Capture(open_files("/dev/full", False), "/dev/full")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "No such file or directory"),  # its directory is missing
    (lambda p: (p.mkdir(), p)[1], "not a file"),
    (lambda p: (os.mkfifo(p), p)[1], "not a file"),
])
def test_unusable_paths_are_refused_with_the_reason(tmp_path: pathlib.Path, make: Any,
                                                    reason: str) -> None:
    target = make(tmp_path / "x") if reason != "No such file or directory" else \
        tmp_path / "missing" / "x.pcap"
    with pytest.raises(CaptureError) as info:
        open_files(str(target), False)
    assert str(info.value).startswith(f"{target}: ") and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_rotate_opens_both_files_or_neither(tmp_path: pathlib.Path) -> None:
    (tmp_path / "c.pcap.1").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(CaptureError, match="c.pcap.1: "):
        open_files(str(tmp_path / "c.pcap"), True)
    assert len(os.listdir("/proc/self/fd")) == before


# --- wired into an instance --------------------------------------------------------------------


@dataclass
class Wired:
    instance: Any  # slirpy.app.Instance
    api: Api
    guest: socket.socket

    def request(self, execute: str, arguments: dict[str, Any] | None = None,
                fds: list[int] | None = None) -> Any:
        body = {"execute": execute, **({"arguments": arguments} if arguments else {})}
        return json.loads(self.api.handle(json.dumps(body).encode(), fds))

    def arp_exchange(self) -> None:
        """An ARP request from the guest, read by the driver, and the reply it gets."""
        self.guest.send(arp())
        self.instance.driver._on_tap(0)
        assert Ether(self.guest.recv(2000))[ARP].op == 2


@pytest.fixture
def wired(tmp_path: pathlib.Path) -> Iterator[Wired]:
    from slirpy.app import Instance
    from slirpy.runtime.tap import TapDevice

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    guest, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    device = TapDevice(os.dup(tap_end.fileno()))  # not a tap: plain frames
    tap_end.close()
    guest.settimeout(5)
    instance = Instance(Config(resolv_conf=str(resolv), pcap_size=1 << 20), device,
                        secret=b"pcap-test")
    try:
        yield Wired(instance, Api(instance, instance.config.network), guest)
    finally:
        instance.close()
        device.close()
        guest.close()


def test_driver_tees_both_ways_and_counts_bytes(wired: Wired, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.pcap"
    wired.arp_exchange()  # before: counted, not captured
    wired.instance.start_pcap(str(path))
    wired.arp_exchange()
    counters = wired.instance.counters()
    assert counters["bytes"] == {"from_guest": 2 * len(arp()), "to_guest": 2 * 42}
    assert wired.request("pcap_stop") == {"return": {"frames": 2, "bytes": len(arp()) + 42}}
    packets = rdpcap(str(path))
    assert [p[ARP].op for p in packets] == [1, 2]  # the request, then our reply
    assert wired.instance.driver.capture is None and wired.instance.driver.runtime_timed == [
        wired.instance.driver.forward_sockets]


def test_pcap_start_with_a_path_then_a_second_is_refused(wired: Wired,
                                                         tmp_path: pathlib.Path) -> None:
    path = tmp_path / "api.pcap"
    assert wired.request("pcap_start", {"path": str(path)}) == {"return": {"path": str(path)}}
    again = wired.request("pcap_start", {"path": str(tmp_path / "b.pcap")})
    assert again == {"error": {"desc": f"bad request: pcap_start: a capture to {path} is "
                                        f"running (pcap_stop first)"}}
    wired.arp_exchange()
    assert wired.request("pcap_stop")["return"]["frames"] == 2
    assert wired.request("pcap_stop") == {
        "error": {"desc": "bad request: pcap_stop: no capture was started"}}
    assert len(rdpcap(str(path))) == 2


def test_pcap_start_with_an_fd_takes_it_over(wired: Wired, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "fd.pcap"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    fds = [fd]
    assert wired.request("pcap_start", {"fd": True}, fds) == {"return": {"path": "fd"}}
    assert fds == []  # taken: the server must not close it
    wired.arp_exchange()
    assert wired.request("pcap_stop") == {"return": {"frames": 2, "bytes": len(arp()) + 42}}
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the capture
    assert [p[ARP].op for p in rdpcap(str(path))] == [1, 2]


def test_pcap_start_refusals(wired: Wired, tmp_path: pathlib.Path) -> None:
    assert "arguments.path must be" in wired.request("pcap_start")["error"]["desc"]
    assert "pass one fd" in wired.request("pcap_start", {"fd": True}, [])["error"]["desc"]
    reply = wired.request("pcap_start", {"path": str(tmp_path / "no" / "x")})
    assert reply == {"error": {"desc": f"bad request: pcap_start: {tmp_path}/no/x: No such file "
                                       f"or directory"}}
    read_only = os.open(tmp_path / "resolv.conf", os.O_RDONLY)
    fds = [read_only]
    reply = wired.request("pcap_start", {"fd": True}, fds)
    assert reply == {"error": {"desc": "bad request: pcap_start: the fd passed: not open for "
                                       "writing"}}
    assert fds == []
    with pytest.raises(OSError):
        os.fstat(read_only)  # taken over and closed
    # Names no file system takes: an error reply, never an exception in the loop.
    for name in ("x\u0000y", "\ud800"):
        reply = wired.request("pcap_start", {"path": name})
        assert reply["error"]["desc"].endswith("not a file name"), reply


def test_a_passed_fd_is_made_non_blocking(wired: Wired) -> None:
    """A terminal (a character device, which a capture may go to) whose reader stalls
    must never make the loop wait: slirpy writes the fd passed to it without blocking,
    and a write it cannot take stops the capture (the write-error path)."""
    import pty
    master, slave = pty.openpty()
    fds = [slave]
    assert wired.request("pcap_start", {"fd": True}, fds) == {"return": {"path": "fd"}}
    assert os.get_blocking(slave) is False
    assert "frames" in wired.request("pcap_stop")["return"]
    os.close(master)


def test_a_capture_that_stopped_on_its_own_leaves_the_driver_and_says_why(
        wired: Wired, tmp_path: pathlib.Path) -> None:
    wired.instance.start_pcap(str(tmp_path / "c.pcap"))
    capture = wired.instance.pcap.capture
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, capture.fds[0])
    os.close(full)
    wired.arp_exchange()
    capture.flush()
    assert wired.instance.driver.capture is None
    wired.arp_exchange()  # traffic goes on
    assert wired.request("pcap_stop") == {"return": {"frames": 2, "bytes": len(arp()) + 42,
                                                     "stopped": "No space left on device"}}


def test_unwritable_pcap_at_start_is_one_setup_line(wired: Wired, tmp_path: pathlib.Path) -> None:
    with pytest.raises(SetupError) as info:
        wired.instance.start_pcap(str(tmp_path / "no" / "c.pcap"))
    assert str(info.value) == f"--pcap {tmp_path}/no/c.pcap: No such file or directory"


def test_pcap_control_refuses_a_second_start_from_an_fd_and_closes_it(
        wired: Wired, tmp_path: pathlib.Path) -> None:
    control: PcapControl = wired.instance.pcap
    control.start_path(str(tmp_path / "a.pcap"))
    fd = os.open(tmp_path / "b.pcap", os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(CaptureError, match="is running"):
        control.start_fd(fd)
    with pytest.raises(OSError):
        os.fstat(fd)


# --- confined: the seccomp filter lets a rotating capture empty its two files, nothing else


def test_seccomp_allows_ftruncate_on_the_ring_s_fds_only(tmp_path: pathlib.Path) -> None:
    from slirpy.hardening import seccomp
    from tests.test_hardening import in_child

    def filtered() -> dict[str, Any]:
        ring = open_files(str(tmp_path / "c.pcap"), True)
        other = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT, 0o600)
        seccomp.install(seccomp.build(truncate_fds=ring))
        out: dict[str, Any] = {}
        for name, fd in (("ring0", ring[0]), ("ring1", ring[1]), ("other", other)):
            try:
                os.ftruncate(fd, 0)
                out[name] = "ok"
            except OSError as exc:
                out[name] = exc.errno
        capture = Capture(ring, "c.pcap", size_limit=1000)  # rotates, confined
        for _ in range(10):
            capture.from_guest(memoryview(bytes(300)))
        out["rotations"], out["stopped"] = capture.rotations, capture.stopped
        return out

    assert in_child(filtered) == {"ring0": "ok", "ring1": "ok", "other": 1,  # EPERM
                                  "rotations": 3, "stopped": None}  # 3 a file
    assert "ftruncate" not in seccomp.refused_names()
    assert {r.syscall for r in seccomp.allowed_if(1)} >= {"openat"}
    assert "ftruncate" not in {r.syscall for r in seccomp.allowed_if(1)}  # no ring, no call
