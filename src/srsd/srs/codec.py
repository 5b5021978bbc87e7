# The SRS0/SRS1 address codec: HMAC-signed, day-stamped sender addresses. Pure, no I/O.
"""Encode senders into SRS addresses and decode them back, byte for byte.

This is the "Guarded" SRS of libsrs2, postsrsd, Mail::SRS and pysrs; with the standard
base64 alphabet its output is byte-identical to postsrsd 1.x and Mail::SRS for the same
secret and day. The format and every decision taken are in ``docs/srs-format.md``:

* ``SRS0<sep>HASH=TT=host=user@DOMAIN`` for an ordinary sender ``user@host``;
* ``SRS1<sep>HASH=hop1=opaque@DOMAIN`` for a sender that is already someone's SRS address;
* ``HASH`` is the base64 HMAC-SHA1 (first ``hash_length`` characters) of the ASCII
  lower-cased fields concatenated; ``TT`` is the UTC day number mod 1024 in base32.

Everything works on ``bytes``: Postfix may hand over any byte. The clock is a parameter
(``now``, Unix seconds); the codec never reads it. Every failure raises a subclass of
:class:`SRSError` whose ``reason`` is a short text fit for logs and replies.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from srsd.srs import address

B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_VALUE = {c: i for i, c in enumerate(B32)} | {c: i for i, c in enumerate(B32.lower())}
SEPARATORS = frozenset(b"=+-")
#: The longest hash field worth reading: an unpadded base64 SHA-1 digest.
MAX_HASH_FIELD = 27
MAX_HASH_LENGTH = 20
#: Days in the timestamp cycle; the two base32 digits wrap after this many days.
STAMP_CYCLE = 1024
#: Seconds in a day, as SRS timestamps count days (Unix time, no leap seconds).
SECONDS_PER_DAY = 86400
# Hash normal form for comparison: lower case, base64url spelled as standard base64.
_NORMALISE = bytes.maketrans(b"-_ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"+/abcdefghijklmnopqrstuvwxyz")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_TAGS = {0x30: 0, 0x31: 1}  # "0", "1"
# HMAC (RFC 2104) by hand on hashlib objects: the key's inner and outer pads are hashed
# once per secret, and each hash then costs two C-level copies, not hmac.HMAC's Python.
_SHA1_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class SRSError(Exception):
    """Base class of codec errors; ``reason`` says what was wrong, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSRS(SRSError):
    """The address is not an SRS address at all."""


#: The reason of :class:`NotSRS`.
NOT_SRS = "Not an SRS address."


class Malformed(SRSError):
    """The address looks like SRS but its fields are missing or invalid."""


class BadHash(SRSError):
    """The hash is too short or matches none of the secrets: forged or damaged."""


class Expired(SRSError):
    """The hash is good but the timestamp is older than the maximum age (or in the future)."""


class Alphabet(enum.Enum):
    """Spelling of the hash on output; both are accepted on input."""

    BASE64URL = "base64url"  # postsrsd >= 2.2.6: "-" and "_", no "/" in MAIL FROM
    BASE64 = "base64"  # postsrsd 1.x, Mail::SRS, pysrs: "+" and "/"


def day_stamp(now: float) -> bytes:
    """The two-character base32 timestamp for the UTC day containing ``now``."""
    day = int(now // SECONDS_PER_DAY)
    return bytes((B32[(day >> 5) & 31], B32[day & 31]))


def may_be_srs(srs_address: bytes) -> bool:
    """False when ``srs_address`` cannot be an SRS address, told from its first bytes: an
    unquoted local part that does not start ``SRS`` (any case); :meth:`Codec.reverse`
    would raise :class:`NotSRS` for it. Lets a caller skip that exception for the
    usual recipient."""
    return srs_address[:3].upper() == b"SRS" or srs_address[:1] == b'"'


def srs_tag(local: bytes) -> int | None:
    """0 or 1 for a local part starting ``SRS0``/``SRS1`` + separator (any case), else None."""
    if len(local) < 5 or local[4] not in SEPARATORS or local[:3].upper() != b"SRS":
        return None
    return _TAGS.get(local[3])


class Codec:
    """SRS forward and reverse for one SRS domain and one list of secrets.

    ``secrets[0]`` signs; every secret verifies (rotation: add the new one on top).
    Instances are immutable and safe to share between tasks.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        domain: bytes,
        *,
        hash_length: int = 4,
        hash_min: int = 4,
        separator: bytes = b"=",
        max_age: int = 21,
        alphabet: Alphabet = Alphabet.BASE64URL,
    ) -> None:
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty secret is required")
        if not domain:
            raise ValueError("the SRS domain is empty")
        if not 1 <= hash_length <= MAX_HASH_LENGTH:
            raise ValueError(f"hash_length must be 1..{MAX_HASH_LENGTH}")
        if not 1 <= hash_min <= hash_length:
            raise ValueError("hash_min must be 1..hash_length")
        if len(separator) != 1 or separator[0] not in SEPARATORS:
            raise ValueError("separator must be one of = + -")
        if not 0 <= max_age < STAMP_CYCLE // 2:
            raise ValueError(f"max_age must be 0..{STAMP_CYCLE // 2 - 1}")
        self.domain = domain
        self.hash_length = hash_length
        self.hash_min = hash_min
        self.separator = separator
        self.max_age = max_age
        self.alphabet = alphabet
        self._pads = tuple(_pads(s) for s in secrets)
        # Bytes of digest whose base64 covers hash_length characters (3 bytes: 4 chars).
        self._sign_bytes = -(-hash_length // 4) * 3

    # -- hashing ---------------------------------------------------------------------------

    def _sign(self, *fields: bytes) -> bytes:
        signed = _hash(self._pads[0], b"".join(fields).lower(), self._sign_bytes)
        signed = signed[: self.hash_length]
        if self.alphabet is Alphabet.BASE64URL:
            return signed.translate(_TO_URLSAFE)
        return signed

    def _verify(self, presented: bytes, *fields: bytes) -> None:
        if len(presented) < self.hash_min:
            raise BadHash("Hash too short in SRS address.")
        if len(presented) > MAX_HASH_FIELD:
            raise Malformed("Hash too long in SRS address.")
        n = min(len(presented), self.hash_length)
        wanted = presented[:n].translate(_NORMALISE)
        message = b"".join(fields).lower()
        size = -(-n // 4) * 3
        matched = False
        for pads in self._pads:  # try every secret, whichever matches
            expected = _hash(pads, message, size)[:n].translate(_NORMALISE)
            matched |= hmac.compare_digest(expected, wanted)
        if not matched:
            raise BadHash("Hash invalid in SRS address.")

    # -- forward ---------------------------------------------------------------------------

    def forward(self, sender: bytes, now: float) -> bytes:
        """Rewrite ``sender`` (``user@host``) into an SRS address at this codec's domain.

        A foreign SRS0 becomes an SRS1 pointing at its host; a foreign SRS1 keeps its
        first hop and gets our hash. Whether a sender should be rewritten at all (null
        sender, local or excluded domain, our own address) is the policy's decision.
        Raises :class:`Malformed` for a sender without ``@`` or a malformed SRS1.
        """
        parts = address.split(sender)
        if parts is None:
            raise Malformed("No at sign in sender address")
        user, quoted = address.plain_local(parts[0])
        return self.forward_split(user, quoted, parts[1], now)

    def forward_split(self, user: bytes, quoted: bool, host: bytes, now: float) -> bytes:
        """:meth:`forward` of a sender already split at its last ``@``: ``user`` is its
        local part as :func:`srsd.srs.address.plain_local` gives it (``quoted``: it was a
        quoted-string), ``host`` its domain."""
        tag = srs_tag(user)
        if tag is not None:
            if tag == 1:  # bounces go straight to the first hop: keep it, re-sign
                _old_hash, hop, opaque = _srs1_fields(user)
            else:  # someone's SRS0: opaque keeps its separator, so "==" is right
                if not host:  # an SRS1 without a first hop could never be decoded
                    raise Malformed("No host in sender address")
                hop, opaque = host, user[4:]
            srs_hash = self._sign(hop, opaque)
            srs_local = b"=".join((b"SRS1" + self.separator + srs_hash, hop, opaque))
        else:
            stamp = day_stamp(now)
            srs_hash = self._sign(stamp, host, user)
            srs_local = b"=".join((b"SRS0" + self.separator + srs_hash, stamp, host, user))
        if address.needs_quotes(srs_local, was_quoted=quoted):
            srs_local = address.quote(srs_local)
        return srs_local + b"@" + self.domain

    # -- reverse ---------------------------------------------------------------------------

    def reverse(self, srs_address: bytes, now: float) -> bytes:
        """Decode an SRS0 or SRS1 address signed with one of our secrets.

        The domain part is ignored (the HMAC is the authorisation). Checks run cheapest
        first: syntax, timestamp form, hash, then age. Raises :class:`NotSRS`,
        :class:`Malformed`, :class:`BadHash` or :class:`Expired`.
        """
        parts = address.split(srs_address)
        user, quoted = address.plain_local(srs_address if parts is None else parts[0])
        tag = srs_tag(user)
        if tag is None:
            raise NotSRS(NOT_SRS)
        if parts is None or not parts[1]:  # the domain is not checked, but it must be there
            raise Malformed("No domain in SRS address.")
        if tag == 0:
            result_local, result_host = self._reverse_srs0(user, now)
        else:
            srs_hash, hop, opaque = _srs1_fields(user)
            self._verify(srs_hash, hop, opaque)
            result_local, result_host = b"SRS0" + opaque, hop
        if address.needs_quotes(result_local, was_quoted=quoted):
            result_local = address.quote(result_local)
        return result_local + b"@" + result_host

    def _reverse_srs0(self, local: bytes, now: float) -> tuple[bytes, bytes]:
        rest = local[5:]
        if not rest:
            raise Malformed("No hash in SRS0 address.")
        fields = rest.split(b"=", 3)
        if len(fields) < 4:
            missing = ("timestamp", "host", "user")[len(fields) - 1]
            raise Malformed(f"No {missing} in SRS0 address.")
        srs_hash, stamp, host, user = fields
        # Exactly two base32 digits, checked before anything else (CVE-2020-35573).
        if len(stamp) != 2 or stamp[0] not in _B32_VALUE or stamp[1] not in _B32_VALUE:
            raise Malformed("Bad time stamp in SRS0 address.")
        self._verify(srs_hash, stamp, host, user)
        then = _B32_VALUE[stamp[0]] * 32 + _B32_VALUE[stamp[1]]
        today = int(now // SECONDS_PER_DAY) % STAMP_CYCLE
        if (today - then) % STAMP_CYCLE > self.max_age:
            raise Expired("Time stamp out of date.")
        return user, host


def _srs1_fields(local: bytes) -> tuple[bytes, bytes, bytes]:
    """Split an SRS1 local part into (hash, first hop, opaque); raise Malformed if broken."""
    rest = local[5:]
    if not rest:
        raise Malformed("No hash in SRS1 address.")
    fields = rest.split(b"=", 2)
    if len(fields) < 2 or not fields[1]:
        raise Malformed("No host in SRS1 address.")
    if len(fields) < 3 or not fields[2]:
        raise Malformed("No user in SRS1 address.")
    srs_hash, hop, opaque = fields
    if opaque[0] not in SEPARATORS:
        raise Malformed("Bad opaque part in SRS1 address.")
    return srs_hash, hop, opaque


def _pads(secret: bytes) -> tuple[Any, Any]:
    """SHA-1 objects that have absorbed the secret's inner and outer HMAC pads."""
    # HMAC-SHA1 is what the SRS format is (and HMAC-SHA1 is not broken): S324 does not apply.
    sha1 = hashlib.sha1
    key = sha1(secret).digest() if len(secret) > _SHA1_BLOCK else secret
    key = key.ljust(_SHA1_BLOCK, b"\0")
    return sha1(key.translate(_IPAD)), sha1(key.translate(_OPAD))


def _hash(pads: tuple[Any, Any], message: bytes, size: int) -> bytes:
    """Standard base64 of the first ``size`` bytes of HMAC-SHA1(secret, message)."""
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(message)
    outer.update(inner.digest())
    return binascii.b2a_base64(outer.digest()[:size], newline=False)
