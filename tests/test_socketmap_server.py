# In-process tests of the socketmap endpoint (TCP and unix socket) beside the tcp_table ports.
"""``srsd.serve.server.Server`` with ``socketmap`` set, run inside the test's own trio loop.

Each test binds a real :class:`Server` (``bind`` then ``nursery.start(serve, endpoints)``)
with its two tcp_table ports and one socketmap endpoint, ``inet:127.0.0.1:PORT`` or
``unix:/PATH`` (most tests run on both), and talks netstrings to it. Every wait is bounded
by :data:`TIMEOUT`. Expected SRS addresses come from an independent HMAC oracle.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from srsd.config.settings import Settings
from srsd.serve.listeners import Endpoint, StartError
from srsd.serve.server import Server
from srsd.srs.codec import Codec
from srsd.srs.policy import Role
from srsd.wire import Wire
from tests.harness.clients import hex_quote, unquote
from tests.harness.inprocess import (
    DAY,
    DOMAIN,
    SECRET,
    TIMEOUT,
    Stream,
    make_settings,
    srs0,
    wait_for,
)
from tests.harness.inprocess import Client as TcpTableClient
from tests.harness.ports import free_port

NETSTRING = re.compile(rb"(0|[1-9][0-9]{0,5}):")
STATUS = re.compile(rb"(OK|NOTFOUND|TEMP|PERM) (.*)", re.DOTALL)
KINDS = ["inet", "unix"]


# -- the SRS oracle's window and tcp_table helpers -------------------------------------------


def srs0_around(user: bytes, host: bytes, t0: float) -> set[bytes]:
    """The address for a lookup made between ``t0`` and now (the day may turn)."""
    return {srs0(user, host, t) for t in (t0, time.time())}


# -- a running server -----------------------------------------------------------------------


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="srsd-sm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Client(Stream):
    """One socketmap connection; every operation bounded by :data:`TIMEOUT`."""

    async def reply(self) -> bytes:
        """The payload of the next reply netstring (EOFError if the server closes first)."""
        with trio.fail_after(TIMEOUT):
            while True:
                match = NETSTRING.match(self.buffer)
                if match and len(self.buffer) > match.end() + int(match[1]):
                    end = match.end() + int(match[1])
                    assert self.buffer[end] == ord(","), bytes(self.buffer)
                    payload = bytes(self.buffer[match.end() : end])
                    del self.buffer[: end + 1]
                    assert STATUS.fullmatch(payload), payload
                    return payload
                assert len(self.buffer) < 100_010, "reply over Postfix's bound"
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"EOF after {bytes(self.buffer)!r}")
                self.buffer += data

    async def ask(self, name: bytes, key: bytes) -> bytes:
        payload = name + b" " + key
        await self.send(b"%d:%s," % (len(payload), payload))
        return await self.reply()


class LineClient(TcpTableClient):
    """One tcp_table connection; :meth:`get` %-encodes the key as Postfix does."""

    async def get(self, key: bytes) -> bytes:
        """The reply line to ``get KEY``, without its LF."""
        return (await self.ask(hex_quote(key)))[:-1]


@dataclass
class Running:
    server: Server
    settings: Settings
    endpoints: list[Endpoint]

    @property
    def socketmap(self) -> Endpoint:
        [endpoint] = [e for e in self.endpoints if e.wire is Wire.SOCKETMAP]
        return endpoint

    async def connect(self) -> Client:
        endpoint = self.socketmap
        with trio.fail_after(TIMEOUT):
            if endpoint.unix_path is not None:
                return Client(await trio.open_unix_socket(str(endpoint.unix_path)))
            return Client(await trio.open_tcp_stream("127.0.0.1", endpoint.port))

    async def connect_tcp_table(self, role: Role) -> LineClient:
        port = self.settings.forward_port if role is Role.FORWARD else self.settings.reverse_port
        with trio.fail_after(TIMEOUT):
            return LineClient(await trio.open_tcp_stream("127.0.0.1", port))


def server_settings(tmp_path: Path, kind: str, sockdir: Path | None, **overrides: Any) -> Settings:
    """Settings with two tcp_table ports and a socketmap endpoint on three free ports."""
    port = free_port("127.0.0.1", count=3)
    if kind == "unix":
        assert sockdir is not None
        endpoint = f"unix:{sockdir / 'srsd.sock'}"
    else:
        endpoint = f"inet:127.0.0.1:{port + 2}"
    values: dict[str, Any] = {
        "forward_port": port,
        "reverse_port": port + 1,
        "socketmap": endpoint,
        **overrides,
    }
    return make_settings(tmp_path, **values)


async def bound(
    tmp_path: Path, kind: str, sockdir: Path | None = None, **overrides: Any
) -> tuple[Server, list[Endpoint]]:
    """A bound server (retried when another process takes a free port first)."""
    for _ in range(5):
        settings = server_settings(tmp_path, kind, sockdir, **overrides)
        server = Server(settings, lambda settings=settings: settings)
        try:
            return server, await server.bind()
        except StartError as err:
            if "Address already in use" not in str(err):
                raise
    raise RuntimeError("could not bind a test server")


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, kind: str, sockdir: Path | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    server, endpoints = await bound(tmp_path, kind, sockdir, **overrides)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, endpoints)
        try:
            yield Running(server, server.settings, endpoints)
        finally:
            nursery.cancel_scope.cancel()


def counted(server: Server, *labels: str) -> int:
    """The lookups counted under every one of ``labels`` (whatever else the key holds)."""
    return sum(n for key, n in server.lookups.counts.items() if set(labels) <= set(key))


# -- endpoints -------------------------------------------------------------------------------


async def test_socketmap_listens_beside_both_tcp_table_ports(
    tmp_path: Path, kind: str, sockdir: Path
) -> None:
    async with serving(tmp_path, kind, sockdir) as srv:
        wires = sorted((e.wire.value, e.role.value if e.role else None) for e in srv.endpoints)
        assert wires == [("socketmap", None), ("tcp_table", "forward"), ("tcp_table", "reverse")]
        endpoint = srv.socketmap
        if kind == "unix":
            assert endpoint.unix_path == sockdir / "srsd.sock"
            assert endpoint.port == 0
            assert str(endpoint) == f"socketmap forward+reverse on unix:{sockdir}/srsd.sock"
        else:
            assert endpoint.unix_path is None
            assert str(endpoint) == f"socketmap forward+reverse on 127.0.0.1:{endpoint.port}"
        # all three answer at once
        t0 = time.time()
        sm = await srv.connect()
        fwd = await srv.connect_tcp_table(Role.FORWARD)
        assert (await sm.ask(b"forward", b"alice@example.org"))[3:] in srs0_around(
            b"alice", b"example.org", t0
        )
        assert (await fwd.get(b"alice@example.org"))[4:] in srs0_around(
            b"alice", b"example.org", t0
        )


async def test_socketmap_alone(tmp_path: Path, kind: str, sockdir: Path) -> None:
    """Both tcp_table ports off: only the socketmap endpoint is served."""
    async with serving(tmp_path, kind, sockdir, forward_port=0, reverse_port=0) as srv:
        assert [e.wire for e in srv.endpoints] == [Wire.SOCKETMAP]
        c = await srv.connect()
        assert await c.ask(b"reverse", b"alice@example.org") == b"NOTFOUND Not an SRS address."


async def test_socketmap_off_by_default(tmp_path: Path) -> None:
    port = free_port(count=2)
    settings = make_settings(tmp_path, forward_port=port, reverse_port=port + 1)
    assert settings.socketmap is None
    server = Server(settings, lambda: settings)
    endpoints = await server.bind()
    try:
        assert sorted(e.port for e in endpoints) == [port, port + 1]
        assert all(e.wire is Wire.TCP_TABLE for e in endpoints)
    finally:
        for e in endpoints:
            e.sock.close()


async def test_inet_port_in_use_is_a_start_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(
            tmp_path, socketmap=f"inet:127.0.0.1:{port}", forward_port=0, reverse_port=0
        )
        with pytest.raises(StartError, match=rf"127\.0\.0\.1:{port} for socketmap: .*in use"):
            await Server(settings, lambda: settings).bind()


# -- lookups ---------------------------------------------------------------------------------


async def test_both_maps_on_one_connection(tmp_path: Path, kind: str, sockdir: Path) -> None:
    async with serving(tmp_path, kind, sockdir) as srv:
        c = await srv.connect()
        t0 = time.time()
        reply = await c.ask(b"forward", b"alice@example.org")
        assert reply.startswith(b"OK ")
        address = reply[3:]
        assert address in srs0_around(b"alice", b"example.org", t0)
        assert await c.ask(b"reverse", address) == b"OK alice@example.org"
        assert await c.ask(b"reverse", address.lower()) == b"OK alice@example.org"
        assert await c.ask(b"forward", address) == b"NOTFOUND local domain"
        assert await c.ask(b"forward", b"bob@example.net") in {
            b"OK " + a for a in srs0_around(b"bob", b"example.net", t0)
        }
        assert counted(srv.server, "forward", "rewritten") == 2
        assert counted(srv.server, "reverse", "rewritten") == 2
        assert counted(srv.server, "forward", "local") == 1


FORWARD_KEYS = [
    b"alice@example.org",
    b'""',
    b"<>",
    b"alice",
    b"alice@",
    b"bob@forwarder.test",
    b"bob@FORWARDER.Test",
    b"carol@excluded.example",
    b"SRS1=xx@other.example",
    b"SRS1=xx=hop.example@other.example",
    b"SRS0=abcd=AA=orig.example=user@hop.example",
    b"a b@origin.test",
    b"a%b@origin.test",
    b"100%25@origin.test",
    "jörg@origin.test".encode(),
    b'"quoted\\"quote"@origin.test',
    b"x" * 3000 + b"@origin.test",
]


def reverse_keys(now: float) -> list[bytes]:
    good = srs0(b"alice", b"example.org", now)
    return [
        good,
        good.lower(),
        Codec([SECRET], DOMAIN.encode()).forward(b"SRS0=abcd=AA=orig.example=u@hop.example", now),
        b"alice@example.org",
        srs0(b"alice", b"example.org", now, b"someone-else"),  # bad hash
        srs0(b"alice", b"example.org", now - 30 * DAY),  # expired
        b"SRS0=abcd@forwarder.test",
        b"SRS0=abcd=!!=example.org=alice@forwarder.test",
        b"SRS0=ab=AA=example.org=alice@forwarder.test",
        b'""',
        b" ",
    ]


async def test_same_decisions_as_tcp_table(tmp_path: Path, kind: str, sockdir: Path) -> None:
    """For every key: tcp_table ``200 X`` is socketmap ``OK X``, ``500 T`` is ``NOTFOUND T``."""
    async with serving(tmp_path, kind, sockdir) as srv:
        sm = await srv.connect()
        tcp = {role: await srv.connect_tcp_table(role) for role in Role}
        now = time.time()
        cases = [(Role.FORWARD, k) for k in FORWARD_KEYS]
        cases += [(Role.REVERSE, k) for k in reverse_keys(now)]
        seen = set()
        for role, key in cases:
            line = await tcp[role].get(key)
            reply = await sm.ask(role.value.encode(), key)
            code, text = line[:3], unquote(line[4:])
            word = {b"200": b"OK", b"500": b"NOTFOUND"}[code]
            assert reply == word + b" " + text, (role, key, line)
            seen.add((role, word))
        assert seen == {(r, w) for r in Role for w in (b"OK", b"NOTFOUND")}


@pytest.mark.parametrize(
    ("name", "key", "reply"),
    [
        ("forward", b'""', b"NOTFOUND null sender"),
        ("forward", b"", b"NOTFOUND null sender"),  # the empty key, which tcp_table cannot send
        ("forward", b"<>", b"NOTFOUND null sender"),
        ("forward", b"bob@forwarder.test", b"NOTFOUND local domain"),
        ("forward", b"carol@EXCLUDED.example", b"NOTFOUND excluded domain"),
        ("forward", b"alice", b"NOTFOUND no domain"),
        ("forward", b"SRS1=xx@other.example", b"NOTFOUND No host in SRS1 address."),
        ("reverse", b"alice@example.org", b"NOTFOUND Not an SRS address."),
        ("reverse", b"", b"NOTFOUND Not an SRS address."),
        (
            "reverse",
            b"SRS0=abcd=AA=example.org=alice@forwarder.test",
            b"NOTFOUND Hash invalid in SRS address.",
        ),
    ],
)
async def test_not_found_replies(tmp_path: Path, name: str, key: bytes, reply: bytes) -> None:
    """Nothing a sender controls is PERM or TEMP (either would defer the mail)."""
    async with serving(tmp_path, "inet") as srv:
        c = await srv.connect()
        assert await c.ask(name.encode(), key) == reply


async def test_key_is_raw_and_split_at_the_first_space(tmp_path: Path) -> None:
    async with serving(tmp_path, "inet") as srv:
        c = await srv.connect()
        t0 = time.time()
        assert await c.ask(b"forward", b"a b c@origin.test") in {
            b"OK " + a for a in srs0_around(b"a b c", b"origin.test", t0)
        }
        assert await c.ask(b"forward", b"a%20b@origin.test") in {
            b"OK " + a for a in srs0_around(b"a%20b", b"origin.test", t0)
        }
        # no key at all: the empty key (the null sender to the forward map)
        await c.send(b"7:forward,")
        assert await c.reply() == b"NOTFOUND null sender"


async def test_pipelined_and_dribbled_requests(tmp_path: Path, kind: str, sockdir: Path) -> None:
    async with serving(tmp_path, kind, sockdir) as srv:
        c = await srv.connect()
        keys = [b"a@x.example", b"b@forwarder.test", b"c@y.example", b"alice"]
        await c.send(b"".join(b"%d:forward %s," % (len(k) + 8, k) for k in keys))
        replies = [await c.reply() for _ in keys]
        assert [r.split(b" ")[0] for r in replies] == [b"OK", b"NOTFOUND", b"OK", b"NOTFOUND"]
        assert b"=x.example=a@" in replies[0]
        assert b"=y.example=c@" in replies[2]
        request = b"25:reverse alice@example.org,"
        for i in range(len(request)):
            await c.send(request[i : i + 1])
            await trio.sleep(0)
        assert await c.reply() == b"NOTFOUND Not an SRS address."


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"FORWARD", b"bogus", b"Reverse", b"", b"forward\x00"])
async def test_unknown_map_name_is_perm_and_the_connection_stays(
    tmp_path: Path, kind: str, sockdir: Path, name: bytes
) -> None:
    async with serving(tmp_path, kind, sockdir) as srv:
        c = await srv.connect()
        assert await c.ask(name, b"alice@example.org") == b"PERM Unknown map name"
        t0 = time.time()
        assert (await c.ask(b"forward", b"alice@example.org"))[3:] in srs0_around(
            b"alice", b"example.org", t0
        )
        assert await c.ask(name, b"x") == b"PERM Unknown map name"
        assert await c.ask(b"reverse", b"alice@example.org") == b"NOTFOUND Not an SRS address."
        assert counted(srv.server, "socketmap", "bad request") == 2


async def test_empty_netstring_is_an_unknown_map_name(tmp_path: Path) -> None:
    async with serving(tmp_path, "inet") as srv:
        c = await srv.connect()
        await c.send(b"0:,")
        assert await c.reply() == b"PERM Unknown map name"
        assert await c.ask(b"reverse", b"a@b") == b"NOTFOUND Not an SRS address."


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"get alice@example.org\n", b"PERM Invalid netstring length"),
        (b":x,", b"PERM Invalid netstring length"),
        (b"-5:hello,", b"PERM Invalid netstring length"),
        (b" 9:forward a,", b"PERM Invalid netstring length"),
        (b"0x10:forward a@b.c,", b"PERM Invalid netstring length"),
        (b"3:abc;", b"PERM Netstring not terminated by a comma"),
        (b"9:forward ab,", b"PERM Netstring not terminated by a comma"),
    ],
)
async def test_broken_framing_is_perm_then_close(
    tmp_path: Path, kind: str, sockdir: Path, data: bytes, reply: bytes
) -> None:
    async with serving(tmp_path, kind, sockdir) as srv:
        c = await srv.connect()
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
        await c.send(data)
        assert await c.reply() == reply
        assert await c.rest(reset_ok=True) == b""  # half-closed by the server at once
        await c.aclose()  # (the server drains what a client still sends, then closes)
        await wait_for(lambda: len(srv.server.loop.connections) == 0, "the connection to end")
        assert counted(srv.server, "socketmap", "bad request") == 1


async def test_perm_reply_survives_a_client_that_keeps_sending(
    tmp_path: Path, kind: str, sockdir: Path
) -> None:
    """Closing with unread input would reset the connection and could destroy the reply."""
    async with serving(tmp_path, kind, sockdir) as srv:
        c = await srv.connect()
        junk = b"get alice@example.org\n" * 20_000

        async def keep_sending() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await c.send(junk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending)
            assert await c.reply() == b"PERM Invalid netstring length"
            assert await c.rest(reset_ok=True) == b""


async def test_requests_before_broken_framing_are_answered(tmp_path: Path) -> None:
    async with serving(tmp_path, "inet") as srv:
        c = await srv.connect()
        await c.send(b"13:forward alice,13:reverse alice,get x\n9:forward a,")
        assert await c.reply() == b"NOTFOUND no domain"
        assert await c.reply() == b"NOTFOUND Not an SRS address."
        assert await c.reply() == b"PERM Invalid netstring length"
        assert await c.rest(reset_ok=True) == b""


@pytest.mark.parametrize(
    ("max_request", "prefix"), [(None, b"99999:"), (None, b"4105:"), (256, b"265:"), (256, b"1000")]
)
async def test_over_long_request_is_refused_before_its_payload(
    tmp_path: Path, kind: str, sockdir: Path, max_request: int | None, prefix: bytes
) -> None:
    """Only the length prefix is sent: the reply must come without the payload. The bound
    is an address of max_request bytes after the longest map name and a space; over it,
    the answer is what every endpoint says of a longer address, NOTFOUND (never PERM: a
    sender controls it, and PERM would defer the mail)."""
    overrides = {"max_request": max_request} if max_request else {}
    async with serving(tmp_path, kind, sockdir, **overrides) as srv:
        c = await srv.connect()
        await c.send(prefix)
        assert await c.reply() == b"NOTFOUND Address too long"
        assert await c.rest(reset_ok=True) == b""


@pytest.mark.parametrize("max_request", [256, 4096])
async def test_request_at_the_bound_is_answered(tmp_path: Path, max_request: int) -> None:
    async with serving(tmp_path, "inet", max_request=max_request) as srv:
        c = await srv.connect()
        user = b"u" * (max_request - len(b"@origin.test"))  # an address of max_request bytes
        t0 = time.time()
        assert (await c.ask(b"forward", user + b"@origin.test"))[3:] in srs0_around(
            user, b"origin.test", t0
        )
        # one byte more: over the netstring bound too; refused as on every endpoint, closed
        assert await c.ask(b"forward", user + b"u@origin.test") == b"NOTFOUND Address too long"
        assert await c.rest(reset_ok=True) == b""


async def test_eof_mid_request_closes_quietly(tmp_path: Path) -> None:
    async with serving(tmp_path, "inet") as srv:
        c = await srv.connect()
        await c.send(b"25:forward alice")
        await c.stream.send_eof()
        assert await c.rest(reset_ok=True) == b""
        await wait_for(lambda: len(srv.server.loop.connections) == 0, "the connection to end")


# -- limits ----------------------------------------------------------------------------------


async def test_keep_alive_closes_idle_socketmap_connections_only(
    tmp_path: Path, kind: str, sockdir: Path, autojump_clock: trio.abc.Clock
) -> None:
    # On trio's autojump clock: waiting the keep-alive out takes no real time.
    keep_alive = 4.0
    async with serving(tmp_path, kind, sockdir, keep_alive=keep_alive) as srv:
        tcp = await srv.connect_tcp_table(Role.REVERSE)
        c = await srv.connect()
        assert await c.ask(b"reverse", b"a@b.example") == b"NOTFOUND Not an SRS address."
        answered = trio.current_time()
        assert await c.rest(reset_ok=True) == b""
        assert trio.current_time() - answered >= keep_alive
        # a request that never completes does not keep a connection alive either
        partial = await srv.connect()
        await partial.send(b"25:forward al")
        opened = trio.current_time()
        await trio.sleep(keep_alive / 2)
        await partial.send(b"ice")
        assert await partial.rest(reset_ok=True) == b""
        assert keep_alive <= trio.current_time() - opened < keep_alive * 1.5
        # the tcp_table connection has its own (long) idle time-out
        assert await tcp.get(b"a@b.example") == b"500 Not%20an%20SRS%20address."


async def test_connection_limit_is_shared_with_tcp_table(
    tmp_path: Path, kind: str, sockdir: Path
) -> None:
    # One user (this process): at max_connections a new connection, on either protocol,
    # evicts the connection idle the longest, on either protocol (tests/test_admission_*).
    async with serving(
        tmp_path, kind, sockdir, max_connections=2, max_connections_per_user=2
    ) as srv:
        tcp = await srv.connect_tcp_table(Role.FORWARD)
        assert (await tcp.get(b"alice"))[:4] == b"500 "
        sm = await srv.connect()
        assert await sm.ask(b"forward", b"alice") == b"NOTFOUND no domain"
        assert len(srv.server.loop.connections) == 2
        # a third, socketmap: the tcp_table connection (idle the longest) gives way
        extra = await srv.connect()
        assert await extra.ask(b"reverse", b"x@y") == b"NOTFOUND Not an SRS address."
        assert await tcp.rest(reset_ok=True) == b""
        # a fourth, tcp_table: the first socketmap connection gives way
        extra_tcp = await srv.connect_tcp_table(Role.REVERSE)
        assert (await extra_tcp.get(b"alice"))[:4] == b"500 "
        assert await sm.rest(reset_ok=True) == b""
        assert (srv.server.gate.counts["evicted"], srv.server.gate.counts["refused full"]) == (2, 0)
        assert len(srv.server.loop.connections) == 2


async def test_shutdown_closes_idle_socketmap_connections(
    tmp_path: Path, kind: str, sockdir: Path
) -> None:
    async with serving(tmp_path, kind, sockdir, shutdown_grace=5) as srv:
        c = await srv.connect()
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
        os.kill(os.getpid(), signal.SIGTERM)
        assert await c.rest(reset_ok=True) == b""
        await wait_for(lambda: len(srv.server.loop.connections) == 0, "the drain")
    if kind == "unix":
        assert not (sockdir / "srsd.sock").exists()


# -- the unix socket file ----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected"), [(None, 0o666), ("0660", 0o660), ("600", 0o600)])
async def test_unix_socket_mode(
    tmp_path: Path, sockdir: Path, mode: str | None, expected: int
) -> None:
    path = sockdir / "srsd.sock"
    overrides = {"socketmap_mode": mode} if mode else {}
    async with serving(tmp_path, "unix", sockdir, **overrides) as srv:
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == expected
        assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid())
        c = await srv.connect()
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize(
    ("owner", "ids"),
    [
        ("nobody:nogroup", ("nobody", "nogroup")),
        ("nobody", ("nobody", None)),
    ],
)
async def test_unix_socket_owner(
    tmp_path: Path, sockdir: Path, owner: str, ids: tuple[str, str | None]
) -> None:
    path = sockdir / "srsd.sock"
    os.chmod(sockdir, 0o755)  # let nobody reach the socket
    async with serving(
        tmp_path, "unix", sockdir, socketmap_owner=owner, socketmap_mode="0600"
    ) as srv:
        info = path.lstat()
        assert info.st_uid == pwd.getpwnam(ids[0]).pw_uid
        assert info.st_gid == (grp.getgrnam(ids[1]).gr_gid if ids[1] else os.getegid())
        assert stat.S_IMODE(info.st_mode) == 0o600
        c = await srv.connect()  # root still can
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
        # and so can its owner, as Postfix would (a child process running as nobody)
        probe = (
            "import os, socket; os.setgid(65534); os.setuid(65534);"
            f"s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect({str(path)!r});"
            "s.sendall(b'13:forward alice,'); print(s.recv(100).decode())"
        )
        done = await trio.run_process(
            [sys.executable, "-c", probe], capture_stdout=True, capture_stderr=True, check=False
        )
        assert done.stdout.strip() == b"18:NOTFOUND no domain,", done.stderr
    assert not path.exists()


async def test_unknown_owner_is_a_start_error(tmp_path: Path, sockdir: Path) -> None:
    settings = server_settings(
        tmp_path, "unix", sockdir, socketmap_owner="no-such-user-srsd:nogroup"
    )
    with pytest.raises(StartError, match=r"unix:.*srsd\.sock: no such user or group"):
        await Server(settings, lambda: settings).bind()


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a crashed srsd leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)


async def test_stale_socket_file_is_replaced(tmp_path: Path, sockdir: Path) -> None:
    path = sockdir / "srsd.sock"
    stale_socket(path)
    async with serving(tmp_path, "unix", sockdir) as srv:
        c = await srv.connect()
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
    assert not path.exists()


async def test_live_socket_is_a_start_error_and_left_alone(tmp_path: Path, sockdir: Path) -> None:
    path = sockdir / "srsd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        inode = path.lstat().st_ino
        settings = server_settings(tmp_path, "unix", sockdir)
        with pytest.raises(StartError, match=r"another server is answering there"):
            await Server(settings, lambda: settings).bind()
        # the other server's socket is still there and still works
        assert path.lstat().st_ino == inode
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(TIMEOUT)
            probe.connect(str(path))
        # and the tcp_table ports srsd bound first were released again
        for port in (settings.forward_port, settings.reverse_port):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))


async def test_second_srsd_on_the_same_socket_fails_and_the_first_keeps_it(
    tmp_path: Path, sockdir: Path
) -> None:
    path = sockdir / "srsd.sock"
    async with serving(tmp_path, "unix", sockdir) as srv:
        settings = server_settings(tmp_path, "unix", sockdir)
        with pytest.raises(StartError, match=r"another server is answering there"):
            await Server(settings, lambda: settings).bind()
        c = await srv.connect()
        assert await c.ask(b"forward", b"alice") == b"NOTFOUND no domain"
        assert stat.S_ISSOCK(path.lstat().st_mode)
    assert not path.exists()


@pytest.mark.parametrize("what", ["file", "directory", "symlink-to-stale-socket", "fifo"])
async def test_non_socket_at_the_path_is_never_deleted(
    tmp_path: Path, sockdir: Path, what: str
) -> None:
    path = sockdir / "srsd.sock"
    if what == "file":
        path.write_bytes(b"precious")
    elif what == "directory":
        path.mkdir()
    elif what == "fifo":
        os.mkfifo(path)
    else:
        target = sockdir / "stale.sock"
        stale_socket(target)
        path.symlink_to(target)
    before = path.lstat()
    settings = server_settings(tmp_path, "unix", sockdir)
    with pytest.raises(StartError, match=r"exists and is not a socket"):
        await Server(settings, lambda: settings).bind()
    after = path.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if what == "file":
        assert path.read_bytes() == b"precious"
    if what == "symlink-to-stale-socket":
        assert (sockdir / "stale.sock").exists()


PROBE_AS_NOBODY = r"""
import os, sys, trio
from srsd.config import settings
from srsd.serve.listeners import StartError
from srsd.serve.server import Server
loaded = settings.load(cli={"domain": "forwarder.test", "secrets_file": sys.argv[1],
                            "forward_port": 0, "reverse_port": 0,
                            "socketmap": "unix:" + sys.argv[2]}, environ={}, config=None)
os.setgid(65534)
os.setuid(65534)

async def main() -> None:
    try:
        await Server(loaded, lambda: loaded).bind()
    except StartError as err:
        print("StartError:", err)
    else:
        print("bound")

trio.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the second srsd as nobody")
def test_live_socket_that_the_probe_may_not_connect_to_is_left_alone(
    tmp_path: Path, sockdir: Path
) -> None:
    """A second srsd running as another user cannot connect to a live 0600 socket: it must
    refuse to start, not delete the socket from under the running server."""
    os.chmod(sockdir, 0o777)  # the directory lets nobody create and delete files
    secrets = tmp_path / "secrets"
    secrets.write_bytes(SECRET + b"\n")
    secrets.chmod(0o644)
    os.chmod(tmp_path, 0o755)
    path = sockdir / "srsd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        path.chmod(0o600)
        live.listen()
        done = subprocess.run(
            [sys.executable, "-c", PROBE_AS_NOBODY, str(secrets), str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        # the live server's socket file is still the one it listens on
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(TIMEOUT)
            probe.connect(str(path))
        assert done.stdout.startswith("StartError:"), done.stdout
