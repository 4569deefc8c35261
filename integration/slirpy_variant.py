"""slirpy with a test-only tap, injected through `main`'s parameters (no switch ships in
the product): `python integration/slirpy_variant.py VARIANT SLIRPY-ARGS...`, VARIANT
`plain` (no virtio-net header: the plain path) or `drop=RATE` (each frame is lost with
probability RATE in each direction: there is no netem qdisc here)."""

from __future__ import annotations

import random
import sys
from collections import Counter

from slirpy.cli.main import TapOptions, main
from slirpy.effects import ToGuest
from slirpy.runtime.tap import Frame, TapDevice


class LossyTap:
    """A TapDevice that loses a share of the frames each way, reproducibly."""

    def __init__(self, fd: int, rate: float, seed: int = 1) -> None:
        self.tap = TapDevice(fd)
        self.offload = self.tap.offload
        self.errors: Counter[str] = self.tap.errors
        self.rate = rate
        self.random = random.Random(seed)

    def fileno(self) -> int:
        return self.tap.fileno()

    def read_frames(self, limit: int) -> list[Frame]:
        return [f for f in self.tap.read_frames(limit) if self.random.random() >= self.rate]

    def write(self, frame: ToGuest) -> None:
        if self.random.random() >= self.rate:
            self.tap.write(frame)

    def close(self) -> None:
        self.tap.close()


def options(variant: str) -> TapOptions:
    if variant == "plain":
        return TapOptions(vnet_hdr=False)
    name, _, value = variant.partition("=")
    if name == "drop":
        rate = float(value)
        return TapOptions(device=lambda fd: LossyTap(fd, rate))
    raise SystemExit(f"unknown variant {variant!r}: plain or drop=RATE")


if __name__ == "__main__":
    print(f"slirpy test variant: {sys.argv[1]}", file=sys.stderr)
    sys.exit(main(sys.argv[2:], tap=options(sys.argv[1])))
