# The admission policy: hypothesis properties of the rule, and the incremental table against it.
"""Properties of :mod:`srsd.admission.rule`, over random sequences of connects, requests and
closes by a few owners (hypothesis state machine), checked after every step:

* the incremental :class:`~srsd.admission.rule.Admission` decides exactly what the reference
  :func:`decide` (here) decides over the model's connections, both when busy
  connections are reported to it and when it asks ``is_busy``;
* never more than ``max_connections`` open, nor more than the cap for any one owner;
* a busy connection is never evicted; a disallowed owner is never admitted; an allowed
  owner is refused only when no connection could be evicted;
* the victim is the longest idle of its owner between transactions, else (none is) the
  longest idle inside one, and its owner holds the most (counting the newcomer) among the
  owners with a connection that could be evicted;

and the scenario the rule is for: a steady Postfix next to a user who floods.
"""

from __future__ import annotations

import os
import pwd
from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from srsd.admission.gatekeeper import Gatekeeper
from srsd.admission.owners import REMOTE, UNKNOWN_OWNER, Owner
from srsd.admission.rule import Admission, Disposition, Limits, Ruling, resolve_users
from srsd.config import settings as srsd_settings

EXAMPLES = int(os.environ.get("SRSD_STATEFUL_EXAMPLES", "300"))
MACHINE = settings(
    max_examples=EXAMPLES,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
OWNERS: list[Owner] = [0, 103, 65534, 1000, REMOTE, UNKNOWN_OWNER]
POSTFIX, FLOODER = 103, 65534


# -- the reference: the rule of srsd.admission.rule's docstring as a plain function -----------

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class HeldConnection:
    """One open connection as the reference rule (:func:`decide`) sees it."""

    owner: Owner
    last: float  # time of the connect or of the last request answered
    busy: bool = False  # a request is being answered
    in_transaction: bool = False  # between a transaction's start and its end


def _longest_idle(connections: Mapping[K, HeldConnection], owner: Owner) -> K | None:
    """``owner``'s connection idle the longest between transactions, else inside one, not
    busy; ties: the first in ``connections``."""
    best: K | None = None
    for key, conn in connections.items():
        if conn.owner != owner or conn.busy:
            continue
        if best is None or (conn.in_transaction, conn.last) < (
            connections[best].in_transaction,
            connections[best].last,
        ):
            best = key
    return best


def decide(connections: Mapping[K, HeldConnection], owner: Owner, limits: Limits) -> Ruling[K]:
    """The rule (module docstring) for a new connection of ``owner``, over every open
    connection, in the order they last became idle (which breaks ties in idle time)."""
    if limits.allowed and owner not in limits.allowed:
        return Ruling(Disposition.REFUSE_USER)
    held = Counter(conn.owner for conn in connections.values())
    if held[owner] >= limits.max_per_user:
        return _evicting(connections, _longest_idle(connections, owner))
    if len(connections) < limits.max_connections:
        return Ruling(Disposition.ADMIT)
    order = {key: index for index, key in enumerate(connections)}
    # The newcomer's owner competes too, evictable connection or not: ranked first on the
    # most held, then the newcomer's own, then a victim between transactions, then the
    # connection idle the longest.
    best: tuple[int, bool, bool, float, int] | None = None
    victim = None
    for candidate in {*held, owner}:
        key = _longest_idle(connections, candidate)
        if key is None and candidate != owner:
            continue
        count = held[candidate] + (candidate == owner)
        rank = (
            -count,
            candidate != owner,
            key is not None and connections[key].in_transaction,
            0.0 if key is None else connections[key].last,
            -1 if key is None else order[key],
        )
        if best is None or rank < best:
            best, victim = rank, key
    return _evicting(connections, victim)


def _evicting(connections: Mapping[K, HeldConnection], victim: K | None) -> Ruling[K]:
    if victim is None:
        return Ruling(Disposition.REFUSE_BUSY)
    conn = connections[victim]
    return Ruling(Disposition.EVICT, victim, conn.owner, conn.in_transaction)


class AdmissionMachine(RuleBasedStateMachine):
    """A model (an ordered dict of :class:`HeldConnection`, in the order connections last
    became idle) beside the incremental table, driven by the same steps."""

    def __init__(self) -> None:
        super().__init__()
        self.model: OrderedDict[int, HeldConnection] = OrderedDict()
        self.now = 0.0
        self.next_key = 0
        self.table: Admission[int]
        self.asking: Admission[int]  # told only about idle times; asks is_busy
        self.limits: Limits

    @initialize(
        max_connections=st.integers(1, 12),
        share=st.integers(1, 12),
        allowed=st.sets(st.sampled_from(OWNERS), max_size=3),
    )
    def setup(self, max_connections: int, share: int, allowed: set[Owner]) -> None:
        self.limits = Limits(max_connections, min(share, max_connections), frozenset(allowed))
        self.table = Admission(self.limits)
        self.asking = Admission(self.limits, lambda key: self.model[key].busy)

    @rule(owner=st.sampled_from(OWNERS), later=st.sampled_from([0.0, 0.5, 1.0]))
    def connect(self, owner: Owner, later: float) -> None:
        self.now += later
        key, self.next_key = self.next_key, self.next_key + 1
        expected = decide(self.model, owner, self.limits)
        held = Counter(c.owner for c in self.model.values())
        got = self.table.admit(key, owner, self.now)
        assert got == expected
        assert self.asking.admit(key, owner, self.now) == expected
        self.check_ruling(got, owner, held)
        if got.victim is not None:
            del self.model[got.victim]
        if got.admitted:
            self.model[key] = HeldConnection(owner, self.now)

    def check_ruling(self, got: Ruling[int], owner: Owner, held: Counter[Owner]) -> None:
        allowed = not self.limits.allowed or owner in self.limits.allowed
        assert (got.disposition is Disposition.REFUSE_USER) == (not allowed)
        idle = [k for k, c in self.model.items() if not c.busy]
        if got.disposition is Disposition.REFUSE_BUSY:  # nothing of owner's own could be evicted,
            # and no one else holds more than owner would
            assert not [k for k in idle if self.model[k].owner == owner]
            assert held[owner] >= self.limits.max_per_user or (
                len(self.model) >= self.limits.max_connections
                and all(held[self.model[k].owner] <= held[owner] + 1 for k in idle)
            )
        if got.disposition is Disposition.ADMIT:
            assert len(self.model) < self.limits.max_connections
            assert held[owner] < self.limits.max_per_user
        if got.victim is None:
            return
        victim = self.model[got.victim]
        assert not victim.busy
        own = [self.model[k] for k in idle if self.model[k].owner == victim.owner]
        if victim.in_transaction:  # only when none of its owner's is between transactions
            assert all(c.in_transaction for c in own)
        assert victim.last == min(c.last for c in own if c.in_transaction == victim.in_transaction)
        if victim.owner != owner:  # taken from someone else: the biggest holder
            assert held[owner] < self.limits.max_per_user
            count = held[victim.owner]
            assert count > held[owner] + 1
            assert all(
                held[self.model[k].owner] + (self.model[k].owner == owner) <= count for k in idle
            )

    @rule(pick=st.integers(0, 1000))
    def request(self, pick: int) -> None:
        idle = [k for k, c in self.model.items() if not c.busy]
        if idle:
            key = idle[pick % len(idle)]
            self.table.busy(key)
            old = self.model[key]
            self.model[key] = HeldConnection(old.owner, old.last, True, old.in_transaction)

    @rule(pick=st.integers(0, 1000), later=st.sampled_from([0.0, 0.5]))
    def transaction(self, pick: int, later: float) -> None:
        """A connection starts a transaction, or ends its own (a request: activity)."""
        if self.model:
            self.now += later
            key = list(self.model)[pick % len(self.model)]
            old = self.model[key]
            inside = not old.in_transaction
            self.table.transaction(key, inside, self.now)
            self.asking.transaction(key, inside, self.now)
            if old.busy:  # idle, and so ordered, once answered
                self.model[key] = HeldConnection(old.owner, old.last, True, inside)
            else:
                self.model[key] = HeldConnection(old.owner, self.now, False, inside)
                self.model.move_to_end(key)

    @rule(pick=st.integers(0, 1000), later=st.sampled_from([0.0, 0.5]))
    def answered(self, pick: int, later: float) -> None:
        busy = [k for k, c in self.model.items() if c.busy]
        if busy:
            self.now += later
            key = busy[pick % len(busy)]
            self.table.idle(key, self.now)
            self.asking.idle(key, self.now)
            old = self.model[key]
            self.model[key] = HeldConnection(old.owner, self.now, False, old.in_transaction)
            self.model.move_to_end(key)

    @rule(pick=st.integers(0, 1000))
    def close(self, pick: int) -> None:
        if self.model:
            key = list(self.model)[pick % len(self.model)]
            self.table.closed(key)
            self.table.closed(key)  # twice: nothing happens
            self.asking.closed(key)
            del self.model[key]

    @invariant()
    def counts_agree_and_hold_the_limits(self) -> None:
        if not hasattr(self, "table"):
            return
        held = Counter(c.owner for c in self.model.values())
        assert len(self.table) == len(self.asking) == len(self.model)
        assert len(self.model) <= self.limits.max_connections
        assert self.table.owners() == self.asking.owners() == dict(held)
        assert all(count <= self.limits.max_per_user for count in held.values())


TestAdmissionMachine = AdmissionMachine.TestCase
TestAdmissionMachine.settings = MACHINE


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["connect", "close-own", "request", "postfix"]),
            st.sampled_from([FLOODER, 1000]),
            st.integers(0, 1000),
        ),
        min_size=10,
        max_size=400,
    ),
    postfix_connections=st.integers(1, 10),
    max_connections=st.integers(4, 40),
)
def test_flooders_never_shut_postfix_out(
    steps: list[tuple[str, Owner, int]], postfix_connections: int, max_connections: int
) -> None:
    # Postfix keeps up to postfix_connections (fewer than a third of the limit) and looks
    # something up on one of them now and then; two other users connect, close and send
    # requests as they like, together filling srsd. With the default share, none of
    # Postfix's connections is ever evicted and every new one of Postfix's is admitted.
    # (A request is answered within the step, as in the server, where "busy" lasts while
    # one batch of requests is decided.)
    postfix_connections = max(1, min(postfix_connections, (max_connections - 1) // 3))
    limits = Limits(max_connections, Limits.default_per_user(max_connections))
    table: Admission[int] = Admission(limits)
    postfix: list[int] = []
    flooders: dict[Owner, list[int]] = {FLOODER: [], 1000: []}
    now = 0.0
    for step, (what, who, pick) in enumerate(steps):
        now += 0.01
        if len(postfix) < postfix_connections:
            ruling = table.admit(-step - 1, POSTFIX, now)
            assert ruling.admitted
            postfix.append(-step - 1)
        if what == "postfix":  # Postfix looks something up on one of its connections
            key = postfix[pick % len(postfix)]
            table.busy(key)
            table.idle(key, now)
        mine = flooders[who]
        if what == "connect":
            ruling = table.admit(step, who, now)
            assert ruling.victim not in postfix
            assert ruling.admitted
            mine.append(step)
            for held in flooders.values():
                if ruling.victim in held:
                    held.remove(ruling.victim)
        elif what == "close-own" and mine:
            table.closed(mine.pop(pick % len(mine)))
        elif what == "request" and mine:
            table.busy(mine[pick % len(mine)])
            table.idle(mine[pick % len(mine)], now)
        assert table.held(POSTFIX) == len(postfix)
        for owner, held in flooders.items():
            assert table.held(owner) == len(held) <= limits.max_per_user


def test_two_flooders_fill_srsd_and_postfix_still_gets_in() -> None:
    # Two users hold half each: srsd is full. Postfix's new connection evicts the longest
    # idle connection of one of them, never fails.
    limits = Limits(10, 5)
    table: Admission[str] = Admission(limits)
    for i in range(5):
        assert table.admit(f"a{i}", 1001, float(i)).disposition is Disposition.ADMIT
        assert table.admit(f"b{i}", 1002, float(i) + 0.5).disposition is Disposition.ADMIT
    ruling = table.admit("postfix", POSTFIX, 10.0)
    assert ruling == Ruling(Disposition.EVICT, "a0", 1001)
    # the flooder at its cap evicts its own, oldest first
    assert table.admit("b5", 1002, 11.0) == Ruling(Disposition.EVICT, "b0", 1002)
    # a flooder whose connections are all busy and at its cap is refused
    for key in ("b1", "b2", "b3", "b4", "b5"):
        table.busy(key)
    assert table.admit("b6", 1002, 12.0).disposition is Disposition.REFUSE_BUSY
    # Postfix holds 1, flooder 1001 holds 4: its connection is taken, not Postfix's
    assert table.admit("postfix-2", POSTFIX, 13.0) == Ruling(Disposition.EVICT, "a1", 1001)


def test_two_users_holding_their_shares_in_transactions_still_let_postfix_in() -> None:
    # Two users fill srsd with their shares, every connection inside a transaction (milter
    # sessions in messages that never end): Postfix's newcomer evicts the longest idle of
    # a biggest holder, inside a transaction, rather than being refused; of two holding as
    # many, the one with a connection between transactions gives way first.
    table: Admission[str] = Admission(Limits(10, 5))
    for i in range(5):
        table.admit(f"a{i}", 1001, float(i))
        table.admit(f"b{i}", 1002, float(i) + 0.5)
        table.transaction(f"a{i}", True, float(i))
        table.transaction(f"b{i}", True, float(i) + 0.5)
    table.busy("a0")  # being answered: never the victim
    assert table.admit("postfix", POSTFIX, 10.0) == Ruling(Disposition.EVICT, "b0", 1002, True)
    table.closed("postfix")
    table.admit("b5", 1002, 11.0)  # 1002 holds 5 again, b5 between transactions
    assert table.admit("postfix", POSTFIX, 12.0) == Ruling(Disposition.EVICT, "b5", 1002)
    table.closed("postfix")
    table.admit("b6", 1002, 13.0)
    table.transaction("b6", True, 13.0)
    table.transaction("a1", False, 14.0)  # 1001 now has one between transactions, newer
    assert table.admit("postfix", POSTFIX, 15.0) == Ruling(Disposition.EVICT, "a1", 1001)


def test_allowed_users_refuse_everyone_else() -> None:
    table: Admission[int] = Admission(Limits(10, 5, frozenset({0, POSTFIX})))
    assert table.admit(1, POSTFIX, 0.0).disposition is Disposition.ADMIT
    assert table.admit(2, 0, 0.0).disposition is Disposition.ADMIT
    for owner in (FLOODER, REMOTE, UNKNOWN_OWNER):
        assert table.admit(3, owner, 0.0).disposition is Disposition.REFUSE_USER
    assert len(table) == 2


def test_resolve_users() -> None:
    assert resolve_users(["root", "65534", 103, "remote"]) == {0, 65534, 103, REMOTE}
    assert resolve_users([]) == frozenset()
    with pytest.raises(ValueError, match="no such user: 'no-such-user-x'"):
        resolve_users(["no-such-user-x"])


def test_default_share_is_half() -> None:
    assert Limits.default_per_user(1000) == 500
    assert Limits.default_per_user(1) == 1


# -- the settings -------------------------------------------------------------------------------


def _load(tmp_path: Path, **kwargs: object) -> srsd_settings.Settings:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    secret.chmod(0o600)
    cli = {"domain": "forwarder.example", "secrets_file": str(secret), **kwargs.pop("cli", {})}
    return srsd_settings.load(cli, **kwargs)  # type: ignore[arg-type]


def test_admission_settings_defaults(tmp_path: Path) -> None:
    loaded = _load(tmp_path, environ={})
    assert (loaded.max_connections_per_user, loaded.allowed_users, loaded.request_timeout) == (
        0,
        (),
        10.0,
    )
    limits = Gatekeeper.limits(
        loaded.max_connections, loaded.max_connections_per_user, loaded.allowed_users
    )
    assert limits == Limits(1000, 500, frozenset())


def test_admission_settings_from_environment_and_flags(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        environ={
            "SRS_ALLOWED_USERS": "postfix, root 65534",
            "SRS_MAX_CONNECTIONS_PER_USER": "30",
            "SRS_REQUEST_TIMEOUT": "2.5",
        },
    )
    assert loaded.allowed_users == ("postfix", "root", "65534")
    limits = Gatekeeper.limits(
        loaded.max_connections, loaded.max_connections_per_user, loaded.allowed_users
    )
    assert limits == Limits(1000, 30, frozenset({0, 65534, pwd.getpwnam("postfix").pw_uid}))
    assert loaded.request_timeout == 2.5
    flagged = _load(
        tmp_path,
        environ={},
        cli={"allowed_users": "remote", "max_connections": "10", "max_connections_per_user": "50"},
    )
    limits = Gatekeeper.limits(
        flagged.max_connections, flagged.max_connections_per_user, flagged.allowed_users
    )
    assert limits == Limits(10, 10, frozenset({REMOTE}))  # a share above the total is the total


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SRS_ALLOWED_USERS", "postfix nosuchuser", "allowed_users: no such user: 'nosuchuser'"),
        ("SRS_REQUEST_TIMEOUT", "0", "request_timeout: must be more than 0"),
        ("SRS_MAX_CONNECTIONS_PER_USER", "-1", "max_connections_per_user: must be between 0"),
    ],
)
def test_bad_admission_settings(tmp_path: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(srsd_settings.ConfigError) as info:
        _load(tmp_path, environ={key: value})
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(f"(from environment {key})")
