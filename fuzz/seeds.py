"""Write the seed inputs of every target into fuzz/corpus/<target>/seed-*: valid frames,
headers and messages built with scapy, and for the stack short programs (a handshake,
a DHCP exchange, a DNS query and its answer, fragments, neighbour discovery).

Run once, from the repository's top, when the targets' input formats change:
`python -m fuzz.seeds`. It only adds or overwrites seed-* files; what fuzzing found
stays. Needs scapy (the test extras).
"""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RS,
                                ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop)
from scapy.layers.l2 import ARP, Ether

from fuzz.wire_targets import DST4, DST6, SRC4, SRC6
from slirpy.wire.proxy import SppHeader, build_proxy_v1, build_proxy_v2, build_spp

CORPUS = Path(__file__).resolve().parent / "corpus"
GUEST_MAC = "02:00:00:00:00:64"
OUR_MAC = "52:55:0a:00:02:02"
ETH = Ether(src=GUEST_MAC, dst=OUR_MAC)
BCAST = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")


def frames() -> dict[str, bytes]:
    dhcp = (BCAST / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
            / BOOTP(chaddr=bytes.fromhex("020000000064"), xid=0x1234)
            / DHCP(options=[("message-type", "discover"), "end"]))
    request = (BCAST / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
               / BOOTP(chaddr=bytes.fromhex("020000000064"), xid=0x1234)
               / DHCP(options=[("message-type", "request"), ("requested_addr", "10.0.2.15"),
                               ("server_id", "10.0.2.2"), "end"]))
    g6 = Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
    return {
        "arp": bytes(BCAST / ARP(hwsrc=GUEST_MAC, psrc="10.0.2.100", pdst="10.0.2.2")),
        "dhcp-discover": bytes(dhcp),
        "dhcp-request": bytes(request),
        "dns": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.3") / UDP(sport=40000, dport=53)
                     / DNS(id=7, qd=DNSQR(qname="example.com"))),
        "ping": bytes(ETH / IP(src="10.0.2.100", dst="192.0.2.1") / ICMP(id=1, seq=1) / (b"x" * 8)),
        "ping-gw": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.2") / ICMP(id=2) / b"ab"),
        "udp": bytes(ETH / IP(src="10.0.2.100", dst="192.0.2.1") / UDP(sport=5000, dport=7)
                     / b"hello"),
        "syn": bytes(ETH / IP(src="10.0.2.100", dst="192.0.2.1")
                     / TCP(sport=40000, dport=80, flags="S", seq=1000,
                           options=[("MSS", 1460), ("WScale", 7)])),
        "syn-forward": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.9")
                             / TCP(sport=40001, dport=80, flags="S", seq=5)),
        "syn-srv": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.50")
                         / TCP(sport=40003, dport=9000, flags="S", seq=9)),
        "syn-dns": bytes(ETH / IP(src="10.0.2.100", dst="10.0.2.3")
                         / TCP(sport=40002, dport=53, flags="S", seq=5)),
        "rs": bytes(g6 / IPv6(src="fe80::64", dst="ff02::2", hlim=255)
                    / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)),
        "ns": bytes(Ether(src=GUEST_MAC, dst="33:33:ff:00:00:02")
                    / IPv6(src="fd00::100", dst="ff02::1:ff00:2", hlim=255)
                    / ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)),
        "na": bytes(ETH / IPv6(src="fd00::100", dst="fe80::2", hlim=255)
                    / ICMPv6ND_NA(tgt="fd00::100", S=1, O=1)),
        "ping6": bytes(ETH / IPv6(src="fd00::100", dst="2001:db8::1")
                       / ICMPv6EchoRequest(id=3, seq=1, data=b"x" * 8)),
        "udp6-ext": bytes(ETH / IPv6(src="fd00::100", dst="2001:db8::1") / IPv6ExtHdrHopByHop()
                          / IPv6ExtHdrDestOpt() / UDP(sport=5000, dport=7) / b"x"),
        "syn6": bytes(ETH / IPv6(src="fd00::100", dst="2001:db8::1")
                      / TCP(sport=40000, dport=80, flags="S", seq=1000)),
        "dns6": bytes(ETH / IPv6(src="fd00::100", dst="fd00::3") / UDP(sport=40000, dport=53)
                      / DNS(id=9, qd=DNSQR(qname="example.com", qtype="AAAA"))),
    }


def fragments() -> list[bytes]:
    datagram = bytes(IP(src="10.0.2.100", dst="192.0.2.1", id=77) / UDP(sport=5000, dport=7)
                     / (b"f" * 100))
    l4 = datagram[20:]
    pieces = [bytes(ETH / IP(src="10.0.2.100", dst="192.0.2.1", id=77, proto=17,
                             flags="MF" if start + 32 < len(l4) else 0, frag=start // 8)
                    / l4[start:start + 32]) for start in range(0, len(l4), 32)]
    six = (IPv6(src="fd00::100", dst="2001:db8::1") / IPv6ExtHdrFragment(id=5, m=1)
           / UDP(sport=5000, dport=7, len=8 + 24, chksum=0x1234) / (b"g" * 16))
    return [*pieces, bytes(ETH / six)]


def dns_response() -> bytes:
    return bytes(DNS(id=7, qr=1, qd=DNSQR(qname="_x._tcp.example", qtype="SRV"),
                     an=[DNSRRSRV(rrname="_x._tcp.example", target="host.example", port=80),
                         DNSRR(rrname="host.example", type="CNAME", rdata="h2.example")],
                     ar=[DNSRR(rrname="h2.example", rdata="192.0.2.80"),
                         DNSRR(rrname="h2.example", type="AAAA", rdata="2001:db8::80")]))


# --- the stack's programs (see fuzz.stack_target: the op numbers are its `match`) ---------

def raw(frame: bytes, checksum_ok: bool = False) -> bytes:
    return bytes((0,)) + struct.pack("!H", len(frame)) + frame + bytes((checksum_ok,))


def timer(step: int, extra: int = 0) -> bytes:
    return bytes((13, step, extra))


CONNECTED = bytes((14, 0, 0, 4))  # the first connecting flow: Connected, a large space


def host_writes(data: bytes) -> bytes:
    return bytes((15, 0, 0)) + struct.pack("!H", len(data)) + data


def conversation(flags: int, payload: bytes = b"") -> bytes:
    """A segment in the first conversation: seq and ack as expected, *flags*, a window."""
    return (bytes((8, 0, 0, 0, flags_index(flags), 0)) + b"\xff\xff"
            + struct.pack("!H", len(payload)) + payload + bytes((3,)) + bytes(6))


def flags_index(flags: int) -> int:
    return (0x10, 0x18, 0x11, 0x12, 0x04, 0x14, 0x19).index(flags)


def programs() -> dict[str, bytes]:
    f = frames()
    v4 = 0x20  # forwards and rules on
    v6 = 0x21
    # The first datagram flow answers: one A record for the question it asked.
    dns_answer = bytes((17, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0))
    # An SRV answer naming host.example:8080 (its name a pointer to the question), then
    # A records, on the first flow or the second, for the lookup of the target.
    srv_answer = bytes((17, 0, 0, 0, 1, 0, 0, 1, 0, 2, 0, 1, 0, 1, 0x1F, 0x90, 0, 0,
                        0, 0, 0, 60, 0, 0))

    def a_answer(flow: int) -> bytes:
        return bytes((17, flow, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0))

    return {
        "arp": bytes((0, 0)) + raw(f["arp"]),
        "dhcp": bytes((0, 0)) + raw(f["dhcp-discover"]) + raw(f["dhcp-request"]) + timer(8),
        "dns": bytes((0, 0)) + raw(f["dns"]) + dns_answer + timer(5),
        "tcp": (bytes((v4,)) + bytes((0,)) + raw(f["arp"]) + raw(f["syn"]) + CONNECTED
                + conversation(0x10) + conversation(0x18, b"GET / HTTP/1.0\r\n\r\n")
                + host_writes(b"HTTP/1.0 200 OK\r\n\r\nhi") + conversation(0x10)
                + conversation(0x11) + timer(4)),
        "tcp-forward": (bytes((v4, 0)) + raw(f["arp"]) + raw(f["syn-forward"]) + CONNECTED
                        + conversation(0x10) + timer(3)),
        "accept": bytes((v4, 0)) + raw(f["arp"]) + bytes((19, 0, 0, 3)) + conversation(0x12),
        "forward-udp": (bytes((v4, 0)) + raw(f["arp"]) + bytes((20, 0, 0, 5)) + b"hello"
                        + bytes((0, 0))),
        "ping": (bytes((0, 0)) + raw(f["ping"]) + raw(f["ping-gw"])
                 + bytes((17, 0, 3, 0, 1, 0, 2)) + b"ab" + timer(5)),
        "udp": bytes((0, 0)) + raw(f["udp"]) + bytes((17, 0, 5, 0, 3)) + b"abc" + timer(7),
        "fragments": bytes((0, 0)) + b"".join(raw(p) for p in fragments()) + timer(5),
        "ipv6": (bytes((v6, 0)) + raw(f["rs"]) + raw(f["ns"]) + raw(f["na"]) + raw(f["ping6"])
                 + raw(f["udp6-ext"]) + raw(f["syn6"]) + CONNECTED + raw(f["dns6"]) + timer(6)),
        "srv": (bytes((v4, 0)) + raw(f["arp"]) + raw(f["syn-srv"]) + srv_answer + a_answer(0)
                + a_answer(1) + CONNECTED + conversation(0x10) + timer(3)),
        "icmp-error": (bytes((0, 0)) + raw(f["udp"])
                       + bytes((17, 0, 2, 0, 1, 3, 2)) + raw(f["ping"])
                       + bytes((17, 0, 2, 1, 0, 4, 4)) + timer(6)),
        "timers": bytes((1, 0)) + raw(f["syn"]) + timer(3) + timer(5) + timer(8) + timer(9),
    }


def seeds() -> dict[str, dict[str, bytes]]:
    f = frames()
    ip4 = {k: v[14:] for k, v in f.items() if v[12:14] == b"\x08\x00"}
    ip6 = {k: v[14:] for k, v in f.items() if v[12:14] == b"\x86\xdd"}
    dhcp = f["dhcp-discover"][14 + 28:]
    dns_query = f["dns"][14 + 28:]
    v1 = build_proxy_v1(("198.51.100.7", 40000), ("10.0.2.2", 80))
    v1_6 = build_proxy_v1(("2001:db8::7", 1), ("::ffff:192.0.2.1", 65535))
    v2 = build_proxy_v2(("198.51.100.7", 40000), ("10.0.2.2", 80), tlvs=b"\x01\x00\x02h2")
    v2_6 = build_proxy_v2(("2001:db8::7", 1), ("2001:db8::1", 2))
    spp = build_spp(SppHeader((SRC4, 40000), (DST4, 5354)))
    spp6 = build_spp(SppHeader((SRC6, 40000), (DST6, 5354)))
    ns_body = bytes(ICMPv6ND_NS(tgt="fd00::2") / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))[8:]
    return {
        "ethernet": {k: v for k, v in list(f.items())[:4]},
        "arp": {"request": f["arp"][14:]},
        "ipv4": {k: b"\x00" + v for k, v in ip4.items()},
        "ipv6": {**ip6, "fragment": fragments()[-1][14:]},
        "icmp": {"echo": b"\x00" + ip4["ping"][20:],
                 "echo6": b"\x01" + ip6["ping6"][40:]},
        "icmpv6": {"ns": b"\x01" + ns_body},
        "udp": {"v4": b"\x00" + ip4["udp"][20:], "dns6": b"\x01" + ip6["dns6"][40:]},
        "tcp": {"syn": b"\x00" + ip4["syn"][20:], "syn6": b"\x01" + ip6["syn6"][40:]},
        "dhcp": {"discover": dhcp, "request": f["dhcp-request"][14 + 28:]},
        "dns_query": {"query": dns_query, "aaaa": ip6["dns6"][48:]},
        "dns_response": {"srv": dns_response()},
        "proxy": {"v1": v1 + b"GET /", "v1-6": v1_6, "v1-unknown": b"PROXY UNKNOWN\r\n",
                  "v2": v2 + b"payload", "v2-6": v2_6,
                  "v2-local": v2[:12] + b"\x20\x00\x00\x00"},
        "spp": {"v4": spp + b"data", "v6": spp6},
        "checksum": {"words": bytes(range(64)), "odd": b"\x00\x01\x00" + bytes(range(33))},
        "stack": programs(),
    }


def main() -> None:
    for target, inputs in seeds().items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in inputs.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
