"""The man page documents every option --help lists, and no other; --help lists every
option the parsers take, and slirp4netns's options in slirp4netns's words."""

import argparse
import pathlib
import re

import pytest

from slirpy.cli.args import ATTACH_HELP, RUN_HELP, _attach_parser, _run_parser
from slirpy.cli.ctl import CTL_HELP

MAN = pathlib.Path(__file__).parent.parent / "man" / "slirpy.1"

# Lines of `slirp4netns --help` (1.2.0) that tools grep for (rootlesskit, podman).
SLIRP4NETNS_LINES = [
    "--enable-sandbox         create a new mount namespace (and drop all caps except "
    "CAP_NET_BIND_SERVICE if running as the root)",
    "--enable-seccomp         enable seccomp to limit syscalls (experimental)",
]


def long_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))


def parsed_options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings
            if option.startswith("--")}


def test_man_page_and_help_list_the_same_long_options() -> None:
    man = long_options(MAN.read_text().replace("\\-", "-"))
    helped = long_options(ATTACH_HELP) | long_options(RUN_HELP) | long_options(CTL_HELP)
    assert helped - man == set(), "in --help, missing from the man page"
    assert man - helped == set(), "in the man page, missing from --help"


@pytest.mark.parametrize("parser, text", [(_attach_parser(), ATTACH_HELP),
                                          (_run_parser(), RUN_HELP)], ids=["attach", "run"])
def test_help_lists_every_option_its_form_takes(parser: argparse.ArgumentParser,
                                                text: str) -> None:
    assert parsed_options(parser) == long_options(text)


@pytest.mark.parametrize("line", SLIRP4NETNS_LINES)
def test_help_has_slirp4netns_lines_verbatim(line: str) -> None:
    assert line in ATTACH_HELP.splitlines()
