"""The egress policy's settings: both command lines, the YAML file, the control API."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from slirpy.addresses import Network
from slirpy.api.commands import Api
from slirpy.cli import args as cli_args
from slirpy.cli.args import Attach, Run, parse
from slirpy.cli.main import main
from slirpy.config import Config
from slirpy.errors import UsageError
from slirpy.forward.spec import Forward
from slirpy.policy.decide import Policy
from slirpy.policy.rules import Rule, format_rule


def attach(*flags: str) -> Config:
    result = parse([*flags, "1"])
    assert isinstance(result, Attach)
    return result.config


def run(*flags: str) -> Config:
    result = parse(["run", *flags, "--", "true"])
    assert isinstance(result, Run)
    return result.config


def posture(config: Config) -> tuple[bool, bool, bool]:
    return config.routing, config.host, config.host_loopback


def listed(config: Config) -> list[tuple[str, str]]:
    return [(r.action.value, format_rule(r)) for r in config.rules]


FORMS = [pytest.param(attach, id="attach"), pytest.param(run, id="run")]


# --- postures -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, attach_posture, run_posture", [
    ((), (True, True, True), (True, False, False)),
    (("--restrict",), (False, False, False), (False, False, False)),
    (("--restrict", "--enable-routing"), (True, False, False), (True, False, False)),
    (("--restrict", "--enable-host"), (False, True, False), (False, True, False)),
    (("--restrict", "--enable-host-loopback"), (False, False, True), (False, False, True)),
    (("--restrict", "--disable-host-loopback"), (False, False, False), (False, False, False)),
    (("--restrict", "--enable-routing", "--enable-host", "--enable-host-loopback"),
     (True, True, True), (True, True, True)),
    (("--enable-host",), (True, True, True), (True, True, False)),
    (("--enable-routing",), (True, True, True), (True, False, False)),
    (("--disable-host-loopback",), (True, True, False), (True, False, False)),
    (("--enable-host-loopback",), (True, True, True), (True, False, True)),
])
def test_postures(flags: tuple[str, ...], attach_posture: tuple[bool, bool, bool],
                  run_posture: tuple[bool, bool, bool]) -> None:
    assert posture(attach(*flags)) == attach_posture
    assert posture(run(*flags)) == run_posture


@pytest.mark.parametrize("form", FORMS)
def test_no_rules_by_default(form: Any) -> None:
    assert form().rules == ()


# --- rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_rules_in_order_deny_first_then_allow(form: Any) -> None:
    config = form("--allow", "tcp://192.0.2.1:443", "--deny=198.51.100.0/24",
                  "--allow", "udp://[2001:db8::]/32:53, icmp://192.0.2.2",
                  "--deny", "[2001:db8::66],tcp://203.0.113.5:1-1024")
    assert listed(config) == [
        ("deny", "198.51.100.0/24"), ("deny", "[2001:db8::66]"),
        ("deny", "tcp://203.0.113.5:1-1024"),
        ("allow", "tcp://192.0.2.1:443"), ("allow", "udp://[2001:db8::]/32:53"),
        ("allow", "icmp://192.0.2.2")]
    assert [r.text for r in config.rules][:2] == ["198.51.100.0/24", "[2001:db8::66]"]


@pytest.mark.parametrize("option, spec, part", [
    ("--allow", "tcp://1.2.3.4:99999", "'99999'"),
    ("--allow", "sctp://1.2.3.4", "'sctp'"),
    ("--allow", "10.0.0.1/8", "has host bits set"),
    ("--allow", "1.2.3.4, ,5.6.7.8", "empty item 2"),
    ("--allow", "2001:db8::1", "must be in brackets"),
    ("--deny", "icmp://1.2.3.4:80", "icmp takes no port"),
    ("--deny", "*", "bare '*'"),
    ("--deny", "1.2.3.4:90-80", "the first port is above the last"),
])
@pytest.mark.parametrize("form", ["attach", "run"])
def test_bad_rule_is_one_usage_line_naming_the_part(option: str, spec: str, part: str,
                                                    form: str) -> None:
    argv = [option, spec, "1"] if form == "attach" else ["run", option, spec, "--", "true"]
    with pytest.raises(UsageError) as info:
        parse(argv)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{option} {spec}: ")
    assert part in message


def test_bad_rule_through_main_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--allow", "tcp://1.2.3.4:0", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("slirpy: --allow tcp://1.2.3.4:0: bad port '0'")


def fake_getaddrinfo(table: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    """socket.getaddrinfo over *table*: names in it, or EAI_NONAME. The name is first
    encoded as CPython's getaddrinfo does, so its errors are the real ones."""

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        host.encode("idna")
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, 0) if ":" not in a else (a, 0, 0, 0)) for a in table[host]]

    return getaddrinfo


NAMES = {"svc.test": ["192.0.2.10", "2001:db8::10", "192.0.2.10"],
         "scoped.test": ["fe80::1%eth0"]}


@pytest.mark.parametrize("form", FORMS)
def test_host_name_resolved_at_start(monkeypatch: pytest.MonkeyPatch, form: Any) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES, calls))
    config = form("--allow", "tcp://svc.test:443")
    assert listed(config) == [("allow", "tcp://192.0.2.10:443"),
                              ("allow", "tcp://[2001:db8::10]:443")]
    assert {r.text for r in config.rules} == {"tcp://svc.test:443"}
    assert calls == ["svc.test"]


def test_resolve_name_strips_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES))
    assert cli_args.resolve_name("scoped.test") == [ipaddress.ip_address("fe80::1")]
    assert cli_args.resolve_name("nowhere.test") == []


def test_unknown_host_name_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES))
    with pytest.raises(UsageError, match=r"^--deny nowhere\.test: cannot resolve "
                                         r"'nowhere\.test'"):
        parse(["--deny", "nowhere.test", "1"])


def test_overlong_label_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES))
    name = "a" * 64 + ".test"
    assert main(["--allow", name, "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"slirpy: --allow {name}: ") and err.count("\n") == 1


# --- help -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_names_the_policy_options(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    for option in ("--allow", "--deny", "--restrict", "--enable-routing", "--enable-host"):
        assert re.search(re.escape(option) + r"(?![\w-])", out), option


# --- the YAML file ------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "slirpy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_file_rules_and_posture(tmp_path: Path) -> None:
    path = write(tmp_path, """\
restrict: true
enable-host: true
allow:
  - tcp://192.0.2.1:443
  - "udp://[2001:db8::]/32:53, icmp://192.0.2.2"
deny: [192.0.2.0/24]
""")
    config = attach("--config", path)
    assert posture(config) == (False, True, False)
    assert listed(config) == [("deny", "192.0.2.0/24"), ("allow", "tcp://192.0.2.1:443"),
                              ("allow", "udp://[2001:db8::]/32:53"),
                              ("allow", "icmp://192.0.2.2")]
    assert posture(run("--config", path)) == (False, True, False)


def test_file_single_string_rule_and_command_line_adds(tmp_path: Path) -> None:
    path = write(tmp_path, "deny: tcp://198.51.100.1:22\nenable_routing: true\n")
    config = run("--config", path, "--deny", "198.51.100.2", "--restrict")
    assert posture(config) == (True, False, False)
    assert listed(config) == [("deny", "tcp://198.51.100.1:22"), ("deny", "198.51.100.2")]


def test_file_host_name_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES))
    config = attach("--config", write(tmp_path, "allow: [svc.test]\n"))
    assert listed(config) == [("allow", "192.0.2.10"), ("allow", "[2001:db8::10]")]


@pytest.mark.parametrize("form", FORMS)
def test_file_host_name_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      form: Any) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(NAMES, calls))
    form("--config", write(tmp_path, "deny: tcp://svc.test:22\n"))
    assert calls == ["svc.test"]


@pytest.mark.parametrize("text, key, part", [
    ("allow: [tcp://1.2.3.4:70000]\n", "allow", "--allow tcp://1.2.3.4:70000: bad port"),
    ("deny: 10.0.0.1/8\n", "deny", "--deny 10.0.0.1/8: "),
    ("restrict: yes-please\n", "restrict", "must be true or false"),
    ("enable-host: 1\n", "enable-host", "must be true or false"),
    ("enable-routing: [true]\n", "enable-routing", "must be true or false"),
    ("allow: {a: b}\n", "allow", "must be"),
])
def test_file_errors_name_the_key(tmp_path: Path, text: str, key: str, part: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        parse(["--config", path, "1"])
    message = str(info.value)
    assert message.startswith(f"--config {path}: key '{key}': ")
    assert part in message and "\n" not in message


def test_file_error_for_a_rule_key_speaks_of_rules(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        parse(["--config", write(tmp_path, "allow: [true]\n"), "1"])
    assert "forward" not in str(info.value)


# --- the control API -----------------------------------------------------------------------

@dataclasses.dataclass
class PolicyController:
    """The API's rule commands over a real Policy, as the driver does; no forwards."""

    policy: Policy = dataclasses.field(default_factory=lambda: Policy(
        routing=True, host=False, host_loopback=False))

    def add_forward(self, fwd: Forward, origin: str) -> tuple[int, Forward]:
        raise AssertionError("not for rules")

    def remove_forward(self, forward_id: int) -> Forward | None:
        return None

    def list_forwards(self) -> list[tuple[int, Forward, str]]:
        return []

    def list_flows(self) -> list[dict[str, Any]]:
        return []

    def counters(self) -> dict[str, Any]:
        return {}

    def add_rule(self, rule: Rule) -> int:
        return self.policy.add(rule)

    def remove_rule(self, rule_id: int) -> Rule | None:
        return self.policy.remove(rule_id)

    def list_rules(self) -> list[tuple[int, Rule]]:
        return list(self.policy.rules.items())

    def posture(self) -> dict[str, bool]:
        return {"routing": self.policy.routing, "host": self.policy.host,
                "host_loopback": self.policy.host_loopback}


def make() -> tuple[Api, PolicyController]:
    ctl = PolicyController()
    return Api(ctl, Network(), ipv6=True), ctl


def call(api: Api, execute: str, **arguments: object) -> Any:
    return json.loads(api.handle(json.dumps({"execute": execute,
                                             "arguments": arguments}).encode()))


def bad(desc: str) -> dict[str, Any]:
    return {"error": {"desc": f"bad request: {desc}"}}


def test_add_list_remove_rules() -> None:
    api, ctl = make()
    assert call(api, "list_rules") == {"return": {
        "rules": [], "routing": True, "host": False, "host_loopback": False}}
    assert call(api, "add_rule", action="allow", spec="tcp://192.0.2.1:443") == \
        {"return": {"ids": [1]}}
    assert call(api, "add_rule", action="deny",
                spec="[2001:db8::]/32, udp://198.51.100.0/24:50-60") == {"return": {"ids": [2, 3]}}
    assert call(api, "list_rules")["return"] == {
        "rules": [{"id": 1, "action": "allow", "rule": "tcp://192.0.2.1:443"},
                  {"id": 2, "action": "deny", "rule": "[2001:db8::]/32"},
                  {"id": 3, "action": "deny", "rule": "udp://198.51.100.0/24:50-60"}],
        "routing": True, "host": False, "host_loopback": False}
    target = ipaddress.ip_address("2001:db8::1").packed
    assert ctl.policy.decide(6, target, 80, gateway=False).why == "--deny [2001:db8::]/32"
    assert api.handle(b'{"execute":"remove_rule","arguments":{"id":2}}') == b'{"return":{}}'
    assert ctl.policy.decide(6, target, 80, gateway=False).why == "routing"
    assert [r["id"] for r in call(api, "list_rules")["return"]["rules"]] == [1, 3]
    assert call(api, "add_rule", action="allow", spec="192.0.2.9") == {"return": {"ids": [4]}}


@pytest.mark.parametrize("value", [None, 2, 99, "1", True, [1], 0, -1])
def test_remove_rule_bad_id(value: object) -> None:
    api, ctl = make()
    call(api, "add_rule", action="deny", spec="192.0.2.1")
    args = {} if value is None else {"id": value}
    assert call(api, "remove_rule", **args) == bad("remove_rule: bad arguments.id")
    assert list(ctl.policy.rules) == [1]


def test_remove_rule_twice() -> None:
    api, _ = make()
    call(api, "add_rule", action="deny", spec="192.0.2.1")
    assert call(api, "remove_rule", id=1) == {"return": {}}
    assert call(api, "remove_rule", id=1) == bad("remove_rule: bad arguments.id")


@pytest.mark.parametrize("arguments", [
    {"spec": "192.0.2.1"}, {"action": "block", "spec": "192.0.2.1"},
    {"action": "ALLOW", "spec": "192.0.2.1"}, {"action": 1, "spec": "192.0.2.1"}])
def test_add_rule_bad_action(arguments: dict[str, object]) -> None:
    api, ctl = make()
    assert call(api, "add_rule", **arguments) == \
        bad('add_rule: arguments.action must be "allow" or "deny"')
    assert ctl.policy.rules == {}


@pytest.mark.parametrize("spec", [None, 5, ["192.0.2.1"], {"a": 1}, True])
def test_add_rule_spec_must_be_a_string(spec: object) -> None:
    api, ctl = make()
    args: dict[str, object] = {"action": "allow"}
    if spec is not None:
        args["spec"] = spec
    assert call(api, "add_rule", **args) == bad("add_rule: arguments.spec must be a rule string")
    assert ctl.policy.rules == {}


@pytest.mark.parametrize("spec, part", [
    ("tcp://192.0.2.1:0", "bad port '0'"),
    ("192.0.2.1, 192.0.2.300", "bad IPv4 address '192.0.2.300'"),
    ("[2001:db8::1/129]", "bad prefix '/129'"),
    ("ftp://192.0.2.1", "unknown protocol 'ftp'"),
    ("", "empty item 1"),
])
def test_add_rule_malformed_names_the_part_and_adds_nothing(spec: str, part: str) -> None:
    api, ctl = make()
    reply = call(api, "add_rule", action="deny", spec=spec)
    desc = reply["error"]["desc"]
    assert desc.startswith("bad request: add_rule: ") and part in desc
    assert ctl.policy.rules == {}  # nothing of a list with one bad item


def test_add_rule_refuses_host_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the API must never resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    api, ctl = make()
    reply = call(api, "add_rule", action="allow", spec="192.0.2.1, tcp://example.com:443")
    desc = reply["error"]["desc"]
    assert desc.startswith("bad request: add_rule: host name 'example.com'")
    assert "resolved at start only" in desc
    assert ctl.policy.rules == {}
