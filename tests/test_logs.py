# Logging: journal lines when stderr is the journal, syslog's mail facility, safe address bytes.
"""srsd's log set-up, checked with a real syslog datagram socket and real srsd processes whose
stderr is (or is not) the stream ``JOURNAL_STREAM`` names."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from srsd.host import logs
from tests.harness.daemon import TIMEOUT, write_secret
from tests.harness.ports import free_port
from tests.harness.srsd_process import child_env

MAIL_INFO = (2 << 3) | 6  # facility mail (2), severity info (6): "<22>"
MAIL_WARNING = (2 << 3) | 4


@pytest.fixture
def syslog_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", path)
    yield sock
    sock.close()
    logs.LOGGER.handlers.clear()


def test_syslog_gets_mail_facility_lines(syslog_socket: socket.socket) -> None:
    logs.setup("info", syslog=True)
    logs.LOGGER.info("forward <%s> rewritten as <%s>", "a@b.example", "SRS0=x@f.example")
    logs.LOGGER.warning("something odd")
    first = syslog_socket.recv(4096)
    second = syslog_socket.recv(4096)
    assert first.startswith(b"<%d>srsd[" % MAIL_INFO)
    assert b"forward <a@b.example> rewritten as <SRS0=x@f.example>" in first
    assert second.startswith(b"<%d>srsd[" % MAIL_WARNING)


def test_debug_lines_are_dropped_at_info_level(syslog_socket: socket.socket) -> None:
    logs.setup("info", syslog=True)
    logs.LOGGER.debug("quiet")
    logs.LOGGER.info("loud")
    assert b"loud" in syslog_socket.recv(4096)
    assert not logs.LOGGER.isEnabledFor(logging.DEBUG)


def test_missing_syslog_socket_falls_back_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", tmp_path / "absent")
    logs.setup("info", syslog=True)
    logs.LOGGER.info("still here")
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "still here" in err
    logs.LOGGER.handlers.clear()


def test_syslog_priorities_follow_the_level(syslog_socket: socket.socket) -> None:
    logs.setup("debug", syslog=True)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        logs.LOGGER.log(level, "level %d", level)
        datagram = syslog_socket.recv(4096)
        expected = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
        assert datagram.startswith(
            b"<%d>srsd[%d]: level %d" % ((2 << 3) | expected[level], os.getpid(), level)
        ), datagram


# -- stderr: the journal, or plain lines --------------------------------------------------------

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} srsd\[(\d+)\]: ([A-Z]+): (.*)$")
IGNORED_WARNING = "environment SRS_PID_FILE is not used by srsd; ignored"


def srsd_failing_to_start(tmp_path: Path, journal_stream: str | None) -> tuple[str, int]:
    """``srsd serve`` with a warning (a postsrsd variable srsd ignores) and an error (its port
    is taken), its stderr a file; ``journal_stream`` None means "that file's DEV:INODE"."""
    stderr = tmp_path / "stderr"
    secret = write_secret(tmp_path / "secrets", b"journal-test-secret")
    with socket.socket() as taken, stderr.open("w") as out:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        if journal_stream is None:
            status = os.fstat(out.fileno())
            journal_stream = f"{status.st_dev}:{status.st_ino}"
        env = child_env(tmp_path, SRS_PID_FILE="/run/x.pid", JOURNAL_STREAM=journal_stream)
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "srsd",
                "serve",
                "--config",
                "/dev/null",
                "--domain",
                "forwarder.test",
                "--secret-file",
                str(secret),
                "--listen",
                "127.0.0.1",
                "--forward-port",
                str(port),
                "--reverse-port",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            timeout=TIMEOUT,
            cwd=tmp_path,
        )
    assert child.returncode == 1
    return stderr.read_text(), port


def test_journal_lines_when_stderr_is_the_journal(tmp_path: Path) -> None:
    text, port = srsd_failing_to_start(tmp_path, None)
    lines = text.splitlines()
    assert lines[0] == f"<4>WARNING: {IGNORED_WARNING}", text
    assert lines[1].startswith("<3>ERROR: cannot start: "), text
    assert f"127.0.0.1:{port} " in lines[1]
    assert len(lines) == 2, text


def test_plain_lines_when_journal_stream_names_another_file(tmp_path: Path) -> None:
    other = os.stat(__file__)  # what a child with redirected stderr inherits: not its stderr
    for stream in (f"{other.st_dev}:{other.st_ino}", "garbage", ""):
        text, _ = srsd_failing_to_start(tmp_path, stream)
        matches = [m for line in text.splitlines() if (m := PLAIN_LINE.match(line))]
        assert len(matches) == 2 == len(text.splitlines()), text
        assert matches[0][1] == matches[1][1]  # one pid
        assert (matches[0][2], matches[0][3]) == ("WARNING", IGNORED_WARNING)
        assert matches[1][2] == "ERROR"


def test_journal_prefixes_every_level_and_traceback_line(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        journal = logs.stderr_format(False, stream, environ)
        json_journal = logs.stderr_format(True, stream, environ)
        assert isinstance(logs.stderr_format(False, stream, {}), logs.PlainFormat)
    assert [journal.render(level, "m", 0.0, 1) for level in (10, 20, 30, 40, 50, 25)] == [
        "<7>DEBUG: m",
        "<6>INFO: m",
        "<4>WARNING: m",
        "<3>ERROR: m",
        "<2>CRITICAL: m",
        "<6>Level 25: m",
    ]
    assert journal.render(logging.ERROR, "failed", 0.0, 1, "Traceback\n  line\nError") == (
        "<3>ERROR: failed\n<3>Traceback\n<3>  line\n<3>Error"
    )
    assert json_journal.render(logging.WARNING, "w", 0.0, 7) == (
        '<4>{"time": "1970-01-01T00:00:00.000+00:00", "level": "warning", "pid": 7, "message": "w"}'
    )


OLD_PLAIN = "%(asctime)s srsd[%(process)d]: %(levelname)s: %(message)s"


@given(st.sampled_from([10, 20, 30, 40]), st.text(), st.floats(0, 4e9), st.integers(1, 2**22))
def test_plain_format_is_the_logging_format_it_replaced(
    level: int, message: str, created: float, pid: int
) -> None:
    record = logging.LogRecord("srsd", level, __file__, 1, "%s", (message,), None)
    record.created, record.msecs, record.process = created, (created - int(created)) * 1000, pid
    expected = logging.Formatter(OLD_PLAIN).format(record)
    assert logs.PlainFormat().render(level, message, created, pid) == expected


@given(st.binary(max_size=200))
def test_show_is_one_printable_line(value: bytes) -> None:
    shown = logs.show(value)
    assert shown.isprintable()
    assert "\n" not in shown and "\r" not in shown


def test_show_keeps_utf8_and_escapes_the_rest() -> None:
    assert logs.show("jörg@x.example".encode()) == "jörg@x.example"
    assert logs.show(b"a\nb@x") == "a\\nb@x"
    assert logs.show(b"caf\xe9@x") == "caf\\xe9@x"
    assert logs.show(b"a" * 600).endswith("...")
