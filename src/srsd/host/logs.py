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

The stderr destination is a :class:`LineWriter`: records of :mod:`logging` and the
per-lookup lines (:func:`line`, which skips :mod:`logging` altogether when nothing but
srsd's own handler listens) are rendered into one list, in order, and written in one
``write`` when :func:`flush` is called (the connection loop does after every pass; a
record through :mod:`logging` flushes at once). The writes never wait: a socket (the
journal) is written with ``MSG_DONTWAIT``, a pipe through a non-blocking descriptor of its
own. What the destination does not take waits in a buffer of at most
:data:`LOG_BUFFER_BYTES`; lines beyond are dropped, counted (:func:`dropped_lines`) and
reported in one line once the destination takes lines again. Files and terminals are
written directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import logging.handlers
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import TextIO

LOGGER = logging.getLogger("srsd")
SYSLOG_SOCKET = Path("/dev/log")
#: sd-daemon(3) / syslog(3) priorities of srsd's levels (the journal's and syslog's alike).
JOURNAL_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
#: Bytes of stderr lines held while the destination takes none; past it lines are dropped.
LOG_BUFFER_BYTES = 1 << 20
#: Lines rendered before they are written even if no flush came (bounds one write).
FLUSH_LINES = 1024


class LineFormat:
    """How srsd's lines look at one destination: :meth:`render` gives one record's text."""

    def render(
        self, level: int, message: str, created: float, pid: int, exception: str | None = None
    ) -> str:
        """The text for a record of ``level`` (a logging level) logged at ``created``
        (seconds since the epoch) by ``pid``; ``exception`` is a formatted traceback."""
        raise NotImplementedError


class PlainFormat(LineFormat):
    """``2026-12-03 07:14:57,019 srsd[72]: INFO: message`` (local time)."""

    def __init__(self) -> None:
        self._second, self._stamp = -1, ""  # the last second rendered, and its text
        # The last millisecond, level and pid rendered, and their text up to the message:
        # the lines of one pass of the connection loop mostly share it.
        self._head_key, self._head = (-1, 0, 0), ""

    def render(
        self, level: int, message: str, created: float, pid: int, exception: str | None = None
    ) -> str:
        """Time with milliseconds, pid, level name, message, then any traceback."""
        key = (int(created * 1000), level, pid)
        if key != self._head_key:
            second = int(created)
            if second != self._second:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
                self._second, self._stamp = second, stamp
            millis = int((created - second) * 1000)
            name = logging.getLevelName(level)
            self._head_key, self._head = key, f"{self._stamp},{millis:03d} srsd[{pid}]: {name}: "
        line = self._head + message
        return f"{line}\n{exception}" if exception else line


class JsonFormat(LineFormat):
    """One JSON object per line: time (UTC, ISO 8601), level, pid, message (and exception)."""

    def __init__(self) -> None:
        self._second, self._stamp = -1, ""  # the last second rendered, and its text
        self._middles: dict[tuple[int, int], str] = {}  # by (level, pid): the text between

    def render(
        self, level: int, message: str, created: float, pid: int, exception: str | None = None
    ) -> str:
        """The record as a single line of JSON."""
        if not exception and created >= 0:  # built directly: the same text as json.dumps
            middle = self._middles.get((level, pid))
            if middle is None:
                name = encode_basestring(logging.getLevelName(level).lower())
                middle = f'+00:00", "level": {name}, "pid": {pid}, "message": '
                self._middles[(level, pid)] = middle
            return f'{{"time": "{self._time(created)}{middle}{encode_basestring(message)}}}'
        entry = {
            "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level).lower(),
            "pid": pid,
            "message": message,
        }
        if exception:
            entry["exception"] = exception
        return json.dumps(entry, ensure_ascii=False)

    def _time(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``
        without its ``+00:00``, the seconds' text made once per second (rounded to
        microseconds as datetime does: half to even, carrying into the next second)."""
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            micros -= 1_000_000
            second += 1
        if second != self._second:
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second, self._stamp = second, stamp
        return f"{self._stamp}.{micros // 1000:03d}"


class JournalFormat(LineFormat):
    """``<4>WARNING: message``: stderr read by journald, which keeps the time and pid and
    takes the priority from the prefix (every line of a traceback gets it too)."""

    def __init__(self, inner: LineFormat | None = None) -> None:
        self._inner = inner  # a format kept as it is behind the prefix (JSON)

    def render(
        self, level: int, message: str, created: float, pid: int, exception: str | None = None
    ) -> str:
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

    def render(
        self, level: int, message: str, created: float, pid: int, exception: str | None = None
    ) -> str:
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
        return self.line_format.render(
            record.levelno, record.getMessage(), record.created, record.process or 0, exception
        )


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
    except (OSError, ValueError, AttributeError):  # closed, not a file, or None (no fd 2)
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def stderr_format(
    json_lines: bool = False, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> LineFormat:
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
    global _writer
    if _writer is not None:
        _writer.close()
    _writer = LineWriter(sys.stderr, stderr_format(json_lines, sys.stderr))
    LOGGER.addHandler(_writer.handler)
    if syslog:
        if not SYSLOG_SOCKET.exists():  # no syslog daemon (a container): stderr still works
            LOGGER.warning(
                "syslog requested but %s does not exist: logging to stderr only", SYSLOG_SOCKET
            )
            return
        # SysLogHandler sends <facility * 8 + priority>, the priority from the level name
        # (mapPriority: ERROR -> error (3), WARNING -> warning (4), INFO -> info (6), ...).
        handler = logging.handlers.SysLogHandler(
            address=str(SYSLOG_SOCKET), facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(RecordFormatter(SyslogFormat()))
        LOGGER.addHandler(handler)


class LineWriter:
    """srsd's lines on stderr: rendered in order into one list, written in batches, never
    waiting for the destination (see the module's docstring)."""

    def __init__(self, stream: TextIO | None, line_format: LineFormat) -> None:
        self.format = line_format
        self.pid = os.getpid()
        self.dropped = 0  # lines dropped because the destination took none
        self._reported = 0  # of those, how many a line reported already
        self._lines: list[str] = []
        self._held = 0  # characters in _lines, roughly the bytes they will take
        self._unsent = b""  # bytes a write left
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._errors = getattr(stream, "errors", None) or "backslashreplace"
        self._closing: Callable[[], None] | None = None
        self._write = self._writer(stream)
        self.handler = _WriterHandler(self)

    def _writer(self, stream: TextIO | None) -> Callable[[bytes], int]:
        """A function writing bytes to ``stream``'s destination without waiting: it returns
        how many it wrote, or raises BlockingIOError."""
        if stream is None:  # started with descriptor 2 closed: it may be a socket by now
            return len
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, io.UnsupportedOperation):  # not a file (tests' capture)

            def write_text(data: bytes) -> int:
                stream.write(data.decode(self._encoding, self._errors))
                stream.flush()
                return len(data)

            return write_text
        if stat.S_ISSOCK(mode):  # the journal's stream socket
            sock = socket.socket(fileno=os.dup(fd))
            self._closing = sock.close
            return lambda data: sock.send(data, socket.MSG_DONTWAIT)
        if stat.S_ISFIFO(mode):  # a pipe: a descriptor of our own, non-blocking
            try:
                own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                pass  # no /proc, or no right to reopen it: write as the stream does
            else:
                self._closing = lambda: os.close(own)
                return lambda data: os.write(own, data)
        return lambda data: os.write(fd, data)  # a file or a terminal

    def line(self, level: int, message: str) -> None:
        """Render one line now (time, pid, level) to be written at the next :meth:`flush`."""
        text = self.format.render(level, message, time.time(), self.pid)
        if self._held + len(self._unsent) > LOG_BUFFER_BYTES:
            self.dropped += 1
            return
        self._lines.append(text)
        self._held += len(text) + 1
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def text(self, text: str) -> None:
        """Queue an already rendered line (a :mod:`logging` record) and write it now."""
        if self._held + len(self._unsent) > LOG_BUFFER_BYTES:
            self.dropped += 1
            return
        self._lines.append(text)
        self._held += len(text) + 1
        self.flush()

    def flush(self) -> None:
        """Write what is rendered, as far as the destination takes it without waiting."""
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            self._held = 0
            self._unsent += text.encode(self._encoding, self._errors)
        while self._unsent:
            try:
                written = self._write(self._unsent)
            except BlockingIOError:
                return  # kept: the next flush tries again
            except OSError:  # the destination is gone (a closed pipe): nothing to do
                self.dropped += self._unsent.count(b"\n")
                self._unsent = b""
                return
            self._unsent = self._unsent[written:]
        if self.dropped > self._reported:
            count, self._reported = self.dropped - self._reported, self.dropped
            self._lines.append(
                self.format.render(
                    logging.WARNING,
                    f"{count} log line(s) dropped: the log destination did not take them",
                    time.time(),
                    self.pid,
                )
            )
            self.flush()

    def close(self) -> None:
        """Write what is left (as far as it goes), then close a descriptor of our own."""
        self.flush()
        if self._closing is not None:
            self._closing()
            self._closing = None


class _WriterHandler(logging.Handler):
    """The :mod:`logging` handler of a :class:`LineWriter`: a record is written at once."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer
        self.setFormatter(RecordFormatter(writer.format))

    def emit(self, record: logging.LogRecord) -> None:
        """Render the record and write it, after the lines before it."""
        try:
            self.writer.text(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write what the writer holds."""
        self.writer.flush()


_writer: LineWriter | None = None


def line(level: int, message: str) -> None:
    """Log ``message`` at ``level`` (enabled: the caller checked ``LOGGER.isEnabledFor``).

    When srsd's own stderr handler is LOGGER's only handler, the line is rendered straight
    into it, without a :class:`logging.LogRecord`; it is written at the next :func:`flush`.
    Otherwise (syslog too, or handlers added by tests) it goes through :mod:`logging`.
    """
    writer = _writer
    if writer is not None:
        handlers = LOGGER.handlers
        if len(handlers) == 1 and handlers[0] is writer.handler:
            writer.line(level, message)
            return
    LOGGER.log(level, "%s", message)


def flush() -> None:
    """Write the lines :func:`line` rendered (whoever logs lookups calls this after a batch;
    the connection loop does after every pass)."""
    if _writer is not None:
        _writer.flush()


def dropped_lines() -> int:
    """Log lines dropped so far because stderr took none (a metric)."""
    return 0 if _writer is None else _writer.dropped


def show(value: bytes, limit: int = 512) -> str:
    """Render address bytes for a log line: printable, one line, at most ``limit`` chars."""
    text = value.decode("utf-8", "backslashreplace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class RateLimited:
    """At most one log line per kind and ``interval`` seconds, saying how many were left
    out since the last one: a flood of refusals or errors costs a few lines, not one each."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` at ``level`` unless a line of ``kind`` was logged less
        than ``interval`` seconds ago (then only count it). Never raises (out of memory,
        the line is lost)."""
        now = time.monotonic()
        if now - self._logged.get(kind, -self.interval) < self.interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged[kind] = now
        more = self._unlogged.pop(kind, 0)
        suffix = f" ({more} more since the last such line)" if more else ""
        with contextlib.suppress(Exception):
            LOGGER.log(level, message + suffix, *args)
