# Envelope database mode at lookup time: alias long senders, resolve aliases, flood cap, outages.
"""Put the envelope database between the policy and the wire (``original_envelope``).

The policy decides as usual; this module then, for a sender that :func:`envelope.use_database`
says should be aliased, stores it under its key and answers the SRS address of the alias
instead, and for a decoded address that is an alias, looks the original sender up. It owns
the three things around the store that must be shared by every connection:

* :class:`~srsd.envelope.keys.RecentWrites`: a sender written in the last hour is not written
  again (writes are idempotent and only refresh the lifetime). An alias handed out unwritten
  bounces into nothing (``500 Unknown alias.`` forever), so srsd never answers with an alias
  it has not confirmed stored in the database it talks to now: the memory is forgotten after
  any storage failure and whenever the store may have lost entries
  (:attr:`~srsd.envelope.store.EnvelopeStore.generation`: a new connection to a Redis that
  may have restarted empty), and for a store in a server (Redis: restarts, ``FLUSHALL``,
  fail-over, eviction) a remembered sender is confirmed with a read before its alias is
  answered; a sender found missing is written again and the whole memory forgotten. With a
  store on this host (SQLite) a remembered sender's alias is answered at once
  (:meth:`EnvelopeDatabase.remembered`, synchronous: such a lookup never waits);
* :class:`~srsd.envelope.keys.WriteLimiter`: the flood cap. When it is reached the sender gets
  the embedded form instead (the mail still leaves signed, nothing is deferred or lost), one
  warning is logged per flood and :attr:`EnvelopeDatabase.refused` counts;
* :class:`~srsd.envelope.store.Outage`: a storage failure is logged once per outage and turns the
  lookup into :attr:`Outcome.ERROR`, which the wire codecs send as ``400`` / ``TEMP``, so
  Postfix defers the mail and retries; the store recovers by itself.

Reverse resolves aliases whatever the mode, so switching modes loses no bounce in flight.
"""

from __future__ import annotations

from srsd.envelope.keys import (
    EnvelopeMode,
    RecentWrites,
    WriteLimiter,
    alias_address,
    alias_key,
    key_of,
    use_database,
)
from srsd.envelope.store import EnvelopeStore, Outage, SQLiteStore, StorageError
from srsd.host.logs import LOGGER
from srsd.srs import address
from srsd.srs.policy import Decision, Outcome, Policy

UNAVAILABLE = Decision(Outcome.ERROR, reason="Envelope database unavailable")
UNKNOWN_ALIAS = Decision(Outcome.UNKNOWN_ALIAS, reason="Unknown alias.")


class EnvelopeDatabase:
    """The envelope database as the server uses it: one per process, shared by connections."""

    def __init__(self, store: EnvelopeStore, mode: EnvelopeMode, writes_per_minute: int) -> None:
        self.store = store
        self.mode = mode
        self.outage = Outage(store.description)
        self.limiter = WriteLimiter(writes_per_minute)
        self.recent = RecentWrites()
        # (outage.failures, store.generation) when ``recent`` was last trusted
        self._trusted = (0, store.generation)

    def _no_database_yet(self) -> bool:
        """In embedded mode, a SQLite file that does not exist holds no alias: say so,
        rather than create the file (a stateless srsd writes nothing) or fail."""
        return (
            self.mode is EnvelopeMode.EMBEDDED
            and isinstance(self.store, SQLiteStore)
            and not self.store.path.exists()
        )

    @property
    def errors(self) -> int:
        """Envelope database failures so far, those the store recovered from included (the
        metric ``srsd_database_errors_total``)."""
        return self.outage.failures + self.store.recovered

    def _forget(self) -> None:
        self.recent = RecentWrites(self.recent.capacity, self.recent.refresh_after)

    def _remembered(self, key: bytes, now: float) -> bool:
        """Whether ``key`` was written lately, to the store as it is now."""
        marks = (self.outage.failures, self.store.generation)
        if marks != self._trusted:  # the store failed or reconnected since: re-write
            self._trusted = marks
            self._forget()
        return self.recent.fresh(key, now)

    @property
    def refused(self) -> int:
        """Writes refused by the flood cap so far (those senders got the embedded form)."""
        return self.limiter.refused

    def configure(self, mode: EnvelopeMode, writes_per_minute: int) -> None:
        """Apply a reloaded mode and flood cap (the store itself needs a restart)."""
        self.mode = mode
        if writes_per_minute != self.limiter.max_per_minute:
            refused = self.limiter.refused  # a metric counter: it must not go back to 0
            self.limiter = WriteLimiter(writes_per_minute)
            self.limiter.refused = refused

    def remembered(self, policy: Policy, sender: bytes, now: float) -> Decision | None:
        """The database form of ``sender`` at once when this process wrote it lately to a
        store on this host (nothing to write or read: the lookup never waits), else None
        (then :meth:`forward` it: a store in a server confirms a remembered sender with a
        read). ``sender`` must be one :func:`use_database` says to alias."""
        if self.store.remote:
            return None
        key = alias_key(sender)
        return _aliased(policy, key, now) if self._remembered(key, now) else None

    async def forward(
        self, policy: Policy, sender: bytes, embedded: Decision, now: float
    ) -> Decision:
        """``embedded`` (the policy's decision for ``sender``), or its database form."""
        if embedded.value is None or not use_database(self.mode, sender, embedded.value):
            return embedded
        key = alias_key(sender)
        remembered = self._remembered(key, now)
        if remembered and self.store.remote:
            try:
                stored = await self.store.get(key, now)
            except StorageError as err:
                self.outage.failed(err)
                return UNAVAILABLE
            self.outage.succeeded()
            if stored != sender:  # lost (a restart, a flush, an eviction): write it again
                self._forget()
                remembered = False
        if not remembered:
            flooding = self.limiter.refusing
            if not self.limiter.allow(now):
                if not flooding:
                    LOGGER.warning(
                        "envelope database write cap (%d per minute) reached: new "
                        "senders get the embedded SRS form until the rate drops",
                        self.limiter.max_per_minute,
                    )
                return embedded
            try:
                await self.store.put(key, sender, now)
            except StorageError as err:
                self.outage.failed(err, write=True)
                return UNAVAILABLE
            self.outage.succeeded(write=True)
            self.recent.note(key, now)
        return _aliased(policy, key, now)

    async def reverse(self, decoded: Decision, now: float) -> Decision:
        """``decoded`` (the policy's decision), with an alias replaced by the stored sender."""
        key = None if decoded.value is None else key_of(decoded.value)
        if key is None:
            return decoded
        if self._no_database_yet():
            return UNKNOWN_ALIAS  # embedded mode, and no database was ever written here
        try:
            original = await self.store.get(key, now)
        except StorageError as err:
            self.outage.failed(err)
            return UNAVAILABLE
        self.outage.succeeded()
        if original is None:
            return UNKNOWN_ALIAS
        refused = address.refusal(original, len(original))  # a control byte: no address
        if refused is not None:  # stored before such senders were refused (or tampered with)
            return Decision(Outcome.BAD_ADDRESS, reason=refused)
        return Decision(Outcome.REWRITTEN, original, "resolved through the envelope database")


def _aliased(policy: Policy, key: bytes, now: float) -> Decision:
    """The forward decision of a sender stored under ``key``: the SRS form of its alias."""
    return Decision(
        Outcome.REWRITTEN,
        policy.codec.forward(alias_address(key), now),
        "rewritten through the envelope database",
    )
