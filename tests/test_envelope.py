# Envelope database mode, pure part: key scheme, alias addresses, mode choice, flood cap.
"""Known answers from postsrsd 2.x (``docs/postsrsd.md`` §1.7, §3.8) and
properties: every alias local part fits in 64 octets, ``auto`` chooses the database exactly
when the embedded form is too long, and the write limiter never lets more through than its
rate allows."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd import envelope
from srsd.envelope.keys import (
    EnvelopeMode,
    RecentWrites,
    WriteLimiter,
    alias_address,
    alias_key,
    is_srs_sender,
    key_of,
    needs_database,
    use_database,
)
from srsd.srs.codec import Alphabet, Codec, Expired, SRSError

NOW = 1577836860  # 2020-01-01 00:01:00 UTC, postsrsd's test clock
SENDER = b"test@otherdomain.com"
KEY = b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ"
VECTOR = b"SRS0=bxzH=2W=1=DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ@example.com"
BASE32HEX = b"0123456789ABCDEFGHIJKLMNOPQRSTUV"


def upstream_codec(**options: object) -> Codec:
    return Codec([b"tops3cr3t"], b"example.com", alphabet=Alphabet.BASE64, **options)  # type: ignore[arg-type]


# -- key scheme: postsrsd 2.x's known answer --------------------------------------------------


def test_key_is_base32hex_of_sha1_of_the_sender() -> None:
    digest = hashlib.sha1(SENDER).digest()
    assert base64.b32hexencode(digest) == KEY
    assert alias_key(SENDER) == KEY


def test_alias_address() -> None:
    assert alias_address(KEY) == KEY + b"@1"


def test_database_forward_matches_postsrsd_vector_byte_for_byte() -> None:
    assert upstream_codec().forward(alias_address(alias_key(SENDER)), now=NOW) == VECTOR


def test_database_reverse_gives_the_key_back() -> None:
    srs = upstream_codec()
    assert key_of(srs.reverse(VECTOR, now=NOW)) == KEY
    # A receiver that changed the case of the bounce address: still the same key.
    assert key_of(srs.reverse(VECTOR.lower(), now=NOW)) == KEY
    assert key_of(srs.reverse(VECTOR.upper(), now=NOW)) == KEY


def test_database_address_expires_like_any_other() -> None:
    with pytest.raises(Expired):
        upstream_codec().reverse(VECTOR, now=NOW + 30 * 86400)


def test_key_is_case_and_byte_sensitive() -> None:
    # Hashed exactly as given: postsrsd does the same, so both derive the same key.
    assert alias_key(b"Test@otherdomain.com") != KEY
    assert alias_key(SENDER + b" ") != KEY
    assert alias_key(b"\xff\x00@x") == alias_key(b"\xff\x00@x")


@pytest.mark.parametrize(
    "decoded",
    [
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ",  # no domain
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ@2",
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ@01",
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ@1.example",
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQ@1",  # 31 characters
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJJ@1",  # 33 characters
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQW@1",  # W is not base32hex
        b"DCJGDE6N24LCRT41A4T0G1UIF0DTKK=J@1",
        b"test@otherdomain.com",
        b"@1",
        b"",
    ],
)
def test_key_of_rejects_what_is_not_an_alias(decoded: bytes) -> None:
    assert key_of(decoded) is None


def test_key_of_accepts_any_case() -> None:
    assert key_of(KEY.lower() + b"@1") == KEY
    assert key_of(b"dcjgde6n24lcrt41A4T0G1UIF0DTKKQJ@1") == KEY


@given(st.binary(max_size=600))
def test_every_sender_has_a_32_character_base32hex_key(sender: bytes) -> None:
    key = alias_key(sender)
    assert len(key) == 32
    assert set(key) <= set(BASE32HEX)
    assert alias_key(sender) == key  # deterministic
    assert key_of(alias_address(key)) == key


codecs = st.builds(
    lambda hash_length, separator, alphabet, domain: Codec(
        [b"s3cret"],
        domain,
        hash_length=hash_length,
        hash_min=1,
        separator=separator,
        alphabet=alphabet,
    ),
    st.integers(1, 20),
    st.sampled_from([b"=", b"+", b"-"]),
    st.sampled_from(list(Alphabet)),
    st.from_regex(rb"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}\Z"),
)


@given(codecs, st.binary(max_size=600), st.integers(0, 2**34))
def test_every_alias_local_part_fits_in_64_octets(srs: Codec, sender: bytes, now: int) -> None:
    key = alias_key(sender)
    srs_address = srs.forward(alias_address(key), now=now)
    local = srs_address.rpartition(b"@")[0]
    assert len(local) == 43 + srs.hash_length <= 64
    assert not needs_database(srs_address)
    assert key_of(srs.reverse(srs_address, now=now)) == key


addresses = st.builds(
    lambda local, domain: local + b"@" + domain,
    st.binary(min_size=1, max_size=90).filter(lambda b: b"@" not in b),
    st.from_regex(rb"\A[a-z0-9-]{1,40}(\.[a-z0-9-]{1,40}){0,3}\Z"),
)


@settings(max_examples=300)
@given(
    codecs,
    addresses
    | st.sampled_from([b"SRS0=x=y=z.example=a@b.example", b"a@b", b"SRS1=broken@b.example"]),
)
def test_auto_uses_the_database_exactly_when_the_embedded_form_is_too_long(
    srs: Codec, sender: bytes
) -> None:
    try:
        embedded = srs.forward(sender, now=NOW)
    except SRSError:  # only a malformed SRS sender: the policy answers before any choice
        assert is_srs_sender(sender)
        return
    too_long = len(embedded.rpartition(b"@")[0]) > 64
    srs_sender = is_srs_sender(sender)
    assert use_database(EnvelopeMode.AUTO, sender, embedded) == (too_long and not srs_sender)
    assert use_database(EnvelopeMode.DATABASE, sender, embedded) == (not srs_sender)
    assert not use_database(EnvelopeMode.EMBEDDED, sender, embedded)
    if not srs_sender:  # whatever auto chose, the address it gives fits
        if use_database(EnvelopeMode.AUTO, sender, embedded):
            chosen = srs.forward(alias_address(alias_key(sender)), now=NOW)
        else:
            chosen = embedded
        assert len(chosen.rpartition(b"@")[0]) <= 64


def test_needs_database_boundary() -> None:
    assert not needs_database(b"a" * 64 + b"@example.com")
    assert needs_database(b"a" * 65 + b"@example.com")
    assert not needs_database(b"")
    assert needs_database(b"a" * 65)  # no @: all of it is the local part


def test_auto_on_the_51_octet_boundary_of_issue_108() -> None:
    # With a 4-character hash, SRS0 adds 13 octets: 51-octet senders fit, 52 do not.
    srs = upstream_codec()
    fits = b"u" * 30 + b"@" + b"d" * 16 + b".com"
    assert len(fits) == 51
    longer = b"u" + fits
    assert not use_database(EnvelopeMode.AUTO, fits, srs.forward(fits, NOW))
    assert use_database(EnvelopeMode.AUTO, longer, srs.forward(longer, NOW))


def test_srs_senders_are_never_aliased() -> None:
    srs = upstream_codec()
    for sender in (
        b"SRS0=opaque+string@otherdomain.com",
        b"srs1=X=thirddomain.com==opaque@otherdomain.com",
        b'"SRS0=a b=c"@x.example',
    ):
        assert is_srs_sender(sender)
        assert not use_database(EnvelopeMode.DATABASE, sender, srs.forward(sender, NOW))
    assert not is_srs_sender(b"SRS2=x@y")
    assert not is_srs_sender(b"no-at-sign")


def test_mode_values_are_the_setting_values() -> None:
    assert [m.value for m in EnvelopeMode] == ["embedded", "database", "auto"]
    assert EnvelopeMode("auto") is EnvelopeMode.AUTO


def test_lifetime_is_max_age_plus_a_margin() -> None:
    assert envelope.lifetime(21) == 23 * 86400
    assert envelope.lifetime(21, margin_days=0) == 21 * 86400
    with pytest.raises(ValueError, match="negative"):
        envelope.lifetime(-1)


# -- flood cap ----------------------------------------------------------------------------------


def test_write_limiter_allows_a_burst_then_the_sustained_rate() -> None:
    limiter = WriteLimiter(60)  # one a second once the burst is spent
    t = 1000.0
    assert all(limiter.allow(t) for _ in range(60))
    assert not limiter.refusing
    assert not limiter.allow(t)
    assert not limiter.allow(t + 0.5)
    assert limiter.refused == 2
    assert limiter.refusing
    assert limiter.allow(t + 1.0)  # one token refilled
    assert not limiter.refusing
    assert not limiter.allow(t + 1.0)
    assert limiter.refused == 3
    # After a quiet minute the whole burst is back, but never more than that.
    assert sum(limiter.allow(t + 600) for _ in range(100)) == 60


def test_write_limiter_clock_stepping_back_refills_nothing() -> None:
    limiter = WriteLimiter(2)
    assert limiter.allow(500.0)
    assert limiter.allow(500.0)
    assert not limiter.allow(400.0)
    assert not limiter.allow(499.0)
    assert limiter.allow(530.0)  # 30 s after the latest time seen: one token


def test_write_limiter_zero_means_no_cap() -> None:
    limiter = WriteLimiter(0)
    assert all(limiter.allow(0.0) for _ in range(10000))
    assert limiter.refused == 0
    with pytest.raises(ValueError, match="negative"):
        WriteLimiter(-1)


@given(
    st.integers(1, 50),
    st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=300),
)
def test_write_limiter_never_exceeds_burst_plus_rate(cap: int, offsets: list[float]) -> None:
    limiter = WriteLimiter(cap)
    times = sorted(offsets)
    allowed = [t for t in times if limiter.allow(t)]
    assert limiter.refused == len(times) - len(allowed)
    # In any interval [a, b] at most cap + cap * (b - a) / 60 writes pass.
    for i, a in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= cap + cap * (allowed[j] - a) / 60 + 1e-6


def test_recent_writes_skip_repeats_until_refresh_is_due() -> None:
    recent = RecentWrites(capacity=2, refresh_after=3600)
    assert not recent.fresh(b"A", 0)
    recent.note(b"A", 0)
    assert recent.fresh(b"A", 3599)
    assert not recent.fresh(b"A", 3600)
    assert not recent.fresh(b"A", -1)  # clock stepped back: write again, to be safe
    recent.note(b"B", 10)
    recent.note(b"C", 20)  # capacity 2: A, the oldest, is forgotten
    assert len(recent) == 2
    assert not recent.fresh(b"A", 30)
    assert recent.fresh(b"B", 30)
    recent.note(b"B", 40)
    recent.note(b"D", 50)  # B was refreshed, so C goes
    assert recent.fresh(b"B", 60)
    assert not recent.fresh(b"C", 60)
    disabled = RecentWrites(capacity=0)
    disabled.note(b"A", 0)
    assert not disabled.fresh(b"A", 1)
