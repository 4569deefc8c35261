"""Sequence number arithmetic modulo 2**32 (RFC 9293 3.4; RFC 1982 serial numbers)."""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
_HALF: Final = 1 << 31


def seq_add(a: int, n: int) -> int:
    return (a + n) % MOD


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed distance, for numbers less than 2**31 apart."""
    d = (a - b) % MOD
    return d - MOD if d >= _HALF else d


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0
