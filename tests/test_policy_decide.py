"""Policy.decide, table-driven: deny, allow, the gateway, the static list, host, routing."""

from __future__ import annotations

import ipaddress

import pytest

from slirpy.policy.decide import Outcome, Policy, Verdict
from slirpy.policy.rules import Action, parse_rules

PASS, BLOCK, UNREACH = Outcome.PASS, Outcome.BLOCK, Outcome.UNREACHABLE
TCP, UDP, ICMP4, ICMP6 = 6, 17, 1, 58
GATEWAYS = frozenset({"10.0.2.2", "fd00::2"})
HOST_NETS = [ipaddress.ip_network(n) for n in (
    "203.0.113.1/32", "203.0.113.0/24", "2001:db8:1::/64")]
ON = {"routing": True, "host": True, "host_loopback": True}
OFF = {"routing": False, "host": False, "host_loopback": False}
ROUTING_ONLY = {"routing": True, "host": False, "host_loopback": False}  # `slirpy run`
HOST_ONLY = {"routing": False, "host": True, "host_loopback": False}


def policy(posture: dict[str, bool], allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
           hosts: bool = True) -> Policy:
    rules = [r for text in deny for r in parse_rules(Action.DENY, text)]
    rules += [r for text in allow for r in parse_rules(Action.ALLOW, text)]
    pol = Policy(rules=rules, **posture)
    if hosts:
        pol.set_host_networks(HOST_NETS)
    return pol


def decide(pol: Policy, proto: int, addr: str, port: int = 80) -> Verdict:
    return pol.decide(proto, ipaddress.ip_address(addr).packed, port, gateway=addr in GATEWAYS)


TABLE = [
    # posture, allow, deny, proto, address, port, outcome, why
    # --- deny beats allow, allow beats everything after it
    pytest.param(ON, ("198.51.100.1",), ("198.51.100.1",), TCP, "198.51.100.1", 80, BLOCK,
                 "--deny 198.51.100.1", id="deny-beats-allow"),
    pytest.param(ON, ("198.51.100.0/24",), ("tcp://198.51.100.1:80",), TCP, "198.51.100.1", 80,
                 BLOCK, "--deny tcp://198.51.100.1:80", id="narrow-deny-beats-wide-allow"),
    pytest.param(ON, ("198.51.100.0/24",), ("tcp://198.51.100.1:80",), TCP, "198.51.100.1", 81,
                 PASS, "--allow 198.51.100.0/24", id="deny-other-port-falls-to-allow"),
    pytest.param(ON, ("198.51.100.0/24",), ("tcp://198.51.100.1:80",), UDP, "198.51.100.1", 80,
                 PASS, "--allow 198.51.100.0/24", id="deny-other-proto-falls-to-allow"),
    pytest.param(OFF, ("198.51.100.1",), (), TCP, "198.51.100.1", 80, PASS,
                 "--allow 198.51.100.1", id="allow-beats-routing-off"),
    pytest.param(OFF, ("203.0.113.1",), (), UDP, "203.0.113.1", 53, PASS,
                 "--allow 203.0.113.1", id="allow-beats-host-off"),
    pytest.param(ON, (), ("203.0.113.0/24",), TCP, "203.0.113.1", 22, BLOCK,
                 "--deny 203.0.113.0/24", id="deny-beats-host-on"),
    pytest.param(ON, (), ("[::/0]",), ICMP6, "2001:db8::1", 0, BLOCK, "--deny [::/0]",
                 id="deny-all-ipv6"),
    # --- the static deny list, beaten only by an allow rule
    pytest.param(OFF, ("169.254.169.254",), (), TCP, "169.254.169.254", 80, PASS,
                 "--allow 169.254.169.254", id="allow-beats-static-metadata"),
    pytest.param(OFF, ("[64:ff9b::/96]:443",), (), TCP, "64:ff9b::7f00:1", 443, PASS,
                 "--allow [64:ff9b::/96]:443", id="allow-beats-static-nat64"),
    pytest.param(ON, (), (), TCP, "169.254.169.254", 80, BLOCK, "static deny list",
                 id="static-metadata"),
    pytest.param(ON, (), (), UDP, "169.254.1.1", 53, BLOCK, "static deny list",
                 id="static-link-local"),
    pytest.param(ON, (), (), ICMP4, "169.254.0.1", 0, BLOCK, "static deny list",
                 id="static-link-local-icmp"),
    pytest.param(ON, (), (), TCP, "fd00:ec2::254", 80, BLOCK, "static deny list",
                 id="static-metadata6"),
    pytest.param(ON, (), (), TCP, "64:ff9b::7f00:1", 80, BLOCK, "static deny list",
                 id="static-nat64-loopback"),
    pytest.param(ON, (), (), ICMP6, "64:ff9b::c633:6401", 0, BLOCK, "static deny list",
                 id="static-nat64-icmp"),
    pytest.param(ON, ("[::/0]",), (), TCP, "2001:db8::1", 80, PASS, "--allow [::/0]",
                 id="allow-all-ipv6"),
    pytest.param(ON, ("tcp://169.254.169.254:443",), (), TCP, "169.254.169.254", 80, BLOCK,
                 "static deny list", id="allow-other-port-leaves-static"),
    pytest.param(ON, (), (), TCP, "169.255.0.1", 80, PASS, "routing",
                 id="just-past-link-local"),
    pytest.param(ON, (), (), TCP, "fd00:ec2::253", 80, PASS, "routing",
                 id="next-to-metadata6"),
    # --- the gateway
    pytest.param(ON, (), (), TCP, "10.0.2.2", 8080, PASS, "host loopback",
                 id="gateway-loopback-on"),
    pytest.param(OFF | {"host_loopback": True}, (), (), UDP, "fd00::2", 53, PASS,
                 "host loopback", id="gateway6-loopback-on-restricted"),
    pytest.param(ROUTING_ONLY, (), (), TCP, "10.0.2.2", 8080, UNREACH, "host loopback is off",
                 id="gateway-loopback-off"),
    pytest.param(ON | {"host_loopback": False}, (), (), UDP, "fd00::2", 53, UNREACH,
                 "host loopback is off", id="gateway6-loopback-off-routing-host-on"),
    pytest.param(ON, (), ("10.0.2.2",), TCP, "10.0.2.2", 8080, BLOCK, "--deny 10.0.2.2",
                 id="gateway-denied"),
    pytest.param(ON, (), ("[fd00::2]:22",), TCP, "fd00::2", 22, BLOCK, "--deny [fd00::2]:22",
                 id="gateway6-denied-port"),
    pytest.param(OFF, ("tcp://10.0.2.2:8080",), (), TCP, "10.0.2.2", 8080, PASS,
                 "--allow tcp://10.0.2.2:8080", id="gateway-allowed-loopback-off"),
    pytest.param(OFF, ("tcp://10.0.2.2:8080",), (), TCP, "10.0.2.2", 8081, UNREACH,
                 "host loopback is off", id="gateway-allowed-other-port"),
    # --- the host's own addresses and networks
    pytest.param(ON, (), (), TCP, "203.0.113.1", 80, PASS, "host address", id="host-on"),
    pytest.param(HOST_ONLY, (), (), TCP, "203.0.113.1", 80, PASS, "host address",
                 id="host-on-routing-off"),
    pytest.param(HOST_ONLY, (), (), UDP, "203.0.113.200", 53, PASS, "host address",
                 id="host-network-on-routing-off"),
    pytest.param(HOST_ONLY, (), (), ICMP6, "2001:db8:1::ffff", 0, PASS, "host address",
                 id="host-network6-on"),
    pytest.param(ROUTING_ONLY, (), (), TCP, "203.0.113.1", 80, BLOCK,
                 "host address (--enable-host)", id="host-off"),
    pytest.param(ROUTING_ONLY, (), (), UDP, "203.0.113.77", 53, BLOCK,
                 "host address (--enable-host)", id="host-network-off"),
    pytest.param(ROUTING_ONLY, (), (), TCP, "2001:db8:1::5", 443, BLOCK,
                 "host address (--enable-host)", id="host-network6-off"),
    pytest.param(ROUTING_ONLY, (), (), TCP, "203.0.114.1", 80, PASS, "routing",
                 id="next-to-host-network"),
    pytest.param(ROUTING_ONLY, (), (), TCP, "2001:db8:2::1", 80, PASS, "routing",
                 id="next-to-host-network6"),
    # --- routing for everything else
    pytest.param(ROUTING_ONLY, (), (), TCP, "198.51.100.1", 443, PASS, "routing",
                 id="routing-on"),
    pytest.param(ROUTING_ONLY, (), (), ICMP6, "2001:db8::1", 0, PASS, "routing",
                 id="routing6-on"),
    pytest.param(HOST_ONLY, (), (), TCP, "198.51.100.1", 443, BLOCK,
                 "routing is off (--enable-routing)", id="routing-off"),
    pytest.param(OFF, (), (), UDP, "2001:db8::1", 53, BLOCK,
                 "routing is off (--enable-routing)", id="routing6-off"),
]


@pytest.mark.parametrize("posture, allow, deny, proto, addr, port, outcome, why", TABLE)
def test_truth_table(posture: dict[str, bool], allow: tuple[str, ...], deny: tuple[str, ...],
                     proto: int, addr: str, port: int, outcome: Outcome, why: str) -> None:
    verdict = decide(policy(posture, allow, deny), proto, addr, port)
    assert (verdict.outcome, verdict.why) == (outcome, why)
    assert (verdict.rule is not None) == why.startswith("--")  # a rule says its id


@pytest.mark.parametrize("addr", ["169.254.169.254", "169.254.1.1", "fd00:ec2::254",
                                  "64:ff9b::7f00:1"])
@pytest.mark.parametrize("proto", [TCP, UDP, ICMP4, ICMP6])
def test_static_list_blocks_with_routing_and_host_on(addr: str, proto: int) -> None:
    pol = policy(ON)
    pol.set_host_networks([*HOST_NETS, ipaddress.ip_network(addr)])  # even as a host address
    assert decide(pol, proto, addr, 80) == Verdict(BLOCK, "static deny list")


def test_without_host_networks_a_host_address_is_routed() -> None:
    assert decide(policy(ROUTING_ONLY, hosts=False), TCP, "203.0.113.1") == \
        Verdict(PASS, "routing")


def test_host_networks_are_replaced_not_added() -> None:
    pol = policy(ROUTING_ONLY)
    pol.set_host_networks([ipaddress.ip_network("192.0.2.0/24")])
    assert decide(pol, TCP, "203.0.113.1").outcome is PASS
    assert decide(pol, TCP, "192.0.2.9") == Verdict(BLOCK, "host address (--enable-host)")
    pol.set_host_networks([])
    assert decide(pol, TCP, "192.0.2.9") == Verdict(PASS, "routing")


@pytest.mark.parametrize("port, outcome", [(7999, BLOCK), (8000, PASS), (8010, PASS),
                                           (8011, BLOCK), (1, BLOCK), (65535, BLOCK)])
@pytest.mark.parametrize("proto", [TCP, UDP])
def test_port_range_bounds(port: int, outcome: Outcome, proto: int) -> None:
    pol = policy(OFF, allow=("198.51.100.1:8000-8010",))
    assert decide(pol, proto, "198.51.100.1", port).outcome is outcome


@pytest.mark.parametrize("port, outcome", [(442, PASS), (443, BLOCK), (444, PASS)])
def test_single_port_deny_bounds(port: int, outcome: Outcome) -> None:
    pol = policy(ON, deny=("tcp://[2001:db8::]/32:443",))
    assert decide(pol, TCP, "2001:db8::1", port).outcome is outcome


@pytest.mark.parametrize("rule, proto, outcome", [
    ("tcp://198.51.100.1", TCP, PASS),
    ("tcp://198.51.100.1", UDP, BLOCK),
    ("tcp://198.51.100.1", ICMP4, BLOCK),
    ("udp://198.51.100.1", UDP, PASS),
    ("udp://198.51.100.1", TCP, BLOCK),
    ("icmp://198.51.100.1", ICMP4, PASS),
    ("icmp://198.51.100.1", TCP, BLOCK),
    ("icmp://198.51.100.1", UDP, BLOCK),
    ("198.51.100.1", ICMP4, PASS),
    ("198.51.100.1", UDP, PASS),
])
def test_protocol_specific_rules(rule: str, proto: int, outcome: Outcome) -> None:
    assert decide(policy(OFF, allow=(rule,)), proto, "198.51.100.1", 53).outcome is outcome


def test_icmp_rules_cover_icmpv6() -> None:
    pol = policy(OFF, allow=("icmp://[2001:db8::1]",))
    assert decide(pol, ICMP6, "2001:db8::1", 0).outcome is PASS
    assert decide(pol, TCP, "2001:db8::1", 80).outcome is BLOCK


@pytest.mark.parametrize("rule", ["198.51.100.1:1-65535", "198.51.100.0/24:1-65535",
                                  "0.0.0.0/0:1"])
@pytest.mark.parametrize("icmp_port", [0, 1])
def test_icmp_never_matched_by_a_rule_with_ports(rule: str, icmp_port: int) -> None:
    allow = policy(OFF, allow=(rule,))
    assert decide(allow, ICMP4, "198.51.100.1", icmp_port) == \
        Verdict(BLOCK, "routing is off (--enable-routing)")
    deny = policy(ON, deny=(rule,))
    assert decide(deny, ICMP4, "198.51.100.1", icmp_port) == Verdict(PASS, "routing")


@pytest.mark.parametrize("rule, addr", [
    ("0.0.0.0/0", "2001:db8::1"), ("[::/0]", "198.51.100.1"),
    ("[::ffff:198.51.100.1]", "198.51.100.1"), ("[::ffff:0:0/96]", "198.51.100.1"),
    ("198.51.100.1", "::ffff:198.51.100.1"), ("0.0.0.0/0", "64:ff9b::c633:6401"),
])
def test_family_mismatch_never_matches(rule: str, addr: str) -> None:
    assert decide(policy(OFF, allow=(rule,)), TCP, addr).outcome is BLOCK
    assert decide(policy(ON | {"host": False}, deny=(rule,), hosts=False), UDP,
                  addr).outcome is (BLOCK if addr.startswith("64:") else PASS)


def test_add_and_remove_rules_by_id_change_decisions() -> None:
    pol = policy(ON)
    assert pol.rules == {} and pol.next_id == 1
    target = ipaddress.ip_address("198.51.100.1").packed
    assert pol.decide(TCP, target, 443, gateway=False) == Verdict(PASS, "routing")
    (deny,) = parse_rules(Action.DENY, "tcp://198.51.100.0/24:443")
    deny_id = pol.add(deny)
    assert deny_id == 1
    assert pol.decide(TCP, target, 443, gateway=False) == \
        Verdict(BLOCK, "--deny tcp://198.51.100.0/24:443", deny_id)
    (allow,) = parse_rules(Action.ALLOW, "198.51.100.1")
    allow_id = pol.add(allow)
    assert allow_id == 2 and list(pol.rules) == [1, 2]
    assert pol.decide(TCP, target, 443, gateway=False).outcome is BLOCK  # deny still wins
    assert pol.remove(deny_id) == deny
    assert pol.decide(TCP, target, 443, gateway=False) == Verdict(PASS, "--allow 198.51.100.1",
                                                                  allow_id)
    assert pol.remove(deny_id) is None  # gone already
    assert pol.remove(99) is None
    assert pol.remove(allow_id) == allow
    assert pol.rules == {}
    assert pol.decide(TCP, target, 443, gateway=False) == Verdict(PASS, "routing")
    assert pol.add(deny) == 3  # ids are never reused


def test_rules_from_the_constructor_take_ids_in_order() -> None:
    rules = parse_rules(Action.DENY, "192.0.2.1, 192.0.2.2") + \
        parse_rules(Action.ALLOW, "tcp://192.0.2.3:22")
    pol = Policy(routing=False, host=False, host_loopback=False, rules=rules)
    assert pol.rules == {1: rules[0], 2: rules[1], 3: rules[2]}
    assert pol.next_id == 4


def test_first_matching_deny_names_itself() -> None:
    pol = policy(ON, deny=("198.51.100.0/24", "tcp://198.51.100.1:80"))
    assert decide(pol, TCP, "198.51.100.1").why == "--deny 198.51.100.0/24"


def test_why_names_the_rule_as_written() -> None:
    pol = policy(OFF, allow=("TCP://[2001:DB8::]/32:8000-8010",),
                 deny=("  udp://198.51.100.1:53  ",))
    assert decide(pol, TCP, "2001:db8::5", 8005).why == "--allow TCP://[2001:DB8::]/32:8000-8010"
    assert decide(pol, UDP, "198.51.100.1", 53).why == "--deny udp://198.51.100.1:53"


def test_a_name_rule_matches_each_address() -> None:
    found = [ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")]
    rules = parse_rules(Action.ALLOW, "tcp://svc.test:443", lambda name: found)
    pol = Policy(routing=False, host=False, host_loopback=False, rules=rules)
    for addr in ("192.0.2.10", "2001:db8::10"):
        assert decide(pol, TCP, addr, 443)[:2] == (PASS, "--allow tcp://svc.test:443")
    assert decide(pol, TCP, "192.0.2.11", 443).outcome is BLOCK


@pytest.mark.parametrize("allow, addr, outcome", [
    ("0.0.0.0/0", "169.254.169.254", BLOCK),  # a wide rule does not open the static list
    ("169.254.0.0/16", "169.254.169.254", PASS),  # as narrow as the range: it does
    ("169.254.169.254", "169.254.169.254", PASS),
    ("[::/0]", "64:ff9b::7f00:1", BLOCK),
    ("[64:ff9b::/64]", "64:ff9b::7f00:1", BLOCK),  # wider than the /96
    ("[::/0]", "64:ff9b:1::7f00:1", BLOCK),  # RFC 8215's local-use NAT64 prefix
    ("[64:ff9b:1::/48]", "64:ff9b:1::7f00:1", PASS),
    ("[::/0]", "fd00:ec2::254", BLOCK),
    ("0.0.0.0/0", "198.51.100.1", PASS),  # elsewhere a wide rule is a rule like any
])
def test_only_a_rule_as_narrow_as_a_static_range_opens_it(allow: str, addr: str,
                                                          outcome: Outcome) -> None:
    assert decide(policy(OFF, allow=(allow,)), TCP, addr).outcome is outcome
