# Sans-IO wire formats: Postfix's tcp_table and socketmap, and the Sendmail milter protocol.
"""Bytes in, events out; replies in, bytes out (the style of h11 and wsproto):
:mod:`.tcp_table`, :mod:`.socketmap` and :mod:`.milter`. No sockets, no clock, no trio.
"""

from __future__ import annotations

import enum


class Wire(enum.Enum):
    """The protocol an endpoint speaks."""

    TCP_TABLE = "tcp_table"
    SOCKETMAP = "socketmap"
    MILTER = "milter"  # served by srsd.serve.milter_service
    METRICS = "metrics"  # HTTP, served by srsd.serve.metrics_endpoint
