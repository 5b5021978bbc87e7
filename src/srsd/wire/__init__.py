# Sans-IO wire formats: Postfix's tcp_table and socketmap, and the Sendmail milter protocol.
"""Bytes in, events out; replies in, bytes out (the style of h11 and wsproto):
:mod:`.tcp_table`, :mod:`.socketmap` and :mod:`.milter`. No sockets, no clock, no trio.
Here: :class:`Wire`, the protocol an endpoint speaks, and :func:`host_port`, how an
endpoint's address is written.
"""

from __future__ import annotations

import enum


def host_port(host: str, port: int | str) -> str:
    """``HOST:PORT`` as Postfix and URLs write an endpoint: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Wire(enum.Enum):
    """The protocol an endpoint speaks."""

    TCP_TABLE = "tcp_table"
    SOCKETMAP = "socketmap"
    MILTER = "milter"  # served by srsd.serve.milter_service
    METRICS = "metrics"  # HTTP, served by srsd.serve.metrics_endpoint
