# Logging set-up: one line format per destination (plain, JSON, journal, syslog); safe bytes.
"""srsd logs one line per decision. Addresses are attacker-controlled bytes, so they are
rendered with :func:`show`, which escapes every control and non-UTF-8 byte: no address can
forge a log line. Secrets are never logged.

What a line looks like depends only on where it goes, and each destination has one
:class:`LineFormat` (``render(level, message, created, pid)`` gives the text, no newline):

* ``plain`` (stderr): ``2026-12-03 07:14:57,019 srsd[72]: INFO: message``;
* ``json`` (stderr): one JSON object per line, time (UTC, ISO 8601), level, pid, message;
* the journal (stderr is the journal: ``JOURNAL_STREAM`` names stderr's device and inode):
  ``<6>INFO: message``, the sd-daemon(3) priority prefix and no time or pid, which the
  journal records itself (a JSON line gets the prefix too);
* syslog (``/dev/log``, the mail facility, the level's priority): ``srsd[72]: message``.

:func:`stderr_format` picks the stderr one; a writer that bypasses :mod:`logging` must use
the same object to write the same text.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

LOGGER = logging.getLogger("srsd")
SYSLOG_SOCKET = Path("/dev/log")
#: sd-daemon(3) / syslog(3) priorities of srsd's levels (the journal's and syslog's alike).
JOURNAL_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                      logging.INFO: 6, logging.DEBUG: 7}  # fmt: skip


class LineFormat:
    """How srsd's lines look at one destination: :meth:`render` gives one record's text."""

    def render(self, level: int, message: str, created: float, pid: int,
               exception: str | None = None) -> str:  # fmt: skip
        """The text for a record of ``level`` (a logging level) logged at ``created``
        (seconds since the epoch) by ``pid``; ``exception`` is a formatted traceback."""
        raise NotImplementedError


class PlainFormat(LineFormat):
    """``2026-12-03 07:14:57,019 srsd[72]: INFO: message`` (local time)."""

    def render(self, level: int, message: str, created: float, pid: int,
               exception: str | None = None) -> str:  # fmt: skip
        """Time with milliseconds, pid, level name, message, then any traceback."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        millis = int((created - int(created)) * 1000)
        line = f"{stamp},{millis:03d} srsd[{pid}]: {logging.getLevelName(level)}: {message}"
        return f"{line}\n{exception}" if exception else line


class JsonFormat(LineFormat):
    """One JSON object per line: time (UTC, ISO 8601), level, pid, message (and exception)."""

    def render(self, level: int, message: str, created: float, pid: int,
               exception: str | None = None) -> str:  # fmt: skip
        """The record as a single line of JSON."""
        entry = {
            "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level).lower(),
            "pid": pid,
            "message": message,
        }
        if exception:
            entry["exception"] = exception
        return json.dumps(entry, ensure_ascii=False)


class JournalFormat(LineFormat):
    """``<4>WARNING: message``: stderr read by journald, which keeps the time and pid and
    takes the priority from the prefix (every line of a traceback gets it too)."""

    def __init__(self, inner: LineFormat | None = None) -> None:
        self._inner = inner  # a format kept as it is behind the prefix (JSON)

    def render(self, level: int, message: str, created: float, pid: int,
               exception: str | None = None) -> str:  # fmt: skip
        """The priority prefix on every line of the text."""
        prefix = f"<{priority(level)}>"
        if self._inner is not None:
            return prefix + self._inner.render(level, message, created, pid, exception)
        text = f"{logging.getLevelName(level)}: {message}"
        if exception:
            text = f"{text}\n{exception}"
        return prefix + text.replace("\n", "\n" + prefix)


class SyslogFormat(LineFormat):
    """``srsd[72]: message``: the priority (facility mail) is added by the syslog handler."""

    def render(self, level: int, message: str, created: float, pid: int,
               exception: str | None = None) -> str:  # fmt: skip
        """Tag, pid and message (then any traceback)."""
        line = f"srsd[{pid}]: {message}"
        return f"{line}\n{exception}" if exception else line


class RecordFormatter(logging.Formatter):
    """A :mod:`logging` formatter writing a :class:`LineFormat`."""

    def __init__(self, line_format: LineFormat) -> None:
        super().__init__()
        self.line_format = line_format

    def format(self, record: logging.LogRecord) -> str:
        """The record's text in this destination's format."""
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        return self.line_format.render(record.levelno, record.getMessage(), record.created,
                                       record.process or 0, exception)  # fmt: skip


def priority(level: int) -> int:
    """The syslog priority of a logging level (a level between two takes the lower one's)."""
    for threshold, value in JOURNAL_PRIORITIES.items():  # highest level first
        if level >= threshold:
            return value
    return JOURNAL_PRIORITIES[logging.DEBUG]


def is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM`` to
    ``DEVICE:INODE`` of the stream it connected, which must be this one (a child whose
    stderr was redirected elsewhere inherits the variable)."""
    environ = os.environ if environ is None else environ
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # closed, or not a real file (io.UnsupportedOperation)
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def stderr_format(json_lines: bool = False, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None) -> LineFormat:  # fmt: skip
    """The format of srsd's lines on ``stream`` (stderr): journal, else JSON or plain."""
    chosen: LineFormat = JsonFormat() if json_lines else PlainFormat()
    if is_journal(sys.stderr if stream is None else stream, environ):
        return JournalFormat(chosen if json_lines else None)
    return chosen


def setup(level: str = "info", *, syslog: bool = False, json_lines: bool = False) -> None:
    """Send srsd's log to stderr (and syslog's mail facility when ``syslog``), in the format
    :func:`stderr_format` picks."""
    # A log line per lookup is on the hot path: skip what no srsd format uses (the caller's
    # file and line, thread and process names); the pid stays.
    logging._srcfile = None  # the switch the logging docs name for this
    logging.logThreads = False
    logging.logMultiprocessing = False
    LOGGER.handlers.clear()
    LOGGER.propagate = False
    LOGGER.setLevel(level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(RecordFormatter(stderr_format(json_lines, sys.stderr)))
    LOGGER.addHandler(stderr)
    if syslog:
        if not SYSLOG_SOCKET.exists():  # no syslog daemon (a container): stderr still works
            LOGGER.warning("syslog requested but %s does not exist: logging to stderr only",
                           SYSLOG_SOCKET)  # fmt: skip
            return
        # SysLogHandler sends <facility * 8 + priority>, the priority from the level name
        # (mapPriority: ERROR -> error (3), WARNING -> warning (4), INFO -> info (6), ...).
        handler = logging.handlers.SysLogHandler(
            address=str(SYSLOG_SOCKET), facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(RecordFormatter(SyslogFormat()))
        LOGGER.addHandler(handler)


def show(value: bytes, limit: int = 512) -> str:
    """Render address bytes for a log line: printable, one line, at most ``limit`` chars."""
    text = value.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
