# Envelope stores: SQLite (one file, default) and Redis (a fleet), behind one async interface.
"""Where the database mode keeps ``key -> original sender`` (see :mod:`srsd.envelope.keys`).

One small interface, :class:`EnvelopeStore`, two implementations:

* :class:`SQLiteStore` - a file in the state directory; the default. Single host.
* :class:`RedisStore` - one Redis shared by every MX host of a fleet, so that any host
  decodes a bounce minted by any other. Compatible with postsrsd 2.x: same keys, same
  values, so srsd and postsrsd hosts can share it during a migration.

Both store the record ``KEY@1`` (the alias address; postsrsd 2.x's record name) with the
original sender as the value, bytes exactly as Postfix gave them, for ``lifetime`` seconds
(:func:`srsd.envelope.keys.lifetime`: the SRS maximum age plus a margin).

The trio event loop never blocks on storage: SQLite and redis-py are synchronous and run
in worker threads (``trio.to_thread.run_sync``). Every failure of a backend - refused or
lost connection, time-out, locked, read-only or full disk, corrupt file, unexpected reply -
is raised as :class:`StorageError` and nothing else, so the caller has one thing to map to
a temporary failure (``400``/``TEMP``: Postfix defers and retries, no mail is lost). Both
stores recover by themselves: SQLite reopens its file after an error, redis-py reconnects.

A store also says when it may have lost entries behind srsd's back (:attr:`EnvelopeStore.generation`
changes: a new connection to a Redis that may have restarted empty) and whether it lives in a
server that can (:attr:`EnvelopeStore.remote`): the caller then confirms with a read what it
remembers having written, before it hands out an alias (:mod:`srsd.envelope.database`).

The clock is a parameter (``now``, Unix seconds) for SQLite, which stores the expiry time
in each row; Redis expires keys by its own clock and ignores ``now``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, cast

import trio

from srsd.envelope.keys import ALIAS_DOMAIN
from srsd.envelope.location import (
    RedisTarget,
    SQLiteLocation,
    StoreLocation,
    parse_location,
    parse_redis_url,
)

if TYPE_CHECKING:
    import redis

T = TypeVar("T")
LOG = logging.getLogger("srsd.envelope.store")

#: Prefix of every Redis key, as postsrsd 2.x writes them: ``PostSRSd/KEY@1``.
REDIS_PREFIX = b"PostSRSd/"
_KEY_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MAX_KEY = 64


class StorageError(Exception):
    """The envelope store failed; the lookup should fail temporarily (and be retried)."""


def record_name(key: bytes) -> bytes:
    """The name a key is stored under: the alias address ``KEY@1``, as in postsrsd 2.x."""
    if not 0 < len(key) <= _MAX_KEY or not _KEY_BYTES.issuperset(key):
        raise ValueError(f"not an envelope key: {key!r}")
    return key + b"@" + ALIAS_DOMAIN


class EnvelopeStore(Protocol):
    """The storage interface of the database mode. Every method raises only StorageError."""

    #: Where the data lives, for logs (never contains a password).
    description: str

    @property
    def remote(self) -> bool:
        """True when the data lives in a server that can restart, be flushed or fail over
        while srsd runs (Redis): what srsd wrote there lately is confirmed before use."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever the store may have lost entries written before (a new
        connection to the server: it may have restarted empty)."""
        ...

    @property
    def recovered(self) -> int:
        """Failures the store recovered from by itself (a command retried on a new
        connection, a restart noticed): database errors no caller saw (the metric)."""
        ...

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        """Store ``sender`` under ``key`` until ``now + lifetime``; idempotent (refreshes)."""
        ...

    async def get(self, key: bytes, now: float) -> bytes | None:
        """The sender stored under ``key``, or None if there is none or it has expired."""
        ...

    async def expire(self, now: float) -> int:
        """Delete entries expired at ``now``; return how many (0 where storage does it)."""
        ...

    async def check(self) -> None:
        """Open or connect now and raise StorageError if the store is not usable."""
        ...

    async def durability(self) -> str | None:
        """Why acknowledged writes could be lost on a crash of the store, or None if they
        cannot; raises StorageError when the store cannot be asked."""
        ...

    async def aclose(self) -> None:
        """Release the connection; the store is unusable afterwards."""
        ...


class Outage:
    """Log a storage outage once: its first failure and its end, nothing in between.

    Call :meth:`failed` with each StorageError and :meth:`succeeded` after each successful
    operation, both saying whether the operation wrote; :attr:`failures` counts every
    failure (a metric). One tracker per store, shared by every caller. An outage of writes
    (a read-only file, a full disk, a Redis replica) ends only with a write that works, not
    with the reads that go on working meanwhile, so it is logged once however reads and
    writes alternate; a write that works ends any outage (what can write can read).
    """

    def __init__(self, description: str, logger: logging.Logger = LOG) -> None:
        self.description = description
        self.logger = logger
        self.failures = 0
        self._failing: set[bool] = set()  # the kinds failing now: True for writes
        self._since = 0.0

    def failed(self, err: StorageError, *, write: bool = False) -> None:
        """Count a failure; log a warning if it starts an outage."""
        self.failures += 1
        if not self._failing:
            self._since = time.monotonic()
            self.logger.warning(
                "envelope database unavailable, lookups fail temporarily until it is back: %s",
                err,
            )
        self._failing.add(write)

    def succeeded(self, *, write: bool = False) -> None:
        """Note a success; log the end of an outage if this ends it."""
        if not self._failing:
            return
        if write:
            self._failing.clear()
        else:
            self._failing.discard(False)
        if not self._failing:
            self.logger.warning(
                "envelope database %s is back after %.1f s",
                self.description,
                time.monotonic() - self._since,
            )


async def expire_periodically(
    store: EnvelopeStore,
    outage: Outage,
    *,
    interval: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> NoReturn:
    """Run ``store.expire(clock())`` now and then every ``interval`` seconds, forever.

    Start it in the server's nursery (``nursery.start_soon(expire_periodically, store,
    outage)``); cancel the nursery to stop it. A failure is reported to ``outage`` and
    retried at the next interval; lookups are never held up for long (see
    :meth:`SQLiteStore.expire`). For Redis it costs one ``PING`` (see :meth:`RedisStore.expire`).
    """
    write = not store.remote  # a SQLite expiry deletes rows; Redis's only pings
    while True:
        try:
            removed = await store.expire(clock())
        except StorageError as err:
            outage.failed(err, write=write)
        else:
            outage.succeeded(write=write)
            if removed:
                outage.logger.info("envelope database: %d expired entries removed", removed)
        await trio.sleep(interval)


class _ThreadedStore:
    """What both stores share: a synchronous client used from worker threads, at most
    ``_limiter``'s worth at a time, every failure turned into :class:`StorageError`. A
    worker thread never logs (srsd's log writer belongs to the trio thread): it leaves a
    warning in :attr:`_notes`, logged when the operation returns (:meth:`_in_thread`)."""

    description: str
    _closed: bool
    _limiter: trio.CapacityLimiter
    _notes: list[str]

    async def _in_thread(
        self, call: Callable[[Callable[[Any], T]], T], op: Callable[[Any], T], limiter: Any
    ) -> T:
        """``call(op)`` in a worker thread under ``limiter``, then the notes it left logged."""
        if self._closed:
            raise StorageError(f"{self.description}: store is closed")
        try:
            return await trio.to_thread.run_sync(call, op, limiter=limiter)
        finally:
            while self._notes:
                LOG.warning("%s", self._notes.pop(0))

    def _call(self, op: Callable[[Any], T]) -> T:
        """Run ``op`` on the client in this (worker) thread; any failure is a StorageError."""
        try:
            return op(self._client())
        except Exception as err:
            raise StorageError(f"{self.description}: {err}") from err

    def _client(self) -> Any:
        raise NotImplementedError

    async def _run(self, op: Callable[[Any], T]) -> T:
        return await self._in_thread(self._call, op, self._limiter)


# -- SQLite -----------------------------------------------------------------------------------

# postsrsd 2.x's schema, so either daemon can take over the other's file, except that the
# value is declared BLOB (senders are bytes; postsrsd declares TEXT, and a TEXT column keeps
# the BLOBs srsd writes, so srsd can use postsrsd's file too). The key keeps postsrsd's
# "UNIQUE ON CONFLICT REPLACE": postsrsd's plain INSERT of a known sender relies on it.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    k TEXT NOT NULL UNIQUE ON CONFLICT REPLACE,
    v BLOB NOT NULL,
    lt INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ltidx ON kv (lt);
"""
_PUT = (
    "INSERT INTO kv (k, v, lt) VALUES (?, ?, ?)"
    " ON CONFLICT (k) DO UPDATE SET v = excluded.v, lt = excluded.lt"
)
_GET = "SELECT v FROM kv WHERE k = ? AND lt > ?"
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv'"
_EXPIRE = "DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE lt <= ? LIMIT ?)"


def _is_readonly(err: BaseException | None) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_READONLY


#: The mode of every file srsd's SQLite store creates: the table maps keys to real senders.
PRIVATE_FILE = 0o600
_SIDE_FILES = ("", "-wal", "-shm")


def make_private(path: Path) -> list[str]:
    """Create ``path`` empty with mode 0600 if missing, whatever the umask; and take group and
    others' access away from it and its ``-wal``/``-shm`` when this user owns them (files an
    older srsd made 0644 in a directory every user can enter); returns what it changed, to
    log. SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode,
    so they follow."""
    notes: list[str] = []
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, PRIVATE_FILE)  # exactly 0600, even under a umask like 0277
        finally:
            os.close(fd)
        return notes
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            info = side.lstat()
            if info.st_uid == os.geteuid() and info.st_mode & 0o077 and side.is_file():
                side.chmod(info.st_mode & 0o700)
                notes.append(
                    f"envelope database file {side} was readable by other users (mode "
                    f"{info.st_mode & 0o777:04o}): made it private"
                )
    return notes


class _NoReader(Exception):
    """The file or its table does not exist yet: the writer creates them."""


class SQLiteStore(_ThreadedStore):
    """Envelope store in one SQLite file (WAL mode), for a single host.

    * Table ``kv(k, v, lt)`` with an index on ``lt``, as postsrsd 2.x: ``k`` is ``KEY@1``,
      ``v`` the sender (BLOB), ``lt`` the Unix time the entry expires.
    * Writes are upserts that refresh the value and the expiry time (idempotent).
      ``synchronous=FULL``: an entry is on disk before its SRS address leaves.
    * Reads ignore expired rows, so an entry is gone on time even before :meth:`expire`.
    * :meth:`expire` deletes in batches of ``batch_size`` rows, each its own short
      transaction, so writes queued behind it wait for one batch at most.
    * Two connections, each used by one worker thread at a time (a ``CapacityLimiter(1)``
      each; the OS thread may change between calls, hence ``check_same_thread=False``): one
      writes, the other (opened read-only) only reads, so that a lookup of an existing entry
      never queues behind writes. In WAL mode a read needs no lock a writer holds: while
      another process holds the write lock, writes wait up to ``busy_timeout`` seconds then
      fail, and reads go on.
    * The file is created 0600 whatever the umask (:func:`make_private`); ``-wal`` and
      ``-shm`` take its mode.
    * After any error a connection is closed and the next operation opens the file
      again: a file that was unwritable (or missing, or locked) works again as soon as the
      condition is gone, without a restart. Connections are opened lazily.
    """

    remote = False
    generation = 0
    recovered = 0

    def __init__(
        self,
        path: Path | str,
        lifetime: float,
        *,
        busy_timeout: float = 2.0,
        batch_size: int = 1000,
    ) -> None:
        if lifetime <= 0 or busy_timeout < 0 or batch_size < 1:
            raise ValueError("lifetime and batch_size must be positive, busy_timeout >= 0")
        self.path = Path(path)
        self.lifetime = lifetime
        self.busy_timeout = busy_timeout
        self.batch_size = batch_size
        self.description = f"sqlite:{self.path}"
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._notes = []

    # -- worker-thread side ----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self._notes.extend(make_private(self.path))
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit: every statement is its own transaction
            check_same_thread=False,
        )
        try:
            conn.text_factory = bytes  # values postsrsd wrote as TEXT come back as bytes
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            exists = conn.execute(_HAS_TABLE).fetchone()
            if exists is None:  # only then: a read-only file still serves lookups
                conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        if self._reader is not None:
            return self._reader
        if not self.path.exists():
            raise _NoReader
        uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.text_factory = bytes
            exists = conn.execute(_HAS_TABLE).fetchone()
        except BaseException:
            conn.close()
            raise
        if exists is None:
            conn.close()
            raise _NoReader
        self._reader = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to do
                conn.close()

    def _drop_reader(self) -> None:
        conn, self._reader = self._reader, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _client(self) -> sqlite3.Connection:
        return self._open()

    def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return super()._call(op)
        except StorageError as err:
            self._drop()
            # SQLite opens a file it may not write read-only, silently; such a
            # connection, kept from an outage, fails every write after it: open again.
            if not _is_readonly(err.__cause__):
                raise
        try:
            return super()._call(op)
        except StorageError:
            self._drop()
            raise

    def _read_call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return op(self._open_reader())
        except _NoReader:
            raise
        except Exception as err:
            self._drop_reader()
            raise StorageError(f"{self.description}: {err}") from err

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read on the read-only connection; through the writer (which creates the
        file and the table) while they do not exist."""
        try:
            return await self._in_thread(self._read_call, op, self._read_limiter)
        except _NoReader:
            return await self._run(op)

    # -- trio side ---------------------------------------------------------------------------

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        """Store ``sender`` under ``key`` until ``now + lifetime`` (insert or refresh)."""
        name = record_name(key).decode("ascii")
        expires = math.floor(now + self.lifetime)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_PUT, (name, sender, expires))

        await self._run(op)

    async def get(self, key: bytes, now: float) -> bytes | None:
        """The sender stored under ``key``, or None if missing or expired at ``now``."""
        name = record_name(key).decode("ascii")

        def op(conn: sqlite3.Connection) -> object:
            row = conn.execute(_GET, (name, math.floor(now))).fetchone()
            return None if row is None else row[0]

        value = await self._read(op)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise StorageError(f"{self.description}: unexpected value type {type(value)}")
        return value or None

    async def expire(self, now: float) -> int:
        """Delete rows expired at ``now``, one batch per transaction; return the count."""
        cutoff = math.floor(now)

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(_EXPIRE, (cutoff, self.batch_size)).rowcount

        total = 0
        while True:
            deleted = await self._run(op)
            total += deleted
            if deleted < self.batch_size:
                return total
            await trio.lowlevel.checkpoint()

    async def count(self) -> int:
        """Rows in the table, expired or not (for metrics and tests)."""

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM kv").fetchone()
            return int(row[0])

        return await self._read(op)

    async def check(self) -> None:
        """Open the file (creating it 0600, and the table, if needed) and raise StorageError
        if unusable."""
        await self._run(lambda conn: conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall())

    async def durability(self) -> str | None:
        """None: ``synchronous = FULL`` puts every entry on disk before srsd answers."""
        return None

    async def aclose(self) -> None:
        """Close both connections (after any operation in flight)."""
        async with self._limiter, self._read_limiter:
            self._closed = True
            await trio.to_thread.run_sync(self._drop)
            await trio.to_thread.run_sync(self._drop_reader)


# -- Redis ------------------------------------------------------------------------------------


class _Connections:
    """Counts the connections redis-py makes (its ``redis_connect_func``): its pool replaces
    a connection the server closed without telling anyone, and each new one may reach a
    server that restarted empty."""

    def __init__(self) -> None:
        self.made = 0
        self._lock = threading.Lock()

    def __call__(self, connection: Any) -> None:
        connection.on_connect()  # what redis-py does without a connect function
        with self._lock:
            self.made += 1


def _redis_client(
    target: RedisTarget, timeout: float, max_connections: int, on_connect: _Connections
) -> redis.Redis:
    """A redis-py client for ``target``; imported here: redis-py is an optional dependency."""
    try:
        import redis  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415
    except ImportError:
        raise ValueError(
            "a redis envelope database needs the Python package 'redis' (redis-py): "
            "pip install 'srsd[redis]', or apt install python3-redis"
        ) from None
    return redis.Redis(
        host=target.host or "localhost",  # ignored for a unix socket
        port=target.port,
        unix_socket_path=target.unix_path,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,  # TCP only, as postsrsd 2.0.5+
        # No retry inside redis-py, where it would be invisible: RedisStore retries itself
        # and counts each retry as a database error.
        retry=Retry(NoBackoff(), 0),
        redis_connect_func=cast(Callable[[], None], on_connect),  # called with the connection
        max_connections=max_connections,
    )


def _persistence_warning(client: redis.Redis, description: str) -> str | None:
    """Why ``client``'s server would lose acknowledged writes on a crash, or None.

    ``CONFIG GET appendonly`` / ``appendfsync``; where CONFIG is renamed away or not allowed,
    ``INFO persistence`` (which tells whether AOF is on, not its fsync policy).
    """
    from redis.exceptions import ResponseError  # noqa: PLC0415

    fsync: str | None
    try:
        aof = str(client.config_get("appendonly").get("appendonly", ""))
        fsync = str(client.config_get("appendfsync").get("appendfsync", ""))
    except ResponseError:
        try:
            info = client.info("persistence")
        except ResponseError:
            return (
                f"cannot tell whether Redis at {description} keeps what srsd writes across a "
                "crash (CONFIG and INFO are not allowed): make sure it runs with "
                "appendonly yes and appendfsync always"
            )
        aof = "yes" if info.get("aof_enabled") else "no"
        fsync = None
    if aof != "yes":
        return (
            f"Redis at {description} runs without AOF (appendonly no): a crash or restart of "
            "redis-server loses every alias written since its last snapshot, and bounces to "
            "the SRS addresses srsd answered with them are refused; set appendonly yes and "
            "appendfsync always (README: the envelope database)"
        )
    if fsync == "always":
        return None
    if fsync is None:
        return (
            f"Redis at {description} has AOF on but its appendfsync policy cannot be read "
            "(CONFIG is not allowed): with anything but appendfsync always, a crash of the "
            "host loses the last acknowledged writes"
        )
    lost = "the last second or two" if fsync == "everysec" else "up to about 30 s"
    return (
        f"Redis at {description} runs with appendfsync {fsync}: a crash of the host or a "
        f"power loss loses {lost} of acknowledged writes (aliases whose bounces are then "
        "refused); appendfsync always loses none"
    )


class RedisStore(_ThreadedStore):
    """Envelope store in Redis, shared by a fleet; keys and values as postsrsd 2.x.

    * Key ``PostSRSd/KEY@1``, value the sender bytes, written with ``SET ... EX lifetime``
      (idempotent: a rewrite refreshes the expiry); read with ``GET``. Redis expires keys
      itself, so :meth:`expire` deletes nothing (it only pings) and ``now`` is not used.
    * redis-py's synchronous client runs in worker threads (at most ``max_threads`` at a
      time, each with its own pooled connection), so the trio loop never waits on Redis.
    * Connect and read time-outs (``timeout``, 2 s) bound every operation during an outage
      (an unresponsive server costs one time-out); a refused connection fails at once.
      A broken connection is retried once at once, which covers pooled connections that
      went stale while Redis restarted; the retry is counted (:attr:`recovered`).
    * Every new connection (redis-py's pool also replaces closed ones silently) changes
      :attr:`generation`: it may reach a server that restarted empty. The server's
      ``run_id`` is then read (``INFO server``) and a changed one logged and counted.
    * Commands used: ``GET``, ``SET``, ``PING`` (and ``SELECT`` for a database other than 0),
      so a Redis ACL user can be this narrow:
      ``ACL SETUSER srsd on >PASSWORD ~PostSRSd/* -@all +get +set +ping +select``; with
      ``+info +config|get`` too, srsd also notices restarts by their ``run_id`` and checks the
      server's persistence at start (:meth:`durability`).
    """

    remote = True

    def __init__(
        self,
        url: str | RedisTarget,
        lifetime: float,
        *,
        timeout: float = 2.0,
        max_threads: int = 8,
    ) -> None:
        if lifetime <= 0 or timeout <= 0 or max_threads < 1:
            raise ValueError("lifetime, timeout and max_threads must be positive")
        target = parse_redis_url(url) if isinstance(url, str) else url
        self._connections = _Connections()
        self._redis = _redis_client(target, timeout, max_threads, self._connections)
        self.lifetime = lifetime
        self.description = target.description
        self._ttl = max(1, math.ceil(lifetime))
        self._limiter = trio.CapacityLimiter(max_threads)
        self._closed = False
        self._notes = []
        self._lock = threading.Lock()
        self._retried = 0
        self._restarts = 0
        self._run_id: str | None = None
        self._checked = 0  # connections made when the run_id was last read
        self._info_allowed = True

    @property
    def generation(self) -> int:
        """Connections made so far: a new one may reach a server that lost its data."""
        return self._connections.made

    @property
    def recovered(self) -> int:
        """Commands retried on a new connection, plus restarts noticed by ``run_id``."""
        return self._retried + self._restarts

    def _client(self) -> redis.Redis:
        return self._redis

    def _call(self, op: Callable[[redis.Redis], T]) -> T:
        from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415

        try:
            try:
                result = op(self._redis)
            except RedisConnectionError:
                # A pooled connection the server broke (it restarted, or dropped us): once
                # more, on a new one. A retry that works is counted here (redis-py's own
                # retry hid these); one that fails is the caller's outage.
                result = op(self._redis)
                with self._lock:
                    self._retried += 1
        except Exception as err:
            raise StorageError(f"{self.description}: {err}") from err
        if self._connections.made != self._checked:
            self._check_identity()
        return result

    def _check_identity(self) -> None:
        """After new connections: the server's ``run_id``; a changed one means a restart
        (or a fail-over), which may have lost entries. Never raises."""
        made = self._connections.made
        if not self._info_allowed:
            self._checked = made
            return
        from redis.exceptions import RedisError, ResponseError  # noqa: PLC0415

        try:
            run_id = str(self._redis.info("server").get("run_id", ""))
        except ResponseError:  # INFO not allowed for this user: connections still count
            self._info_allowed = False
            return
        except RedisError:
            return  # the next operation will tell
        with self._lock:
            self._checked = made
            before, self._run_id = self._run_id, run_id
            if before is None or before == run_id:
                return
            self._restarts += 1
        self._notes.append(
            f"envelope database {self.description} restarted or failed over (run_id "
            f"{run_id}, was {before}): entries written before are checked again before srsd "
            "relies on them"
        )

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        """``SET PostSRSd/KEY@1 sender EX lifetime`` (``now`` unused: Redis keeps time)."""
        name = REDIS_PREFIX + record_name(key)
        await self._run(lambda client: client.set(name, sender, ex=self._ttl))

    async def get(self, key: bytes, now: float) -> bytes | None:
        """``GET PostSRSd/KEY@1``: the sender, or None once Redis has expired it."""
        name = REDIS_PREFIX + record_name(key)
        value: object = await self._run(lambda client: client.get(name))
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise StorageError(f"{self.description}: unexpected reply {type(value)}")
        return value or None

    async def expire(self, now: float) -> int:
        """``PING`` only (Redis deletes expired keys itself); returns 0.

        Not a no-op: :func:`expire_periodically` reports each expiry's success or failure
        to the outage tracker, and a no-op "success" while Redis is down would log the end
        of an outage that is still going on (and then its start again at the next lookup).
        """
        await self.check()
        return 0

    async def check(self) -> None:
        """``PING`` the server; raise StorageError if it does not answer."""
        await self._run(lambda client: client.ping())

    async def durability(self) -> str | None:
        """Why this Redis would lose acknowledged writes on a crash (AOF off, or an
        ``appendfsync`` other than ``always``), or None."""
        return await self._run(lambda client: _persistence_warning(client, self.description))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        self._closed = True
        await trio.to_thread.run_sync(self._call, lambda client: client.close())


def open_store(location: StoreLocation | str, state_dir: Path, lifetime: float) -> EnvelopeStore:
    """The store ``location`` names (setting ``envelope_database``, parsed by
    :func:`~srsd.envelope.location.parse_location` when given as text, which raises
    ValueError for a bad value); a relative SQLite path is inside ``state_dir``. Nothing
    is opened yet: call :meth:`EnvelopeStore.check` to find out whether the store works."""
    if isinstance(location, str):
        location = parse_location(location)
    if isinstance(location, SQLiteLocation):
        return SQLiteStore(location.in_dir(state_dir), lifetime)
    return RedisStore(location, lifetime)
