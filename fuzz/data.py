"""Fuzz input as a stream of decisions: the structure-aware targets read it here.

Like atheris's FuzzedDataProvider, but plain Python, so a target runs without atheris
and a corpus file replays the same everywhere. Reading past the end gives zeros and
empty byte strings, never an error: every input, however short, is a whole program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class FuzzInput:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    @property
    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4).ljust(4, b"\0"), "big")

    def s8(self) -> int:
        value = self.byte()
        return value - 256 if value >= 128 else value

    def take(self, count: int) -> bytes:
        """Up to *count* bytes (fewer at the end of the input)."""
        chunk = self.data[self.pos:self.pos + max(0, count)]
        self.pos += len(chunk)
        return chunk

    def chunk(self, max_len: int) -> bytes:
        """A length-prefixed byte string of at most *max_len* bytes."""
        length = self.u16() % (max_len + 1) if max_len > 0 else 0
        return self.take(length)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk
