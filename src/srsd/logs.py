# Logging set-up: plain lines to stderr, optionally syslog (mail facility); safe rendering of bytes.
"""srsd logs one line per decision. Addresses are attacker-controlled bytes, so they are
rendered with :func:`show`, which escapes every control and non-UTF-8 byte: no address can
forge a log line. Secrets are never logged."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path

LOGGER = logging.getLogger("srsd")
SYSLOG_SOCKET = Path("/dev/log")
_FORMAT = "%(asctime)s srsd[%(process)d]: %(levelname)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, pid, message."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", *, syslog: bool = False, json_lines: bool = False) -> None:
    """Send srsd's log to stderr (and syslog's mail facility when ``syslog``); plain
    syslog-style lines, or one JSON object per line with ``json_lines``."""
    # A log line per lookup is on the hot path: skip what no srsd format uses (the caller's
    # file and line, thread and process names); the pid stays.
    logging._srcfile = None  # the switch the logging docs name for this
    logging.logThreads = False
    logging.logMultiprocessing = False
    LOGGER.handlers.clear()
    LOGGER.propagate = False
    LOGGER.setLevel(level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_FORMAT))
    LOGGER.addHandler(stderr)
    if syslog:
        if not SYSLOG_SOCKET.exists():  # no syslog daemon (a container): stderr still works
            LOGGER.warning("syslog requested but %s does not exist: logging to stderr only",
                           SYSLOG_SOCKET)  # fmt: skip
            return
        handler = logging.handlers.SysLogHandler(
            address=str(SYSLOG_SOCKET), facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("srsd[%(process)d]: %(message)s"))
        LOGGER.addHandler(handler)


def show(value: bytes, limit: int = 512) -> str:
    """Render address bytes for a log line: printable, one line, at most ``limit`` chars."""
    text = value.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
