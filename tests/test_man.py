"""The man page documents every option --help lists, and no other."""

import pathlib
import re

from slirpy.cli.args import ATTACH_HELP, RUN_HELP, UNSUPPORTED

MAN = pathlib.Path(__file__).parent.parent / "man" / "slirpy.1"
REFUSED = set(UNSUPPORTED)


def long_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))


def test_man_page_and_help_list_the_same_long_options() -> None:
    man = long_options(MAN.read_text().replace("\\-", "-"))
    helped = long_options(ATTACH_HELP) | long_options(RUN_HELP)
    assert helped - man == set(), "in --help, missing from the man page"
    assert man - helped - REFUSED == set(), "in the man page, missing from --help"


def test_refused_options_are_not_in_help() -> None:
    assert not REFUSED & long_options(ATTACH_HELP + RUN_HELP)
