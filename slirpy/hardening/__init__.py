"""Confinement once set up: --enable-sandbox and --enable-seccomp, as slirp4netns means them.

The composition root calls `harden` when everything slirpy opens at start is open (the
tap, the configured forwards, the control socket, the stop fds) and before it says
"ready", as slirp4netns does. The order matters: modules are imported while their files
can still be read, the seccomp filter is built while libseccomp can still be loaded, the
sandbox is entered while mount and pivot_root are still allowed, and the filter, which
refuses those, comes last.
"""

from __future__ import annotations

from collections.abc import Sequence

from slirpy.config import Config
from slirpy.hardening import sandbox, seccomp


def harden(config: Config, *, host_addresses: bool, truncate_fds: Sequence[int] = ()) -> None:
    """Confine this process as *config* asks; SetupError (one line) when refused.

    *host_addresses*: the host-address watcher runs (pyroute2 must be preloaded).
    *truncate_fds*: a rotating packet capture's files, emptied in turn (seccomp.allowed_if).
    """
    if not (config.enable_sandbox or config.enable_seccomp):
        return
    sandbox.preload(host_addresses)
    syscall_filter = seccomp.build(truncate_fds) if config.enable_seccomp else None
    if config.enable_sandbox:
        sandbox.enter(config.resolv_conf if config.dns else None)
    if syscall_filter is not None:
        seccomp.install(syscall_filter)
    sandbox.guard_imports()
