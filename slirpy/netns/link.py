"""Links and addresses through rtnetlink (pyroute2): never by running `ip`.

Two jobs, in two places:
- `configure_link` runs in the tap helper, after it joined the guest's network
  namespace (a netlink socket talks to the namespace it was made in): what
  slirp4netns's `-c` does, so the guest is online without a DHCP client.
- `interface_address` runs in slirpy's own namespace, to turn `--outbound-addr=eth0`
  into the address outgoing sockets bind to.

pyroute2 takes about 0.2 s to import, so it is imported inside these functions: a
command line with a mistake in it fails at once, and only the helper pays for `-c`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Final

from slirpy.config import Config
from slirpy.errors import SetupError

IFA_F_NODAD: Final = 0x02  # <linux/if_addr.h>: the address is usable at once, no DAD wait
_IPV6_HINT: Final = " (is IPv6 disabled on this host? --disable-ipv6 runs without it)"


@contextlib.contextmanager
def _step(what: str, hint: str = "") -> Iterator[None]:
    """Turn a netlink refusal during *what* into one line for the user."""
    from pyroute2 import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise SetupError(f"cannot {what}: {os.strerror(exc.code)}{hint}") from None


def configure_link(tap_name: str, config: Config, mac: str | None) -> None:
    """lo up; the tap's MTU and MAC, tap up, address network+100, default route via +2.

    With IPv6 on, also the IPv6 network's ::100/64 (flagged "no DAD": the guest is
    alone on the link with slirpy, and the address must work before CMD starts, not
    a second later) and a default route via its ::2. The kernel still takes a SLAAC
    address from slirpy's router advertisements beside it, as on any link.

    Runs inside the guest's network namespace (the tap helper has joined it).
    """
    from pyroute2 import IPRoute

    net = config.network
    with IPRoute() as ipr:
        with _step("bring lo up"):
            (lo,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo, state="up")
        with _step(f"configure {tap_name}"):
            (tap,) = ipr.link_lookup(ifname=tap_name)
            extra = {"address": mac} if mac else {}
            ipr.link("set", index=tap, mtu=config.mtu, **extra)
            ipr.link("set", index=tap, state="up")
        with _step(f"add {net.guest}/{net.cidr.prefixlen} to {tap_name}"):
            ipr.addr("add", index=tap, address=str(net.guest), prefixlen=net.cidr.prefixlen)
        with _step(f"add a default route via {net.gateway}"):
            ipr.route("add", dst="0.0.0.0/0", gateway=str(net.gateway), oif=tap)
        if not config.ipv6:
            return
        with _step(f"add {net.guest6}/{net.cidr6.prefixlen} to {tap_name}", _IPV6_HINT):
            ipr.addr("add", index=tap, address=str(net.guest6), prefixlen=net.cidr6.prefixlen,
                     flags=IFA_F_NODAD)
        with _step(f"add an IPv6 default route via {net.gateway6}", _IPV6_HINT):
            ipr.route("add", dst="::/0", gateway=str(net.gateway6), oif=tap)


def interface_address(name: str, version: int
                      ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The first IPv*version* address of interface *name* here, or None if it has none.

    "First" in the kernel's order, whatever its scope, as slirp4netns takes the first
    of getifaddrs(): `lo` gives 127.0.0.1 even with more addresses on it. Raises
    LookupError when there is no such interface.
    """
    from pyroute2 import IPRoute

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise LookupError(name)
        for msg in ipr.get_addr(index=links[0], family=family):
            return ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
    return None
