# The metrics endpoint: the counters as Prometheus families, GET /metrics as a loop service.
"""Serve srsd's metrics at ``metrics_listen`` in the Prometheus text format.

:class:`ServerCollector` reads every counter from the component that keeps it (the lookups,
the connection loop, admission control, the envelope database, the log writer, the milter
service) when scraped and says, once, under which metric name and help text each is
exported. :class:`MetricsService` answers ``GET /metrics`` as a service of the connection
loop (:mod:`srsd.serve.loop`), srsd's one accept path, behind a gate of its own
(:class:`Capped`): at most :data:`HTTP_CONNECTIONS` connections at once, more are closed at
once; a scraper is not Postfix, so ``allowed_users`` and the per-user shares do not apply.
One request per connection, its head at most :data:`HTTP_HEAD_LIMIT` bytes, sent within
:data:`HTTP_TIMEOUT` seconds: the endpoint must not let anyone spend the descriptors or the
time the lookups need.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from srsd.host import logs
from srsd.host.metrics import BUCKETS
from srsd.serve.loop import Connection, Reader

if TYPE_CHECKING:
    from srsd.serve.server import Server

#: Bounds on one HTTP request to the metrics endpoint.
HTTP_HEAD_LIMIT = 8192
HTTP_TIMEOUT = 5.0
#: Metrics connections served at once; more are closed at once (a scraper needs one).
HTTP_CONNECTIONS = 8


class ServerCollector(Collector):
    """Builds srsd's metric families from its components' counters at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """The current value of every srsd metric."""
        s = self.server
        lookups = CounterMetricFamily(
            "srsd_lookups", "Lookups answered, by outcome", labels=["map", "protocol", "outcome"]
        )
        for (protocol, name, outcome), count in sorted(s.lookups.counts.items()):
            lookups.add_metric([name, protocol, outcome], count)
        yield lookups
        latency = HistogramMetricFamily(
            "srsd_lookup_duration_seconds", "Time from request to decision", labels=["map"]
        )
        observed = s.lookups.latency
        for name, counts in sorted(observed.counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([name], buckets, observed.sums[name])
        yield latency
        yield GaugeMetricFamily(
            "srsd_connections_open", "Map connections open now", value=len(s.gate.table)
        )
        closed = s.gate.counts
        yield CounterMetricFamily(
            "srsd_connections_rejected",
            "Connections closed at once: the limit was reached and nothing could be evicted",
            value=closed["refused full"],
        )
        yield CounterMetricFamily(
            "srsd_connections_evicted",
            "Connections closed to admit a "
            "new one (the longest idle of the user who holds the most)",
            value=closed["evicted"],
        )
        yield CounterMetricFamily(
            "srsd_connections_refused_user",
            "Connections closed at once: their user is not in allowed_users",
            value=closed["refused user"],
        )
        yield CounterMetricFamily(
            "srsd_requests_timed_out",
            "Connections closed because a request did not end within request_timeout",
            value=closed["timed out"],
        )
        reloads = CounterMetricFamily(
            "srsd_reloads", "Configuration reloads (SIGHUP)", labels=["result"]
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], s.reloads[result])
        yield reloads
        yield CounterMetricFamily(
            "srsd_database_errors",
            "Envelope database failures, those the store recovered from included",
            value=s.envelopes.errors,
        )
        yield CounterMetricFamily(
            "srsd_database_writes_refused",
            "Envelope database writes refused by the flood cap",
            value=s.envelopes.refused,
        )
        yield CounterMetricFamily(
            "srsd_log_lines_dropped",
            "Log lines dropped because their destination did not take them",
            value=logs.dropped_lines(),
        )
        milter = s.milter
        messages = CounterMetricFamily(
            "srsd_milter_messages", "Messages the milter decided, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(milter.messages.items()):
            messages.add_metric([outcome], count)
        yield messages
        yield GaugeMetricFamily(
            "srsd_milter_sessions_open",
            "Milter connections open now",
            value=len(s.milter_gate.table),
        )
        admitted = s.milter_gate.counts
        yield CounterMetricFamily(
            "srsd_milter_sessions_rejected",
            "Milter sessions closed at once: the limit was reached and nothing could be evicted",
            value=admitted["refused full"],
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_evicted",
            "Milter sessions closed to admit a new one (the longest idle of the user who "
            "holds the most, between messages first)",
            value=admitted["evicted"],
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_evicted_in_message",
            "Of the evicted milter sessions, those in the middle of a message waiting for "
            "Postfix (it defers that message)",
            value=admitted["evicted in transaction"],
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_refused_user",
            "Milter sessions closed at once: their user is not in allowed_users",
            value=admitted["refused user"],
        )
        timed_out = CounterMetricFamily(
            "srsd_milter_sessions_timed_out",
            "Milter sessions closed because a packet or a message did not end in time",
            labels=["what"],
        )
        timed_out.add_metric(["request"], admitted["timed out"])
        timed_out.add_metric(["message"], admitted["transaction timed out"])
        yield timed_out
        yield GaugeMetricFamily(
            "srsd_milter_memory_bytes",
            "Bytes of senders and recipients the milter sessions keep now",
            value=milter.budget.used,
        )
        yield CounterMetricFamily(
            "srsd_milter_memory_refused",
            "Senders or recipients refused because the milter memory budget was full",
            value=milter.budget.refused,
        )
        yield CounterMetricFamily(
            "srsd_milter_recipients_refused",
            "Recipients the milter answered 452: too many, too many bytes or no room in one "
            "message (ended sessions)",
            value=milter.recipients_refused,
        )
        yield CounterMetricFamily(
            "srsd_milter_recipients_split",
            "Recipients the milter answered 452 to come in a message of their own: "
            "delivered here among forwarded ones or the other way round (ended sessions)",
            value=milter.recipients_split,
        )
        yield CounterMetricFamily(
            "srsd_milter_delivery_unknown",
            "Messages for which srsd could not tell from Postfix whether every recipient is "
            "delivered here (their sender was then rewritten)",
            value=milter.delivery.unknown,
        )
        yield CounterMetricFamily(
            "srsd_internal_errors",
            "Connections closed because serving them raised (that connection only)",
            value=s.loop.faults,
        )


def registry_for(server: Server) -> CollectorRegistry:
    """A registry holding only srsd's metrics for ``server``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


class HeadReader:
    """The head of one HTTP request, sans-IO: its bytes as one event once complete; closed
    then, or when the head grows past :data:`HTTP_HEAD_LIMIT` (answered with nothing)."""

    __slots__ = ("_head", "closed")

    def __init__(self) -> None:
        self._head = b""
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes of a head not complete yet."""
        return len(self._head)

    def feed(self, data: bytes) -> list[bytes]:
        """The head, once ``data`` completes it."""
        if self.closed:
            return []
        self._head += data
        if b"\r\n\r\n" in self._head or b"\n\n" in self._head:
            head, self._head, self.closed = self._head, b"", True
            return [head]
        if len(self._head) > HTTP_HEAD_LIMIT:
            self._head, self.closed = b"", True
        return []

    def feed_eof(self) -> list[bytes]:
        """Nothing: a head cut short is not answered."""
        self._head, self.closed = b"", True
        return []


class MetricsService:
    """The metrics endpoint as a service of the connection loop."""

    idle_limit = HTTP_TIMEOUT
    transaction_limit = 0.0

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def reader(self, owner: Hashable) -> HeadReader:
        """A reader for a new connection."""
        return HeadReader()

    def in_transaction(self, reader: Reader) -> bool:
        """Never: one request per connection."""
        return False

    def discard(self, reader: Reader) -> None:
        """Nothing to free."""

    def answer(self, event: object) -> bytes:
        """The response to one request head: the metrics for ``GET /metrics``."""
        head = event if isinstance(event, bytes) else b""
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
        if path == b"/metrics":
            return _response(
                b"200 OK",
                CONTENT_TYPE_LATEST.encode(),
                generate_latest(self.registry),
                head=method == b"HEAD",
            )
        return _response(b"404 Not Found", b"text/plain", b"srsd: metrics are at /metrics\n")


class Capped:
    """A gate that admits at most ``limit`` connections at once, whoever they are from."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[Connection] = set()

    @property
    def full(self) -> bool:
        """At the limit."""
        return len(self.open) >= self.limit

    def admit(self, conn: Connection, now: float) -> bool:
        """Whether there is room for ``conn``."""
        if len(self.open) >= self.limit:
            return False
        self.open.add(conn)
        return True

    def answered(self, conn: Connection, now: float) -> None:
        """Nothing to note."""

    def transaction(self, conn: Connection, inside: bool, now: float) -> None:
        """Nothing to note (HTTP has no transactions)."""

    def closed(self, conn: Connection) -> None:
        """A connection ended: room for another."""
        self.open.discard(conn)

    def timed_out(self, conn: Connection, what: str, seconds: float) -> None:
        """Nothing to note (the connection is closed)."""


def _response(status: bytes, content_type: bytes, body: bytes, *, head: bool = False) -> bytes:
    """An HTTP/1.1 response; for HEAD the headers of GET without the body."""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + (b"" if head else body)
    )
