# Live-server abuse suite: hostile clients against a real `srsd serve`, a good client checking.
"""Hostile and broken clients against a real ``srsd serve`` process, on loopback.

Each test starts its own srsd (:class:`Target`: tcp_table ports, a socketmap on
``inet:127.0.0.1``, Prometheus metrics, ``--max-connections 150``, ``--timeout 3``,
``--keep-alive 3``, the default log level) and a well-behaved client (:class:`GoodClient`, a
thread): lockstep forward + reverse round trips on its own connections, as Postfix does,
every answer checked against srsd's codec for the secret the test wrote. Then an attack
runs for a few seconds from this thread (:class:`Swarm`: many non-blocking attacker
connections driven by one selector loop). Asserted for every attack:

* the good client saw no error and no lookup slower than :data:`SLOW` (behaviour, not
  speed: its latency percentiles are recorded, not asserted), and was served during the
  attack;
* srsd is alive afterwards, its open connections are back to the good client's, and its
  resident memory (``VmRSS``) is within :data:`RSS_SLACK` of what it was before;
* the attack-specific behaviour (evicting at the limit, idle time-out, answers at
  half-close, ...).

The figures (good client's lookups and latency before/during, RSS before/peak/after, what
the attackers saw) are printed (``pytest -s``) and written to ``abuse-figures.json`` in
pytest's base temporary directory; ``docs/reliability.md`` quotes them. Every loop is
bounded in count and time; every socket and process is closed or stopped.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from srsd.serve import loop
from srsd.serve.server import Server
from srsd.srs.codec import Codec
from tests.harness.attacks import Target, attackers
from tests.harness.clients import LineConn, MapConn, netstring
from tests.harness.local_users import NOBODY
from tests.harness.srsd_process import SECRET

TIMEOUT = 10.0  # the bound on every single wait
DOMAIN = b"forwarder.test"
MAX_CONNECTIONS = 150
IDLE = 3.0  # --timeout and --keep-alive
ATTACK_SECONDS = 3.0
WARM_UP = 1.0  # the good client alone, before the attack ("before" figures)
COOL_DOWN = 0.5  # the good client alone, after the attack
SLOW = 2.0  # no single good lookup may take longer
RSS_SLACK = 20 << 20  # bytes of resident memory srsd may keep after an attack
PACE = 0.001  # the good client's pause between round trips
CHUNK = 1 << 16
GOOD_SENDER = b"good%d@example.org"


LIMITS = (  # one user here: attackers and good client alike (the shares between users:
    # tests/test_admission_attacks.py)
    "--max-connections",
    str(MAX_CONNECTIONS),
    "--max-connections-per-user",
    str(MAX_CONNECTIONS),
    "--timeout",
    str(IDLE),
    "--keep-alive",
    str(IDLE),
)

# -- srsd under attack ------------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    with Target(tmp_path, *LIMITS) as srv:
        yield srv
        assert srv.alive(), srv.log()[-5000:]
        assert srv.stop(TIMEOUT) == 0, srv.log()[-5000:]
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


# -- the well-behaved client ---------------------------------------------------------------------


class GoodClient(threading.Thread):
    """Lockstep round trips (forward, then reverse of the answer), every answer checked.

    It keeps its connections for the whole test, as Postfix does; an exception (reset,
    time-out, EOF) is an error and ends it. ``phase`` labels the figures.
    """

    def __init__(self, srv: Target, *, socketmap: bool = False) -> None:
        super().__init__(name="good-client", daemon=True)
        self.codec = Codec([SECRET], DOMAIN)
        self.fwd = LineConn(srv.forward_port)
        self.rev = LineConn(srv.reverse_port)
        self.map = MapConn(srv.socketmap_port) if socketmap else None
        self.connections = 3 if socketmap else 2
        self.phase = "before"
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for i in range(10_000_000):
                if self._halt.is_set():
                    break
                self.round_trip(GOOD_SENDER % i)
                time.sleep(PACE)
        except Exception as err:  # the connection broke: every later lookup would fail too
            self.errors.append(f"{self.phase}: {err!r}")
        finally:
            for conn in (self.fwd, self.rev, self.map):
                if conn is not None:
                    conn.close()

    def timed(self, ask: Callable[..., bytes], *args: bytes) -> bytes:
        phase = self.phase
        started = time.perf_counter()
        reply = ask(*args)
        self.latency[phase].append(time.perf_counter() - started)
        return reply

    def check(self, what: str, got: bytes, expected: set[bytes]) -> None:
        if got not in expected:
            self.errors.append(f"{self.phase}: {what}: got {got!r}, expected {sorted(expected)}")

    def round_trip(self, sender: bytes) -> None:
        t0 = time.time()
        reply = self.timed(self.fwd.ask, sender)
        signed = {self.codec.forward(sender, t) for t in (t0, time.time())}
        self.check("forward", reply, {b"200 " + a for a in signed})
        if reply.startswith(b"200 "):
            self.check("reverse", self.timed(self.rev.ask, reply[4:]), {b"200 " + sender})
        if self.map is not None:
            reply = self.timed(self.map.ask, b"forward", sender)
            self.check("socketmap forward", reply, {b"OK " + a for a in signed})
            if reply.startswith(b"OK "):
                back = self.timed(self.map.ask, b"reverse", reply[3:])
                self.check("socketmap reverse", back, {b"OK " + sender})

    def count(self) -> int:
        """Lookups done so far."""
        return sum(len(v) for v in list(self.latency.values()))

    def stop(self) -> None:
        self._halt.set()
        self.join(TIMEOUT)
        assert not self.is_alive(), "the good client did not stop"


# -- attackers -------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What every connection of a :class:`Swarm` does.

    ``stream``: bytes sent again and again whenever the socket takes them; ``once``: bytes
    sent right after connecting; ``drip``: one byte of it every ``drip_every`` seconds;
    ``reads``: read (and count) the replies, else never read; ``half_close``: shutdown(WR)
    after ``once``; ``reset``: SO_LINGER 0 and close right after ``once`` (a reset);
    ``until_reply``: close after the first reply line; ``hold``: close after that many
    seconds; ``keep``: keep what was received (checked by ``check`` when the connection
    ends).
    """

    stream: bytes = b""
    once: bytes = b""
    drip: bytes = b""
    drip_every: float = 1.0
    reads: bool = True
    half_close: bool = False
    reset: bool = False
    until_reply: bool = False
    hold: float = 0.0
    keep: bool = False
    check: Callable[[bytes], bool] | None = None
    socket_options: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    offset: int = 0
    next_drip: float = 0.0
    received: bytearray = field(default_factory=bytearray)


class Swarm:
    """Up to ``size`` attacker connections to ``port``, run by one selector loop; each one
    that ends (closed by srsd, reset, or by its behaviour) is replaced while the attack
    lasts when ``reconnect``. ``stats`` counts what the attackers saw."""

    def __init__(
        self, port: int, size: int, behaviour: Behaviour, *, reconnect: bool = True
    ) -> None:
        self.port = port
        self.size = size
        self.b = behaviour
        self.reconnect = reconnect
        self.stats: Counter[str] = Counter()
        self.lifetimes: list[float] = []
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, _Conn] = {}

    def _open(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        except OSError:
            self.stats["connect failed"] += 1
            return
        self.stats["connections"] += 1
        for option in self.b.socket_options:
            sock.setsockopt(*option)
        conn = _Conn(sock, time.monotonic(), next_drip=time.monotonic())
        try:
            if self.b.once:
                sock.sendall(self.b.once)
                self.stats["bytes sent"] += len(self.b.once)
            if self.b.reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self.stats["resets sent"] += 1
                return
            if self.b.half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.stats["send failed"] += 1
            sock.close()
            return
        sock.setblocking(False)
        events = (selectors.EVENT_READ if self.b.reads else 0) | (
            selectors.EVENT_WRITE if self.b.stream else 0
        )
        self.conns[sock] = conn
        if events:
            self.sel.register(sock, events)

    def _end(self, conn: _Conn, why: str) -> None:
        self.stats[why] += 1
        self.lifetimes.append(time.monotonic() - conn.opened)
        if self.b.check is not None:
            self.stats[
                "replies right" if self.b.check(bytes(conn.received)) else "replies WRONG"
            ] += 1
        if conn.sock in self.sel.get_map():
            self.sel.unregister(conn.sock)
        del self.conns[conn.sock]
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._end(conn, "reset by srsd")
            return
        if not data:
            self._end(conn, "closed by srsd")
            return
        self.stats["bytes received"] += len(data)
        self.stats["reply lines"] += data.count(b"\n")
        if self.b.keep:
            conn.received += data
        if self.b.until_reply and b"\n" in conn.received:
            self._end(conn, "answered")

    def _write(self, conn: _Conn) -> None:
        stream = self.b.stream
        try:
            sent = conn.sock.send(memoryview(stream)[conn.offset : conn.offset + CHUNK])
        except BlockingIOError:
            return
        except OSError:
            self._end(conn, "reset by srsd")
            return
        self.stats["bytes sent"] += sent
        conn.offset = (conn.offset + sent) % len(stream)

    def _drip(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if now >= conn.next_drip:
                conn.next_drip = now + self.b.drip_every
                byte = self.b.drip[conn.offset % len(self.b.drip)]
                conn.offset += 1
                try:
                    conn.sock.send(bytes((byte,)))
                    self.stats["bytes sent"] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    self._end(conn, "reset by srsd")

    def fill(self) -> None:
        """Open connections up to ``size`` (bounded by ``size`` attempts)."""
        for _ in range(self.size - len(self.conns)):
            self._open()

    def run(self, seconds: float) -> None:
        """Attack for ``seconds`` (opening the connections first, if not done yet); the
        connections stay open (see :meth:`close`)."""
        deadline = time.monotonic() + seconds
        if not self.stats["connections"]:
            self.fill()
        while (now := time.monotonic()) < deadline:
            if self.b.drip:
                self._drip(now)
            if self.b.hold:
                for conn in [c for c in self.conns.values() if now - c.opened > self.b.hold]:
                    self._end(conn, "held, then closed")
            wait = min(0.05, deadline - now)
            if not self.sel.get_map():
                time.sleep(wait)
                continue
            for key, mask in self.sel.select(wait):
                conn = self.conns.get(key.fileobj)  # type: ignore[call-overload]
                if conn is not None and mask & selectors.EVENT_READ:
                    self._read(conn)
                conn = self.conns.get(key.fileobj)  # type: ignore[call-overload]
                if conn is not None and mask & selectors.EVENT_WRITE:
                    self._write(conn)
            if self.reconnect:
                self.fill()

    def close(self) -> None:
        """Close every connection (the swarm may be filled again)."""
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        self.sel.close()
        self.sel = selectors.DefaultSelector()


# -- one attack, measured --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


FIGURES: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def figures_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Write the figures of every attack of this run to ``abuse-figures.json``."""
    FIGURES.clear()
    yield
    path = tmp_path_factory.getbasetemp() / "abuse-figures.json"
    path.write_text(json.dumps(FIGURES, indent=2) + "\n")
    print(f"\nabuse figures: {path}")


class Attack:
    """The good client before, during and after an attack, and srsd's memory around it."""

    def __init__(self, name: str, srv: Target, *, socketmap: bool = False) -> None:
        self.name = name
        self.srv = srv
        self.good = GoodClient(srv, socketmap=socketmap)
        self.rss_samples: list[int] = []
        self.stats: dict[str, Any] = {}
        self._sampling = threading.Event()

    def _sample(self) -> None:
        while not self._sampling.wait(0.05):
            try:
                self.rss_samples.append(self.srv.status("VmRSS"))
            except OSError:
                return  # srsd is gone: the test fails elsewhere

    def attackers_answered(self) -> int:
        """Requests srsd answered since the attack began, the good client's left out."""
        return (self.srv.lookups() - self.lookups_before) - (self.good.count() - self.good_before)

    def settle(self) -> None:
        """Wait (bounded) until srsd is done with the attack: only the good client's
        connections open, and no more answers to anyone else for 0.3 s (work the kernel
        had queued, such as connections reset in the accept queue, is still done)."""
        deadline = time.monotonic() + TIMEOUT * 2
        last = -1000
        while time.monotonic() < deadline:
            now = self.attackers_answered()  # +-4: the good client's lookups in flight
            if self.srv.open_connections() == self.good.connections and abs(now - last) <= 4:
                return
            last = now
            time.sleep(0.3)
        pytest.fail(
            f"srsd still busy {TIMEOUT * 2} s after the attack: "
            f"{self.srv.open_connections()} connections open"
        )

    def __enter__(self) -> Attack:
        self.good.start()
        time.sleep(WARM_UP)
        self.lookups_before = self.srv.lookups()
        self.good_before = self.good.count()
        self.rss_before = self.srv.status("VmRSS")
        self.log_before = self.srv.log_path.stat().st_size
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        self.good.phase = "during"
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.seconds = time.monotonic() - self.started
            if exc_info[0] is None:
                self.settle()
            self.drained = time.monotonic() - self.started - self.seconds
            self.good.phase = "after"
            time.sleep(COOL_DOWN)
        finally:
            self._sampling.set()
            self.sampler.join(TIMEOUT)
            self.good.stop()
        if exc_info[0] is None:
            self.report()

    def report(self) -> None:
        srv, good = self.srv, self.good
        rss_after = srv.status("VmRSS")
        peak = max([*self.rss_samples, srv.status("VmHWM")])
        during = good.latency["during"]
        ms = 1000.0
        figures = {
            "attack": self.name,
            "attack_seconds": round(self.seconds, 2),
            "srsd_busy_after_s": round(self.drained, 2),
            "good_lookups_before": len(good.latency["before"]),
            "good_lookups_during": len(during),
            "good_lookups_after": len(good.latency["after"]),
            "good_errors": len(good.errors),
            "good_p50_ms_before": round(percentile(good.latency["before"], 0.5) * ms, 3),
            "good_p99_ms_before": round(percentile(good.latency["before"], 0.99) * ms, 3),
            "good_p50_ms_during": round(percentile(during, 0.5) * ms, 3),
            "good_p99_ms_during": round(percentile(during, 0.99) * ms, 3),
            "good_max_ms_during": round(max(during, default=0.0) * ms, 3),
            "attackers_answered": self.attackers_answered(),
            "log_kb_written": round((srv.log_path.stat().st_size - self.log_before) / 1024),
            "rss_mb_before": round(self.rss_before / 2**20, 1),
            "rss_mb_peak": round(peak / 2**20, 1),
            "rss_mb_after": round(rss_after / 2**20, 1),
            "attackers": self.stats,
        }
        FIGURES.append(figures)
        print(f"\n[{self.name}] " + json.dumps(figures))
        assert not good.errors, good.errors[:10]
        assert during, "the good client was not served during the attack"
        assert good.latency["after"], "the good client was not served after the attack"
        slowest = max(t for phase in good.latency.values() for t in phase)
        assert slowest < SLOW, f"a good lookup took {slowest:.3f} s"
        assert rss_after - self.rss_before < RSS_SLACK, figures
        assert srv.alive()


def swarm_attack(attack: Attack, swarm: Swarm, seconds: float = ATTACK_SECONDS) -> Swarm:
    try:
        swarm.run(seconds)
    finally:
        swarm.close()
    attack.stats.update(swarm.stats)
    if swarm.lifetimes:
        attack.stats["lifetime_s_min"] = round(min(swarm.lifetimes), 3)
        attack.stats["lifetime_s_max"] = round(max(swarm.lifetimes), 3)
    return swarm


RANDOM = os.urandom(1 << 20)
TOO_LONG = b"500 Address%20too%20long\n"


# -- tcp_table attacks --------------------------------------------------------------------------


def test_random_bytes_on_many_connections(target: Target) -> None:
    with Attack("random bytes, 100 connections", target) as attack:
        swarm = swarm_attack(attack, Swarm(target.forward_port, 100, Behaviour(stream=RANDOM)))
    assert swarm.stats["reply lines"] > 1000  # the garbage was read and answered (500s)


def test_many_empty_lines_on_many_connections(target: Target) -> None:
    # The most requests per byte: every LF is a bad request with a 500 reply.
    with Attack("empty lines, 100 connections", target) as attack:
        swarm = swarm_attack(
            attack, Swarm(target.forward_port, 100, Behaviour(stream=b"\n" * CHUNK))
        )
    assert swarm.stats["reply lines"] > 10_000


def test_over_long_lines(target: Target) -> None:
    # A line longer than any address of --max-request (4096) bytes can take, %-encoded
    # (4 + 3 x 4096), is refused as soon as one byte more proves it; srsd then
    # discards up to 1 MB or 2 s of what follows and closes. These clients never stop
    # sending: after that 1 MB the close is a reset, which may destroy the reply in flight.
    endless = b"get " + b"a" * (CHUNK * 16)
    with Attack("over-long lines, 50 connections", target) as attack:
        swarm = swarm_attack(
            attack,
            Swarm(
                target.forward_port,
                50,
                Behaviour(stream=endless, keep=True, check=lambda got: got in (TOO_LONG, b"")),
            ),
        )
    assert swarm.stats["replies WRONG"] == 0  # never anything but the one refusal
    assert swarm.stats["reply lines"] >= 50  # every connection was refused, then closed


def test_slowloris_is_closed_by_the_idle_timeout(target: Target) -> None:
    # 140 connections (the limit is 150: the good client keeps a free slot) each send one
    # byte a second and never a full line: each is closed IDLE seconds after it opened
    # (their bytes do not count as activity), and replaced.
    with Attack("slowloris, 140 connections, 1 byte/s", target) as attack:
        swarm = swarm_attack(
            attack,
            Swarm(
                target.forward_port,
                140,
                Behaviour(drip=b"get slow-but-never-done@example.org", drip_every=1.0),
            ),
            seconds=IDLE + 1.5,
        )
    closed = swarm.stats["closed by srsd"] + swarm.stats["reset by srsd"]
    assert closed >= 140
    assert min(swarm.lifetimes) > IDLE - 0.5
    assert max(swarm.lifetimes) < IDLE + 1.5
    assert target.rejected() == 0  # the limit was never reached


def test_at_the_limit_a_new_connection_evicts_the_longest_idle(tmp_path: Path) -> None:
    # Long idle time-out here: the connections holding the slots stay until evicted. The
    # good client's connections, busy with a lookup every millisecond, are never the ones
    # idle the longest: 140 newcomers, kept open, are all served, each evicting the oldest
    # holder. (One user: a newcomer evicting newcomers would take the good client's too,
    # were it to stall longer than they had been idle; so the holders idle a second before
    # the first newcomer, longer than any stall of the good client seen under load.)
    newcomers = 140  # fewer than the holders
    with Target(tmp_path, *LIMITS, "--timeout", "60") as srv:
        attack = Attack("connection limit: 148 idle + 140 more, kept", srv)
        with attack:
            holders = Swarm(
                srv.forward_port,
                MAX_CONNECTIONS - attack.good.connections,
                Behaviour(once=b"get a"),
                reconnect=False,
            )
            extras: list[LineConn] = []
            try:
                holders.fill()
                srv.wait_open(MAX_CONNECTIONS)
                time.sleep(1.0)
                took = []
                for i in range(newcomers):  # each is served at once, evicting one
                    started = time.monotonic()
                    extra = LineConn(srv.reverse_port)
                    extras.append(extra)
                    assert extra.ask(b"x%d@example.org" % i).startswith(b"500 ")
                    took.append(time.monotonic() - started)
                assert srv.evicted() == newcomers
                assert srv.rejected() == 0
                assert srv.open_connections() == MAX_CONNECTIONS
                holders.run(0.5)  # every holder sees its connection closed
                assert holders.stats["closed by srsd"] + holders.stats["reset by srsd"] == newcomers
                attack.stats.update(
                    evicted=newcomers,
                    served_ms_max=round(max(took) * 1000, 1),
                    served_ms_p50=round(percentile(took, 0.5) * 1000, 2),
                )
            finally:
                holders.close()
                for extra in extras:
                    extra.close()
            srv.wait_open(attack.good.connections)
        lines = [line for line in srv.log().splitlines() if "evicted the longest" in line]
        assert len(lines) == 1, lines  # one line per 10 s, not one per eviction
        assert srv.stop(TIMEOUT) == 0


def test_connection_flood_past_the_limit(target: Target) -> None:
    # 300 connections at a time (twice the limit), each asking one lookup and keeping the
    # connection for a second, replaced as soon as it ends: each new one evicts the one idle
    # the longest (which had its answer already); none is refused. The flood comes from
    # another user (nobody, tests/harness/attacker.py): had it come from the good client's user,
    # any stall of the good client longer than the flood's connections live (tens of ms)
    # would make its connection the one idle the longest, and the rule would rightly take
    # it (tests/test_admission_attacks.py has more of this).
    with Attack("connection flood, 300 at a time", target) as attack:
        with attackers(target.forward_port, "flood", (NOBODY, 300)) as flood:
            time.sleep(ATTACK_SECONDS)
        attack.stats.update(flood[0], evicted=target.evicted())
    assert flood[0]["wrong answers"] == 0
    assert flood[0]["answers"] >= 300
    assert target.evicted() >= 300  # the flood did go past the limit
    assert target.rejected() == 0


def test_pipelining_client_that_never_reads(target: Target) -> None:
    # 8 clients write requests without end (valid lookups, or empty lines: the most replies
    # per byte) and never read a reply. srsd answers until its replies fill the socket
    # buffers, then stops reading them (back-pressure): its answers level off, its memory
    # holds at most one batch of replies per connection; the rest waits in the kernel.
    lookups = b"".join(b"get p%d@example.org\n" % i for i in range(100_000))
    small_window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    valid = Swarm(
        target.forward_port,
        4,
        Behaviour(stream=lookups, reads=False, socket_options=small_window),
        reconnect=False,
    )
    empty = Swarm(
        target.reverse_port,
        4,
        Behaviour(stream=b"\n" * 100_000, reads=False, socket_options=small_window),
        reconnect=False,
    )
    with Attack("pipelining, never reading, 8 connections", target) as attack:
        try:
            valid.fill()
            empty.fill()
            deadline = time.monotonic() + TIMEOUT * 2
            counts = [-1000]
            while time.monotonic() < deadline:  # both swarms in turns, until srsd stops
                valid.run(0.25)
                empty.run(0.25)
                counts.append(attack.attackers_answered())
                if len(counts) > 3 and counts[-1] - counts[-3] < 100:
                    break  # no more answers for 1 s (what is still counted: in flight)
            else:
                pytest.fail(f"srsd kept answering clients that do not read: {counts}")
            attack.stats.update(
                {
                    "srsd answered, then waited": counts[-1],
                    "seconds until srsd stopped reading": round(
                        time.monotonic() - attack.started - 1.0, 1
                    ),
                    "bytes accepted by the kernel": valid.stats["bytes sent"]
                    + empty.stats["bytes sent"],
                }
            )
        finally:
            valid.close()
            empty.close()


def test_half_closed_sockets(target: Target) -> None:
    # A request without its LF, then shutdown(SHUT_WR): srsd answers the last line at EOF,
    # as postsrsd does, and closes. 50 at a time, replaced as they end.
    codec = Codec([SECRET], DOMAIN)

    def one_reply_then_eof(got: bytes) -> bool:
        t = time.time()
        return got in {b"200 " + codec.forward(b"half@example.org", t - d) + b"\n" for d in (0, 60)}

    with Attack("half-closed after a partial request, 50 at a time", target) as attack:
        swarm = swarm_attack(
            attack,
            Swarm(
                target.forward_port,
                50,
                Behaviour(
                    once=b"get half@example.org",
                    half_close=True,
                    keep=True,
                    check=one_reply_then_eof,
                ),
            ),
        )
    assert swarm.stats["replies WRONG"] == 0
    assert swarm.stats["replies right"] > 100


def test_half_closed_without_reading(target: Target) -> None:
    # Half-closed mid-line, never read from and never closed on our side: srsd answers,
    # closes its side and forgets them; 140 of them, twice.
    swarm = Swarm(
        target.reverse_port,
        140,
        Behaviour(once=b"get SRS0=abcd=AA=exam", half_close=True, reads=False),
        reconnect=False,
    )
    with Attack("half-closed, never reading, 2 x 140", target) as attack:
        try:
            for _ in range(2):
                swarm.fill()
                target.wait_open(attack.good.connections)  # srsd has closed all of them
                swarm.close()
                time.sleep(ATTACK_SECONDS / 2)
        finally:
            swarm.close()
        attack.stats.update(swarm.stats)
    assert swarm.stats["connections"] == 280


def test_resets_mid_request(target: Target) -> None:
    # Connections reset (SO_LINGER 0, close) right after a partial request, as fast as one
    # thread opens them; and 300 reset right after 2000 pipelined requests. The kernel
    # accepts a reset connection's data for srsd before srsd sees the reset: srsd still
    # reads and parses one receive (16 kB) of each, answers one batch, and finds the reset.
    partial = Swarm(target.forward_port, 1, Behaviour(once=b"get alice@exa", reset=True))
    batch = b"".join(b"get r%d@example.org\n" % i for i in range(2000))
    pipelined = Swarm(target.forward_port, 1, Behaviour(once=batch, reset=True))
    with Attack("resets mid-request", target) as attack:
        deadline = time.monotonic() + ATTACK_SECONDS
        for i in range(1_000_000):
            if time.monotonic() >= deadline:
                break
            partial.fill()
            if i % 10 == 0 and pipelined.stats["resets sent"] < 300:
                pipelined.fill()
        attack.stats.update(
            partial_resets=partial.stats["resets sent"],
            pipelined_resets=pipelined.stats["resets sent"],
        )
    assert partial.stats["resets sent"] > 1000
    assert pipelined.stats["resets sent"] == 300


# -- socketmap attacks ----------------------------------------------------------------------------


def test_socketmap_garbage(target: Target) -> None:
    # Netstring garbage on 100 socketmap connections: random bytes, huge lengths, lengths
    # with too many digits, missing commas, an unknown map name, a netstring dribbled a
    # byte a second. Each is answered PERM and closed (or closed by keep-alive).
    behaviours = {
        "random bytes": (20, Behaviour(stream=RANDOM)),
        "huge length": (20, Behaviour(stream=b"99999999999999999999:" + b"x" * 4096)),
        "too many digits": (15, Behaviour(stream=b"0" * 40 + b"1:x,")),
        "no comma": (15, Behaviour(stream=b"5:abcdefgh" * 1000)),
        "unknown map": (10, Behaviour(stream=netstring(b"nosuchmap key") * 1000)),
        "at the bound": (10, Behaviour(stream=b"4096:" + b"y" * 4096 + b",")),
        "dribbled": (10, Behaviour(drip=b"25:forward alice@example.org,", drip_every=1.0)),
    }
    swarms = {kind: Swarm(target.socketmap_port, n, b) for kind, (n, b) in behaviours.items()}
    with Attack("socketmap garbage, 100 connections", target, socketmap=True) as attack:
        try:
            deadline = time.monotonic() + IDLE + 1.5  # the dribblers meet the keep-alive
            while time.monotonic() < deadline:
                for swarm in swarms.values():
                    swarm.run(0.02)
        finally:
            for swarm in swarms.values():
                swarm.close()
        for kind, swarm in swarms.items():
            attack.stats[kind] = dict(swarm.stats)

    def closed(kind: str) -> int:
        return swarms[kind].stats["closed by srsd"] + swarms[kind].stats["reset by srsd"]

    for kind in ("random bytes", "huge length", "too many digits", "no comma"):
        assert closed(kind) >= behaviours[kind][0], kind  # PERM, then closed
    for kind in ("unknown map", "at the bound"):  # PERM, and the connection stays
        assert closed(kind) == 0, kind
        assert swarms[kind].stats["bytes received"] > 0
    assert closed("dribbled") == 10  # by the keep-alive


# -- the fix these attacks found -----------------------------------------------------------------


class StepWatch(trio.abc.Instrument):
    """The most requests answered in one task step (between two checkpoints)."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.start = 0
        self.most = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.server is not None:
            self.start = answered(self.server)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.server is not None:
            self.most = max(self.most, answered(self.server) - self.start)


def answered(server: Server) -> int:
    """Requests answered so far (bad requests included)."""
    return sum(server.lookups.counts.values())


async def test_a_chunk_of_many_requests_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    """Regression: srsd answered every request of a received chunk (up to 16384 empty
    lines) in one task step and joined all replies before sending; one such client stalled
    every other connection (a good lookup took 10 s under 100 of them) and each
    non-reading one held ~800 kB of replies. Now one pass of the connection loop (one task
    step) answers at most ANSWERS_PER_PASS requests of one connection."""
    from tests.harness.inprocess import serving

    config = tmp_path / "empty.toml"
    config.write_text("")
    watch = StepWatch()
    trio.lowlevel.add_instrument(watch)
    try:
        async with serving(tmp_path, config=config) as srv:
            watch.server = srv.server
            client = await trio.open_tcp_stream("127.0.0.1", srv.forward)
            lines = 4 * loop.RECEIVE_SIZE
            received = bytearray()

            async def read_all() -> None:
                while received.count(b"\n") < lines:
                    data = await client.receive_some(1 << 16)
                    assert data, "EOF before every reply came"
                    received.extend(data)

            with trio.fail_after(TIMEOUT * 3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all)
                    await client.send_all(b"\n" * lines)
            await client.aclose()
            assert answered(srv.server) == lines
    finally:
        trio.lowlevel.remove_instrument(watch)
    print(f"\nmost requests answered in one task step: {watch.most}")
    assert 0 < watch.most <= loop.ANSWERS_PER_PASS
