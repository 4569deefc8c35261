"""Integration tests need throwaway worlds (see world.py): user, network, mount and PID
namespaces made with unshare. Where this machine cannot make them at all, every test
that needs one is skipped, with the reason unshare gave; nothing else is ever skipped.
Tests marked `no_world` run anyway.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest

from integration.world import WORLD_UNSHARE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_world: the test makes no namespaces of its own")


@functools.cache
def _why_no_world() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        done = subprocess.run([*WORLD_UNSHARE, "true"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return None  # it can make them, only slowly: let the tests say what is wrong
    if done.returncode != 0:
        return (f"this machine cannot make the test worlds ({' '.join(WORLD_UNSHARE)}): "
                f"{done.stderr.strip() or f'exit {done.returncode}'}")
    return None


@pytest.fixture(autouse=True)
def _needs_a_world(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("no_world") is None:
        reason = _why_no_world()
        if reason is not None:
            pytest.skip(reason)
