# The server's lifecycle: bind, drop privileges, serve, signals, reload, drain, exit.
"""``srsd serve``: answer Postfix's canonical-map lookups over tcp_table and socketmap.

Data flows one way: bytes in, the wire decoder (:mod:`srsd.wire.tcp_table` or
:mod:`srsd.wire.socketmap`), the decision (:mod:`srsd.serve.answers`: the policy and the envelope
database), the reply, bytes out. A tcp_table endpoint serves one map, chosen by its port;
a socketmap endpoint (TCP or a unix socket) serves both, chosen by the map name in each
request. The parts:

* :mod:`srsd.serve.listeners` opens the listening sockets (or adopts systemd's);
* :mod:`srsd.serve.privileges` then leaves root;
* :mod:`srsd.serve.loop` serves every connection from one readiness set, a pass at a time,
  with slow paths as trio tasks (storage waits, back-pressure, lingering), idle and
  request time-outs and the drain;
* :mod:`srsd.admission.gatekeeper` admits each new connection by its peer's user
  (:mod:`srsd.admission.rule`: ``allowed_users``, ``max_connections``,
  ``max_connections_per_user``), evicting the longest idle connection of the user who
  holds the most when full;
* :mod:`srsd.serve.answers` decides, counts, logs and builds the replies;
* :mod:`srsd.serve.milter_service` serves the milter endpoint (``smtpd_milters``), one trio task per
  connection outside the loop, deciding through the same lookups;
* this module runs them: :class:`Server` binds, serves until SIGTERM/SIGINT, then stops
  accepting, lets replies in flight finish within ``shutdown_grace`` seconds and exits 0;
  SIGHUP reloads settings, secrets and exclusions, keeping the old ones when anything is
  invalid, and says which changes need a restart (:func:`srsd.config.settings.plan_reload`). It
  also serves the metrics endpoint and tells systemd how it is doing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import trio

from srsd.admission.gatekeeper import Gatekeeper
from srsd.admission.owners import PeerOwners
from srsd.admission.rule import Limits
from srsd.config.settings import ConfigError, Settings, plan_reload
from srsd.envelope import EnvelopeMode, lifetime
from srsd.envelope.database import EnvelopeDatabase
from srsd.envelope.store import StorageError, expire_periodically, open_store
from srsd.host import logs, systemd
from srsd.host.logs import LOGGER, setup
from srsd.serve import hangups, milter_service
from srsd.serve.answers import (
    Lookups,
    MapService,
)
from srsd.serve.listeners import (
    Endpoint,
    StartError,
    bind,
    close_all,
    socket_directory_problems,
)
from srsd.serve.loop import Connection, ConnectionLoop, Service
from srsd.serve.metrics_endpoint import registry_for, serve_http
from srsd.serve.privileges import leave_root
from srsd.wire import Wire

__all__ = ["Server", "run"]

#: Seconds between systemd STATUS= updates (when running under systemd).
STATUS_INTERVAL = 30.0
#: Longest time a rendered log line waits to be written when no pass of the loop comes.
LOG_FLUSH_INTERVAL = 0.5


class Server:
    """The state of one running srsd: settings, lookups, connections, counters."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        self.settings = settings
        store = open_store(
            settings.envelope_database, settings.state_dir, lifetime(settings.max_age)
        )
        self.envelopes = EnvelopeDatabase(
            store, settings.original_envelope, settings.envelope_write_limit
        )
        #: Decides, counts and logs every lookup (also for callers outside the loop).
        self.lookups = Lookups(settings, settings.policy(), self.envelopes)
        self.loop = ConnectionLoop()
        owners = PeerOwners()
        if owners.method != "sock_diag":
            LOGGER.warning(
                "the kernel's sock_diag netlink is not available (a sandbox without "
                "AF_NETLINK?): the owners of TCP peers %s",
                "come from /proc/net/tcp, which is slow on hosts with many sockets"
                if owners.method == "proc"
                else "cannot be told apart",
            )
        self.gate: Gatekeeper[Connection] = Gatekeeper(
            limits_of(settings), owners, self.loop.close, _answering
        )
        self.loop.admit = self.admit
        self.loop.after_pass.append(logs.flush)  # the lookups' log lines, once per pass
        self.loop.on_answered = self.gate.answered
        self.loop.on_close = self.gate.closed
        self.loop.on_timeout = self.gate.timed_out
        self.loop.request_timeout = settings.request_timeout
        self._reload = reload
        self.notifier = systemd.Notifier(os.environ)
        self.metrics_listeners: list[trio.SocketListener] = []
        #: Reloads, by result (``ok``, ``failed``).
        self.reloads: Counter[str] = Counter()
        forward, reverse = milter_service.lookups_for(self.lookups)
        self.milter = milter_service.MilterService(
            forward=forward,
            reverse=reverse,
            delivery=milter_service.delivery_for(settings),
            recipient_limit=settings.milter_recipient_limit,
            split=settings.split_mixed == "smtpd",
        )
        self.milter_endpoints: list[Endpoint] = []

    # -- start-up -----------------------------------------------------------------------------

    async def bind(self) -> list[Endpoint]:
        """Open every configured listener (or adopt systemd's); raise :class:`StartError`
        with one clear line."""
        bound = await bind(self.settings)
        self.metrics_listeners = bound.metrics
        self.milter_endpoints = bound.milter
        return bound.endpoints

    # -- main loop ------------------------------------------------------------------------------

    async def serve(
        self,
        endpoints: list[Endpoint],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation), then drain and return."""
        services = [(endpoint, self.service(endpoint)) for endpoint in endpoints]
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as connections:
                await connections.start(self.loop.serve, services)
                try:
                    with trio.CancelScope() as accepting:
                        async with trio.open_nursery() as loops:
                            loops.start_soon(self._watch_signals, signals, accepting)
                            if self.envelopes.mode is not EnvelopeMode.EMBEDDED:
                                loops.start_soon(
                                    expire_periodically, self.envelopes.store, self.envelopes.outage
                                )
                            registry = registry_for(self)
                            for listener in self.metrics_listeners:
                                loops.start_soon(serve_http, listener, registry)
                            if self.notifier.enabled:
                                loops.start_soon(self._report_status)
                            loops.start_soon(self._flush_log)
                            if self.milter_endpoints:
                                listeners = [
                                    trio.SocketListener(trio.socket.from_stdlib_socket(e.sock))
                                    for e in self.milter_endpoints
                                ]
                                loops.start_soon(self.milter.serve, listeners, connections)
                            self.notifier.notify("READY=1", self.status())
                            task_status.started()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._drain(endpoints)
            with trio.CancelScope(shield=True):
                await self.envelopes.store.aclose()

    def service(self, endpoint: Endpoint) -> Service:
        """What answers ``endpoint``'s requests."""
        if endpoint.wire is Wire.SOCKETMAP or endpoint.role is None:
            return MapService(self.lookups, Wire.SOCKETMAP)
        return MapService(self.lookups, Wire.TCP_TABLE, endpoint.role)

    def admit(self, conn: Connection) -> bool:
        """Whether to serve a connection just accepted (:class:`Gatekeeper`); at the
        limit, connections closed since the pass began are reaped first, so that they,
        not an idle one, make room."""
        if len(self.loop.connections) >= self.settings.max_connections:
            self.loop.reap()
        return self.gate.admit(conn, conn.opened)

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
            LOGGER.warning(
                "cannot create state directory %s: %s", self.settings.state_dir, err.strerror
            )
        store = self.envelopes.store
        try:
            await store.check()
            risk = await store.durability()
        except StorageError as err:
            self.envelopes.outage.failed(err)
            return
        LOGGER.info("envelope database %s, mode %s", store.description, self.envelopes.mode.value)
        if risk is not None:
            LOGGER.warning("%s", risk)

    async def _drain(self, endpoints: list[Endpoint]) -> None:
        self.notifier.notify("STOPPING=1")
        self.loop.stop(self.settings.shutdown_grace)
        close_all(endpoints)
        close_all(self.milter_endpoints)
        self.milter.stop(self.settings.shutdown_grace)  # a message in flight may finish
        for listener in self.metrics_listeners:
            await listener.aclose()

    async def _watch_signals(
        self, signals: AsyncIterator[int], accepting: trio.CancelScope
    ) -> None:
        if hangups.pending():  # held off while srsd started (serve.hangups): apply it now
            LOGGER.info("SIGHUP received while starting: reloading now")
            self._reload_signalled()
        async for signum in signals:
            if signum == signal.SIGHUP:
                self._reload_signalled()
            else:
                LOGGER.info("%s received: stopping", signal.Signals(signum).name)
                accepting.cancel()
                return

    def _reload_signalled(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
        self.reload()
        self.notifier.notify("READY=1", self.status())

    def status(self) -> str:
        """A systemd ``STATUS=`` line with the counts that matter."""
        closed = self.gate.counts
        return (
            f"STATUS={sum(self.lookups.counts.values())} lookups, {len(self.loop.connections)} "
            f"connections open, {closed['evicted']} evicted, {closed['refused full']} "
            f"refused (limit), {closed['refused user']} refused (user), "
            f"{self.reloads['failed']} failed reloads"
        )

    @staticmethod
    async def _flush_log() -> None:
        """Write log lines left behind: rendered outside the loop, or not taken yet by a
        log destination that was full."""
        while True:
            await trio.sleep(LOG_FLUSH_INTERVAL)
            logs.flush()

    async def _report_status(self) -> None:
        while True:
            await trio.sleep(STATUS_INTERVAL)
            self.notifier.notify(self.status())

    def reload(self) -> bool:
        """Re-read settings, secrets and exclusions; keep the old ones if anything is wrong."""
        try:
            new = self._reload()
            limits = limits_of(new)
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
        self.settings = new
        self.lookups.configure(new, new.policy())
        delivery = milter_service.delivery_for(new)  # reads Postfix's config again
        delivery.unknown = self.milter.delivery.unknown  # a metric counter: never back to 0
        self.milter.delivery = delivery
        self.milter.recipient_limit = new.milter_recipient_limit
        self.milter.split = new.split_mixed == "smtpd"
        self.gate.configure(limits)
        self.loop.request_timeout = new.request_timeout
        self.reloads["ok"] += 1
        LOGGER.info(
            "configuration reloaded: %d secret(s), %d excluded domain(s)",
            len(new.secrets),
            len(new.excluded),
        )
        return True


def limits_of(settings: Settings) -> Limits:
    """The admission limits ``settings`` describe (user names looked up now)."""
    try:
        return Gatekeeper.limits(
            settings.max_connections, settings.max_connections_per_user, settings.allowed_users
        )
    except ValueError as err:  # a user removed since the settings were checked
        raise ConfigError(f"allowed_users: {err}") from None


def _answering(conn: Connection) -> bool:
    return conn.answering


def setup_logging(settings: Settings) -> None:
    """Set logging up as ``settings`` say (at start, and again when a reload changes it)."""
    setup(settings.log_level, syslog=settings.syslog, json_lines=settings.log_format == "json")


def run(settings: Settings, reload: Callable[[], Settings], *, check: bool = False) -> int:
    """Run ``srsd serve`` with loaded settings; returns the process exit status."""
    setup_logging(settings)
    for warning in settings.warnings:
        LOGGER.warning("%s", warning)
    if check:
        problems = socket_directory_problems(settings)
        for problem in problems:
            print(f"srsd: configuration error: {problem}", file=sys.stderr)
        if problems:
            return 2
        print(
            f"srsd: configuration OK: domain {settings.domain}, {len(settings.secrets)} "
            f"secret(s) from {settings.secrets_file}, {len(settings.excluded)} excluded "
            f"domain(s)"
        )
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
    LOGGER.info(
        "srsd ready: %s; SRS domain %s, %d secret(s)",
        ", ".join(map(str, endpoints + server.milter_endpoints)),
        settings.domain,
        len(settings.secrets),
    )
    await server.serve(endpoints)
    LOGGER.info("stopped after %d lookup(s)", sum(server.lookups.counts.values()))
    logs.flush()
    return 0
