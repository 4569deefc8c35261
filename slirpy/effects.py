"""What the sans-IO core asks of the world, as values the runtime applies in one `match`.

The core's one door out. Effects are plain values, never callbacks. What applying one
produces (bytes sent, a connect finished, data peeked, an error) comes back through the
door in, as an event of `slirpy.events`, queued by the runtime and fed after the
current effects are all applied: the core is never re-entered.
"""

from __future__ import annotations

# mypyc builds a dataclass's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

from dataclasses import dataclass

from slirpy.flows.key import FlowKey


# Classes made per packet write their own __init__ (init=False): mypyc compiles it, but
# leaves a dataclass's generated __init__ interpreted (measured: 40 against 300 ns an
# object, and 480 ns for a NamedTuple).
@dataclass(slots=True, init=False)
class ToGuest:
    """Write one Ethernet frame to the tap: *headers* then *payload*, gathered, not joined."""

    headers: bytes | bytearray | memoryview
    payload: bytes | bytearray | memoryview = b""
    # Offload (virtio-net header), when the tap has one: the checksum at csum_offset
    # past csum_start holds only the pseudo-header sum, and with gso_size the frame
    # is a TCP super-segment the guest's kernel cuts into gso_size pieces.
    csum_start: int = 0
    csum_offset: int = 0
    gso_size: int = 0

    def __init__(self, headers: bytes | bytearray | memoryview,
                 payload: bytes | bytearray | memoryview = b"", csum_start: int = 0,
                 csum_offset: int = 0, gso_size: int = 0) -> None:
        self.headers = headers
        self.payload = payload
        self.csum_start = csum_start
        self.csum_offset = csum_offset
        self.gso_size = gso_size

    @property
    def frame(self) -> bytes:
        """The whole frame as one bytes object (for tests and captures, not the data path)."""
        return bytes(self.headers) + bytes(self.payload)


@dataclass(slots=True)
class OpenUdp:
    """Make a UDP socket for *flow*, connected to host_addr:host_port (packed address)."""

    flow: FlowKey
    host_addr: bytes
    host_port: int


@dataclass(slots=True)
class OpenPing:
    """Make an unprivileged ICMP echo socket for *flow*, connected to host_addr."""

    flow: FlowKey
    host_addr: bytes


@dataclass(slots=True, init=False)
class SendDatagram:
    """Send one datagram on the flow's socket (for ping sockets: an ICMP echo message)."""

    flow: FlowKey
    data: bytes | bytearray | memoryview

    def __init__(self, flow: FlowKey, data: bytes | bytearray | memoryview) -> None:
        self.flow = flow
        self.data = data


@dataclass(slots=True, init=False)
class Close:
    """Close the flow's host socket; nothing more will be said about it.

    With *reset*, a TCP socket closes with an RST (SO_LINGER of zero), not a FIN.
    """

    flow: FlowKey
    reset: bool = False

    def __init__(self, flow: FlowKey, reset: bool = False) -> None:
        self.flow = flow
        self.reset = reset


@dataclass(slots=True, init=False)
class Connect:
    """Start a non-blocking TCP connect(); the runtime answers with a Connected or a
    ConnectFailed event."""

    flow: FlowKey
    host_addr: bytes
    host_port: int

    def __init__(self, flow: FlowKey, host_addr: bytes, host_port: int) -> None:
        self.flow = flow
        self.host_addr = host_addr
        self.host_port = host_port


@dataclass(slots=True, init=False)
class Send:
    """send(MSG_DONTWAIT) on the flow's TCP socket; the runtime answers with a Sent
    event, which may report a short write."""

    flow: FlowKey
    data: bytes | bytearray | memoryview

    def __init__(self, flow: FlowKey, data: bytes | bytearray | memoryview) -> None:
        self.flow = flow
        self.data = data


@dataclass(slots=True, init=False)
class Consume:
    """Drop *nbytes* the guest has acknowledged from the socket's receive queue."""

    flow: FlowKey
    nbytes: int

    def __init__(self, flow: FlowKey, nbytes: int) -> None:
        self.flow = flow
        self.nbytes = nbytes


@dataclass(slots=True)
class Rewind:
    """Peek again from the first unacknowledged byte (a retransmission)."""

    flow: FlowKey


@dataclass(slots=True, init=False)
class Peek:
    """MSG_PEEK up to *limit* new bytes from the flow's TCP socket; the runtime answers
    with HostData, HostEof or HostReset, or with nothing if there is nothing to read
    (the socket's next readiness brings a Readable event)."""

    flow: FlowKey
    limit: int

    def __init__(self, flow: FlowKey, limit: int) -> None:
        self.flow = flow
        self.limit = limit


@dataclass(slots=True, init=False)
class WatchWritable:
    """Report, with a Writable event, once the socket can take more."""

    flow: FlowKey

    def __init__(self, flow: FlowKey) -> None:
        self.flow = flow


@dataclass(slots=True)
class ShutdownWrite:
    """The guest sent FIN: shutdown(SHUT_WR) the host socket."""

    flow: FlowKey


@dataclass(slots=True)
class SendTo:
    """Send *prefix* + *data* as one datagram from local forward *forward_id*'s socket to
    addr:port (a guest's reply to a forwarded UDP client; the prefix is an SPP header)."""

    forward_id: int
    addr: bytes
    port: int
    data: bytes | bytearray | memoryview
    prefix: bytes = b""


@dataclass(slots=True)
class AdoptStream:
    """Carry *flow* on the client socket a local forward accepted (ForwardAccepted's
    *token*): the core has sent the guest its SYN."""

    token: int
    flow: FlowKey


@dataclass(slots=True)
class RefuseStream:
    """Reset the client socket a local forward accepted: no flow could be made for it."""

    token: int


@dataclass(slots=True, init=False)
class Report:
    """Tell the event stream: *event* (flow-new, flow-done, blocked, dns-upstream) with
    its *fields*. Made only while reports are on (slirpy.reports); the runtime adds the
    time and writes the line."""

    event: str
    fields: dict[str, object]

    def __init__(self, event: str, fields: dict[str, object]) -> None:
        self.event = event
        self.fields = fields


Effect = (ToGuest | OpenUdp | OpenPing | SendDatagram | Close | Connect | Send | Consume
          | Rewind | Peek | WatchWritable | ShutdownWrite | SendTo | AdoptStream
          | RefuseStream | Report)
