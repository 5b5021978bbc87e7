# Prometheus metrics' hot-path part: the lookup latency histogram, kept as plain bucket counts.
"""The lookup latency histogram (``srsd_lookup_duration_seconds``) as the server keeps it.

Every counter srsd exports lives in the component that counts it (a ``Counter`` increment
or a plain integer on the hot path); :mod:`srsd.serve.metrics_endpoint` reads them from
those components and turns them into metric families only when scraped, so metrics cost
nothing measurable per lookup. The histogram is the one counter with a structure of its
own: :class:`Latency`, a bucket count per map, observed once per lookup (a milter recipient
that cannot be an SRS address is answered without one, and counted in the first bucket).
"""

from __future__ import annotations

import bisect

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

    def observe_instant(self, name: str, count: int) -> None:
        """Count ``count`` lookups of map ``name`` answered without any work (a fraction of a
        microsecond each): in the first bucket, adding nothing to the sum."""
        self.observe(name, 0.0)
        self.counts[name][0] += count - 1
