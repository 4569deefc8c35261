"""IPv6 on the command line: -6/--enable-ipv6, --disable-ipv6, --cidr6, the config file
keys, the start-up summary, and -c's IPv6 address and route.

add_hostfwd with IPv6 is tested in test_api_commands.py."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slirpy.cli.args import ATTACH_HELP, RUN_HELP, Attach, Run, parse
from slirpy.cli.main import main, summary
from slirpy.errors import UsageError

DEFAULT6 = ipaddress.IPv6Network("fd00::/64")


def attach(*argv: str) -> Attach:
    parsed = parse([*argv, "1"])
    assert isinstance(parsed, Attach)
    return parsed


def run(*argv: str) -> Run:
    parsed = parse(["run", *argv, "--", "true"])
    assert isinstance(parsed, Run)
    return parsed


# --- the command line ---

def test_attach_form_is_ipv4_only_by_default() -> None:
    config = attach().config
    assert config.ipv6 is False
    assert config.network.cidr6 == DEFAULT6


@pytest.mark.parametrize("flags", [["-6"], ["--enable-ipv6"], ["-c6"], ["-6c"],
                                   ["-6", "--enable-ipv6"]])
def test_attach_form_enables_ipv6_with_slirp4netns_spellings(flags: list[str]) -> None:
    parsed = attach(*flags)
    assert parsed.config.ipv6 is True
    assert parsed.configure is ("c" in "".join(flags))


def test_run_form_has_ipv6_on_by_default() -> None:
    assert run().config.ipv6 is True
    assert run("--enable-ipv6").config.ipv6 is True
    assert run("-6").config.ipv6 is True
    assert run("--disable-ipv6").config.ipv6 is False


@pytest.mark.parametrize("argv", [["-6", "--cidr6=fd01:2::/64"], ["-6", "--cidr6", "fd01:2::/64"],
                                  ["run", "--cidr6=fd01:2::/64"]])
def test_cidr6_sets_the_ipv6_network(argv: list[str]) -> None:
    config = (run(*argv[1:]) if argv[0] == "run" else attach(*argv)).config
    net = config.network
    assert net.cidr6 == ipaddress.IPv6Network("fd01:2::/64")
    assert (net.gateway6, net.dns6) == (ipaddress.IPv6Address("fd01:2::2"),
                                        ipaddress.IPv6Address("fd01:2::3"))
    assert net.cidr == ipaddress.IPv4Network("10.0.2.0/24")  # IPv4 untouched


def test_disable_ipv6_is_accepted_in_the_attach_form_too() -> None:
    assert attach("--disable-ipv6").config.ipv6 is False


def test_r_minus_one_is_still_a_value_not_an_option() -> None:
    # "-6" is an option; getopt (slirp4netns) still reads `-r -1` as the value -1.
    with pytest.raises(UsageError, match="^ready-fd must be a non-negative integer$"):
        parse(["-6", "-r", "-1", "1"])
    with pytest.raises(UsageError, match="^MTU must be a positive integer"):
        parse(["-6", "-m", "-5", "1"])


@pytest.mark.parametrize("argv, message", [
    (["--cidr6=fd01::/64", "1"], "--cidr6 is for IPv6, which is off: add -6"),
    (["--cidr6", "fd01::/64", "-c", "1"], "--cidr6 is for IPv6, which is off: add -6"),
    (["--disable-ipv6", "--cidr6=fd01::/64", "1"],
     "--cidr6 is for IPv6, which --disable-ipv6 turns off"),
    (["run", "--disable-ipv6", "--cidr6=fd01::/64", "--", "true"],
     "--cidr6 is for IPv6, which --disable-ipv6 turns off"),
    (["-6", "--disable-ipv6", "1"], "--disable-ipv6 and --enable-ipv6 contradict"),
    (["run", "--enable-ipv6", "--disable-ipv6", "--", "true"],
     "--disable-ipv6 and --enable-ipv6 contradict"),
    (["-6", "--cidr6=bad", "1"], "invalid IPv6 CIDR: bad"),
    (["-6", "--cidr6=fd00::", "1"], "invalid IPv6 CIDR: fd00:: (a prefix like fd00::/64)"),
    (["-6", "--cidr6=fd00::5/64", "1"],
     "IPv6 CIDR needs to be a network address like fd00::/64, not like fd00::5/64"),
    (["-6", "--cidr6=fd00::/48", "1"], "IPv6 prefix length needs to be 64"),
    (["-6", "--cidr6=fd00::5/48", "1"], "IPv6 prefix length needs to be 64"),  # as --cidr
    (["1", "tap0", "-6", "--cidr6=fd00::5/48"], "IPv6 prefix length needs to be 64"),
    (["-6", "--cidr6=10.0.2.0/24", "1"], "invalid IPv6 CIDR: 10.0.2.0/24"),
    (["run", "--cidr6=fe80::/64", "--", "true"],
     "IPv6 CIDR fe80::/64 is not a unicast prefix a guest can use"),
    (["-6", "--cidr6"], "argument --cidr6: expected one argument"),
    (["-L", "8080:[fd00::100]:80", "1"],
     "-L 8080:[fd00::100]:80: the guest address fd00::100 is IPv6, and IPv6 is off "
     "(-6 turns it on)"),
    (["-R", "[fd00::2]:53:127.0.0.1:53", "1"],
     "-R [fd00::2]:53:127.0.0.1:53: the guest address fd00::2 is IPv6, and IPv6 is off "
     "(-6 turns it on)"),
    (["run", "--disable-ipv6", "-L", "8080:[fd00::100]:80", "--", "true"],
     "the guest address fd00::100 is IPv6, and IPv6 is off"),
])
def test_ipv6_usage_errors_are_one_line(argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("slirpy: ")
    assert message in err


def test_forwards_of_either_family_with_ipv6_on() -> None:
    config = attach("-6", "-L", "[::1]:8080:[fd00::100]:80", "-L", "[::1]:8081:10.0.2.100:81",
                    "-L", "127.0.0.1:8082:[fd00::100]:82", "-R", "[fd00::2]:53:[::1]:53").config
    assert [(str(f.bind), str(f.target)) for f in config.forwards] == [
        ("::1", "fd00::100"), ("::1", "10.0.2.100"), ("127.0.0.1", "fd00::100"),
        ("fd00::2", "::1")]


def test_ipv6_host_side_needs_no_ipv6_in_the_guest() -> None:
    # A host address of IPv6 is a host socket: fine with an IPv4-only guest.
    config = attach("-L", "[::1]:8080:10.0.2.100:80", "-R", "10.0.2.2:53:[::1]:53").config
    assert [(str(f.bind), str(f.target)) for f in config.forwards] == [
        ("::1", "10.0.2.100"), ("10.0.2.2", "::1")]


def test_help_texts_name_the_ipv6_options() -> None:
    for text in (ATTACH_HELP, RUN_HELP):
        for option in ("-6, --enable-ipv6", "--disable-ipv6", "--cidr6=CIDR"):
            assert option in text
    assert "enable-ipv6 is not supported" not in ATTACH_HELP + RUN_HELP


# --- the start-up summary ---

def test_summary_adds_ipv6_lines_only_with_ipv6() -> None:
    plain = summary(attach()).splitlines()
    assert not any("IPv6" in line or "IP6" in line for line in plain)
    lines = summary(attach("-6", "--outbound-addr6=::1")).splitlines()
    assert lines[:9] == plain[:9]  # the IPv4 lines, unchanged
    assert lines[9:] == [
        "* IPv6 network:    fd00::/64",
        "* IPv6 gateway:    fd00::2",
        "* IPv6 DNS:        fd00::3",
        "* IPv6 router:     fe80::2",
        "* Recommended IP6: fd00::100",
        "* Outbound IPv6:   ::1"]


def test_summary_marks_the_ipv6_dns_disabled() -> None:
    lines = summary(attach("-6", "--disable-dns", "--cidr6=fd01::/64")).splitlines()
    assert "* IPv6 DNS:        fd01::3 (disabled)" in lines
    assert "* DNS:             10.0.2.3 (disabled)" in lines


# --- the config file ---

def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "slirpy.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_config_file_enables_ipv6_with_a_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "enable-ipv6: true\ncidr6: fd01:2::/64\n")
    config = attach("--config", path).config
    assert config.ipv6 is True
    assert config.network.cidr6 == ipaddress.IPv6Network("fd01:2::/64")
    assert run("--config", path).config.ipv6 is True


def test_config_file_underscore_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "enable_ipv6: true\n")
    assert attach("--config", path).config.ipv6 is True


def test_config_file_cidr6_alone_needs_ipv6_in_the_attach_form(tmp_path: Path) -> None:
    path = write(tmp_path, "cidr6: fd01:2::/64\n")
    with pytest.raises(UsageError, match="^--cidr6 is for IPv6, which is off: add -6$"):
        attach("--config", path)
    assert attach("--config", path, "-6").config.network.cidr6 == ipaddress.IPv6Network(
        "fd01:2::/64")
    assert run("--config", path).config.network.cidr6 == ipaddress.IPv6Network("fd01:2::/64")


def test_config_file_disable_ipv6_turns_run_off(tmp_path: Path) -> None:
    path = write(tmp_path, "disable-ipv6: true\n")
    assert run("--config", path).config.ipv6 is False


@pytest.mark.parametrize("file_key, flags, expected", [
    ("disable-ipv6", ["--enable-ipv6"], True),
    ("disable-ipv6", ["-6"], True),
    ("disable-ipv6", ["-c6"], True),
    ("enable-ipv6", ["--disable-ipv6"], False),
])
def test_ipv6_flag_overrides_the_file(tmp_path: Path, file_key: str, flags: list[str],
                                      expected: bool) -> None:
    path = write(tmp_path, f"{file_key}: true\n")
    if flags != ["-c6"]:  # -c is the attach form's only
        assert run("--config", path, *flags).config.ipv6 is expected
    assert attach("--config", path, *flags).config.ipv6 is expected


@pytest.mark.parametrize("text, key, message", [
    ("cidr6: bad\n", "cidr6", "key 'cidr6': invalid IPv6 CIDR: bad"),
    ("cidr6: fd00::/48\n", "cidr6", "key 'cidr6': IPv6 prefix length needs to be 64"),
    ("cidr6: [fd00::/64]\n", "cidr6", "key 'cidr6': must be a single value"),
    ("enable-ipv6: \"yes\"\n", "enable-ipv6", "key 'enable-ipv6': must be true or false"),
    ("disable-ipv6: 1\n", "disable-ipv6", "key 'disable-ipv6': must be true or false"),
    ("enable-ipv6: true\ndisable-ipv6: true\n", None,
     "--disable-ipv6 and --enable-ipv6 contradict"),
])
def test_bad_ipv6_settings_name_the_key(tmp_path: Path, text: str, key: str | None,
                                        message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        attach("--config", path)
    assert message in str(caught.value)
    if key is not None:
        assert str(caught.value).startswith(f"--config {path}: key '{key}': ")


# --- -c in a namespace of our own: the IPv6 address is usable at once ---

LINK_PROBE = """\
import json, sys
from pyroute2 import IPRoute
from slirpy.config import Config
from slirpy.netns.attach import LinkSetup, Target, open_tap
ipv6 = sys.argv[1] == "1"
open_tap(Target("/proc/self/ns/net", None), "tap0", LinkSetup(Config(ipv6=ipv6)))
with IPRoute() as ipr:
    (tap,) = ipr.link_lookup(ifname="tap0")
    addrs = [(m.get_attr("IFA_ADDRESS"), m["prefixlen"], m.get_attr("IFA_FLAGS") or m["flags"])
             for m in ipr.get_addr(index=tap)]
    routes = [(m["family"], m.get_attr("RTA_DST"), m["dst_len"], m.get_attr("RTA_GATEWAY"))
              for m in ipr.get_routes(oif=tap) if m.get_attr("RTA_GATEWAY")]
print(json.dumps({"addrs": addrs, "routes": routes}))
"""


def _probe_link(ipv6: bool) -> dict[str, list[list[object]]]:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    done = subprocess.run(["unshare", "-Urn", sys.executable, "-c", LINK_PROBE,
                           "1" if ipv6 else "0"], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result: dict[str, list[list[object]]] = json.loads(done.stdout)
    return result


def test_configure_adds_the_ipv6_address_without_dad_and_a_default_route() -> None:
    found = _probe_link(ipv6=True)
    (flags,) = [f for a, p, f in found["addrs"] if a == "fd00::100" and p == 64]
    assert isinstance(flags, int)
    assert flags & 0x02 and not flags & 0x40  # IFA_F_NODAD, and not IFA_F_TENTATIVE
    assert [10, None, 0, "fd00::2"] in found["routes"]
    assert [2, None, 0, "10.0.2.2"] in found["routes"]


def test_configure_without_ipv6_adds_no_ipv6() -> None:
    found = _probe_link(ipv6=False)
    assert [[a, p] for a, p, _ in found["addrs"] if not str(a).startswith("fe80:")] \
        == [["10.0.2.100", 24]]
    assert found["routes"] == [[2, None, 0, "10.0.2.2"]]


@pytest.mark.parametrize("argv, instead", [
    (["-6", "-m", "1279", "1"], "drop -6"),
    (["run", "-m", "1000", "--", "true"], "add --disable-ipv6"),
])
def test_ipv6_needs_an_mtu_of_1280(argv: list[str], instead: str) -> None:
    with pytest.raises(UsageError, match=f"at least 1280 .*{instead}"):
        parse(argv)


def test_a_small_mtu_is_fine_without_ipv6() -> None:
    assert parse(["run", "--disable-ipv6", "-m", "576", "--", "true"]).config.mtu == 576
    assert parse(["-m", "576", "1"]).config.mtu == 576
