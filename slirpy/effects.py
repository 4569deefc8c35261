"""What the sans-IO stack asks of the world, as values the runtime applies in one `match`.

Results come back as events on the stack: `on_host_datagram`, `on_host_error`, and, for
sockets that could not even be made, `on_host_error` with an errno and no ICMP fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from slirpy.flows.key import FlowKey


@dataclass(slots=True)
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


@dataclass(slots=True)
class SendDatagram:
    """Send one datagram on the flow's socket (for ping sockets: an ICMP echo message)."""

    flow: FlowKey
    data: bytes | bytearray | memoryview


@dataclass(slots=True)
class Close:
    """Close the flow's host socket; nothing more will be said about it.

    With *reset*, a TCP socket closes with an RST (SO_LINGER of zero), not a FIN.
    """

    flow: FlowKey
    reset: bool = False


@dataclass(slots=True)
class Connect:
    """Start a non-blocking TCP connect(); the runtime answers with Stack.on_connected()
    or Stack.on_connect_failed()."""

    flow: FlowKey
    host_addr: bytes
    host_port: int


@dataclass(slots=True)
class Send:
    """send(MSG_DONTWAIT) on the flow's TCP socket; the runtime answers at once with
    Stack.on_sent(), which may report a short write."""

    flow: FlowKey
    data: bytes | bytearray | memoryview


@dataclass(slots=True)
class Consume:
    """Drop *nbytes* the guest has acknowledged from the socket's receive queue."""

    flow: FlowKey
    nbytes: int


@dataclass(slots=True)
class Rewind:
    """Peek again from the first unacknowledged byte (a retransmission)."""

    flow: FlowKey


@dataclass(slots=True)
class KickRead:
    """Read (peek) the socket now: the guest's window opened or a rewind happened."""

    flow: FlowKey


@dataclass(slots=True)
class WatchWritable:
    """Tell the stack, through Stack.on_writable(), once the socket can take more."""

    flow: FlowKey


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


Effect = (ToGuest | OpenUdp | OpenPing | SendDatagram | Close | Connect | Send | Consume
          | Rewind | KickRead | WatchWritable | ShutdownWrite | SendTo)


class HostError(NamedTuple):
    """What the host side reported for a flow.

    From IP_RECVERR (struct sock_extended_err) when the kernel saw an ICMP error: the
    ICMP type, code and info (the MTU for "fragmentation needed"). From a failed system
    call: errno only, with icmp_type None.
    """

    errno: int
    icmp_type: int | None = None
    icmp_code: int | None = None
    info: int = 0
