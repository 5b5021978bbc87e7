# Cross-checks srsd's codec byte for byte against Mail::SRS 0.31 (Perl), clock pinned by faketime.
"""srsd against a real peer: Debian's Mail::SRS::Guarded (issue 2).

A deterministic corpus of a few hundred senders (``tests.peers.sender_corpus``) is run
through Mail::SRS once per batch (``mailsrs.pl`` under libfaketime, date pinned) and
through srsd's :class:`~srsd.srs.codec.Codec` with the *standard* base64 alphabet at the same
instant. Required, for every sender not excluded below:

* Mail::SRS's SRS address and srsd's are the same bytes;
* Mail::SRS decodes srsd's address, and srsd decodes Mail::SRS's, to the original
  (:func:`tests.peers.expected_reverse`: SRS1 decodes to the previous hop's SRS0).

Exclusions (``tests.peers.deliberate_difference``) are exactly the inputs on which
``docs/srs-format.md`` ("Where srsd deliberately differs") says srsd behaves
differently: quoted local parts, ``@`` in the local part, malformed SRS1, no domain, and
senders in our own domain (a policy decision, not the codec's). They are not dropped:
:func:`test_deliberate_differences` asserts what each side does with them.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from srsd.srs.codec import Alphabet, Codec, SRSError
from srsd.srs.policy import DomainSet, Outcome, Policy
from tests.peers import (
    DAY,
    DOMAIN,
    PINNED,
    SECRETS,
    Answer,
    canonical_address,
    day_stamp,
    deliberate_difference,
    epoch,
    expected_reverse,
    is_quoted_string,
    run_mailsrs,
    sender_corpus,
    srs_tag,
    srsd_decoded,
)

pytestmark = pytest.mark.peer

NOW = epoch(PINNED)
#: Dates for the day-stamp comparison: the pinned day, both ends of the 21-day window,
#: one day too old, tomorrow, a 1024-day wrap, and one far away.
STAMP_DATES = {
    "2024-01-01 12:00:00": 0,
    "2024-01-01 00:00:01": 0,
    "2023-12-31 23:59:59": 1,
    "2023-12-11 12:00:00": 21,
    "2023-12-10 12:00:00": 22,
    "2024-01-02 00:00:00": -1,
    "2021-03-15 12:00:00": 1022,
    "2021-03-14 12:00:00": 1023,
    "2021-02-11 12:00:00": 1054,  # 1054 - 1024 = 30: too old after the wrap
    "2038-01-19 12:00:00": None,  # past 2^31 seconds
}
PROBE = b"user@example.com"


def codec(secrets: tuple[bytes, ...] = SECRETS) -> Codec:
    return Codec(secrets, DOMAIN, alphabet=Alphabet.BASE64)


def srsd_forward(sender: bytes, now: float = NOW) -> bytes | None:
    try:
        return codec().forward(sender, now)
    except SRSError:
        return None


def srsd_reverse(address: bytes, now: float = NOW) -> bytes | None:
    try:
        return codec().reverse(address, now)
    except SRSError:
        return None


def smashed(srs: bytes, sender: bytes) -> list[tuple[bytes, bytes]]:
    """``srs`` as minted, lower-cased and upper-cased, with the address each decodes to.

    Decoding keeps the case as written, except for the ``SRS0`` tag that an SRS1 decodes
    to: every implementation writes that tag itself, in upper case.
    """
    want = expected_reverse(sender)
    rebuilt_tag = srs_tag(sender[: sender.rfind(b"@")]) is not None
    out = []
    for variant, wanted in ((srs, want), (srs.lower(), want.lower()), (srs.upper(), want.upper())):
        out.append((variant, b"SRS0" + wanted[4:] if rebuilt_tag else wanted))
    return out


def report(problems: list[str], limit: int = 20) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems[:limit])


class CrossCheck:
    """One Mail::SRS batch over the whole corpus, and srsd's answers for the same input."""

    def __init__(self) -> None:
        corpus = sender_corpus()
        self.compared = [(c, s) for c, s in corpus if deliberate_difference(s) is None]
        self.excluded = [
            (deliberate_difference(s), s) for c, s in corpus if deliberate_difference(s) is not None
        ]
        self.ours = {s: srsd_forward(s) for _, s in self.compared}
        self.ours_excluded = {s: srsd_forward(s) for _, s in self.excluded}
        requests: list[tuple[str, bytes]] = []
        slots: dict[tuple[str, bytes], int] = {}

        def ask(op: str, arg: bytes) -> None:
            if (op, arg) not in slots:
                slots[op, arg] = len(requests)
                requests.append((op, arg))

        for _, s in self.compared + self.excluded:
            ask("F", s)
        for srs in [*self.ours.values(), *self.ours_excluded.values()]:
            if srs is not None:
                ask("R", srs)
                ask("R", srs.lower())  # mail systems smash case: both must cope
                ask("R", srs.upper())
        answers = run_mailsrs(requests, PINNED)
        self.answers = {key: answers[i] for key, i in slots.items()}

    def peer(self, op: str, arg: bytes) -> Answer:
        return self.answers[op, arg]


@pytest.fixture(scope="module")
def cross() -> CrossCheck:
    return CrossCheck()


def test_corpus_shape(cross: CrossCheck) -> None:
    """The corpus is a few hundred senders and covers every category."""
    categories = Counter(c for c, _ in cross.compared)
    assert len(cross.compared) >= 300, categories
    for needed in (
        "plain",
        "plus",
        "equals",
        "dots",
        "case",
        "utf8",
        "non-utf8",
        "srs0-foreign",
        "srs1-foreign",
        "stray-quotes",
        "controls",
    ):
        assert categories[needed] >= 3, (needed, categories)
    assert any(not s.isascii() and _invalid_utf8(s) for _, s in cross.compared)
    assert {c for c, _ in cross.excluded} == {
        "quoted",
        "at-in-local",
        "malformed-srs1",
        "empty-domain",
        "own-domain",
    }


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_forward_byte_identical(cross: CrossCheck) -> None:
    """Mail::SRS and srsd (standard alphabet) mint the same bytes for every sender."""
    problems = []
    for category, sender in cross.compared:
        ours, theirs = cross.ours[sender], cross.peer("F", sender)
        if ours is None or not theirs.ok or ours != theirs.value:
            problems.append(f"[{category}] {sender!r}: srsd {ours!r}, Mail::SRS {theirs}")
    assert not problems, report(problems)


def test_mailsrs_decodes_srsd(cross: CrossCheck) -> None:
    """Mail::SRS reverses srsd's addresses to the original, also when case is smashed."""
    problems = []
    for category, sender in cross.compared:
        srs = cross.ours[sender]
        assert srs is not None
        for variant, wanted in smashed(srs, sender):
            got = cross.peer("R", variant)
            if not got.ok or got.value != wanted:
                problems.append(f"[{category}] {variant!r}: Mail::SRS {got}, want {wanted!r}")
    assert not problems, report(problems)


def test_srsd_decodes_mailsrs(cross: CrossCheck) -> None:
    """srsd reverses Mail::SRS's addresses to the original, also when case is smashed."""
    problems = []
    for category, sender in cross.compared:
        theirs = cross.peer("F", sender)
        assert theirs.ok, (sender, theirs)
        for variant, wanted in smashed(theirs.value, sender):
            got = srsd_reverse(variant)
            wanted = srsd_decoded(wanted)  # noqa: PLW2901 - srsd's form of the same address
            if got != wanted:
                problems.append(f"[{category}] {variant!r}: srsd {got!r}, want {wanted!r}")
    assert not problems, report(problems)


def test_policy_agrees_with_codec(cross: CrossCheck) -> None:
    """Through the rewrite policy (what the server answers) the result is the same, but
    for a sender holding a control character (tab, DEL, ...): every srsd endpoint refuses
    it alike (issue 18), where Mail::SRS rewrites it."""
    policy = Policy(codec(), DomainSet(()))
    refused = 0
    for _, sender in cross.compared:
        decision = policy.forward(sender, NOW)
        if re.search(rb"[\x00-\x1f\x7f]", sender):  # written out here, not srsd's
            assert decision.outcome is Outcome.BAD_ADDRESS, (sender, decision)
            assert decision.reason == "Control character in address"
            refused += 1
            continue
        assert decision.outcome is Outcome.REWRITTEN, (sender, decision)
        assert decision.value == cross.ours[sender]
    assert refused >= 3


def test_deliberate_differences(cross: CrossCheck) -> None:
    """The excluded inputs behave as the spec says, on both sides (nothing is skipped)."""
    policy = Policy(codec(), DomainSet(()))
    seen: Counter[str] = Counter()
    for category, sender in cross.excluded:
        seen[category] += 1
        ours, theirs = cross.ours_excluded[sender], cross.peer("F", sender)
        if category == "quoted":
            # srsd unquotes, hashes the content and re-quotes the whole SRS local part;
            # Mail::SRS keeps the quotes inside (or refuses a quoted "@"). They differ,
            # and srsd's own round trip gives the address back.
            assert ours is not None, sender
            assert not theirs.ok or theirs.value != ours, (sender, ours, theirs)
            assert srsd_reverse(ours) == canonical_address(sender), (sender, ours)
            if theirs.ok:  # Mail::SRS's form carries the quotes in the middle
                assert b'="' in theirs.value, (sender, theirs)
                # ... and srsd decodes it to the quoted sender as it was given, "[", "]"
                # and ":" included ("a:b"@x, never "\"a:b\""@x).
                assert srsd_reverse(theirs.value) == sender, (sender, theirs)
        elif category == "at-in-local":
            # srsd splits at the last "@" and round-trips; Mail::SRS refuses the sender.
            assert not theirs.ok and b"may not contain an @" in theirs.value, (sender, theirs)
            assert ours is not None and srsd_reverse(ours) == sender, (sender, ours)
        elif category == "malformed-srs1":
            # srsd: clean "not rewritten"; Mail::SRS: garbage such as "SRS1=h==@D".
            assert ours is None, (sender, ours)
            assert policy.forward(sender, NOW).outcome is Outcome.MALFORMED
            assert theirs.ok, (sender, theirs)
        elif category == "empty-domain":
            # srsd's policy: "no domain", not rewritten; Mail::SRS refuses ("no @").
            assert policy.forward(sender, NOW).outcome is Outcome.NO_DOMAIN, sender
            assert not theirs.ok and b"contains no @" in theirs.value, (sender, theirs)
        elif category == "own-domain":
            # Both leave it alone: Mail::SRS returns it unchanged, srsd's policy says "local".
            assert policy.forward(sender, NOW).outcome is Outcome.LOCAL, sender
            assert theirs.ok and theirs.value == sender, (sender, theirs)
        else:
            raise AssertionError(f"unexplained exclusion {category}: {sender!r}")
    assert all(seen[c] >= 3 for c in seen), seen


def test_quoted_string_rule_is_independent() -> None:
    """The exclusion uses its own quoted-string rule; stray quotes are plain bytes."""
    assert is_quoted_string(b'"a b"') and is_quoted_string(b'"a\\"b"')
    assert not is_quoted_string(b'a"b') and not is_quoted_string(b'"a"b"')
    assert not is_quoted_string(b'"') and not is_quoted_string(b'"a\\"')


def test_day_stamps_and_age_window() -> None:
    """Day stamps agree on pinned dates; the 22-day window agrees in both directions."""
    fresh = codec()
    for when, age in STAMP_DATES.items():
        t = epoch(when)
        probe_srs = fresh.forward(PROBE, t)
        stamp, fwd, rev = run_mailsrs([("T", b""), ("F", PROBE), ("R", probe_srs)], when)
        assert stamp.ok and stamp.value == day_stamp(t), (when, stamp)
        assert fwd.ok and fwd.value == probe_srs, (when, fwd, probe_srs)
        assert probe_srs.split(b"=")[2] == day_stamp(t)
        assert rev.ok and rev.value == PROBE, (when, rev)
        # Minted on that date, decoded on the pinned date: good for 0..21 days only.
        if age is not None:
            valid = 0 <= age % 1024 <= 21
            assert (srsd_reverse(fwd.value) == PROBE) is valid, (when, age)
    assert day_stamp(epoch("2024-01-01 12:00:00")) == b"IL"

    # srsd mints k days before the pinned date, Mail::SRS decodes on the pinned date.
    ages = [-2, -1, 0, 1, 2, 20, 21, 22, 23, 30, 1023, 1024, 1025, 1045, 1046]
    minted = [fresh.forward(PROBE, NOW - k * DAY) for k in ages]
    answers = run_mailsrs([("R", srs) for srs in minted], PINNED)
    for k, srs, got in zip(ages, minted, answers, strict=True):
        valid = 0 <= k % 1024 <= 21
        assert got.ok is valid, (k, srs, got)
        assert (srsd_reverse(srs) is not None) is valid, (k, srs)


def test_key_rotation_both_ways() -> None:
    """Old secret still verifies on both sides; only the first secret signs."""
    old, new = SECRETS[1], SECRETS[0]
    senders = [
        b"user@example.com",
        b"Mixed.Case+tag@Example.ORG",
        b"SRS0=abcd=IL=ex.org=u@hop.example",
    ]
    only_old = [codec((old,)).forward(s, NOW) for s in senders]
    # Mail::SRS signing with the old secret only (as before the rotation).
    theirs_old = run_mailsrs([("F", s) for s in senders], PINNED, secrets=(old,))
    both = run_mailsrs([("R", a) for a in only_old], PINNED, secrets=(new, old))
    for sender, ours, theirs, rev in zip(senders, only_old, theirs_old, both, strict=True):
        assert theirs.ok and theirs.value == ours, (sender, ours, theirs)
        assert rev.ok and rev.value == expected_reverse(sender), (sender, rev)
        assert srsd_reverse(theirs.value) == expected_reverse(sender)
        assert codec((new,)).forward(sender, NOW) == srsd_forward(sender)
        assert srsd_forward(sender) != ours  # the new secret signs
