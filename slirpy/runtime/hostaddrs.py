"""The host's own addresses and connected networks, kept current for the egress policy.

At start, and again whenever the kernel announces an address change (a netlink socket
subscribed to the IPv4 and IPv6 address groups wakes the loop), the addresses are read
afresh through pyroute2 and posted to the core as a HostNetworks event: each address
as a /32 or /128 and the network its prefix says is directly connected. The loop also
reads the event socket before each batch of guest frames, so a change made before a
flow's first packet was sent counts for its decision, whatever order epoll reports the
two in. So an address added to the host
while slirpy runs is protected from its next flow on, without a restart. The event
socket is only a wake-up: its messages are drained unread, the dump is the truth.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Final

from slirpy.addresses import IPNetwork as Network
from slirpy.events import Event, HostNetworks
from slirpy.runtime.loop import EventLoop

log = logging.getLogger(__name__)

# <linux/rtnetlink.h>: multicast groups of address changes.
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV6_IFADDR: Final = 0x100
EVENT_BUFFER_BYTES: Final = 65536  # read and thrown away: the dump is the truth


def host_networks() -> list[Network]:
    """Every address of this network namespace, and its connected network."""
    from pyroute2 import IPRoute

    found: list[Network] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            iface = ipaddress.ip_interface(f"{text.split('%')[0]}/{msg['prefixlen']}")
            found += [ipaddress.ip_network(iface.ip), iface.network]
    return list(dict.fromkeys(found))


class HostAddresses:
    def __init__(self, loop: EventLoop, post: Callable[[Event], None]) -> None:
        self.loop = loop
        self.post = post
        self.events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                    | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.events.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        loop.add(self.events.fileno(), self._on_event)
        self.refresh()

    def refresh(self) -> None:
        networks = host_networks()
        self.post(HostNetworks(tuple(networks)))
        log.debug("host addresses and networks: %s", ", ".join(map(str, networks)))

    def _on_event(self, mask: int) -> None:
        self.poll()

    def poll(self) -> None:
        """Refresh if the kernel announced a change (one non-blocking read)."""
        changed = False
        while True:  # drain: one dump answers any number of changes
            try:
                self.events.recv(EVENT_BUFFER_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: changes were lost; the dump still tells all
                log.debug("address events: %s", exc)
                changed = True
                break
            changed = True
        if changed:
            self.refresh()

    def close(self) -> None:
        self.loop.remove(self.events.fileno())
        self.events.close()
