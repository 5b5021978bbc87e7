# An SMTP sink on loopback (aiosmtpd) that records every delivery for the real-Postfix tests.
"""A tiny SMTP server that accepts everything (but :data:`REFUSED_DOMAIN`) and remembers it.

Postfix relays ``dest.test`` and ``origin.test`` here. The sink advertises SMTPUTF8 (Postfix
bounces a UTF-8 message to a server that does not) and greets with its own host name
(``sink.test``): a server that greets with Postfix's ``myhostname`` makes Postfix report
"mail loops back to myself". :meth:`SmtpSink.wait_for` polls the recorded deliveries with a
bounded wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

from tests.harness.child import Started
from tests.harness.ports import free_port

SINK_HOSTNAME = "sink.test"


@dataclass(frozen=True)
class Delivery:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    smtp_utf8: bool
    mail_options: tuple[str, ...]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


#: Recipients at this domain are refused at RCPT (550), the next hop that says "no such user".
REFUSED_DOMAIN = "refuse.test"


class _Recorder:
    """aiosmtpd handler: accept every message (recipients at :data:`REFUSED_DOMAIN` excepted)
    and append it to the sink's list."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower().endswith("@" + REFUSED_DOMAIN):
            return f"550 5.1.1 <{address}>: no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", errors="surrogateescape")
        # aiosmtpd reports MAIL FROM:<> (a bounce) as "<>"; record the null sender as "".
        mail_from = "" if envelope.mail_from in ("<>", None) else envelope.mail_from
        self._sink._record(
            Delivery(
                mail_from=mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                smtp_utf8=bool(envelope.smtp_utf8),
                mail_options=tuple(envelope.mail_options),
            )
        )
        return "250 2.0.0 OK: recorded by the test sink"


class SmtpSink(Started):
    """An aiosmtpd server on 127.0.0.1:``port`` (context manager) recording deliveries."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._lock = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._controller = Controller(
            _Recorder(self),
            hostname=host,
            port=self.port,
            server_hostname=SINK_HOSTNAME,
            enable_SMTPUTF8=True,
            decode_data=False,
            ready_timeout=10.0,
        )
        self._started = False

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)
            self._lock.notify_all()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def wait_for(self, predicate: Callable[[Delivery], bool], timeout: float) -> Delivery | None:
        """The first delivery matching ``predicate``, waiting at most ``timeout`` s; else None."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for d in self._deliveries:
                    if predicate(d):
                        return d
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def start(self) -> SmtpSink:
        self._controller.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._controller.stop()
