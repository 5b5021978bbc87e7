# Prometheus metrics: cheap counters kept by the server, turned into metric families when scraped.
"""Metrics in the Prometheus text format (``metrics_listen = "127.0.0.1:9187"``).

The server counts into plain Python structures on the hot path (a ``Counter`` increment and
a histogram bucket per lookup); :class:`ServerCollector` turns them into metric families
only when scraped, so metrics cost nothing measurable per lookup; :mod:`srsd.serve.metrics_endpoint`
serves them over HTTP. Exposed:

* ``srsd_lookups_total{map, protocol, outcome}``: every answer given, by outcome
  (rewritten, local, excluded, null sender, not SRS, bad hash, expired, malformed, error,
  bad request, ...);
* ``srsd_lookup_duration_seconds{map}``: time from request to decision, a histogram;
* ``srsd_connections_open``; connections closed by admission control
  (:mod:`srsd.admission.gatekeeper`): ``srsd_connections_evicted_total`` (closed to make room for a
  new one), ``srsd_connections_refused_user_total`` (their user is not in
  ``allowed_users``), ``srsd_connections_rejected_total`` (full, and nothing could be
  evicted); ``srsd_requests_timed_out_total`` (a request that did not end within
  ``request_timeout``);
* ``srsd_reloads_total{result}`` (ok / failed);
* ``srsd_database_errors_total``, ``srsd_database_writes_refused_total`` (flood cap);
* ``srsd_log_lines_dropped_total``: log lines stderr did not take (it blocked);
* ``srsd_milter_messages_total{outcome}`` (rewritten, delivered here, not rewritten,
  tempfail, protocol error) and ``srsd_milter_sessions_open``; the milter's own lookups are
  in ``srsd_lookups_total{protocol="milter"}``;
* milter sessions closed by its admission control: ``srsd_milter_sessions_evicted_total``,
  ``srsd_milter_sessions_refused_user_total``, ``srsd_milter_sessions_rejected_total``;
  closed by time-outs: ``srsd_milter_sessions_timed_out_total{what}`` (request: a packet
  did not end within ``request_timeout``; message: ``milter_message_timeout``);
* the milter's memory bounds: ``srsd_milter_memory_bytes`` (kept now),
  ``srsd_milter_recipients_refused_total`` (answered 452: too many, too many bytes, or no
  room; counted when the session ends), ``srsd_milter_memory_refused_total`` (takes the
  memory budget refused);
* ``srsd_internal_errors_total``: connections closed because serving them raised (a bug,
  ``MemoryError``): that connection only, srsd goes on.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Upper bounds of the latency buckets, in seconds.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)


class Latency:
    """A histogram kept as bucket counts per map, observed on the hot path."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, name: str, seconds: float) -> None:
        """Count one lookup of map ``name`` that took ``seconds``."""
        counts = self.counts.get(name)
        if counts is None:
            counts = self.counts[name] = [0] * (len(BUCKETS) + 1)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[name] = self.sums.get(name, 0.0) + seconds


class ServerState(Protocol):
    """What the collector reads from the running server."""

    @property
    def lookups(self) -> Counter[tuple[str, str, str]]:
        """Answers given, by (protocol, map, outcome)."""
        ...

    @property
    def latency(self) -> Latency:
        """Time from request to decision, per map."""
        ...

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        ...

    @property
    def admission(self) -> Counter[str]:
        """Connections closed by admission control, by kind: ``evicted``, ``refused
        user``, ``refused full``, ``timed out``."""
        ...

    reloads: Counter[str]

    @property
    def database_errors(self) -> int:
        """Envelope database failures so far."""
        ...

    @property
    def log_lines_dropped(self) -> int:
        """Log lines dropped because their destination took none."""
        ...

    @property
    def database_writes_refused(self) -> int:
        """Envelope database writes refused by the flood cap so far."""
        ...

    @property
    def milter_messages(self) -> Counter[str]:
        """Messages the milter decided, by outcome."""
        ...

    @property
    def milter_sessions(self) -> int:
        """Milter connections open now."""
        ...

    @property
    def milter_admission(self) -> Counter[str]:
        """Milter sessions closed by admission control and time-outs, by kind: the kinds
        of :attr:`admission` and ``transaction timed out``."""
        ...

    @property
    def milter_refused(self) -> Counter[str]:
        """``recipients`` answered 452, ``memory`` takes refused by the budget."""
        ...

    @property
    def milter_memory(self) -> int:
        """Bytes the milter sessions keep now."""
        ...

    @property
    def internal_errors(self) -> int:
        """Connections closed because serving them raised."""
        ...


class ServerCollector(Collector):
    """Builds srsd's metric families from the server's counters at scrape time."""

    def __init__(self, server: ServerState) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """The current value of every srsd metric."""
        s = self.server
        lookups = CounterMetricFamily(
            "srsd_lookups", "Lookups answered, by outcome", labels=["map", "protocol", "outcome"]
        )
        for (protocol, name, outcome), count in sorted(s.lookups.items()):
            lookups.add_metric([name, protocol, outcome], count)
        yield lookups
        latency = HistogramMetricFamily(
            "srsd_lookup_duration_seconds", "Time from request to decision", labels=["map"]
        )
        for name, counts in sorted(s.latency.counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([name], buckets, s.latency.sums[name])
        yield latency
        yield GaugeMetricFamily(
            "srsd_connections_open", "Connections open now", value=s.open_connections
        )
        closed = s.admission
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
            "srsd_database_errors", "Envelope database failures", value=s.database_errors
        )
        yield CounterMetricFamily(
            "srsd_database_writes_refused",
            "Envelope database writes refused by the flood cap",
            value=s.database_writes_refused,
        )
        yield CounterMetricFamily(
            "srsd_log_lines_dropped",
            "Log lines dropped because their destination did not take them",
            value=s.log_lines_dropped,
        )
        messages = CounterMetricFamily(
            "srsd_milter_messages", "Messages the milter decided, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(s.milter_messages.items()):
            messages.add_metric([outcome], count)
        yield messages
        yield GaugeMetricFamily(
            "srsd_milter_sessions_open", "Milter connections open now", value=s.milter_sessions
        )
        milter = s.milter_admission
        yield CounterMetricFamily(
            "srsd_milter_sessions_rejected",
            "Milter sessions closed at once: the limit was reached and nothing could be evicted",
            value=milter["refused full"],
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_evicted",
            "Milter sessions closed to admit a new one (the longest idle between messages "
            "of the user who holds the most)",
            value=milter["evicted"],
        )
        yield CounterMetricFamily(
            "srsd_milter_sessions_refused_user",
            "Milter sessions closed at once: their user is not in allowed_users",
            value=milter["refused user"],
        )
        timed_out = CounterMetricFamily(
            "srsd_milter_sessions_timed_out",
            "Milter sessions closed because a packet or a message did not end in time",
            labels=["what"],
        )
        timed_out.add_metric(["request"], milter["timed out"])
        timed_out.add_metric(["message"], milter["transaction timed out"])
        yield timed_out
        yield GaugeMetricFamily(
            "srsd_milter_memory_bytes",
            "Bytes of senders and recipients the milter sessions keep now",
            value=s.milter_memory,
        )
        refused = s.milter_refused
        yield CounterMetricFamily(
            "srsd_milter_recipients_refused",
            "Recipients answered 452 (too many, too many bytes, no room), by ended sessions",
            value=refused["recipients"],
        )
        yield CounterMetricFamily(
            "srsd_milter_memory_refused",
            "Senders or recipients refused because the milter memory budget was full",
            value=refused["memory"],
        )
        yield CounterMetricFamily(
            "srsd_internal_errors",
            "Connections closed because serving them raised (that connection only)",
            value=s.internal_errors,
        )


def registry_for(server: ServerState) -> CollectorRegistry:
    """A registry holding only srsd's metrics for ``server``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry
