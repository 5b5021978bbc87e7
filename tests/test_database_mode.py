# Envelope database mode end to end: real `srsd serve` processes on SQLite and Redis, both wires.
"""``original_envelope`` = embedded | database | auto, as a postmaster runs it.

Every test starts real ``srsd serve`` processes (:class:`Srsd`: tcp_table ports plus a
socketmap on ``inet:127.0.0.1:PORT``, an empty ``--config``, the state directory
``WORKDIR/state``) and talks to them over both wire protocols. Expected addresses come from
an independent oracle (HMAC-SHA1 and ``base32hex(SHA1(sender))`` computed here, not by srsd),
for the time before and after each lookup (a day may turn). What is checked:

* the modes: embedded never touches a database; database aliases every ordinary sender as
  ``SRS0=HHHH=TT=1=KEY@forwarder.test`` (local part <= 64 octets); auto only the senders
  whose embedded local part would exceed 64 octets; SRS senders are never aliased;
* reverse decodes aliases and embedded addresses in every mode, across restarts and mode
  changes on the same state directory; keys are deterministic, writes idempotent,
  case-smashed aliases decode, a missing entry is ``500``/``NOTFOUND`` (never a ``400``);
* outages: an immutable SQLite file (``chattr +i``) and a stopped Redis give ``400``/``TEMP``,
  are logged once per outage, and heal without a restart; a store that is down at start;
* Redis shared by two hosts (the fleet); the write flood cap.

Every wait is bounded (:data:`TIMEOUT`), every process started here is stopped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio

from srsd.config import settings as srsd_settings
from srsd.envelope import EnvelopeMode, keys
from srsd.envelope.database import EnvelopeDatabase
from srsd.envelope.store import RedisStore, SQLiteStore, StorageError
from srsd.serve.answers import Lookups, MapService
from srsd.srs.codec import Codec
from srsd.srs.policy import Decision, Outcome, Policy, Role
from srsd.wire import Wire
from tests.harness.clients import hex_quote as quote
from tests.harness.clients import unquote
from tests.harness.immutable import immutable
from tests.harness.local_users import SECOND_UID, require_root, run_as
from tests.harness.metrics import metric_samples
from tests.harness.ports import free_port
from tests.harness.redis_server import RedisServer
from tests.harness.srsd_process import SECRET, SrsdProcess, lookup

TIMEOUT = 10.0  # the bound on every wait in this file
DOMAIN = b"forwarder.test"
DAY = 86400
B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DB_NAME = "envelopes.sqlite"
UNAVAILABLE = "envelope database unavailable"  # the first line of an outage
BACK = re.compile(r"envelope database \S+ is back after")
CAP_REACHED = "envelope database write cap"
# Senders: one short, and long ones whose embedded SRS local part is far over 64 octets.
ALICE = b"alice@origin.test"
LONG_LOCAL = b"a-rather-long-mailing-list-bounce-address.with-a-tracking-id"
ALIAS_RE = re.compile(rb"SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}=1=[0-9A-V]{32}@forwarder\.test")


def long_sender(n: int | str) -> bytes:
    return LONG_LOCAL + f"-{n}@origin.test".encode()


# -- an independent oracle ---------------------------------------------------------------------


def stamp(when: float) -> bytes:
    day = int(when // DAY)
    return bytes((B32[(day >> 5) & 31], B32[day & 31]))


def srs_hash(*fields: bytes, secret: bytes = SECRET) -> bytes:
    """First 4 characters of base64url(HMAC-SHA1(secret, lower-cased fields))."""
    mac = hmac.new(secret, b"".join(fields).lower(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(mac)[:4]


def srs0(local: bytes, host: bytes, when: float) -> bytes:
    ts = stamp(when)
    return b"SRS0=%s=%s=%s=%s@%s" % (srs_hash(ts, host, local), ts, host, local, DOMAIN)


def key_of(sender: bytes) -> bytes:
    """postsrsd 2.x's key: base32hex of the SHA-1 of the sender bytes, upper case."""
    return base64.b32hexencode(hashlib.sha1(sender).digest())


def embedded(sender: bytes, t0: float) -> set[bytes]:
    """The embedded SRS0 forms of ``sender`` for a lookup made between ``t0`` and now."""
    local, _, host = sender.rpartition(b"@")
    return {srs0(local, host, t) for t in (t0, time.time())}


def aliased(sender: bytes, t0: float) -> set[bytes]:
    """The database forms ``SRS0=HHHH=TT=1=KEY@forwarder.test`` of ``sender``."""
    return {srs0(key_of(sender), b"1", t) for t in (t0, time.time())}


def tamper(address: bytes) -> bytes:
    """``address`` with its first hash character changed (in every spelling)."""
    new = b"x" if address[5:6].lower() != b"x" else b"y"
    return address[:5] + new + address[6:]


def local_part(address: bytes) -> bytes:
    return address.rpartition(b"@")[0]


# -- a real srsd with a socketmap endpoint -----------------------------------------------------


def socketmap_lookup(port: int, name: bytes, key: bytes) -> bytes:
    """One socketmap request on a new connection; returns the reply's payload."""
    payload = name + b" " + key
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"%d:%s," % (len(payload), payload))
        buffer = b""
        while True:
            match = re.match(rb"(\d+):", buffer)
            if match and len(buffer) > match.end() + int(match[1]):
                end = match.end() + int(match[1])
                assert buffer[end : end + 1] == b",", buffer
                return buffer[match.end() : end]
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError(f"server closed after {buffer!r}")
            buffer += chunk


class Srsd(SrsdProcess):
    """``srsd serve`` with a socketmap on ``inet:127.0.0.1:socketmap_port`` and helpers."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.socketmap_port = free_port("127.0.0.1")
        config = workdir / "empty.toml"
        config.write_text("# no settings\n")
        # No SRS_* variable of this machine may change the settings under test (but the
        # suite's SRS_ALLOW_ROOT, tests/conftest.py, stays: the tests run as root).
        clean = {k: "" for k in os.environ if k.startswith("SRS_") and k != "SRS_ALLOW_ROOT"}
        super().__init__(
            workdir,
            extra_args=[
                "--config",
                str(config),
                "--socketmap",
                f"inet:127.0.0.1:{self.socketmap_port}",
                *args,
            ],
            env=clean,
        )
        self.state_dir = workdir / "state"
        self.db_path = self.state_dir / DB_NAME
        self._log_start = len(self.log())

    def forward(self, key: bytes) -> bytes:
        """tcp_table forward lookup: the reply line, its text %XX-decoded."""
        return unquote(lookup(self.forward_port, quote(key), timeout=TIMEOUT))

    def reverse(self, key: bytes) -> bytes:
        """tcp_table reverse lookup: the reply line, its text %XX-decoded."""
        return unquote(lookup(self.reverse_port, quote(key), timeout=TIMEOUT))

    def sm(self, name: bytes, key: bytes) -> bytes:
        return socketmap_lookup(self.socketmap_port, name, key)

    def rewrite(self, key: bytes) -> bytes:
        """Forward ``key`` over tcp_table and socketmap; both must agree; the address."""
        reply = self.forward(key)
        assert reply.startswith(b"200 "), reply + self.context()
        assert self.sm(b"forward", key) == b"OK " + reply[4:], self.context()
        return reply[4:]

    def decode(self, address: bytes) -> bytes:
        """Reverse ``address`` over tcp_table and socketmap; both must agree; the result."""
        reply = self.reverse(address)
        assert reply.startswith(b"200 "), reply + self.context()
        assert self.sm(b"reverse", address) == b"OK " + reply[4:], self.context()
        return reply[4:]

    def my_log(self) -> str:
        """What this process logged (the log file is shared by restarts in one workdir)."""
        return self.log()[self._log_start :]

    def count(self, pattern: str | re.Pattern[str]) -> int:
        if isinstance(pattern, str):
            return self.my_log().count(pattern)
        return len(pattern.findall(self.my_log()))

    def context(self) -> bytes:
        return f"\n--- srsd log ---\n{self.my_log()}".encode()


def rows(db: Path, sender: bytes | None = None) -> int:
    """Rows in the SQLite envelope database (for ``sender``'s key only, if given)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        if sender is None:
            return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])
        name = (key_of(sender) + b"@1").decode()
        return int(conn.execute("SELECT count(*) FROM kv WHERE k = ?", (name,)).fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def database_srsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srsd]:
    with Srsd(tmp_path_factory.mktemp("db"), "--original-envelope", "database") as server:
        yield server


@pytest.fixture(scope="module")
def auto_srsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srsd]:
    with Srsd(tmp_path_factory.mktemp("auto"), "--original-envelope", "auto") as server:
        yield server


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start again."""
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    try:
        yield server.start()
    finally:
        server.stop()


# -- the modes ---------------------------------------------------------------------------------


def test_embedded_mode_never_touches_a_database(tmp_path: Path) -> None:
    t0 = time.time()
    with Srsd(tmp_path) as srsd:  # embedded is the default
        for sender in (ALICE, long_sender(1), long_sender(2)):
            address = srsd.rewrite(sender)
            assert address in embedded(sender, t0), address
            assert srsd.decode(address) == sender
        assert len(local_part(srsd.rewrite(long_sender(1)))) > 64  # stays embedded
        # A validly signed alias bounce (from an earlier database mode elsewhere): a clean
        # miss, without creating a database file and without a temporary failure.
        alias = next(iter(aliased(b"never-forwarded@origin.test", time.time())))
        assert srsd.reverse(alias).startswith(b"500 "), srsd.context()
        assert srsd.sm(b"reverse", alias).startswith(b"NOTFOUND "), srsd.context()
    state = tmp_path / "state"
    found = sorted(p.name for p in state.iterdir()) if state.exists() else []
    assert not [name for name in found if name.startswith(DB_NAME)], found
    assert UNAVAILABLE not in srsd.log()


@pytest.mark.parametrize(
    "sender", [ALICE, long_sender("db"), b'"a b"@origin.test', "jörg@bücher.example".encode()]
)
def test_database_mode_aliases_every_ordinary_sender(database_srsd: Srsd, sender: bytes) -> None:
    srsd = database_srsd
    t0 = time.time()
    address = srsd.rewrite(sender)
    assert address in aliased(sender, t0), address + srsd.context()
    assert ALIAS_RE.fullmatch(address), address
    assert len(local_part(address)) <= 64
    assert srsd.decode(address) == sender
    assert rows(srsd.db_path, sender) == 1


def test_auto_mode_aliases_only_senders_over_64_octets(auto_srsd: Srsd) -> None:
    srsd = auto_srsd
    host = b"origin.test"
    # The embedded local part is SRS0=HHHH=TT=origin.test=LOCAL: 25 octets + LOCAL.
    fits, over = b"f" * 39 + b"@" + host, b"o" * 40 + b"@" + host
    t0 = time.time()
    for sender in (ALICE, fits):
        address = srsd.rewrite(sender)
        assert address in embedded(sender, t0), address
        assert len(local_part(address)) <= 64
        assert srsd.decode(address) == sender
    assert len(local_part(srsd.rewrite(fits))) == 64  # the boundary itself stays embedded
    for sender in (over, long_sender("auto")):
        address = srsd.rewrite(sender)
        assert address in aliased(sender, t0), address + srsd.context()
        assert len(local_part(address)) <= 64
        assert srsd.decode(address) == sender
    assert rows(srsd.db_path) == 2  # only the two long senders were written


@pytest.mark.parametrize("mode", ["database", "auto"])
def test_srs_senders_are_never_aliased(database_srsd: Srsd, auto_srsd: Srsd, mode: str) -> None:
    srsd = database_srsd if mode == "database" else auto_srsd
    before = rows(srsd.db_path)
    foreign = [
        b"SRS0=abcd=AB=orig.example=user@other.example",
        b"SRS1=wxyz=other.example==abcd=AB=orig.example=user@third.example",
        # Its SRS1 form is far over 64 octets: auto mode must still not alias it.
        b"SRS0=abcd=AB=" + b"h" * 40 + b".example=" + LONG_LOCAL + b"@other.example",
    ]
    for sender in foreign:
        address = srsd.rewrite(sender)
        assert address.startswith(b"SRS1="), address
        assert not ALIAS_RE.fullmatch(address)
        # SRS1 decodes to the previous hop's SRS0 address.
        assert srsd.decode(address).startswith(b"SRS0="), srsd.context()
    assert rows(srsd.db_path) == before


def test_embedded_addresses_decode_in_every_mode(database_srsd: Srsd, auto_srsd: Srsd) -> None:
    now = time.time()
    for sender in (ALICE, long_sender("old")):
        address = next(iter(embedded(sender, now)))  # as an embedded-mode host minted it
        for srsd in (database_srsd, auto_srsd):
            assert srsd.decode(address) == sender
            assert srsd.decode(address.lower()) == sender.lower()


def test_alias_keys_are_deterministic_and_writes_idempotent(database_srsd: Srsd) -> None:
    srsd = database_srsd
    sender = long_sender("twice")
    first = srsd.rewrite(sender)
    second = srsd.rewrite(sender)
    assert first == second
    assert local_part(first).rpartition(b"=")[2] == key_of(sender)
    assert rows(srsd.db_path, sender) == 1
    # The key is of the bytes exactly as given: another case is another sender, another key.
    upper = sender.upper()
    assert srsd.decode(srsd.rewrite(upper)) == upper
    assert rows(srsd.db_path, upper) == 1


def test_case_smashed_alias_addresses_decode(database_srsd: Srsd) -> None:
    srsd = database_srsd
    sender = b"Mixed.Case-Sender@Origin.TEST"
    address = srsd.rewrite(sender)
    for smashed in (address.lower(), address.upper()):
        assert srsd.decode(smashed) == sender  # the original, exactly as it was written


def test_unknown_alias_is_a_clean_not_found(database_srsd: Srsd) -> None:
    srsd = database_srsd
    never_seen = b"never-forwarded@origin.test"
    address = next(iter(aliased(never_seen, time.time())))  # valid hash, no entry
    assert srsd.reverse(address).startswith(b"500 "), srsd.context()
    assert srsd.sm(b"reverse", address).startswith(b"NOTFOUND "), srsd.context()
    # A bad hash on an alias is refused by the hash check, before any lookup.
    assert srsd.reverse(tamper(address)).startswith(b"500 ")
    assert UNAVAILABLE not in srsd.my_log()


# -- restarts and mode changes on the same state directory -------------------------------------


def test_aliases_survive_restarts_and_decode_in_every_mode(tmp_path: Path) -> None:
    t0 = time.time()
    senders = [ALICE, long_sender("persist")]
    with Srsd(tmp_path, "--original-envelope", "database") as srsd:
        minted = {s: srsd.rewrite(s) for s in senders}
    for sender, address in minted.items():
        assert address in aliased(sender, t0)
    db = tmp_path / "state" / DB_NAME
    assert rows(db) == 2

    # Same mode, new process: old bounces decode; writing a sender again changes nothing.
    with Srsd(tmp_path, "--original-envelope", "database") as srsd:
        for sender, address in minted.items():
            assert srsd.decode(address) == sender
            assert srsd.rewrite(sender) in aliased(sender, t0)
    assert rows(db) == 2

    # The mode switched off or to auto: bounces in flight still come home.
    for mode in ("embedded", "auto"):
        with Srsd(tmp_path, "--original-envelope", mode) as srsd:
            for sender, address in minted.items():
                assert srsd.decode(address) == sender, srsd.context()
                assert srsd.decode(address.lower()) == sender
            # ...while new mail follows the new mode.
            fresh = srsd.rewrite(b"bob@origin.test")
            assert fresh in embedded(b"bob@origin.test", t0)
        assert UNAVAILABLE not in srsd.my_log()
    assert rows(db) == 2


# -- SQLite outage -----------------------------------------------------------------------------


def timed(call: Callable[..., bytes], *args: bytes) -> tuple[bytes, float]:
    start = time.monotonic()
    reply = call(*args)
    return reply, time.monotonic() - start


def test_sqlite_outage_defers_logs_once_and_heals(tmp_path: Path) -> None:
    with Srsd(tmp_path, "--original-envelope", "auto") as srsd:
        t0 = time.time()
        old = long_sender("before")
        old_address = srsd.rewrite(old)
        assert old_address in aliased(old, t0)
        wal = srsd.db_path.with_name(DB_NAME + "-wal")
        assert wal.exists()
        for outage in (1, 2):
            new = long_sender(f"during-{outage}")
            with immutable(srsd.state_dir, srsd.db_path, wal):
                for _ in range(3):
                    reply, took = timed(srsd.forward, new)
                    assert reply.startswith(b"400 "), reply + srsd.context()
                    assert took < 5
                    reply, took = timed(srsd.sm, b"forward", new)
                    assert reply.startswith(b"TEMP "), reply + srsd.context()
                    assert took < 5
                # A sender that needs no database is still served.
                assert srsd.rewrite(ALICE) in embedded(ALICE, t0)
                assert srsd.count(UNAVAILABLE) == outage, srsd.context()
            # Writable again: the same process recovers, no restart.
            address = srsd.rewrite(new)
            assert address in aliased(new, t0)
            assert srsd.decode(address) == new
            assert srsd.decode(old_address) == old
            assert srsd.count(BACK) == outage, srsd.context()
        assert srsd.count(UNAVAILABLE) == 2  # once per outage, never per lookup


READ_AS_OTHER = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").read(1)
    except PermissionError:
        print("denied")
    else:
        print("read")
"""


def readable_by_another_user(*paths: Path) -> list[bool]:
    """Whether uid :data:`SECOND_UID` (no group of ours) can read each of ``paths``."""
    proc = run_as(SECOND_UID, READ_AS_OTHER, [str(p) for p in paths])
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return [line == "read" for line in out.decode().split()]


def test_every_file_srsd_creates_is_private_whatever_the_umask() -> None:
    # umask 0, directories every user may enter and write (the state directory already
    # there, 0777; a database elsewhere, sqlite:/abs/path): what srsd creates is 0600 and
    # another user cannot read it; a database an older srsd left 0644 is made private.
    require_root()
    world = Path(tempfile.mkdtemp(prefix="srsd-modes-", dir="/tmp"))
    old_umask = os.umask(0)
    try:
        world.chmod(0o777)
        (world / "a").mkdir()
        (world / "a" / "state").mkdir()
        (world / "b").mkdir()
        (world / "elsewhere").mkdir()
        secret = world / "a" / "state" / "secrets"
        subprocess.run([sys.executable, "-m", "srsd", "keygen", str(secret)], check=True)
        left = world / "elsewhere" / "old.sqlite"
        sqlite3.connect(left).execute("CREATE TABLE t (x)").connection.close()
        left.chmod(0o644)
        for workdir, args in [
            (world / "a", ()),
            (world / "b", ("--envelope-database", f"sqlite:{world}/elsewhere/new.sqlite")),
            (world / "b", ("--envelope-database", f"sqlite:{left}")),
        ]:
            with Srsd(workdir, "--original-envelope", "database", *args) as srsd:
                db = srsd.db_path if not args else Path(args[1].removeprefix("sqlite:"))
                srsd.rewrite(long_sender(str(workdir)))  # creates the database, -wal, -shm
                files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
                if db == left:
                    assert srsd.count("made it private") == 1, srsd.context()
                assert [f.stat().st_mode & 0o777 for f in files] == [0o600] * 3
                assert readable_by_another_user(*files) == [False] * 3
        assert secret.stat().st_mode & 0o777 == 0o600
        assert readable_by_another_user(secret) == [False]
        assert readable_by_another_user(world / "b" / "srsd.log") == [True]  # the probe reads
    finally:
        os.umask(old_umask)
        shutil.rmtree(world)


#: Holds SQLite's write lock on a database (argv[1]) for argv[2] seconds, like a stuck writer.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""
LOCK_HOLD = 10.0


def test_reads_are_answered_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    # Writes wait out busy_timeout (2 s) each and queue; bounces to existing aliases must not
    # queue behind them: WAL lets them read while the lock is held.
    with Srsd(tmp_path, "--original-envelope", "database") as srsd:
        old = [long_sender(f"old-{i}") for i in range(5)]
        addresses = [srsd.rewrite(sender) for sender in old]
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(srsd.db_path), str(LOCK_HOLD)],
            stdout=subprocess.PIPE,
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline() == b"locked\n"
            with ThreadPoolExecutor(16) as pool:
                # More queued writes than the lock is held: 6 x busy_timeout > LOCK_HOLD.
                writes = [pool.submit(srsd.forward, long_sender(f"new-{i}")) for i in range(6)]
                time.sleep(0.5)  # the writes are waiting on the lock first
                reverses = [pool.submit(srsd.reverse, address) for address in addresses]
                for future, sender in zip(reverses, old, strict=True):
                    assert future.result(timeout=LOCK_HOLD * 2) == b"200 " + sender
                assert locker.poll() is None, "answered only once the lock was released"
                locker.terminate()
                for future in writes:  # 400 while locked, or 200 once released: never lost
                    assert future.result(timeout=LOCK_HOLD * 2)[:4] in (b"200 ", b"400 ")
        finally:
            locker.kill()
            locker.wait()


# -- Redis -------------------------------------------------------------------------------------


def test_two_hosts_sharing_redis_decode_each_others_aliases(
    tmp_path: Path, redis: RedisServer
) -> None:
    args = ("--original-envelope", "database", "--envelope-database", redis.url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Srsd(tmp_path / "a", *args) as a, Srsd(tmp_path / "b", *args) as b:
        t0 = time.time()
        from_a, from_b = long_sender("via-a"), b"carol@origin.test"
        minted_a, minted_b = a.rewrite(from_a), b.rewrite(from_b)
        assert minted_a in aliased(from_a, t0)
        assert minted_b in aliased(from_b, t0)
        assert b.decode(minted_a) == from_a
        assert a.decode(minted_b) == from_b
        assert a.decode(minted_b.lower()) == from_b
        # Deterministic keys: both hosts mint the same address for the same sender.
        assert a.rewrite(from_b) == minted_b
        unknown = next(iter(aliased(b"nobody@origin.test", t0)))
        assert b.reverse(unknown).startswith(b"500 ")
        assert b.sm(b"reverse", unknown).startswith(b"NOTFOUND ")
        for host in (a, b):
            assert UNAVAILABLE not in host.my_log()
    # Nothing went to a local SQLite file.
    assert not list(tmp_path.glob("*/state/" + DB_NAME + "*"))


def test_redis_outage_defers_logs_once_and_heals(tmp_path: Path, redis: RedisServer) -> None:
    (tmp_path / "srsd").mkdir()
    args = ("--original-envelope", "auto", "--envelope-database", redis.url)
    with Srsd(tmp_path / "srsd", *args) as srsd:
        t0 = time.time()
        old = long_sender("before")
        old_address = srsd.rewrite(old)
        assert srsd.decode(old_address) == old
        redis.stop()
        new = long_sender("during")
        for _ in range(3):
            reply, took = timed(srsd.forward, new)
            assert reply.startswith(b"400 "), reply + srsd.context()
            assert took < 5  # refused at once, well within redis-py's time-outs
            reply, took = timed(srsd.sm, b"forward", new)
            assert reply.startswith(b"TEMP "), reply + srsd.context()
            # A bounce to an alias cannot be resolved now: deferred, not refused.
            reply, took = timed(srsd.reverse, old_address)
            assert reply.startswith(b"400 "), reply + srsd.context()
            assert took < 5
            assert srsd.sm(b"reverse", old_address).startswith(b"TEMP ")
        assert srsd.rewrite(ALICE) in embedded(ALICE, t0)  # needs no database
        assert srsd.count(UNAVAILABLE) == 1, srsd.context()

        redis.start()  # same port, no persistence: it comes back empty
        address = srsd.rewrite(new)
        assert address in aliased(new, t0)
        assert srsd.decode(address) == new
        assert srsd.count(BACK) == 1, srsd.context()
        assert srsd.count(UNAVAILABLE) == 1
        # Redis lost the old entry: a clean not-found, never a deferral forever.
        assert srsd.reverse(old_address).startswith(b"500 ")
        # The old sender writes again on its next mail, so its new bounces come home.
        again = srsd.rewrite(old)
        assert srsd.decode(again) == old, srsd.context()


class Answers:
    """Forward lookups from a thread, each reply recorded with when its request was sent."""

    def __init__(self, srsd: Srsd) -> None:
        self.srsd = srsd
        #: (monotonic time the request was sent, sender, reply line)
        self.replies: list[tuple[float, bytes, bytes]] = []

    def forward(self, sender: bytes) -> bytes:
        sent = time.monotonic()
        reply = self.srsd.forward(sender)
        self.replies.append((sent, sender, reply))
        return reply

    def issued(self, since: float = 0.0) -> list[tuple[bytes, bytes]]:
        """(sender, address) of every ``200`` whose request was sent at ``since`` or later."""
        return [(s, r[4:]) for t, s, r in self.replies if t >= since and r.startswith(b"200 ")]

    def unreversible(self, since: float = 0.0) -> list[tuple[bytes, bytes]]:
        """The ``200``s sent since ``since`` whose address does not reverse to its sender."""
        return [
            (sender, address)
            for sender, address in self.issued(since)
            if self.srsd.reverse(address) != b"200 " + sender
        ]


def _lookups_until(answers: Answers, senders: list[bytes], done: threading.Event) -> None:
    """Forward ``senders`` round and round, and a new sender every few lookups, until done."""
    n = 0
    while not done.is_set():
        n += 1
        sender = senders[n % len(senders)] if n % 4 else long_sender(f"new-{n}")
        answers.forward(sender)
        if sender not in senders and answers.replies[-1][2].startswith(b"200 "):
            senders.append(sender)


@pytest.mark.parametrize("persistence", ["none", "aof"])
def test_every_alias_answered_reverses_across_redis_crashes(
    tmp_path: Path, persistence: str
) -> None:
    """Redis is killed (-9) and restarted on the same port, once between lookups and once
    during them. Without persistence it comes back empty: every 200 answered once it is back
    must reverse at once (srsd never answers with an alias from its memory of writes to the
    server that died), and every earlier one once its sender has mailed again. With AOF and
    appendfsync always, every 200 ever answered reverses. 400s while it is down are fine."""
    redis = RedisServer(tmp_path / "redis", appendonly=persistence == "aof")
    redis.workdir.mkdir()
    (tmp_path / "srsd").mkdir()
    args = ("--original-envelope", "database", "--envelope-database", redis.url)
    metrics = free_port("127.0.0.1")
    redis.start()
    try:
        with Srsd(tmp_path / "srsd", *args, "--metrics-listen", f"127.0.0.1:{metrics}") as srsd:
            # At start srsd says what a crash of this Redis would lose: without AOF, all.
            deadline = time.monotonic() + TIMEOUT
            while "srsd ready" not in srsd.my_log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srsd.count("runs without AOF") == (persistence == "none"), srsd.context()
            answers = Answers(srsd)
            senders = [long_sender(i) for i in range(20)]
            for sender in senders:
                assert answers.forward(sender).startswith(b"200 "), srsd.context()
            # Between lookups.
            redis.kill()
            redis.start()
            back = time.monotonic()
            for sender in senders:
                answers.forward(sender)
            lost = answers.unreversible(back)
            assert not lost, (lost[:3], srsd.context())
            # During lookups.
            done = threading.Event()
            load = threading.Thread(target=_lookups_until, args=(answers, senders, done))
            load.start()
            try:
                time.sleep(0.5)
                redis.kill()
                time.sleep(0.3)
                redis.start()
                back = time.monotonic()
                time.sleep(0.5)
            finally:
                done.set()
                load.join(TIMEOUT)
            lost = answers.unreversible(back)
            assert not lost, (lost[:3], srsd.context())
            if persistence == "none":
                for sender in senders:  # each sender mails again: its alias is written again
                    assert answers.forward(sender).startswith(b"200 "), srsd.context()
            lost = answers.unreversible()
            assert not lost, (lost[:3], srsd.context())
            replies = [r[:4] for _, _, r in answers.replies]
            assert replies.count(b"200 ") > 60
            assert set(replies) <= {b"200 ", b"400 "}
            assert srsd.count("restarted or failed over") == 2, srsd.context()
            # Each crash is a database error, even where a retry on a new connection hid it.
            errors = metric_samples(metrics)["srsd_database_errors_total"]
            assert errors >= 2, srsd.context()
    finally:
        redis.stop()


# -- flood cap and a store that is down at start -----------------------------------------------


def test_write_cap_falls_back_to_the_embedded_form(tmp_path: Path) -> None:
    with Srsd(tmp_path, "--original-envelope", "auto", "--envelope-write-limit", "3") as srsd:
        t0 = time.time()
        senders = [long_sender(f"flood-{i}") for i in range(8)]
        results = [srsd.forward(s) for s in senders]
        assert all(r.startswith(b"200 ") for r in results), results
        addresses = [r[4:] for r in results]
        for sender, address in zip(senders[:3], addresses[:3], strict=True):
            assert address in aliased(sender, t0), address
        for sender, address in zip(senders[3:], addresses[3:], strict=True):
            assert address in embedded(sender, t0), address  # over 64 octets, but signed
            assert len(local_part(address)) > 64
        for sender, address in zip(senders, addresses, strict=True):
            assert srsd.decode(address) == sender
        # Over socketmap too; and a sender already written keeps its alias during the flood.
        extra = long_sender("flood-sm")
        assert srsd.sm(b"forward", extra) in {b"OK " + a for a in embedded(extra, t0)}
        assert srsd.forward(senders[0]) == results[0]
        assert srsd.count(CAP_REACHED) == 1, srsd.context()
        assert UNAVAILABLE not in srsd.my_log()
    assert rows(tmp_path / "state" / DB_NAME) == 3


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_store_down_at_start(tmp_path: Path, backend: str) -> None:
    (tmp_path / "srsd").mkdir()
    redis = RedisServer(tmp_path)  # its port is chosen, nothing listens there yet
    url = redis.url if backend == "redis" else "sqlite:/dev/null/no-such-dir/envelopes.sqlite"
    args = ("--original-envelope", "auto", "--envelope-database", url)
    try:
        with Srsd(tmp_path / "srsd", *args) as srsd:
            t0 = time.time()
            deadline = time.monotonic() + TIMEOUT
            while srsd.count(UNAVAILABLE) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # the start-up check runs right after binding
            assert srsd.count(UNAVAILABLE) == 1, srsd.context()
            assert "srsd ready" in srsd.my_log()
            # Embedded lookups are served...
            address = srsd.rewrite(ALICE)
            assert address in embedded(ALICE, t0)
            assert srsd.decode(address) == ALICE
            # ...those that need the database are deferred.
            sender = long_sender("start")
            assert srsd.forward(sender).startswith(b"400 "), srsd.context()
            assert srsd.sm(b"forward", sender).startswith(b"TEMP ")
            alias = next(iter(aliased(sender, t0)))
            assert srsd.reverse(alias).startswith(b"400 ")
            assert srsd.count(UNAVAILABLE) == 1, srsd.context()
            if backend == "redis":
                redis.start()  # the store appears: srsd uses it without a restart
                address = srsd.rewrite(sender)
                assert address in aliased(sender, t0)
                assert srsd.decode(address) == sender
                assert srsd.count(BACK) == 1, srsd.context()
    finally:
        redis.stop()


# -- regressions, in-process -------------------------------------------------------------------


class ForgetfulStore:
    """An in-memory store that can be down, and can come back empty (like a Redis restarted
    without persistence)."""

    description = "memory"
    remote = True
    generation = 0
    recovered = 0

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.down = False
        self.puts = 0

    def _up(self) -> None:
        if self.down:
            raise StorageError("memory: down")

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        self._up()
        self.puts += 1
        self.data[key] = sender

    async def get(self, key: bytes, now: float) -> bytes | None:
        self._up()
        return self.data.get(key)

    async def expire(self, now: float) -> int:
        self._up()
        return 0

    async def check(self) -> None:
        self._up()

    async def durability(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


async def test_senders_written_before_an_outage_are_written_again_after_it() -> None:
    store = ForgetfulStore()
    envelopes = EnvelopeDatabase(store, EnvelopeMode.DATABASE, 0)
    policy = Policy(Codec([SECRET], DOMAIN))
    now = time.time()

    async def forward(sender: bytes) -> Decision:
        return await envelopes.forward(policy, sender, policy.forward(sender, now), now)

    first = await forward(ALICE)
    assert first.value in aliased(ALICE, now)
    assert (await forward(ALICE)).value == first.value
    assert store.puts == 1  # written lately: not written again
    store.down = True
    assert (await forward(long_sender("outage"))).outcome is Outcome.ERROR
    store.down = False
    store.data.clear()  # back, but it lost what it had
    again = await forward(ALICE)
    assert again.value == first.value
    assert store.puts == 2  # the failure made srsd forget what it had written
    resolved = await envelopes.reverse(policy.reverse(again.value or b"", now), now)
    assert resolved.value == ALICE


async def test_redis_background_expiry_fails_while_redis_is_down(tmp_path: Path) -> None:
    # The hourly expiry reports success or failure to the outage tracker: a no-op that
    # always "succeeded" logged the end of an outage that was still going on.
    redis = RedisServer(tmp_path)  # not started yet
    store = RedisStore(redis.url, 3600.0, timeout=1.0)
    try:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(StorageError):
                await store.expire(time.time())
            await trio.to_thread.run_sync(redis.start)
            assert await store.expire(time.time()) == 0
    finally:
        await store.aclose()
        redis.stop()


def test_reloading_the_flood_cap_keeps_the_refused_count(tmp_path: Path) -> None:
    # srsd_database_writes_refused_total is a Prometheus counter: a reload must not reset it.
    from srsd.envelope import EnvelopeMode
    from srsd.envelope.database import EnvelopeDatabase
    from srsd.envelope.store import SQLiteStore

    envelopes = EnvelopeDatabase(SQLiteStore(tmp_path / "db.sqlite", 60.0), EnvelopeMode.AUTO, 1)
    assert envelopes.limiter.allow(0.0)
    assert not envelopes.limiter.allow(0.0)
    envelopes.configure(EnvelopeMode.AUTO, 5)
    assert envelopes.limiter.max_per_minute == 5
    assert envelopes.refused == 1


async def test_a_stored_sender_with_a_control_byte_is_never_answered(tmp_path: Path) -> None:
    # Senders with a control byte are refused before anything is stored (issue 18); one
    # stored before that, or written into the database by someone else, is refused on the
    # way back alike, never handed to Postfix (a CR LF in a map answer or a milter ADDRCPT).
    store = SQLiteStore(tmp_path / "db.sqlite", 60.0)
    envelopes = EnvelopeDatabase(store, EnvelopeMode.DATABASE, 0)
    policy = Policy(Codec([SECRET], DOMAIN))
    now = time.time()
    sender = b"alice@origin.test"
    minted = await envelopes.forward(policy, sender, policy.forward(sender, now), now)
    assert minted.value is not None
    assert await envelopes.reverse(policy.reverse(minted.value, now), now) == Decision(
        Outcome.REWRITTEN, sender, "resolved through the envelope database"
    )
    decoded = policy.reverse(minted.value, now).value
    key = None if decoded is None else keys.key_of(decoded)  # the alias's key, as stored
    assert key is not None
    for bad, reason in (
        (sender + b"\r\nRCPT TO:<x@evil.example>", "Control character in address"),
        (b"a\0b@origin.test", "NUL byte in address"),
    ):
        await store.put(key, bad, now)
        back = await envelopes.reverse(policy.reverse(minted.value, now), now)
        assert back == Decision(Outcome.BAD_ADDRESS, reason=reason), back


class CountingPolicy(Policy):
    """The real policy, counting its decisions."""

    decided = 0

    def forward(self, sender: bytes, now: float) -> Decision:
        self.decided += 1
        return super().forward(sender, now)

    def reverse(self, recipient: bytes, now: float) -> Decision:
        self.decided += 1
        return super().reverse(recipient, now)


class CountingSQLite(SQLiteStore):
    """The real SQLite store, counting its writes."""

    puts = 0

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        self.puts += 1
        await super().put(key, sender, now)


@pytest.mark.parametrize("remote", [False, True], ids=["sqlite", "store in a server"])
async def test_each_lookup_is_decided_once_and_remembered_senders_answer_at_once(
    tmp_path: Path, remote: bool
) -> None:
    # A database-mode lookup is decided by the policy once, its decision carried to the
    # write or read; a sender written lately is answered with the same reply and not
    # written again: at once (bytes, not a Later: the connection stays in the loop) from
    # SQLite, after a confirming read (a Later) from a store in a server.
    secrets = tmp_path / "secrets"
    secrets.write_bytes(SECRET + b"\n")
    secrets.chmod(0o600)
    cli = {"domain": DOMAIN.decode(), "secrets_file": str(secrets)}
    (tmp_path / "srsd.toml").write_text("")
    settings = srsd_settings.load(cli=cli, environ={}, config=tmp_path / "srsd.toml")
    store = ForgetfulStore() if remote else CountingSQLite(tmp_path / DB_NAME, 86400.0)
    envelopes = EnvelopeDatabase(store, EnvelopeMode.DATABASE, 0)
    policy = CountingPolicy(Codec([SECRET], DOMAIN))
    lookups = Lookups(settings, policy, envelopes)
    forward = MapService(lookups, Wire.TCP_TABLE, Role.FORWARD)
    reverse = MapService(lookups, Wire.TCP_TABLE, Role.REVERSE)
    (request,) = forward.reader().feed(b"get " + ALICE + b"\n")
    try:
        later = forward.answer(request)
        assert not isinstance(later, bytes)  # a write to wait for
        assert (policy.decided, store.puts) == (1, 0)
        written = await later()
        assert (policy.decided, store.puts) == (1, 1)
        alias = written.removeprefix(b"200 ").rstrip(b"\n")
        assert alias in aliased(ALICE, time.time())

        again = forward.answer(request)
        if remote:
            assert not isinstance(again, bytes)  # a read to confirm it
            again = await again()
        assert again == written
        assert (policy.decided, store.puts) == (2, 1)

        (bounce,) = reverse.reader().feed(b"get " + alias + b"\n")
        later = reverse.answer(bounce)
        assert not isinstance(later, bytes)  # a read to wait for
        assert await later() == b"200 " + ALICE + b"\n"
        assert policy.decided == 3
        assert await lookups.decide(Role.FORWARD, ALICE) == Decision(
            Outcome.REWRITTEN, alias, "rewritten through the envelope database"
        )
        assert (policy.decided, store.puts) == (4, 1)
        assert sum(lookups.counts.values()) == 3  # the three answered on the wire
    finally:
        await store.aclose()
