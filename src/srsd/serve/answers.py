# Lookups: the policy and the envelope database decide; counts, log lines and replies follow.
"""Turn one request into its reply: everything srsd does between the wire and the socket.

:class:`Lookups` decides a lookup (:meth:`Lookups.decide_now`, synchronous, for every
lookup that needs no storage; :meth:`Lookups.decide`, asynchronous, when the envelope
database must be read or written), counts it (the metrics), times it, logs it, and rate-
limits the log lines of bad requests. It is callable from anywhere, not only from the
connection loop (the milter decides forward rewrites with it too).

:class:`TcpTableService` and :class:`SocketmapService` are what the connection loop
(:mod:`srsd.serve.loop`) asks for a reader and for the reply bytes of each event; turning
a :class:`~srsd.srs.policy.Decision` into a wire reply happens here, so the wire modules know
nothing of the policy.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Hashable
from typing import Final

from srsd.config.settings import Settings
from srsd.envelope import EnvelopeMode, key_of, use_database
from srsd.envelope.database import EnvelopeDatabase
from srsd.host.logs import LOGGER, line, show
from srsd.host.metrics import Latency
from srsd.serve.loop import Reader
from srsd.srs.policy import QUIET, Decision, Outcome, Policy, Role
from srsd.wire import Wire, socketmap, tcp_table

#: socketmap map names, as in ``socketmap:inet:127.0.0.1:10003:forward``.
MAP_NAMES = {b"forward": Role.FORWARD, b"reverse": Role.REVERSE}
#: Bad-request log lines per second at most (the rest are counted in one line).
BAD_REQUEST_LOG_RATE = 10
INTERNAL_ERROR: Final = Decision(Outcome.ERROR, reason="srsd internal error")
_EMBEDDED = EnvelopeMode.EMBEDDED
_FORWARD = Role.FORWARD
_REWRITTEN = Outcome.REWRITTEN
_ERROR = Outcome.ERROR
_DEBUG, _INFO = logging.DEBUG, logging.INFO


class Lookups:
    """Decides lookups with the current policy and envelope database, and records them."""

    def __init__(self, settings: Settings, policy: Policy, envelopes: EnvelopeDatabase) -> None:
        self.settings = settings
        self.policy = policy
        self.envelopes = envelopes
        #: Answers given, by (protocol, map, outcome): the metrics read these.
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.latency = Latency()
        self._bad_since, self._bad_logged, self._bad_unlogged = 0.0, 0, 0

    def configure(self, settings: Settings, policy: Policy) -> None:
        """Use reloaded settings and their policy from the next lookup on."""
        self.settings, self.policy = settings, policy
        self.envelopes.configure(settings.original_envelope, settings.envelope_write_limit)

    def decide_now(self, role: Role, key: bytes, now: float) -> Decision | None:
        """The decision for one lookup if it needs no storage, else None (then
        :meth:`decide` it). Never raises: a bug answers :data:`INTERNAL_ERROR`."""
        try:
            if role is _FORWARD:
                decision = self.policy.forward(key, now)
                mode = self.envelopes.mode
                if (
                    decision.value is not None
                    and mode is not _EMBEDDED
                    and use_database(mode, key, decision.value)
                ):
                    return None
            else:
                decision = self.policy.reverse(key, now)
                if decision.value is not None and key_of(decision.value) is not None:
                    return None
        except Exception:
            LOGGER.exception("%s <%s>: internal error", role.value, show(key))
            return INTERNAL_ERROR
        return decision

    async def decide(self, role: Role, key: bytes) -> Decision:
        """The decision for one lookup, through the envelope database when it applies."""
        now = time.time()
        try:
            if role is _FORWARD:
                decision = self.policy.forward(key, now)
                if decision.value is not None and self.envelopes.mode is not _EMBEDDED:
                    decision = await self.envelopes.forward(self.policy, key, decision, now)
            else:
                decision = self.policy.reverse(key, now)
                if decision.value is not None:
                    decision = await self.envelopes.reverse(decision, now)
        except Exception:
            LOGGER.exception("%s <%s>: internal error", role.value, show(key))
            decision = INTERNAL_ERROR
        return decision

    def record(
        self, protocol: str, role: Role, key: bytes, decision: Decision, started: float
    ) -> None:
        """Count, time (from ``started``, a :func:`time.perf_counter` reading) and log one
        answered lookup (the log line is written at the next :func:`srsd.host.logs.flush`)."""
        self.latency.observe(role.value, time.perf_counter() - started)
        self.counts[(protocol, role.value, decision.outcome.value)] += 1
        level = _DEBUG if decision.outcome in QUIET else _INFO
        if LOGGER.isEnabledFor(level):  # one line per lookup, as postsrsd: the fast way
            if decision.value is not None:
                line(level, f"{role.value} <{show(key)}> rewritten as <{show(decision.value)}>")
            else:
                line(level, f"{role.value} <{show(key)}> not rewritten: {decision.reason}")

    def bad_request(self, protocol: str, name: str, reason: str) -> None:
        """Count a request that is not a lookup; log it, a few lines a second at most."""
        self.counts[(protocol, name, "bad request")] += 1
        # Garbage arrives as fast as a client can send it: log a few lines a second.
        now = time.monotonic()
        if now - self._bad_since >= 1.0:
            if self._bad_unlogged:
                LOGGER.info("%d more bad requests not logged", self._bad_unlogged)
            self._bad_since, self._bad_logged, self._bad_unlogged = now, 0, 0
        if self._bad_logged < BAD_REQUEST_LOG_RATE:
            self._bad_logged += 1
            LOGGER.info("%s %s: bad request: %s", protocol, name, reason)
        else:
            self._bad_unlogged += 1


# -- decisions as wire replies ---------------------------------------------------------------


def tcp_table_reply(decision: Decision) -> bytes:
    """The tcp_table reply for a decision: ``200`` for a rewrite, ``400`` when srsd cannot
    decide (:attr:`Outcome.ERROR`), else ``500``."""
    if decision.outcome is _REWRITTEN and decision.value is not None:
        return tcp_table.found(decision.value)
    if decision.outcome is _ERROR:
        return tcp_table.temporary_failure(decision.reason)
    return tcp_table.not_found(decision.reason)


def socketmap_reply(decision: Decision) -> bytes:
    """The socketmap reply for a decision: ``OK`` for a rewrite, ``TEMP`` when srsd cannot
    decide (:attr:`Outcome.ERROR`), else ``NOTFOUND``."""
    if decision.outcome is _REWRITTEN and decision.value is not None:
        return socketmap.ok(decision.value)
    if decision.outcome is _ERROR:
        return socketmap.temporary_failure(decision.reason)
    return socketmap.not_found(decision.reason)


# -- what the connection loop asks of an endpoint ------------------------------------------------

_TCP_TABLE = Wire.TCP_TABLE.value
_SOCKETMAP = Wire.SOCKETMAP.value
_TcpRequest = tcp_table.Request
_SocketmapRequest = socketmap.Request


class _MapService:
    """What the map endpoints share as services of the loop: no transactions, nothing
    held beyond a connection's reader."""

    transaction_limit = 0.0

    def in_transaction(self, reader: Reader) -> bool:
        """Never: a lookup is one request."""
        return False

    def discard(self, reader: Reader) -> None:
        """Nothing to free."""


class TcpTableService(_MapService):
    """A tcp_table endpoint of one map: its readers, idle limit and replies."""

    def __init__(self, lookups: Lookups, role: Role) -> None:
        self.lookups = lookups
        self.role = role

    @property
    def idle_limit(self) -> float:
        """Seconds a connection may stay without a complete request (``idle_timeout``)."""
        return self.lookups.settings.idle_timeout

    def reader(self, owner: Hashable = None) -> tcp_table.RequestReader:
        """A request reader for a new connection."""
        return tcp_table.RequestReader(self.lookups.settings.max_request)

    def answer(self, event: object) -> bytes | None:
        """The reply to ``event``, or None when it must wait for storage (:meth:`answer_later`)."""
        if type(event) is _TcpRequest:
            started = time.perf_counter()
            lookups = self.lookups
            decision = lookups.decide_now(self.role, event.key, time.time())
            if decision is None:
                return None
            lookups.record(_TCP_TABLE, self.role, event.key, decision, started)
            return tcp_table_reply(decision)
        return self._refuse(event)

    async def answer_later(self, event: object) -> bytes:
        """The reply to ``event``, waiting for the envelope database if need be."""
        if type(event) is _TcpRequest:
            started = time.perf_counter()
            decision = await self.lookups.decide(self.role, event.key)
            self.lookups.record(_TCP_TABLE, self.role, event.key, decision, started)
            return tcp_table_reply(decision)
        return self._refuse(event)

    def _refuse(self, event: object) -> bytes:
        reason = getattr(event, "reason", "Invalid request")
        self.lookups.bad_request(_TCP_TABLE, self.role.value, reason)
        return tcp_table.not_found(reason)


class SocketmapService(_MapService):
    """A socketmap endpoint (both maps, by the name in each request)."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups

    @property
    def idle_limit(self) -> float:
        """Seconds a connection may stay without a complete request (``keep_alive``)."""
        return self.lookups.settings.keep_alive

    def reader(self, owner: Hashable = None) -> socketmap.RequestReader:
        """A request reader for a new connection."""
        return socketmap.RequestReader(self.lookups.settings.max_request)

    def answer(self, event: object) -> bytes | None:
        """The reply to ``event``, or None when it must wait for storage (:meth:`answer_later`)."""
        if type(event) is _SocketmapRequest and (role := MAP_NAMES.get(event.name)):
            started = time.perf_counter()
            lookups = self.lookups
            decision = lookups.decide_now(role, event.key, time.time())
            if decision is None:
                return None
            lookups.record(_SOCKETMAP, role, event.key, decision, started)
            return socketmap_reply(decision)
        return self._refuse(event)

    async def answer_later(self, event: object) -> bytes:
        """The reply to ``event``, waiting for the envelope database if need be."""
        if type(event) is _SocketmapRequest and (role := MAP_NAMES.get(event.name)):
            started = time.perf_counter()
            decision = await self.lookups.decide(role, event.key)
            self.lookups.record(_SOCKETMAP, role, event.key, decision, started)
            return socketmap_reply(decision)
        return self._refuse(event)

    def _refuse(self, event: object) -> bytes:
        if isinstance(event, socketmap.Request):  # a configuration error on the Postfix side
            reason = f"unknown map name {show(event.name)!r}"
            self.lookups.bad_request(_SOCKETMAP, "-", reason)
            return socketmap.permanent_failure("Unknown map name")
        reason = getattr(event, "reason", "Invalid request")
        self.lookups.bad_request(_SOCKETMAP, "-", reason)
        return socketmap.permanent_failure(reason)
