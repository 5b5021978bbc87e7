# Admission control of the connection loop: each peer's owner, the rule, evictions, counts, logs.
"""Put :mod:`srsd.admission.rule`'s rule in front of the connection loop.

One :class:`Gatekeeper` guards one kind of endpoint (the map endpoints share one, the
milter has its own, each with its own limits: a flood on one cannot take the places of
the other). For every accepted connection it learns the owner of the peer
(:class:`srsd.admission.owners.PeerOwners`: one ``SO_PEERCRED`` or sock_diag round trip),
asks the admission table, closes the victim of an eviction, and counts and logs what it
did: connections refused because their user is not in ``allowed_users``, refused because
nothing could be evicted, evicted (and of those, evicted inside a transaction), and requests
or transactions that timed out half-way (``request_timeout``, ``milter_message_timeout``,
enforced by the loop's sweep). Log lines
are rate-limited: at most one line per kind and :data:`LOG_INTERVAL` seconds, with the
count since the last one, so a flood costs a few lines, not one per connection.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from srsd.admission.owners import Owner, PeerOwners
from srsd.admission.rule import Admission, Disposition, Limits, resolve_users
from srsd.host.logs import RateLimited

#: At most one log line per kind (refused user, full, evicted, timed out) per this many s.
LOG_INTERVAL = 10.0


class Peer(Hashable, Protocol):
    """What the gatekeeper needs of a connection: its socket, and a place for its owner."""

    @property
    def sock(self) -> socket.socket:
        """The accepted socket."""
        ...

    owner: Hashable


C = TypeVar("C", bound=Peer)


class Gatekeeper(Generic[C]):
    """Admits, evicts and counts the connections of one kind of endpoint: ``close`` closes
    a victim, ``is_busy`` says whether a connection may not be evicted; ``noun`` and
    ``names`` (the settings of the total limit, of the request and the transaction
    time-outs) are for the log lines."""

    def __init__(
        self,
        limits: Limits,
        owners: PeerOwners,
        close: Callable[[C], None],
        is_busy: Callable[[C], bool],
        *,
        noun: str = "connection",
        names: tuple[str, str, str] = ("max_connections", "request_timeout", "-"),
    ) -> None:
        self.owners = owners
        self.table: Admission[C] = Admission(limits, is_busy)
        self._close = close
        self._noun = noun
        self._names = names
        #: What the gatekeeper did, by kind: the metrics read these.
        self.counts: Counter[str] = Counter()
        self._log = RateLimited(LOG_INTERVAL)

    @staticmethod
    def limits(max_connections: int, max_per_user: int, allowed_users: tuple[str, ...]) -> Limits:
        """The :class:`Limits` of the settings (``max_per_user`` 0: half the total);
        :class:`ValueError` for an unknown user name."""
        share = max_per_user or Limits.default_per_user(max_connections)
        return Limits(max_connections, min(share, max_connections), resolve_users(allowed_users))

    def configure(self, limits: Limits) -> None:
        """Apply new limits (a reload) to the next connections; open ones stay."""
        self.table.limits = limits

    @property
    def full(self) -> bool:
        """Whether the next connection needs an eviction (or a place freed first)."""
        return len(self.table) >= self.table.limits.max_connections

    def admit(self, conn: C, now: float) -> bool:
        """Whether to serve ``conn``, just accepted at ``now`` (its owner is noted in
        ``conn.owner``); evicts a victim if the rule says so (before returning True)."""
        owner = self.owners.owner(conn.sock)
        conn.owner = owner
        ruling = self.table.admit(conn, owner, now)
        disposition = ruling.disposition
        if disposition is Disposition.ADMIT:
            return True
        total = self._names[0]
        limits = self.table.limits
        if ruling.victim is not None:
            victim = ruling.victim
            kind, where = "evicted", ""
            if ruling.in_transaction:  # counted in both: "evicted" is every eviction
                self.counts["evicted"] += 1
                kind, where = "evicted in transaction", " (in the middle of a transaction)"
            self._count(
                kind,
                f"evicted the longest idle {self._noun} of %s{where} to admit one of "
                f"%s ({total} %d, per user %d)",
                _who(ruling.victim_owner),
                _who(owner),
                limits.max_connections,
                limits.max_per_user,
            )
            self._close(victim)
            return True
        if disposition is Disposition.REFUSE_USER:
            self._count(
                "refused user", f"refused a {self._noun} of %s: not in allowed_users", _who(owner)
            )
        else:
            self._count(
                "refused full",
                f"{self._noun} limit reached ({total} %d, per user %d) and every "
                f"{self._noun} busy: closed a new one of %s",
                limits.max_connections,
                limits.max_per_user,
                _who(owner),
            )
        return False

    def answered(self, conn: C, now: float) -> None:
        """``conn`` answered its requests at ``now``: idle since then."""
        self.table.idle(conn, now)

    def transaction(self, conn: C, inside: bool, now: float) -> None:
        """``conn`` entered (``inside``) or left a transaction at ``now`` (a milter message:
        evicted only after its owner's sessions between messages)."""
        self.table.transaction(conn, inside, now)

    def closed(self, conn: C) -> None:
        """``conn`` ended, however."""
        self.table.closed(conn)

    def timed_out(self, conn: C, what: str, seconds: float) -> None:
        """The loop closes ``conn``: its ``what`` ("request" or "transaction") did not end
        within ``seconds``."""
        kind, name = ("timed out", self._names[1])
        if what != "request":
            kind, name = f"{what} timed out", self._names[2]
        self._count(
            kind,
            f"closed a {self._noun} of %s: its {what} did not end within {name} (%g s)",
            _who(self.table.owner(conn)),
            seconds,
        )

    def _count(self, kind: str, message: str, *args: object) -> None:
        self.counts[kind] += 1
        self._log.log(logging.WARNING, kind, message, *args)


def _who(owner: Owner | None) -> str:
    if isinstance(owner, int):
        return f"uid {owner}"
    return "an unknown user" if owner is None else f"{owner} user"
