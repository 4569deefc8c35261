"""Build slirpy: the core compiled with mypyc where a C compiler and Python's headers are
there, the pure-Python package otherwise (said once, on stderr).

Everything else is in pyproject.toml. SLIRPY_PURE=1 asks for the pure build on purpose
(CI tests both). What is compiled: the sans-IO core, the wire codecs and the runtime's
loop (the per-packet path); the command line, namespace set-up, the control socket and
the composition root stay Python (they run once, or rarely).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile

from setuptools import setup

ROOT = pathlib.Path(__file__).resolve().parent
NOT_COMPILED = ("slirpy/__init__.py", "slirpy/__main__.py", "slirpy/app.py",
                # A class attribute on an Exception subclass (exit_code) reads as missing
                # when compiled by mypyc 2.4.1, with no build error: tests caught it.
                "slirpy/errors.py")
# The sandbox and the seccomp filter run once, at start, and call into ctypes.
NOT_COMPILED_DIRS = ("slirpy/cli/", "slirpy/netns/", "slirpy/api/", "slirpy/hardening/",
                     "slirpy/observe/")


def compiled_modules() -> list[str]:
    found = []
    for path in sorted((ROOT / "slirpy").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in NOT_COMPILED or name.startswith(NOT_COMPILED_DIRS):
            continue
        if path.name == "__init__.py":
            continue  # packages stay plain: mypyc compiles modules
        found.append(name)
    return found


def why_pure() -> str | None:
    """None if the core can be compiled here; else the reason it will not be."""
    if os.environ.get("SLIRPY_PURE", "") not in ("", "0"):
        return "SLIRPY_PURE is set"
    if sys.implementation.name != "cpython":
        return f"mypyc needs CPython, not {sys.implementation.name}"
    include = sysconfig.get_paths().get("include")
    if not include or not pathlib.Path(include, "Python.h").exists():
        return "Python's headers are missing (Debian: apt-get install python3-dev)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}; Debian: apt-get install gcc)"
    try:
        import mypyc.build  # noqa: F401  (a build requirement: pyproject.toml pins it)
    except ImportError:
        return "mypyc is not installed (pip installs it as a build requirement)"
    return None


def ext_modules() -> list[object]:
    reason = why_pure()
    if reason is not None:
        print(f"slirpy: building the pure-Python package: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    # A fresh type-check cache every build: rebuilding over an earlier build's cache after
    # an edit crashed mypyc 2.4.1 (ValueError in emit_undefined_attr_check).
    os.environ["MYPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="slirpy-mypyc-")
    # separate=True: one C extension per module, compiled in parallel (--parallel N).
    return list(mypycify(compiled_modules(), opt_level="3", separate=True))


setup(ext_modules=ext_modules())
