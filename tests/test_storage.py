# Envelope stores for real: SQLite in a temp dir, Redis from a redis-server the suite starts.
"""Round trips through both backends, expiry with a pinned clock, idempotent writes,
restart persistence, two stores sharing one Redis (the fleet case), URL parsing, and
outages: a locked, immutable or missing SQLite file, a stopped or frozen Redis. Each outage
must raise :class:`StorageError` (nothing else) within a bounded time, must not block the
trio loop, and must heal by itself once the condition is gone."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from srsd.envelope import EnvelopeMode, alias_address, alias_key, key_of, use_database
from srsd.envelope.location import DEFAULT_SQLITE_NAME, parse_redis_url
from srsd.envelope.store import (
    EnvelopeStore,
    Outage,
    RedisStore,
    SQLiteStore,
    StorageError,
    expire_periodically,
    open_store,
)
from srsd.srs.codec import Codec
from tests.harness.immutable import immutable
from tests.harness.ports import free_port
from tests.harness.redis_server import RedisServer

NOW = 1_700_000_000.0
LIFETIME = 23 * 86400.0
SENDER = b"a-rather-long-sender-name.with.dots@a-long-subdomain.some-forwarded-domain.example"
KEY = alias_key(SENDER)


def key(n: int) -> bytes:
    return alias_key(b"sender%d@example.org" % n)


def redis_client(server: RedisServer):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session (flushed by the tests that need it empty)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, freeze and restart."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[EnvelopeStore]:
    """Each backend in turn, empty."""
    s: EnvelopeStore
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "env.sqlite", LIFETIME)
    else:
        redis_client(redis_server).flushdb()
        s = RedisStore(redis_server.url, LIFETIME)
    try:
        yield s
    finally:
        await s.aclose()


# -- both backends ------------------------------------------------------------------------------


async def test_round_trip(store: EnvelopeStore) -> None:
    await store.check()
    assert await store.get(KEY, NOW) is None
    await store.put(KEY, SENDER, NOW)
    assert await store.get(KEY, NOW) == SENDER
    assert await store.get(key(1), NOW) is None
    assert await store.expire(NOW) == 0


async def test_values_are_bytes_exactly_as_given(store: EnvelopeStore) -> None:
    odd = [b"\xff\xfe@x.example", b'"a b\\"c"@x.example', b"nul\x00byte@x", "é@ü.example".encode()]
    for i, sender in enumerate(odd):
        await store.put(key(i), sender, NOW)
    for i, sender in enumerate(odd):
        assert await store.get(key(i), NOW) == sender


async def test_writes_are_idempotent(store: EnvelopeStore) -> None:
    for _ in range(3):
        await store.put(KEY, SENDER, NOW)
    assert await store.get(KEY, NOW) == SENDER
    await store.put(KEY, b"other@x.example", NOW)  # last write wins
    assert await store.get(KEY, NOW) == b"other@x.example"


async def test_bad_keys_are_a_programming_error(store: EnvelopeStore) -> None:
    for bad in (b"", b"A@1", b"A B", b"\xff", b"A" * 65):
        with pytest.raises(ValueError, match="not an envelope key"):
            await store.put(bad, SENDER, NOW)


async def test_closed_store_raises_storage_error(store: EnvelopeStore) -> None:
    await store.aclose()
    with pytest.raises(StorageError, match="closed"):
        await store.get(KEY, NOW)
    with pytest.raises(StorageError, match="closed"):
        await store.put(KEY, SENDER, NOW)


# -- SQLite -------------------------------------------------------------------------------------


async def test_sqlite_expiry_with_a_pinned_clock(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "env.sqlite", 100)
    await s.put(KEY, SENDER, NOW)
    await s.put(key(1), b"later@x", NOW + 50)
    assert await s.get(KEY, NOW + 99) == SENDER
    assert await s.get(KEY, NOW + 100) is None  # expired rows are missing before expire()
    assert await s.count() == 2
    assert await s.expire(NOW + 99) == 0
    assert await s.expire(NOW + 100) == 1
    assert await s.count() == 1
    assert await s.get(key(1), NOW + 100) == b"later@x"
    # A rewrite refreshes the lifetime.
    await s.put(key(1), b"later@x", NOW + 140)
    assert await s.get(key(1), NOW + 200) == b"later@x"
    assert await s.expire(NOW + 240) == 1
    assert await s.count() == 0
    await s.aclose()


async def test_sqlite_expiry_in_batches_lets_lookups_through(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "env.sqlite", 10, batch_size=50)

    def fill(conn: sqlite3.Connection) -> None:
        rows = ((f"K{i:031d}@1", b"x@y", int(NOW)) for i in range(5000))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO kv (k, v, lt) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")

    await s.put(KEY, SENDER, NOW + 1000)  # lives on
    await s._run(fill)
    order: list[str] = []

    async def expire() -> None:
        order.append(f"expired {await s.expire(NOW + 10)}")

    # The lookup is made once the expiry has done its first batch (of 100): no clock.
    first_batch = trio.Event()
    call = s._call

    def counted(op: Callable[[sqlite3.Connection], object]) -> object:
        result = call(op)
        trio.from_thread.run_sync(first_batch.set)
        return result

    s._call = counted  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expire)
        await first_batch.wait()
        assert await s.get(KEY, NOW + 10) == SENDER
        order.append("lookup")
    assert order == ["lookup", "expired 5000"]
    assert await s.count() == 1
    await s.aclose()


async def test_sqlite_persists_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "env.sqlite"
    s = SQLiteStore(path, LIFETIME)
    await s.put(KEY, SENDER, NOW)
    await s.aclose()
    s = SQLiteStore(path, LIFETIME)
    assert await s.get(KEY, NOW + 86400) == SENDER
    await s.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT k, v, lt FROM kv").fetchall() == [
        (KEY.decode() + "@1", SENDER, int(NOW + LIFETIME))
    ]
    conn.close()


async def test_sqlite_reads_a_postsrsd_database(tmp_path: Path) -> None:
    # postsrsd 2.x's own schema and write: value as TEXT, expiry time in lt.
    path = tmp_path / "postsrsd.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE kv (k TEXT NOT NULL UNIQUE ON CONFLICT REPLACE, v TEXT NOT NULL,"
        " lt INTEGER NOT NULL); CREATE INDEX ltidx ON kv (lt);"
    )
    conn.execute("INSERT INTO kv VALUES (?, ?, ?)", (KEY.decode() + "@1", SENDER.decode(), NOW + 9))
    conn.commit()
    conn.close()
    s = SQLiteStore(path, LIFETIME)
    assert await s.get(KEY, NOW) == SENDER
    await s.put(key(1), b"new@x", NOW)
    assert await s.get(key(1), NOW) == b"new@x"
    assert await s.expire(NOW + 9) == 1
    await s.aclose()


async def test_sqlite_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "env.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    s = SQLiteStore(path, LIFETIME)
    with pytest.raises(StorageError, match="not a database"):
        await s.check()
    with pytest.raises(StorageError):
        await s.put(KEY, SENDER, NOW)
    path.unlink()  # repaired: the next operation opens a fresh file
    await s.put(KEY, SENDER, NOW)
    assert await s.get(KEY, NOW) == SENDER
    await s.aclose()


async def test_sqlite_missing_directory_then_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = SQLiteStore(state / "env.sqlite", LIFETIME)
    with pytest.raises(StorageError, match="No such file or directory"):
        await s.put(KEY, SENDER, NOW)
    state.mkdir()
    await s.put(KEY, SENDER, NOW)
    assert await s.get(KEY, NOW) == SENDER
    await s.aclose()


async def _ticks_during(seconds_bound: float, work: object) -> tuple[int, float]:
    """Run the awaitable ``work`` while a ticker counts loop iterations; (ticks, seconds)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        with trio.fail_after(seconds_bound):
            await work  # type: ignore[misc]
        nursery.cancel_scope.cancel()
    return ticks, time.monotonic() - start


async def test_sqlite_locked_by_another_process_fails_fast_and_heals(tmp_path: Path) -> None:
    path = tmp_path / "env.sqlite"
    s = SQLiteStore(path, LIFETIME, busy_timeout=0.3)
    await s.put(KEY, SENDER, NOW)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # holds the write lock, like a stuck writer
    try:

        async def blocked_put() -> None:
            with pytest.raises(StorageError, match="locked"):
                await s.put(key(1), b"x@y", NOW)

        ticks, took = await _ticks_during(5, blocked_put())
        assert 0.25 < took < 3
        assert ticks >= 5  # the trio loop kept running while SQLite waited
        assert await s.get(KEY, NOW) == SENDER  # WAL: readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    await s.put(key(1), b"x@y", NOW)
    assert await s.get(key(1), NOW) == b"x@y"
    await s.aclose()


async def test_sqlite_unwritable_file_then_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "env.sqlite"
    s = SQLiteStore(path, LIFETIME, busy_timeout=0.3)
    await s.put(KEY, SENDER, NOW)
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()
    with immutable(state, path, wal):
        with trio.fail_after(5):
            with pytest.raises(StorageError):
                await s.put(key(1), b"x@y", NOW)
            with pytest.raises(StorageError):  # still failing: no silent success
                await s.put(key(2), b"x@y", NOW)
            assert await s.get(KEY, NOW) == SENDER  # lookups still work, read-only
    # Writable again: the same store object heals on its next write.
    await s.put(key(1), b"x@y", NOW)
    assert await s.get(key(1), NOW) == b"x@y"
    assert await s.get(KEY, NOW) == SENDER
    await s.aclose()


# -- Redis --------------------------------------------------------------------------------------


async def test_redis_keys_values_and_ttl_as_postsrsd(redis_server: RedisServer) -> None:
    raw = redis_client(redis_server)
    s = RedisStore(redis_server.url, LIFETIME)
    await s.put(KEY, SENDER, NOW)
    name = b"PostSRSd/" + KEY + b"@1"
    assert raw.get(name) == SENDER
    assert LIFETIME - 5 <= raw.ttl(name) <= LIFETIME
    # An entry postsrsd 2.x wrote (with SETEX) is found too.
    raw.set(b"PostSRSd/" + key(7) + b"@1", b"from-postsrsd@x.example", ex=100)
    assert await s.get(key(7), NOW) == b"from-postsrsd@x.example"
    await s.aclose()


async def test_redis_two_stores_share_entries(redis_server: RedisServer) -> None:
    # The fleet: what one MX host writes, another decodes.
    mx1 = RedisStore(redis_server.url, LIFETIME)
    mx2 = RedisStore(f"redis:127.0.0.1:{redis_server.port}", LIFETIME)  # postsrsd's form
    await mx1.put(key(1), b"one@x", NOW)
    await mx2.put(key(2), b"two@x", NOW)
    assert await mx2.get(key(1), NOW) == b"one@x"
    assert await mx1.get(key(2), NOW) == b"two@x"
    await mx1.aclose()
    await mx2.aclose()


async def test_redis_over_a_unix_socket(redis_server: RedisServer) -> None:
    s = RedisStore(f"redis+unix://{redis_server.unix_path}?db=0", LIFETIME)
    await s.put(key(3), b"three@x", NOW)
    t = RedisStore(f"redis:{redis_server.unix_path}", LIFETIME)  # postsrsd's form
    assert await t.get(key(3), NOW) == b"three@x"
    await s.aclose()
    await t.aclose()


async def test_redis_database_number_separates(redis_server: RedisServer) -> None:
    db0 = RedisStore(redis_server.url, LIFETIME)
    db3 = RedisStore(f"redis://127.0.0.1:{redis_server.port}/3", LIFETIME)
    await db3.put(key(4), b"four@x", NOW)
    assert await db0.get(key(4), NOW) is None
    assert await db3.get(key(4), NOW) == b"four@x"
    await db0.aclose()
    await db3.aclose()


async def test_redis_credentials(redis_server: RedisServer) -> None:
    raw = redis_client(redis_server)
    # The narrowest user the RedisStore docstring promises to work with.
    raw.execute_command(
        "ACL",
        "SETUSER",
        "srsd",
        "on",
        ">pa:ss/word",
        "~PostSRSd/*",
        "-@all",
        "+get",
        "+set",
        "+ping",
        "+select",
    )
    try:
        ok = RedisStore(f"redis://srsd:pa%3Ass%2Fword@127.0.0.1:{redis_server.port}/0", LIFETIME)
        await ok.check()
        await ok.put(key(5), b"five@x", NOW)
        assert await ok.get(key(5), NOW) == b"five@x"
        # Neither CONFIG nor INFO: srsd cannot tell how durable the server is, and says so.
        assert "cannot tell" in (await ok.durability() or "")
        await ok.aclose()
        db2 = RedisStore(f"redis://srsd:pa%3Ass%2Fword@127.0.0.1:{redis_server.port}/2", LIFETIME)
        await db2.put(key(5), b"five@x", NOW)
        await db2.aclose()
        bad = RedisStore(f"redis://srsd:wrong@127.0.0.1:{redis_server.port}/0", LIFETIME)
        with pytest.raises(StorageError) as info:
            await bad.put(key(5), b"five@x", NOW)
        assert "wrong" not in bad.description
        assert "wrong" not in str(info.value)
        await bad.aclose()
    finally:
        raw.execute_command("ACL", "DELUSER", "srsd")


async def test_redis_unexpected_reply_is_a_storage_error(redis_server: RedisServer) -> None:
    raw = redis_client(redis_server)
    raw.delete(b"PostSRSd/" + key(6) + b"@1")
    raw.rpush(b"PostSRSd/" + key(6) + b"@1", b"a list, not a string")
    s = RedisStore(redis_server.url, LIFETIME)
    with pytest.raises(StorageError, match="WRONGTYPE"):
        await s.get(key(6), NOW)
    await s.aclose()


async def test_redis_nothing_listening_fails_fast() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0", LIFETIME)
    with trio.fail_after(3):
        with pytest.raises(StorageError, match="refused"):
            await s.check()
        with pytest.raises(StorageError):
            await s.put(KEY, SENDER, NOW)
    await s.aclose()


async def test_redis_stopped_then_restarted_on_the_same_port(own_redis: RedisServer) -> None:
    s = RedisStore(own_redis.url, LIFETIME, timeout=1.0)
    await s.put(KEY, SENDER, NOW)
    own_redis.stop()
    with trio.fail_after(3):  # refused at once, well within the time-outs
        with pytest.raises(StorageError):
            await s.put(key(1), b"x@y", NOW)
        with pytest.raises(StorageError):
            await s.get(KEY, NOW)
    own_redis.start()  # same port; no persistence, so it comes back empty
    with trio.fail_after(5):
        await s.put(key(1), b"x@y", NOW)
        assert await s.get(key(1), NOW) == b"x@y"
    await s.aclose()


async def test_redis_restart_while_idle_costs_no_failure(own_redis: RedisServer) -> None:
    s = RedisStore(own_redis.url, LIFETIME, timeout=1.0)
    await s.put(KEY, SENDER, NOW)  # leaves a pooled connection, which the restart breaks
    own_redis.stop()
    own_redis.start()
    with trio.fail_after(5):
        await s.put(KEY, SENDER, NOW)  # the broken pooled connection is replaced
        assert await s.get(KEY, NOW) == SENDER
    await s.aclose()


@pytest.mark.parametrize("crash", [False, True])
async def test_redis_restart_is_noticed_and_counted(own_redis: RedisServer, crash: bool) -> None:
    # The restart hides behind redis-py's pool, which replaces the dead connection silently:
    # it must still change the generation (the caller forgets what it wrote) and count as a
    # database error, once per restart however many pooled connections it broke.
    s = RedisStore(own_redis.url, LIFETIME, timeout=1.0)
    async with trio.open_nursery() as nursery:  # several pooled connections
        for i in range(4):
            nursery.start_soon(s.put, key(i), b"x@y", NOW)
    generation, recovered = s.generation, s.recovered
    assert recovered == 0
    for _ in (1, 2):
        if crash:
            own_redis.kill()
        else:
            own_redis.stop()
        own_redis.start()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(s.put, key(i), b"x@y", NOW)
        assert s.generation > generation
        assert s.recovered > recovered
        generation, recovered = s.generation, s.recovered
    await s.aclose()


@pytest.mark.parametrize(
    ("appendonly", "extra", "warning"),
    [
        (False, (), "without AOF (appendonly no)"),
        (True, (), None),
        (True, ("--appendfsync", "everysec"), "appendfsync everysec"),
        (True, ("--appendfsync", "no"), "appendfsync no"),
        (False, ("--rename-command", "CONFIG", ""), "without AOF (appendonly no)"),
        (True, ("--rename-command", "CONFIG", ""), "appendfsync policy cannot be read"),
    ],
)
async def test_redis_durability_says_what_a_crash_would_lose(
    tmp_path: Path, appendonly: bool, extra: tuple[str, ...], warning: str | None
) -> None:
    server = RedisServer(tmp_path, appendonly=appendonly, extra=extra).start()
    try:
        s = RedisStore(server.url, LIFETIME)
        said = await s.durability()
        await s.aclose()
    finally:
        server.stop()
    if warning is None:
        assert said is None
    else:
        assert said is not None
        assert warning in said


async def test_redis_frozen_server_times_out_without_blocking_trio(own_redis: RedisServer) -> None:
    s = RedisStore(own_redis.url, LIFETIME, timeout=0.5)
    await s.put(KEY, SENDER, NOW)
    own_redis.pause()
    try:

        async def hung_get() -> None:
            with pytest.raises(StorageError, match=r"[Tt]imeout"):
                await s.get(KEY, NOW)

        ticks, took = await _ticks_during(5, hung_get())
        assert 0.4 < took < 1.5  # one read time-out: time-outs are not retried
        assert ticks >= 10
    finally:
        own_redis.resume()
    with trio.fail_after(5):
        assert await s.get(KEY, NOW) == SENDER
    await s.aclose()


def test_redis_store_without_redis_py_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ValueError, match=r"srsd\[redis\]"):
        RedisStore("redis://127.0.0.1:6379/0", LIFETIME)


# -- URLs ---------------------------------------------------------------------------------------


def test_open_store_sqlite_forms(tmp_path: Path) -> None:
    default = open_store("", tmp_path, LIFETIME)
    assert isinstance(default, SQLiteStore)
    assert default.path == tmp_path / DEFAULT_SQLITE_NAME
    assert isinstance(s := open_store("sqlite:", tmp_path, LIFETIME), SQLiteStore)
    assert s.path == tmp_path / DEFAULT_SQLITE_NAME
    assert isinstance(s := open_store("sqlite:db/x.sqlite", tmp_path, LIFETIME), SQLiteStore)
    assert s.path == tmp_path / "db" / "x.sqlite"
    assert isinstance(s := open_store(" sqlite:/var/lib/x.db ", tmp_path, LIFETIME), SQLiteStore)
    assert s.path == Path("/var/lib/x.db")
    assert s.description == "sqlite:/var/lib/x.db"


def test_open_store_redis_forms(tmp_path: Path) -> None:
    s = open_store("redis://10.0.0.1:6380/2", tmp_path, LIFETIME)
    assert isinstance(s, RedisStore)
    assert s.description == "redis://10.0.0.1:6380/2"


@pytest.mark.parametrize(
    ("url", "description"),
    [
        ("redis://localhost", "redis://localhost:6379/0"),
        ("redis://localhost:6380", "redis://localhost:6379/0".replace("6379", "6380")),
        ("redis://h/5", "redis://h:6379/5"),
        ("redis://h?db=5", "redis://h:6379/5"),
        ("REDIS://user:secret@h:1/0", "redis://user@h:1/0"),
        ("redis://:secret@h/0", "redis://h:6379/0"),
        ("redis://[::1]:7000/1", "redis://[::1]:7000/1"),
        ("redis+unix:///run/redis/redis.sock", "redis+unix:///run/redis/redis.sock?db=0"),
        ("unix:///run/redis.sock?db=4", "redis+unix:///run/redis.sock?db=4"),
        ("redis+unix://:pw@/run/r.sock?db=1", "redis+unix:///run/r.sock?db=1"),
        ("redis:localhost:6379", "redis://localhost:6379/0"),
        ("redis:/run/redis/redis.sock", "redis+unix:///run/redis/redis.sock?db=0"),
        ("redis:redis.sock", "redis+unix://redis.sock?db=0"),  # postsrsd: no colon = path
    ],
)
def test_parse_redis_url(url: str, description: str) -> None:
    target = parse_redis_url(url)
    assert target.description == description
    assert "secret" not in target.description


def test_parse_redis_url_credentials() -> None:
    target = parse_redis_url("redis://us%40er:p%3Aw@h/0")
    assert (target.username, target.password) == ("us@er", "p:w")


@pytest.mark.parametrize(
    "url",
    [
        "redis:",
        "redis:host:",
        "redis::6379",
        "redis:host:0",
        "redis:host:99999",
        "redis:host:port",
        "redis://",
        "redis://:6379/0",
        "redis://h:notaport/0",
        "redis://h:99999/0",
        "redis://h/notadb",
        "redis://h/1?db=2",
        "redis://h/0?timeout=3",
        "redis://h/0#frag",
        "redis+unix://relative/path",
        "redis+unix://",
        "rediss://h/0",
        "memcached://h",
    ],
)
def test_bad_redis_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis|port|database|host|path|fragment"):
        parse_redis_url(url)


@pytest.mark.parametrize("url", ["postgres://h/db", "sqlite3:x", "file:/x", "/var/lib/x.db"])
def test_open_store_rejects_unknown_schemes(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="unknown envelope database"):
        open_store(url, tmp_path, LIFETIME)


# -- the database mode end to end, without the server -----------------------------------------


async def test_fleet_decodes_each_others_bounces(redis_server: RedisServer) -> None:
    """Two MX hosts with the same secrets and one Redis: a bounce minted by one host for a
    long sender is decoded by the other, through the alias key (auto mode)."""
    sender = b"a.very.long.local.part.for.a.mailing.list+bounces-12345@lists.example.org"
    hosts = [
        (Codec([b"fleet-secret"], b"srs.example.net"), RedisStore(redis_server.url, LIFETIME))
        for _ in range(2)
    ]
    (srs1, store1), (srs2, store2) = hosts
    embedded = srs1.forward(sender, NOW)
    assert use_database(EnvelopeMode.AUTO, sender, embedded)
    k = alias_key(sender)
    await store1.put(k, sender, NOW)
    bounce_to = srs1.forward(alias_address(k), NOW)
    assert len(bounce_to.partition(b"@")[0]) <= 64
    decoded = srs2.reverse(bounce_to.lower(), NOW + 3600)  # case-munged on the way back
    assert key_of(decoded) == k
    assert await store2.get(key_of(decoded) or b"", NOW + 3600) == sender
    for _, s in hosts:
        await s.aclose()


# -- outage logging and background expiry --------------------------------------------------------


def down(outage: Outage) -> bool:
    """Whether ``outage`` holds a failure that has not been followed by a success yet."""
    return bool(outage._failing)


def test_outage_is_logged_once_and_its_end_too(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("sqlite:/x")
    caplog.set_level(logging.INFO, logger="srsd")
    outage.succeeded()
    assert not caplog.records
    for _ in range(3):
        outage.failed(StorageError("sqlite:/x: disk I/O error"))
    assert down(outage)
    assert outage.failures == 3
    assert [r.getMessage() for r in caplog.records] == [
        "envelope database unavailable, lookups fail temporarily until it is back: "
        "sqlite:/x: disk I/O error"
    ]
    caplog.clear()
    outage.succeeded()
    outage.succeeded()
    assert not down(outage)
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("envelope database sqlite:/x is back after")


def test_an_outage_of_writes_is_logged_once_while_reads_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("sqlite:/x")
    caplog.set_level(logging.INFO, logger="srsd")
    for _ in range(1000):  # a read-only file: every write fails, every read works
        outage.failed(StorageError("sqlite:/x: attempt to write a readonly database"), write=True)
        outage.succeeded()
    assert down(outage)
    assert len(caplog.records) == 1
    assert "unavailable" in caplog.records[0].getMessage()
    outage.failed(StorageError("sqlite:/x: disk I/O error"))  # reads fail too now
    outage.succeeded()  # reads are back, writes not yet
    assert down(outage)
    assert len(caplog.records) == 1
    outage.succeeded(write=True)
    assert not down(outage)
    assert len(caplog.records) == 2
    assert "is back after" in caplog.records[1].getMessage()


class FlakyStore:
    """A store whose expire fails ``failures`` times, then removes 3 entries each call."""

    description = "flaky"
    remote = False
    generation = 0
    recovered = 0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def expire(self, now: float) -> int:
        self.calls.append(now)
        if len(self.calls) <= self.failures:
            raise StorageError("flaky: down")
        return 3

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        raise NotImplementedError

    async def get(self, key: bytes, now: float) -> bytes | None:
        raise NotImplementedError

    async def check(self) -> None:
        raise NotImplementedError

    async def durability(self) -> str | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


async def test_expiry_runs_every_interval_and_survives_failures(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="srsd")
    store = FlakyStore(failures=2)
    outage = Outage(store.description)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(expire_periodically, store, outage, interval=3600, clock=lambda: 42.0)
        )
        await trio.sleep(3600 * 4 + 1)  # runs at 0, 1 h, 2 h, 3 h and 4 h
        nursery.cancel_scope.cancel()
    assert store.calls == [42.0] * 5
    assert outage.failures == 2
    assert not down(outage)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unavailable" in m]) == 1
    assert len([m for m in messages if "is back after" in m]) == 1
    assert len([m for m in messages if "3 expired entries removed" in m]) == 3


async def test_background_expiry_of_a_real_sqlite_store(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "env.sqlite", 10)
    for i in range(5):
        await s.put(key(i), b"x@y", NOW)
    await s.put(KEY, SENDER, NOW + 100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(expire_periodically, s, Outage(s.description), clock=lambda: NOW + 10)
        )
        with trio.fail_after(5):
            while await s.count() > 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert await s.get(KEY, NOW + 10) == SENDER
    await s.aclose()
