"""Retransmission timeout estimation (RFC 6298), with Linux's floor instead of 1 s."""

from __future__ import annotations

from typing import Final

RTO_INITIAL_S: Final = 1.0  # RFC 6298 (2.1)
RTO_MIN_S: Final = 0.2  # Linux's TCP_RTO_MIN: guests expect Linux's pace, not RFC 6298's 1 s
RTO_MAX_S: Final = 60.0  # RFC 6298 (2.5) allows an upper bound of at least 60 s
_ALPHA: Final = 1 / 8
_BETA: Final = 1 / 4


class RtoEstimator:
    def __init__(self) -> None:
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.rto_s = RTO_INITIAL_S
        self.backoffs = 0

    def on_sample(self, rtt_s: float) -> None:
        """A round-trip measured on a segment that was not retransmitted (Karn)."""
        if self.srtt_s is None:  # (2.2)
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:  # (2.3)
            self.rttvar_s = (1 - _BETA) * self.rttvar_s + _BETA * abs(self.srtt_s - rtt_s)
            self.srtt_s = (1 - _ALPHA) * self.srtt_s + _ALPHA * rtt_s
        self.backoffs = 0
        self.rto_s = min(max(self.srtt_s + 4 * self.rttvar_s, RTO_MIN_S), RTO_MAX_S)

    def on_timeout(self) -> None:
        """(5.5): back off the timer."""
        self.backoffs += 1
        self.rto_s = min(self.rto_s * 2, RTO_MAX_S)
