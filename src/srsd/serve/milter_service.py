# The milter endpoint: one trio task per Postfix milter connection, and the end-of-message decision.
"""Serve Postfix's ``smtpd_milters`` / ``non_smtpd_milters`` connections.

Milter connections are few and long (one per SMTP session, or per local submission), so
each is an ordinary trio task reading a :class:`srsd.wire.milter.Session`, outside the lookup
reactor. At the end of each message :func:`decide` says what to change:

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
sent again by the client in a transaction of its own, so step 2 sees one class only.

Time-outs: a connection idle for :data:`IDLE_SECONDS` (longer than Postfix's
``smtpd_timeout``) is closed, so is one whose replies are not read within
:data:`SEND_SECONDS`; at most :data:`MAX_SESSIONS` connections are served at once (more are
closed at once, and Postfix applies ``milter_default_action``). On SIGTERM
(:meth:`MilterService.stop`) a connection between messages is closed at once, one in the
middle of a message may finish it within ``shutdown_grace`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from srsd.config.settings import Settings
from srsd.host.logs import LOGGER, show
from srsd.serve.accept import ACCEPT_RETRY_DELAY, ACCEPT_RETRY_ERRNOS
from srsd.serve.answers import Lookups
from srsd.serve.delivery import PostfixDelivery
from srsd.srs.policy import Decision, DomainSet, Outcome, Role
from srsd.wire import Wire, milter

#: Seconds a milter connection may stay silent (Postfix's smtpd_timeout is 300 s).
IDLE_SECONDS = 600.0
#: Seconds the decision for one message may take (Postfix waits milter_content_timeout, 300 s).
DECIDE_SECONDS = 30.0
#: Seconds a reply may take to be sent.
SEND_SECONDS = 30.0
#: Milter connections served at once.
MAX_SESSIONS = 1024
#: Bytes read from a milter connection at once.
RECEIVE_SIZE = 65536

#: Decides one address (a sender forward, a recipient reverse), as the map endpoints do.
Decider = Callable[[bytes], Awaitable[Decision]]
_TEMPFAIL = milter.Verdict(tempfail=True)


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What happened to one message, for the log and the counters."""

    verdict: milter.Verdict
    label: str  # "rewritten", "delivered here", "not rewritten", "tempfail"
    reason: str


async def decide(
    transaction: milter.Transaction,
    *,
    forward: Decider,
    reverse: Decider,
    delivery: PostfixDelivery,
) -> MessageOutcome:
    """The verdict for one message (see the module docstring)."""
    replace: list[tuple[bytes, bytes]] = []
    finals: list[bytes] = []
    for raw in transaction.recipients:
        recipient = milter.unbracket(raw)
        restored = await reverse(recipient)
        if restored.outcome is Outcome.ERROR:
            reason = f"recipient <{show(recipient)}>: {restored.reason}"
            return MessageOutcome(_TEMPFAIL, "tempfail", reason)
        if restored.outcome is Outcome.REWRITTEN and restored.value is not None:
            replace.append((raw, restored.value))
            finals.append(restored.value)
        else:
            finals.append(recipient)
    kept = milter.Verdict(replace=tuple(replace))
    sender = milter.unbracket(transaction.sender)
    if not sender:
        return MessageOutcome(kept, "not rewritten", "null sender")
    if await delivery.all_delivered_here(finals):
        return MessageOutcome(kept, "delivered here", "every recipient is delivered here")
    forwarded = await forward(sender)
    if forwarded.outcome is Outcome.ERROR:
        return MessageOutcome(_TEMPFAIL, "tempfail", forwarded.reason)
    if forwarded.outcome is Outcome.REWRITTEN and forwarded.value is not None:
        rewritten = milter.Verdict(forwarded.value, tuple(replace))
        return MessageOutcome(rewritten, "rewritten", "forwarded")
    return MessageOutcome(kept, "not rewritten", forwarded.reason)


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
    counted and logged under the protocol ``milter``."""

    async def forward(sender: bytes) -> Decision:
        started = time.perf_counter()
        decision = await lookups.decide(Role.FORWARD, sender)
        lookups.record(Wire.MILTER.value, Role.FORWARD, sender, decision, started)
        return decision

    async def reverse(recipient: bytes) -> Decision:
        started = time.perf_counter()
        decision = await lookups.decide(Role.REVERSE, recipient)
        lookups.record(Wire.MILTER.value, Role.REVERSE, recipient, decision, started)
        return decision

    return forward, reverse


class MilterService:
    """The milter endpoint's state: how to decide, limits, counters."""

    def __init__(
        self,
        *,
        forward: Decider,
        reverse: Decider,
        delivery: PostfixDelivery,
        recipient_limit: int = milter.MAX_RECIPIENTS,
        split: bool = False,
    ) -> None:
        self.forward = forward
        self.reverse = reverse
        self.delivery = delivery
        self.recipient_limit = recipient_limit
        self.split = split
        self.sessions = 0
        self.refused_sessions = 0
        self._stopping = False
        self._active: dict[trio.CancelScope, milter.Session] = {}
        self._busy: set[trio.CancelScope] = set()  # answering what was received
        #: Messages decided, by outcome label; protocol errors under "protocol error".
        self.messages: Counter[str] = Counter()

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        sessions: trio.Nursery | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` until cancelled; each connection is one task, in
        ``sessions`` when given (so that it outlives the accepting, see :meth:`stop`)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, sessions or nursery)
            task_status.started()

    def stop(self, grace: float) -> None:
        """Shutting down: close connections between messages now; let one in the middle of
        a message finish it within ``grace`` seconds, then close it."""
        self._stopping = True
        deadline = trio.current_time() + grace
        for scope, session in list(self._active.items()):
            if session.in_message or scope in self._busy:
                scope.deadline = min(scope.deadline, deadline)
            else:
                scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as err:  # out of descriptors: wait a little, keep serving
                if err.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                LOGGER.warning("milter: accept failed: %s", err.strerror or err)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if self.sessions >= MAX_SESSIONS:
                self.refused_sessions += 1
                await stream.aclose()
                continue
            nursery.start_soon(self.converse, stream)

    async def converse(self, stream: trio.abc.Stream) -> None:
        """Serve one milter connection until QUIT, EOF, a protocol error or a time-out."""
        self.sessions += 1
        session = milter.Session(recipient_limit=self.recipient_limit, split=self.split)
        scope = trio.CancelScope()
        self._active[scope] = session
        try:
            with scope:
                while not session.closed and not (self._stopping and not session.in_message):
                    with trio.move_on_after(IDLE_SECONDS) as idle:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    if idle.cancelled_caught:
                        LOGGER.info("milter: connection idle for %g s: closing", IDLE_SECONDS)
                        return
                    actions = session.feed(data) if data else session.feed_eof()
                    self._busy.add(scope)
                    try:
                        if not await self._act(stream, session, actions):
                            return
                    finally:
                        self._busy.discard(scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # Postfix went away: nothing to answer
        finally:
            del self._active[scope]
            self.sessions -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _act(
        self,
        stream: trio.abc.Stream,
        session: milter.Session,
        actions: Sequence[milter.MilterAction],
    ) -> bool:
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            if isinstance(action, milter.Send):
                reply = action.data
            elif isinstance(action, milter.CannotRewrite):
                reply = action.data
                LOGGER.error(
                    "milter: Postfix does not offer %s (set milter_protocol = 6): mail deferred",
                    action.missing_names,
                )
            elif isinstance(action, milter.Decide):
                reply = session.verdict(await self._decide(action.transaction))
            elif isinstance(action, milter.Classify):
                before = session.split
                reply = session.admit(await self._classify(session, action.recipient))
                if session.split > before:
                    LOGGER.info(
                        "milter %s: recipient %s answered 452 4.5.3: not of the class of "
                        "the first (delivered here or not), it comes in a transaction of its own",
                        show(session.queue_id) or "-",
                        show(action.recipient),
                    )
            else:
                if action.reason is not None:
                    self.messages["protocol error"] += 1
                    LOGGER.warning("milter: protocol error: %s; closing", action.reason)
                return False
            with trio.move_on_after(SEND_SECONDS) as sending:
                await stream.send_all(reply)
            if sending.cancelled_caught:
                LOGGER.warning(
                    "milter: Postfix did not read its replies for %g s: closing", SEND_SECONDS
                )
                return False
            if isinstance(action, milter.Classify):
                pending.extend(session.feed(b""))  # what came in behind that recipient
        return True

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

    async def _decide(self, transaction: milter.Transaction) -> milter.Verdict:
        started = time.perf_counter()
        queue_id = show(transaction.queue_id) or "-"
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
            LOGGER.exception("milter %s: internal error", queue_id)
            outcome = MessageOutcome(_TEMPFAIL, "tempfail", "srsd internal error")
        self.messages[outcome.label] += 1
        verdict = milter.writable(outcome.verdict)  # what is sent, and so logged
        level = logging.WARNING if verdict.tempfail else logging.INFO
        if LOGGER.isEnabledFor(level):
            for old, new in verdict.replace:
                LOGGER.log(
                    level,
                    "milter %s: recipient %s restored as <%s>",
                    queue_id,
                    show(old),
                    show(new),
                )
            sender = show(transaction.sender)
            if verdict.tempfail:
                LOGGER.warning("milter %s: %s deferred: %s", queue_id, sender, outcome.reason)
            elif verdict.sender is not None:
                LOGGER.info(
                    "milter %s: sender %s rewritten as <%s> (%.1f ms)",
                    queue_id,
                    sender,
                    show(verdict.sender),
                    (time.perf_counter() - started) * 1000,
                )
            else:
                LOGGER.info("milter %s: sender %s kept: %s", queue_id, sender, outcome.reason)
        return verdict
