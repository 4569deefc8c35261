"""What the world tells the sans-IO core: the one door in, as values.

The runtime turns what happens outside (a frame on the tap, a datagram or an error on
a host socket, a finished connect, bytes peeked, the clock, the host's addresses, the
resolv.conf) into these events and feeds them, one at a time, to `Stack.feed`. What
applying the core's effects produces comes back as events too, queued by the runtime
and fed once the current effects are all applied. The core never calls out and is
never re-entered while it runs.
"""

from __future__ import annotations

# mypyc builds a dataclass's annotations from the module's names: without this one, a
# field typed memoryview fails at import with KeyError (mypyc/mypyc#1087's kind).
from builtins import memoryview

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from slirpy.flows.key import FlowKey

Payload = bytes | bytearray | memoryview
Endpoint = tuple[bytes, int]  # packed address (4 or 16 bytes), port
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


# --- the guest and the clock ---------------------------------------------------------


# Classes made per packet write their own __init__ (init=False): mypyc compiles it, but
# leaves a dataclass's generated __init__ interpreted (measured: 40 against 300 ns an
# object, and 480 ns for a NamedTuple).
@dataclass(slots=True, init=False)
class GuestFrame:
    """One Ethernet frame from the guest. *checksum_ok*: the tap's virtio-net header
    says the guest's kernel vouches for the transport checksum."""

    frame: Payload
    checksum_ok: bool = False

    def __init__(self, frame: Payload, checksum_ok: bool = False) -> None:
        self.frame = frame
        self.checksum_ok = checksum_ok


@dataclass(slots=True, init=False)
class TimerDue:
    """The core's next deadline (`Stack.next_deadline`) has come."""

    def __init__(self) -> None:
        pass


# --- datagram flows (UDP, ping, the DNS forwarder's and SRV lookups' sockets) ----------


@dataclass(slots=True, init=False)
class HostDatagram:
    """A datagram the flow's host socket received."""

    flow: FlowKey
    data: bytes | memoryview

    def __init__(self, flow: FlowKey, data: bytes | memoryview) -> None:
        self.flow = flow
        self.data = data


@dataclass(slots=True)
class HostFailed:
    """The flow's host socket reported an error, or could not be made at all."""

    flow: FlowKey
    error: HostError


# --- TCP: answers to Connect, Send, Peek and WatchWritable, and socket readiness --------


@dataclass(slots=True, init=False)
class Connected:
    """The flow's connect() succeeded; *space*: free bytes in its send buffer."""

    flow: FlowKey
    space: int

    def __init__(self, flow: FlowKey, space: int) -> None:
        self.flow = flow
        self.space = space


@dataclass(slots=True)
class ConnectFailed:
    flow: FlowKey
    errno: int


@dataclass(slots=True, init=False)
class Sent:
    """The socket took *nbytes* of the *wanted* bytes of the last Send; *space* left."""

    flow: FlowKey
    nbytes: int
    wanted: int
    space: int

    def __init__(self, flow: FlowKey, nbytes: int, wanted: int, space: int) -> None:
        self.flow = flow
        self.nbytes = nbytes
        self.wanted = wanted
        self.space = space


@dataclass(slots=True, init=False)
class Writable:
    """The socket a WatchWritable asked about can take more; *space* bytes now."""

    flow: FlowKey
    space: int

    def __init__(self, flow: FlowKey, space: int) -> None:
        self.flow = flow
        self.space = space


@dataclass(slots=True, init=False)
class Readable:
    """The socket has something new to read: data, EOF or an error."""

    flow: FlowKey

    def __init__(self, flow: FlowKey) -> None:
        self.flow = flow


@dataclass(slots=True, init=False)
class HostData:
    """Bytes a Peek read (a view valid only while this event is fed). *more*: the read
    filled its limit or the peer hung up, so more may wait without a new readiness."""

    flow: FlowKey
    data: memoryview
    more: bool = False

    def __init__(self, flow: FlowKey, data: memoryview, more: bool = False) -> None:
        self.flow = flow
        self.data = data
        self.more = more


@dataclass(slots=True, init=False)
class HostEof:
    """The peer closed its side and everything it sent has been peeked."""

    flow: FlowKey

    def __init__(self, flow: FlowKey) -> None:
        self.flow = flow


@dataclass(slots=True)
class HostReset:
    """The connection failed on the host side (reset, timed out, unreachable)."""

    flow: FlowKey


# --- local forwards ---------------------------------------------------------------------


@dataclass(slots=True)
class ForwardAccepted:
    """Local TCP forward *forward_id* accepted a client at *client* (or as its PROXY
    header names it; *guest_port* from that header when the forward's port is 0).
    *token* names the accepted socket in the AdoptStream or RefuseStream answer."""

    token: int
    forward_id: int
    client: Endpoint
    space: int
    guest_port: int = 0


@dataclass(slots=True)
class ForwardDatagram:
    """Local UDP forward *forward_id* received *data* from *peer*."""

    forward_id: int
    peer: Endpoint
    data: bytes | memoryview


# --- the host's environment -------------------------------------------------------------


@dataclass(slots=True)
class HostNetworks:
    """The host's own addresses (as /32 and /128) and its connected networks, afresh."""

    networks: tuple[IpNetwork, ...]


@dataclass(slots=True)
class DnsUpstreams:
    """The nameservers of the host's resolv.conf, in order, as (packed address, port)."""

    servers: tuple[tuple[bytes, int], ...]


Event = (GuestFrame | TimerDue | HostDatagram | HostFailed | Connected | ConnectFailed | Sent
         | Writable | Readable | HostData | HostEof | HostReset | ForwardAccepted
         | ForwardDatagram | HostNetworks | DnsUpstreams)
