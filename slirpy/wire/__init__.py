"""Bytes to headers and back: pure functions, no state, no I/O.

Parsers are `parse` classmethods returning NamedTuple views whose payload is a
memoryview slice of the input; they check every length before trusting a field and
raise only `Malformed(reason)`, the reason being a short, stable counter key.
Builders are `build_<header>(buf, offset, ...)` writing into a preallocated buffer
and returning the offset after what they wrote.
"""


class Malformed(Exception):
    """A frame we will not process; `reason` becomes a drop counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
