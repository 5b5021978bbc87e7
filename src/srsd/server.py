# The trio server: tcp_table listeners, one task per connection, limits, signals and reload.
"""``srsd serve``: answer Postfix's canonical-map lookups over tcp_table.

Data flows one way: bytes in, :class:`srsd.tcp_table.RequestReader`, the
:class:`srsd.policy.Policy`, :mod:`srsd.tcp_table` replies, bytes out. This module only
moves bytes and owns connections, time-outs and shutdown:

* every listener feeds one nursery of connection tasks, at most ``max_connections`` at
  once; a connection over the limit is closed at once and counted;
* a connection is closed after ``idle_timeout`` seconds without a complete request, and
  when a reply cannot be sent within :data:`SEND_TIMEOUT` (a client that does not read
  gets back-pressure, never an unbounded buffer);
* SIGTERM/SIGINT stop accepting, let replies in flight finish within ``shutdown_grace``
  seconds, and exit 0; SIGHUP reloads settings, secrets and exclusions, keeping the old
  ones when anything is invalid.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import pwd
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import trio

from srsd import tcp_table
from srsd.logs import LOGGER, setup, show
from srsd.policy import Decision, Policy
from srsd.settings import ConfigError, Settings

#: Bytes read from a connection at once; whole lines in it are answered in one write.
RECEIVE_SIZE = 16384
#: Seconds a reply may take to be sent (Postfix's own read time-out is 100 s).
SEND_TIMEOUT = 100.0
#: At most one "connection limit reached" line per this many seconds.
LIMIT_LOG_INTERVAL = 10.0
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_DELAY = 0.1


class Role(enum.Enum):
    """Which map an endpoint serves."""

    FORWARD = "forward"  # sender_canonical_maps
    REVERSE = "reverse"  # recipient_canonical_maps


class StartError(Exception):
    """srsd cannot start serving (a port in use, nothing to serve)."""


class Server:
    """The state of one running srsd: settings, policy, counters, connections."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        self.settings = settings
        self.policy: Policy = settings.policy()
        self._reload = reload
        self.open_connections = 0
        self.rejected_connections = 0
        self.lookups: Counter[tuple[str, str]] = Counter()
        self.reloads: Counter[str] = Counter()
        self._stopping = False
        self._idle_waits: set[trio.CancelScope] = set()
        self._last_limit_log = -LIMIT_LOG_INTERVAL

    # -- start-up -----------------------------------------------------------------------------

    async def bind(self) -> list[tuple[Role, trio.SocketListener]]:
        """Open every configured listener; raise :class:`StartError` with one clear line."""
        listeners: list[tuple[Role, trio.SocketListener]] = []
        ports = ((Role.FORWARD, self.settings.forward_port),
                 (Role.REVERSE, self.settings.reverse_port))  # fmt: skip
        try:
            for role, port in ports:
                if port == 0:
                    continue
                for host in self.settings.listen:
                    try:
                        opened = await trio.open_tcp_listeners(port, host=host)
                    except OSError as err:
                        reason = err.strerror or str(err)
                        raise StartError(f"cannot listen on {_endpoint(host, port)} for "
                                         f"{role.value}: {reason}") from None  # fmt: skip
                    listeners += [(role, listener) for listener in opened]
        except BaseException:
            for _, listener in listeners:
                await listener.aclose()
            raise
        if not listeners:
            raise StartError("nothing to serve: forward_port and reverse_port are both 0")
        return listeners

    # -- main loop ------------------------------------------------------------------------------

    async def serve(
        self,
        listeners: list[tuple[Role, trio.SocketListener]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation), then drain and return."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as accepting:
                    async with trio.open_nursery() as loops:
                        for role, listener in listeners:
                            loops.start_soon(self._accept_loop, listener, role, connections)
                        loops.start_soon(self._watch_signals, signals, accepting)
                        task_status.started()
                await self._drain(listeners, connections)

    async def _drain(
        self, listeners: list[tuple[Role, trio.SocketListener]], connections: trio.Nursery
    ) -> None:
        self._stopping = True
        for _, listener in listeners:
            await listener.aclose()
        for wait in list(self._idle_waits):
            wait.cancel()  # idle connections close now; replies in flight may finish
        connections.cancel_scope.deadline = trio.current_time() + self.settings.shutdown_grace

    async def _watch_signals(self, signals: AsyncIterator[int],
                             accepting: trio.CancelScope) -> None:  # fmt: skip
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
            else:
                LOGGER.info("%s received: stopping", signal.Signals(signum).name)
                accepting.cancel()
                return

    def reload(self) -> bool:
        """Re-read settings, secrets and exclusions; keep the old ones if anything is wrong."""
        try:
            new = self._reload()
        except ConfigError as err:
            self.reloads["failed"] += 1
            LOGGER.error("reload failed, keeping the previous configuration: %s", err)
            return False
        for warning in new.warnings:
            LOGGER.warning("%s", warning)
        old = self.settings
        if (new.listen, new.forward_port, new.reverse_port) != (
            old.listen, old.forward_port, old.reverse_port
        ):  # fmt: skip
            LOGGER.warning("listen addresses and ports changed: restart srsd to apply them")
        self.settings, self.policy = new, new.policy()
        self.reloads["ok"] += 1
        LOGGER.info("configuration reloaded: %d secret(s), %d excluded domain(s)",
                    len(new.secrets), len(new.excluded))  # fmt: skip
        return True

    # -- connections -------------------------------------------------------------------------

    async def _accept_loop(
        self, listener: trio.SocketListener, role: Role, connections: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as err:
                if err.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                LOGGER.error("accept failed: %s; retrying", os.strerror(err.errno))
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            if self.open_connections >= self.settings.max_connections:
                self.rejected_connections += 1
                self._log_limit()
                await stream.aclose()
                continue
            self.open_connections += 1  # counted here, so a burst cannot overshoot the limit
            connections.start_soon(self._connection, stream, role)

    def _log_limit(self) -> None:
        now = time.monotonic()
        if now - self._last_limit_log >= LIMIT_LOG_INTERVAL:
            self._last_limit_log = now
            LOGGER.warning("connection limit (%d) reached: closing new connections "
                           "(%d refused so far)", self.settings.max_connections,
                           self.rejected_connections)  # fmt: skip

    async def _connection(self, stream: trio.SocketStream, role: Role) -> None:
        reader = tcp_table.RequestReader(self.settings.max_request)
        deadline = trio.current_time() + self.settings.idle_timeout
        try:
            async with stream:
                while not self._stopping:
                    with trio.CancelScope(deadline=deadline) as wait:
                        self._idle_waits.add(wait)
                        try:
                            data = await stream.receive_some(RECEIVE_SIZE)
                        finally:
                            self._idle_waits.discard(wait)
                    if wait.cancelled_caught:
                        break  # idle for too long, or shutting down
                    events = reader.feed(data) if data else reader.feed_eof()
                    if events:
                        replies = b"".join([self._answer(role, event) for event in events])
                        with trio.move_on_after(SEND_TIMEOUT) as sending:
                            await stream.send_all(replies)
                        if sending.cancelled_caught:
                            LOGGER.warning("%s client did not read its replies for %g s: "
                                           "closing", role.value, SEND_TIMEOUT)  # fmt: skip
                            break
                        deadline = trio.current_time() + self.settings.idle_timeout
                    if not data or reader.closed:
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client reset or closed the connection: nothing to answer
        finally:
            self.open_connections -= 1

    def _answer(self, role: Role, event: tcp_table.Event) -> bytes:
        if isinstance(event, tcp_table.Request):
            try:
                if role is Role.FORWARD:
                    decision = self.policy.forward(event.key, time.time())
                else:
                    decision = self.policy.reverse(event.key, time.time())
            except Exception:
                self.lookups[(role.value, "error")] += 1
                LOGGER.exception("%s %s: internal error", role.value, show(event.key))
                return tcp_table.temporary_failure("srsd internal error")
            self._record(role, event.key, decision)
            return tcp_table.reply_for(decision)
        self.lookups[(role.value, "bad request")] += 1
        LOGGER.info("%s: bad request: %s", role.value, event.reason)
        return tcp_table.not_found(event.reason)

    def _record(self, role: Role, key: bytes, decision: Decision) -> None:
        self.lookups[(role.value, decision.outcome.value)] += 1
        level = logging.DEBUG if decision.quiet else logging.INFO
        if LOGGER.isEnabledFor(level):
            if decision.value is not None:
                LOGGER.log(level, "%s <%s> rewritten as <%s>", role.value, show(key),
                           show(decision.value))  # fmt: skip
            else:
                LOGGER.log(level, "%s <%s> not rewritten: %s", role.value, show(key),
                           decision.reason)  # fmt: skip


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def drop_privileges(user: str) -> None:
    """As root, switch to ``user``: supplementary groups, then group, then user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f"run_as: no such user: {user!r}") from None
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def run(settings: Settings, reload: Callable[[], Settings], *, check: bool = False) -> int:
    """Run ``srsd serve`` with loaded settings; returns the process exit status."""
    setup(settings.log_level, syslog=settings.syslog)
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
        listeners = await server.bind()
        if settings.run_as and os.geteuid() == 0:
            drop_privileges(settings.run_as)
    except (StartError, OSError) as err:
        LOGGER.error("cannot start: %s", err)
        return 1
    where = ", ".join(f"{role.value} on {_endpoint(*_sockname(lst))}" for role, lst in listeners)
    LOGGER.info("srsd ready: %s; SRS domain %s, %d secret(s)", where, settings.domain,
                len(settings.secrets))  # fmt: skip
    await server.serve(listeners)
    served = sum(server.lookups.values())
    LOGGER.info("stopped after %d lookup(s)", served)
    return 0


def _sockname(listener: trio.SocketListener) -> tuple[str, int]:
    host, port = listener.socket.getsockname()[:2]
    return str(host), int(port)
