# Rewrite policy: which senders are rewritten, which recipients decoded, and every Outcome.
"""Unit tests for :mod:`srsd.srs.policy`: null senders, missing domains, the SRS domain,
exclusions (:class:`DomainSet`), addresses that are already ours, foreign SRS, and the
reverse outcomes. Expected SRS addresses come from the independent :mod:`tests.srsref`."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.srs.codec import Alphabet, Codec
from srsd.srs.policy import (
    NOT_SRS,
    QUIET,
    Decision,
    DomainSet,
    Outcome,
    Policy,
    is_domain_name,
)
from tests import srsref as ref
from tests.srsref import DAY, DOMAIN, NOW, SECRET

CODEC = Codec([SECRET], DOMAIN, alphabet=Alphabet.BASE64)
POLICY = Policy(CODEC, DomainSet(["excluded.example", ".sub.example", "MiXeD.Example"]))


def ours(user: bytes, host: bytes, when: float = NOW) -> bytes:
    return ref.srs0_local(SECRET, user, host, when) + b"@" + DOMAIN


def forward(sender: bytes, when: float = NOW) -> Decision:
    return POLICY.forward(sender, when)


def assert_refused(decision: Decision, outcome: Outcome) -> None:
    assert decision.outcome is outcome, decision
    assert decision.value is None
    assert decision.reason


# -- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", [b'""', b"", b"<>"])
def test_null_sender(sender: bytes) -> None:
    decision = forward(sender)
    assert_refused(decision, Outcome.NULL_SENDER)
    assert decision.outcome in QUIET


@pytest.mark.parametrize(
    "sender", [b"user", b"user@", b"@", b"SRS0=S3fv=IL=example.com=user", b"a@b@"]
)
def test_no_domain(sender: bytes) -> None:
    decision = forward(sender)
    assert_refused(decision, Outcome.NO_DOMAIN)
    assert decision.outcome in QUIET


@pytest.mark.parametrize(
    "sender",
    [
        b"user@forwarder.test",
        b"USER@FORWARDER.TEST",
        b"user@Forwarder.Test",
        b'"a b"@forwarder.test',
        ours(b"user", b"example.com"),  # our own SRS address at our domain
        b"SRS0=0000=IL=example.com=user@forwarder.test",  # even a forged one
        b"SRS1=WxYz=hop1.example=broken@forwarder.test",  # even a malformed one
    ],
)
def test_srs_domain_is_local(sender: bytes) -> None:
    decision = forward(sender)
    assert_refused(decision, Outcome.LOCAL)
    assert decision.outcome in QUIET


@pytest.mark.parametrize(
    "sender",
    [
        b"user@excluded.example",
        b"user@EXCLUDED.EXAMPLE",
        b"user@mixed.example",
        b"user@a.sub.example",
        b"user@A.B.Sub.Example",
        b"SRS0=AbCd=XY=orig.example=user@excluded.example",
    ],
)
def test_excluded_domains(sender: bytes) -> None:
    decision = forward(sender)
    assert_refused(decision, Outcome.EXCLUDED)
    assert decision.outcome not in QUIET


@pytest.mark.parametrize(
    "sender",
    [
        b"user@sub.excluded.example",  # "example.com" is that domain only
        b"user@sub.example",  # ".example.com" is subdomains only, not the apex
        b"user@xsub.example",
        b"user@excluded.example.org",
        b"user@notexcluded.example",
        b"user@forwarder.testing",
        b"user@notforwarder.test",
    ],
)
def test_not_excluded(sender: bytes) -> None:
    local, _, host = sender.rpartition(b"@")
    decision = forward(sender)
    assert decision.outcome is Outcome.REWRITTEN
    assert decision.value == ours(local, host)
    assert decision.outcome not in QUIET


def test_plain_sender_is_rewritten() -> None:
    decision = forward(b"User.Name+tag@Example.COM")
    assert decision == Decision(
        Outcome.REWRITTEN, ours(b"User.Name+tag", b"Example.COM"), "rewritten"
    )


def test_our_fresh_srs_address_at_a_foreign_domain_is_already_srs() -> None:
    for days in (0, 21):
        minted = ours(b"user", b"example.com", NOW - days * DAY)
        elsewhere = minted.replace(b"@" + DOMAIN, b"@other.example")
        assert_refused(forward(elsewhere), Outcome.ALREADY_SRS)
        assert_refused(forward(elsewhere.lower()), Outcome.ALREADY_SRS)
    srs1 = ref.srs1_local(SECRET, b"hop1.example", b"=AbCd=XY=o.example=u") + b"@other.example"
    assert_refused(forward(srs1), Outcome.ALREADY_SRS)
    quoted = CODEC.forward(b'"a b"@origin.example', NOW).replace(DOMAIN, b"other.example")
    assert_refused(forward(quoted), Outcome.ALREADY_SRS)


def test_our_expired_srs_address_is_wrapped_as_srs1() -> None:
    expired = ours(b"user", b"example.com", NOW - 22 * DAY).replace(DOMAIN, b"other.example")
    decision = forward(expired)
    assert decision.outcome is Outcome.REWRITTEN
    opaque = expired.rpartition(b"@")[0][4:]
    assert decision.value == ref.srs1_local(SECRET, b"other.example", opaque) + b"@" + DOMAIN


def test_foreign_srs0_is_wrapped_as_srs1() -> None:
    decision = forward(b"SRS0=AbCd=XY=orig.example=user@hop1.example")
    assert decision.outcome is Outcome.REWRITTEN
    assert decision.value == b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test"


def test_foreign_srs1_keeps_its_first_hop() -> None:
    decision = forward(b"SRS1=WxYz=hop1.example==AbCd=XY=orig.example=user@hop2.example")
    assert decision.outcome is Outcome.REWRITTEN
    assert decision.value == b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test"


@pytest.mark.parametrize(
    "sender",
    [
        b"SRS1=WxYz=hop1.example=AbCd=XY=orig.example=user@hop2.example",
        b"SRS1=@hop2.example",
        b"SRS1=WxYz@hop2.example",
        b"SRS1=WxYz=hop1.example@hop2.example",
        b'"SRS1=WxYz=hop1.example=a b"@hop2.example',
    ],
)
def test_malformed_srs1_sender(sender: bytes) -> None:
    decision = forward(sender)
    assert_refused(decision, Outcome.MALFORMED)
    assert decision.outcome not in QUIET


def test_own_domain_is_matched_case_insensitively_from_the_codec() -> None:
    policy = Policy(Codec([SECRET], b"Forwarder.TEST"))
    assert policy.forward(b"user@forwarder.test", NOW).outcome is Outcome.LOCAL
    assert policy.forward(b"user@FORWARDER.test", NOW).outcome is Outcome.LOCAL


def test_default_policy_excludes_nothing() -> None:
    policy = Policy(CODEC)
    assert len(policy.excluded) == 0
    assert policy.forward(b"user@excluded.example", NOW).outcome is Outcome.REWRITTEN


# -- reverse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "outcome"),
    [
        (b"bob@forwarder.test", Outcome.NOT_SRS),
        (b"", Outcome.NOT_SRS),
        (b"SRS0@forwarder.test", Outcome.NOT_SRS),
        (b"SRS0=S3fv=ILA=example.com=user@forwarder.test", Outcome.MALFORMED),
        (b"SRS1=WxYz=hop1.example@forwarder.test", Outcome.MALFORMED),
        (b"SRS0=0000=IL=example.com=user@forwarder.test", Outcome.BAD_HASH),
        (b"SRS0=S3=IL=example.com=user@forwarder.test", Outcome.BAD_HASH),
        (b"SRS0=Bc29=HV=example.com=user@forwarder.test", Outcome.EXPIRED),
    ],
)
def test_reverse_refusals(recipient: bytes, outcome: Outcome) -> None:
    decision = POLICY.reverse(recipient, NOW)
    assert_refused(decision, outcome)
    assert (decision.outcome in QUIET) == (outcome is Outcome.NOT_SRS)


@pytest.mark.parametrize(
    ("recipient", "original"),
    [
        (b"SRS0=S3fv=IL=example.com=user@forwarder.test", b"user@example.com"),
        (b"srs0=s3fv=il=example.com=user@forwarder.test", b"user@example.com"),
        (b"SRS0=S3fv=IL=example.com=user@excluded.example", b"user@example.com"),
        (
            b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test",
            b"SRS0=AbCd=XY=orig.example=user@hop1.example",
        ),
    ],
)
def test_reverse_rewritten(recipient: bytes, original: bytes) -> None:
    decision = POLICY.reverse(recipient, NOW)
    assert decision == Decision(Outcome.REWRITTEN, original, "rewritten")
    assert decision.outcome not in QUIET


@pytest.mark.parametrize(
    ("recipient", "plain"),
    [
        (b"bob@forwarder.test", True),
        (b"", True),
        (b"Sr@forwarder.test", True),
        (b"SRS0@forwarder.test", False),  # reverse says "not SRS", but only the codec can
        (b"srs0=S3fv=IL=example.com=user@forwarder.test", False),
        (b'"SRS0=S3fv=IL=example.com=user"@forwarder.test', False),  # quoted: may be
        (b"bob\x01@forwarder.test", False),  # a bad address, not "not SRS"
        (b"b" * 5000 + b"@forwarder.test", False),  # too long
    ],
)
def test_plainly_not_srs(recipient: bytes, plain: bool) -> None:
    assert POLICY.plainly_not_srs(recipient) is plain
    if plain:
        assert POLICY.reverse(recipient, NOW) is NOT_SRS


def test_round_trip_through_the_policy() -> None:
    for sender in (b"alice@origin.example", b'"a b"@origin.example', b"caf\xe9@ex.example"):
        minted = forward(sender).value
        assert minted is not None
        assert forward(minted).outcome is Outcome.LOCAL  # cleanup looks the result up again
        assert POLICY.reverse(minted, NOW + 21 * DAY).value == sender
        assert POLICY.reverse(minted, NOW + 22 * DAY).outcome is Outcome.EXPIRED


# -- quiet -----------------------------------------------------------------------------------


def test_quiet_exactly_for_routine_outcomes() -> None:
    routine = {Outcome.NULL_SENDER, Outcome.NO_DOMAIN, Outcome.LOCAL, Outcome.NOT_SRS}
    assert routine == QUIET


# -- DomainSet -------------------------------------------------------------------------------


def test_domain_set_matching() -> None:
    domains = DomainSet(["example.com", ".example.org", " Spaced.Example "])
    assert b"example.com" in domains
    assert b"EXAMPLE.COM" in domains
    assert b"sub.example.com" not in domains
    assert b"example.org" not in domains
    assert b"a.example.org" in domains
    assert b"a.b.EXAMPLE.ORG" in domains
    assert b"aexample.org" not in domains
    assert b".example.org" not in domains
    assert b"spaced.example" in domains
    assert b"example.com." not in domains
    assert b"" not in domains
    assert "example.com" not in domains  # only bytes are looked up
    assert len(domains) == 3
    assert domains.entries() == [".example.org", "example.com", "spaced.example"]


def test_domain_set_case_folding_is_ascii_only() -> None:
    domains = DomainSet(["example.com"])
    assert b"EXAMPLE.COM" in domains
    assert "\u212aexample.com".encode() not in domains  # Kelvin sign is not "k"


@pytest.mark.parametrize(
    "entry",
    [
        "",
        ".",
        "..example.com",
        "exa mple.com",
        "-bad.example",
        "bad-.example",
        "a..b",
        "example.com.",
        "\u00fcn\u00ef.example",
        "under_score.example",
        "a" * 64 + ".example",
        "*.example.com",
        "example.com/24",
    ],
)
def test_domain_set_rejects_invalid_names(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        DomainSet(["good.example", entry])


def test_is_domain_name() -> None:
    assert is_domain_name("example.com")
    assert is_domain_name("xn--nxasmq6b.example")
    assert is_domain_name("localhost")
    assert not is_domain_name("localhost", min_labels=2)
    assert is_domain_name("a" * 63 + ".example")
    assert not is_domain_name("a" * 64 + ".example")
    assert not is_domain_name(".".join(["a" * 63] * 4))  # 255 characters


# -- robustness ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.from_regex(rb"[sSrR01=+@.\"a-]{0,30}", fullmatch=True))
def test_policy_never_raises(data: bytes) -> None:
    for decision in (POLICY.forward(data, NOW), POLICY.reverse(data, NOW)):
        assert isinstance(decision.outcome, Outcome)
        assert (decision.value is not None) == (decision.outcome is Outcome.REWRITTEN)
        assert decision.reason
    # a caller skips the lookup of what plainly_not_srs() names: reverse must agree, always
    if POLICY.plainly_not_srs(data):
        assert POLICY.reverse(data, NOW) == NOT_SRS
