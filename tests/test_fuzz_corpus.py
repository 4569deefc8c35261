"""Every input of the fuzz corpus, replayed through its target: fuzzing's finds as
regression tests, without atheris (the targets are plain functions; see fuzz/).

A target raises on a finding: an exception other than Malformed out of a wire parser,
anything at all out of Stack.feed, a frame to the guest the strict receiver refuses,
a broken promise of a parser (a rebuilt header that differs, a bad checksum accepted).
The reproducers of fuzzing's findings (fuzz/findings/) run too: the fixed ones as
regression tests, an open one (FIXED = False) as a strict expected failure.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import fuzz.findings
from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
INPUTS = [pytest.param(name, path, id=f"{name}/{path.name}")
          for name in TARGETS
          for path in sorted((CORPUS / name).iterdir() if (CORPUS / name).is_dir() else [])
          if path.is_file()]
FINDINGS = [info.name for info in pkgutil.iter_modules(fuzz.findings.__path__)]


def test_every_target_has_a_corpus() -> None:
    assert {name for name, _ in (p.values for p in INPUTS)} == set(TARGETS)


@pytest.mark.parametrize("name, path", INPUTS)
def test_corpus_input_passes_its_target(name: str, path: Path) -> None:
    TARGETS[name].load()(path.read_bytes())


def _finding(name: str) -> pytest.ParameterSet:
    fixed = importlib.import_module(f"fuzz.findings.{name}").FIXED
    marks = () if fixed else pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="a fuzzing finding not fixed yet: set FIXED once it is (see its docstring)")
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("finding", [_finding(name) for name in FINDINGS])
def test_finding_stays_fixed(finding: str) -> None:
    """Each reproducer raises AssertionError while its finding is there: a fixed one
    must pass, an open one (FIXED = False) must still fail."""
    importlib.import_module(f"fuzz.findings.{finding}").reproduce()
