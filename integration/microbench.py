#!/usr/bin/env python3
"""CPU cost of the core alone, per TCP request/response exchange and per connection.

    python3 integration/microbench.py [--exchanges N] [--connections N] [--mtu M]

No namespaces, no sockets: the real `Stack` is fed the events the runtime would feed it
for a guest that sends a 64-byte request and gets a 64-byte reply on one connection
(GuestFrame with the request, Sent, Readable, HostData with the reply), and for short
connections (SYN, Connected, the handshake's ACK, the guest's FIN, the host's EOF, the last ACK). The
guest's frames are built once with the real wire builders and only their sequence
numbers change, marked as checksummed by the guest's kernel (as the tap's virtio-net
header says), so what is timed is slirpy's core: parse, demultiplex, TCP, build. It
runs whichever build of slirpy is imported (see `slirpy --version`), so running it on
the pure and the compiled build gives the compiler's share. It asserts nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
import time

from slirpy.app import build
from slirpy.config import Config
from slirpy.effects import Peek, Send, ToGuest
from slirpy.events import Connected, GuestFrame, HostData, HostEof, Readable, Sent
from slirpy.flows.key import FlowKey
from slirpy.stack import Stack
from slirpy.wire.ethernet import HEADER_LEN as ETH_LEN, EtherType, build_ethernet
from slirpy.wire.ipv4 import HEADER_LEN as IP_LEN, IpProto, build_ipv4
from slirpy.wire.tcp import ACK, FIN, HEADER_LEN as TCP_LEN, PSH, SYN, build_tcp

GUEST_MAC = bytes.fromhex("020000000064")
GUEST = ipaddress.IPv4Address("10.0.2.100").packed
REMOTE = ipaddress.IPv4Address("192.0.2.1").packed
SEQ_OFFSET = ETH_LEN + IP_LEN + 4  # the TCP sequence number, then the ACK number
_SEQ_ACK = struct.Struct("!II")


def guest_segment(our_mac: bytes, port: int, flags: int, payload: bytes = b"",
                  options: bytes = b"") -> bytearray:
    """A frame from the guest to REMOTE:80; seq and ack are patched per use."""
    tcp_len = TCP_LEN + len(options) + len(payload)
    buf = bytearray(ETH_LEN + IP_LEN + tcp_len)
    build_ethernet(buf, 0, dst=our_mac, src=GUEST_MAC, ethertype=EtherType.IPV4)
    build_ipv4(buf, ETH_LEN, src=GUEST, dst=REMOTE, proto=IpProto.TCP, payload_len=tcp_len)
    build_tcp(buf, ETH_LEN + IP_LEN, src=GUEST, dst=REMOTE, src_port=port, dst_port=80,
              seq=0, ack=0, flags=flags, window=65535, options=options, payload=payload)
    buf[ETH_LEN + IP_LEN + TCP_LEN + len(options):] = payload
    return buf


def seq_of(frame: ToGuest) -> tuple[int, int]:
    """(seq, ack) of a segment slirpy sent."""
    return _SEQ_ACK.unpack_from(bytes(frame.headers), SEQ_OFFSET)


def frames(effects: list[object]) -> list[ToGuest]:
    return [e for e in effects if isinstance(e, ToGuest)]


MSS_WSCALE = bytes([2, 4, 0xFF, 0xD7, 1, 3, 3, 7])  # MSS 65495, NOP, window scale 7


def connect(stack: Stack, port: int, now: float) -> tuple[FlowKey, int, int]:
    """SYN, host connected, ACK: the key and the guest's (seq, ack) to go on with."""
    key = FlowKey(IpProto.TCP, GUEST, port, REMOTE, 80)
    our_mac = stack.link.our_mac
    syn = guest_segment(our_mac, port, SYN, options=MSS_WSCALE)
    _SEQ_ACK.pack_into(syn, SEQ_OFFSET, 1000, 0)
    stack.feed(GuestFrame(syn, checksum_ok=True), now)
    (syn_ack,) = frames(stack.feed(Connected(key, 1 << 20), now))
    seq, ack = 1001, seq_of(syn_ack)[0] + 1
    handshake = guest_segment(our_mac, port, ACK)
    _SEQ_ACK.pack_into(handshake, SEQ_OFFSET, seq, ack)
    stack.feed(GuestFrame(handshake, checksum_ok=True), now)
    return key, seq, ack


def exchanges(count: int, mtu: int) -> float:
    """Microseconds of core CPU per 64-byte request/response exchange."""
    stack = Stack(Config(mtu=mtu), secret=b"bench", offload=True)
    now = 1000.0
    key, seq, ack = connect(stack, 40000, now)
    request = guest_segment(stack.link.our_mac, 40000, PSH | ACK, b"q" * 64)
    reply = memoryview(b"r" * 64)
    start = time.process_time()
    for _ in range(count):
        _SEQ_ACK.pack_into(request, SEQ_OFFSET, seq, ack)
        (send,) = [e for e in stack.feed(GuestFrame(request, checksum_ok=True), now)
                   if isinstance(e, Send)]
        stack.feed(Sent(key, len(send.data), len(send.data), 1 << 20), now)
        (peek,) = [e for e in stack.feed(Readable(key), now) if isinstance(e, Peek)]
        stack.feed(HostData(key, reply[:peek.limit]), now)
        seq += 64
        ack += 64
        now += 0.0001
    return (time.process_time() - start) / count * 1e6


def connections(count: int, mtu: int) -> float:
    """Microseconds of core CPU per short connection (open, then closed by the guest)."""
    stack = Stack(Config(mtu=mtu), secret=b"bench", offload=True)
    now = 1000.0
    start = time.process_time()
    for i in range(count):
        port = 1024 + i % 60000
        key, seq, ack = connect(stack, port, now)
        fin = guest_segment(stack.link.our_mac, port, FIN | ACK)
        _SEQ_ACK.pack_into(fin, SEQ_OFFSET, seq, ack)
        stack.feed(GuestFrame(fin, checksum_ok=True), now)  # CLOSE-WAIT, host socket shut
        stack.feed(HostEof(key), now)  # the host closes too: our FIN, LAST-ACK
        last = guest_segment(stack.link.our_mac, port, ACK)
        _SEQ_ACK.pack_into(last, SEQ_OFFSET, seq + 1, ack + 1)
        stack.feed(GuestFrame(last, checksum_ok=True), now)
        now += 0.0001
    return (time.process_time() - start) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exchanges", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--mtu", type=int, default=65520)
    args = parser.parse_args()
    print(f"slirpy core, {build()}, MTU {args.mtu}, Python {sys.version.split()[0]}")
    print(f"  CPU us per exchange:   {exchanges(args.exchanges, args.mtu):8.2f}")
    print(f"  CPU us per connection: {connections(args.connections, args.mtu):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
