# Answers: the policy and the envelope database decide a lookup; counts, logs, replies follow.
"""Turn one request into its reply: everything srsd does between the wire and the socket.

:class:`Lookups` decides a lookup once: :meth:`Lookups.decide_now` (synchronous) asks the
policy and, when the envelope database must be written or read, hands the policy's decision
on as :class:`Pending` to :meth:`Lookups.finish` (asynchronous), which never decides again;
a sender written lately needs no storage and is decided at once. It counts each lookup (the
metrics), times it, logs it, and rate-limits the log lines of bad requests. It is callable
from anywhere, not only from the connection loop (the milter decides with
:meth:`Lookups.decide`, both steps in one).

:class:`MapService` is what the connection loop (:mod:`srsd.serve.loop`) asks for a reader
and for the reply bytes of each event, on a tcp_table or a socketmap endpoint alike (what
differs by wire is one :class:`MapWire` each); turning a :class:`~srsd.srs.policy.Decision`
into a wire reply happens here, so the wire modules know nothing of the policy.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

from srsd.config.settings import Settings
from srsd.envelope import EnvelopeMode, key_of, use_database
from srsd.envelope.database import EnvelopeDatabase
from srsd.host.logs import LOGGER, line, show
from srsd.host.metrics import Latency
from srsd.serve.loop import Later, Reader
from srsd.srs.policy import QUIET, Decision, Outcome, Policy, Role
from srsd.wire import Wire, socketmap, tcp_table

#: socketmap map names, as in ``socketmap:inet:127.0.0.1:10003:forward``.
MAP_NAMES = {b"forward": Role.FORWARD, b"reverse": Role.REVERSE}
#: What a socketmap request holds besides its key: the longest map name and a space.
_NAME_ROOM = max(map(len, MAP_NAMES)) + 1
#: Bad-request log lines per second at most (the rest are counted in one line).
BAD_REQUEST_LOG_RATE = 10
INTERNAL_ERROR: Final = Decision(Outcome.ERROR, reason="srsd internal error")
_EMBEDDED = EnvelopeMode.EMBEDDED
_FORWARD = Role.FORWARD
_REVERSE_NAME, _NOT_SRS_NAME = Role.REVERSE.value, Outcome.NOT_SRS.value
_REWRITTEN = Outcome.REWRITTEN
_ERROR = Outcome.ERROR
_DEBUG, _INFO = logging.DEBUG, logging.INFO
#: The level of each outcome's log line, by the outcome's value.
_LEVELS = {o.value: _DEBUG if o in QUIET else _INFO for o in Outcome}
#: The same for a lookup made for a milter message: a rewrite is said in the message's own
#: line (``sender ... rewritten as``, ``recipient ... restored as``), so its lookup line
#: is debug; any other outcome keeps its level (the message line does not say it).
MESSAGE_LEVELS: Final = {**_LEVELS, Outcome.REWRITTEN.value: _DEBUG}


@dataclass(slots=True)  # not frozen: made on the hot path, and frozen costs a setattr each
class Pending:
    """A lookup the policy has decided whose answer needs the envelope database: the
    decision, carried to :meth:`Lookups.finish` so that nothing is decided twice."""

    role: Role
    key: bytes
    decision: Decision  # the policy's
    policy: Policy  # that decided it (a reload may replace the current one meanwhile)
    now: float


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

    def decide_now(self, role: Role, key: bytes, now: float) -> Decision | Pending:
        """The decision for one lookup, or, when the envelope database must be written or
        read, the policy's decision as :class:`Pending` (then :meth:`finish` it). A sender
        written lately is decided here (:meth:`EnvelopeDatabase.remembered`). Never
        raises: a bug answers :data:`INTERNAL_ERROR`."""
        try:
            policy = self.policy
            if role is _FORWARD:
                decision = policy.forward(key, now)
                envelopes = self.envelopes
                mode = envelopes.mode
                if (
                    decision.value is not None
                    and mode is not _EMBEDDED
                    and use_database(mode, key, decision.value)
                ):
                    aliased = envelopes.remembered(policy, key, now)
                    if aliased is None:
                        return Pending(role, key, decision, policy, now)
                    decision = aliased
            else:
                decision = policy.reverse(key, now)
                if decision.value is not None and key_of(decision.value) is not None:
                    return Pending(role, key, decision, policy, now)
        except Exception:
            LOGGER.exception("%s <%s>: internal error", role.value, show(key))
            return INTERNAL_ERROR
        return decision

    async def finish(self, pending: Pending) -> Decision:
        """The decision of a :class:`Pending` lookup, through the envelope database."""
        try:
            if pending.role is _FORWARD:
                return await self.envelopes.forward(
                    pending.policy, pending.key, pending.decision, pending.now
                )
            return await self.envelopes.reverse(pending.decision, pending.now)
        except Exception:
            LOGGER.exception("%s <%s>: internal error", pending.role.value, show(pending.key))
            return INTERNAL_ERROR

    async def decide(self, role: Role, key: bytes) -> Decision:
        """The decision for one lookup, through the envelope database when it applies."""
        decided = self.decide_now(role, key, time.time())
        if isinstance(decided, Pending):
            return await self.finish(decided)
        return decided

    def record(
        self,
        protocol: str,
        role: Role,
        key: bytes,
        decision: Decision,
        started: float,
        *,
        levels: Mapping[str, int] = _LEVELS,
    ) -> None:
        """Count, time (from ``started``, a :func:`time.perf_counter` reading) and log one
        answered lookup (the log line is written at the next :func:`srsd.host.logs.flush`)
        at its outcome's level in ``levels`` (:data:`MESSAGE_LEVELS` for the milter)."""
        # Enum ``.value`` is a Python-level property and hashing a member a Python-level
        # call: on this path, for every lookup, the plain attribute and a str key instead.
        name, outcome = role._value_, decision.outcome._value_
        self.latency.observe(name, time.perf_counter() - started)
        self.counts[(protocol, name, outcome)] += 1
        level = levels[outcome]
        if LOGGER.isEnabledFor(level):  # one line per lookup, as postsrsd: the fast way
            if decision.value is not None:
                line(level, f"{name} <{show(key)}> rewritten as <{show(decision.value)}>")
            else:
                line(level, f"{name} <{show(key)}> not rewritten: {decision.reason}")

    def count_plainly_not_srs(self, protocol: str, count: int) -> None:
        """Count ``count`` reverse lookups of ``protocol`` answered "not SRS" from the address
        alone (:meth:`Policy.plainly_not_srs`), with no lookup made: as :meth:`record` counts
        them, in the latency histogram's first bucket, without their debug lines (a caller
        takes this way only while debug is off)."""
        self.counts[(protocol, _REVERSE_NAME, _NOT_SRS_NAME)] += count
        self.latency.observe_instant(_REVERSE_NAME, count)

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


# -- what the connection loop asks of a map endpoint ----------------------------------------

_TcpRequest = tcp_table.Request
_SocketmapRequest = socketmap.Request


def _tcp_table_lookup(event: object, role: Role | None) -> tuple[Role, bytes] | None:
    """The map and key ``event`` asks for on a tcp_table endpoint of map ``role``."""
    if type(event) is _TcpRequest and role is not None:
        return role, event.key
    return None


def _socketmap_lookup(event: object, role: Role | None) -> tuple[Role, bytes] | None:
    """The map and key ``event`` asks for on a socketmap endpoint (the map by its name)."""
    if type(event) is _SocketmapRequest and (named := MAP_NAMES.get(event.name)):
        return named, event.key
    return None


def _socketmap_refusal(event: object, reason: str) -> bytes:
    """``PERM`` for an unknown map name or broken framing; ``NOTFOUND`` for a request over
    the bound: a sender's address controls that, and PERM would defer the mail."""
    if isinstance(event, socketmap.TooBig):
        return socketmap.not_found(reason)
    return socketmap.permanent_failure(reason)


@dataclass(frozen=True, slots=True)
class MapWire:
    """What a map endpoint's wire format brings to :class:`MapService`."""

    lookup: Callable[[object, Role | None], tuple[Role, bytes] | None]
    reader: Callable[[int], Reader]  # that carries any address of ``max_request`` bytes
    reply: Callable[[Decision], bytes]
    refusal: Callable[[object, str], bytes]  # the reply to what is not a lookup, and why
    idle_limit: Callable[[Settings], float]


WIRES: Final = {
    Wire.TCP_TABLE: MapWire(
        _tcp_table_lookup,
        lambda max_request: tcp_table.RequestReader(tcp_table.line_limit(max_request)),
        tcp_table_reply,
        lambda _event, reason: tcp_table.not_found(reason),
        lambda settings: settings.idle_timeout,
    ),
    Wire.SOCKETMAP: MapWire(
        _socketmap_lookup,
        lambda max_request: socketmap.RequestReader(max_request + _NAME_ROOM),
        socketmap_reply,
        _socketmap_refusal,
        lambda settings: settings.keep_alive,
    ),
}


class MapService:
    """A map endpoint of the connection loop: tcp_table, one map (``role``, chosen by the
    port), or socketmap, both maps (by the name in each request, ``role`` None)."""

    def __init__(self, lookups: Lookups, wire: Wire, role: Role | None = None) -> None:
        if (wire is Wire.TCP_TABLE) != (role is not None):
            raise ValueError("a tcp_table endpoint serves one map, a socketmap endpoint both")
        self.lookups = lookups
        self.wire = wire
        self.role = role
        self._protocol = wire.value
        self._map = WIRES[wire]

    @property
    def idle_limit(self) -> float:
        """Seconds a connection may stay without a complete request (``idle_timeout`` for
        tcp_table, ``keep_alive`` for socketmap)."""
        return self._map.idle_limit(self.lookups.settings)

    transaction_limit = 0.0  # a lookup is one request: no transactions

    def reader(self, owner: Hashable = None) -> Reader:
        """A request reader for a new connection (of any owner)."""
        return self._map.reader(self.lookups.settings.max_request)

    def in_transaction(self, reader: Reader) -> bool:
        """Never: a lookup is one request."""
        return False

    def discard(self, reader: Reader) -> None:
        """Nothing to free beyond the reader."""

    def answer(self, event: object) -> bytes | Later:
        """The reply to ``event``, or, when it must wait for storage, what gives it."""
        asked = self._map.lookup(event, self.role)
        if asked is None:
            return self._refuse(event)
        role, key = asked
        started = time.perf_counter()
        lookups = self.lookups
        decided = lookups.decide_now(role, key, time.time())
        if isinstance(decided, Pending):
            return partial(self._finish, decided, started)
        lookups.record(self._protocol, role, key, decided, started)
        return self._map.reply(decided)

    async def _finish(self, pending: Pending, started: float) -> bytes:
        decision = await self.lookups.finish(pending)
        self.lookups.record(self._protocol, pending.role, pending.key, decision, started)
        return self._map.reply(decision)

    def _refuse(self, event: object) -> bytes:
        if isinstance(event, socketmap.Request):  # a configuration error on the Postfix side
            logged, sent = f"unknown map name {show(event.name)!r}", "Unknown map name"
        else:
            logged = sent = getattr(event, "reason", "Invalid request")
        self.lookups.bad_request(self._protocol, self.role.value if self.role else "-", logged)
        return self._map.refusal(event, sent)
