# The milter endpoint: a service of the connection loop, its memory budget, the decision.
"""Serve Postfix's ``smtpd_milters`` / ``non_smtpd_milters`` connections.

Milter connections are served by the connection loop (:mod:`srsd.serve.loop`) like the
map endpoints, under their own admission control (``milter_max_sessions``, per user
``milter_max_sessions_per_user``, ``allowed_users``): :class:`MilterService` is the loop's
:class:`~srsd.serve.loop.Service` for them. Each connection reads a
:class:`srsd.wire.milter.Session`; every reply is answered in the loop, the end of a message off
it (the decision may wait for the envelope database). At the end of each message
:func:`decide` says what to change:

1. each recipient that is a valid SRS address of ours is replaced by the original address
   (DELRCPT + ADDRCPT); one srsd cannot decode now (its database entry unreadable) makes
   the message fail temporarily; invalid ones stay, for Postfix to reject as usual;
2. unless every (restored) recipient is delivered on this host
   (:class:`srsd.serve.delivery.PostfixDelivery`), the sender goes through the same policy as the
   forward map (null sender, excluded and SRS domains, SRS1 for SRS senders, database mode)
   and, when rewritten, is changed (CHGFROM);
3. anything srsd cannot decide (a lookup error, an internal error, no answer within
   :data:`DECIDE_SECONDS`) is a temporary failure: Postfix defers the message.

With ``split_mixed = "smtpd"`` each recipient of an SMTP transaction is classified as it
arrives (:func:`delivered_here`: restored when it is an SRS address, then asked of Postfix):
one of the other class than the transaction's first recipient is answered ``452 4.5.3`` and
sent again by the client in a transaction of its own, so step 2 sees one class only. Such
a recipient, like the end of a message, is answered off the loop.

Limits (each a setting): a session that sends no complete packet for
``milter_idle_timeout`` seconds (longer than Postfix's ``smtpd_timeout``) is closed, so is
one whose packet does not end within ``request_timeout`` of its first byte, or whose
message does not end within ``milter_message_timeout`` of its ``MAIL`` (bytes dribbled
extend none of these). When the milter is full, a new session evicts one of the user who
holds the most: idle between messages first, else the one idle the longest in the middle of
a message, waiting for Postfix (Postfix then defers that message, a temporary failure the
client retries); never one whose message srsd is answering (:mod:`srsd.admission.rule`).
On SIGTERM a session may finish its message within ``shutdown_grace`` seconds. Memory: a
message keeps at most ``milter_recipient_limit`` recipients and ``milter_message_bytes``
bytes, and all sessions together at most ``milter_memory`` bytes, each user at most half
of it (:class:`MemoryBudget`); past a bound the recipient is answered ``452`` (the client
sends it again later), nothing grows. An exception in one session closes that session only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Generator, Hashable
from functools import partial
from time import perf_counter
from typing import NamedTuple, cast

import trio

from srsd.config.settings import Settings
from srsd.host.logs import LOGGER, RateLimited, line, show
from srsd.serve.answers import MESSAGE_LEVELS, Lookups, Pending
from srsd.serve.delivery import PostfixDelivery
from srsd.serve.loop import Later, Reader
from srsd.srs.policy import NOT_SRS, Decision, DomainSet, Outcome, Role
from srsd.wire import Wire, milter

#: Seconds the decision for one message may take (Postfix waits milter_content_timeout, 300 s).
DECIDE_SECONDS = 30.0
#: At most one log line per kind (protocol error, no room, ...) per this many seconds.
LOG_INTERVAL = 1.0

#: Decides one address (a sender forward, a recipient reverse), as the map endpoints do.
Decider = Callable[[bytes], Awaitable[Decision]]
_TEMPFAIL = milter.Verdict(tempfail=True)
_MILTER = Wire.MILTER.value
_DEBUG, _INFO = logging.DEBUG, logging.INFO
_FORWARD, _REVERSE = Role.FORWARD, Role.REVERSE
_ERROR, _REWRITTEN = Outcome.ERROR, Outcome.REWRITTEN


class MessageOutcome(NamedTuple):  # made once per message: a tuple's is the cheapest __init__
    """What happened to one message, for the log and the counters."""

    verdict: milter.Verdict
    label: str  # "rewritten", "delivered here", "not rewritten", "tempfail"
    reason: str


class _Here(list[bytes]):
    """A question of :func:`_steps`: is every one of these recipients delivered here?"""


_Question = tuple[Role, bytes] | _Here
_Answer = Decision | bool | None


def _steps(transaction: milter.Transaction) -> Generator[_Question, _Answer, MessageOutcome]:
    """The decision for one message (see the module docstring), written once as the
    questions it asks: :func:`decide` answers them, waiting where it must, :func:`decide_now`
    when no answer has to wait."""
    replace: list[tuple[bytes, bytes]] = []
    finals: list[bytes] = []
    for raw in transaction.recipients:
        recipient = milter.unbracket(raw)
        restored = cast(Decision, (yield (_REVERSE, recipient)))
        if restored.outcome is _ERROR:
            reason = f"recipient <{show(recipient)}>: {restored.reason}"
            return MessageOutcome(_TEMPFAIL, "tempfail", reason)
        if restored.outcome is _REWRITTEN and restored.value is not None:
            replace.append((raw, restored.value))
            finals.append(restored.value)
        else:
            finals.append(recipient)
    replaced = tuple(replace)
    sender = milter.unbracket(transaction.sender)
    if not sender:
        return MessageOutcome(milter.Verdict(replace=replaced), "not rewritten", "null sender")
    if (yield _Here(finals)):
        here = "every recipient is delivered here"
        return MessageOutcome(milter.Verdict(replace=replaced), "delivered here", here)
    forwarded = cast(Decision, (yield (_FORWARD, sender)))
    if forwarded.outcome is _ERROR:
        return MessageOutcome(_TEMPFAIL, "tempfail", forwarded.reason)
    if forwarded.outcome is _REWRITTEN and forwarded.value is not None:
        return MessageOutcome(milter.Verdict(forwarded.value, replaced), "rewritten", "forwarded")
    return MessageOutcome(milter.Verdict(replace=replaced), "not rewritten", forwarded.reason)


async def decide(
    transaction: milter.Transaction,
    *,
    forward: Decider,
    reverse: Decider,
    delivery: PostfixDelivery,
) -> MessageOutcome:
    """The verdict for one message (see the module docstring)."""
    steps = _steps(transaction)
    answer: _Answer = None
    try:
        while True:
            question = steps.send(answer)
            if isinstance(question, _Here):
                answer = await delivery.all_delivered_here(question)
            else:
                role, address = question
                answer = await (forward if role is Role.FORWARD else reverse)(address)
    except StopIteration as done:
        return cast(MessageOutcome, done.value)


def decide_now(
    transaction: milter.Transaction, lookups: Lookups, delivery: PostfixDelivery
) -> MessageOutcome | None:
    """The verdict for one message without waiting, in the connection loop; None when an
    answer must wait (the envelope database, Postfix), then :func:`decide` it. The lookups
    are counted and logged only when the whole message was decided here; a recipient that
    cannot be an SRS address (:meth:`Policy.plainly_not_srs`) needs none, and is counted
    as its lookup would be."""
    send = _steps(transaction).send
    answer: _Answer = None
    made: list[tuple[Role, bytes, Decision, float]] = []
    lookup, now = lookups.decide_now, time.time()  # one message, one moment
    # The usual recipient cannot be an SRS address: answered without a lookup and counted
    # with the others of the message (while debug is off: each lookup has its debug line).
    plain = None if LOGGER.isEnabledFor(_DEBUG) else lookups.policy.plainly_not_srs
    unlooked = 0
    try:
        while True:
            question = send(answer)
            if type(question) is _Here:
                answer = delivery.delivered_here_now(question)
                if answer is None:
                    return None
            else:
                role, address = cast("tuple[Role, bytes]", question)  # a str: no alias per call
                if role is _REVERSE and plain is not None and plain(address):
                    unlooked += 1
                    answer = NOT_SRS
                    continue
                started = perf_counter()
                decision = lookup(role, address, now)
                if isinstance(decision, Pending):
                    return None
                made.append((role, address, decision, started))
                answer = decision
    except StopIteration as done:
        record = lookups.record
        for role, address, decision, started in made:
            record(_MILTER, role, address, decision, started, levels=MESSAGE_LEVELS)
        if unlooked:
            lookups.count_plainly_not_srs(_MILTER, unlooked)
        return cast(MessageOutcome, done.value)


async def delivered_here(
    recipient: bytes, *, reverse: Decider, delivery: PostfixDelivery
) -> bool | None:
    """Whether one recipient (as the MTA sent it) is delivered on this host, SRS addresses
    restored first; None when that cannot be known now (the recipient is deferred)."""
    address = milter.unbracket(recipient)
    restored = await reverse(address)
    if restored.outcome is Outcome.ERROR:
        return None
    if restored.outcome is Outcome.REWRITTEN and restored.value is not None:
        address = restored.value
    return await delivery.all_delivered_here([address])


def delivery_for(settings: Settings) -> PostfixDelivery:
    """How the milter tells locally delivered mail: from the settings, else from Postfix."""
    local = DomainSet(settings.local_domains) if settings.local_domains else None
    return PostfixDelivery(rewrite_local=settings.rewrite_local, local_domains=local)


def lookups_for(lookups: Lookups) -> tuple[Decider, Decider]:
    """The forward and reverse decisions of the map endpoints (policy, envelope database),
    counted under the protocol ``milter`` and logged at :data:`MESSAGE_LEVELS`."""

    def decider(role: Role) -> Decider:
        async def decide(address: bytes) -> Decision:
            started = time.perf_counter()
            decision = await lookups.decide(role, address)
            lookups.record(_MILTER, role, address, decision, started, levels=MESSAGE_LEVELS)
            return decision

        return decide

    return decider(Role.FORWARD), decider(Role.REVERSE)


class MemoryBudget:
    """The bytes all milter sessions may keep together (``milter_memory``), each owner of
    sessions at most half of them: one user filling it cannot take the other half."""

    def __init__(self, total: int) -> None:
        self.used = 0
        self.by_owner: Counter[Hashable] = Counter()
        #: Takes refused for want of room (a metric).
        self.refused = 0
        self.resize(total)

    def resize(self, total: int) -> None:
        """Keep at most ``total`` bytes from now on (a reload)."""
        self.total = total
        #: What one owner's sessions may keep together.
        self.per_owner = max(1, total // 2)

    def allowance(self, owner: Hashable) -> _OwnerAllowance:
        """What a session of ``owner`` takes from and gives back to."""
        return _OwnerAllowance(self, owner)


class _OwnerAllowance:
    __slots__ = ("budget", "owner")

    def __init__(self, budget: MemoryBudget, owner: Hashable) -> None:
        self.budget = budget
        self.owner = owner

    def take(self, size: int) -> bool:
        budget = self.budget
        held = budget.by_owner.get(self.owner, 0)  # not Counter's __missing__, a Python call
        if budget.used + size > budget.total or held + size > budget.per_owner:
            budget.refused += 1
            return False
        budget.used += size
        budget.by_owner[self.owner] = held + size
        return True

    def give(self, size: int) -> None:
        budget = self.budget
        budget.used -= size
        left = budget.by_owner[self.owner] - size
        if left > 0:
            budget.by_owner[self.owner] = left
        else:
            del budget.by_owner[self.owner]


class _Step:
    """One action of a session, as the loop hands it back to be answered (a plain class: a
    frozen dataclass's ``__init__`` costs a Python call per field, per packet)."""

    __slots__ = ("action", "session")

    def __init__(self, session: milter.Session, action: milter.MilterAction) -> None:
        self.session = session
        self.action = action


_Send, _Decide = milter.Send, milter.Decide


class MilterReader:
    """A milter session as the loop reads it: its actions become :class:`_Step` events, but
    a reply known already (:class:`milter.Send`: ``continue`` to MAIL and RCPT, ...) is its
    bytes, which the service answers as they are."""

    __slots__ = ("session",)

    def __init__(self, session: milter.Session) -> None:
        self.session = session

    @property
    def closed(self) -> bool:
        """After QUIT, EOF or a protocol error."""
        return self.session.closed

    @property
    def buffered(self) -> int:
        """Bytes held of a packet not complete yet."""
        return self.session.buffered

    def feed(self, data: bytes) -> list[_Step | bytes]:
        """The actions ``data`` completes."""
        session = self.session
        return [
            action.data if type(action) is _Send else _Step(session, action)
            for action in session.feed(data)
        ]

    def feed_eof(self) -> list[_Step | bytes]:
        """The actions left at EOF."""
        session = self.session
        return [_Step(session, action) for action in session.feed_eof()]


class MilterService:
    """The milter endpoint as a service of the connection loop: how to decide, the limits
    of a session, the memory budget, counters."""

    def __init__(
        self,
        settings: Settings,
        *,
        forward: Decider,
        reverse: Decider,
        delivery: PostfixDelivery,
        lookups: Lookups | None = None,
    ) -> None:
        #: With them, a message whose decision needs no storage and no answer from Postfix
        #: is decided in the loop (:func:`decide_now`), not off it.
        self.lookups = lookups
        self.forward = forward
        self.reverse = reverse
        self.delivery = delivery
        self.budget = MemoryBudget(settings.milter_memory)
        # The limits of the next sessions: recipient_limit, message_bytes, idle_limit,
        # transaction_limit, split, all from the settings.
        self.configure(settings)
        #: Recipients answered 452, of sessions that ended: of the other class
        #: (:attr:`milter.Session.split`).
        self.recipients_split = 0
        #: Messages decided, by outcome label; protocol errors under "protocol error".
        self.messages: Counter[str] = Counter()
        #: Recipients answered 452 (too many, too many bytes, no room), of ended sessions
        #: (:attr:`milter.Session.refused`).
        self.recipients_refused = 0
        self._log = RateLimited(LOG_INTERVAL)

    def configure(self, settings: Settings) -> None:
        """Apply ``settings`` (at start and on reload) to the next sessions."""
        self.recipient_limit = settings.milter_recipient_limit
        self.message_bytes = settings.milter_message_bytes
        self.budget.resize(settings.milter_memory)
        self.idle_limit = settings.milter_idle_timeout
        self.transaction_limit = settings.milter_message_timeout
        self.split = settings.split_mixed == "smtpd"

    # -- the loop's Service -----------------------------------------------------------------

    def reader(self, owner: Hashable) -> MilterReader:
        """A session for a new connection of ``owner``, keeping its bytes in the budget."""
        return MilterReader(
            milter.Session(
                recipient_limit=self.recipient_limit,
                message_bytes=self.message_bytes,
                allowance=self.budget.allowance(owner),
                split=self.split,
            )
        )

    def in_transaction(self, reader: Reader) -> bool:
        """Whether the session is in the middle of a message (from ``MAIL`` to its end)."""
        return isinstance(reader, MilterReader) and reader.session.in_message

    def discard(self, reader: Reader) -> None:
        """The connection ended: its bytes go back to the budget."""
        if isinstance(reader, MilterReader):
            self.recipients_refused += reader.session.refused
            self.recipients_split += reader.session.split
            reader.session.release()

    def answer(self, event: object) -> bytes | Later:
        """The reply to one action; for the end of a message or a recipient to classify,
        what gives it off the loop (:meth:`_later`)."""
        if type(event) is bytes:  # the reply itself (MilterReader.feed)
            return event
        if not isinstance(event, _Step):
            raise TypeError(f"not a milter step: {event!r}")
        action = event.action
        if type(action) is _Decide:  # the end of a message, decided here when it can be
            verdict = self._decide_now(action.transaction)
            if verdict is not None:
                return event.session.verdict(verdict)
            return partial(self._later, event)
        if isinstance(action, milter.Send):
            return action.data
        if isinstance(action, milter.CannotRewrite):
            self._log.log(
                logging.ERROR,
                "cannot rewrite",
                "milter: Postfix does not offer %s (set milter_protocol = 6): mail deferred",
                action.missing_names,
            )
            return action.data
        if isinstance(action, milter.Decide | milter.Classify):
            return partial(self._later, event)
        if action.reason is not None:
            self.messages["protocol error"] += 1
            self._log.log(
                logging.WARNING,
                "protocol error",
                "milter: protocol error: %s; closing",
                action.reason,
            )
        return b""

    async def _later(self, event: _Step) -> bytes:
        """The reply to the end of a message (the verdict) or to a recipient to classify,
        and then to the packets that came in behind that recipient."""
        session = event.session
        replies: list[bytes] = []
        pending = deque([event.action])
        while pending:
            action = pending.popleft()
            if isinstance(action, milter.Decide):
                replies.append(session.verdict(await self._decide(action.transaction)))
            elif isinstance(action, milter.Classify):
                before = session.split
                here = await self._classify(session, action.recipient)
                replies.append(session.admit(here))
                if session.split > before:
                    LOGGER.info(
                        "milter %s: recipient %s answered 452 4.5.3: not of the class of "
                        "the first (delivered here or not), it comes in a transaction of its own",
                        show(session.queue_id) or "-",
                        show(action.recipient),
                    )
                pending.extend(session.feed(b""))  # what came in behind that recipient
            else:
                reply = self.answer(_Step(session, action))
                replies.append(reply if isinstance(reply, bytes) else await reply())
        return b"".join(replies)

    async def _classify(self, session: milter.Session, recipient: bytes) -> bool | None:
        """Where ``recipient`` is delivered, for :meth:`milter.Session.admit`."""
        try:
            with trio.fail_after(DECIDE_SECONDS):
                here = await delivered_here(recipient, reverse=self.reverse, delivery=self.delivery)
        except trio.TooSlowError:
            here = None
        except Exception:
            LOGGER.exception("milter: internal error classifying a recipient")
            here = None
        if here is None:
            LOGGER.warning(
                "milter %s: recipient %s deferred: cannot tell where it goes",
                show(session.queue_id) or "-",
                show(recipient),
            )
        return here

    def _decide_now(self, transaction: milter.Transaction) -> milter.Verdict | None:
        """The verdict when the message is decided without waiting, else None."""
        if self.lookups is None:
            return None
        started = time.perf_counter()
        try:
            outcome = decide_now(transaction, self.lookups, self.delivery)
        except Exception:
            LOGGER.exception("milter %s: internal error", show(transaction.queue_id) or "-")
            outcome = MessageOutcome(_TEMPFAIL, "tempfail", "srsd internal error")
        return None if outcome is None else self._report(transaction, outcome, started)

    async def _decide(self, transaction: milter.Transaction) -> milter.Verdict:
        started = time.perf_counter()
        outcome: MessageOutcome
        try:
            with trio.fail_after(DECIDE_SECONDS):
                outcome = await decide(
                    transaction, forward=self.forward, reverse=self.reverse, delivery=self.delivery
                )
        except trio.TooSlowError:
            reason = f"no decision within {DECIDE_SECONDS:g} s"
            outcome = MessageOutcome(_TEMPFAIL, "tempfail", reason)
        except Exception:
            LOGGER.exception("milter %s: internal error", show(transaction.queue_id) or "-")
            outcome = MessageOutcome(_TEMPFAIL, "tempfail", "srsd internal error")
        return self._report(transaction, outcome, started)

    def _report(
        self, transaction: milter.Transaction, outcome: MessageOutcome, started: float
    ) -> milter.Verdict:
        """Count and log one decided message (``started``: a :func:`time.perf_counter`
        reading); the verdict to send."""
        self.messages[outcome.label] += 1
        verdict = milter.writable(outcome.verdict)  # what is sent, and so logged
        queue_id = show(transaction.queue_id) or "-"
        if verdict.tempfail:
            sender = show(transaction.sender)
            LOGGER.warning("milter %s: %s deferred: %s", queue_id, sender, outcome.reason)
        elif LOGGER.isEnabledFor(_INFO):  # a line per message: the fast way, as lookups
            for old, new in verdict.replace:
                line(_INFO, f"milter {queue_id}: recipient {show(old)} restored as <{show(new)}>")
            sender = show(transaction.sender)
            if verdict.sender is not None:
                ms = (time.perf_counter() - started) * 1000
                line(
                    _INFO,
                    f"milter {queue_id}: sender {sender} rewritten as <{show(verdict.sender)}> "
                    f"({ms:.1f} ms)",
                )
            else:
                line(_INFO, f"milter {queue_id}: sender {sender} kept: {outcome.reason}")
        return verdict
