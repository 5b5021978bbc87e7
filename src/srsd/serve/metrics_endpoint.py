# The metrics endpoint: GET /metrics as a service of the connection loop, a few at once.
"""Serve :mod:`srsd.host.metrics`' registry at ``metrics_listen`` in the Prometheus text format.

The endpoint is served by the connection loop (:mod:`srsd.serve.loop`), srsd's one accept
path, like the map and milter endpoints, behind a gate of its own (:class:`Capped`): at
most :data:`HTTP_CONNECTIONS` connections at once, more are closed at once; a scraper is
not Postfix, so ``allowed_users`` and the per-user shares do not apply. One request per
connection, its head at most :data:`HTTP_HEAD_LIMIT` bytes, sent within
:data:`HTTP_TIMEOUT` seconds: the endpoint must not let anyone spend the descriptors or the
time the lookups need.
"""

from __future__ import annotations

from collections.abc import Hashable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from srsd.serve.loop import Connection, Reader

#: Bounds on one HTTP request to the metrics endpoint.
HTTP_HEAD_LIMIT = 8192
HTTP_TIMEOUT = 5.0
#: Metrics connections served at once; more are closed at once (a scraper needs one).
HTTP_CONNECTIONS = 8


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
