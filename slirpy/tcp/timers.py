"""Retransmission timeout estimation (RFC 6298), with Linux's floor instead of 1 s, and
how long a handshake is retried before it is given up."""

from __future__ import annotations

from typing import Final

RTO_INITIAL_S: Final = 1.0  # RFC 6298 (2.1)
RTO_MIN_S: Final = 0.2  # Linux's TCP_RTO_MIN: guests expect Linux's pace, not RFC 6298's 1 s
RTO_MAX_S: Final = 60.0  # RFC 6298 (2.5) allows an upper bound of at least 60 s
# A handshake the other end never completes is given up, after Linux: our SYN-ACK to the
# guest is sent again SYNACK_RETRIES times (tcp_synack_retries) and, while half-open
# connections fill more than half of their cap, only SYNACK_RETRIES_UNDER_PRESSURE times
# (reqsk_timer_handler prunes old requests so, without its count of young ones).
SYNACK_RETRIES: Final = 5  # 1+2+4+8+16 s, and 32 s more for the last: 63 s
SYNACK_RETRIES_UNDER_PRESSURE: Final = 2  # 1+2 s, and 4 s more: 7 s
PRESSURE_MIN_PENDING: Final = 8  # Linux: never "under pressure" below max(8, backlog)/2
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


def give_up_after_s(retries: int) -> float:
    """From the first transmission to giving up, with *retries* retransmissions, the
    timer starting at RTO_INITIAL_S and doubled each time (no RTT sample yet, as in a
    handshake): the last retransmission's wait included."""
    return RTO_INITIAL_S * ((1 << (retries + 1)) - 1)


SYNACK_GIVE_UP_S: Final = give_up_after_s(SYNACK_RETRIES)  # 63 s
SYNACK_GIVE_UP_UNDER_PRESSURE_S: Final = give_up_after_s(SYNACK_RETRIES_UNDER_PRESSURE)  # 7 s
