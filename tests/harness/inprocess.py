# An srsd Server in the test's own trio loop: start, a tcp_table client, waiting, log capture.
"""What the in-process server tests share: :func:`serving` binds a real
:class:`srsd.serve.server.Server` on free loopback ports and serves it in the test's trio loop
(:class:`Running`), :class:`Client` talks tcp_table to it with every operation bounded by
:data:`TIMEOUT` and every reply checked against Postfix's grammar, :func:`wait_for` polls
(bounded), :class:`CapturedLog` keeps srsd's log records (the ``log`` fixture in
tests/conftest.py), and :func:`srs0` computes the expected SRS addresses from the secret
(HMAC-SHA1, base64url), not with srsd's codec.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from srsd.config import settings as srsd_settings
from srsd.config.settings import Settings
from srsd.serve.listeners import Endpoint, StartError
from srsd.serve.server import Server
from srsd.srs.policy import Role
from tests.harness.ports import free_port

SECRET = b"in-process-secret-7f3a9c0d"


NEW_SECRET = b"in-process-rotated-secret-41b2"


DOMAIN = "forwarder.test"


TIMEOUT = 10.0  # the bound on every wait in this file


DAY = 86400


B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


WELL_FORMED = re.compile(rb"[245]\d\d (?:[!-$&-~]|%[0-9A-F]{2})*\n")


BRIEF_SHAPE = re.compile(rb"^[245]\d\d [^\s]*\n$")


def srs0(user: bytes, host: bytes, when: float, secret: bytes = SECRET) -> bytes:
    """The SRS0 address srsd must give ``user@host`` on the day of ``when``."""
    day = int(when // DAY)
    stamp = bytes((B32[(day >> 5) & 31], B32[day & 31]))
    mac = hmac.new(secret, (stamp + host + user).lower(), hashlib.sha1).digest()
    tag = base64.urlsafe_b64encode(mac)[:4]
    return b"=".join((b"SRS0=" + tag, stamp, host, user)) + b"@" + DOMAIN.encode()


def forward_replies(
    user: bytes, host: bytes, t0: float, t1: float, secret: bytes = SECRET
) -> set[bytes]:
    """The 200 reply for ``user@host`` asked between ``t0`` and ``t1`` (a day may turn)."""
    return {b"200 " + srs0(user, host, t, secret) + b"\n" for t in (t0, t1)}


def check_reply(reply: bytes) -> bytes:
    assert WELL_FORMED.fullmatch(reply), reply
    assert BRIEF_SHAPE.match(reply), reply
    assert b"\r" not in reply
    return reply


def make_settings(
    tmp_path: Path,
    forward_port: int,
    reverse_port: int,
    *,
    config: Path | None = None,
    **overrides: Any,
) -> Settings:
    secrets = tmp_path / "secrets"
    if not secrets.exists():
        secrets.write_bytes(SECRET + b"\n")
        secrets.chmod(0o600)
    cli = {
        "domain": DOMAIN,
        "secrets_file": str(secrets),
        "listen": ["127.0.0.1"],
        "forward_port": forward_port,
        "reverse_port": reverse_port,
        "exclude_domains": ["excluded.example"],
        "state_dir": str(tmp_path / "state"),
        **overrides,
    }
    return srsd_settings.load(cli=cli, environ={}, config=config)


class Stream:
    """One connection to the server, whatever its wire: bytes sent, bytes received kept in
    :attr:`buffer`, every operation bounded by :data:`TIMEOUT`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        with trio.fail_after(TIMEOUT):
            await self.stream.send_all(data)

    async def rest(self, *, reset_ok: bool = False) -> bytes:
        """Everything up to EOF (a reset ends it too when ``reset_ok``)."""
        with trio.fail_after(TIMEOUT):
            try:
                while data := await self.stream.receive_some(65536):
                    self.buffer += data
            except trio.BrokenResourceError:
                if not reset_ok:
                    raise
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest

    async def aclose(self) -> None:
        await self.stream.aclose()


class Client(Stream):
    """One tcp_table connection, every reply checked against Postfix's grammar."""

    async def line(self) -> bytes:
        """The next reply line, LF included (EOFError if the server closes first)."""
        with trio.fail_after(TIMEOUT):
            while (end := self.buffer.find(b"\n")) < 0:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"EOF after {bytes(self.buffer)!r}")
                self.buffer += data
        reply = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return check_reply(reply)

    async def lines(self, count: int) -> list[bytes]:
        return [await self.line() for _ in range(count)]

    async def ask(self, key: bytes) -> bytes:
        await self.send(b"get " + key + b"\n")
        return await self.line()


@dataclass
class Running:
    server: Server
    settings: Settings
    endpoints: list[Endpoint]

    @property
    def forward(self) -> int:
        """The forward tcp_table port."""
        return self.settings.forward_port

    @property
    def reverse(self) -> int:
        """The reverse tcp_table port."""
        return self.settings.reverse_port

    async def connect(self, role: Role = Role.FORWARD, host: str = "127.0.0.1") -> Client:
        port = self.forward if role is Role.FORWARD else self.reverse
        with trio.fail_after(TIMEOUT):
            return Client(await trio.open_tcp_stream(host, port))


async def start(
    tmp_path: Path,
    server_class: type[Server] = Server,
    *,
    reload_from_files: bool = False,
    config: Path | None = None,
    **overrides: Any,
) -> tuple[Server, list[Endpoint]]:
    """A bound server on two free ports (retried if another process takes them first)."""
    for _ in range(5):
        port = free_port("127.0.0.1", count=2)
        settings = make_settings(tmp_path, port, port + 1, config=config, **overrides)

        def reload(port: int = port, settings: Settings = settings) -> Settings:
            if reload_from_files:
                return make_settings(tmp_path, port, port + 1, config=config, **overrides)
            return settings

        server = server_class(settings, reload)
        try:
            return server, await server.bind()
        except StartError:
            continue
    raise RuntimeError("could not bind a test server")


@asynccontextmanager
async def serving(
    tmp_path: Path, server_class: type[Server] = Server, **kwargs: Any
) -> AsyncIterator[Running]:
    server, endpoints = await start(tmp_path, server_class, **kwargs)
    settings = server.settings
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, endpoints)
        try:
            yield Running(server, settings, endpoints)
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until true, failing after :data:`TIMEOUT`."""
    with trio.move_on_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


class CapturedLog(logging.Handler):
    """Every srsd log record, at debug level too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


async def connect_small_window(port: int) -> trio.socket.SocketType:
    """A client socket whose receive buffer is small, so that back-pressure comes early."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with trio.fail_after(TIMEOUT):
        await sock.connect(("127.0.0.1", port))
    return sock


async def send_until_closed(sock: trio.socket.SocketType, payload: bytes) -> None:
    view = memoryview(payload)
    sent = 0
    try:
        while sent < len(payload):
            sent += await sock.send(view[sent : sent + 65536])
    except OSError:
        pass  # the server closed the connection
