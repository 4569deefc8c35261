"""--config FILE.yaml: settings from the file, flags over them, errors naming the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from slirpy.cli.args import Attach, Run, parse
from slirpy.errors import UsageError
from slirpy.forward.spec import Forward, Kind, Proto


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "slirpy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def attach(path: str, *flags: str) -> Attach:
    result = parse(["--config", path, *flags, "1"])
    assert isinstance(result, Attach)
    return result


def run(path: str, *flags: str) -> Run:
    result = parse(["run", "--config", path, *flags, "--", "true"])
    assert isinstance(result, Run)
    return result


def ports(forwards: tuple[Forward, ...]) -> list[tuple[str, str, int, int]]:
    return [(f.kind.value, f.proto.value, f.bind_port, f.target_port) for f in forwards]


# --- settings applied ---

def test_settings_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, """\
mtu: 65520
cidr: 10.8.0.0/24
disable-dns: true
disable-host-loopback: true
api-socket: /run/slirpy.sock
dns-ttl: 30
local-forward:
  - 8080:80
  - udp://5353:53
remote-forward: 10.8.0.50:9000:192.0.2.1:8000
""")
    config = attach(path).config
    assert config.mtu == 65520
    assert config.network.cidr == ipaddress.IPv4Network("10.8.0.0/24")
    assert config.dns is False and config.host_loopback is False
    assert config.api_socket == "/run/slirpy.sock" and config.dns_ttl_s == 30.0
    assert ports(config.forwards) == [("local", "tcp", 8080, 80), ("local", "udp", 5353, 53),
                                      ("remote", "tcp", 9000, 8000)]
    # forwards take the file's network for their defaults
    assert config.forwards[0].target == ipaddress.IPv4Address("10.8.0.100")


def test_single_string_forward(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "local-forward: udpspp://5353:53\n")).config
    assert ports(config.forwards) == [("local", "udpspp", 5353, 53)]


def test_a_bare_port_number_is_a_forward(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "local-forward: [8080]\n")).config
    assert ports(config.forwards) == [("local", "tcp", 8080, 8080)]


def test_switch_false_changes_nothing(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "disable-dns: false\ndisable-host-loopback: false\n")).config
    assert config.dns is True and config.host_loopback is True


@pytest.mark.parametrize("text", ["disable_dns: true\n", "disable-dns: true\n"])
def test_underscore_works_for_dash(tmp_path: Path, text: str) -> None:
    assert attach(write(tmp_path, text)).config.dns is False


def test_underscores_in_every_kind_of_key(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "dns_ttl: 5\nlocal_forward: [8080]\n"
                                    "disable_host_loopback: true\n")).config
    assert config.dns_ttl_s == 5.0 and config.host_loopback is False
    assert ports(config.forwards) == [("local", "tcp", 8080, 8080)]


def test_empty_file_is_no_settings(tmp_path: Path) -> None:
    default = parse(["1"])
    assert isinstance(default, Attach)
    assert attach(write(tmp_path, "# nothing yet\n")).config == default.config
    assert attach(write(tmp_path, "")).config == default.config


def test_config_equals_form(tmp_path: Path) -> None:
    path = write(tmp_path, "mtu: 9000\n")
    result = parse([f"--config={path}", "1"])
    assert isinstance(result, Attach) and result.config.mtu == 9000


def test_attach_only_keys_in_the_attach_form(tmp_path: Path) -> None:
    path = write(tmp_path, "configure: true\nready-fd: 5\nexit-fd: 6\nnetns-type: pid\n"
                           "macaddress: 02:00:00:00:00:01\n")
    result = attach(path)
    assert (result.configure, result.ready_fd, result.exit_fd) == (True, 5, 6)
    assert result.mac == "02:00:00:00:00:01"


def test_run_form_takes_the_file(tmp_path: Path) -> None:
    result = run(write(tmp_path, "mtu: 9000\nenable-host-loopback: true\n"
                                 "remote-forward: [9000]\n"))
    assert result.command == ["true"]
    assert result.config.mtu == 9000 and result.config.host_loopback is True
    assert ports(result.config.forwards) == [("remote", "tcp", 9000, 9000)]


# --- the command line wins ---

@pytest.mark.parametrize("flags", [["--mtu", "9000"], ["--mtu=9000"], ["-m", "9000"], ["-m9000"]])
def test_mtu_flag_overrides_the_file(tmp_path: Path, flags: list[str]) -> None:
    path = write(tmp_path, "mtu: 1400\n")
    assert attach(path).config.mtu == 1400
    assert attach(path, *flags).config.mtu == 9000


def test_cidr_flag_overrides_the_file(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "cidr: 10.8.0.0/24\n"), "--cidr", "10.9.0.0/24").config
    assert config.network.cidr == ipaddress.IPv4Network("10.9.0.0/24")


def test_enable_host_loopback_flag_beats_disable_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "disable-host-loopback: true\n")
    assert attach(path).config.host_loopback is False
    assert attach(path, "--enable-host-loopback").config.host_loopback is True
    assert run(path, "--enable-host-loopback").config.host_loopback is True


def test_disable_host_loopback_flag_beats_enable_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "enable-host-loopback: true\n")
    assert run(path).config.host_loopback is True
    assert run(path, "--disable-host-loopback").config.host_loopback is False


def test_both_loopback_switches_in_the_file_contradict(tmp_path: Path) -> None:
    path = write(tmp_path, "enable-host-loopback: true\ndisable-host-loopback: true\n")
    with pytest.raises(UsageError, match="contradict"):
        attach(path)


def test_confinement_and_flow_limits_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "enable-sandbox: true\nenable_seccomp: true\n"
                           "max-flows: 2048\nmax_pending_connects: 32\n")
    config = attach(path).config
    assert (config.enable_sandbox, config.enable_seccomp) == (True, True)
    assert (config.max_flows, config.max_pending_connects) == (2048, 32)
    assert attach(path, "--max-flows=10").config.max_flows == 10  # the flag wins


def test_sandbox_and_seccomp_flags_beat_the_file_either_way(tmp_path: Path) -> None:
    off = write(tmp_path, "disable-sandbox: true\ndisable-seccomp: true\n")
    config = run(off).config
    assert (config.enable_sandbox, config.enable_seccomp) == (False, False)
    config = run(off, "--enable-sandbox", "--enable-seccomp").config
    assert (config.enable_sandbox, config.enable_seccomp) == (True, True)
    on = write(tmp_path, "enable-sandbox: true\n")
    assert attach(on, "--disable-sandbox").config.enable_sandbox is False


def test_repeatable_options_add_up(tmp_path: Path) -> None:
    path = write(tmp_path, "local-forward: [8080:80, udp://5353:53]\n"
                           "remote-forward: 9000\n")
    config = attach(path, "-L", "9090:90", "--local-forward=7070:70", "-R", "9001").config
    assert ports(config.forwards) == [
        ("local", "tcp", 8080, 80), ("local", "udp", 5353, 53),
        ("local", "tcp", 9090, 90), ("local", "tcp", 7070, 70),
        ("remote", "tcp", 9000, 9000), ("remote", "tcp", 9001, 9001)]


# --- errors name the file and the key ---

@pytest.mark.parametrize("text, key, message", [
    ("mtuu: 1500\n", "mtuu", "unknown key 'mtuu'"),
    ("config: other.yaml\n", "config", "unknown key 'config'"),
    ("help: true\n", "help", "unknown key 'help'"),
    ("mtu: [1500]\n", "mtu", "key 'mtu': must be a single value"),
    ("mtu: {a: 1}\n", "mtu", "key 'mtu': must be a single value"),
    ("mtu: true\n", "mtu", "key 'mtu': must be a single value"),
    ("cidr:\n", "cidr", "key 'cidr': must be a single value"),
    ("disable-dns: \"yes\"\n", "disable-dns", "key 'disable-dns': must be true or false"),
    ("disable-dns: 1\n", "disable-dns", "key 'disable-dns': must be true or false"),
    ("disable_dns: on please\n", "disable_dns", "key 'disable_dns': must be true or false"),
    ("local-forward: [[8080]]\n", "local-forward", "must be a forward spec or a list of them"),
    ("local-forward: true\n", "local-forward", "must be a forward spec or a list of them"),
    ("mtu: 0\n", "mtu", "key 'mtu': MTU must be a positive integer"),
    ("mtu: 40\n", "mtu", "key 'mtu': MTU must be at least 68"),
    ("mtu: big\n", "mtu", "key 'mtu': MTU must be a positive integer"),
    ("cidr: bad\n", "cidr", "key 'cidr': invalid CIDR: bad"),
    ("dns-ttl: -1\n", "dns-ttl", "key 'dns-ttl': --dns-ttl must be a number"),
    ("local-forward: [8080, sctp://80]\n", "local-forward",
     "key 'local-forward': -L sctp://80: unknown protocol 'sctp'"),
    ("remote-forward: tcppp://80\n", "remote-forward",
     "key 'remote-forward': -R tcppp://80: protocol tcppp is for local forwards only"),
    ("netns-type: file\n", "netns-type", "key 'netns-type': --netns-type must be pid or path"),
    ("ready-fd: -1\n", "ready-fd", "key 'ready-fd': ready-fd must be a non-negative integer"),
    ("max-flows: 0\n", "max-flows", "key 'max-flows': --max-flows must be a positive integer"),
    ("max-flows: 1.5\n", "max-flows", "key 'max-flows': --max-flows must be a positive "
                                       "integer, not 1.5"),
    ("max-flows: [1]\n", "max-flows", "key 'max-flows': must be a single value"),
    ("max-pending-connects: -3\n", "max-pending-connects",
     "key 'max-pending-connects': --max-pending-connects must be a positive integer"),
    ("enable-sandbox: yes please\n", "enable-sandbox",
     "key 'enable-sandbox': must be true or false"),
])
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, key: str,
                                        message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        attach(path)
    assert str(caught.value).startswith(f"--config {path}: ")
    assert message in str(caught.value)
    assert f"'{key}'" in str(caught.value)
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("key", ["ready-fd", "exit-fd", "configure", "netns-type",
                                 "userns-path", "macaddress", "target-type", "ready_fd"])
def test_run_form_refuses_attach_only_keys(tmp_path: Path, key: str) -> None:
    value = "true" if key == "configure" else "5"
    path = write(tmp_path, f"{key}: {value}\n")
    with pytest.raises(UsageError, match=f"--config {path}: unknown key '{key}'"):
        run(path)


@pytest.mark.parametrize("text", ["- mtu: 1500\n", "just a string\n", "42\n"])
def test_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError,
                       match=f"^--config {path}: the file must be a mapping of settings$"):
        attach(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mtu: 1500\nlocal-forward: [8080\ncidr: 10.0.2.0/24\n")
    with pytest.raises(UsageError) as caught:
        attach(path)
    assert str(caught.value).startswith(f"--config {path}: not valid YAML (line ")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(UsageError, match=f"^--config {path}: No such file or directory$"):
        attach(path)


def test_config_without_a_value() -> None:
    with pytest.raises(UsageError, match="--config: expected one argument"):
        parse(["1", "--config"])


def test_bad_value_fails_even_when_the_flag_overrides(tmp_path: Path) -> None:
    # A broken file is reported, not hidden by a flag for the same setting.
    path = write(tmp_path, "mtu: 0\n")
    with pytest.raises(UsageError, match="key 'mtu'"):
        attach(path, "--mtu", "1500")


@pytest.mark.parametrize("text, flags, expected", [
    ("local-forward:\n  - 2222:22\n", [], "forward 2222:22"),
    ("local-forward:\n  - 1:30\n", [], "forward 1:30"),
    ("macaddress: 12:34:56:00:00:02\n", ["-c"], "mac 12:34:56:00:00:02"),
])
def test_unquoted_colon_values_are_not_read_as_base_60(tmp_path: Path, text: str,
                                                       flags: list[str], expected: str) -> None:
    path = write(tmp_path, text)
    try:
        result = attach(path, *flags)
    except UsageError as exc:  # refusing it is fine, if the message shows what was written
        assert "133342" not in str(exc) and expected.split()[1] in str(exc)
        return
    if expected.startswith("forward"):
        bind, target = (int(p) for p in expected.split()[1].split(":"))
        assert [(f.bind_port, f.target_port) for f in result.config.forwards] == [(bind, target)]
    else:
        assert result.mac == expected.split()[1]


def test_forwards_from_file_keep_the_right_kind(tmp_path: Path) -> None:
    config = attach(write(tmp_path, "remote-forward: ['udp://10.0.2.3:5353:192.0.2.53:53']\n")
                    ).config
    (fwd,) = config.forwards
    assert (fwd.kind, fwd.proto) == (Kind.REMOTE, Proto.UDP)
    assert str(fwd.target) == "192.0.2.53"
