# Admission control of the connection loop: each peer's owner, the rule, evictions, counts, logs.
"""Put :mod:`srsd.admission.rule`'s rule in front of the connection loop.

For every accepted connection the :class:`Gatekeeper` learns the owner of the peer
(:class:`srsd.admission.owners.PeerOwners`: one ``SO_PEERCRED`` or sock_diag round trip), asks the
admission table, closes the victim of an eviction, and counts and logs what it did:
connections refused because their user is not in ``allowed_users``, refused because
nothing could be evicted, evicted, and requests that timed out half-way
(``request_timeout``, enforced by the loop's sweep). Log lines are rate-limited: at most
one line per kind and :data:`LOG_INTERVAL` seconds, with the count since the last one, so
a flood costs a few lines, not one per connection.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from srsd.admission.owners import Owner, PeerOwners
from srsd.admission.rule import Action, Admission, Limits, resolve_users
from srsd.host.logs import LOGGER

#: At most one log line per kind (refused user, full, evicted, timed out) per this many s.
LOG_INTERVAL = 10.0


class Peer(Hashable, Protocol):
    """What the gatekeeper needs of a connection: its socket."""

    @property
    def sock(self) -> socket.socket:
        """The accepted socket."""
        ...


C = TypeVar("C", bound=Peer)


class Gatekeeper(Generic[C]):
    """Admits, evicts and counts the connections of one server (one per process):
    ``close`` closes a victim, ``is_busy`` says whether a connection is answering."""

    def __init__(
        self,
        limits: Limits,
        owners: PeerOwners,
        close: Callable[[C], None],
        is_busy: Callable[[C], bool],
    ) -> None:
        self.owners = owners
        self.table: Admission[C] = Admission(limits, is_busy)
        self._close = close
        #: What the gatekeeper did, by kind: the metrics read these.
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    @staticmethod
    def limits(max_connections: int, max_per_user: int, allowed_users: tuple[str, ...]) -> Limits:
        """The :class:`Limits` of the settings (``max_per_user`` 0: half the total);
        :class:`ValueError` for an unknown user name."""
        share = max_per_user or Limits.default_per_user(max_connections)
        return Limits(max_connections, min(share, max_connections), resolve_users(allowed_users))

    def configure(self, limits: Limits) -> None:
        """Apply new limits (a reload) to the next connections; open ones stay."""
        self.table.limits = limits

    def admit(self, conn: C, now: float) -> bool:
        """Whether to serve ``conn``, just accepted at ``now``; evicts a victim if the rule
        says so (before returning True)."""
        owner = self.owners.owner(conn.sock)
        ruling = self.table.admit(conn, owner, now)
        action = ruling.action
        if action is Action.ADMIT:
            return True
        if ruling.victim is not None:
            victim = ruling.victim
            self._count(
                "evicted",
                "evicted the longest idle connection of %s to admit one of "
                "%s (max_connections %d, per user %d)",
                _who(ruling.victim_owner),
                _who(owner),
                self.table.limits.max_connections,
                self.table.limits.max_per_user,
            )
            self._close(victim)
            return True
        if action is Action.REFUSE_USER:
            self._count(
                "refused user", "refused a connection of %s: not in allowed_users", _who(owner)
            )
        else:
            self._count(
                "refused full",
                "connection limit reached (max_connections %d, per "
                "user %d) and every connection busy: closed a new one of %s",
                self.table.limits.max_connections,
                self.table.limits.max_per_user,
                _who(owner),
            )
        return False

    def answered(self, conn: C, now: float) -> None:
        """``conn`` answered its requests at ``now``: idle since then."""
        self.table.idle(conn, now)

    def closed(self, conn: C) -> None:
        """``conn`` ended, however."""
        self.table.closed(conn)

    def timed_out(self, conn: C, seconds: float) -> None:
        """The loop closes ``conn``: a request did not end within ``seconds``."""
        self._count(
            "timed out",
            "closed a connection of %s: its request did not end within request_timeout (%g s)",
            _who(self.table.owner(conn)),
            seconds,
        )

    def _count(self, kind: str, message: str, *args: object) -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[kind] += 1
            return
        self._logged[kind] = now
        more = self._unlogged.pop(kind, 0)
        suffix = f" ({more} more since the last such line)" if more else ""
        LOGGER.warning(message + suffix, *args)


def _who(owner: Owner | None) -> str:
    if isinstance(owner, int):
        return f"uid {owner}"
    return "an unknown user" if owner is None else f"{owner} user"
