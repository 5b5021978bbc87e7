# The trio server: tcp_table listeners, one task per connection, limits, signals and reload.
"""``srsd serve``: answer Postfix's canonical-map lookups over tcp_table and socketmap.

Data flows one way: bytes in, the wire decoder (:mod:`srsd.tcp_table` or
:mod:`srsd.socketmap`), the :class:`srsd.policy.Policy`, the wire encoder, bytes out. A
tcp_table endpoint serves one map, chosen by its port; a socketmap endpoint (TCP or a unix
socket) serves both, chosen by the map name in each request. This module only moves bytes
and owns connections, time-outs and shutdown:

* every listener feeds one nursery of connection tasks, at most ``max_connections`` at
  once; a connection over the limit is closed at once and counted;
* a connection task uses its non-blocking socket directly and goes through trio's
  scheduler only when it must wait (per-request cancel scopes and stream wrappers cost
  more than the SRS work: ``bench/``); it runs in one cancel scope, which an idle sweeper
  cancels after ``idle_timeout`` (socketmap: ``keep_alive``) seconds without a complete
  request;
* a connection is also closed when a reply cannot be sent within :data:`SEND_TIMEOUT`
  (a client that does not read gets back-pressure, never an unbounded buffer), and
  cleanly after a protocol error (:func:`_linger`);
* SIGTERM/SIGINT stop accepting, let replies in flight finish within ``shutdown_grace``
  seconds, and exit 0; SIGHUP reloads settings, secrets and exclusions, keeping the old
  ones when anything is invalid, and says which changes need a restart
  (:func:`srsd.settings.plan_reload`).
"""

from __future__ import annotations

import contextlib
import enum
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol as TypingProtocol

import trio

from srsd import milter_server, socketmap, systemd, tcp_table
from srsd.accept import ACCEPT_RETRY_DELAY, ACCEPT_RETRY_ERRNOS
from srsd.delivery import PostfixDelivery
from srsd.envelope import EnvelopeMode, lifetime
from srsd.envelope.lookups import EnvelopeDatabase
from srsd.envelope.store import StorageError, expire_periodically, open_store
from srsd.logs import LOGGER, setup, show
from srsd.metrics import Latency, registry_for, serve_http
from srsd.policy import Decision, DomainSet, Outcome, Policy
from srsd.settings import (
    ConfigError,
    InetEndpoint,
    Settings,
    UnixEndpoint,
    plan_reload,
)

#: Bytes read from a connection at once; the requests in it are answered in order.
RECEIVE_SIZE = 16384
#: Replies decided and sent at once: between two batches other connections are served.
REPLY_BATCH = 64
#: Seconds a reply may take to be sent (Postfix's own read time-out is 100 s).
SEND_TIMEOUT = 100.0
#: Seconds between systemd STATUS= updates (when running under systemd).
STATUS_INTERVAL = 30.0
#: Names a socket-activated listener may carry (FileDescriptorName= in the .socket unit).
ACTIVATION_NAMES = ("forward", "reverse", "socketmap", "milter", "metrics")
#: Unsent reply bytes the kernel may hold per connection (TCP_NOTSENT_LOWAT).
NOTSENT_LOWAT = 16384
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # 25 on Linux
#: Longest pause between two sweeps for idle connections, in seconds.
SWEEP_INTERVAL = 1.0
#: Seconds to wait for an answer when probing an existing unix socket file.
PROBE_TIMEOUT = 1.0
#: Accepts in a row before the accept loop lets other tasks run.
ACCEPT_BATCH = 16
#: Reads in a row that found data at once before a connection lets other tasks run.
READ_BATCH = 8
#: After a protocol error, how long and how much input to discard before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
#: Bad-request log lines per second at most (the rest are counted in one line).
BAD_REQUEST_LOG_RATE = 10
#: At most one "connection limit reached" line per this many seconds.
LIMIT_LOG_INTERVAL = 10.0
_INTERNAL_ERROR = Decision(Outcome.ERROR, reason="srsd internal error")
_EMBEDDED = EnvelopeMode.EMBEDDED


class Role(enum.Enum):
    """Which map a lookup is for."""

    FORWARD = "forward"  # sender_canonical_maps
    REVERSE = "reverse"  # recipient_canonical_maps


class Wire(enum.Enum):
    """The protocol an endpoint speaks."""

    TCP_TABLE = "tcp_table"
    SOCKETMAP = "socketmap"
    MILTER = "milter"


#: socketmap map names, as in ``socketmap:inet:127.0.0.1:10003:forward``.
MAP_NAMES = {b"forward": Role.FORWARD, b"reverse": Role.REVERSE}


@dataclass(frozen=True)
class Endpoint:
    """One listening socket: its protocol, its map (tcp_table only) and where it is."""

    wire: Wire
    role: Role | None  # None for socketmap: each request names its map
    sock: socket.socket  # listening, non-blocking
    where: str
    unix_path: Path | None = None
    unix_inode: int = 0  # of the socket file we created: removed on exit only if still ours

    @property
    def port(self) -> int:
        """The TCP port bound (0 for a unix socket)."""
        return 0 if self.sock.family == socket.AF_UNIX else int(self.sock.getsockname()[1])

    def __str__(self) -> str:
        name = self.role.value if self.role else "forward+reverse"
        return f"{self.wire.value} {name} on {self.where}"


class _Tracked:
    """One connection as the idle sweeper and shutdown see it."""

    __slots__ = ("last", "limit", "scope", "waiting")

    def __init__(self, limit: float, now: float) -> None:
        self.limit = limit  # seconds allowed without a complete request
        self.last = now  # trio time of the last complete request (or of the connect)
        self.scope = trio.CancelScope()
        self.waiting = False  # in wait_readable: nothing in flight


class _Reader(TypingProtocol):
    """What a sans-IO request reader offers the connection loop."""

    @property
    def closed(self) -> bool: ...
    def feed(self, data: bytes | bytearray) -> Sequence[object]: ...
    def feed_eof(self) -> Sequence[object]: ...


class StartError(Exception):
    """srsd cannot start serving (a port in use, nothing to serve)."""


class Server:
    """The state of one running srsd: settings, policy, counters, connections."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        self.settings = settings
        self.policy: Policy = settings.policy()
        store = open_store(settings.envelope_database, settings.state_dir,
                           lifetime(settings.max_age))  # fmt: skip
        self.envelopes = EnvelopeDatabase(store, settings.original_envelope,
                                          settings.envelope_write_limit)  # fmt: skip
        self._reload = reload
        self.notifier = systemd.Notifier(os.environ)
        self.metrics_listeners: list[trio.SocketListener] = []
        self.open_connections = 0
        self.rejected_connections = 0
        #: Answers given, by (protocol, map, outcome): the metrics read these.
        self.lookups: Counter[tuple[str, str, str]] = Counter()
        self.latency = Latency()
        self.reloads: Counter[str] = Counter()
        self._stopping = False
        self._tracked: set[_Tracked] = set()
        self._last_limit_log = -LIMIT_LOG_INTERVAL
        self._bad_since, self._bad_logged, self._bad_unlogged = 0.0, 0, 0
        self.milter = milter_server.MilterService(
            forward=self._milter_forward, reverse=self._milter_reverse,
            delivery=_delivery(settings), recipient_limit=settings.milter_recipient_limit)
        self.milter_listeners: list[trio.SocketListener] = []
        self._milter_socket: tuple[Path, int] | None = None  # a unix socket file we made

    @property
    def database_errors(self) -> int:
        """Envelope database failures so far (a metric)."""
        return self.envelopes.outage.failures

    @property
    def database_writes_refused(self) -> int:
        """Envelope database writes refused by the flood cap so far (a metric)."""
        return self.envelopes.refused

    # -- start-up -----------------------------------------------------------------------------

    async def bind(self) -> list[Endpoint]:
        """Open every configured listener (or adopt systemd's); raise :class:`StartError`
        with one clear line."""
        try:
            passed = systemd.listen_fds(os.environ, os.getpid())
        except ValueError as err:
            raise StartError(f"socket activation: {err}") from None
        if passed:
            systemd.unset_listen_env(os.environ)
            adopted = self._adopt(passed)
            LOGGER.info("socket-activated: adopted %s from systemd; the listen addresses "
                        "and ports in the settings are not used",
                        ", ".join(p.name for p in passed))  # fmt: skip
            return adopted
        endpoints: list[Endpoint] = []
        try:
            metrics = self.settings.metrics_listen
            if metrics is not None:
                self.metrics_listeners = [
                    trio.SocketListener(trio.socket.from_stdlib_socket(x))
                    for x in await _tcp_sockets(metrics.host, metrics.port, "metrics")
                ]
            for role, port in ((Role.FORWARD, self.settings.forward_port),
                               (Role.REVERSE, self.settings.reverse_port)):  # fmt: skip
                for host in self.settings.listen if port else ():
                    opened = await _tcp_sockets(host, port, f"tcp_table {role.value}")
                    endpoints += [Endpoint(Wire.TCP_TABLE, role, x, _where(x)) for x in opened]
            spec = self.settings.socketmap
            if isinstance(spec, InetEndpoint):
                opened = await _tcp_sockets(spec.host, spec.port, "socketmap")
                endpoints += [Endpoint(Wire.SOCKETMAP, None, x, _where(x)) for x in opened]
            elif isinstance(spec, UnixEndpoint):
                listening = _unix_socket(spec.path, self.settings)
                endpoints.append(Endpoint(Wire.SOCKETMAP, None, listening, f"unix:{spec.path}",
                                          spec.path, spec.path.lstat().st_ino))  # fmt: skip
            await self._bind_milter()
        except BaseException:
            _close_all(endpoints)
            self._close_milter()
            for listener in self.metrics_listeners:
                await listener.aclose()
            raise
        if not endpoints and not self.milter_listeners:
            raise StartError("nothing to serve: both tcp_table ports are 0 and socketmap is off")
        return endpoints

    async def _bind_milter(self) -> None:
        spec = self.settings.milter
        if isinstance(spec, InetEndpoint):
            socks = await _tcp_sockets(spec.host, spec.port, "milter")
        elif isinstance(spec, UnixEndpoint):
            socks = [_unix_socket(spec.path, self.settings)]
            self._milter_socket = (spec.path, spec.path.lstat().st_ino)
        else:
            return
        self.milter_listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(x))
                                 for x in socks]  # fmt: skip
        LOGGER.info("milter on %s", "unix:" + str(spec.path) if isinstance(spec, UnixEndpoint)
                    else ", ".join(_where(x) for x in socks))  # fmt: skip

    def _close_milter(self) -> None:
        for listener in self.milter_listeners:
            listener.socket.close()
        if self._milter_socket is not None:
            path, inode = self._milter_socket
            with contextlib.suppress(OSError):  # remove our socket file, and only ours
                if path.lstat().st_ino == inode:
                    path.unlink()

    async def _milter_forward(self, key: bytes) -> Decision:
        return await self._decide(Wire.MILTER, Role.FORWARD, key)

    async def _milter_reverse(self, key: bytes) -> Decision:
        return await self._decide(Wire.MILTER, Role.REVERSE, key)

    def _adopt(self, passed: list[systemd.PassedSocket]) -> list[Endpoint]:
        """Endpoints from the sockets systemd passed, by their FileDescriptorName=."""
        endpoints: list[Endpoint] = []
        for item in passed:
            if item.name not in ACTIVATION_NAMES:
                raise StartError(f"socket activation: socket {item.fd} is named {item.name!r}; "
                                 f"name it one of {', '.join(ACTIVATION_NAMES)} with "
                                 "FileDescriptorName=")  # fmt: skip
            sock = socket.socket(fileno=item.fd)
            if item.name in ("metrics", "milter"):
                tsock = trio.socket.from_stdlib_socket(sock)
                into = self.metrics_listeners if item.name == "metrics" else self.milter_listeners
                into.append(trio.SocketListener(tsock))
                continue
            sock.setblocking(False)
            unix = sock.family == socket.AF_UNIX
            where = f"unix:{sock.getsockname()}" if unix else _where(sock)
            if item.name == "socketmap":
                endpoints.append(Endpoint(Wire.SOCKETMAP, None, sock, where))
            else:
                endpoints.append(Endpoint(Wire.TCP_TABLE, Role(item.name), sock, where))
        if not endpoints and not self.milter_listeners:
            raise StartError("socket activation passed no forward, reverse, socketmap or "
                             "milter socket")
        return endpoints

    # -- main loop ------------------------------------------------------------------------------

    async def serve(
        self,
        endpoints: list[Endpoint],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation), then drain and return."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as connections:
                try:
                    with trio.CancelScope() as accepting:
                        async with trio.open_nursery() as loops:
                            for endpoint in endpoints:
                                loops.start_soon(self._accept_loop, endpoint, connections)
                            loops.start_soon(self._watch_signals, signals, accepting)
                            loops.start_soon(self._sweep_idle)
                            if self.milter_listeners:
                                loops.start_soon(self.milter.serve, self.milter_listeners)
                            if self.envelopes.mode is not EnvelopeMode.EMBEDDED:
                                loops.start_soon(expire_periodically, self.envelopes.store,
                                                 self.envelopes.outage)  # fmt: skip
                            registry = registry_for(self)
                            for listener in self.metrics_listeners:
                                loops.start_soon(serve_http, listener, registry)
                            if self.notifier.enabled:
                                loops.start_soon(self._report_status)
                            self.notifier.notify("READY=1", self.status())
                            task_status.started()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._drain(endpoints, connections)
            with trio.CancelScope(shield=True):
                await self.envelopes.store.aclose()

    async def check_storage(self) -> None:
        """At start, in database modes: say at once whether the envelope database works.

        A failure is logged and srsd starts anyway: lookups that need the database answer
        "temporary failure" (Postfix defers) until it works, the rest are served.
        """
        if self.envelopes.mode is EnvelopeMode.EMBEDDED:
            return
        try:
            self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            LOGGER.warning("cannot create state directory %s: %s", self.settings.state_dir,
                           err.strerror)  # fmt: skip
        try:
            await self.envelopes.store.check()
        except StorageError as err:
            self.envelopes.outage.failed(err)
        else:
            LOGGER.info("envelope database %s, mode %s", self.envelopes.store.description,
                        self.envelopes.mode.value)  # fmt: skip

    async def _drain(self, endpoints: list[Endpoint], connections: trio.Nursery) -> None:
        self._stopping = True
        self.notifier.notify("STOPPING=1")
        _close_all(endpoints)
        self._close_milter()
        for listener in self.metrics_listeners:
            await listener.aclose()
        for tracked in list(self._tracked):
            if tracked.waiting:
                tracked.scope.cancel()  # idle connections close now; replies in flight finish
        connections.cancel_scope.deadline = trio.current_time() + self.settings.shutdown_grace

    async def _watch_signals(self, signals: AsyncIterator[int],
                             accepting: trio.CancelScope) -> None:  # fmt: skip
        async for signum in signals:
            if signum == signal.SIGHUP:
                usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
                self.reload()
                self.notifier.notify("READY=1", self.status())
            else:
                LOGGER.info("%s received: stopping", signal.Signals(signum).name)
                accepting.cancel()
                return

    def status(self) -> str:
        """A systemd ``STATUS=`` line with the counts that matter."""
        return (f"STATUS={sum(self.lookups.values())} lookups, {self.open_connections} "
                f"connections open, {self.rejected_connections} refused (limit), "
                f"{self.reloads['failed']} failed reloads")  # fmt: skip

    async def _report_status(self) -> None:
        while True:
            await trio.sleep(STATUS_INTERVAL)
            self.notifier.notify(self.status())

    def reload(self) -> bool:
        """Re-read settings, secrets and exclusions; keep the old ones if anything is wrong."""
        try:
            new = self._reload()
        except ConfigError as err:
            self.reloads["failed"] += 1
            LOGGER.error("reload failed, keeping the previous configuration: %s", err)
            return False
        except Exception:  # a bug must not take the daemon (and all mail) down with it
            self.reloads["failed"] += 1
            LOGGER.exception("reload failed, keeping the previous configuration")
            return False
        for warning in new.warnings:
            LOGGER.warning("%s", warning)
        plan = plan_reload(self.settings, new)
        for key in plan.restart:
            LOGGER.warning("%s changed: restart to apply", key)
        new = plan.settings
        if {"log_level", "log_format", "syslog"} & set(plan.applied):
            setup_logging(new)
        self.settings, self.policy = new, new.policy()
        self.envelopes.configure(new.original_envelope, new.envelope_write_limit)
        self.milter.delivery = _delivery(new)  # and Postfix's configuration is read again
        self.milter.recipient_limit = new.milter_recipient_limit
        self.reloads["ok"] += 1
        LOGGER.info("configuration reloaded: %d secret(s), %d excluded domain(s)",
                    len(new.secrets), len(new.excluded))  # fmt: skip
        return True

    # -- connections -------------------------------------------------------------------------

    async def _accept_loop(self, endpoint: Endpoint, connections: trio.Nursery) -> None:
        listening = endpoint.sock
        tcp = listening.family != socket.AF_UNIX
        accepted = 0
        while True:
            try:
                conn, _ = listening.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listening)
                continue
            except OSError as err:
                if err.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                LOGGER.error("accept failed: %s; retrying", os.strerror(err.errno))
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if self.open_connections >= self.settings.max_connections:
                self.rejected_connections += 1
                self._log_limit()
                conn.close()
            else:
                conn.setblocking(False)
                if tcp:  # one small reply per request: never wait for Nagle; and keep
                    # at most NOTSENT_LOWAT unsent bytes in the kernel, so a client that
                    # does not read feels back-pressure early (as trio's streams do)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                self.open_connections += 1  # counted here: a burst cannot overshoot the limit
                connections.start_soon(self._connection, conn, endpoint)
            accepted += 1
            if accepted % ACCEPT_BATCH == 0:
                await trio.lowlevel.checkpoint()  # a flood of connects must not hold the loop

    def _log_limit(self) -> None:
        now = time.monotonic()
        if now - self._last_limit_log >= LIMIT_LOG_INTERVAL:
            self._last_limit_log = now
            LOGGER.warning("connection limit (%d) reached: closing new connections "
                           "(%d refused so far)", self.settings.max_connections,
                           self.rejected_connections)  # fmt: skip

    async def _connection(self, conn: socket.socket, endpoint: Endpoint) -> None:
        """Serve one connection: read, answer every complete request, repeat.

        The socket is non-blocking and used directly: a read or write that can be done at
        once costs no trip through the scheduler, and only a connection with nothing to
        read waits in :func:`trio.lowlevel.wait_readable`. The whole connection runs in
        one cancel scope, which the idle sweeper cancels when no complete request arrived
        for the connection's time-out, and shutdown cancels while the connection waits.
        """
        if endpoint.wire is Wire.TCP_TABLE:
            reader: _Reader = tcp_table.RequestReader(self.settings.max_request)
            limit = self.settings.idle_timeout
        else:
            reader = socketmap.RequestReader(self.settings.max_request)
            limit = self.settings.keep_alive
        tracked = _Tracked(limit, trio.current_time())
        self._tracked.add(tracked)
        try:
            with tracked.scope:
                await self._converse(conn, endpoint, reader, tracked)
        except OSError:
            pass  # the client reset or closed the connection: nothing to answer
        finally:
            self._tracked.discard(tracked)
            conn.close()
            self.open_connections -= 1

    async def _converse(self, conn: socket.socket, endpoint: Endpoint, reader: _Reader,
                        tracked: _Tracked) -> None:  # fmt: skip
        ready = 0  # reads in a row that did not wait
        while not self._stopping:
            try:
                data = conn.recv(RECEIVE_SIZE)
            except BlockingIOError:
                tracked.waiting = True
                try:
                    await trio.lowlevel.wait_readable(conn)
                finally:
                    tracked.waiting = False
                ready = 0
                continue
            events = reader.feed(data) if data else reader.feed_eof()
            if events:
                tracked.last = trio.current_time()  # a request came: not idle while answered
                if not await self._reply(conn, endpoint, events):
                    return
                tracked.last = trio.current_time()
            if not data:
                return
            if reader.closed:  # a protocol error: the client may still be sending
                await _linger(conn)
                return
            ready += 1
            if ready == READ_BATCH:  # a client that never lets us wait must share the loop
                ready = 0
                await trio.lowlevel.checkpoint()

    async def _reply(self, conn: socket.socket, endpoint: Endpoint,
                     events: Sequence[object]) -> bool:  # fmt: skip
        """Answer ``events`` in order, :data:`REPLY_BATCH` at a time; False if not read.

        Between two batches other connections are served, so one chunk of many short
        requests (16384 blank lines) cannot hold the event loop, and the replies waiting
        for a client that does not read stay one batch in size.
        """
        for start in range(0, len(events), REPLY_BATCH):
            if start:
                await trio.lowlevel.checkpoint()
            batch = events[start : start + REPLY_BATCH]
            replies = b"".join([await self._answer(endpoint, e) for e in batch])
            if not await _send(conn, replies):
                LOGGER.warning("%s client did not read its replies for %g s: closing",
                               endpoint.wire.value, SEND_TIMEOUT)  # fmt: skip
                return False
        return True

    async def _sweep_idle(self) -> None:
        """Close connections that sent no complete request within their time-out."""
        interval = min(SWEEP_INTERVAL, self.settings.idle_timeout / 4,
                       self.settings.keep_alive / 4)  # fmt: skip
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for tracked in list(self._tracked):
                if now - tracked.last > tracked.limit:
                    tracked.scope.cancel()

    async def _answer(self, endpoint: Endpoint, event: object) -> bytes:
        """The reply bytes for one event of ``endpoint``'s reader."""
        if endpoint.wire is Wire.TCP_TABLE:
            if isinstance(event, tcp_table.Request) and endpoint.role is not None:
                return tcp_table.reply_for(
                    await self._decide(Wire.TCP_TABLE, endpoint.role, event.key)
                )
            reason = getattr(event, "reason", "Invalid request")
            self._bad_request(endpoint, reason)
            return tcp_table.not_found(reason)
        if isinstance(event, socketmap.Request):
            role = MAP_NAMES.get(event.name)
            if role is None:  # a configuration error on the Postfix side, never the sender's
                self._bad_request(endpoint, f"unknown map name {show(event.name)!r}")
                return socketmap.permanent_failure("Unknown map name")
            return socketmap.reply_for(await self._decide(Wire.SOCKETMAP, role, event.key))
        reason = getattr(event, "reason", "Invalid request")
        self._bad_request(endpoint, reason)
        return socketmap.permanent_failure(reason)

    async def _decide(self, wire: Wire, role: Role, key: bytes) -> Decision:
        """The decision for one lookup, through the envelope database when it applies."""
        started = time.perf_counter()
        now = time.time()
        try:
            if role is Role.FORWARD:
                decision = self.policy.forward(key, now)
                if decision.value is not None and self.envelopes.mode is not _EMBEDDED:
                    decision = await self.envelopes.forward(self.policy, key, decision, now)
            else:
                decision = self.policy.reverse(key, now)
                if decision.value is not None:
                    decision = await self.envelopes.reverse(decision, now)
        except Exception:
            LOGGER.exception("%s <%s>: internal error", role.value, show(key))
            decision = _INTERNAL_ERROR
        self.latency.observe(role.value, time.perf_counter() - started)
        self._record(wire, role, key, decision)
        return decision

    def _bad_request(self, endpoint: Endpoint, reason: str) -> None:
        name = endpoint.role.value if endpoint.role else "-"
        self.lookups[(endpoint.wire.value, name, "bad request")] += 1
        # Garbage arrives as fast as a client can send it: log a few lines a second.
        now = time.monotonic()
        if now - self._bad_since >= 1.0:
            if self._bad_unlogged:
                LOGGER.info("%d more bad requests not logged", self._bad_unlogged)
            self._bad_since, self._bad_logged, self._bad_unlogged = now, 0, 0
        if self._bad_logged < BAD_REQUEST_LOG_RATE:
            self._bad_logged += 1
            LOGGER.info("%s %s: bad request: %s", endpoint.wire.value, name, reason)
        else:
            self._bad_unlogged += 1

    def _record(self, wire: Wire, role: Role, key: bytes, decision: Decision) -> None:
        self.lookups[(wire.value, role.value, decision.outcome.value)] += 1
        level = logging.DEBUG if decision.quiet else logging.INFO
        if LOGGER.isEnabledFor(level):
            if decision.value is not None:
                LOGGER.log(level, "%s <%s> rewritten as <%s>", role.value, show(key),
                           show(decision.value))  # fmt: skip
            else:
                LOGGER.log(level, "%s <%s> not rewritten: %s", role.value, show(key),
                           decision.reason)  # fmt: skip


async def _send(conn: socket.socket, data: bytes) -> bool:
    """Send all of ``data``: at once when the socket takes it, else waiting for room up to
    :data:`SEND_TIMEOUT` seconds. False when the client did not read in that time."""
    try:
        sent = conn.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return True
    view = memoryview(data)[sent:]
    with trio.move_on_after(SEND_TIMEOUT):
        while view:
            await trio.lowlevel.wait_writable(conn)
            with contextlib.suppress(BlockingIOError):  # woken, but the room went again
                view = view[conn.send(view) :]
        return True
    return False


async def _linger(conn: socket.socket) -> None:
    """Close after a protocol error without losing the reply just sent.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the reply still in flight (Postfix would then retry and finally defer the mail). So:
    half-close, then read and discard what the client still sends, bounded in bytes and
    time, and only then close.
    """
    conn.shutdown(socket.SHUT_WR)
    discarded = 0
    with trio.move_on_after(LINGER_SECONDS):
        while discarded < LINGER_BYTES:
            try:
                chunk = conn.recv(RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(conn)
                continue
            if not chunk:
                break
            discarded += len(chunk)


def _delivery(settings: Settings) -> PostfixDelivery:
    """How the milter tells locally delivered mail: settings, else Postfix itself."""
    local = DomainSet(settings.local_domains) if settings.local_domains else None
    return PostfixDelivery(rewrite_local=settings.rewrite_local, local_domains=local)


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return _host_port(str(host), int(port))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _tcp_sockets(host: str, port: int, what: str) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets for ``host`` (trio resolves and binds them)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as err:
        reason = err.strerror or str(err)
        where = _host_port(host, port)
        raise StartError(f"cannot listen on {where} for {what}: {reason}") from None
    socks = [socket.socket(fileno=listener.socket.detach()) for listener in listeners]
    for sock in socks:
        sock.setblocking(False)
    return socks


def _unix_socket(path: Path, settings: Settings) -> socket.socket:
    """Bind a unix socket at ``path``, replacing a stale socket file but never a live one."""
    try:
        existing = path.lstat()
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise StartError(f"cannot listen on unix:{path}: it exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # nobody answers: a stale socket from a crash
            except OSError as err:  # e.g. no permission: we cannot tell, so leave it alone
                raise StartError(f"cannot listen on unix:{path}: it exists and cannot be "
                                 f"probed: {err.strerror or err}") from None  # fmt: skip
            else:
                raise StartError(f"cannot listen on unix:{path}: another server is answering "
                                 "there")  # fmt: skip
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, settings.socketmap_mode)
        if settings.socketmap_owner:
            user, _, group = settings.socketmap_owner.partition(":")
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(path, pwd.getpwnam(user).pw_uid, gid)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except (OSError, KeyError) as err:
        sock.close()
        reason = err.strerror if isinstance(err, OSError) else f"no such user or group {err}"
        raise StartError(f"cannot listen on unix:{path}: {reason}") from None
    return sock


def _close_all(endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        trio.lowlevel.notify_closing(endpoint.sock)  # wakes an accept loop still waiting
        endpoint.sock.close()
        path = endpoint.unix_path
        if path is not None:
            with contextlib.suppress(OSError):  # remove our socket file, and only ours
                if path.lstat().st_ino == endpoint.unix_inode:
                    path.unlink()


def drop_privileges(user: str, state_dir: Path) -> None:
    """As root, switch to ``user``: supplementary groups, then group, then user.

    srsd's own state directory (the generated secret, the SQLite database) is handed to
    ``user`` first, so that reloads and database writes keep working afterwards.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f"run_as: no such user: {user!r}") from None
    _hand_over(state_dir, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _hand_over(state_dir: Path, uid: int, gid: int) -> None:
    """Give root's state directory and the files directly in it to ``uid``/``gid``."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state_dir.stat().st_uid != 0:
            return  # not ours to change: whoever owns it set it up
        os.chown(state_dir, uid, gid)
        for entry in state_dir.iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chown(entry, uid, gid)
    except OSError as err:
        LOGGER.warning("cannot hand %s over to uid %d: %s", state_dir, uid, err.strerror)


def leave_root(settings: Settings) -> None:
    """Started as root: drop to ``run_as``, or refuse unless ``allow_root`` says otherwise."""
    if os.geteuid() != 0:
        return
    if settings.run_as:
        drop_privileges(settings.run_as, settings.state_dir)
        LOGGER.info("running as %s (uid %d)", settings.run_as, os.getuid())
    elif not settings.allow_root:
        raise StartError("refusing to serve as root: set run_as (RUN_AS, --run-as) to an "
                         "unprivileged user, or allow_root (--allow-root) to insist")  # fmt: skip


def setup_logging(settings: Settings) -> None:
    """Set logging up as ``settings`` say (at start, and again when a reload changes it)."""
    setup(settings.log_level, syslog=settings.syslog, json_lines=settings.log_format == "json")


def run(settings: Settings, reload: Callable[[], Settings], *, check: bool = False) -> int:
    """Run ``srsd serve`` with loaded settings; returns the process exit status."""
    setup_logging(settings)
    for warning in settings.warnings:
        LOGGER.warning("%s", warning)
    if check:
        print(f"srsd: configuration OK: domain {settings.domain}, {len(settings.secrets)} "
              f"secret(s) from {settings.secrets_file}, {len(settings.excluded)} excluded "
              f"domain(s)")  # fmt: skip
        return 0
    return trio.run(_main, settings, reload)


async def _main(settings: Settings, reload: Callable[[], Settings]) -> int:
    server = Server(settings, reload)
    try:
        endpoints = await server.bind()
        leave_root(settings)
    except (StartError, OSError) as err:
        LOGGER.error("cannot start: %s", err)
        return 1
    await server.check_storage()
    LOGGER.info("srsd ready: %s; SRS domain %s, %d secret(s)",
                ", ".join(map(str, endpoints)), settings.domain, len(settings.secrets))  # fmt: skip
    await server.serve(endpoints)
    LOGGER.info("stopped after %d lookup(s)", sum(server.lookups.values()))
    return 0
