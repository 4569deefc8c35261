"""TCP towards the guest, with the host socket as the only buffer.

Model (after passt): our end of the guest's connection is terminated here and
continued by an ordinary host socket.
- Guest -> host: an in-order segment's payload goes straight to send() on the host
  socket; we ACK only what the kernel took, so a short write makes the guest send
  the rest again. The window we advertise is the free space of the socket's send
  buffer, so short writes are rare. Segments beyond a hole are held in a small
  bounded reorder store (per connection and for the whole stack) and sent on once
  the hole fills: Linux guests do reorder their own retransmissions, and a sender in
  loss recovery waits a whole, backed-off RTO before resending what it already
  resent once. A duplicate ACK asks for the missing bytes; past the bounds, data is
  dropped and the guest sends it again.
- Our ACK rides on the reply (a delayed ACK, RFC 9293 3.8.6.3, RFC 1122 4.2.3.2, after
  Linux's quick-ack and ping-pong modes): once a connection answers the guest's data
  with data of its own, a lone small PSH segment from the guest (a request) is not
  ACKed at once; the host's reply, or whatever we send first, carries the ACK, and a
  pure ACK goes out only if nothing did within ACK_DELAY_S. Everything else, bulk
  included, is ACKed at once (see `_may_delay_ack`).
- Host -> guest: bytes stay in the host socket until the guest ACKs them. We ask
  the runtime to MSG_PEEK (a Peek effect) at SO_PEEK_OFF (which sits at snd_nxt -
  snd_una) as many bytes as the guest's window has room for, cut what comes back
  into segments, and acknowledged bytes are dropped with MSG_TRUNC. A read is asked
  for when the socket reports data, when the window opens, and after a rewind. A
  retransmission is "rewind the peek offset to snd_una and send again" (go-back-N,
  after a timeout or three duplicate ACKs). No retransmit queue: memory is bounded by
  the kernel's socket buffers.
- The handshake waits for the host: the guest's SYN starts a non-blocking connect()
  and the SYN-ACK goes out only once it succeeded; a refusal becomes an RST, an
  unreachable network an ICMP error, a timeout an RST. So the guest's client sees
  what it would see on a real network. A SYN-ACK the guest never answers is given up
  as Linux gives up a request (tcp_synack_retries: 63 s), silently, and the host's end
  is reset.
- FIN maps to shutdown(SHUT_WR) and EOF; RST to an SO_LINGER-zero close and back.
Not done here: sockets, timers, epoll (the runtime); SACK, timestamps, urgent data.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import struct
from typing import Final

from slirpy.effects import (Close, Consume, Effect, Peek, Rewind, Send, ShutdownWrite,
                            ToGuest, WatchWritable)
from slirpy.flows.key import FlowKey, FlowRecord, Traffic
from slirpy.guest import GuestLink, TcpTemplate
from slirpy.tcp.seq import MOD as SEQ_MOD, seq_add, seq_diff, seq_le, seq_lt
from slirpy.tcp.timers import SYNACK_RETRIES, RtoEstimator
from slirpy.udp import unreachable as icmp_unreachable
from slirpy.wire.icmp import UnreachCode
from slirpy.wire.ipv4 import HEADER_LEN as IP_LEN, MAX_DATAGRAM, IpProto
from slirpy.wire.tcp import (ACK, CHECKSUM_OFFSET as TCP_CHECKSUM_OFFSET, FIN,
                             HEADER_LEN as TCP_LEN, PSH, RST, SYN, TcpHeader, build_tcp,
                             sack_option, syn_options)

log = logging.getLogger(__name__)

OUR_WSCALE: Final = 7  # windows up to 8 MiB: Linux's tcp_wmem max here is 4 MiB
MAX_WINDOW: Final = 0xFFFF
DEFAULT_GUEST_MSS: Final = 536  # RFC 9293 3.7.1: when the SYN carries no MSS option
PEEK_MAX_BYTES: Final = 1 << 20  # one peek at most: a burst towards the guest
MAX_RETRIES: Final = 12  # then the guest is gone: reset (Linux's tcp_retries2 is 15)
MAX_SYN_RETRIES: Final = 5  # a forwarded SYN: 1+2+4+8+16+32 s, then the client is reset
# (the guest's own SYN gets SYN-ACKs for as long: see SYNACK_RETRIES in slirpy.tcp.timers)
DUPACK_THRESHOLD: Final = 3  # RFC 5681 3.2
PERSIST_MAX_S: Final = 60.0
# How long an ACK may wait for a reply to ride on. Long enough for the replies whose ACKs
# cost CPU (a fast exchange needs a fast server: one on the host or the LAN answers in
# well under 10 ms); short, as a missed delay costs the guest: its RTT samples grow by
# it, and a guest that writes twice before it reads, under Nagle's algorithm, stalls for
# it once (see `never_delay`). Under Linux's minimum (TCP_DELACK_MIN, 40 ms), so no
# guest waits longer than for a Linux peer, and far under the guest's RTO floor (200 ms)
# and its tail loss probe for a lone segment (2 srtt + 200 ms): the guest never
# retransmits for want of our ACK.
ACK_DELAY_S: Final = 0.01
_LONG_AGO: Final = float("-inf")
REORDER_MAX_BYTES: Final = 512 * 1024  # per connection: data held beyond a hole
# An IPv4 datagram's worth of TCP payload (IPv6's would be 20 bytes more: one size serves).
GSO_MAX_PAYLOAD: Final = MAX_DATAGRAM - IP_LEN - TCP_LEN
_PROTO: Final = int(IpProto.TCP)  # a plain int: an enum member's lookup costs per segment
ISN_CLOCK_HZ: Final = 250_000  # RFC 6528: the ISN clock ticks every 4 microseconds


class State(enum.Enum):
    """Our end of the guest's connection, named as in RFC 9293, section 3.3.2."""

    CONNECTING = "CONNECTING"  # guest SYN seen, host connect() under way (not in the RFC)
    SYN_SENT = "SYN-SENT"  # a forwarded host connection: our SYN is out to the guest
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"  # host sent EOF; our FIN not yet acknowledged
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"  # guest sent FIN; host socket shut for writing
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    CLOSED = "CLOSED"


# Tuples, not sets: a set hashes an Enum member in Python (Enum.__hash__) on every
# segment, a tuple compares identities.
_RECEIVING: Final = (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)
_SENDING: Final = (State.ESTABLISHED, State.CLOSE_WAIT)


_ISN_PORTS: Final = struct.Struct("!BHH")  # protocol, guest port, remote port


class InitialSequence:
    """RFC 6528's initial sequence numbers: a keyed hash of the connection's addresses
    and ports (packed), plus a 4 microsecond clock. The key is set once; each number
    copies the keyed hash state rather than keying a new one."""

    def __init__(self, secret: bytes) -> None:
        self._keyed = hashlib.blake2s(key=secret, digest_size=4)

    def for_connection(self, key: FlowKey, now: float) -> int:
        hashed = self._keyed.copy()
        hashed.update(key.guest_addr + key.remote_addr
                      + _ISN_PORTS.pack(key.proto, key.guest_port, key.remote_port))
        return (int.from_bytes(hashed.digest(), "big") + int(now * ISN_CLOCK_HZ)) % SEQ_MOD


class ReorderBudget:
    """Bytes held out of order by all connections together, under one cap."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def take(self, nbytes: int) -> bool:
        if self.used_bytes + nbytes > self.limit_bytes:
            return False
        self.used_bytes += nbytes
        return True

    def give_back(self, nbytes: int) -> None:
        self.used_bytes -= nbytes


class TcpCounters:
    """Counts of all connections of one link, kept by each as it goes: retransmissions
    (timeouts and fast retransmits, SYN and SYN-ACK included), RSTs sent to the guest
    and RSTs from the guest that reset a connection."""

    __slots__ = ("retransmits", "resets_sent", "resets_received")

    def __init__(self) -> None:
        self.retransmits = 0
        self.resets_sent = 0
        self.resets_received = 0


class TcpConn:
    """One connection between the guest and a host socket: its state machine (RFC 9293
    3.3.2) and both sequence spaces, turning each event into segments for the guest and
    effects for the runtime.

    Owns the state, the sequence and window variables, the timers (retransmission or
    persist, and a delayed ACK's: `deadline` is the earlier, the one `TcpFlows` queues)
    and the estimator, the wanted read, and the bounded reorder store for guest data
    beyond a hole (its share of the stack-wide ReorderBudget).

    Never touches a socket (it asks for Send, Peek, Consume, Rewind and the like as
    effects), never keeps a copy of host bytes (they stay in the host socket until the
    guest acknowledges them) nor of guest bytes but the reorder store, and never reads
    a clock: every event brings *now*, and the deadline is only stored for `TcpFlows`'
    timer heap to act on.
    """

    # Every attribute, named here: a new one must be added. Without slots, CPython (3.11)
    # keeps at most 29 attributes in an instance's compact shared-key values; past that
    # each connection gets a dict of its own (1.5 KiB), slower to make and to read.
    __slots__ = ("key", "link", "template", "state", "irs", "rcv_nxt", "iss", "snd_una",
                 "snd_nxt", "snd_max", "snd_wnd", "guest_wscale", "our_wscale", "send_mss",
                 "our_mss", "send_space", "fin_seq", "pending_fin", "short_write", "budget",
                 "held", "held_bytes", "read_wanted", "reader_waits", "dupacks", "rto",
                 "rtt_probe", "rto_deadline", "ack_deadline", "deadline", "quick_ack",
                 "pingpong", "delay_missed", "never_delay", "data_at", "space_advertised",
                 "created", "packets_from_guest", "packets_to_guest", "end_reason",
                 "end_error", "counters", "guest_fin", "sack", "last_held")

    def __init__(self, key: FlowKey, link: GuestLink, syn: TcpHeader | None, iss: int,
                 our_mss: int, now: float, budget: ReorderBudget | None = None,
                 counters: TcpCounters | None = None) -> None:
        """A connection the guest opens with *syn*; with None, one we open (see `active`)."""
        self.key = key
        self.link = link
        self.template: TcpTemplate | None = None  # made for the first segment it can build
        self.state = State.CONNECTING if syn is not None else State.SYN_SENT
        self.irs = syn.seq if syn is not None else 0
        self.rcv_nxt = seq_add(self.irs, 1)
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss  # the highest snd_nxt so far: a rewind moves snd_nxt back
        self.snd_wnd = syn.window if syn is not None else 0  # a SYN's is never scaled
        scaled = syn is None or syn.wscale is not None
        self.guest_wscale = syn.wscale if syn is not None and syn.wscale is not None else 0
        self.our_wscale = OUR_WSCALE if scaled else 0
        self.send_mss = min(syn.mss or DEFAULT_GUEST_MSS, our_mss) if syn is not None \
            else our_mss
        self.our_mss = our_mss
        self.send_space = 0  # free space of the host socket's send buffer
        self.fin_seq: int | None = None  # our FIN's sequence number, once sent
        self.pending_fin = False  # the guest's FIN rides on the segment being sent
        self.short_write = False
        self.budget = budget or ReorderBudget(REORDER_MAX_BYTES)
        self.held: dict[int, bytes] = {}  # sequence number -> data beyond rcv_nxt
        self.held_bytes = 0
        # SACK (RFC 2018): whether both ends offered it (we offer it on our SYN: an active
        # connection learns the guest's answer from its SYN-ACK), and where the latest
        # segment held beyond a hole starts (its block is reported first).
        self.sack = syn.sack_ok if syn is not None else True
        self.last_held = 0
        self.read_wanted = False  # a Peek is due once this event is handled
        self.reader_waits = False  # the guest's window stopped reading: ask again when it opens
        self.dupacks = 0
        self.rto = RtoEstimator()
        self.rtt_probe: tuple[int, float] | None = None  # (sequence to be acked, sent at)
        # Timers: the retransmission (or persist, or connect) timer, the delayed ACK's (set
        # while an ACK is owed: cleared by any segment that carries it) and the earlier of
        # the two, the one deadline TcpFlows' heap acts on (see `_arm`, `_ack_carried`).
        self.rto_deadline: float | None = None
        self.ack_deadline: float | None = None
        self.deadline: float | None = None
        self.quick_ack = False  # the data being sent is to be ACKed at once, not delayed
        self.pingpong = False  # request/response seen: small requests' ACKs may wait
        self.delay_missed = False  # a delayed ACK went out on its timer; no reply since
        self.never_delay = False  # the guest waited for a delayed ACK: no more delays
        self.data_at = _LONG_AGO  # when the host socket last took the guest's data
        self.space_advertised = 0  # send_space as the last ACK we sent advertised it
        self.created = now
        # For the flow's report (slirpy.reports): segments each way (a super-segment
        # counts once, as a frame on the link), and why it ended, set where it ends.
        self.packets_from_guest = 1 if syn is not None else 0
        self.packets_to_guest = 0
        self.end_reason = ""
        self.end_error = ""
        self.guest_fin = False  # the guest's FIN was taken (it holds a sequence number)
        self.counters = counters or TcpCounters()

    def __repr__(self) -> str:
        return f"<TcpConn {self.key} {self.state.value}>"

    def describe(self) -> str:
        """One line of state for diagnostics; sequence numbers relative to the ISNs."""
        return (f"{self.key} {self.state.value} snd_una+{seq_diff(self.snd_una, self.iss)} "
                f"snd_nxt+{seq_diff(self.snd_nxt, self.iss)} "
                f"snd_max+{seq_diff(self.snd_max, self.iss)} snd_wnd={self.snd_wnd} "
                f"rcv_nxt+{seq_diff(self.rcv_nxt, self.irs)} space={self.send_space} "
                f"reader_waits={self.reader_waits} short_write={self.short_write} "
                f"fin_seq={self.fin_seq} rto_deadline={self.rto_deadline} "
                f"ack_deadline={self.ack_deadline} pingpong={self.pingpong} "
                f"never_delay={self.never_delay} "
                f"rto={self.rto.rto_s:.3f}")

    def record(self) -> FlowRecord:
        """This connection as the control socket lists it."""
        from_guest, to_guest = self.bytes_each_way()
        return FlowRecord("tcp", self.key, Traffic(self.created, from_guest, to_guest),
                          state=self.state.value)

    def counts(self) -> tuple[int, int, int, int]:
        """(bytes from the guest, bytes to it, segments from, segments to): its report's."""
        from_guest, to_guest = self.bytes_each_way()
        return from_guest, to_guest, self.packets_from_guest, self.packets_to_guest

    def _end(self, reason: str, error: str = "") -> None:
        """Say why the connection ends (the first reason given stands)."""
        if not self.end_reason:
            self.end_reason = reason
            self.end_error = error

    def bytes_each_way(self) -> tuple[int, int]:
        """(bytes taken from the guest, bytes the guest acknowledged), SYN and FIN aside."""
        from_guest = max(0, seq_diff(self.rcv_nxt, self.irs) - 1)
        to_guest = max(0, seq_diff(self.snd_una, self.iss) - 1)
        if self.guest_fin:
            from_guest -= 1  # the guest's FIN
        if self.fin_seq is not None and seq_lt(self.fin_seq, self.snd_una):
            to_guest -= 1  # our FIN
        return from_guest, to_guest

    def _set_state(self, new: State) -> None:
        log.debug("%s: %s -> %s", self.key, self.state.value, new.value)
        self.state = new

    # --- the handshake --------------------------------------------------------------------

    def on_connected(self, space: int, now: float) -> list[Effect]:
        if self.state is not State.CONNECTING:
            return []
        self.send_space = self.space_advertised = space
        self._set_state(State.SYN_RECEIVED)
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        self._arm_rto(now)
        return [self._syn_ack()]

    @classmethod
    def active(cls, key: FlowKey, link: GuestLink, iss: int, our_mss: int, space: int,
               now: float, budget: ReorderBudget | None = None,
               counters: TcpCounters | None = None) -> tuple[TcpConn, ToGuest]:
        """A connection to the guest for a host client a local forward accepted: the
        connection and our SYN. The host socket is connected already; the guest's
        SYN-ACK establishes it, its RST (nothing listening) resets the host client."""
        conn = cls(key, link, None, iss, our_mss, now, budget, counters)
        conn.send_space = conn.space_advertised = space
        conn.snd_nxt = conn.snd_max = seq_add(iss, 1)
        conn._arm_rto(now)
        return conn, conn._syn()

    def _syn(self) -> ToGuest:
        return self._segment(SYN, seq=self.iss,
                             options=syn_options(self.our_mss, OUR_WSCALE, sack=True))

    def _on_syn_ack(self, seg: TcpHeader, now: float) -> list[Effect]:
        """SYN-SENT: the guest accepted (RFC 9293 3.10.7.3)."""
        if not seg.flags & ACK or seg.ack != seq_add(self.iss, 1):
            return []  # not an answer to our SYN (a simultaneous open is not supported)
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self.snd_una = seg.ack
        self.snd_wnd = seg.window  # never scaled on a SYN
        if seg.wscale is not None:
            self.guest_wscale = seg.wscale
        else:
            self.our_wscale = 0  # RFC 7323 2.2: scaling only if both offered it
        self.send_mss = min(seg.mss or DEFAULT_GUEST_MSS, self.our_mss)
        self.sack = seg.sack_ok
        self.rto.backoffs = 0
        self._cancel_timer()
        self._set_state(State.ESTABLISHED)
        self.read_wanted = True
        return [self._ack()]

    def on_connect_failed(self, error: int, now: float) -> list[Effect]:
        self._set_state(State.CLOSED)
        log.debug("%s: connect failed: %s", self.key, errno.errorcode.get(error, error))
        if error == errno.ECONNREFUSED:
            self._end("refused")
        elif error == errno.ETIMEDOUT:
            self._end("timeout")
        else:
            self._end("error", errno.errorcode.get(error, f"errno {error}"))
        unreachable = {errno.ENETUNREACH: UnreachCode.NET, errno.EHOSTUNREACH: UnreachCode.HOST,
                       errno.EACCES: UnreachCode.ADMIN_PROHIBITED,
                       errno.EPERM: UnreachCode.ADMIN_PROHIBITED}.get(error)
        if unreachable is not None:
            return [Close(self.key), *icmp_unreachable(self.link, self.key, unreachable,
                                                       seq=self.irs)]
        # Refused, timed out, anything else: the guest's connect() fails with a reset.
        self.counters.resets_sent += 1
        return [Close(self.key), self._segment(RST | ACK, seq=0)]

    def _syn_ack(self) -> Effect:
        options = syn_options(self.our_mss, OUR_WSCALE if self.our_wscale else None,
                              sack=self.sack)
        return self._segment(SYN | ACK, seq=self.iss, options=options)

    # --- segments from the guest ----------------------------------------------------------

    def on_segment(self, seg: TcpHeader, now: float) -> list[Effect]:
        self.packets_from_guest += 1
        if seg.flags & RST:
            return self._on_rst(seg)
        match self.state:
            case State.CONNECTING:
                return []  # a retransmitted SYN: the SYN-ACK waits for connect()
            case State.SYN_SENT if seg.flags & SYN:
                return self._on_syn_ack(seg, now)
            case State.SYN_SENT:
                return []
            case State.SYN_RECEIVED if seg.flags & SYN:
                return [self._syn_ack()]  # our SYN-ACK was lost
            case State.SYN_RECEIVED if seg.flags & ACK and seg.ack == seq_add(self.iss, 1):
                self._set_state(State.ESTABLISHED)  # RFC 9293 3.10.7.4, fifth check
                self.snd_una = seg.ack
                self.snd_wnd = seg.window << self.guest_wscale
                self._cancel_timer()
                self.read_wanted = True
                return self._on_data(seg, now)
            case State.SYN_RECEIVED:
                return []
            case State.CLOSED:
                return []
            case _ if seg.flags & SYN:
                return [self._ack_now()]  # RFC 5961 4.2: a challenge ACK, never a reset
            case _ if not seg.flags & ACK:
                return []  # RFC 9293 3.10.7.4: no ACK, drop
            case _:
                return [*self._on_ack(seg, now), *self._on_data(seg, now)]

    def _on_rst(self, seg: TcpHeader) -> list[Effect]:
        # RFC 5961 3.2: only an RST at exactly rcv_nxt resets; others in the window get
        # a challenge ACK (the guest is ours, but a stale RST must not kill a new flow).
        if self.state is State.CONNECTING or self.state is State.CLOSED:
            self._set_state(State.CLOSED)
            self._end("reset")
            self.counters.resets_received += 1
            return [Close(self.key, reset=True)]
        if self.state is State.SYN_SENT:
            if seg.flags & ACK and seg.ack == seq_add(self.iss, 1):
                log.debug("%s: the guest refused the forwarded connection", self.key)
                self._set_state(State.CLOSED)  # nothing listens: reset the host client
                self._end("refused")
                self.counters.resets_received += 1
                return [Close(self.key, reset=True)]
            return []
        if seg.seq == self.rcv_nxt:
            self._set_state(State.CLOSED)
            self._end("reset")
            self.counters.resets_received += 1
            return [Close(self.key, reset=True)]
        return [self._ack_now()]

    def _on_ack(self, seg: TcpHeader, now: float) -> list[Effect]:
        effects: list[Effect] = []
        acked = seq_diff(seg.ack, self.snd_una)
        old_window = self.snd_wnd
        if acked > 0 and seq_le(seg.ack, self.snd_max):
            effects += self._on_new_ack(seg.ack, acked, now)
        elif self._is_duplicate_ack(seg, acked, old_window):
            self.dupacks += 1
            if self.dupacks == DUPACK_THRESHOLD:
                log.debug("%s: fast retransmit from %d", self.key, self.snd_una)
                effects += self._retransmit(now)
        elif seq_lt(self.snd_max, seg.ack):
            return [self._ack_now()]  # acks what we never sent: RFC 9293 3.10.7.4
        if self.state is State.CLOSED:
            return effects
        if self.snd_una == self.snd_nxt:
            self.rto.backoffs = 0  # the guest answers: zero-window probes go on
        self.snd_wnd = seg.window << self.guest_wscale
        if self.reader_waits and self._read_room() > 0:
            self.read_wanted = True  # the window opened: there may be more to send
        if self.snd_wnd == 0 and self.rto_deadline is None and self.state in _SENDING:
            self._arm(now + self.rto.rto_s)  # persist: probe the zero window
        return effects

    def _is_duplicate_ack(self, seg: TcpHeader, acked: int, old_window: int) -> bool:
        """RFC 5681 2: no new data acked, no payload, no FIN, data in flight, same window."""
        return (acked == 0 and not seg.payload and not seg.flags & FIN
                and self.snd_nxt != self.snd_una
                and seg.window << self.guest_wscale == old_window)

    def _on_new_ack(self, ack: int, acked: int, now: float) -> list[Effect]:
        data_acked = acked
        fin_acked = self.fin_seq is not None and seq_le(seq_add(self.fin_seq, 1), ack)
        if fin_acked:
            data_acked -= 1
        if self.rtt_probe is not None and seq_le(self.rtt_probe[0], ack):
            self.rto.on_sample(now - self.rtt_probe[1])
            self.rtt_probe = None
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            # Acked beyond a rewind: what was sent before it arrived after all. The
            # kernel's peek offset shrinks with the Consume below, to 0 = snd_una.
            self.snd_nxt = ack
        self.dupacks = 0
        self.rto.backoffs = 0
        effects: list[Effect] = [Consume(self.key, data_acked)] if data_acked > 0 else []
        if self.snd_una == self.snd_nxt:
            self._cancel_timer()
        else:
            self._arm_rto(now)
        if fin_acked:
            match self.state:
                case State.FIN_WAIT_1:
                    self._set_state(State.FIN_WAIT_2)
                case State.CLOSING | State.LAST_ACK:
                    self._set_state(State.CLOSED)  # the host socket has nothing left to say
                    self._end("fin")
                    effects.append(Close(self.key))
        return effects

    def _on_data(self, seg: TcpHeader, now: float) -> list[Effect]:
        fin = bool(seg.flags & FIN)
        ahead = seq_diff(seg.seq, self.rcv_nxt)
        if not seg.payload and not fin:
            # An old sequence number with nothing in it is a keepalive or a zero-window
            # probe: it wants our ACK and window (RFC 9293 3.8.6.1, 3.8.4).
            return [self._ack_now()] if ahead < 0 else []
        if ahead > 0:
            if self.state in _RECEIVING:
                self._hold(seg.seq, seg.payload)  # its FIN, if any, will come again
            return [self._ack_now()]  # a hole before it: a duplicate ACK asks for rcv_nxt
        data = seg.payload[-ahead:] if -ahead < len(seg.payload) else seg.payload[:0]
        if not data and not (fin and -ahead == len(seg.payload)):
            return [self._ack_now()]  # all of it seen before: re-ACK so the guest moves on
        if self.state not in _RECEIVING:
            return [self._ack_now()]  # the guest sent FIN already; nothing more is taken
        if data:
            self.pending_fin = fin
            # Only a short segment with PSH, the end of a request, may have its ACK
            # delayed (see `_may_delay_ack`); bulk (no PSH, or full-sized) and a
            # retransmission (partly seen before) are ACKed at once.
            self.quick_ack = (not seg.flags & PSH or len(seg.payload) >= self.send_mss
                              or ahead < 0)
            return [Send(self.key, data)]
        return self._on_guest_fin()

    def on_sent(self, nbytes: int, wanted: int, space: int, now: float) -> list[Effect]:
        """The host socket took *nbytes* of the *wanted* bytes last given to Send."""
        self.send_space = space
        self.rcv_nxt = seq_add(self.rcv_nxt, nbytes)
        self.data_at = now
        if self.delay_missed:
            # More data right after our late ACK, before any reply: the guest waited for
            # that ACK (Nagle's algorithm holds a small write while one is unacknowledged),
            # and would again on every request. ACK at once on this connection from now on.
            self.delay_missed = False
            self.never_delay = True
        fin, self.pending_fin = self.pending_fin, False
        quick, self.quick_ack = self.quick_ack, False
        effects: list[Effect] = []
        if nbytes < wanted:
            self.short_write = True  # taken in part: ACK at once, as far as taken
            effects.append(WatchWritable(self.key))
        elif fin:
            return self._on_guest_fin()
        elif self.held and (following := self._take_held()):
            # The hole is filled: on with what came after, ACKed at once (RFC 5681 4.2).
            self.quick_ack = True
            return [Send(self.key, following)]
        elif space < self.our_mss:
            effects.append(WatchWritable(self.key))  # tell the guest once the window opens
        elif not quick and self._may_delay_ack(space, now):
            return []
        effects.append(self._ack_now())
        return effects

    def _may_delay_ack(self, space: int, now: float) -> bool:
        """Whether the ACK for a short PSH segment just taken (the end of a request) may
        wait for the reply to carry it; if so, the delayed ACK's timer is set. The rule
        (RFC 9293 3.8.6.3, RFC 1122 4.2.3.2, Linux's quick-ack and ping-pong modes):
        delay only a lone request, in request/response, while all is in order:
        - ESTABLISHED only: the handshake and the close paths ACK at once;
        - only once we answered the guest's data with data within the delay
          (`pingpong`, set in `on_host_data`). A new connection ACKs at once (Linux's
          quick-ack mode), and so does one whose delay expired unanswered, until it
          replies in time again (Linux's ping-pong mode): uploads never wait. Never
          again once the guest waited for a delayed ACK (`never_delay`, set in
          `on_sent`): a guest that writes twice before it reads, under Nagle's
          algorithm, stalls one delay per connection, not one per request as it would
          with a Linux peer;
        - no ACK owed already: a second segment is ACKed at once (RFC 1122: at least
          every second segment), so at most one small segment waits, and the guest's
          tail loss probe (Linux: 2 srtt + 200 ms for a lone segment, 2 srtt + 2 ms
          for more) never fires for want of our ACK;
        - nothing held beyond a hole (out of order: ACK at once, RFC 5681 4.2);
        - the window we advertise did not open meaningfully (to twice what we last
          advertised and by a segment at least): the guest may be waiting for it.
        The caller ACKs at once on a short write, the guest's FIN, a window under a
        segment, a hole filled, and bulk: a segment without PSH or full-sized, which
        keeps the guest's window and congestion window growing with no wait."""
        if (self.state is not State.ESTABLISHED or not self.pingpong
                or self.ack_deadline is not None or self.held
                or space - self.space_advertised >= max(self.space_advertised, self.send_mss)):
            return False
        self.ack_deadline = due = now + ACK_DELAY_S
        if self.deadline is None or due < self.deadline:
            self.deadline = due
        return True

    def _hold(self, seq: int, data: memoryview) -> None:
        """Keep data that arrived beyond a hole, within both bounds; else let it go."""
        if len(self.held.get(seq, b"")) >= len(data):
            return
        old = len(self.held.get(seq, b""))
        grow = len(data) - old
        if self.held_bytes + grow > REORDER_MAX_BYTES or not self.budget.take(grow):
            return
        self.last_held = seq
        self.held[seq] = bytes(data)
        self.held_bytes += grow

    def _take_held(self) -> bytes:
        """Held data that now follows rcv_nxt without a gap, trimmed, joined."""
        pieces = []
        nxt = self.rcv_nxt
        while True:
            starts = [seq for seq in self.held if seq_le(seq, nxt)]
            if not starts:
                break
            for seq in starts:
                data = self.held.pop(seq)
                self._release(len(data))
                overlap = seq_diff(nxt, seq)
                if overlap < len(data):
                    pieces.append(data[overlap:])
                    nxt = seq_add(nxt, len(data) - overlap)
        return b"".join(pieces)

    def _release(self, nbytes: int) -> None:
        self.held_bytes -= nbytes
        self.budget.give_back(nbytes)

    def forget_held(self) -> None:
        """Give back what is held (the connection is closing)."""
        self._release(self.held_bytes)
        self.held.clear()

    def on_writable(self, space: int, now: float) -> list[Effect]:
        self.send_space = space
        if self.state in (State.CLOSED, State.CONNECTING):
            return []
        ack = self._ack_now()
        rewatch: list[Effect] = [WatchWritable(self.key)] if space < self.our_mss else []
        if self.short_write:
            # The guest holds bytes we did not ACK; a window update plus duplicates
            # make it resend them now (RFC 5681 fast retransmit), not after its RTO.
            self.short_write = False
            dupacks = [self._ack() for _ in range(DUPACK_THRESHOLD)]
            return [ack, *dupacks, *rewatch]
        return [ack, *rewatch]  # still no room for a segment: wait for the next wake-up

    def _on_guest_fin(self) -> list[Effect]:
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self.guest_fin = True
        match self.state:
            case State.ESTABLISHED:
                self._set_state(State.CLOSE_WAIT)
                return [ShutdownWrite(self.key), self._ack_now()]
            case State.FIN_WAIT_1:
                self._set_state(State.CLOSING)
                return [ShutdownWrite(self.key), self._ack_now()]
            case _:  # FIN-WAIT-2: both directions done; the host socket goes
                self._set_state(State.CLOSED)
                self._end("fin")
                return [self._ack_now(), Close(self.key)]

    # --- bytes from the host ------------------------------------------------------------------

    def _read_room(self) -> int:
        """How many new bytes may be peeked now: the guest's usable window."""
        if self.state not in _SENDING or self.fin_seq is not None:
            return 0
        in_flight = seq_diff(self.snd_nxt, self.snd_una)
        return max(0, min(self.snd_wnd - in_flight, PEEK_MAX_BYTES))

    def take_read(self) -> Peek | None:
        """The read this event made due, if the window has room for it; else none,
        and the next window opening asks again. Called once an event is handled."""
        if not self.read_wanted:
            return None
        self.read_wanted = False
        room = self._read_room()
        self.reader_waits = room == 0
        return Peek(self.key, room) if room else None

    def on_readable(self, now: float) -> list[Effect]:
        """The host socket has something new: read it if the window allows."""
        self.read_wanted = True
        return []

    def on_host_data(self, data: memoryview, more: bool, now: float) -> list[Effect]:
        effects: list[Effect] = []
        # With offload, one frame carries as many whole segments as an IP datagram holds.
        mss = (GSO_MAX_PAYLOAD // self.send_mss) * self.send_mss if self.link.offload \
            else self.send_mss
        new_data = not seq_lt(self.snd_nxt, self.snd_max)
        for start in range(0, len(data), mss):
            chunk = data[start:start + mss]
            last = start + mss >= len(data)
            flags = ACK | (PSH if last else 0)
            effects.append(self._segment(flags, seq=self.snd_nxt, payload=chunk))
            self.snd_nxt = seq_add(self.snd_nxt, len(chunk))
        if effects:
            self._ack_carried()
        self._note_sent()
        if more:
            self.read_wanted = True
        if new_data:
            if self.rtt_probe is None:  # Karn: never time a retransmission
                self.rtt_probe = (self.snd_nxt, now)
            self.delay_missed = False  # the host answers: it was slow, not the guest waiting
            if now - self.data_at < ACK_DELAY_S and not self.never_delay:
                self.pingpong = True  # a reply: the next request's ACK may ride on its reply
        if self.rto_deadline is None:
            self._arm_rto(now)
        return effects

    def on_host_eof(self, now: float) -> list[Effect]:
        """The host closed its side and everything it sent has been peeked."""
        if self.fin_seq is not None and self.fin_seq != self.snd_nxt:
            return []
        match self.state:
            case State.ESTABLISHED:
                self._set_state(State.FIN_WAIT_1)
            case State.CLOSE_WAIT:
                self._set_state(State.LAST_ACK)
            case State.FIN_WAIT_1 | State.CLOSING | State.LAST_ACK:
                pass  # a retransmission of our FIN
            case _:
                return []
        self.fin_seq = self.snd_nxt
        self.snd_nxt = seq_add(self.snd_nxt, 1)
        self._note_sent()
        self._arm_rto(now)
        self._ack_carried()
        return [self._segment(FIN | ACK, seq=self.fin_seq)]

    def on_host_reset(self, now: float) -> list[Effect]:
        if self.state is State.CLOSED:
            return []
        self._set_state(State.CLOSED)
        self._end("reset")
        self.counters.resets_sent += 1
        return [self._segment(RST | ACK, seq=self.snd_nxt),
                Close(self.key, reset=True)]

    # --- time -----------------------------------------------------------------------------------

    def on_timer(self, now: float, synack_retries: int = SYNACK_RETRIES) -> list[Effect]:
        """Whichever timer is due: first the retransmission (or persist, or connect)
        timer's work, then the delayed ACK, unless what that work sent carried it.
        In SYN-RECEIVED, *synack_retries* SYN-ACKs unanswered give the connection up
        (fewer while half-open connections crowd their cap: `TcpFlows` says)."""
        ack_due = self.ack_deadline is not None and self.ack_deadline <= now
        effects: list[Effect] = []
        if self.rto_deadline is not None and self.rto_deadline <= now:
            self._cancel_timer()
            effects = self._on_rto(now, synack_retries)
        if ack_due:
            self.pingpong = False  # no reply within the delay: ACK at once until the next
            self.delay_missed = True
            if self.ack_deadline is not None and self.state is not State.CLOSED:
                effects.append(self._ack_now())
        return effects

    def _on_rto(self, now: float, synack_retries: int) -> list[Effect]:
        if self.state is State.CONNECTING:
            return self.on_connect_failed(errno.ETIMEDOUT, now)
        if self.state is State.SYN_RECEIVED and self.rto.backoffs >= synack_retries:
            # As Linux drops a request whose SYN-ACKs went unanswered: silently towards
            # the guest (it never answered), with a reset for the host's end.
            log.debug("%s: the guest never completed the handshake", self.key)
            self._set_state(State.CLOSED)
            self._end("timeout", "the guest never completed the handshake")
            return [Close(self.key, reset=True)]
        if self.rto.backoffs >= MAX_RETRIES:
            log.debug("%s: guest stopped answering, reset", self.key)
            self._end("timeout", "the guest stopped answering")
            return self.on_host_reset(now)  # RST both ways
        self.rto.on_timeout()
        if self.state is State.SYN_RECEIVED:
            self._arm_rto(now)
            self.counters.retransmits += 1
            return [self._syn_ack()]
        if self.state is State.SYN_SENT:
            if self.rto.backoffs > MAX_SYN_RETRIES:
                log.debug("%s: the guest never answered the forwarded SYN", self.key)
                self._set_state(State.CLOSED)
                self._end("timeout", "the guest never answered the SYN")
                return [Close(self.key, reset=True)]
            self._arm_rto(now)
            self.counters.retransmits += 1
            return list(self.link.unless_pending(self.key.guest_addr, [self._syn()]))
        if self.snd_una == self.snd_nxt:
            if self.snd_wnd == 0 and self.state in _SENDING:
                self._arm(now + min(self.rto.rto_s, PERSIST_MAX_S))
                # A zero-window probe: an old sequence number makes the guest answer
                # with its current window (RFC 9293 3.8.6.1).
                self._ack_carried()
                return [self._segment(ACK, seq=seq_add(self.snd_una, -1))]
            return []
        return self._retransmit(now)

    def _retransmit(self, now: float) -> list[Effect]:
        """Go back to snd_una: the runtime peeks again from there."""
        self.counters.retransmits += 1
        self.rtt_probe = None  # Karn: no samples from retransmitted data
        self.dupacks = 0
        self._arm_rto(now)
        if self.fin_seq is not None and self.snd_una == self.fin_seq:
            self._ack_carried()
            return [self._segment(FIN | ACK, seq=self.fin_seq)]
        self.snd_nxt = self.snd_una
        if self.fin_seq is not None:
            self.fin_seq = None  # sent again once the data before it is
            self._set_state(State.ESTABLISHED if self.state is State.FIN_WAIT_1
                            else State.CLOSE_WAIT)
        self.read_wanted = True
        return [Rewind(self.key)]

    def _note_sent(self) -> None:
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt

    def _arm_rto(self, now: float) -> None:
        self._arm(now + self.rto.rto_s)

    def arm_connect_timeout(self, deadline: float) -> None:
        """The host's connect() may take until *deadline*; then the guest gets an RST."""
        self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        """Set the retransmission (or persist, or connect) timer, beside a delayed ACK's."""
        self.rto_deadline = deadline
        ack = self.ack_deadline
        self.deadline = deadline if ack is None or deadline < ack else ack

    def _cancel_timer(self) -> None:
        """Stop the retransmission (or persist) timer; a delayed ACK's stays."""
        self.rto_deadline = None
        self.deadline = self.ack_deadline

    def _ack_carried(self) -> None:
        """A segment with our ACK and window is going out: no ACK is owed any more."""
        self.space_advertised = self.send_space
        if self.ack_deadline is not None:
            self.ack_deadline = None
            self.deadline = self.rto_deadline

    def _ack_now(self) -> Effect:
        """A pure ACK, now: it is the delayed one too, if one was owed."""
        self._ack_carried()
        return self._ack()

    # --- segments to the guest ----------------------------------------------------------------

    def _window(self) -> int:
        return min(self.send_space >> self.our_wscale, MAX_WINDOW)

    def _ack(self) -> Effect:
        if self.held and self.sack and (blocks := self._sack_blocks()):
            return self._segment(ACK, seq=self.snd_nxt, options=sack_option(blocks))
        return self._segment(ACK, seq=self.snd_nxt)

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """The data held beyond the hole as SACK blocks (RFC 2018 4): runs of held bytes
        joined, the one with the latest segment first, then the others in order. Without
        them a guest's loss recovery sees only duplicate ACKs; a Linux sender then takes
        one for reordering after a timeout, stops retransmitting fast, and backs off."""
        runs: list[list[int]] = []
        for offset, length in sorted((seq_diff(seq, self.rcv_nxt), len(data))
                                     for seq, data in self.held.items()):
            if runs and offset <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], offset + length)
            else:
                runs.append([offset, offset + length])
        latest = seq_diff(self.last_held, self.rcv_nxt)
        first = [run for run in runs if run[0] <= latest < run[1]]
        ordered = first + [run for run in runs if run not in first]
        # Only what lies beyond the cumulative ACK (a short write may have taken part).
        return [(seq_add(self.rcv_nxt, max(left, 1)), seq_add(self.rcv_nxt, right))
                for left, right in ordered if right > 1]

    def _segment(self, flags: int, *, seq: int, payload: memoryview | bytes = b"",
                 options: bytes = b"") -> ToGuest:
        """A segment to the guest: from the connection's template (`TcpTemplate`), but
        for options (SYNs) and for what the MTU would fragment (`build_segment`)."""
        self.packets_to_guest += 1
        ack = self.rcv_nxt if flags & ACK else 0
        window = 0 if flags & RST else (
            min(self.send_space, MAX_WINDOW) if flags & SYN else self._window())
        offload = self.link.offload and bool(payload)
        gso_size = self.send_mss if offload and len(payload) > self.send_mss else 0
        if not options:
            template = self.template or self._make_template()
            if gso_size or len(payload) <= template.max_payload:
                return template.segment(seq, ack, flags, window, payload, offload, gso_size)
        return build_segment(self.link, self.key, flags, seq=seq, ack=ack, window=window,
                             payload=payload, options=options, partial=offload,
                             gso_size=gso_size)

    def _make_template(self) -> TcpTemplate:
        self.template = TcpTemplate(self.link, src=self.key.remote_addr,
                                    dst=self.key.guest_addr, src_port=self.key.remote_port,
                                    dst_port=self.key.guest_port)
        return self.template


def build_segment(link: GuestLink, key: FlowKey, flags: int, *, seq: int, ack: int,
                  window: int, payload: memoryview | bytes = b"", options: bytes = b"",
                  partial: bool = False, gso_size: int = 0) -> ToGuest:
    """A segment from *key*'s remote end to the guest, every header built anew: the
    general path, for what a connection's template does not build and for segments of
    no connection. With *partial* (offload only), the guest's kernel completes the
    checksum, and with *gso_size* cuts the segment to the MTU."""
    header = bytearray(TCP_LEN + len(options))
    build_tcp(header, 0, src=key.remote_addr, dst=key.guest_addr, src_port=key.remote_port,
              dst_port=key.guest_port, seq=seq, ack=ack, flags=flags, window=window,
              options=options, payload=payload, checksum=not partial)
    (frame,) = link.ip(src=key.remote_addr, dst=key.guest_addr, proto=_PROTO, l4=header,
                       payload=payload, csum_offset=TCP_CHECKSUM_OFFSET if partial else 0,
                       gso_size=gso_size)
    return frame


def reset_for(link: GuestLink, key: FlowKey, seg: TcpHeader) -> list[Effect]:
    """RFC 9293 3.10.7.1: the answer to a segment for a connection that does not exist."""
    if seg.flags & RST:
        return []
    if seg.flags & ACK:
        seq, ack, flags = seg.ack, 0, RST
    else:
        length = len(seg.payload) + (1 if seg.flags & SYN else 0) + (
            1 if seg.flags & FIN else 0)
        seq, ack, flags = 0, seq_add(seg.seq, length), RST | ACK
    return [build_segment(link, key, flags, seq=seq, ack=ack, window=0)]


