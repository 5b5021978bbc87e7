# Logging: syslog lines carry the mail facility; address bytes cannot forge log lines.
"""srsd's log set-up, checked with a real syslog datagram socket."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from srsd import logs

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
