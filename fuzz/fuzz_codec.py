# atheris harness for the SRS codec and policy: any bytes in, only SRSError out, round trips hold.
"""Coverage-guided fuzzing of :mod:`srsd.srs.codec` and :mod:`srsd.srs.policy` (``fuzz/README.md``).

For any input, under one of several codec configurations:

* ``reverse`` returns an address (bytes with an ``@``) or raises :class:`SRSError` with a
  reason; nothing else, ever;
* ``forward`` returns an SRS address at our domain or raises :class:`SRSError`;
* what ``forward`` minted decodes (a first hop without ``=``, the one ambiguity of the
  format, or ``@``);
  minting the decoded address again gives the same SRS address (up to quoting) that decodes
  to the same original; it still decodes when the whole address is lower- or upper-cased
  (mail systems smash case);
* an address minted with another secret never decodes;
* the policy answers every lookup with a Decision and never raises.
"""

from __future__ import annotations

import sys

try:
    import atheris
except ImportError:  # replaying an input (tests/test_fuzz_campaign.py) needs no fuzzer
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from srsd.srs import address, codec, policy
else:
    from srsd.srs import address, codec, policy

from common import Input, run

NOW = 1704110400  # 2024-01-01T12:00:00Z, day stamp IL
DOMAIN = b"forwarder.test"
SECRETS = [b"fuzz-secret", b"older secret"]
CODECS = [
    codec.Codec(SECRETS, DOMAIN),
    codec.Codec(SECRETS[:1], DOMAIN, alphabet=codec.Alphabet.BASE64, separator=b"+"),
    codec.Codec(SECRETS, DOMAIN, hash_length=8, hash_min=4, separator=b"-"),
    codec.Codec(SECRETS[:1], DOMAIN, hash_length=1, hash_min=1, max_age=0),
]
STRANGER = codec.Codec([b"someone else's secret"], DOMAIN, hash_length=20, hash_min=20)
POLICIES = [
    policy.Policy(c, policy.DomainSet(["excluded.example", ".sub.example"])) for c in CODECS
]
# The address, then (read from the end, as FuzzedDataProvider reads integers) the day offset
# and the codec's index.
SEEDS = [
    address + b"\x00\x00"
    for address in (
        b"alice@example.org",
        b"SRS0=abcd=IL=example.org=alice@forwarder.test",
        b"SRS1=abcd=hop.example==xyzw=IL=example.org=alice@forwarder.test",
        b'"a b\\"c"@example.org',
        b'"SRS0=abcd=IL=example.org=a b"@forwarder.test',
        b"srs0+AbCd=XY=orig.example=u@hop1.example",
        b"SRS0=abcd=ILAAAA=example.org=alice@x",
    )
]


def check_reverse(srs: codec.Codec, data: bytes, now: float) -> bytes | None:
    """``srs.reverse(data)``; the result, or None after a well-formed SRSError."""
    try:
        result = srs.reverse(data, now)
    except codec.SRSError as err:
        if not isinstance(err.reason, str) or not err.reason:
            raise AssertionError(f"SRSError without a reason: {err!r}") from err
        return None
    if not isinstance(result, bytes) or b"@" not in result:
        raise AssertionError(f"reverse returned {result!r}")
    return result


def first_hop_is_unambiguous(sender: bytes) -> bool:
    """False when the host a bounce goes back to holds ``=`` (the fields cannot be split
    back: the format's one ambiguity) or, for an SRS1 sender, ``@`` (its decoded address
    ``SRS0...@hop`` splits elsewhere). Postfix never sends such hosts."""
    parts = address.split(sender)
    if parts is None:
        return False
    local, host = parts
    user = address.unquote(local) or local
    if codec.srs_tag(user) == 1:
        host = user[5:].split(b"=", 2)[1]
        return b"=" not in host and b"@" not in host
    return b"=" not in host


def bare(srs_address: bytes) -> bytes:
    """An SRS address with its local part unquoted (quoting follows the input's form: a
    quoted sender may mint a quoted address whose decoded original needs no quotes)."""
    local, _, domain = srs_address.rpartition(b"@")
    return (address.unquote(local) or local) + b"@" + domain


def test_one_input(data: bytes) -> None:
    """One fuzz input: the address, then a clock byte and a configuration byte at its end."""
    fdp = Input(data)
    which = fdp.ConsumeIntInRange(0, len(CODECS) - 1)
    days_later = fdp.ConsumeIntInRange(0, 40)
    subject = fdp.ConsumeBytes(fdp.remaining_bytes())
    srs, rules = CODECS[which], POLICIES[which]
    now = NOW + days_later * 86400

    check_reverse(srs, subject, now)
    for decide in (rules.forward, rules.reverse):
        decision = decide(subject, now)
        if not isinstance(decision, policy.Decision):
            raise AssertionError(f"{decide.__name__} returned {decision!r}")
        if (decision.value is None) != (decision.outcome is not policy.Outcome.REWRITTEN):
            raise AssertionError(f"inconsistent decision {decision!r}")

    try:
        minted = srs.forward(subject, NOW)
    except codec.SRSError:
        return
    if not minted.endswith(b"@" + DOMAIN):
        raise AssertionError(f"forward minted {minted!r}")
    local = minted[: -len(DOMAIN) - 1]
    if codec.srs_tag(address.unquote(local) or local) is None:
        raise AssertionError(f"forward minted a non-SRS local part: {minted!r}")
    if check_reverse(STRANGER, minted, NOW) is not None:
        raise AssertionError(f"another secret decoded {minted!r}")
    if not first_hop_is_unambiguous(subject):
        return
    original = check_reverse(srs, minted, NOW)
    if original is None:
        raise AssertionError(f"{minted!r}, minted from {subject!r}, does not decode")
    again = srs.forward(original, NOW)
    if bare(again) != bare(minted) or check_reverse(srs, again, NOW) != original:
        raise AssertionError(f"{subject!r} -> {minted!r} -> {original!r} -> {again!r}")
    for smash in (bytes.lower, bytes.upper):
        if check_reverse(srs, smash(minted), NOW) is None:
            raise AssertionError(f"{smash(minted)!r} (case smashed) does not decode")


if __name__ == "__main__":
    sys.setrecursionlimit(1000)
    run(test_one_input, SEEDS)
