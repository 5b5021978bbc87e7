# The metrics endpoint: GET /metrics over a small trio HTTP server, a few connections at once.
"""Serve :mod:`srsd.host.metrics`' registry at ``metrics_listen`` in the Prometheus text format.

One request per connection, at most :data:`HTTP_CONNECTIONS` connections at once, each
bounded by :data:`HTTP_TIMEOUT` and :data:`HTTP_HEAD_LIMIT`: the endpoint must not let anyone
spend the descriptors or the time the lookups need.
"""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from srsd.serve.loop import ACCEPT_RETRY_DELAY, ACCEPT_RETRY_ERRNOS

#: Bounds on one HTTP request to the metrics endpoint.
HTTP_HEAD_LIMIT = 8192
HTTP_TIMEOUT = 5.0
#: Metrics connections served at once; more are closed at once (a scraper needs one).
HTTP_CONNECTIONS = 8


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
