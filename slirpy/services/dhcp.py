"""A DHCP server for the one guest link (RFC 2131), handing out network+15 onwards.

Model: libslirp's, which udhcpc, dhclient, systemd-networkd and NetworkManager all
accept: leases keyed by the client's MAC, at most DHCP_POOL_SIZE of them, 24 hours
long, server identifier = the gateway. A lease is never taken from a MAC that holds it
while free addresses remain; when the pool is full, the least recently seen expired
lease is reused. Replies go to the client's MAC and offered address, or to broadcast
when the client asks for it with the broadcast flag.
Not done here: relays (giaddr), options the guest did not need from libslirp either.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import struct
from typing import Final, NamedTuple

from slirpy.config import Config
from slirpy.ratelog import RateLimitedLog
from slirpy.wire.dhcp import FLAG_BROADCAST, DhcpMessage, DhcpOption, DhcpType, build_dhcp_reply

log = logging.getLogger(__name__)

LEASE_S: Final = 24 * 3600  # libslirp's LEASE_TIME
_ZERO: Final = b"\0\0\0\0"


class DhcpReply(NamedTuple):
    payload: bytearray
    dst_ip: bytes  # where the IPv4 datagram goes: the client's address or broadcast
    dst_mac: bytes


@dataclasses.dataclass(slots=True)
class _Lease:
    ip: bytes
    expires: float


class DhcpServer:
    def __init__(self, config: Config) -> None:
        self.log = RateLimitedLog(log, burst=1)  # a guest can ask from new MACs at line rate
        net = config.network
        # Where a client's ciaddr may be answered (RFC 2131 4.1): a host of the network.
        self.hosts = range(int(net.cidr.network_address) + 1, int(net.cidr.broadcast_address))
        self.server_id = net.gateway.packed
        self.pool = [ipaddress.IPv4Address(int(net.dhcp_start) + i).packed
                     for i in range(int(net.dhcp_end) - int(net.dhcp_start) + 1)
                     if ipaddress.IPv4Address(int(net.dhcp_start) + i) in net.cidr]
        self.options: list[tuple[int, bytes]] = [
            (DhcpOption.SERVER_ID, self.server_id),
            (DhcpOption.LEASE_TIME, struct.pack("!I", LEASE_S)),
            (DhcpOption.SUBNET_MASK, net.cidr.netmask.packed),
            (DhcpOption.ROUTER, net.gateway.packed),
            (DhcpOption.BROADCAST, net.cidr.broadcast_address.packed),
            (DhcpOption.INTERFACE_MTU, struct.pack("!H", config.mtu)),
        ]
        if config.dns:
            self.options.append((DhcpOption.DNS, net.dns.packed))
        self.leases: dict[bytes, _Lease] = {}  # MAC -> lease, least recently seen first

    def on_message(self, msg: DhcpMessage, now: float) -> DhcpReply | None:
        match msg.message_type:
            case DhcpType.DISCOVER:
                ip = self._allocate(msg.chaddr, msg.option_ip(DhcpOption.REQUESTED_IP), now)
                return None if ip is None else self._reply(msg, DhcpType.OFFER, ip)
            case DhcpType.REQUEST:
                return self._on_request(msg, now)
            case DhcpType.RELEASE | DhcpType.DECLINE:
                lease = self.leases.get(msg.chaddr)
                if lease is not None:
                    lease.expires = now
                return None
            case DhcpType.INFORM:
                return self._reply(msg, DhcpType.ACK, _ZERO, lease=False)
            case _:
                return None

    def _on_request(self, msg: DhcpMessage, now: float) -> DhcpReply | None:
        server_id = msg.option_ip(DhcpOption.SERVER_ID)
        if server_id is not None and server_id != self.server_id:
            return None  # RFC 2131 4.3.2: the client chose another server
        wanted = msg.option_ip(DhcpOption.REQUESTED_IP) or msg.ciaddr
        if wanted == _ZERO:
            return None
        ip = self._allocate(msg.chaddr, wanted, now)
        if ip != wanted:
            return self._reply(msg, DhcpType.NAK, _ZERO, lease=False)
        self.leases[msg.chaddr].expires = now + LEASE_S
        return self._reply(msg, DhcpType.ACK, ip)

    def _allocate(self, mac: bytes, wanted: bytes | None, now: float) -> bytes | None:
        """The address for *mac*: its lease, else *wanted* if free, else any free one."""
        lease = self.leases.pop(mac, None)
        if lease is None:
            held = {other.ip for other in self.leases.values() if other.expires > now}
            free = [ip for ip in self.pool if ip not in held]
            if not free:
                self.log.info("pool", now, "DHCP pool exhausted: no address for %s",
                              mac.hex(":"))
                return None
            ip = wanted if wanted in free else free[0]
            self._forget_address(ip)
            lease = _Lease(ip, now + 60.0)  # held for a minute until the REQUEST
        self.leases[mac] = lease  # most recently seen last
        return lease.ip

    def _forget_address(self, ip: bytes) -> None:
        for mac, lease in list(self.leases.items()):
            if lease.ip == ip:
                del self.leases[mac]

    def _reply(self, msg: DhcpMessage, kind: DhcpType, ip: bytes, *,
               lease: bool = True) -> DhcpReply:
        options: list[tuple[int, bytes]] = [(DhcpOption.MESSAGE_TYPE, bytes([kind]))]
        if kind == DhcpType.NAK:
            options.append((DhcpOption.SERVER_ID, self.server_id))
        elif lease:
            options += self.options
        else:
            options += [o for o in self.options if o[0] != DhcpOption.LEASE_TIME]
        payload = build_dhcp_reply(xid=msg.xid, flags=msg.flags, ciaddr=msg.ciaddr,
                                   yiaddr=ip, siaddr=self.server_id, chaddr=msg.chaddr,
                                   options=options)
        log.debug("DHCP %s to %s: %s", kind.name, msg.chaddr.hex(":"),
                  ipaddress.IPv4Address(ip))
        if int.from_bytes(msg.ciaddr, "big") in self.hosts and kind != DhcpType.NAK:
            return DhcpReply(payload, msg.ciaddr, msg.chaddr)
        if msg.flags & FLAG_BROADCAST or kind == DhcpType.NAK or ip == _ZERO:
            return DhcpReply(payload, b"\xff" * 4, b"\xff" * 6)
        return DhcpReply(payload, ip, msg.chaddr)
