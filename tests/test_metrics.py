"""--metrics: slirpy's counters as Prometheus text, read back with prometheus_client's parser.

The collector is fed a counters dict as Instance.counters() returns it; the text it
gives is parsed by the library's own parser, so names, types, labels and values are
checked as a scraper sees them. The HTTP answers are checked on request bytes (no
sockets here; integration/test_metrics.py scrapes a running slirpy).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import slirpy
from slirpy.observe.metrics import (BUILD_INFO, FAMILIES, PROCESS_FAMILIES, Metrics,
                                    ProcessStats, answer)

MAN = pathlib.Path(__file__).parent.parent / "man" / "slirpy.1"

# Every key the counters carry once issue 14's other parts are in.
FULL: dict[str, Any] = {
    "frames": {"from_guest": 10, "to_guest": 12},
    "bytes": {"from_guest": 1000, "to_guest": 5000},
    "drops": {"ipv4-checksum": 3, "eth-short": 1},
    "tap_errors": {"tap-write-EAGAIN": 2},
    "flows": {"tcp": 2, "udp": 1, "icmp": 0},
    "flows_opened": {"tcp": 7, "udp": 3, "icmp": 1},
    "flows_closed": {"tcp": 5, "udp": 2, "icmp": 1},
    "forwards": 2,
    "blocked": {"rule 1": 4, "--disable-host-loopback": 1},
    "tcp": {"retransmits": 6, "resets_sent": 2, "resets_received": 1},
    "dns": {"queries": 9, "failures": 1, "failovers": 1},
    "forward_connections": {"1": 3, "2": 0},
    "uptime_s": 12.5,
    "build": "pure Python",
}


def parse(text: bytes | str) -> dict[str, Metric]:
    if isinstance(text, bytes):
        text = text.decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def scrape(counters: dict[str, Any]) -> dict[str, Metric]:
    return parse(Metrics(lambda: counters).text())


def test_every_family_has_its_type_name_and_values() -> None:
    found = scrape(FULL)
    # The parser names counters without `_total`; the info metric is a gauge in this format.
    assert {*found} == {*(f.name for f in FAMILIES), "slirpy_build_info", "process_cpu_seconds",
                        "process_resident_memory_bytes", "process_virtual_memory_bytes"}
    for spec in FAMILIES:
        assert found[spec.name].type == spec.kind, spec.name
    assert samples(found["slirpy_frames"]) == {(("direction", "from_guest"),): 10,
                                               (("direction", "to_guest"),): 12}
    assert samples(found["slirpy_frame_bytes"]) == {(("direction", "from_guest"),): 1000,
                                                    (("direction", "to_guest"),): 5000}
    assert samples(found["slirpy_dropped_frames"]) == {(("reason", "eth-short"),): 1,
                                                       (("reason", "ipv4-checksum"),): 3}
    assert samples(found["slirpy_tap_errors"]) == {(("error", "tap-write-EAGAIN"),): 2}
    assert samples(found["slirpy_flows_open"]) == {(("proto", "tcp"),): 2,
                                                   (("proto", "udp"),): 1,
                                                   (("proto", "icmp"),): 0}
    assert samples(found["slirpy_flows_opened"])[(("proto", "tcp"),)] == 7
    assert samples(found["slirpy_flows_closed"])[(("proto", "udp"),)] == 2
    assert samples(found["slirpy_flows_blocked"]) == {(("rule", "--disable-host-loopback"),): 1,
                                                      (("rule", "rule 1"),): 4}
    assert samples(found["slirpy_tcp_retransmits"]) == {(): 6}
    assert samples(found["slirpy_tcp_resets"]) == {(("direction", "sent"),): 2,
                                                   (("direction", "received"),): 1}
    assert [samples(found[f"slirpy_dns_{name}"]) for name in ("queries", "failures",
                                                               "failovers")] \
        == [{(): 9}, {(): 1}, {(): 1}]
    assert samples(found["slirpy_forwards"]) == {(): 2}
    assert samples(found["slirpy_forward_connections"]) == {(("forward", "1"),): 3,
                                                            (("forward", "2"),): 0}
    assert samples(found["slirpy_uptime_seconds"]) == {(): 12.5}


def test_counters_end_in_total_and_units_are_suffixes() -> None:
    text = Metrics(lambda: FULL).text().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name, kind in types.items():
        assert name.startswith(("slirpy_", "process_")), name
        assert name.endswith("_total") == (kind == "counter"), name
    assert "slirpy_uptime_seconds" in types and "process_resident_memory_bytes" in types


def test_build_info_says_version_and_build() -> None:
    (sample,) = scrape(FULL)["slirpy_build_info"].samples  # a gauge in this format
    assert sample.name == "slirpy_build_info"
    assert sample.labels == {"version": slirpy.__version__, "build": "pure Python"}
    assert sample.value == 1


def test_counters_not_kept_yet_read_as_zero_or_no_sample() -> None:
    """Today's counters() lacks bytes, flows_opened/closed, tcp, dns, forward_connections."""
    today = {key: FULL[key] for key in ("frames", "drops", "tap_errors", "flows", "forwards",
                                        "blocked", "uptime_s", "build")}
    found = scrape(today)
    assert samples(found["slirpy_frame_bytes"]) == {(("direction", "from_guest"),): 0,
                                                    (("direction", "to_guest"),): 0}
    assert set(samples(found["slirpy_flows_opened"]).values()) == {0}
    assert samples(found["slirpy_tcp_resets"]) == {(("direction", "sent"),): 0,
                                                   (("direction", "received"),): 0}
    assert samples(found["slirpy_dns_queries"]) == {(): 0}
    assert samples(found["slirpy_forward_connections"]) == {}  # declared, no forward seen


def test_odd_values_are_skipped_not_raised() -> None:
    found = scrape({"frames": "many", "drops": {"x": "y", "z": True, "w": 2},
                    "tcp": 5, "dns": {"queries": None}, "build": 3})
    assert samples(found["slirpy_dropped_frames"]) == {(("reason", "w"),): 2}
    assert samples(found["slirpy_frames"]) == {(("direction", "from_guest"),): 0,
                                               (("direction", "to_guest"),): 0}
    assert samples(found["slirpy_tcp_retransmits"]) == {(): 0}
    assert samples(found["slirpy_dns_queries"]) == {(): 0}
    assert found["slirpy_build_info"].samples[0].labels["build"] == "unknown"


def test_label_values_are_escaped_by_the_library() -> None:
    found = scrape({"blocked": {'deny "a\\b"\nc': 1}})
    assert samples(found["slirpy_flows_blocked"]) == {(("rule", 'deny "a\\b"\nc'),): 1}


def test_counters_are_read_at_each_scrape_only() -> None:
    calls: list[int] = []
    counts = {"frames": {"from_guest": 1, "to_guest": 1}}

    def counters() -> dict[str, Any]:
        calls.append(1)
        return counts

    metrics = Metrics(counters)
    assert calls == []  # registering reads nothing
    first = samples(parse(metrics.text())["slirpy_frames"])
    counts["frames"]["from_guest"] = 5
    second = samples(parse(metrics.text())["slirpy_frames"])
    assert calls == [1, 1]
    assert (first[(("direction", "from_guest"),)], second[(("direction", "from_guest"),)]) \
        == (1, 5)


def test_process_cpu_and_memory_are_this_process() -> None:
    found = scrape(FULL)
    rss = samples(found["process_resident_memory_bytes"])[()]
    vms = samples(found["process_virtual_memory_bytes"])[()]
    status = pathlib.Path("/proc/self/status").read_text()
    vm_rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert 0.5 < rss / (vm_rss_kib * 1024) < 2
    assert vms >= rss
    assert samples(found["process_cpu_seconds"])[()] > 0


def test_memory_is_left_out_when_statm_cannot_be_opened(tmp_path: pathlib.Path) -> None:
    process = ProcessStats(str(tmp_path / "nonexistent"))
    found = parse(Metrics(lambda: FULL, process).text())
    assert "process_resident_memory_bytes" not in found
    assert "process_cpu_seconds" in found


def test_statm_is_read_through_the_fd_opened_at_start() -> None:
    process = ProcessStats()
    fd = process.statm_fd
    assert fd is not None
    first = process.memory_bytes()
    assert first is not None and process.memory_bytes() is not None  # pread: offset 0 again
    process.close()
    assert process.statm_fd is None and process.memory_bytes() is None


# --- the HTTP answers --------------------------------------------------------------------------


def split(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    return status, headers, body


def render() -> bytes:
    return Metrics(lambda: FULL).text()


def test_get_metrics_is_the_exposition_with_its_content_type() -> None:
    status, headers, body = split(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", render))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert "slirpy_frames" in parse(body)


def test_head_has_the_headers_and_no_body() -> None:
    status, headers, body = split(answer(b"HEAD /metrics HTTP/1.0\n\n", lambda: b"abc"))
    assert (status, body) == ("HTTP/1.1 200 OK", b"")
    assert headers["content-length"] == "3"


def test_query_string_is_ignored() -> None:
    assert answer(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("request_head, status", [
    (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
    (b"GET /metricsx HTTP/1.1\r\n\r\n", "404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
    (b"GET /metrics\r\n\r\n", "400 Bad Request"),
    (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
    (b"\x00\xff garbage\r\n\r\n", "400 Bad Request"),
    (b"\r\n\r\n", "400 Bad Request"),
])
def test_anything_else_is_an_http_error(request_head: bytes, status: str) -> None:
    called: list[int] = []

    def counting_render() -> bytes:
        called.append(1)
        return b""

    reply_status, headers, _ = split(answer(request_head, counting_render))
    assert reply_status == f"HTTP/1.1 {status}"
    assert headers["connection"] == "close"
    assert called == []  # no scrape work for a request that is not one


# --- the man page ------------------------------------------------------------------------------


def test_man_page_lists_every_metric() -> None:
    man = MAN.read_text().replace("\\-", "-").replace("\\_", "_")
    section = man.split(".SH METRICS", 1)[1].split("\n.SH ", 1)[0]
    names = [f"{spec.name}_total" if spec.kind == "counter" else spec.name for spec in FAMILIES]
    for name in (*names, f"{BUILD_INFO}_info", *PROCESS_FAMILIES):
        assert name in section, name


# --- off costs nothing -------------------------------------------------------------------------


def test_prometheus_client_is_imported_only_when_metrics_may_be_asked_for() -> None:
    code = "import sys, slirpy.app; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=MAN.parent.parent)
    assert done.stdout == "False\n"
