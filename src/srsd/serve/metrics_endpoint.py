# The metrics endpoint: the counters as Prometheus families, GET /metrics over a small trio server.
"""Serve srsd's metrics at ``metrics_listen`` in the Prometheus text format.

:class:`ServerCollector` reads every counter from the component that keeps it (the lookups,
the connection loop, admission control, the envelope database, the log writer, the milter
service) when scraped and says, once, under which metric name and help text each is
exported; :func:`serve_http` answers ``GET /metrics``: one request per connection, at most
:data:`HTTP_CONNECTIONS` connections at once, each bounded by :data:`HTTP_TIMEOUT` and
:data:`HTTP_HEAD_LIMIT`: the endpoint must not let anyone spend the descriptors or the time
the lookups need.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
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
from srsd.serve.accept import ACCEPT_RETRY_DELAY, ACCEPT_RETRY_ERRNOS

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
            "srsd_connections_open", "Connections open now", value=len(s.loop.connections)
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
            "srsd_milter_sessions_open", "Milter connections open now", value=milter.sessions
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_rejected",
            "Milter connections closed at once: max sessions were open",
            value=milter.refused_sessions,
        )
        yield CounterMetricFamily(
            "srsd_milter_recipients_refused",
            "Recipients the milter answered 452: too many in one message (ended sessions)",
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


def registry_for(server: Server) -> CollectorRegistry:
    """A registry holding only srsd's metrics for ``server``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


async def serve_http(listener: trio.SocketListener, registry: CollectorRegistry) -> None:
    """Answer ``GET /metrics`` on ``listener`` until cancelled, one request per connection.

    At most :data:`HTTP_CONNECTIONS` at once: the endpoint must not let anyone spend the
    descriptors the lookups need. When descriptors run out anyway, accepting waits and
    retries, as the lookup listeners do: a scrape never takes srsd down.
    """
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            await _handle(stream, registry)
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as err:
                if err.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if active >= HTTP_CONNECTIONS:
                await stream.aclose()
                continue
            active += 1
            nursery.start_soon(handle, stream)


async def _handle(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    async with stream:
        with trio.move_on_after(HTTP_TIMEOUT):
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                chunk = await stream.receive_some(HTTP_HEAD_LIMIT)
                if not chunk or len(head) > HTTP_HEAD_LIMIT:
                    return
                head += chunk
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                await stream.send_all(
                    _response(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
                )
            elif path == b"/metrics":
                await stream.send_all(
                    _response(
                        b"200 OK",
                        CONTENT_TYPE_LATEST.encode(),
                        generate_latest(registry),
                        head=method == b"HEAD",
                    )
                )
            else:
                await stream.send_all(
                    _response(b"404 Not Found", b"text/plain", b"srsd: metrics are at /metrics\n")
                )


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
