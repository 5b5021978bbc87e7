# Golden vectors: srsd's codec and policy against every row postsrsd 1.10 and Mail::SRS agree on.
"""Each row of ``tests/data/srs-golden.jsonl`` runs with its own clock, secrets and
domain, the standard base64 alphabet and the other settings of the file (hash length 4,
minimum 4, separator ``=``, max age 21). Forward rows go through :meth:`Policy.forward`,
reverse rows through :meth:`Codec.reverse`.

srsd departs from the references on purpose in exactly the rows of :data:`DEVIATIONS`;
:func:`test_deviations_are_exactly_the_rows_that_differ` keeps that list honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from srsd.srs.codec import Alphabet, Codec, SRSError, day_stamp
from srsd.srs.policy import QUIET, Outcome, Policy
from tests import srsref
from tests.vectors import Row, load_golden

ROWS = load_golden()


@dataclass(frozen=True)
class Answer:
    """What a lookup answers: ``rewritten`` to ``value``, ``unchanged``, or ``refused``.

    ``why`` says why a refusal happened (an outcome or an exception class); it is shown in
    failure messages but not compared, since the golden file's error texts are the
    references' own and any error of ours counts as a match.
    """

    kind: str
    value: bytes | None = None
    why: str = ""

    def agrees_with(self, other: Answer) -> bool:
        return (self.kind, self.value) == (other.kind, other.value)


def expected_answer(row: Row) -> Answer:
    """The references' answer. An own-domain forward (output == input) is "not rewritten"."""
    if row.output is None:
        return Answer("refused", why=str(row.error))
    if row.op == "forward" and row.output == row.input:
        return Answer("unchanged")
    return Answer("rewritten", row.output)


def codec_for(row: Row) -> Codec:
    return Codec(row.secrets, row.domain, alphabet=Alphabet.BASE64)


def srsd_answer(row: Row) -> Answer:
    """srsd's answer to the row; an exception other than SRSError propagates (a failure)."""
    srs = codec_for(row)
    if row.op == "forward":
        decision = Policy(srs).forward(row.input, row.timestamp)
        if decision.outcome is Outcome.REWRITTEN:
            return Answer("rewritten", decision.value)
        assert decision.value is None, decision
        if decision.outcome is Outcome.LOCAL:
            return Answer("unchanged")
        return Answer("refused", why=decision.outcome.name)
    assert row.op == "reverse", row
    try:
        return Answer("rewritten", srs.reverse(row.input, row.timestamp))
    except SRSError as err:
        return Answer("refused", why=f"{type(err).__name__}: {err.reason}")


# Rows where srsd gives a different answer from postsrsd 1.10 and Mail::SRS on purpose.
DEVIATIONS: dict[tuple[str, bytes], tuple[str, Answer]] = {
    ("reverse", b"SRS0=m_le=IL=example.com=plusslash0@forwarder.test"): (
        "spec 'Notation': srsd accepts the base64url spelling of the hash on input (- for +, "
        "_ for /), as postsrsd >= 2.2.6 does; postsrsd 1.10 and Mail::SRS reject it "
        "(crafted-hash:urlsafe-variant)",
        Answer("rewritten", b"plusslash0@example.com"),
    ),
    ("forward", b"SRS1=WxYz=hop1.example=AbCd=XY=orig.example=user@hop2.example"): (
        "spec 'Forward' rule 3 and 'Where srsd deliberately differs': an SRS1 sender whose "
        "opaque part does not begin with a separator is malformed and not rewritten; the "
        "references emit SRS1=vfUI=hop1.example=AbCd=...",
        Answer("refused", why=Outcome.MALFORMED.name),
    ),
    ("forward", b"user\x7f@example.com"): (
        "issue 18, one answer for one input: every endpoint refuses an address holding a "
        "control character (DEL here) with the same reason; RFC 5321 allows none, the "
        "references rewrite it",
        Answer("refused", why=Outcome.BAD_ADDRESS.name),
    ),
    ("forward", b"user\x01@example.com"): (
        "issue 18, one answer for one input: an address holding a control character (U+0001) "
        "is refused by every endpoint; the references rewrite it",
        Answer("refused", why=Outcome.BAD_ADDRESS.name),
    ),
    ("forward", b"user@[192.0.2.1]"): (
        "README 'What srsd answers' (issue 11): an address literal's '[', ']' and ':' are not "
        "atext, so the SRS local part is quoted as a whole to stay an RFC 5321 mailbox; the "
        "references emit it unquoted",
        Answer("rewritten", b'"SRS0=5psQ=IL=[192.0.2.1]=user"@forwarder.test'),
    ),
    ("forward", b"user@[IPv6:2001:db8::1]"): (
        "README 'What srsd answers' (issue 11): as for user@[192.0.2.1]",
        Answer("rewritten", b'"SRS0=7djj=IL=[IPv6:2001:db8::1]=user"@forwarder.test'),
    ),
    ("reverse", b"SRS0=NsC8=IL==@forwarder.test"): (
        "README 'What srsd answers' (issue 11): an empty original local part decodes to '\"\"', "
        "keeping '\"\"@origin.example' a mailbox through the round trip; the references "
        "give '@'",
        Answer("rewritten", b'""@'),
    ),
}


def test_golden_file_is_complete_and_consistent() -> None:
    # A truncated or foreign file would make every other test here vacuous.
    assert len(ROWS) >= 200
    assert {row.op for row in ROWS} == {"forward", "reverse"}
    assert sum(row.output is None for row in ROWS) >= 40
    for row in ROWS:
        # The file's own day stamp, the reference's and srsd's agree (2024-01-01 is IL).
        assert row.srs_ts == srsref.stamp(row.timestamp) == day_stamp(row.timestamp), row.id
    categories = {row.category for row in ROWS}
    for wanted in ("plain", "idn", "own-domain", "srs0-foreign", "srs1-foreign", "weird"):
        assert wanted in categories


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_golden_row(row: Row) -> None:
    actual = srsd_answer(row)
    expected = expected_answer(row)
    deviation = DEVIATIONS.get((row.op, row.input))
    if deviation is None:
        assert actual.agrees_with(expected), f"srsd {actual} != references {expected}"
    else:
        reason, specified = deviation
        assert actual == specified, reason
        assert not actual.agrees_with(expected), f"no longer a deviation: {reason}"
    if row.op == "forward" and row.output is None:
        # The policy refuses before the codec; the codec on its own must raise SRSError too.
        with pytest.raises(SRSError):
            codec_for(row).forward(row.input, row.timestamp)


def test_deviations_are_exactly_the_rows_that_differ() -> None:
    differing = {
        (row.op, row.input)
        for row in ROWS
        if not srsd_answer(row).agrees_with(expected_answer(row))
    }
    assert differing == set(DEVIATIONS)
    # Each deviation names one row of the file, not several with different expectations.
    for key in DEVIATIONS:
        assert sum((row.op, row.input) == key for row in ROWS) == 1, key


def test_own_domain_rows_are_answered_local_not_rewritten() -> None:
    own = [row for row in ROWS if row.op == "forward" and row.output == row.input]
    assert len(own) >= 3
    for row in own:
        decision = Policy(codec_for(row)).forward(row.input, row.timestamp)
        assert decision.outcome is Outcome.LOCAL, row.id
        assert decision.outcome in QUIET


def test_reverse_of_every_golden_srs_output_round_trips() -> None:
    # Every SRS0 address the references minted from a plain sender decodes to that sender.
    forwards = {
        row.output: row.input
        for row in ROWS
        if row.op == "forward"
        and row.output is not None
        and row.output.startswith(b"SRS0")
        and row.secrets == (srsref.SECRET,)
    }
    assert len(forwards) >= 40
    srs = Codec([srsref.SECRET], srsref.DOMAIN)
    for minted, sender in forwards.items():
        assert srs.reverse(minted, srsref.NOW) == sender
