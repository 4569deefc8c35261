"""Packet capture: every frame on the guest link, both ways, as a pcap file.

The format is libpcap's classic savefile (what `tcpdump -w` writes, what Wireshark,
tcpdump and scapy read): nanosecond timestamps (magic 0xa1b23c4d), LINKTYPE_ETHERNET and
tcpdump's snap length, 262144 bytes. Frames are recorded as the guest link carries them,
so a record is never cut: with the tap's offloads on (virtio-net header), a TCP
super-segment of up to 64 KiB is one record, not split to the MTU, and a frame whose
checksum the receiving kernel completes (NEEDS_CSUM) carries only the pseudo-header sum
in its checksum field, as a capture on a veth with offloads shows it. The virtio-net
header itself is not recorded. Frames from the guest are recorded before the core sees
them, frames to the guest before they are written to the tap.

Writing never holds the loop for long: records are gathered in a buffer, written to the
file when it holds FLUSH_BYTES or FLUSH_S after its first record, and when the capture
stops. A capture goes to a regular file or a device (/dev/null), never a pipe or a
socket, whose reader could stall the guest link.

With a size limit, a record that would take the file past it stops the capture, or, with
rotate, moves it to the other of two files, emptied first: a ring of two, as `tcpdump -C
SIZE -W 2`, so FILE and FILE.1 hold at most 2 x SIZE, the latest traffic, and the disk
never fills. Both files are opened at start: under --enable-sandbox their paths are out
of reach afterwards, and under --enable-seccomp nothing may be opened for writing (the
filter allows ftruncate on exactly these two fds, to empty them).

Any write error (ENOSPC, EDQUOT, EIO, EFBIG) stops the capture with one log line; the
guest link carries on.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from slirpy.effects import ToGuest
from slirpy.runtime.driver import Driver

log = logging.getLogger(__name__)

MAGIC_NS: Final = 0xA1B23C4D  # nanosecond timestamps (libpcap's NSEC_TCPDUMP_MAGIC)
VERSION: Final = (2, 4)
SNAPLEN: Final = 262144  # tcpdump's default: above any frame, so no record is cut
LINKTYPE_ETHERNET: Final = 1
# Host byte order, as libpcap writes it: readers tell it from the magic.
FILE_HEADER: Final = struct.Struct("=IHHiIII")  # magic, version, thiszone, sigfigs, snaplen, type
RECORD: Final = struct.Struct("=IIII")  # ts_sec, ts_nsec, captured length, length on the wire
FLUSH_BYTES: Final = 256 * 1024
FLUSH_S: Final = 0.5
_BUFFER_BYTES: Final = FLUSH_BYTES + 128 * 1024  # room for a last record past FLUSH_BYTES
FILE_MODE: Final = 0o600  # the guest's traffic, passwords and all: its owner's only
_NS: Final = 1_000_000_000


class CaptureError(Exception):
    """A capture that cannot start; the text is one line (the OS's reason)."""


def file_header() -> bytes:
    return FILE_HEADER.pack(MAGIC_NS, *VERSION, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def ring_paths(path: str, rotate: bool) -> list[str]:
    """The files a capture to *path* writes: *path*, and *path*.1 when it rotates."""
    return [path, f"{path}.1"] if rotate else [path]


def open_files(path: str, rotate: bool) -> list[int]:
    """Open (create, empty) the capture's files for writing; CaptureError with the reason."""
    fds: list[int] = []
    try:
        for name in ring_paths(path, rotate):
            try:
                if not _writable_kind(os.stat(name).st_mode):
                    raise CaptureError(f"{name}: {_KIND_REFUSED}")
            except FileNotFoundError:
                pass
            # O_NONBLOCK: a FIFO made in between fails (ENXIO) instead of waiting for a
            # reader; for a file it changes nothing.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOCTTY | os.O_NONBLOCK, FILE_MODE)
            fds.append(fd)
            check_fd(fd, name)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise CaptureError(f"{exc.filename or path}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte, or a lone surrogate, in the name
        for fd in fds:
            os.close(fd)
        raise CaptureError(f"{path!r}: not a file name") from None
    except CaptureError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


_KIND_REFUSED: Final = ("not a file: a capture goes to a file, not a pipe or socket, whose "
                        "reader could stall the guest link")


def _writable_kind(mode: int) -> bool:
    return not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISDIR(mode))


def check_fd(fd: int, name: str) -> None:
    """CaptureError unless *fd* is open for writing on a file or a device."""
    try:
        mode = os.fstat(fd).st_mode
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise CaptureError(f"{name}: {exc.strerror or exc}") from None
    if not _writable_kind(mode):
        raise CaptureError(f"{name}: {_KIND_REFUSED}")
    if access == os.O_RDONLY:
        raise CaptureError(f"{name}: not open for writing")


def _write_all(fd: int, data: bytes | memoryview) -> int:
    """Write all of *data* (a regular file writes short only when it is about to fail)."""
    view = memoryview(data)
    total = len(view)
    while view:
        written = os.write(fd, view)
        if not written:
            raise OSError(errno.EIO, "nothing written")
        view = view[written:]
    return total


class Capture:
    """One capture: records gathered in a buffer, written to one file or a ring of two.

    Takes ownership of *fds* (closed when it stops). The file header is written at once,
    so a file that cannot take even that (a full disk) is a CaptureError here.
    *on_stop* is told when the capture stops, whether asked to or on its own.
    """

    def __init__(self, fds: Sequence[int], name: str, *, size_limit: int | None = None,
                 on_stop: Callable[[Capture], None] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.fds = list(fds)
        self.name = name
        self.size_limit = size_limit
        self.on_stop = on_stop
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self.current = 0  # the index in fds of the file written now
        self.file_bytes = 0  # in the current file
        self.frames = 0
        self.bytes = 0  # frame bytes recorded (what the counters call bytes), not headers
        self.rotations = 0
        self.buffer = bytearray(_BUFFER_BYTES)
        self.fill = 0
        self.flush_at: float | None = None
        self.stopped: str | None = None  # why, once stopped
        try:
            self.file_bytes = _write_all(self.fds[0], file_header())
        except OSError as exc:
            for fd in self.fds:
                os.close(fd)
            raise CaptureError(f"{name}: {exc.strerror or exc}") from None

    # --- the driver's tee (runtime.driver.FrameCapture) ---------------------------------------

    def from_guest(self, frame: memoryview) -> None:
        self._record(frame, b"", len(frame))

    def to_guest(self, frame: ToGuest) -> None:
        self._record(frame.headers, frame.payload, len(frame.headers) + len(frame.payload))

    def _record(self, head: bytes | bytearray | memoryview, tail: bytes | bytearray | memoryview,
                length: int) -> None:
        if self.stopped is not None:
            return
        size = RECORD.size + length
        if (self.size_limit is not None and self.file_bytes + self.fill + size > self.size_limit
                and not self._next_file(size)):
            return
        if self.fill + size > len(self.buffer):
            if not self.flush():
                return
            if size > len(self.buffer):  # larger than any tap frame; kept correct anyway
                self.buffer = bytearray(size)
        ns = self._clock_ns()
        at = self.fill
        RECORD.pack_into(self.buffer, at, ns // _NS, ns % _NS, length, length)
        at += RECORD.size
        self.buffer[at:at + len(head)] = head
        at += len(head)
        if tail:
            self.buffer[at:at + len(tail)] = tail
            at += len(tail)
        self.fill = at
        self.frames += 1
        self.bytes += length
        if self.fill >= FLUSH_BYTES:
            self.flush()
        elif self.flush_at is None:
            self.flush_at = self._monotonic() + FLUSH_S

    # --- the runtime's timer (runtime.driver.RuntimeTimed) -------------------------------------

    def next_deadline(self) -> float | None:
        return self.flush_at

    def expire(self, now: float) -> None:
        if self.flush_at is not None and self.flush_at <= now:
            self.flush()

    # --- files -----------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write what the buffer holds; False if the capture has stopped (on an error)."""
        self.flush_at = None
        if not self.fill:
            return self.stopped is None
        with memoryview(self.buffer) as view:
            data, self.fill = view[:self.fill], 0
            with data:
                return self._write(data)

    def _write(self, data: bytes | memoryview) -> bool:
        try:
            self.file_bytes += _write_all(self.fds[self.current], data)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO, EFBIG, EAGAIN on a device
            self._fail(exc.strerror or str(exc))
            return False
        return True

    def _next_file(self, size: int) -> bool:
        """The size limit is reached: go on in the other file of the ring, or stop."""
        if not self.flush():
            return False
        limit = self.size_limit
        if len(self.fds) < 2:
            log.info("packet capture to %s stopped: it reached --pcap-size (%d bytes)",
                     self.name, limit)
            self._stop(f"reached --pcap-size ({limit} bytes)")
            return False
        self.current = 1 - self.current
        fd = self.fds[self.current]
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError as exc:
            self._fail(f"cannot empty the next file: {exc.strerror or exc}")
            return False
        self.file_bytes = 0
        self.rotations += 1
        log.debug("packet capture: rotated to file %d of the ring", self.current)
        if not self._write(file_header()):
            return False
        if limit is not None and self.file_bytes + size > limit:
            self._fail(f"a frame larger than --pcap-size ({limit} bytes)")
            return False
        return True

    def _fail(self, reason: str) -> None:
        log.warning("packet capture to %s stopped: %s", self.name, reason)
        self._stop(reason)

    def stop(self) -> None:
        """Write what is buffered, close the files."""
        if self.stopped is None:
            self.flush()
            self._stop("stopped")

    def _stop(self, reason: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        self.fill = 0
        self.flush_at = None
        for fd in self.fds:
            os.close(fd)
        if self.on_stop is not None:
            self.on_stop(self)

    @property
    def running(self) -> bool:
        return self.stopped is None

    def ring_fds(self) -> list[int]:
        """The fds a rotation empties (the seccomp filter allows ftruncate on these)."""
        return list(self.fds) if len(self.fds) > 1 and self.running else []


class PcapControl:
    """The one capture an instance runs at a time: --pcap at start, or pcap_start and
    pcap_stop on the control socket. Only a running capture sits on the driver, so with
    none the data path pays one `is None` test per frame."""

    def __init__(self, driver: Driver, *, size_limit: int | None = None) -> None:
        self.driver = driver
        self.size_limit = size_limit
        self.capture: Capture | None = None  # the latest: running, or stopped on its own

    def start_path(self, path: str, *, rotate: bool = False) -> None:
        """Capture to *path* (and *path*.1 with *rotate*); CaptureError with the reason."""
        self._check_idle()
        fds = open_files(path, rotate)
        self._attach(Capture(fds, path, size_limit=self.size_limit, on_stop=self._detach))

    def start_fd(self, fd: int) -> None:
        """Capture to *fd* (passed over the control socket), taking it over whatever
        happens (closed if refused); it never rotates (no second file): it stops at the
        size limit."""
        try:
            self._check_idle()
            check_fd(fd, "the fd passed")
            # A terminal or a device may be slow to take a write: never wait for it (a
            # write it cannot take stops the capture). Ours alone: the client closed its copy.
            os.set_blocking(fd, False)
        except CaptureError:
            os.close(fd)
            raise
        self._attach(Capture([fd], "the fd passed", size_limit=self.size_limit,
                             on_stop=self._detach))

    def stop(self) -> dict[str, Any] | None:
        """The capture's counts (and why, if it stopped on its own); None if none ran."""
        capture, self.capture = self.capture, None
        if capture is None:
            return None
        was_running = capture.running
        capture.stop()
        result: dict[str, Any] = {"frames": capture.frames, "bytes": capture.bytes}
        if not was_running:
            result["stopped"] = capture.stopped
        return result

    def ring_fds(self) -> list[int]:
        return self.capture.ring_fds() if self.capture is not None else []

    def close(self) -> None:
        if self.capture is not None:
            self.capture.stop()

    def _check_idle(self) -> None:
        if self.capture is not None and self.capture.running:
            raise CaptureError(f"a capture to {self.capture.name} is running (pcap_stop first)")

    def _attach(self, capture: Capture) -> None:
        self.capture = capture
        self.driver.capture = capture
        self.driver.runtime_timed.append(capture)
        log.info("packet capture to %s started", capture.name)

    def _detach(self, capture: Capture) -> None:
        if self.driver.capture is capture:
            self.driver.capture = None
        if capture in self.driver.runtime_timed:
            self.driver.runtime_timed.remove(capture)
