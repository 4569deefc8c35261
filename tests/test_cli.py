"""Command-line errors: one line on stderr, a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from slirpy.cli.args import Attach, Run, parse
from slirpy.cli.main import main, summary


@pytest.mark.parametrize("argv, message", [
    (["--cidr", "foo", "1"], "invalid CIDR: foo"),
    (["--cidr", "10.0.2.100/24", "1"],
     "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"),
    (["--cidr", "10.0.0.0/26", "1"], "prefix length needs to be 1-25"),
    # slirp4netns's order: the form, the address, the prefix length, then host bits.
    (["--cidr", "10.0.2.100/26", "1"], "prefix length needs to be 1-25"),
    (["--cidr", "10.0.2.100/0", "1"], "prefix length needs to be 1-25"),
    (["--cidr", "10.0.2.1/33", "1"], "prefix length needs to be 1-25"),
    (["--cidr", "300.0.2.100/26", "1"], "invalid network address: 300.0.2.100"),
    (["--cidr", "10.0.2.0/100", "1"], "invalid CIDR: 10.0.2.0/100"),
    (["--cidr", "10.0.2.0", "1"], "invalid CIDR: 10.0.2.0"),
    (["--cidr", "10.0.2.100/1", "1"],
     "CIDR needs to be a network address like 0.0.0.0/1, not like 10.0.2.100/1"),
    (["--mtu", "70000", "1"], "MTU must be a positive integer (< 65522)"),
    (["--mtu", "abc", "1"], "MTU must be a positive integer (< 65522)"),
    ([], "PID or PATH of the network namespace is required"),
    (["1", "tap0", "extra"], "too many arguments"),
    (["--macaddress", "02:00:00:00:00:01", "1"], "--macaddr cannot be specified"),
    (["-c", "--macaddress", "zz", "1"], "macaddress has to be a valid unicast MAC address"),
    (["-c", "--macaddress", "03:00:00:00:00:01", "1"], "valid unicast MAC address"),
    (["-c", "--macaddress", "+2:00:00:00:00:01", "1"], "valid unicast MAC address"),
    (["1", "averyveryverylongtapname0"], "1 to 15 bytes"),
    (["1", "tap/0"], "invalid tap name"),
    (["-L", "x:80:10.0.2.100:80", "1"], "-L x:80:10.0.2.100:80: bind address is not an IP "
                                        "address: 'x'"),
    (["-L", "sctp://80", "1"], "-L sctp://80: unknown protocol 'sctp' (tcp, udp, tcppp, "
                               "udpspp, udprpc)"),
    (["-L", "80:70000", "1"], "-L 80:70000: target port must be a port number 0-65535 or "
                              "a range, not '70000'"),
    (["-L", "8000-8002:90-91", "1"], "-L 8000-8002:90-91: port ranges differ in length: "
                                     "8000-8002 and 90-91"),
    (["-R", "tcppp://80", "1"], "-R tcppp://80: protocol tcppp is for local forwards only"),
    (["-R", "80:[name@srv-x]:0", "1"], "-R 80:[name@srv-x]:0: the SRV DNS server is not an "
                                       "IP address: 'x'"),
    (["--dns-ttl=abc", "1"], "--dns-ttl must be a number of seconds from 0 to 86400, not abc"),
    (["--enable-sandbox", "--disable-sandbox", "1"],
     "--disable-sandbox and --enable-sandbox contradict"),
    (["run", "--disable-seccomp", "--enable-seccomp", "--", "true"],
     "--disable-seccomp and --enable-seccomp contradict"),
    (["--max-flows=0", "1"], "--max-flows must be a positive integer, not 0"),
    (["--max-flows", "-5", "1"], "--max-flows must be a positive integer, not -5"),
    (["--max-flows=", "1"], "--max-flows must be a positive integer, not "),
    (["--max-flows=1e3", "1"], "--max-flows must be a positive integer, not 1e3"),
    (["run", "--max-pending-connects=x", "--", "true"],
     "--max-pending-connects must be a positive integer, not x"),
    (["1", "tap0", "--max-pending-connects=0"],
     "--max-pending-connects must be a positive integer, not 0"),
    (["--max-flows"], "argument --max-flows: expected one argument"),
    (["1", "tap0", "--foo"], "unrecognized arguments: --foo"),
    (["1", "--", "tap0", "-c"], "too many arguments"),
    (["--target-type=bess", "1"], "--target-type=bess is not supported"),
    (["notapid"], "not a PID: notapid"),
    (["--netns-type", "foo", "1"], "--netns-type must be pid or path"),
    (["--userns-path", "/nonexistent", "1"], "userns path doesn't exist: /nonexistent"),
    (["--netns-type=path", "/nonexistent"], "existing path expected when --netns-type=path"),
    (["--outbound-addr", "::1", "1"], "outbound-addr has to be valid ipv4 address"),
    (["--outbound-addr", "nosuchif0", "1"], "outbound-addr has to be valid ipv4 address"),
    (["--outbound-addr6", "10.0.0.1", "1"], "outbound-addr6 has to be valid ipv6 address"),
    (["--outbound-addr", "bad/name", "1"], "outbound-addr has to be valid ipv4 address"),
    (["-e", "x", "1"], "exit-fd must be a non-negative integer"),
    (["-r", "-1", "1"], "ready-fd must be a non-negative integer"),
    (["-m"], "expected one argument"),
    (["--disable-host-loopback", "--enable-host-loopback", "1"], "contradict"),
    (["--foo", "1"], "unrecognized arguments: --foo"),
    (["999999999"], "no such process: 999999999"),
    (["run"], "run needs a command"),
    (["run", "--cidr", "bad", "--", "true"], "invalid CIDR: bad"),
    (["run", "-c", "--", "true"], "unrecognized arguments: -c"),
])
def test_bad_command_line_gives_one_line_and_non_zero_exit(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("slirpy: ")
    assert message in err


def test_help_lists_every_long_option_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--configure", "--exit-fd", "--ready-fd", "--mtu", "--cidr",
                   "--disable-host-loopback", "--enable-host-loopback", "--netns-type",
                   "--userns-path", "--outbound-addr", "--outbound-addr6", "--disable-dns",
                   "--macaddress", "--help", "--version"):
        assert option in out


def test_version_has_the_lines_tools_parse_from_slirp4netns(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("slirpy version ")
    keys = {line.split(":")[0] for line in lines[1:]}
    assert {"commit", "libslirp", "SLIRP_CONFIG_VERSION_MAX"} <= keys


def test_attach_defaults_match_slirp4netns() -> None:
    parsed = parse(["1234"])
    assert isinstance(parsed, Attach)
    assert (parsed.tap_name, parsed.configure, parsed.config.mtu) == ("tap0", False, 1500)
    assert parsed.config.host_loopback and parsed.config.dns
    assert str(parsed.config.network.cidr) == "10.0.2.0/24"


def test_slirp4netns_option_spellings_are_accepted() -> None:
    parsed = parse(["-c", "-m1400", "--mtu=1400", "-r", "4", "-e3", "--cidr=10.5.0.0/16",
                    "--disable-host-loopback", "--disable-dns", "--netns-type=pid", "99", "tap1"])
    assert isinstance(parsed, Attach)
    assert (parsed.ready_fd, parsed.exit_fd, parsed.tap_name) == (4, 3, "tap1")
    assert not parsed.config.host_loopback and not parsed.config.dns
    assert str(parsed.config.network.gateway) == "10.5.0.2"


@pytest.mark.parametrize("argv, api_socket", [
    (["-c", "1234", "--api-socket", "/run/x.sock", "tap1"], "/run/x.sock"),
    (["1234", "tap1", "-c", "--api-socket=/run/x.sock"], "/run/x.sock"),
    (["1234", "-c", "tap1", "-a", "/run/x.sock"], "/run/x.sock"),
    (["-c", "--", "1234", "tap1"], None),
    (["-c", "1234", "--", "tap1"], None),
])
def test_options_may_follow_positional_arguments_as_with_getopt(argv: list[str],
                                                                api_socket: str | None) -> None:
    parsed = parse(argv)
    assert isinstance(parsed, Attach)
    assert (parsed.target, parsed.tap_name, parsed.configure) == ("1234", "tap1", True)
    assert parsed.config.api_socket == api_socket


def test_options_after_positionals_are_parsed_like_before_them() -> None:
    parsed = parse(["1234", "tap0", "--mtu", "1400", "--disable-dns", "-6", "--max-flows=9"])
    assert isinstance(parsed, Attach)
    assert (parsed.config.mtu, parsed.config.dns, parsed.config.ipv6) == (1400, False, True)
    assert parsed.config.max_flows == 9


@pytest.mark.parametrize("argv, target, tap_name", [
    (["--netns-type=path", "--", "/proc/self/ns/net", "-c"], "/proc/self/ns/net", "-c"),
    (["--netns-type=path", "/proc/self/ns/net", "--", "--mtu"], "/proc/self/ns/net", "--mtu"),
    (["--netns-type=path", "--", "/proc/self/ns/net"], "/proc/self/ns/net", "tap0"),
])
def test_after_double_dash_every_argument_is_positional(argv: list[str], target: str,
                                                        tap_name: str) -> None:
    parsed = parse(argv)
    assert isinstance(parsed, Attach)
    assert (parsed.target, parsed.tap_name, parsed.configure, parsed.config.mtu) == (
        target, tap_name, False, 1500)


@pytest.mark.parametrize("argv, command, mtu", [
    (["run", "--mtu", "1400", "curl", "--mtu", "9"], ["curl", "--mtu", "9"], 1400),
    (["run", "curl", "--", "-x"], ["curl", "--", "-x"], 1500),
    (["run", "--", "--mtu", "9"], ["--mtu", "9"], 1500),
    (["run", "sh", "--config=/nonexistent.yaml"], ["sh", "--config=/nonexistent.yaml"], 1500),
    (["run", "sh", "--help"], ["sh", "--help"], 1500),
])
def test_run_command_keeps_everything_from_its_first_word(argv: list[str], command: list[str],
                                                          mtu: int) -> None:
    parsed = parse(argv)
    assert isinstance(parsed, Run)
    assert (parsed.command, parsed.config.mtu) == (command, mtu)


def test_sandbox_and_seccomp_are_opt_in_here_and_default_in_run() -> None:
    attach = parse(["1"])
    assert not attach.config.enable_sandbox and not attach.config.enable_seccomp
    opted = parse(["--enable-sandbox", "--enable-seccomp", "1"])
    assert opted.config.enable_sandbox and opted.config.enable_seccomp
    run = parse(["run", "--", "true"])
    assert run.config.enable_sandbox and run.config.enable_seccomp
    sandbox_off = parse(["run", "--disable-sandbox", "--", "true"])
    assert (sandbox_off.config.enable_sandbox, sandbox_off.config.enable_seccomp) == (False, True)
    seccomp_off = parse(["run", "--disable-seccomp", "--", "true"])
    assert (seccomp_off.config.enable_sandbox, seccomp_off.config.enable_seccomp) == (True, False)


def test_flow_limits_default_to_none_and_take_positive_integers() -> None:
    default = parse(["1"]).config
    assert (default.max_flows, default.max_pending_connects) == (None, None)
    set_ = parse(["run", "--max-flows=5000", "--max-pending-connects", "64", "--", "true"])
    assert (set_.config.max_flows, set_.config.max_pending_connects) == (5000, 64)


def test_help_lists_slirp4netns_confinement_options_in_its_words(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "--enable-seccomp         enable seccomp to limit syscalls (experimental)" in out
    assert ("--enable-sandbox         create a new mount namespace (and drop all caps except "
            "CAP_NET_BIND_SERVICE if running as the root)") in out


def test_run_form_is_safe_by_default_and_keeps_command_arguments() -> None:
    parsed = parse(["run", "--", "curl", "-v", "--max-time", "3", "http://x"])
    assert isinstance(parsed, Run)
    assert parsed.command == ["curl", "-v", "--max-time", "3", "http://x"]
    assert not parsed.config.host_loopback
    enabled = parse(["run", "--enable-host-loopback", "--", "true"])
    assert isinstance(enabled, Run) and enabled.config.host_loopback


def test_module_entry_point_reports_errors_without_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "slirpy", "--cidr", "foo", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == "slirpy: invalid CIDR: foo\n"


def test_outbound_interface_names_resolve_to_their_address() -> None:
    parsed = parse(["--outbound-addr=lo", "--outbound-addr6=lo", "1"])
    assert isinstance(parsed, Attach)
    assert (str(parsed.config.outbound_addr), str(parsed.config.outbound_addr6)) == (
        "127.0.0.1", "::1")


def test_mac_is_normalised_and_path_targets_keep_their_userns() -> None:
    parsed = parse(["-c", "--macaddress=02:AB:00:00:00:01", "--netns-type=path",
                    "--userns-path=/proc/self/ns/user", "/proc/self/ns/net"])
    assert isinstance(parsed, Attach)
    assert (parsed.mac, parsed.netns_type, parsed.userns_path) == (
        "02:ab:00:00:00:01", "path", "/proc/self/ns/user")


def test_summary_names_the_optional_settings(capsys: pytest.CaptureFixture[str]) -> None:
    parsed = parse(["-c", "--macaddress=02:00:00:00:00:01", "--outbound-addr=127.0.0.1",
                    "--cidr=10.1.0.0/16", "1"])
    assert isinstance(parsed, Attach)
    lines = summary(parsed).splitlines()
    assert "* Gateway:         10.1.0.2" in lines
    assert "* Outbound IPv4:   127.0.0.1" in lines
    assert lines[-1] == "* MAC address:     02:00:00:00:00:01"


def test_help_of_both_forms_over_the_module_entry_point() -> None:
    for argv, first in ((["--help"], "Usage: slirpy [OPTION]"),
                        (["run", "--help"], "Usage: slirpy run")):
        done = subprocess.run([sys.executable, "-m", "slirpy", *argv],
                              capture_output=True, text=True)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith(first)
