"""The guest's frames, read from and written to the tap fd.

One read() returns one frame and one writev() sends one: the tap keeps frame
boundaries. The fd is non-blocking; a wake-up reads frames in a batch until the
tap is empty or the batch is full, so other fds get their turn under load.
A test-only drop rate (there is no netem qdisc here) loses frames on purpose in
both directions, to prove that the protocols above recover.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections import Counter
from typing import Final, Protocol

log = logging.getLogger(__name__)

MAX_FRAME: Final = 65536 + 14 + 4


class FrameDevice(Protocol):
    """Where guest frames come from and go to: a tap fd, a socketpair in tests."""

    def fileno(self) -> int: ...
    def read_frames(self, limit: int) -> list[bytes]: ...
    def write_frame(self, headers: bytes | bytearray | memoryview,
                    payload: bytes | bytearray | memoryview) -> None: ...


class TapDevice:
    def __init__(self, fd: int, *, drop_rate: float = 0.0, seed: int | None = None) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.drop_rate = drop_rate
        self._random = random.Random(seed)
        self.errors: Counter[str] = Counter()

    def fileno(self) -> int:
        return self.fd

    def read_frames(self, limit: int) -> list[bytes]:
        frames = []
        for _ in range(limit):
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except BlockingIOError:
                break
            if not frame:
                break
            if self.drop_rate and self._random.random() < self.drop_rate:
                continue
            frames.append(frame)
        return frames

    def write_frame(self, headers: bytes | bytearray | memoryview,
                    payload: bytes | bytearray | memoryview) -> None:
        if self.drop_rate and self._random.random() < self.drop_rate:
            return
        try:
            os.writev(self.fd, (headers, payload) if payload else (headers,))
        except OSError as exc:
            # EIO: the guest has not brought the link up yet; the frame is lost, as on a wire.
            reason = errno.errorcode.get(exc.errno or 0, "error").lower()
            self.errors[f"tap-write-{reason}"] += 1
            log.debug("tap write failed: %s", exc)

    def close(self) -> None:
        os.close(self.fd)
