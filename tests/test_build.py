"""Which build runs: the compiled core (mypyc) or the pure-Python one, and that it says so.

CI runs the whole suite on both builds and sets SLIRPY_EXPECT_BUILD for each run, so a
compiled build that silently fell back to Python (a stale extension, a failed compile)
fails here instead of passing every other test as pure Python.
"""

from __future__ import annotations

import importlib.machinery
import os

import pytest

import slirpy.ingress
import slirpy.stack
import slirpy.tcp.conn
import slirpy.wire.ipv4
from slirpy.app import build
from slirpy.cli.main import main

EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)
CORE = (slirpy.stack, slirpy.ingress, slirpy.tcp.conn, slirpy.wire.ipv4)


def test_the_expected_build_is_the_one_loaded() -> None:
    expected = os.environ.get("SLIRPY_EXPECT_BUILD")
    if expected is None:
        pytest.skip("SLIRPY_EXPECT_BUILD not set (CI sets it: pure or compiled)")
    compiled = [m.__name__ for m in CORE if (m.__file__ or "").endswith(EXTENSIONS)]
    if expected == "compiled":
        assert compiled == [m.__name__ for m in CORE], f"pure modules: {slirpy.stack.__file__}"
    else:
        assert expected == "pure" and compiled == []


def test_version_and_counters_say_which_build_runs(capsys: pytest.CaptureFixture[str]) -> None:
    compiled = (slirpy.stack.__file__ or "").endswith(EXTENSIONS)
    assert build() == ("compiled (mypyc)" if compiled else "pure Python")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"build: {build()}"
