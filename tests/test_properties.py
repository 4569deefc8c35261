"""Properties, checked by hypothesis on generated values: what every input must satisfy.

- Every header with a builder reads back as built: parse(build(x)) == x (IPv4, IPv6 and
  its fragment header, UDP, TCP with options, ICMP and ICMPv6, ARP, DNS queries and
  responses, DHCP, PROXY v1 and v2, SPP).
- The fast paths' partial sums give the one-shot builders' bytes (IPv4 and TCP
  templates, RFC 1624-style filling of fields left 0).
- Fragment reassembly does not depend on the order pieces come in, or on repeats.
- The guest's TCP byte stream reaches the host whole and in order, whatever order its
  first segments arrive in, repeats included, once the guest retransmits what is not
  acknowledged (slirpy keeps no reorder queue: RFC 9293 lets it drop what is early).
- Sequence numbers compare modulo 2**32 (RFC 1982 serial arithmetic).
- The ones' complement sum is a sum: of concatenations (byte-swapped at an odd cut,
  RFC 1071 2(B)), with carries folded at the end, from partial sums.

Settings keep the whole file to a few seconds: these run with every unit test.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import assume, given, settings, strategies as st
from scapy.layers.inet import TCP  # type: ignore[import-untyped]

from slirpy.reassembly import FragKey, Reassembler
from slirpy.tcp.seq import MOD, seq_add, seq_diff, seq_le, seq_lt
from slirpy.wire.arp import ArpPacket, build_arp
from slirpy.wire.checksum import checksum, finish, fold, ones_sum, pseudo_header_sum
from slirpy.wire.dhcp import DhcpMessage, DhcpOption, build_dhcp_reply
from slirpy.wire.dns import (DnsQuery, Record, SrvData, build_error_reply, build_query,
                             parse_response)
from slirpy.wire.icmp import IcmpHeader, build_icmp
from slirpy.wire.ipv4 import (FLAG_DF, FLAG_MF, Ipv4Header, build_ipv4, build_ipv4_template,
                              fill_ipv4)
from slirpy.wire.ipv6 import Ipv6Header, build_fragment_header, build_ipv6, fill_ipv6_length
from slirpy.wire.proxy import (SppHeader, build_proxy_v1, build_proxy_v2, build_spp,
                               parse_proxy_header, parse_spp)
from slirpy.wire.tcp import (ACK, SYN, TcpHeader, build_tcp, build_tcp_template, fill_tcp,
                             syn_options)
from slirpy.wire.udp import UdpHeader, build_udp
from tests.tcp_harness import TcpHarness

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
port = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=300)
ipv4 = st.binary(min_size=4, max_size=4)
ipv6 = st.binary(min_size=16, max_size=16)
# Unicast sources: a multicast source is refused (RFC 1122 3.2.1.3, RFC 4291 2.7).
src4 = ipv4.filter(lambda a: a[0] & 0xF0 != 0xE0)
src6 = ipv6.filter(lambda a: a[0] != 0xFF)
v4_pair = st.tuples(src4, ipv4)
v6_pair = st.tuples(src6, ipv6)
addr_pair = st.one_of(v4_pair, v6_pair)
IPV6_EXTENSIONS = {0, 43, 44, 60}
V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def view(data: bytes | bytearray) -> memoryview:
    return memoryview(bytes(data))


# --- IP ---------------------------------------------------------------------------------------

@given(pair=v4_pair, proto=u8, payload=payloads, ident=u16, ttl=u8,
       frag=st.sampled_from([FLAG_DF, 0, FLAG_MF]), offset_units=st.integers(0, 0x1FFF))
def test_ipv4_reads_back_as_built(pair: tuple[bytes, bytes], proto: int, payload: bytes,
                                  ident: int, ttl: int, frag: int, offset_units: int) -> None:
    src, dst = pair
    field = frag | (offset_units if frag != FLAG_DF else 0)
    buf = bytearray(20)
    assert build_ipv4(buf, 0, src=src, dst=dst, proto=proto, payload_len=len(payload),
                      ident=ident, ttl=ttl, frag=field) == 20
    ip = Ipv4Header.parse(view(buf + payload + b"\0" * 6))  # Ethernet padding stays out
    assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.ident) == (src, dst, proto, ttl, ident)
    assert ip.more_fragments == bool(field & FLAG_MF)
    assert ip.frag_offset == (field & 0x1FFF) * 8
    assert bytes(ip.payload) == payload


@given(pair=v4_pair, proto=u8, ttl=u8, total_len=st.integers(20, 0xFFFF), ident=u16)
def test_ipv4_template_filled_is_the_one_shot_header(pair: tuple[bytes, bytes], proto: int,
                                                     ttl: int, total_len: int,
                                                     ident: int) -> None:
    src, dst = pair
    one_shot, filled = bytearray(20), bytearray(20)
    build_ipv4(one_shot, 0, src=src, dst=dst, proto=proto, payload_len=total_len - 20,
               ident=ident, ttl=ttl)
    header_sum = build_ipv4_template(filled, 0, src=src, dst=dst, proto=proto, ttl=ttl)
    fill_ipv4(filled, 0, header_sum, total_len, ident)
    assert filled == one_shot


@given(pair=v6_pair, next_header=u8.filter(lambda n: n not in IPV6_EXTENSIONS),
       payload=payloads, hop_limit=u8)
def test_ipv6_reads_back_as_built(pair: tuple[bytes, bytes], next_header: int, payload: bytes,
                                  hop_limit: int) -> None:
    src, dst = pair
    buf = bytearray(40)
    build_ipv6(buf, 0, src=src, dst=dst, next_header=next_header, payload_len=0,
               hop_limit=hop_limit)
    fill_ipv6_length(buf, 0, len(payload))
    ip = Ipv6Header.parse(view(buf + payload))
    assert (ip.src, ip.dst, ip.proto, ip.ttl) == (src, dst, next_header, hop_limit)
    assert not ip.is_fragment and bytes(ip.payload) == payload


@given(pair=v6_pair, proto=u8, payload=payloads, ident=u32, offset_units=st.integers(0, 0x1FFF),
       more=st.booleans())
def test_ipv6_fragment_header_reads_back_as_built(pair: tuple[bytes, bytes], proto: int,
                                                  payload: bytes, ident: int,
                                                  offset_units: int, more: bool) -> None:
    assume(more or offset_units)  # offset 0 and M clear: an atomic fragment, no fragment
    src, dst = pair
    buf = bytearray(48)
    offset = build_ipv6(buf, 0, src=src, dst=dst, next_header=44, payload_len=8 + len(payload))
    build_fragment_header(buf, offset, next_header=proto, frag_offset=offset_units * 8,
                          more=more, ident=ident)
    ip = Ipv6Header.parse(view(buf + payload))
    assert (ip.proto, ip.ident, ip.more_fragments, ip.frag_offset) == (
        proto, ident, more, offset_units * 8)
    assert bytes(ip.payload) == payload


# --- UDP, TCP, ICMP, ARP -------------------------------------------------------------------------

@given(pair=addr_pair, sport=port, dport=port, payload=payloads)
def test_udp_reads_back_as_built(pair: tuple[bytes, bytes], sport: int, dport: int,
                                 payload: bytes) -> None:
    src, dst = pair
    buf = bytearray(8)
    build_udp(buf, 0, src=src, dst=dst, src_port=sport, dst_port=dport, payload=payload)
    udp = UdpHeader.parse(view(buf + payload), src, dst)
    assert (udp.src_port, udp.dst_port, bytes(udp.payload)) == (sport, dport, payload)


MSS, WSCALE, NOP, END = 2, 3, 1, 0
tcp_option = st.one_of(
    st.tuples(st.just(MSS), u16).map(lambda o: struct.pack("!BBH", MSS, 4, o[1])),
    st.tuples(st.just(WSCALE), u8).map(lambda o: struct.pack("!BBB", WSCALE, 3, o[1])),
    st.just(bytes((NOP,))),
    st.just(b"\x04\x02"),  # SACK permitted
    st.binary(min_size=8, max_size=8).map(lambda t: b"\x08\x0a" + t),  # timestamps
    st.tuples(st.integers(9, 254), st.binary(max_size=6)).map(  # unknown, skipped
        lambda o: bytes((o[0], 2 + len(o[1]))) + o[1]),
)


def _expected_options(options: list[bytes]) -> tuple[int | None, int | None]:
    """The last MSS and window scale among *options*, the scale capped at 14 (RFC 7323)."""
    mss = wscale = None
    for option in options:
        if option[0] == MSS:
            mss = int.from_bytes(option[2:4], "big")
        elif option[0] == WSCALE:
            wscale = min(option[2], 14)
    return mss, wscale


@given(pair=addr_pair, sport=port, dport=port, seq=u32, ack=u32, flags=u8, window=u16,
       options=st.lists(tcp_option, max_size=8), payload=payloads)
def test_tcp_reads_back_as_built_with_options(pair: tuple[bytes, bytes], sport: int,
                                              dport: int, seq: int, ack: int, flags: int,
                                              window: int, options: list[bytes],
                                              payload: bytes) -> None:
    src, dst = pair
    raw = b"".join(options)
    assume(len(raw) <= 40)
    raw += bytes(-len(raw) % 4)  # END, then padding, to a whole number of words
    buf = bytearray(20 + len(raw))
    build_tcp(buf, 0, src=src, dst=dst, src_port=sport, dst_port=dport, seq=seq, ack=ack,
              flags=flags, window=window, options=raw, payload=payload)
    seg = TcpHeader.parse(view(buf + payload), src, dst)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window) == (
        sport, dport, seq, ack, flags, window)
    assert bytes(seg.payload) == payload
    # Options are read on SYNs only (RFC 9293 3.7.1: MSS; RFC 7323 2.2: window scale).
    expected = _expected_options(options) if flags & SYN and raw else (None, None)
    assert (seg.mss, seg.wscale) == expected


@given(pair=addr_pair, mss=u16, wscale=st.integers(0, 14))
def test_tcp_syn_options_read_back(pair: tuple[bytes, bytes], mss: int, wscale: int) -> None:
    src, dst = pair
    options = syn_options(mss, wscale)
    buf = bytearray(20 + len(options))
    build_tcp(buf, 0, src=src, dst=dst, src_port=1, dst_port=2, seq=0, ack=0, flags=SYN,
              window=0, options=options)
    seg = TcpHeader.parse(view(buf), src, dst)
    assert (seg.mss, seg.wscale) == (mss, wscale)


@given(pair=addr_pair, sport=port, dport=port, seq=u32, ack=u32, flags=u8, window=u16,
       payload=payloads)
def test_tcp_template_filled_is_the_one_shot_segment(pair: tuple[bytes, bytes], sport: int,
                                                     dport: int, seq: int, ack: int,
                                                     flags: int, window: int,
                                                     payload: bytes) -> None:
    """The fast path's checksum, from partial sums, is build_tcp's (see guest.TcpTemplate)."""
    src, dst = pair
    one_shot, filled = bytearray(20), bytearray(20)
    build_tcp(one_shot, 0, src=src, dst=dst, src_port=sport, dst_port=dport, seq=seq, ack=ack,
              flags=flags, window=window, payload=payload)
    header_sum = build_tcp_template(filled, 0, src_port=sport, dst_port=dport)
    pseudo = pseudo_header_sum(src, dst, 6, 0) + 20 + len(payload)
    total = pseudo + header_sum + seq + ack + flags + window
    fill_tcp(filled, 0, seq, ack, flags, window, checksum(payload, total))
    assert filled == one_shot


@given(pair=addr_pair, payload=payloads)
def test_tcp_offloaded_checksum_completes_to_the_full_one(pair: tuple[bytes, bytes],
                                                          payload: bytes) -> None:
    """With checksum=False the field holds the pseudo-header sum; the guest's kernel sums
    from the TCP header on and stores the complement (VIRTIO_NET_HDR_F_NEEDS_CSUM)."""
    src, dst = pair
    full, partial = bytearray(20), bytearray(20)
    for buf, complete in ((full, True), (partial, False)):
        build_tcp(buf, 0, src=src, dst=dst, src_port=1, dst_port=2, seq=3, ack=4, flags=ACK,
                  window=5, payload=payload, checksum=complete)
    segment = partial + payload
    struct.pack_into("!H", partial, 16, checksum(segment))
    assert partial == full


@given(icmp_type=u8, code=u8, rest=st.binary(min_size=4, max_size=4), payload=payloads,
       v6=st.none() | v6_pair)
def test_icmp_reads_back_as_built(icmp_type: int, code: int, rest: bytes, payload: bytes,
                                  v6: tuple[bytes, bytes] | None) -> None:
    initial = 0 if v6 is None else pseudo_header_sum(*v6, 58, 8 + len(payload))
    message = build_icmp(icmp_type, code, rest, payload, initial)
    icmp = IcmpHeader.parse(view(message), initial=initial)
    assert (icmp.type, icmp.code, icmp.rest, bytes(icmp.payload)) == (
        icmp_type, code, rest, payload)


@given(op=u16, sender_mac=st.binary(min_size=6, max_size=6), sender_ip=ipv4,
       target_mac=st.binary(min_size=6, max_size=6), target_ip=ipv4)
def test_arp_reads_back_as_built(op: int, sender_mac: bytes, sender_ip: bytes,
                                 target_mac: bytes, target_ip: bytes) -> None:
    buf = bytearray(28)
    build_arp(buf, 0, op=op, sender_mac=sender_mac, sender_ip=sender_ip,
              target_mac=target_mac, target_ip=target_ip)
    assert ArpPacket.parse(view(buf)) == (op, sender_mac, sender_ip, target_mac, target_ip)


# --- DNS, DHCP ------------------------------------------------------------------------------------

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.lists(label, min_size=1, max_size=5).map(".".join)


@given(ident=u16, name=names, qtype=u16, rcode=st.integers(0, 15))
def test_dns_query_and_its_error_reply_read_back(ident: int, name: str, qtype: int,
                                                 rcode: int) -> None:
    message = build_query(ident, name, qtype)
    query = DnsQuery.parse(view(message))
    assert (query.ident, query.qdcount) == (ident, 1)
    assert bytes(query.question) == message[12:]
    reply = parse_response(build_error_reply(query, rcode))
    assert (reply.ident, reply.rcode, reply.truncated, reply.answers) == (ident, rcode, False, [])


def _wire_name(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0"


records = st.one_of(
    st.tuples(names, st.just(1), ipv4),
    st.tuples(names, st.just(28), ipv6),
    st.tuples(names, st.just(33), st.tuples(u16, u16, u16, names)),
    st.tuples(names, st.just(5), names),
    st.tuples(names, st.integers(100, 200), st.binary(max_size=20)),
)


@settings(max_examples=60)
@given(ident=u16, answers=st.lists(st.tuples(records, st.integers(0, 0x7FFFFFFF)), max_size=5),
       additional=st.lists(st.tuples(records, st.integers(0, 0x7FFFFFFF)), max_size=3),
       truncated=st.booleans())
def test_dns_response_reads_back_as_built(ident: int, answers: list, additional: list,
                                          truncated: bool) -> None:
    def encode(record: tuple, ttl: int) -> tuple[bytes, Record]:
        name, rtype, data = record
        if rtype == 33:
            priority, weight, srv_port, target = data
            rdata = struct.pack("!HHH", priority, weight, srv_port) + _wire_name(target)
            value: SrvData | bytes = SrvData(priority, weight, srv_port, target)
        elif rtype == 5:
            rdata = value = _wire_name(data)
        else:
            rdata = value = data
        wire = _wire_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
        return wire, Record(name, rtype, ttl, value)

    encoded_answers = [encode(r, ttl) for r, ttl in answers]
    encoded_additional = [encode(r, ttl) for r, ttl in additional]
    flags = 0x8180 | (0x0200 if truncated else 0)
    message = struct.pack("!HHHHHH", ident, flags, 1, len(answers), 0, len(additional))
    message += _wire_name("q.example") + struct.pack("!HH", 33, 1)
    message += b"".join(w for w, _ in encoded_answers + encoded_additional)
    response = parse_response(message)
    assert (response.ident, response.rcode, response.truncated) == (ident, 0, truncated)
    assert response.answers == [r for _, r in encoded_answers]
    assert response.additional == [r for _, r in encoded_additional]


dhcp_options = st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=40)), max_size=8)


@given(xid=u32, flags=u16, ciaddr=ipv4, yiaddr=ipv4, siaddr=ipv4,
       chaddr=st.binary(min_size=6, max_size=6), options=dhcp_options)
def test_dhcp_reads_back_as_built(xid: int, flags: int, ciaddr: bytes, yiaddr: bytes,
                                  siaddr: bytes, chaddr: bytes,
                                  options: list[tuple[int, bytes]]) -> None:
    message = build_dhcp_reply(xid=xid, flags=flags, ciaddr=ciaddr, yiaddr=yiaddr,
                               siaddr=siaddr, chaddr=chaddr, options=options)
    message[0] = 1  # BOOTREQUEST: the parser reads what clients send
    parsed = DhcpMessage.parse(view(message))
    expected: dict[int, bytes] = {}
    for code, value in options:  # RFC 3396: a repeated option continues the first
        expected[code] = expected.get(code, b"") + value
    assert (parsed.xid, parsed.flags, parsed.ciaddr, parsed.yiaddr, parsed.chaddr) == (
        xid, flags, ciaddr, yiaddr, chaddr)
    assert parsed.options == expected
    assert DhcpOption.END not in parsed.options


# --- PROXY, SPP ---------------------------------------------------------------------------------

def _text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def _unmapped(addr: bytes) -> bytes:
    return addr[12:] if addr.startswith(V4_MAPPED) else addr


endpoints4 = st.tuples(st.tuples(ipv4, u16), st.tuples(ipv4, u16))
endpoints6 = st.tuples(st.tuples(ipv6, u16), st.tuples(ipv6, u16))


@given(endpoints=st.one_of(endpoints4, endpoints6), after=st.binary(max_size=20),
       v2=st.booleans(), tlvs=st.lists(st.tuples(u8, st.binary(max_size=30)), max_size=4))
def test_proxy_header_reads_back_as_built(endpoints: tuple, after: bytes, v2: bool,
                                          tlvs: list[tuple[int, bytes]]) -> None:
    (src, sport), (dst, dport) = endpoints
    source, destination = (_text(src), sport), (_text(dst), dport)
    if v2:
        encoded = b"".join(struct.pack("!BH", kind, len(v)) + v for kind, v in tlvs)
        header = build_proxy_v2(source, destination, tlvs=encoded)
    else:
        header = build_proxy_v1(source, destination)
    parsed = parse_proxy_header(header + after)
    assert parsed is not None
    assert parsed.length == len(header)
    # An IPv4-mapped address is the IPv4 client it stands for.
    assert parsed.source == (_unmapped(src), sport)
    assert parsed.destination == (_unmapped(dst), dport)
    for cut in range(len(header)):  # every prefix: "more, please", never a refusal
        assert parse_proxy_header(header[:cut]) is None


spp_address = st.one_of(ipv4, ipv6.filter(lambda a: not a.startswith(V4_MAPPED)))


@given(client=st.tuples(spp_address, u16), proxy=st.tuples(spp_address, u16),
       payload=payloads)
def test_spp_reads_back_as_built(client: tuple[bytes, int], proxy: tuple[bytes, int],
                                 payload: bytes) -> None:
    header = SppHeader(client, proxy)
    parsed, rest = parse_spp(build_spp(header) + payload)
    assert parsed == header and bytes(rest) == payload


# --- reassembly ----------------------------------------------------------------------------------

@st.composite
def fragmented(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes, bool]], list[int]]:
    """A payload, its pieces (offset, data, more) cut at multiples of 8, and an order to
    send them in: each piece at least once, some twice, shuffled."""
    payload = draw(st.binary(min_size=9, max_size=2000))
    cuts = sorted(draw(st.sets(st.integers(1, (len(payload) - 1) // 8), min_size=1,
                               max_size=12)))
    bounds = [0, *(c * 8 for c in cuts), len(payload)]
    pieces = [(start, payload[start:end], end < len(payload))
              for start, end in zip(bounds, bounds[1:], strict=False)]
    order = draw(st.permutations(range(len(pieces))))
    repeats = draw(st.lists(st.integers(0, len(pieces) - 1), max_size=4))
    for index in repeats:  # a repeat before the piece that completes the datagram
        order.insert(draw(st.integers(0, len(order) - 1)), index)
    return payload, pieces, order


@settings(max_examples=150)
@given(case=fragmented(), v6=st.booleans())
def test_reassembly_is_order_and_repeat_independent(
        case: tuple[bytes, list[tuple[int, bytes, bool]], list[int]], v6: bool) -> None:
    payload, pieces, order = case
    size = 16 if v6 else 4
    key = FragKey(b"\x0a" * size, b"\xc0" * size, 17, 7)
    reassembler = Reassembler()
    seen: set[int] = set()
    for index in order:
        start, data, more = pieces[index]
        seen.add(index)
        whole = reassembler.on_fragment(key, start, more, memoryview(data), 1000.0)
        if len(seen) < len(pieces):
            assert whole is None
        else:
            assert whole == payload  # the last missing piece completes it, whatever came
            break
    assert not reassembler.queues and reassembler.held_bytes == 0
    assert sum(reassembler.drops.values()) == 0


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6),
       data=st.data())
def test_tcp_stream_reaches_the_host_whole_whatever_the_segment_order(
        chunks: list[bytes], data: st.DataObject) -> None:
    """The guest sends its segments in any order, some twice; then, as its stack would,
    retransmits from the acknowledged point until all is acknowledged."""
    t = TcpHarness()
    t.handshake()
    isn = t.guest_seq
    starts = [isn]
    for chunk in chunks:
        starts.append(seq_add(starts[-1], len(chunk)))
    stream = b"".join(chunks)
    order = data.draw(st.permutations(range(len(chunks))))
    order += data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=3))
    acked = isn
    for index in order:
        for frame in t.segment("PA", chunks[index], seq=starts[index], ack=t.ack_point):
            if frame[TCP].flags & ACK and seq_lt(acked, frame[TCP].ack):
                acked = frame[TCP].ack
    for _ in range(2 * len(chunks) + 2):  # go-back-N from the acknowledged point
        offset = seq_diff(acked, isn)
        if offset >= len(stream):
            break
        for frame in t.segment("PA", stream[offset:offset + 200], seq=acked, ack=t.ack_point):
            if frame[TCP].flags & ACK and seq_lt(acked, frame[TCP].ack):
                acked = frame[TCP].ack
    assert bytes(t.host.received) == stream
    assert seq_diff(acked, isn) == len(stream)


# --- sequence numbers ---------------------------------------------------------------------------

window = st.integers(-(2**31) + 1, 2**31 - 1)  # distances RFC 1982 can order
seq = st.integers(0, MOD - 1)


@given(a=seq, n=window)
def test_seq_add_then_diff_is_the_distance(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert 0 <= b < MOD
    assert seq_diff(b, a) == n and seq_diff(a, b) == -n
    assert seq_lt(a, b) == (n > 0) and seq_le(a, b) == (n >= 0)
    assert seq_lt(b, a) == (n < 0)


@given(a=seq, b=seq)
def test_seq_order_is_antisymmetric_and_total(a: int, b: int) -> None:
    assume(seq_diff(a, b) != -(2**31))  # exactly half the space apart: undefined (RFC 1982)
    assert seq_le(a, a) and not seq_lt(a, a)
    assert seq_lt(a, b) + seq_lt(b, a) + (a == b) == 1


@given(a=seq, m=st.integers(0, 2**30 - 1), n=st.integers(0, 2**30 - 1))
def test_seq_order_is_transitive_within_half_the_space(a: int, m: int, n: int) -> None:
    b, c = seq_add(a, m), seq_add(a, m + n)
    assert seq_le(a, b) and seq_le(b, c) and seq_le(a, c)
    assert seq_diff(c, a) == seq_diff(c, b) + seq_diff(b, a)


def test_seq_wraps_around() -> None:
    top = MOD - 1
    assert seq_add(top, 1) == 0 and seq_lt(top, 0) and seq_diff(0, top) == 1
    assert seq_lt(MOD - 10, 5) and not seq_lt(5, MOD - 10)


# --- the Internet checksum ------------------------------------------------------------------------

def _swap(word: int) -> int:
    return (word >> 8) | (word & 0xFF) << 8


def _words_sum(data: bytes) -> int:
    """RFC 1071's loop, word by word with end-around carry: the reference."""
    data += b"\0" * (len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(data=st.binary(max_size=600), initial=st.integers(0, 2**40))
def test_ones_sum_is_rfc_1071s_sum(data: bytes, initial: int) -> None:
    assert ones_sum(data) == _words_sum(data)
    assert ones_sum(data, initial) == fold(initial + _words_sum(data))


@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_ones_sum_of_a_concatenation(a: bytes, b: bytes) -> None:
    """Sum the parts and add: at an odd cut the second part's bytes sit in the other
    halves of the words, so its sum is byte-swapped (RFC 1071 2(B))."""
    tail = ones_sum(b) if len(a) % 2 == 0 else _swap(ones_sum(b))
    assert ones_sum(a + b) == fold(ones_sum(a) + tail)


@given(parts=st.lists(st.binary(max_size=80).map(lambda p: p + b"\0" * (len(p) % 2)),
                      max_size=8))
def test_incremental_partial_sums_equal_one_shot(parts: list[bytes]) -> None:
    running = 0
    for part in parts:  # each part word-aligned: a sum carried from one to the next
        running = ones_sum(part, running)
    assert running == ones_sum(b"".join(parts))
    deferred = sum(int.from_bytes(p, "big") for p in parts)  # carries folded only at the end
    assert fold(deferred) == ones_sum(b"".join(parts))


@given(data=st.binary(max_size=600).map(lambda d: d + b"\0" * (len(d) % 2)))
def test_data_with_its_checksum_verifies(data: bytes) -> None:
    field = checksum(data)
    assert checksum(data + struct.pack("!H", field)) == 0
    assert field == finish(ones_sum(data))


@given(pair=addr_pair, proto=u8, length=u16)
def test_pseudo_header_partial_sum_plus_length(pair: tuple[bytes, bytes], proto: int,
                                               length: int) -> None:
    src, dst = pair
    assert fold(pseudo_header_sum(src, dst, proto, 0) + length) == pseudo_header_sum(
        src, dst, proto, length)
