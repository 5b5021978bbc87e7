# Who may connect, and who gives way when srsd is full: the admission policy, sans-IO.
"""Decide, for each new connection, whether to refuse it, admit it, or admit it and close
another one (evict), so that no local user can shut Postfix out by holding connections.

Each connection has an owner (:mod:`srsd.admission.owners`: a uid, ``"remote"`` for every peer on
another host, ``"unknown"``), the time of its last activity (the connect, or the last
request answered), whether srsd is answering a request of it right now and waits for its
own work to do so (busy: the server says which, :mod:`srsd.serve.loop`), and whether it is
inside a transaction (a milter session between ``MAIL`` and the end of that message,
waiting for the client's next packet). Of one owner's connections that are not busy, the
**victim** is the one idle the longest between transactions, else, when every one is inside
a transaction, the one of those idle the longest. The rule, for a new connection of owner
``u`` (:meth:`Admission.decide`):

1. ``allowed_users`` is not empty and ``u`` is not in it: **refuse** (close at once).
2. ``u`` already holds ``max_connections_per_user``: ``u`` gives way itself: **evict**
   ``u``'s victim; if every one of its connections is busy, **refuse**.
3. srsd holds ``max_connections``: the owner who holds the most gives way, counting the
   newcomer in its owner's share; ties go to the newcomer's owner, then to the owner whose
   victim is between transactions, then to the owner of the victim idle the longest;
   owners other than the newcomer's are only considered when one of their connections is
   not busy. That owner's victim is **evicted**; when the newcomer's owner gives way and
   all of its connections are busy, **refuse**.
4. Otherwise **admit**.

A busy connection is never evicted, and a user's connection is evicted for another user's
newcomer only when it holds more than that user would, and no user with an evictable
connection holds more. So a user who floods srsd reaches its own
cap and from then on closes its own connections; while it holds more than Postfix, none of
Postfix's connections is evicted (``tests/test_admission.py`` states these as properties).
Evicting a connection inside a transaction costs that transaction (a milter message ends
in Postfix's ``milter_default_action``, a temporary failure the client retries); it is done
only when the biggest holder has nothing idle between transactions, so that users who hold
their shares inside messages that never end cannot fill srsd.

:class:`Admission` applies the rule incrementally, in time proportional to the number of
owners, keeping per owner its idle connections in the order they became idle, those
between and those inside transactions apart (``tests/test_admission.py`` checks it against
the rule written as a plain function over all connections, the reference).
"""

from __future__ import annotations

import enum
import pwd
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from srsd.admission.owners import REMOTE, Owner

K = TypeVar("K", bound=Hashable)


class Disposition(enum.Enum):
    """What to do with a new connection."""

    ADMIT = "admit"
    EVICT = "evict"  # admit, and close ``Ruling.victim``
    REFUSE_USER = "refuse user"  # not in allowed_users
    REFUSE_BUSY = "refuse busy"  # full (or at its cap) and no connection may be evicted


@dataclass(frozen=True, slots=True)
class Ruling(Generic[K]):
    """The rule's ruling on a new connection: a disposition, and the connection to close for
    :attr:`Disposition.EVICT`, its owner and whether it is inside a transaction."""

    disposition: Disposition
    victim: K | None = None
    victim_owner: Owner | None = None
    in_transaction: bool = False

    @property
    def admitted(self) -> bool:
        """Whether the new connection is served."""
        return self.disposition in (Disposition.ADMIT, Disposition.EVICT)


@dataclass(frozen=True, slots=True)
class Limits:
    """The admission limits: ``allowed`` empty means every owner is allowed."""

    max_connections: int
    max_per_user: int
    allowed: frozenset[Owner] = frozenset()

    @classmethod
    def default_per_user(cls, max_connections: int) -> int:
        """``max_connections_per_user`` when not set: half of ``max_connections``."""
        return max(1, max_connections // 2)


class _Entry:
    __slots__ = ("busy", "in_transaction", "last", "owner", "queue", "seq")

    def __init__(self, owner: Owner, last: float, seq: int, queue: OrderedDict[Any, None]) -> None:
        self.owner = owner
        self.last = last
        self.busy = False
        self.in_transaction = False
        self.seq = seq  # order of becoming idle: breaks ties in ``last``
        #: The owner's queue of its kind (:meth:`Admission._queue`), kept here: it is asked
        #: at every request answered, and changes only with ``in_transaction``.
        self.queue = queue


class Admission(Generic[K]):
    """The rule applied incrementally to the connections of a running server.

    The caller reports every change: :meth:`admit` for a new connection (it is then
    counted, and a victim it names is forgotten at once: the caller must close it),
    :meth:`idle` when a connection has answered its requests, :meth:`transaction` when one
    enters or leaves a transaction, :meth:`closed` when a
    connection ends (calling it for a victim or an unknown key does nothing). Whether a
    connection is busy is either reported (:meth:`busy`, then :meth:`idle`) or asked of
    ``is_busy`` when a victim is chosen, for the few connections at the heads of the
    owners' queues (busy is rare and short: a server need not report every request).
    ``now`` must never decrease (a monotonic clock).
    """

    def __init__(self, limits: Limits, is_busy: Callable[[K], bool] | None = None) -> None:
        self.limits = limits
        self._is_busy = is_busy
        self._entries: dict[K, _Entry] = {}
        self._held: Counter[Owner] = Counter()
        # Per owner, its connections not reported busy, in the order they became idle:
        # between transactions, and inside one.
        self._idle: dict[Owner, OrderedDict[K, None]] = {}
        self._waiting: dict[Owner, OrderedDict[K, None]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def held(self, owner: Owner) -> int:
        """Connections ``owner`` holds now."""
        return self._held[owner]

    def owners(self) -> dict[Owner, int]:
        """Connections held, by owner."""
        return {owner: count for owner, count in self._held.items() if count}

    def owner(self, key: K) -> Owner | None:
        """The owner of an open connection (None when not counted)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.owner

    def decide(self, owner: Owner) -> Ruling[K]:
        """What the rule says for a new connection of ``owner``, without applying it."""
        limits = self.limits
        if limits.allowed and owner not in limits.allowed:
            return Ruling(Disposition.REFUSE_USER)
        if self._held[owner] >= limits.max_per_user:
            return self._evicting(self._victim(owner))
        if len(self._entries) < limits.max_connections:
            return Ruling(Disposition.ADMIT)
        # Ranked as in the rule: the newcomer's owner wins ties, so another owner gives
        # way only when it holds more than the newcomer's owner would.
        victim = self._victim(owner)
        best: tuple[int, bool, bool, float, int] = (
            -(self._held[owner] + 1),
            False,
            False,
            0.0,
            0,
        )
        for candidate in self._held:
            if candidate == owner:
                continue
            key = self._victim(candidate)
            if key is None:
                continue
            entry = self._entries[key]
            rank = (-self._held[candidate], True, entry.in_transaction, entry.last, entry.seq)
            if rank < best:
                best, victim = rank, key
        return self._evicting(victim)

    def _evicting(self, victim: K | None) -> Ruling[K]:
        if victim is None:
            return Ruling(Disposition.REFUSE_BUSY)
        entry = self._entries[victim]
        return Ruling(Disposition.EVICT, victim, entry.owner, entry.in_transaction)

    def admit(self, key: K, owner: Owner, now: float) -> Ruling[K]:
        """Decide for the new connection ``key`` of ``owner`` and apply the ruling."""
        ruling = self.decide(owner)
        if ruling.victim is not None:
            self.closed(ruling.victim)
        if ruling.admitted:
            self._seq += 1
            queue = self._idle.setdefault(owner, OrderedDict())
            self._entries[key] = _Entry(owner, now, self._seq, queue)
            self._held[owner] += 1
            queue[key] = None
        return ruling

    def busy(self, key: K) -> None:
        """A request of ``key`` is being answered: it may not be evicted."""
        entry = self._entries.get(key)
        if entry is not None and not entry.busy:
            entry.busy = True
            entry.queue.pop(key, None)

    def idle(self, key: K, now: float) -> None:
        """``key`` answered its requests at ``now``: evictable again, idle since ``now``."""
        entry = self._entries.get(key)
        if entry is not None:
            self._seq += 1
            entry.busy, entry.last, entry.seq = False, now, self._seq
            queue = entry.queue
            queue[key] = None
            queue.move_to_end(key)

    def transaction(self, key: K, inside: bool, now: float) -> None:
        """``key`` entered (``inside``) or left a transaction at ``now``, with a request of
        its (activity: idle since ``now`` unless busy)."""
        entry = self._entries.get(key)
        if entry is None or entry.in_transaction == inside:
            return
        entry.queue.pop(key, None)
        entry.in_transaction = inside
        entry.queue = self._queue(entry)
        if not entry.busy:
            self.idle(key, now)

    def _queue(self, entry: _Entry) -> OrderedDict[Any, None]:
        """The idle connections of ``entry``'s owner of its kind (inside a transaction or not)."""
        queues = self._waiting if entry.in_transaction else self._idle
        queue = queues.get(entry.owner)
        if queue is None:
            queue = queues[entry.owner] = OrderedDict()
        return queue

    def closed(self, key: K) -> None:
        """``key`` ended (or was evicted): forget it."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        owner = entry.owner
        self._held[owner] -= 1
        entry.queue.pop(key, None)
        if not self._held[owner]:
            del self._held[owner]
            self._idle.pop(owner, None)
            self._waiting.pop(owner, None)

    def _victim(self, owner: Owner) -> K | None:
        """``owner``'s connection idle the longest between transactions, else inside one;
        never a busy one."""
        key = self._oldest(self._idle.get(owner))
        return self._oldest(self._waiting.get(owner)) if key is None else key

    def _oldest(self, queue: OrderedDict[K, None] | None) -> K | None:
        """The first connection of ``queue`` not busy."""
        if not queue:
            return None
        is_busy = self._is_busy
        if is_busy is None:
            return next(iter(queue))
        for key in queue:
            if not is_busy(key):
                return key
        return None


def resolve_users(entries: Iterable[str | int]) -> frozenset[Owner]:
    """The owners ``allowed_users`` names: uids as numbers or digit strings, user names
    looked up in the password database, ``"remote"`` for peers on other hosts. An unknown
    name is a :class:`ValueError` naming it."""
    owners: set[Owner] = set()
    for entry in entries:
        if isinstance(entry, int) or entry.isdigit():
            owners.add(int(entry))
        elif entry == REMOTE:
            owners.add(REMOTE)
        else:
            try:
                owners.add(pwd.getpwnam(entry).pw_uid)
            except KeyError:
                raise ValueError(f"no such user: {entry!r}") from None
    return frozenset(owners)
