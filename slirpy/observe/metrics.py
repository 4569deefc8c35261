"""--metrics and the API's `metrics`: slirpy's counters as Prometheus metrics.

Nothing is counted for metrics. The collector reads the counters the instance already
keeps (the same dict the API's `counters` returns) when a scrape asks, and turns them
into families with Prometheus's conventional names: a `slirpy_` prefix, `_total` on
counters, the unit as a suffix (`_bytes`, `_seconds`). The text is prometheus_client's
own exposition (generate_latest over a private registry, so no metric of the library's
default registry, and no other module's, ever shows up). A counter the instance does not
keep (yet) reads as 0 when its samples are known in advance (bytes each way, flows per
protocol, DNS), and as no sample when they are not (drops by reason, blocks by rule).

Process metrics use the names every Prometheus client library exports (`process_`):
CPU from clock_gettime(CLOCK_PROCESS_CPUTIME_ID), a call the seccomp filter allows; the
memory sizes from /proc/self/statm, opened at start and read with pread(), because once
--enable-sandbox has pivoted into its empty tmpfs there is no /proc to open. Not
prometheus_client's ProcessCollector: it opens /proc files at every scrape.

The HTTP side is served from slirpy's own loop, not prometheus_client's
start_http_server (a thread; slirpy is one thread around one epoll). It speaks just
enough HTTP/1.1 for a scraper: one request per connection, the head read until its blank
line (at most MAX_REQUEST_BYTES), `GET` or `HEAD /metrics` answered, anything else a 404,
405 or 400, then `Connection: close`. After the reply our side is shut for writing and
the client's leftovers are read and dropped until it closes (a close with unread input
would reset the connection and could destroy the reply at the client). A client has
CLIENT_TIMEOUT_S for the whole exchange; past MAX_CLIENTS, or at the open-file limit,
a new client is accepted and closed at once, as on the control socket.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            InfoMetricFamily, Metric)
from prometheus_client.registry import CollectorRegistry

import slirpy
from slirpy.errors import SetupError
from slirpy.ratelog import RateLimitedLog
from slirpy.runtime.listener import Listener
from slirpy.runtime.loop import EventLoop

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S: Final = 10.0  # Prometheus's default scrape timeout
LINGER_S: Final = 2.0  # after the reply: how long a client may take to close its side
MAX_CLIENTS: Final = 16  # scrapers are few; each one here holds an fd
MAX_REQUEST_BYTES: Final = 8192  # a request's head; Go's and curl's are a few hundred
STATM: Final = "/proc/self/statm"

Counters = Callable[[], Mapping[str, Any]]


# --- the families ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """One metric family read from the counters dict.

    *path*: the keys leading to the value in Instance.counters(). Without *label*, the
    value there is one number (missing: 0). With *label*, it is a dict whose keys become
    that label's values: those of *values* only, renamed, each 0 while missing; or, with
    *values* None, whatever keys there are.
    """

    name: str  # without `_total`: prometheus_client adds it to counters
    kind: str  # "counter" or "gauge"
    doc: str
    path: tuple[str, ...]
    label: str | None = None
    values: Mapping[str, str] | None = None


_DIRECTIONS: Final = {"from_guest": "from_guest", "to_guest": "to_guest"}
_PROTOS: Final = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}

FAMILIES: Final[tuple[Family, ...]] = (
    Family("slirpy_frames", "counter", "Ethernet frames on the guest link.", ("frames",),
           "direction", _DIRECTIONS),
    Family("slirpy_frame_bytes", "counter", "Bytes of the Ethernet frames on the guest link.",
           ("bytes",), "direction", _DIRECTIONS),
    Family("slirpy_dropped_frames", "counter", "Frames from the guest dropped, by reason.",
           ("drops",), "reason"),
    Family("slirpy_tap_errors", "counter", "Failed reads and writes on the tap device.",
           ("tap_errors",), "error"),
    Family("slirpy_flows_open", "gauge", "Flows open now, by protocol.", ("flows",), "proto",
           _PROTOS),
    Family("slirpy_flows_opened", "counter", "Flows opened, by protocol.", ("flows_opened",),
           "proto", _PROTOS),
    Family("slirpy_flows_closed", "counter", "Flows closed, by protocol.", ("flows_closed",),
           "proto", _PROTOS),
    Family("slirpy_flows_blocked", "counter",
           "New flows refused by the egress policy, by the rule or setting that refused them.",
           ("blocked",), "rule"),
    Family("slirpy_tcp_retransmits", "counter", "TCP segments retransmitted.",
           ("tcp", "retransmits")),
    Family("slirpy_tcp_resets", "counter", "TCP resets slirpy sent and received.", ("tcp",),
           "direction", {"resets_sent": "sent", "resets_received": "received"}),
    Family("slirpy_dns_queries", "counter", "DNS queries to the built-in forwarder.",
           ("dns", "queries")),
    Family("slirpy_dns_failures", "counter", "DNS queries that failed.",
           ("dns", "failures")),
    Family("slirpy_dns_failovers", "counter", "Times the DNS forwarder moved to another upstream.",
           ("dns", "failovers")),
    Family("slirpy_forwards", "gauge", "Port forwards in place (-L, -R and the API's).",
           ("forwards",)),
    Family("slirpy_forward_connections", "counter", "Connections through each forward, by id.",
           ("forward_connections",), "forward"),
    Family("slirpy_uptime_seconds", "gauge", "Seconds since slirpy started serving.",
           ("uptime_s",)),
)
BUILD_INFO: Final = "slirpy_build"  # exposed as slirpy_build_info{version, build} 1
PROCESS_FAMILIES: Final = ("process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_virtual_memory_bytes")


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _lookup(counters: Mapping[str, Any], path: tuple[str, ...]) -> object:
    value: object = counters
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _family(spec: Family, counters: Mapping[str, Any]) -> Metric:
    labels = [spec.label] if spec.label is not None else []
    metric: CounterMetricFamily | GaugeMetricFamily = (
        CounterMetricFamily(spec.name, spec.doc, labels=labels) if spec.kind == "counter"
        else GaugeMetricFamily(spec.name, spec.doc, labels=labels))
    found = _lookup(counters, spec.path)
    if spec.label is None:
        metric.add_metric([], _number(found) or 0)
        return metric
    table: Mapping[Any, object] = found if isinstance(found, Mapping) else {}
    if spec.values is not None:
        for key, label_value in spec.values.items():
            metric.add_metric([label_value], _number(table.get(key)) or 0)
    else:
        for key, value in sorted(table.items(), key=lambda item: str(item[0])):
            number = _number(value)
            if number is not None:
                metric.add_metric([str(key)], number)
    return metric


class ProcessStats:
    """This process's CPU time and memory, readable once slirpy is confined."""

    def __init__(self, statm: str = STATM) -> None:
        self.page_bytes = os.sysconf("SC_PAGE_SIZE")
        try:
            self.statm_fd: int | None = os.open(statm, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("metrics: no memory sizes: %s: %s", statm, exc.strerror)
            self.statm_fd = None

    @staticmethod
    def cpu_seconds() -> float:
        """User and system time of every thread (CLOCK_PROCESS_CPUTIME_ID)."""
        return time.process_time()

    def memory_bytes(self) -> tuple[int, int] | None:
        """(virtual, resident) sizes; None where /proc could not be read."""
        if self.statm_fd is None:
            return None
        try:
            fields = os.pread(self.statm_fd, 256, 0).split()
            return int(fields[0]) * self.page_bytes, int(fields[1]) * self.page_bytes
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self.statm_fd is not None:
            os.close(self.statm_fd)
            self.statm_fd = None


class SlirpyCollector:
    """A prometheus_client collector: every family, built from *counters* at each scrape."""

    def __init__(self, counters: Counters, process: ProcessStats) -> None:
        self.counters = counters
        self.process = process

    def collect(self) -> Iterator[Metric]:
        counters = self.counters()
        for spec in FAMILIES:
            yield _family(spec, counters)
        build = counters.get("build")
        yield InfoMetricFamily(BUILD_INFO, "slirpy's version, and whether its core is compiled.",
                               value={"version": slirpy.__version__,
                                      "build": build if isinstance(build, str) else "unknown"})
        yield CounterMetricFamily("process_cpu_seconds", "User and system CPU time spent.",
                                  value=self.process.cpu_seconds())
        sizes = self.process.memory_bytes()
        if sizes is not None:
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size.",
                                    value=sizes[0])
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size.",
                                    value=sizes[1])


class Metrics:
    """The text exposition of one instance's counters and this process, on a registry of
    its own."""

    def __init__(self, counters: Counters, process: ProcessStats | None = None) -> None:
        self.process = process if process is not None else ProcessStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SlirpyCollector(counters, self.process))

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.process.close()


# --- HTTP --------------------------------------------------------------------------------------


def listen_text(address: str, port: int) -> str:
    """ADDR:PORT as --metrics takes it ([ADDR]:PORT for IPv6)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _reply(status: str, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
           *, head: bool = False, extra: str = "") -> bytes:
    header = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return header.encode("ascii") + (b"" if head else body)


def answer(request: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole reply to one request head (request line and headers)."""
    line = request.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _reply("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _reply("405 Method Not Allowed", b"only GET and HEAD\n",
                      extra="Allow: GET, HEAD\r\n")
    if path != b"/metrics":
        return _reply("404 Not Found", b"metrics are at /metrics\n", head=method == b"HEAD")
    return _reply("200 OK", render(), CONTENT_TYPE_LATEST, head=method == b"HEAD")


def _head_complete(request: bytearray) -> bool:
    return b"\r\n\r\n" in request or b"\n\n" in request


class _Client:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: memoryview | None = None
        self.lingering = False  # replied and shut for writing: reading until the client's EOF


class MetricsServer:
    """GET /metrics on *address*:*port*, answered with *render()*, from *loop*.

    A runtime-timed part (Driver.runtime_timed): clients have deadlines.
    """

    def __init__(self, address: str, port: int, loop: EventLoop,
                 render: Callable[[], bytes]) -> None:
        self.where = listen_text(address, port)
        self.loop = loop
        self.render = render
        self.clients: dict[int, _Client] = {}
        self.scrapes = 0
        self._log = RateLimitedLog(log)
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC)
        try:
            # A restarted slirpy may bind while the last one's connections are in
            # TIME-WAIT; a port some socket listens on is still refused.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((address, port))
            self.sock.listen(MAX_CLIENTS)
        except OSError as exc:
            self.sock.close()
            raise SetupError(f"--metrics {self.where}: {exc.strerror or exc}") from None
        self.listener = Listener(self.sock, loop, self._add_client,
                                 label=f"--metrics {self.where}", client="a metrics client",
                                 log=self._log)
        log.info("metrics at http://%s/metrics", self.where)

    def _add_client(self, sock: socket.socket) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            sock.close()
            return
        fd = sock.fileno()
        self.clients[fd] = _Client(sock, self.loop.now() + CLIENT_TIMEOUT_S)
        self.loop.add(fd, functools.partial(self._ready, fd), select.EPOLLIN)

    def _ready(self, fd: int, mask: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        if client.reply is not None:
            self._write(fd, client)
            return
        try:
            data = client.sock.recv(MAX_REQUEST_BYTES + 1 if client.lingering
                                    else MAX_REQUEST_BYTES - len(client.request) + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if client.lingering or not data:
            if not data:  # the client is done (or gave up mid-request)
                self._drop(fd)
            return
        client.request += data
        if len(client.request) > MAX_REQUEST_BYTES:
            self._answer(fd, client, _reply("431 Request Header Fields Too Large",
                                            b"request too large\n"))
        elif _head_complete(client.request):
            self.scrapes += 1
            self._answer(fd, client, answer(bytes(client.request), self.render))

    def _answer(self, fd: int, client: _Client, reply: bytes) -> None:
        client.reply = memoryview(reply)
        self.loop.epoll.modify(fd, select.EPOLLOUT)
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        assert client.reply is not None
        try:
            sent = client.sock.send(client.reply, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        client.reply = client.reply[sent:]
        if client.reply:
            return
        client.reply = None
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(fd)
            return
        client.lingering = True
        client.deadline = min(client.deadline, self.loop.now() + LINGER_S)
        self.loop.epoll.modify(fd, select.EPOLLIN)

    def expire(self, now: float) -> None:
        for fd, client in list(self.clients.items()):
            if client.deadline <= now:
                if not client.lingering:
                    log.debug("metrics: a client took too long")
                self._drop(fd)
        self.listener.expire(now)

    def next_deadline(self) -> float | None:
        rest = self.listener.next_deadline()
        return min((*(c.deadline for c in self.clients.values()),
                    *((rest,) if rest is not None else ())), default=None)

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd)
        self.loop.remove(fd)
        client.sock.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.listener.close()
