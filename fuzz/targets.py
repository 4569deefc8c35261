"""The registry of fuzz targets: name -> where its function is, and its input cap.

Targets are named, not imported, here: the atheris worker must import slirpy under
its instrumentation, and only the modules its one target needs (the stack's take
seconds to instrument, a parser's a fraction of that).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final, NamedTuple


class Target(NamedTuple):
    module: str
    function: str
    max_len: int  # libFuzzer's -max_len: longer inputs only slow the search down
    time_share: float = 1.0  # of a run of every target for a time: this one's multiple

    def load(self) -> Callable[[bytes], None]:
        run: Callable[[bytes], None] = getattr(importlib.import_module(self.module),
                                               self.function)
        return run


_WIRE: Final = "fuzz.wire_targets"
TARGETS: Final[dict[str, Target]] = {
    "ethernet": Target(_WIRE, "fuzz_ethernet", 256),
    "arp": Target(_WIRE, "fuzz_arp", 128),
    "ipv4": Target(_WIRE, "fuzz_ipv4", 512),
    "ipv6": Target(_WIRE, "fuzz_ipv6", 512),
    "icmp": Target(_WIRE, "fuzz_icmp", 256),
    "icmpv6": Target(_WIRE, "fuzz_icmpv6", 256),
    "udp": Target(_WIRE, "fuzz_udp", 256),
    "tcp": Target(_WIRE, "fuzz_tcp", 256),
    "dhcp": Target(_WIRE, "fuzz_dhcp", 600),
    "dns_query": Target(_WIRE, "fuzz_dns_query", 512),
    "dns_response": Target(_WIRE, "fuzz_dns_response", 1024),
    "proxy": Target(_WIRE, "fuzz_proxy", 4200),
    "spp": Target(_WIRE, "fuzz_spp", 128),
    "checksum": Target(_WIRE, "fuzz_checksum", 512),
    # Some 50 times slower per input than a parser, and the one that finds things.
    "stack": Target("fuzz.stack_target", "fuzz_stack", 8192, time_share=5.0),
}
