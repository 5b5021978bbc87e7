# The server's lifecycle: bind, drop privileges, serve, signals, reload, drain, exit.
"""``srsd serve``: answer Postfix's canonical-map lookups (tcp_table, socketmap) and milter.

Data flows one way: bytes in, the wire decoder (:mod:`srsd.wire.tcp_table` or
:mod:`srsd.wire.socketmap`), the decision (:mod:`srsd.serve.answers`: the policy and the envelope
database), the reply, bytes out. A tcp_table endpoint serves one map, chosen by its port;
a socketmap endpoint (TCP or a unix socket) serves both, chosen by the map name in each
request. The parts:

* :mod:`srsd.serve.listeners` opens the listening sockets (or adopts systemd's);
* :mod:`srsd.serve.privileges` then leaves root;
* :mod:`srsd.serve.loop` serves every connection of every endpoint (tcp_table,
  socketmap, milter) from one readiness set, a pass at a time, with slow paths as trio
  tasks (storage waits, back-pressure, lingering), idle, request and transaction
  time-outs and the drain; it is srsd's one accept path;
* :mod:`srsd.admission.gatekeeper` admits each new connection by its peer's user
  (:mod:`srsd.admission.rule`: ``allowed_users``, ``max_connections``,
  ``max_connections_per_user`` for the maps; ``milter_max_sessions``,
  ``milter_max_sessions_per_user`` for the milter, a gatekeeper of its own), evicting the
  longest idle connection of the user who holds the most when full;
* :mod:`srsd.serve.answers` decides, counts, logs and builds the replies;
* :mod:`srsd.serve.milter_service` is the milter endpoint's service (``smtpd_milters``),
  deciding through the same lookups, with its memory budget;
* descriptors: at start srsd raises its soft ``RLIMIT_NOFILE`` to the hard limit and, if
  ``max_connections`` plus ``milter_max_sessions`` plus :data:`RESERVED_DESCRIPTORS` do not
  fit in it, lowers both in proportion (with a warning): every limit is then reached
  before the descriptors run out, so a flood on one endpoint cannot stop another from
  accepting (:func:`fit_descriptors`);
* this module runs them: :class:`Server` binds, serves until SIGTERM/SIGINT, then stops
  accepting, lets replies in flight finish within ``shutdown_grace`` seconds and exits 0;
  SIGHUP reloads settings, secrets and exclusions, keeping the old ones when anything is
  invalid, and says which changes need a restart (:func:`srsd.config.settings.plan_reload`). It
  also serves the metrics endpoint and tells systemd how it is doing.
"""

from __future__ import annotations

import dataclasses
import os
import resource
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
from srsd.serve.loop import Connection, ConnectionLoop, Gate, Service
from srsd.serve.metrics_endpoint import HTTP_CONNECTIONS, Capped, MetricsService, registry_for
from srsd.serve.privileges import leave_root
from srsd.wire import Wire

__all__ = ["Server", "run"]

#: Seconds between systemd STATUS= updates (when running under systemd).
STATUS_INTERVAL = 30.0
#: Longest time a rendered log line waits to be written when no pass of the loop comes.
LOG_FLUSH_INTERVAL = 0.5
#: Descriptors kept apart from the connection limits: listeners, the selector, the envelope
#: database, logs, metrics connections, ``postconf`` pipes, accepts about to be refused
#: (half the limit when that is less).
RESERVED_DESCRIPTORS = 64


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
            limits_of(settings), owners, self.loop.close, _busy
        )
        self.milter_gate: Gatekeeper[Connection] = Gatekeeper(
            milter_limits_of(settings),
            owners,
            self.loop.close,
            _busy,
            noun="milter session",
            names=("milter_max_sessions", "request_timeout", "milter_message_timeout"),
        )
        self.loop.after_pass.append(logs.flush)  # the lookups' log lines, once per pass
        self.loop.request_timeout = settings.request_timeout
        self._reload = reload
        self.notifier = systemd.Notifier(os.environ)
        self.metrics_endpoints: list[Endpoint] = []
        #: Reloads, by result (``ok``, ``failed``).
        self.reloads: Counter[str] = Counter()
        forward, reverse = milter_service.lookups_for(self.lookups)
        self.milter = milter_service.MilterService(
            settings,
            forward=forward,
            reverse=reverse,
            delivery=milter_service.delivery_for(settings),
            lookups=self.lookups,
        )
        self.milter_endpoints: list[Endpoint] = []

    # -- start-up -----------------------------------------------------------------------------

    async def bind(self) -> list[Endpoint]:
        """Open every configured listener (or adopt systemd's); raise :class:`StartError`
        with one clear line."""
        bound = await bind(self.settings)
        self.metrics_endpoints = bound.metrics
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
        services: list[tuple[Endpoint, Service, Gate]] = [
            (endpoint, self.service(endpoint), self.gate) for endpoint in endpoints
        ]
        services += [
            (endpoint, self.milter, self.milter_gate) for endpoint in self.milter_endpoints
        ]
        metrics, scrapers = MetricsService(registry_for(self)), Capped(HTTP_CONNECTIONS)
        services += [(e, metrics, scrapers) for e in self.metrics_endpoints]
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
                            if self.notifier.enabled:
                                loops.start_soon(self._report_status)
                            loops.start_soon(self._flush_log)
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
        close_all(self.metrics_endpoints)

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
            new = fit_descriptors(self._reload(), descriptor_limit())
            limits = limits_of(new)
            milter_limits = milter_limits_of(new)
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
        self.milter.configure(new)
        self.gate.configure(limits)
        self.milter_gate.configure(milter_limits)
        self.loop.request_timeout = new.request_timeout
        self.reloads["ok"] += 1
        LOGGER.info(
            "configuration reloaded: %d secret(s), %d excluded domain(s)",
            len(new.secrets),
            len(new.excluded),
        )
        return True


def limits_of(settings: Settings) -> Limits:
    """The map endpoints' admission limits ``settings`` describe (user names looked up now)."""
    return _limits(settings.max_connections, settings.max_connections_per_user, settings)


def milter_limits_of(settings: Settings) -> Limits:
    """The milter's admission limits ``settings`` describe (user names looked up now)."""
    return _limits(settings.milter_max_sessions, settings.milter_max_sessions_per_user, settings)


def _limits(total: int, per_user: int, settings: Settings) -> Limits:
    try:
        return Gatekeeper.limits(total, per_user, settings.allowed_users)
    except ValueError as err:  # a user removed since the settings were checked
        raise ConfigError(f"allowed_users: {err}") from None


def _busy(conn: Connection) -> bool:
    return conn.answering


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (a shell's 1,024 is far below
    what the connection limits need); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as err:
            LOGGER.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, err)
    return descriptor_limit()


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (a large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def fit_descriptors(settings: Settings, limit: int) -> Settings:
    """``settings`` with ``max_connections`` and ``milter_max_sessions`` lowered in
    proportion when, with :data:`RESERVED_DESCRIPTORS`, they need more than ``limit``
    descriptors (a warning says so); unchanged otherwise."""
    milter = settings.milter_max_sessions if settings.milter is not None else 0
    wanted = settings.max_connections + milter
    room = limit - min(RESERVED_DESCRIPTORS, limit // 2)
    if wanted <= room:
        return settings
    maps = max(1, settings.max_connections * room // wanted)
    sessions = max(1, milter * room // wanted) if milter else settings.milter_max_sessions
    LOGGER.warning(
        "the open files limit (%d) cannot hold max_connections %d%s: serving at most %d "
        "connections%s (raise LimitNOFILE= or ulimit -Hn)",
        limit,
        settings.max_connections,
        f" and milter_max_sessions {milter}" if milter else "",
        maps,
        f" and {sessions} milter sessions" if milter else "",
    )
    return dataclasses.replace(settings, max_connections=maps, milter_max_sessions=sessions)


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
    settings = fit_descriptors(settings, raise_descriptor_limit())
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
