# SRS codec: SRS0/SRS1 forward and reverse, hashes, separators, ages, secrets, errors, properties.
"""Unit tests and hypothesis properties for :mod:`srsd.srs.codec` (spec: ``docs/srs-format.md``).

Expected addresses come from :mod:`tests.srsref`, an independent reference (hand-written
HMAC, base64 and base32), or are literal known answers from postsrsd and Mail::SRS.
The clock is always the ``now`` parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from srsd.srs.codec import (
    Alphabet,
    BadHash,
    Codec,
    Expired,
    Malformed,
    NotSRS,
    SRSError,
    day_stamp,
    may_be_srs,
    srs_tag,
)
from tests import srsref as ref
from tests.harness.work import CALL_LINES, call_bound, lines_run
from tests.srsref import DAY, DOMAIN, NOW, SECRET

SECRET2 = b"Vector-Secret-2"
SEPARATORS = (b"=", b"+", b"-")
START_OF_DAY = NOW - NOW % DAY


def make(*secrets: bytes, **kwargs: object) -> Codec:
    return Codec(list(secrets) or [SECRET], DOMAIN, **kwargs)  # type: ignore[arg-type]


STD = make(alphabet=Alphabet.BASE64)
URL = make()


def srs0(user: bytes, host: bytes, when: float = NOW, **kwargs: object) -> bytes:
    """The address the reference mints for ``user@host`` (standard alphabet by default)."""
    return ref.srs0_local(SECRET, user, host, when, **kwargs) + b"@" + DOMAIN  # type: ignore[arg-type]


def aged(days: int, user: bytes = b"user", host: bytes = b"example.com") -> bytes:
    """A correctly signed SRS0 address minted ``days`` days before NOW (negative: after)."""
    return srs0(user, host, NOW - days * DAY)


# -- the reference itself ------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"k", SECRET, b"x" * 64, b"y" * 65, b"z" * 300])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 20, 57, 64, 200])
def test_reference_hmac_and_base64_agree_with_the_standard_library(key: bytes, size: int) -> None:
    message = bytes(range(256))[:size]
    assert ref.hmac_sha1(key, message) == hmac.new(key, message, hashlib.sha1).digest()
    assert ref.b64(message) == base64.b64encode(message).rstrip(b"=")


def test_reference_reproduces_known_answers() -> None:
    # Known answers from the golden file and postsrsd's own test suite.
    assert srs0(b"user", b"example.com") == b"SRS0=S3fv=IL=example.com=user@forwarder.test"
    assert ref.stamp(1577836860) == b"2W"
    assert ref.srs_hash(b"tops3cr3t", b"2W", b"otherdomain.com", b"test") == b"vmyz"


# -- day stamp and tag -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "stamp"),
    [
        (0, b"AA"),
        (DAY - 1, b"AA"),
        (DAY, b"AB"),
        (31 * DAY, b"A7"),
        (32 * DAY, b"BA"),
        (1023 * DAY, b"77"),
        (1024 * DAY, b"AA"),  # wraps every 1024 days
        (1577836860, b"2W"),  # 2020-01-01, postsrsd's test suite
        (START_OF_DAY, b"IL"),  # 2024-01-01 00:00:00
        (START_OF_DAY + DAY - 1, b"IL"),  # 2024-01-01 23:59:59
        (START_OF_DAY + DAY, b"IM"),
        (1795392000, b"JM"),  # 2026-11-23
        (NOW + 0.999, b"IL"),  # float clocks
    ],
)
def test_day_stamp(now: float, stamp: bytes) -> None:
    assert day_stamp(now) == stamp


@settings(max_examples=300, deadline=None)
@given(now=st.floats(min_value=0, max_value=2**34, allow_nan=False))
def test_day_stamp_matches_reference(now: float) -> None:
    assert day_stamp(now) == ref.stamp(now)


@pytest.mark.parametrize(
    ("local", "tag"),
    [
        (b"SRS0=x", 0),
        (b"SRS1=x", 1),
        (b"srs0+", 0),
        (b"sRs1-x", 1),
        (b"SRS0", None),  # a bare tag without separator is not SRS (postsrsd bug not copied)
        (b"SRS1", None),
        (b"SRS0_x", None),
        (b"SRS2=x", None),
        (b"SRS=x", None),
        (b"SRSx=", None),
        (b"XSRS0=", None),
        (b" SRS0=x", None),
        (b"", None),
    ],
)
def test_srs_tag(local: bytes, tag: int | None) -> None:
    assert srs_tag(local) == tag


# -- SRS0 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "host"),
    [
        (b"user", b"example.com"),
        (b"User.Name+tag", b"Sub.Example.COM"),
        (b"a=b=c", b"example.com"),
        (b"caf\xe9", b"ex\xe4mple.com"),  # not UTF-8: bytes in, bytes out
        ("\u00fcn\u00ef".encode(), "m\u00fcnchen.de".encode()),
        (b"SRS0", b"example.com"),  # bare tag: an ordinary user
        (b"SRS0x", b"example.com"),
        (b"nul\x00byte", b"example.com"),
        (b"user", b""),  # an empty host is encoded as is (the policy refuses it earlier)
    ],
)
def test_forward_srs0_matches_reference(user: bytes, host: bytes) -> None:
    assert STD.forward(user + b"@" + host, NOW) == srs0(user, host)
    assert URL.forward(user + b"@" + host, NOW) == srs0(user, host, url=True)
    assert STD.reverse(srs0(user, host), NOW) == user + b"@" + host


def test_forward_keeps_case_and_hashes_lower_case() -> None:
    minted = STD.forward(b"User.Name@Example.COM", NOW)
    assert minted == b"SRS0=yzZD=IL=Example.COM=User.Name@forwarder.test"
    assert minted.split(b"=")[1] == STD.forward(b"user.name@example.com", NOW).split(b"=")[1]
    # Only ASCII is folded: a non-ASCII capital gives a different hash.
    upper = STD.forward("\u00dcser@example.com".encode(), NOW)
    lower = STD.forward("\u00fcser@example.com".encode(), NOW)
    assert upper.split(b"=")[1] != lower.split(b"=")[1]


def test_forward_splits_at_the_last_at_sign() -> None:
    assert STD.forward(b"a@b@example.com", NOW) == srs0(b"a@b", b"example.com")
    assert STD.reverse(srs0(b"a@b", b"example.com"), NOW) == b"a@b@example.com"


def test_forward_without_at_sign_is_malformed() -> None:
    with pytest.raises(Malformed):
        STD.forward(b"nodomain", NOW)


def test_srs0_user_may_contain_equals() -> None:
    assert STD.reverse(b"SRS0=LKPL=IL=example.com=a=b=c@forwarder.test", NOW) == (
        b"a=b=c@example.com"
    )


# -- SRS1 ------------------------------------------------------------------------------------


def test_foreign_srs0_becomes_srs1_with_double_separator() -> None:
    minted = STD.forward(b"SRS0=AbCd=XY=orig.example=user@hop1.example", NOW)
    assert minted == b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test"
    assert minted == ref.srs1_local(SECRET, b"hop1.example", b"=AbCd=XY=orig.example=user") + (
        b"@" + DOMAIN
    )
    # The foreign hash and stamp are neither checked nor touched; SRS1 has no stamp of ours.
    assert STD.reverse(minted, NOW + 1000 * DAY) == b"SRS0=AbCd=XY=orig.example=user@hop1.example"


def test_foreign_srs0_keeps_its_own_separator() -> None:
    minted = STD.forward(b"SRS0+AbCd=XY=orig.example=user@hop1.example", NOW)
    assert minted == b"SRS1=OFBm=hop1.example=+AbCd=XY=orig.example=user@forwarder.test"
    assert STD.reverse(minted, NOW) == b"SRS0+AbCd=XY=orig.example=user@hop1.example"


def test_foreign_srs0_tag_case_is_normalised_on_the_way_back() -> None:
    minted = STD.forward(b"srs0=abcd=xy=orig.example=user@hop1.example", NOW)
    assert minted == b"SRS1=hWY1=hop1.example==abcd=xy=orig.example=user@forwarder.test"
    assert STD.reverse(minted, NOW) == b"SRS0=abcd=xy=orig.example=user@hop1.example"


def test_foreign_srs1_keeps_first_hop_and_gets_our_hash() -> None:
    for old_hash, hop2 in [(b"WxYz", b"hop2.example"), (b"0000", b"other.example")]:
        sender = b"SRS1=" + old_hash + b"=hop1.example==AbCd=XY=orig.example=user@" + hop2
        minted = STD.forward(sender, NOW)
        # Same as wrapping hop1's SRS0 directly: bounces go straight to the first hop.
        assert minted == b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test"
        assert STD.reverse(minted, NOW) == b"SRS0=AbCd=XY=orig.example=user@hop1.example"


def test_three_hop_chain_bounces_to_the_first_hop() -> None:
    hop1 = Codec([b"Hop1-Secret"], b"hop1.example", alphabet=Alphabet.BASE64)
    hop2 = Codec([b"Hop2-Secret"], b"hop2.example", alphabet=Alphabet.BASE64)
    hop3 = Codec([b"Hop3-Secret"], b"hop3.example", alphabet=Alphabet.BASE64)
    at1 = hop1.forward(b"alice@origin.example", NOW)
    assert at1 == b"SRS0=gMgj=IL=origin.example=alice@hop1.example"  # golden chain row
    at2 = hop2.forward(at1, NOW)
    assert at2 == b"SRS1=A45a=hop1.example==gMgj=IL=origin.example=alice@hop2.example"
    at3 = hop3.forward(at2, NOW)
    assert at3 == ref.srs1_local(
        b"Hop3-Secret", b"hop1.example", b"=gMgj=IL=origin.example=alice"
    ) + (b"@hop3.example")
    assert hop3.reverse(at3, NOW) == at1
    assert hop1.reverse(at1, NOW) == b"alice@origin.example"
    with pytest.raises(BadHash):  # hop2's secret does not sign hop3's address
        hop2.reverse(at3, NOW)


@pytest.mark.parametrize(
    "sender",
    [
        b"SRS1=@hop2.example",  # no hash
        b"SRS1=WxYz@hop2.example",  # no host
        b"SRS1=WxYz=@hop2.example",  # empty host, no user
        b"SRS1=WxYz==AbCd=XY=orig.example=user@hop2.example",  # empty first hop
        b"SRS1=WxYz=hop1.example@hop2.example",  # no opaque part
        b"SRS1=WxYz=hop1.example=@hop2.example",  # empty opaque part
        b"SRS1=WxYz=hop1.example=AbCd=XY=orig.example=user@hop2.example",  # no leading separator
        b'"SRS1=WxYz=hop1.example=a b"@hop2.example',  # quoted, no leading separator
    ],
)
def test_malformed_srs1_sender_is_not_rewritten(sender: bytes) -> None:
    with pytest.raises(Malformed) as info:
        STD.forward(sender, NOW)
    assert info.value.reason


# -- hash length, minimum, field size --------------------------------------------------------


@pytest.mark.parametrize("length", range(1, 21))
def test_hash_length(length: int) -> None:
    srs = make(hash_length=length, hash_min=length, alphabet=Alphabet.BASE64)
    minted = srs.forward(b"user@example.com", NOW)
    srs_hash = minted.split(b"=")[1]
    assert len(srs_hash) == length
    assert minted == srs0(b"user", b"example.com", length=length)
    assert srs.reverse(minted, NOW) == b"user@example.com"

    def address(presented: bytes) -> bytes:
        return b"SRS0=" + presented + b"=IL=example.com=user@" + DOMAIN

    if length > 1:
        with pytest.raises(BadHash):
            srs.reverse(address(srs_hash[:-1]), NOW)
    # Characters after hash_length are not compared (postsrsd truncates the same way).
    assert srs.reverse(address(srs_hash + b"!"), NOW) == b"user@example.com"


def test_hash_min_allows_shorter_prefixes_down_to_the_minimum() -> None:
    srs = make(hash_length=8, hash_min=5, alphabet=Alphabet.BASE64)
    full = ref.srs_hash(SECRET, b"IL", b"example.com", b"user", length=27)

    def address(srs_hash: bytes) -> bytes:
        return b"SRS0=" + srs_hash + b"=IL=example.com=user@" + DOMAIN

    assert srs.forward(b"user@example.com", NOW) == address(full[:8])
    for n in range(5, 28):  # 5..8 compared in full; beyond 8 only the first 8 count
        assert srs.reverse(address(full[:n]), NOW) == b"user@example.com", n
    with pytest.raises(BadHash):
        srs.reverse(address(full[:4]), NOW)
    wrong5 = full[:4] + (b"A" if full[4:5] != b"A" else b"B")
    with pytest.raises(BadHash):
        srs.reverse(address(wrong5), NOW)
    # The default codec (length 4, minimum 4) rejects every shorter prefix.
    for n in range(1, 4):
        with pytest.raises(BadHash):
            STD.reverse(address(full[:n]), NOW)


def test_hash_field_longer_than_27_characters_is_rejected() -> None:
    full = ref.srs_hash(SECRET, b"IL", b"example.com", b"user", length=27)
    assert len(full) == 27
    assert STD.reverse(b"SRS0=" + full + b"=IL=example.com=user@x", NOW) == b"user@example.com"
    with pytest.raises(Malformed):
        STD.reverse(b"SRS0=" + full + b"A=IL=example.com=user@x", NOW)
    with pytest.raises(Malformed):
        STD.reverse(b"SRS0=" + full * 100 + b"=IL=example.com=user@x", NOW)
    srs1 = ref.srs1_local(SECRET, b"hop1.example", b"=x", length=27)
    assert STD.reverse(srs1 + b"@x", NOW) == b"SRS0=x@hop1.example"
    with pytest.raises(Malformed):
        STD.reverse(srs1.replace(b"=hop1", b"A=hop1", 1) + b"@x", NOW)


# -- separators ------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", SEPARATORS)
def test_separator_on_output(sep: bytes) -> None:
    srs = make(separator=sep, alphabet=Alphabet.BASE64)
    assert srs.forward(b"user@example.com", NOW) == srs0(b"user", b"example.com", sep=sep)
    assert (
        srs.forward(b"SRS0=AbCd=XY=o.example=u@hop1.example", NOW)
        == (b"SRS1" + sep + ref.srs_hash(SECRET, b"hop1.example", b"=AbCd=XY=o.example=u"))
        + b"=hop1.example==AbCd=XY=o.example=u@"
        + DOMAIN
    )
    assert (
        srs.forward(b"SRS1-WxYz=hop1.example=+AbCd=XY=o.example=u@hop2.example", NOW)
        == (b"SRS1" + sep + ref.srs_hash(SECRET, b"hop1.example", b"+AbCd=XY=o.example=u"))
        + b"=hop1.example=+AbCd=XY=o.example=u@"
        + DOMAIN
    )


@pytest.mark.parametrize("configured", SEPARATORS)
@pytest.mark.parametrize("presented", SEPARATORS)
def test_every_separator_is_accepted_on_input(configured: bytes, presented: bytes) -> None:
    srs = make(separator=configured)
    assert srs.reverse(srs0(b"user", b"example.com", sep=presented), NOW) == b"user@example.com"
    srs1 = ref.srs1_local(SECRET, b"hop1.example", b"=AbCd=XY=o.example=u", sep=presented)
    assert srs.reverse(srs1 + b"@x", NOW) == b"SRS0=AbCd=XY=o.example=u@hop1.example"


def test_other_separators_after_the_tag_are_not_srs() -> None:
    for sep in (b"_", b".", b" ", b"/", b"0"):
        with pytest.raises(NotSRS):
            STD.reverse(b"SRS0" + sep + b"S3fv=IL=example.com=user@forwarder.test", NOW)
    with pytest.raises(Malformed):  # inner separators must be "="
        STD.reverse(b"SRS0=S3fv+IL+example.com+user@forwarder.test", NOW)


# -- age -------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", [*range(22), 1024, 1025, 1024 + 21])
def test_ages_within_max_age_pass(days: int) -> None:
    assert STD.reverse(aged(days), NOW) == b"user@example.com"


@pytest.mark.parametrize(
    "days", [22, 23, 30, 100, 511, 512, 1000, 1002, 1023, 1024 + 22, -1, -2, -10, -500, -1002]
)
def test_old_and_future_stamps_expire(days: int) -> None:
    with pytest.raises(Expired) as info:
        STD.reverse(aged(days), NOW)
    assert info.value.reason


def test_age_counts_calendar_days_not_seconds() -> None:
    minted_late = srs0(b"user", b"example.com", START_OF_DAY + DAY - 1)  # 23:59:59
    assert STD.reverse(minted_late, START_OF_DAY + 22 * DAY - 1) == b"user@example.com"
    with pytest.raises(Expired):
        STD.reverse(minted_late, START_OF_DAY + 22 * DAY)  # 22 days later, 00:00:00
    minted_early = srs0(b"user", b"example.com", START_OF_DAY)  # 00:00:00
    assert STD.reverse(minted_early, START_OF_DAY + 22 * DAY - 1) == b"user@example.com"


def test_max_age_is_configurable() -> None:
    zero = make(max_age=0)
    assert zero.reverse(aged(0), NOW) == b"user@example.com"
    with pytest.raises(Expired):
        zero.reverse(aged(1), NOW)
    hundred = make(max_age=100)
    assert hundred.reverse(aged(100), NOW) == b"user@example.com"
    with pytest.raises(Expired):
        hundred.reverse(aged(101), NOW)
    with pytest.raises(Expired):
        hundred.reverse(aged(-1), NOW)


def test_stamp_is_read_case_insensitively() -> None:
    minted = aged(3)
    stamp = minted.split(b"=")[2]
    assert stamp.isupper()
    lowered = minted.replace(b"=" + stamp + b"=", b"=" + stamp.lower() + b"=", 1)
    assert lowered != minted
    assert STD.reverse(lowered, NOW) == b"user@example.com"


# -- timestamp form, checked before the hash (CVE-2020-35573) -------------------------------


def signed_with_stamp(stamp: bytes, srs_hash: bytes | None = None) -> bytes:
    """An SRS0 address whose hash is a correct HMAC over ``stamp`` (however malformed)."""
    if srs_hash is None:
        srs_hash = ref.srs_hash(SECRET, stamp, b"example.com", b"user")
    return b"SRS0=" + srs_hash + b"=" + stamp + b"=example.com=user@" + DOMAIN


@pytest.mark.parametrize(
    "stamp",
    [b"", b"I", b"ILA", b"ILAA", b"IL ", b"!!", b"I0", b"I1", b"I8", b"I9", b"I=", b"\xffL"],
)
def test_stamp_must_be_two_base32_characters_even_with_a_correct_hmac(stamp: bytes) -> None:
    with pytest.raises(Malformed):
        STD.reverse(signed_with_stamp(stamp), NOW)


def test_stamp_form_is_checked_before_the_hash() -> None:
    # A one-character hash would be "too short" (BadHash) if the hash were looked at first.
    with pytest.raises(Malformed):
        STD.reverse(signed_with_stamp(b"ILA", srs_hash=b"x"), NOW)
    with pytest.raises(BadHash):
        STD.reverse(signed_with_stamp(b"IL", srs_hash=b"x"), NOW)


def test_long_stamp_with_a_correct_hmac_is_rejected_fast() -> None:
    # pysrs and Mail::SRS loop 32**n/1024 times on such a stamp; srsd does the same work
    # whatever its length.
    work = set()
    for length in (3, 7, 12, 64, 4096):
        address = signed_with_stamp(b"A" * length)
        lines, outcome = lines_run(lambda address=address: STD.reverse(address, NOW))
        assert isinstance(outcome, Malformed), outcome
        work.add(lines)
    assert len(work) == 1 and max(work) < CALL_LINES, work  # the same, whatever the length


# -- secrets ---------------------------------------------------------------------------------


def test_first_secret_signs_every_secret_verifies() -> None:
    both = make(SECRET, SECRET2, alphabet=Alphabet.BASE64)
    assert both.forward(b"user@example.com", NOW) == b"SRS0=S3fv=IL=example.com=user@forwarder.test"
    by_second = b"SRS0=6wS8=IL=example.com=user@forwarder.test"  # golden, signed with SECRET2
    assert by_second == ref.srs0_local(SECRET2, b"user", b"example.com") + b"@" + DOMAIN
    assert both.reverse(by_second, NOW) == b"user@example.com"
    assert make(SECRET2, SECRET).reverse(by_second, NOW) == b"user@example.com"
    with pytest.raises(BadHash):
        STD.reverse(by_second, NOW)
    srs1 = ref.srs1_local(SECRET2, b"hop1.example", b"=x") + b"@" + DOMAIN
    assert both.reverse(srs1, NOW) == b"SRS0=x@hop1.example"
    with pytest.raises(BadHash):
        STD.reverse(srs1, NOW)


def test_key_rotation_scenario() -> None:
    old, new = b"old-secret", b"new-secret"
    before = Codec([old], DOMAIN)
    minted_before = before.forward(b"user@example.com", NOW)
    # Day 1: the new secret goes on top, the old one stays below to verify.
    during = Codec([new, old], DOMAIN)
    assert during.reverse(minted_before, NOW + DAY) == b"user@example.com"
    minted_during = during.forward(b"user@example.com", NOW + DAY)
    assert minted_during == ref.srs0_local(new, b"user", b"example.com", NOW + DAY, url=True) + (
        b"@" + DOMAIN
    )
    # Day 30: the old secret is gone; its addresses no longer verify, the new ones do.
    after = Codec([new], DOMAIN)
    assert after.reverse(minted_during, NOW + 15 * DAY) == b"user@example.com"
    with pytest.raises(BadHash):
        after.reverse(minted_before, NOW + 15 * DAY)


def test_secret_is_used_byte_for_byte() -> None:
    assert make(b"L" * 100, alphabet=Alphabet.BASE64).forward(b"user@example.com", NOW) == (
        b"SRS0=qzSP=IL=example.com=user@forwarder.test"  # golden: key longer than 64 bytes
    )
    for variant in (SECRET + b" ", SECRET + b"\n", SECRET.lower()):
        assert make(variant, alphabet=Alphabet.BASE64).forward(b"user@example.com", NOW) == (
            ref.srs0_local(variant, b"user", b"example.com") + b"@" + DOMAIN
        )
        with pytest.raises(BadHash):
            make(variant).reverse(b"SRS0=S3fv=IL=example.com=user@forwarder.test", NOW)


# -- alphabets -------------------------------------------------------------------------------


def test_base64url_is_the_default_output() -> None:
    assert Codec([SECRET], DOMAIN).alphabet is Alphabet.BASE64URL
    assert URL.forward(b"plusslash0@example.com", NOW) == (
        b"SRS0=m_le=IL=example.com=plusslash0@forwarder.test"
    )
    assert URL.forward(b"user@example.co.uk", NOW) == (
        b"SRS0=x40-=IL=example.co.uk=user@forwarder.test"
    )


def test_base64_output_when_configured() -> None:
    assert STD.forward(b"plusslash0@example.com", NOW) == (
        b"SRS0=m/le=IL=example.com=plusslash0@forwarder.test"
    )
    assert (
        STD.forward(b"user@example.co.uk", NOW) == b"SRS0=x40+=IL=example.co.uk=user@forwarder.test"
    )


@pytest.mark.parametrize("srs", [STD, URL], ids=["base64", "base64url"])
@pytest.mark.parametrize("srs_hash", [b"m/le", b"m_le", b"M/LE", b"M_LE"])
def test_both_spellings_are_accepted_on_input(srs: Codec, srs_hash: bytes) -> None:
    address = b"SRS0=" + srs_hash + b"=IL=example.com=plusslash0@forwarder.test"
    assert srs.reverse(address, NOW) == b"plusslash0@example.com"


@pytest.mark.parametrize("srs_hash", [b"m+le", b"m-le", b"mle/", b"m.le", b"m le"])
def test_only_the_base64url_equivalences_are_accepted(srs_hash: bytes) -> None:
    with pytest.raises(BadHash):
        STD.reverse(b"SRS0=" + srs_hash + b"=IL=example.com=plusslash0@forwarder.test", NOW)


# -- case ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "original"),
    [
        (b"srs0=yzzd=il=example.com=user.name@forwarder.test", b"user.name@example.com"),
        (b"SRS0=YZZD=IL=EXAMPLE.COM=USER.NAME@FORWARDER.TEST", b"USER.NAME@EXAMPLE.COM"),
        (b"SRS0=yZzd=IL=example.com=User.Name@forwarder.test", b"User.Name@example.com"),
        (b"sRs0=yzZD=iL=Example.Com=user.NAME@x", b"user.NAME@Example.Com"),
        (
            b"srs1=hwy1=hop1.example==abcd=xy=orig.example=user@forwarder.test",
            b"SRS0=abcd=xy=orig.example=user@hop1.example",
        ),
        (
            b"SRS1=HWY1=HOP1.EXAMPLE==ABCD=XY=ORIG.EXAMPLE=USER@FORWARDER.TEST",
            b"SRS0=ABCD=XY=ORIG.EXAMPLE=USER@HOP1.EXAMPLE",
        ),
    ],
)
def test_reverse_is_case_insensitive(address: bytes, original: bytes) -> None:
    assert STD.reverse(address, NOW) == original
    assert URL.reverse(address, NOW) == original


# -- domain part -----------------------------------------------------------------------------


def test_domain_part_is_ignored_but_required() -> None:
    local = b"SRS0=S3fv=IL=example.com=user"
    for domain in (b"forwarder.test", b"elsewhere.example", b"forwarder.test "):
        assert STD.reverse(local + b"@" + domain, NOW) == b"user@example.com"
    # postsrsd reverses both; srsd wants an address, and is the same for both forms
    for no_domain in (local, local + b"@"):
        with pytest.raises(Malformed, match=r"No domain in SRS address\."):
            STD.reverse(no_domain, NOW)
    with pytest.raises(NotSRS):
        STD.reverse(b"nodomain", NOW)


# -- errors ----------------------------------------------------------------------------------


ERROR_CASES = [
    (b"", NotSRS),
    (b"user@example.com", NotSRS),
    (b"SRS0@example.com", NotSRS),
    (b"srs@example.com", NotSRS),
    (b"SRS2=abc@example.com", NotSRS),
    (b"SRS0x=y@example.com", NotSRS),
    (b"SRS0_S3fv=IL=example.com=user@forwarder.test", NotSRS),
    (b'"a b"@example.com', NotSRS),
    (b"SRS0=@hop1.example", Malformed),
    (b"SRS0==@hop1.example", Malformed),
    (b"SRS0=S3fv@forwarder.test", Malformed),
    (b"SRS0=S3fv=IL@forwarder.test", Malformed),
    (b"SRS0=AbCd=XY=orig.example@hop1.example", Malformed),
    (b"SRS0=9ekc==example.com=user@forwarder.test", Malformed),
    (b"SRS0=p2eU=!!=example.com=user@forwarder.test", Malformed),
    (b"SRS0=ZZZZ=99=orig.example=user@hop1.example", Malformed),
    (b"SRS0=x=y=z=w@forwarder.test", Malformed),
    (b"SRS0=S3fv=IL=example.com=user", Malformed),
    (b"SRS1=@hop2.example", Malformed),
    (b"SRS1=WxYz@hop2.example", Malformed),
    (b"SRS1=SGQA=hop1.example@forwarder.test", Malformed),
    (b"SRS1=WxYz=hop1.example=AbCd=XY=orig.example=user@hop2.example", Malformed),
    (b"SRS0=0000=IL=example.com=user@forwarder.test", BadHash),
    (b"SRS0=S3=IL=example.com=user@forwarder.test", BadHash),
    (b"SRS0==IL=example.com=user@forwarder.test", BadHash),
    (b"SRS0=dzMM=IL==user@forwarder.test", BadHash),
    (b"SRS0=S3fv=IL=example.com=User2@forwarder.test", BadHash),
    (b"SRS1=hop1.example==AbCd=XY=orig.example=user@forwarder.test", Malformed),  # hashless
    (b"SRS1=0000=hop1.example==AbCd=XY=orig.example=user@forwarder.test", BadHash),
    (b"SRS0=Bc29=HV=example.com=user@forwarder.test", Expired),
    (b"SRS0=rwI2=IM=example.com=user@forwarder.test", Expired),
]


@pytest.mark.parametrize(
    ("address", "error"), ERROR_CASES, ids=[a.decode() for a, _ in ERROR_CASES]
)
def test_specific_error_classes(address: bytes, error: type[SRSError]) -> None:
    with pytest.raises(SRSError) as info:
        STD.reverse(address, NOW)
    assert type(info.value) is error
    assert isinstance(info.value.reason, str)
    assert info.value.reason.strip()
    assert str(info.value) == info.value.reason


def test_error_classes_form_one_hierarchy() -> None:
    for error in (NotSRS, Malformed, BadHash, Expired):
        assert issubclass(error, SRSError)
        assert issubclass(error, Exception)
        assert error("why").reason == "why"
    assert len({NotSRS, Malformed, BadHash, Expired}) == 4


@pytest.mark.parametrize(
    ("secrets", "kwargs"),
    [
        ([], {}),
        ([b""], {}),
        ([SECRET, b""], {}),
        ([SECRET], {"hash_length": 0}),
        ([SECRET], {"hash_length": 21}),
        ([SECRET], {"hash_length": -1}),
        ([SECRET], {"hash_min": 0}),
        ([SECRET], {"hash_min": 5}),  # above the default hash_length of 4
        ([SECRET], {"hash_length": 8, "hash_min": 9}),
        ([SECRET], {"separator": b"_"}),
        ([SECRET], {"separator": b""}),
        ([SECRET], {"separator": b"=="}),
        ([SECRET], {"separator": b"=+"}),
        ([SECRET], {"max_age": -1}),
        ([SECRET], {"max_age": 512}),
        ([SECRET], {"max_age": 1024}),
    ],
)
def test_constructor_rejects_bad_parameters(
    secrets: list[bytes], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        Codec(secrets, DOMAIN, **kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_empty_domain() -> None:
    with pytest.raises(ValueError):
        Codec([SECRET], b"")


def test_constructor_accepts_the_extremes() -> None:
    for kwargs in (
        {"hash_length": 1, "hash_min": 1},
        {"hash_length": 20, "hash_min": 20},
        {"max_age": 0},
        {"max_age": 511},
    ):
        Codec([SECRET], DOMAIN, **kwargs)  # type: ignore[arg-type]


# -- postsrsd's upstream vectors (research/postsrsd.md §1.7) ---------------------------------

UPSTREAM_NOW = 1577836860  # 2020-01-01 00:01:00 UTC, stamp 2W
UPSTREAM_STD = Codec([b"tops3cr3t"], b"example.com", alphabet=Alphabet.BASE64)
UPSTREAM_URL = Codec([b"tops3cr3t"], b"example.com")


@pytest.mark.parametrize(
    ("srs", "sender", "expected"),
    [
        (UPSTREAM_STD, b"test@otherdomain.com", b"SRS0=vmyz=2W=otherdomain.com=test@example.com"),
        (
            UPSTREAM_STD,
            b"SRS0=opaque+string@otherdomain.com",
            b"SRS1=chaI=otherdomain.com==opaque+string@example.com",
        ),
        (
            UPSTREAM_STD,
            b"SRS1=X=thirddomain.com==opaque+string@otherdomain.com",
            b"SRS1=JIBX=thirddomain.com==opaque+string@example.com",
        ),
        (
            UPSTREAM_STD,
            b"hash234@somedomain.com",
            b"SRS0=+3/5=2W=somedomain.com=hash234@example.com",
        ),
        (
            UPSTREAM_URL,
            b"hash234@somedomain.com",
            b"SRS0=-3_5=2W=somedomain.com=hash234@example.com",
        ),
        (
            UPSTREAM_STD,
            b"test@" + b"a" * 503 + b".net",
            b"SRS0=G7tR=2W=" + b"a" * 503 + b".net=test@example.com",
        ),
    ],
    ids=["srs0", "srs0-to-srs1", "srs1-to-srs1", "base64", "base64url", "long-domain"],
)
def test_upstream_forward(srs: Codec, sender: bytes, expected: bytes) -> None:
    assert srs.forward(sender, UPSTREAM_NOW) == expected


@pytest.mark.parametrize(
    ("address", "original"),
    [
        (b"SRS0=XjO9=2V=otherdomain.com=test@example.com", b"test@otherdomain.com"),
        (b"srs0=xjo9=2v=otherdomain.com=test@example.com", b"test@otherdomain.com"),
        (b"SRS0=XJO9=2V=OTHERDOMAIN.COM=TEST@EXAMPLE.COM", b"TEST@OTHERDOMAIN.COM"),
        (
            b"SRS1=JIBX=thirddomain.com==opaque+string@example.com",
            b"SRS0=opaque+string@thirddomain.com",
        ),
        (b"SRS0=+3/5=2W=somedomain.com=hash234@example.com", b"hash234@somedomain.com"),
        (b"SRS0=-3_5=2W=somedomain.com=hash234@example.com", b"hash234@somedomain.com"),
    ],
)
def test_upstream_reverse(address: bytes, original: bytes) -> None:
    assert UPSTREAM_STD.reverse(address, UPSTREAM_NOW) == original
    assert UPSTREAM_URL.reverse(address, UPSTREAM_NOW) == original


@pytest.mark.parametrize(
    ("address", "error"),
    [
        (b"SRS0=te87=T7=otherdomain.com=test@example.com", Expired),  # six months old
        (b"SRS0=VcIb=7N=otherdomain.com=test@example.com", Expired),  # six months ahead
        (b"SRS0=FAKE=2V=otherdomain.com=test@example.com", BadHash),
    ],
)
def test_upstream_reverse_errors(address: bytes, error: type[SRSError]) -> None:
    with pytest.raises(error):
        UPSTREAM_STD.reverse(address, UPSTREAM_NOW)


# -- hypothesis: strategies ------------------------------------------------------------------

_PIECES = [
    b"=",
    b"+",
    b"-",
    b".",
    b"..",
    b'"',
    b"\\",
    b" ",
    b"@",
    b"/",
    b"_",
    b"a",
    b"Z",
    b"x.y",
    b"SRS0=",
    b"srs0+",
    b"SRS1=",
    b"sRs1-",
    b"SRS0",
    b"\xc3\xbc",
    b"\xc3\x9c",
    b"\xe2\x84\xaa",
    b"\xff",
    b"\xe9",
    b"\x00",
    b"\t",
]


def address_bytes(exclude: bytes = b"", max_pieces: int = 8) -> st.SearchStrategy[bytes]:
    """Address-ish bytes: separators, quotes, dots, SRS tags, UTF-8 and stray bytes, any case."""
    piece = st.one_of(
        st.sampled_from(_PIECES),
        st.binary(min_size=1, max_size=3),
        st.text(max_size=3).map(str.encode),
        st.sampled_from([b"user", b"Name", b"EXAMPLE", b"com", b"0123", b"x.y"]),
    )
    joined = st.lists(piece, max_size=max_pieces).map(b"".join)
    if not exclude:
        return joined
    return joined.map(lambda data: bytes(b for b in data if b not in exclude))


LOCALS = address_bytes()
HOSTS = address_bytes(exclude=b"=@")  # "=" in a host breaks every implementation (§2.5)
FIELD = address_bytes(exclude=b"=@", max_pieces=4)


def expected_srs_local(
    user: bytes, host: bytes, *, secret: bytes = SECRET, sep: bytes = b"=", url: bool = False
) -> bytes | None:
    """The reference's SRS local part for ``user@host`` at NOW (unquoted); None if refused."""
    tag = ref.srs_tag(user)
    if tag == 1:
        fields = user[5:].split(b"=", 2)
        if len(fields) < 3 or not fields[1] or fields[2][:1] not in SEPARATORS:
            return None
        return ref.srs1_local(secret, fields[1], fields[2], sep=sep, url=url)
    if tag == 0:
        return ref.srs1_local(secret, host, user[4:], sep=sep, url=url)
    return ref.srs0_local(secret, user, host, NOW, sep=sep, url=url)


def expected_original(user: bytes, host: bytes) -> tuple[bytes, bytes]:
    """(local part, host) a bounce to our SRS address goes back to, unquoted."""
    tag = ref.srs_tag(user)
    if tag == 1:  # straight to the first hop
        _hash, hop, opaque = user[5:].split(b"=", 2)
        return b"SRS0" + opaque, hop
    if tag == 0:  # to the sender, whose tag comes back upper-case
        return b"SRS0" + user[4:], host
    return user, host


def looks_quoted(local: bytes) -> bool:
    return len(local) >= 2 and local[:1] == local[-1:] == b'"'


def admissible(user: bytes, host: bytes, quoted: bool) -> bool:
    """Whether the properties below can take ``user@host`` as generated."""
    if not quoted and looks_quoted(user):
        return False  # a well-formed quoted-string is no plain local part: quoted=True covers it
    # A foreign SRS0 with an empty host is refused by forward (an SRS1 needs a first hop):
    # test_forward_refuses_srs0_sender_with_empty_host.
    return not (ref.srs_tag(user) == 0 and not host)


def sender_case(
    user: bytes, host: bytes, quoted: bool, *, sep: bytes = b"=", url: bool = False
) -> tuple[bytes, bytes | None, bytes]:
    """(sender, the SRS address the reference expects or None, the original it decodes to).

    ``quoted`` senders arrive as Postfix sends them, RFC 5322 quoted; the SRS local part is
    then quoted again when it is not a dot-atom, and so is the decoded original. A None
    address means forward must refuse the sender (a malformed SRS1).
    """
    sender = (ref.quote(user) if quoted else user) + b"@" + host
    srs_local = expected_srs_local(user, host, sep=sep, url=url)
    if srs_local is None:
        return sender, None, b""
    minted_local = ref.answer_local(srs_local, quoted=quoted)
    back_local, back_host = expected_original(user, host)
    back_local = ref.answer_local(back_local, quoted=minted_local.startswith(b'"'))
    return sender, minted_local + b"@" + DOMAIN, back_local + b"@" + back_host


def test_sender_case_helper() -> None:
    # The expectations of the properties below, spelled out for a few senders.
    assert sender_case(b"a b", b"origin.example", True) == (
        b'"a b"@origin.example',
        b'"' + ref.srs0_local(SECRET, b"a b", b"origin.example") + b'"@' + DOMAIN,
        b'"a b"@origin.example',
    )
    assert sender_case(b"SRS0=AbCd=XY=orig.example=user", b"hop1.example", False)[1:] == (
        b"SRS1=hWY1=hop1.example==AbCd=XY=orig.example=user@forwarder.test",
        b"SRS0=AbCd=XY=orig.example=user@hop1.example",
    )
    assert sender_case(b"SRS1=WxYz=hop1.example=x", b"hop2.example", False)[1] is None


# -- hypothesis: properties -------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(
    user=LOCALS,
    host=HOSTS,
    quoted=st.booleans(),
    later=st.integers(0, 22 * DAY - 1 - NOW % DAY),
)
@example(user=b"a b", host=b"origin.example", quoted=True, later=0)
@example(user=b'a"b\\c', host=b"origin.example", quoted=True, later=0)
@example(user=b"SRS0=AbCd=XY=orig.example=user", host=b"hop1.example", quoted=False, later=0)
@example(user=b"srs0+AbCd=XY=o=u v", host=b"hop1.example", quoted=True, later=0)
@example(user=b"SRS1=WxYz=hop1.example==AbCd=XY=o=u", host=b"hop2", quoted=False, later=0)
@example(user=b"SRS1=WxYz=hop1.example=x", host=b"hop2", quoted=False, later=0)
@example(user=b"caf\xe9", host=b"ex\xe4mple.com", quoted=False, later=0)
@example(user=b"", host=b"", quoted=False, later=0)
@example(user=b"", host=b"origin.example", quoted=True, later=0)
@example(user=b"user", host=b"[192.0.2.1]", quoted=False, later=0)
@example(user=b"SRS0=AbCd=XY=[IPv6:2001:db8::1]=u", host=b"hop1.example", quoted=False, later=0)
def test_round_trip(user: bytes, host: bytes, quoted: bool, later: int) -> None:
    assume(admissible(user, host, quoted))
    sender, minted, original = sender_case(user, host, quoted)
    if minted is None:
        with pytest.raises(Malformed):
            STD.forward(sender, NOW)
        return
    assert STD.forward(sender, NOW) == minted
    assert STD.reverse(minted, NOW + later) == original


@settings(max_examples=300, deadline=None)
@given(user=LOCALS, host=HOSTS, quoted=st.booleans(), sep=st.sampled_from(SEPARATORS))
def test_round_trip_base64url_and_separators(
    user: bytes, host: bytes, quoted: bool, sep: bytes
) -> None:
    assume(admissible(user, host, quoted))
    sender, minted, original = sender_case(user, host, quoted, sep=sep, url=True)
    srs = make(separator=sep)
    if minted is None:
        with pytest.raises(Malformed):
            srs.forward(sender, NOW)
        return
    assert srs.forward(sender, NOW) == minted
    assert srs.reverse(minted, NOW) == original
    assert STD.reverse(minted, NOW) == original  # either codec reads either spelling


@settings(max_examples=400, deadline=None)
@given(user=LOCALS, host=HOSTS, quoted=st.booleans(), upper=st.booleans())
@example(user=b"User.Name", host=b"Example.COM", quoted=False, upper=False)
@example(user=b"A b", host=b"Origin.Example", quoted=True, upper=False)
@example(user=b"srs0=AbCd=XY=Orig.Example=U", host=b"Hop1.Example", quoted=False, upper=True)
def test_case_smashed_address_still_decodes(
    user: bytes, host: bytes, quoted: bool, upper: bool
) -> None:
    # Postfix's smtpd lower-cases the whole recipient; some MTAs upper-case it.
    smash = bytes.upper if upper else bytes.lower
    assume(admissible(user, host, quoted))
    sender, minted, _original = sender_case(user, host, quoted, url=True)
    assume(minted is not None)
    assert URL.forward(sender, NOW) == minted
    # The smashed address decodes to the smashed original (SRS1 bounces: tag "SRS0").
    _sender, _minted, smashed_original = sender_case(smash(user), smash(host), quoted, url=True)
    assert URL.reverse(smash(minted), NOW) == smashed_original


@pytest.mark.parametrize("sender", [b"SRS0=AbCd=XY=orig.example=user@", b"SRS0+x@", b'"SRS0=a b"@'])
def test_forward_refuses_srs0_sender_with_empty_host(sender: bytes) -> None:
    # An SRS1 without a first hop could never be decoded: forward refuses to mint it.
    with pytest.raises(Malformed):
        STD.forward(sender, NOW)


# Tampering. A hash of 8 characters makes a chance match of a tampered address about 1e-12,
# so the property below cannot flake; the default length gives about 6e-7 per address.
TAMPER_LENGTH = 8
TAMPER = make(hash_length=TAMPER_LENGTH, hash_min=TAMPER_LENGTH)
_SWAP_SPELLING = bytes.maketrans(b"+-/_", b"-+_/")


def b64norm(srs_hash: bytes) -> bytes:
    return ref.lc(srs_hash).replace(b"-", b"+").replace(b"_", b"/")


def hash_accepted(presented: bytes, true_hash: bytes) -> bool:
    """The spec's hash rule: at least hash_min, at most 27 characters, the first
    hash_length equal up to ASCII case and the +/- and //_ spellings; the rest ignored."""
    if not TAMPER_LENGTH <= len(presented) <= 27:
        return False
    return b64norm(presented[:TAMPER_LENGTH]) == b64norm(true_hash)


def mutate(draw: st.DrawFn, value: bytes, replacement: st.SearchStrategy[bytes]) -> bytes:
    kind = draw(st.sampled_from(["case", "replace", "insert", "delete", "spelling", "append"]))
    if kind == "case":
        flips = draw(st.lists(st.booleans(), min_size=len(value), max_size=len(value)))
        return bytes(
            bytes([b]).swapcase()[0] if f else b for b, f in zip(value, flips, strict=True)
        )
    if kind == "replace":
        return draw(replacement)
    if kind == "insert":
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.binary(min_size=1, max_size=2)) + value[at:]
    if kind == "delete" and value:
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + value[at + 1 :]
    if kind == "spelling":  # the base64url equivalence, which only the hash field has
        return value.translate(_SWAP_SPELLING)
    return value + draw(st.binary(min_size=1, max_size=24))


def tamper(
    draw: st.DrawFn,
    fields: tuple[bytes, ...],
    replacements: tuple[st.SearchStrategy[bytes], ...],
    boundaries: tuple[int, ...],
) -> list[bytes]:
    """Change one or two fields (the last ones, the free-form host and user, most often),
    then maybe move 1-3 characters across one field boundary (``i`` in ``boundaries`` is
    the boundary between fields i and i + 1)."""
    changed = list(fields)
    shifted = draw(st.booleans())
    weighted = [i for i in range(len(fields)) for _ in range(i + 1)]
    picked = st.lists(
        st.sampled_from(weighted), min_size=0 if shifted else 1, max_size=2, unique=True
    )
    for i in draw(picked):
        changed[i] = mutate(draw, changed[i], replacements[i])
    if shifted:
        i = draw(st.sampled_from(boundaries))
        k = draw(st.sampled_from([-3, -2, -1, 1, 2, 3]))
        left, right = changed[i], changed[i + 1]
        if k > 0:  # the end of the left field becomes the start of the right one
            changed[i], changed[i + 1] = left[: max(len(left) - k, 0)], left[-k:] + right
        else:
            changed[i], changed[i + 1] = left + right[:-k], right[-k:]
    return changed


@st.composite
def tampered_srs0(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(a tampered SRS0 address, the original it must decode to or None if it must fail)."""
    user, host = draw(LOCALS), draw(HOSTS)
    tt = ref.stamp(NOW)
    true_hash = ref.srs_hash(SECRET, tt, host, user, length=TAMPER_LENGTH, url=True)
    original = (true_hash, tt, host, user)
    fields = tamper(draw, original, (FIELD, FIELD, HOSTS, LOCALS), boundaries=(1, 2))
    local = b"SRS0=" + b"=".join(fields)
    assume(local != b"SRS0=" + b"=".join(original))
    # Read the fields back the way the spec says: split at the first three "=".
    parsed = local[5:].split(b"=", 3)
    if len(parsed) < 4:
        return local + b"@" + DOMAIN, None
    p_hash, p_tt, p_host, p_user = parsed
    accepted = (
        hash_accepted(p_hash, true_hash)
        and len(p_tt) == 2
        # Only ASCII case changes, or the known field shift (spec "Known, accepted weakness").
        and ref.lc(p_tt + p_host + p_user) == ref.lc(tt + host + user)
    )
    if accepted and ref.lc(p_host) != ref.lc(host):
        event("field shift")
    decoded = ref.answer_local(p_user, quoted=False) + b"@" + p_host
    return local + b"@" + DOMAIN, decoded if accepted else None


@settings(max_examples=500, deadline=None)
@given(case=tampered_srs0())
def test_tampered_srs0_is_rejected(case: tuple[bytes, bytes | None]) -> None:
    """Any change to hash, stamp, host or user is rejected, except: ASCII case anywhere,
    +/- and //_ in the hash, characters after hash_length, and moving characters across the
    host/user boundary. That last one is the format's known weakness (spec "Known, accepted
    weakness"): the fields are hashed without delimiters."""
    address, original = case
    if original is None:
        with pytest.raises(SRSError) as info:
            TAMPER.reverse(address, NOW)
        event(f"rejected: {type(info.value).__name__}")
    else:
        event("accepted")
        assert TAMPER.reverse(address, NOW) == original


@st.composite
def tampered_srs1(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    hop = draw(HOSTS) or b"hop1.example"
    opaque = draw(st.sampled_from(SEPARATORS)) + draw(LOCALS)
    true_hash = ref.srs_hash(SECRET, hop, opaque, length=TAMPER_LENGTH, url=True)
    original = (true_hash, hop, opaque)
    fields = tamper(draw, original, (FIELD, HOSTS, LOCALS), boundaries=(1,))
    local = b"SRS1=" + b"=".join(fields)
    assume(local != b"SRS1=" + b"=".join(original))
    parsed = local[5:].split(b"=", 2)
    if len(parsed) < 3 or not parsed[1] or parsed[2][:1] not in SEPARATORS:
        return local + b"@" + DOMAIN, None
    p_hash, p_hop, p_opaque = parsed
    accepted = hash_accepted(p_hash, true_hash) and ref.lc(p_hop + p_opaque) == ref.lc(hop + opaque)
    if accepted and ref.lc(p_hop) != ref.lc(hop):
        event("field shift")
    decoded = ref.answer_local(b"SRS0" + p_opaque, quoted=False) + b"@" + p_hop
    return local + b"@" + DOMAIN, decoded if accepted else None


@settings(max_examples=300, deadline=None)
@given(case=tampered_srs1())
def test_tampered_srs1_is_rejected(case: tuple[bytes, bytes | None]) -> None:
    address, original = case
    if original is None:
        with pytest.raises(SRSError) as info:
            TAMPER.reverse(address, NOW)
        event(f"rejected: {type(info.value).__name__}")
    else:
        event("accepted")
        assert TAMPER.reverse(address, NOW) == original


def test_field_shift_keeps_the_hash_valid() -> None:
    # The known weakness, shown once plainly (golden crafted-field:field-shift-same-hash).
    assert STD.reverse(b"SRS0=S3fv=IL=example.co=muser@forwarder.test", NOW) == b"muser@example.co"
    assert STD.reverse(b"SRS0=S3fv=IL=exampl=e.comuser@forwarder.test", NOW) == b"e.comuser@exampl"
    # ... but not into or out of the stamp, which must stay two characters.
    with pytest.raises(Malformed):
        STD.reverse(b"SRS0=S3fv=ILe=xample.com=user@forwarder.test", NOW)


@settings(max_examples=300, deadline=None)
@given(
    old=st.binary(min_size=1, max_size=80),
    new=st.binary(min_size=1, max_size=80),
    user=st.from_regex(rb"[A-Za-z0-9.+_-]{1,20}", fullmatch=True),
    host=st.from_regex(rb"[A-Za-z0-9.-]{1,30}", fullmatch=True),
)
def test_rotation(old: bytes, new: bytes, user: bytes, host: bytes) -> None:
    assume(ref.srs_tag(user) is None)
    tt = ref.stamp(NOW)
    old_hash = ref.srs_hash(old, tt, host, user)
    assume(b64norm(ref.srs_hash(new, tt, host, user)) != b64norm(old_hash))  # no chance match
    sender = user + b"@" + host
    minted = Codec([old], DOMAIN).forward(sender, NOW)
    assert minted.split(b"=")[1] == ref.urlsafe(old_hash)
    assert Codec([new, old], DOMAIN).reverse(minted, NOW) == sender
    assert Codec([old, new], DOMAIN).reverse(minted, NOW) == sender
    assert Codec([new, old], DOMAIN).forward(sender, NOW).split(b"=")[1] == ref.srs_hash(
        new, tt, host, user, url=True
    )
    with pytest.raises(BadHash):
        Codec([new], DOMAIN).reverse(minted, NOW)


@settings(max_examples=500, deadline=None)
@given(
    now=st.integers(2 * 1024 * DAY, 2**33),
    age=st.integers(-1002, 1000),
    cycles=st.integers(0, 1),
    second=st.integers(0, DAY - 1),
)
@example(now=NOW, age=21, cycles=0, second=0)
@example(now=NOW, age=22, cycles=0, second=DAY - 1)
@example(now=NOW, age=-1, cycles=0, second=0)
@example(now=NOW, age=0, cycles=1, second=0)
def test_ages(now: int, age: int, cycles: int, second: int) -> None:
    minted_at = (now // DAY - age - cycles * 1024) * DAY + second
    minted = URL.forward(b"user@example.com", minted_at)
    if 0 <= age <= 21:  # today and the 21 days before it; the stamp wraps every 1024 days
        assert URL.reverse(minted, now) == b"user@example.com"
    else:  # 22 days and older, or from the future
        with pytest.raises(Expired):
            URL.reverse(minted, now)


# Garbage into the codec: only SRSError, and never slow (the CVE-2020-35573 class).


def _signed(tag_sep: bytes, stamp: bytes, host: bytes, user: bytes) -> bytes:
    srs_hash = ref.srs_hash(SECRET, stamp, host, user, url=True)
    return tag_sep + srs_hash + b"=" + stamp + b"=" + host + b"=" + user + b"@" + DOMAIN


NEAR_SRS = st.builds(
    lambda tag, sep, fields: tag + sep + b"=".join(fields),
    st.sampled_from([b"SRS0", b"SRS1", b"srs0", b"sRs1", b"SRS", b"SRS2", b""]),
    st.sampled_from([b"=", b"+", b"-", b"_", b""]),
    st.lists(
        st.one_of(FIELD, st.binary(max_size=64), st.sampled_from([b"IL", b"S3fv", b""])), max_size=6
    ),
)
TAILS = st.sampled_from([b"", b"@forwarder.test", b"@", b"@@x", b"@x@y", b" "])
GARBAGE = st.one_of(
    st.binary(max_size=4096),
    st.builds(bytes.__add__, NEAR_SRS, TAILS),
    st.builds(lambda a, t: ref.quote(a) + t, NEAR_SRS, TAILS),
    st.builds(
        _signed,
        st.sampled_from([b"SRS0=", b"srs0+", b"SRS0-"]),
        st.one_of(st.binary(max_size=64), st.from_regex(rb"[A-Za-z2-7]{0,40}", fullmatch=True)),
        HOSTS,
        LOCALS,
    ),
)


@settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=GARBAGE)
@example(data=_signed(b"SRS0=", b"A" * 12, b"example.com", b"user"))
@example(data=b"SRS0=" + b"=" * 4000 + b"@x")
@example(data=b'"' + b"\\" * 4000 + b'"@x')
def test_anything_into_the_codec_gives_bytes_or_srs_error_fast(data: bytes) -> None:
    for call in (URL.reverse, URL.forward):
        lines, outcome = lines_run(lambda call=call: call(data, NOW))
        if isinstance(outcome, SRSError):
            assert outcome.reason
        else:
            assert isinstance(outcome, bytes), outcome
        assert lines <= call_bound(len(data)), (call, lines, len(data))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=GARBAGE)
@example(data=b'"SRS0=h=TT=x=u"@x')
@example(data=b"sRs1=h=x==y=z@x")
def test_what_may_be_srs_rules_out_is_not_srs(data: bytes) -> None:
    # Policy.reverse answers "not SRS" without the codec when may_be_srs() says so: the
    # codec must say the same, for any bytes.
    event(f"may be SRS: {may_be_srs(data)}")
    if not may_be_srs(data):
        with pytest.raises(NotSRS):
            URL.reverse(data, NOW)
