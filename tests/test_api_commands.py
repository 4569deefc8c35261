"""The control API's replies: slirp4netns's byte for byte, then slirpy's own commands."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
from typing import Any

import pytest

from slirpy.api.commands import Api
from slirpy.addresses import Network
from slirpy.forward.spec import Forward, ForwardError, LocalForward, Proto


@dataclasses.dataclass
class FakeController:
    """In-memory forwards with ids from 1; adding a forward bound to *busy_port* fails."""

    busy_port: int | None = None
    refuse_with: Exception | None = None
    forwards: dict[int, tuple[Forward, str]] = dataclasses.field(default_factory=dict)
    next_id: int = 1
    removed: list[int] = dataclasses.field(default_factory=list)
    flows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add_forward(self, fwd: Forward, origin: str) -> tuple[int, Forward]:
        if fwd.bind_port == self.busy_port:
            raise self.refuse_with or OSError(errno.EADDRINUSE, "Address already in use")
        forward_id = self.next_id
        self.next_id += 1
        self.forwards[forward_id] = (fwd, origin)
        return forward_id, fwd

    def remove_forward(self, forward_id: int) -> Forward | None:
        entry = self.forwards.pop(forward_id, None)
        if entry is None:
            return None
        self.removed.append(forward_id)
        return entry[0]

    def list_forwards(self) -> list[tuple[int, Forward, str]]:
        return [(i, fwd, origin) for i, (fwd, origin) in sorted(self.forwards.items())]

    def list_flows(self) -> list[dict[str, Any]]:
        return self.flows

    def counters(self) -> dict[str, Any]:
        return self.counts

    def metrics_text(self) -> str:
        return "# TYPE slirpy_frames_total counter\nslirpy_frames_total 1.0\n"


def make(**controller: Any) -> tuple[Api, FakeController]:
    ctl = FakeController(**controller)
    return Api(ctl, Network()), ctl


def request(execute: str, **arguments: object) -> bytes:
    return json.dumps({"execute": execute, "arguments": arguments}).encode()


HOSTFWD: dict[str, object] = {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080,
                              "guest_addr": "10.0.2.100", "guest_port": 80}


def bad(desc: str) -> bytes:
    return b'{"error":{"desc":"bad request: ' + desc.encode() + b'"}}'


# --- slirp4netns: add_hostfwd, list_hostfwd, remove_hostfwd ---

def test_add_hostfwd_answers_the_new_id() -> None:
    api, ctl = make()
    assert api.handle(request("add_hostfwd", **HOSTFWD)) == b'{"return":{"id":1}}'
    assert api.handle(request("add_hostfwd", **{**HOSTFWD, "host_port": 8081})) \
        == b'{"return":{"id":2}}'
    fwd, origin = ctl.forwards[1]
    assert origin == "hostfwd"
    assert fwd == LocalForward(Proto.TCP, ipaddress.IPv4Address("0.0.0.0"), 8080,
                          ipaddress.IPv4Address("10.0.2.100"), 80)


def test_list_hostfwd_entries_byte_exact() -> None:
    api, _ = make()
    api.handle(request("add_hostfwd", **HOSTFWD))
    assert api.handle(request("list_hostfwd")) == (
        b'{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,'
        b'"guest_addr":"10.0.2.100","guest_port":80}]}')


def test_list_hostfwd_empty_and_only_hostfwds() -> None:
    api, _ = make()
    assert api.handle(request("list_hostfwd")) == b'{"entries":[]}'
    assert api.handle(request("add_forward", kind="local", spec="9090:90")) \
        == b'{"return":{"ids":[1]}}'
    api.handle(request("add_hostfwd", **{**HOSTFWD, "proto": "udp", "host_port": 5353,
                                         "guest_port": 53}))
    assert api.handle(request("list_hostfwd")) == (
        b'{"entries":[{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,'
        b'"guest_addr":"10.0.2.100","guest_port":53}]}')


def test_remove_hostfwd() -> None:
    api, ctl = make()
    api.handle(request("add_hostfwd", **HOSTFWD))
    assert api.handle(request("remove_hostfwd", id=1)) == b'{"return":{}}'
    assert ctl.removed == [1] and ctl.forwards == {}
    assert api.handle(request("list_hostfwd")) == b'{"entries":[]}'
    assert api.handle(request("remove_hostfwd", id=1)) == bad("remove_hostfwd: bad arguments.id")


@pytest.mark.parametrize("value", [None, 99, "1", True, [1], float("nan")])
def test_remove_hostfwd_bad_id(value: object) -> None:
    api, ctl = make()
    api.handle(request("add_hostfwd", **HOSTFWD))
    args = {} if value is None else {"id": value}
    assert api.handle(request("remove_hostfwd", **args)) == bad("remove_hostfwd: bad arguments.id")
    assert 1 in ctl.forwards


def test_remove_hostfwd_does_not_remove_slirpy_forwards() -> None:
    api, ctl = make()
    api.handle(request("add_forward", kind="local", spec="9090:90"))
    assert api.handle(request("remove_hostfwd", id=1)) == bad("remove_hostfwd: bad arguments.id")
    assert 1 in ctl.forwards


def test_remove_hostfwd_takes_a_whole_number_as_double() -> None:
    api, ctl = make()
    api.handle(request("add_hostfwd", **HOSTFWD))
    assert api.handle(request("remove_hostfwd", id=1.0)) == b'{"return":{}}'
    assert ctl.removed == [1]


@pytest.mark.parametrize("args, host, guest", [
    ({}, "0.0.0.0", "10.0.2.100"),
    ({"host_addr": ""}, "0.0.0.0", "10.0.2.100"),
    ({"guest_addr": ""}, "0.0.0.0", "10.0.2.100"),
    ({"host_addr": "127.0.0.1", "guest_addr": "10.0.2.15"}, "127.0.0.1", "10.0.2.15"),
])
def test_add_hostfwd_address_defaults(args: dict[str, object], host: str, guest: str) -> None:
    api, ctl = make()
    body = {"proto": "tcp", "host_port": 8080, "guest_port": 80, **args}
    assert api.handle(request("add_hostfwd", **body)) == b'{"return":{"id":1}}'
    fwd, _ = ctl.forwards[1]
    assert (str(fwd.bind), str(fwd.target)) == (host, guest)


def test_add_hostfwd_guest_default_follows_the_network() -> None:
    ctl = FakeController()
    api = Api(ctl, Network(ipaddress.IPv4Network("192.168.7.0/24")))
    api.handle(request("add_hostfwd", proto="tcp", host_port=8080, guest_port=80))
    assert str(ctl.forwards[1][0].target) == "192.168.7.100"


@pytest.mark.parametrize("change, field", [
    ({"proto": None}, "proto"),
    ({"proto": "sctp"}, "proto"),
    ({"proto": "tcppp"}, "proto"),
    ({"proto": 6}, "proto"),
    ({"host_addr": "localhost"}, "host_addr"),
    ({"host_addr": "::g"}, "host_addr"),
    ({"host_addr": "[::1]"}, "host_addr"),
    ({"host_addr": 0}, "host_addr"),
    ({"host_port": None}, "host_port"),
    ({"host_port": 0}, "host_port"),
    ({"host_port": 70000}, "host_port"),
    ({"host_port": -1}, "host_port"),
    ({"host_port": "8080"}, "host_port"),
    ({"host_port": True}, "host_port"),
    ({"guest_addr": "10.0.2"}, "guest_addr"),
    ({"guest_addr": ["10.0.2.100"]}, "guest_addr"),
    ({"guest_port": None}, "guest_port"),
    ({"guest_port": 65536}, "guest_port"),
    ({"guest_port": "80"}, "guest_port"),
])
def test_add_hostfwd_bad_arguments(change: dict[str, object], field: str) -> None:
    api, ctl = make()
    body = {k: v for k, v in {**HOSTFWD, **change}.items() if v is not None}
    assert api.handle(request("add_hostfwd", **body)) == bad(f"add_hostfwd: bad arguments.{field}")
    assert ctl.forwards == {}


def test_add_hostfwd_checks_fields_in_slirp4netns_order() -> None:
    api, _ = make()
    body = {"proto": "tcp", "host_addr": "x", "host_port": 0, "guest_port": 0}
    assert api.handle(request("add_hostfwd", **body)) == bad("add_hostfwd: bad arguments.host_addr")


def test_add_hostfwd_truncates_a_fractional_port_as_slirp4netns() -> None:
    api, ctl = make()
    api.handle(request("add_hostfwd", **{**HOSTFWD, "host_port": 8080.9}))
    assert ctl.forwards[1][0].bind_port == 8080


@pytest.mark.parametrize("error", [OSError(errno.EADDRINUSE, "Address already in use"),
                                   ForwardError("IPv6 guest addresses are not supported yet")])
def test_add_hostfwd_failure_of_the_controller(error: Exception) -> None:
    api, ctl = make(busy_port=8080, refuse_with=error)
    assert api.handle(request("add_hostfwd", **HOSTFWD)) \
        == b'{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}'
    assert ctl.forwards == {}


# --- the envelope ---

@pytest.mark.parametrize("raw, reply", [
    (b"", b'{"error":{"desc":"bad request: cannot parse JSON"}}'),
    (b"{", b'{"error":{"desc":"bad request: cannot parse JSON"}}'),
    (b"\xff\xfe{}", b'{"error":{"desc":"bad request: cannot parse JSON"}}'),
    (b'{"execute": "list_hostfwd"', b'{"error":{"desc":"bad request: cannot parse JSON"}}'),
    (b"{}", b'{"error":{"desc":"bad request: no execute found"}}'),
    (b'{"arguments": {}}', b'{"error":{"desc":"bad request: no execute found"}}'),
    (b'{"execute": 1}', b'{"error":{"desc":"bad request: no execute found"}}'),
    (b'{"execute": "reboot"}', b'{"error":{"desc":"bad request: unknown execute"}}'),
    (b'{"execute": "LIST_HOSTFWD"}', b'{"error":{"desc":"bad request: unknown execute"}}'),
])
def test_envelope_errors(raw: bytes, reply: bytes) -> None:
    api, _ = make()
    assert api.handle(raw) == reply


def test_non_object_request_is_an_error() -> None:
    api, _ = make()
    assert api.handle(b"[1, 2]").startswith(b'{"error":{"desc":"bad request: ')


def test_missing_arguments_are_an_empty_mapping() -> None:
    api, _ = make()
    assert api.handle(b'{"execute": "add_hostfwd"}') == bad("add_hostfwd: bad arguments.proto")
    assert api.handle(b'{"execute": "list_hostfwd", "arguments": 5}') == b'{"entries":[]}'


# --- slirpy's own ---

def test_add_forward_local_and_remote_then_list() -> None:
    api, ctl = make()
    assert api.handle(request("add_forward", kind="local", spec="udp://5353:53")) \
        == b'{"return":{"ids":[1]}}'
    assert api.handle(request("add_forward", kind="remote",
                              spec="10.0.2.50:9000:192.0.2.1:8000")) == b'{"return":{"ids":[2]}}'
    assert ctl.forwards[1][1] == ctl.forwards[2][1] == "api"
    assert api.handle(request("list_forwards")) == (
        b'{"return":{"forwards":['
        b'{"id":1,"kind":"local","spec":"udp://127.0.0.1:5353:10.0.2.100:53","origin":"api"},'
        b'{"id":2,"kind":"remote","spec":"tcp://10.0.2.50:9000:192.0.2.1:8000","origin":"api"}'
        b']}}')


def test_list_forwards_includes_hostfwds() -> None:
    api, _ = make()
    api.handle(request("add_hostfwd", **HOSTFWD))
    reply = json.loads(api.handle(request("list_forwards")))
    assert reply == {"return": {"forwards": [
        {"id": 1, "kind": "local", "spec": "tcp://0.0.0.0:8080:10.0.2.100:80",
         "origin": "hostfwd"}]}}


def test_add_forward_range_gives_one_id_each() -> None:
    api, ctl = make()
    assert api.handle(request("add_forward", kind="local", spec="8000-8002:9000-9002")) \
        == b'{"return":{"ids":[1,2,3]}}'
    assert [fwd.target_port for fwd, _ in ctl.forwards.values()] == [9000, 9001, 9002]


def test_add_forward_range_is_all_or_nothing() -> None:
    api, ctl = make(busy_port=8002)
    reply = api.handle(request("add_forward", kind="local", spec="8000-8003:9000-9003"))
    assert reply == (b'{"error":{"desc":"add_forward: tcp://127.0.0.1:8002:10.0.2.100:9002: '
                     b'Address already in use"}}')
    assert ctl.forwards == {} and ctl.removed == [1, 2]
    assert api.handle(request("list_forwards")) == b'{"return":{"forwards":[]}}'


def test_add_forward_refused_by_the_controller_names_the_reason() -> None:
    api, _ = make(busy_port=9000, refuse_with=ForwardError("forwarded already"))
    assert api.handle(request("add_forward", kind="remote", spec="9000")) == (
        b'{"error":{"desc":"add_forward: tcp://10.0.2.2:9000:127.0.0.1:9000: '
        b'forwarded already"}}')


@pytest.mark.parametrize("args, desc", [
    ({"spec": "8080"}, 'add_forward: arguments.kind must be \\"local\\" or \\"remote\\"'),
    ({"kind": "sideways", "spec": "8080"},
     'add_forward: arguments.kind must be \\"local\\" or \\"remote\\"'),
    ({"kind": "local"}, "add_forward: arguments.spec must be a forward spec string"),
    ({"kind": "local", "spec": 8080}, "add_forward: arguments.spec must be a forward spec string"),
    ({"kind": "local", "spec": "sctp://80"},
     "add_forward: unknown protocol 'sctp' (tcp, udp, tcppp, udpspp, udprpc)"),
    ({"kind": "remote", "spec": "tcppp://80"},
     "add_forward: protocol tcppp is for local forwards only"),
])
def test_add_forward_bad_arguments(args: dict[str, object], desc: str) -> None:
    api, ctl = make()
    assert api.handle(request("add_forward", **args)) == bad(desc)
    assert ctl.forwards == {}


def test_remove_forward() -> None:
    api, ctl = make()
    api.handle(request("add_forward", kind="local", spec="8080"))
    api.handle(request("add_hostfwd", **HOSTFWD))
    assert api.handle(request("remove_forward", id=2)) == b'{"return":{}}'  # hostfwds too
    assert api.handle(request("remove_forward", id=1)) == b'{"return":{}}'
    assert ctl.removed == [2, 1]
    for value in (1, "1", None):
        args = {} if value is None else {"id": value}
        assert api.handle(request("remove_forward", **args)) \
            == bad("remove_forward: bad arguments.id")


def test_list_flows_and_counters_pass_through() -> None:
    flows = [{"proto": "tcp", "guest": "10.0.2.100:80", "remote": "198.51.100.7:40000",
              "bytes_from_guest": 10, "bytes_to_guest": 20, "age_s": 1.5,
              "state": "ESTABLISHED"}]
    api, _ = make(flows=flows, counts={"ipv4-bad-src": 2, "flows": {"tcp": 1}})
    assert api.handle(request("list_flows")) == (
        b'{"return":{"flows":[{"proto":"tcp","guest":"10.0.2.100:80",'
        b'"remote":"198.51.100.7:40000","bytes_from_guest":10,"bytes_to_guest":20,'
        b'"age_s":1.5,"state":"ESTABLISHED"}]}}')
    assert api.handle(request("counters")) \
        == b'{"return":{"ipv4-bad-src":2,"flows":{"tcp":1}}}'


def test_metrics_answers_the_text_exposition() -> None:
    api, _ = make()
    reply = api.handle(request("metrics"))
    assert json.loads(reply) == {"return": {"text": "# TYPE slirpy_frames_total counter\n"
                                                    "slirpy_frames_total 1.0\n"}}


# --- add_hostfwd with IPv6 (slirp4netns 1.2 refuses every IPv6 address) ---

def make6(*, ipv6: bool) -> tuple[Api, FakeController]:
    ctl = FakeController()
    return Api(ctl, Network(), ipv6=ipv6), ctl


def test_api_is_ipv4_only_unless_told() -> None:
    api = Api(FakeController(), Network())
    assert api.handle(request("add_hostfwd", **{**HOSTFWD, "guest_addr": "fd00::100"})) \
        == bad("add_hostfwd: bad arguments.guest_addr: IPv6 is off (slirpy -6 turns it on)")


@pytest.mark.parametrize("host_addr, guest_addr", [
    ("::1", "fd00::100"),        # IPv6 both ends
    ("::", "10.0.2.100"),        # IPv6 host, IPv4 guest
    ("127.0.0.1", "fd00::100"),  # IPv4 host, IPv6 guest
    ("::1", ""),                 # IPv6 host, the default (IPv4) guest
])
def test_add_hostfwd_takes_either_family_at_either_end(host_addr: str, guest_addr: str) -> None:
    api, ctl = make6(ipv6=True)
    body = {**HOSTFWD, "host_addr": host_addr, "guest_addr": guest_addr}
    assert api.handle(request("add_hostfwd", **body)) == b'{"return":{"id":1}}'
    fwd, origin = ctl.forwards[1]
    assert origin == "hostfwd"
    assert fwd == LocalForward(Proto.TCP, ipaddress.ip_address(host_addr), 8080,
                          ipaddress.ip_address(guest_addr or "10.0.2.100"), 80)


def test_ipv6_host_addr_needs_no_ipv6_in_the_guest() -> None:
    api, ctl = make6(ipv6=False)
    body = {**HOSTFWD, "host_addr": "::1"}
    assert api.handle(request("add_hostfwd", **body)) == b'{"return":{"id":1}}'
    assert str(ctl.forwards[1][0].bind) == "::1"


def test_list_hostfwd_shows_ipv6_compressed() -> None:
    api, _ = make6(ipv6=True)
    api.handle(request("add_hostfwd", **{**HOSTFWD, "proto": "udp", "host_addr": "0:0::0:1",
                                         "guest_addr": "FD00:0:0:0::100"}))
    api.handle(request("add_hostfwd", **{**HOSTFWD, "host_port": 8081}))
    assert api.handle(request("list_hostfwd")) == (
        b'{"entries":[{"id":1,"proto":"udp","host_addr":"::1","host_port":8080,'
        b'"guest_addr":"fd00::100","guest_port":80},'
        b'{"id":2,"proto":"tcp","host_addr":"0.0.0.0","host_port":8081,'
        b'"guest_addr":"10.0.2.100","guest_port":80}]}')


@pytest.mark.parametrize("ipv6", [False, True])
@pytest.mark.parametrize("change, desc", [
    ({"host_addr": "::g"}, "add_hostfwd: bad arguments.host_addr"),
    ({"host_addr": "[::1]"}, "add_hostfwd: bad arguments.host_addr"),
    ({"host_addr": "::1/128"}, "add_hostfwd: bad arguments.host_addr"),
    ({"guest_addr": "fd00::100::1"}, "add_hostfwd: bad arguments.guest_addr"),
    ({"guest_addr": "fe80::1%tap0"}, "add_hostfwd: bad arguments.guest_addr"),
    ({"guest_addr": "::ffff:10.0.2.100"}, "add_hostfwd: bad arguments.guest_addr"),
    ({"host_addr": "::1", "host_port": 0}, "add_hostfwd: bad arguments.host_port"),
])
def test_add_hostfwd_ipv6_errors(ipv6: bool, change: dict[str, object], desc: str) -> None:
    api, ctl = make6(ipv6=ipv6)
    assert api.handle(request("add_hostfwd", **{**HOSTFWD, **change})) == bad(desc)
    assert ctl.forwards == {}


def test_ipv6_off_guest_error_keeps_slirp4netns_field_order() -> None:
    api, ctl = make6(ipv6=False)
    body = {**HOSTFWD, "guest_addr": "fd00::100", "guest_port": 0}
    reply = api.handle(request("add_hostfwd", **body))
    assert json.loads(reply) == {"error": {"desc": "bad request: add_hostfwd: bad "
                                           "arguments.guest_addr: IPv6 is off (slirpy -6 "
                                           "turns it on)"}}
    body = {**HOSTFWD, "host_addr": "nope", "guest_addr": "fd00::100"}
    assert api.handle(request("add_hostfwd", **body)) == bad("add_hostfwd: bad arguments.host_addr")
    assert ctl.forwards == {}


def test_add_forward_with_ipv6_guest_addresses() -> None:
    api, ctl = make6(ipv6=True)
    assert api.handle(request("add_forward", kind="local", spec="[::1]:8080:[fd00::100]:80")) \
        == b'{"return":{"ids":[1]}}'
    assert api.handle(request("add_forward", kind="remote", spec="[fd00::2]:53:[::1]:53")) \
        == b'{"return":{"ids":[2]}}'
    assert [fwd.spec() for fwd, _ in ctl.forwards.values()] == [
        "tcp://[::1]:8080:[fd00::100]:80", "tcp://[fd00::2]:53:[::1]:53"]


def test_add_forward_ipv6_guest_address_with_ipv6_off() -> None:
    api, ctl = make6(ipv6=False)
    assert api.handle(request("add_forward", kind="local", spec="8080:[fd00::100]:80")) == bad(
        "add_forward: the guest address fd00::100 is IPv6: IPv6 is off (slirpy -6 turns it on)")
    assert api.handle(request("add_forward", kind="local", spec="[::1]:8080")) \
        == b'{"return":{"ids":[1]}}'  # an IPv6 host address is fine
    assert list(ctl.forwards) == [1]


@pytest.mark.parametrize("spec, guest_side", [
    ("[fd00::2]:53:127.0.0.1:53", "fd00::2"),
    ("udp://[fd00::2]:5353-5354:[::1]:53-54", "fd00::2"),
])
def test_add_forward_remote_ipv6_guest_address_with_ipv6_off(spec: str, guest_side: str) -> None:
    api, ctl = make6(ipv6=False)
    assert api.handle(request("add_forward", kind="remote", spec=spec)) == bad(
        f"add_forward: the guest address {guest_side} is IPv6: IPv6 is off (slirpy -6 turns "
        f"it on)")
    assert ctl.forwards == {}


def test_add_forward_srv_server_of_ipv6_needs_no_ipv6_in_the_guest() -> None:
    # The DNS server is asked from a host socket; the guest side is the IPv4 gateway.
    api, ctl = make6(ipv6=False)
    assert api.handle(request("add_forward", kind="remote",
                              spec="9000:[svc.example@srv-[2001:db8::53]]:0")) \
        == b'{"return":{"ids":[1]}}'
    assert ctl.forwards[1][0].spec() == "tcp://10.0.2.2:9000:[svc.example@srv-[2001:db8::53]:53]:0"
