# An independent SRS reference for the tests: HMAC-SHA1, base64, base32 and quoting by hand.
"""Expected values for the codec tests, computed without touching ``srsd``.

Everything the spec (``docs/srs-format.md``) defines is written out here again, the long
way round: HMAC from its RFC 2104 definition over :func:`hashlib.sha1`, base64 six bits at a
time, the day stamp from the day number, RFC 5322 dot-atoms and quoted-strings as regular
expressions. A test that compares the codec with these helpers cannot pass merely because
both sides call the same private function.
"""

from __future__ import annotations

import hashlib
import re

B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DAY = 86400
#: 2024-01-01T12:00:00Z, the clock of the golden vectors (day stamp ``IL``).
NOW = 1704110400
SECRET = b"Vector-Secret-1"
DOMAIN = b"forwarder.test"

# RFC 5322 atext plus every byte >= 0x80 (RFC 6531 UTF-8 atoms).
_ATEXT = rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]"
DOT_ATOM = re.compile(rb"%s+(?:\.%s+)*" % (_ATEXT, _ATEXT))
# RFC 5322 quoted-string without folding white space: qtext (RFC 6532: plus UTF-8), spaces,
# tabs, and quoted-pairs of a backslash and a visible character, space, tab or UTF-8 byte.
QUOTED_STRING = re.compile(
    rb'"(?:[\x21\x23-\x5b\x5d-\x7e\x80-\xff \t]|\\[\x21-\x7e\x80-\xff \t])*"'
)
_SRS_TAG = re.compile(rb"[Ss][Rr][Ss]([01])[=+-]")


def lc(data: bytes) -> bytes:
    """Lower-case ASCII A-Z only, byte by byte."""
    return bytes(b + 32 if 0x41 <= b <= 0x5A else b for b in data)


def hmac_sha1(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA1 as RFC 2104 defines it (block size 64, long keys hashed first)."""
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha1(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha1(bytes(k ^ 0x5C for k in key) + inner).digest()


def b64(data: bytes) -> bytes:
    """Unpadded standard base64, six bits at a time."""
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 6)
    return bytes(B64[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def urlsafe(text: bytes) -> bytes:
    """The base64url spelling of a standard base64 text."""
    return text.replace(b"+", b"-").replace(b"/", b"_")


def srs_hash(secret: bytes, *fields: bytes, length: int = 4, url: bool = False) -> bytes:
    """``HASH(fields)`` of the spec: base64 HMAC-SHA1 over the lower-cased fields, cut."""
    full = b64(hmac_sha1(secret, b"".join(lc(f) for f in fields)))[:length]
    return urlsafe(full) if url else full


def stamp(now: float) -> bytes:
    """The two-character day stamp of the UTC day containing ``now``."""
    day = int(now // DAY)
    return bytes((B32[day // 32 % 32], B32[day % 32]))


def srs0_local(
    secret: bytes,
    user: bytes,
    host: bytes,
    when: float = NOW,
    *,
    sep: bytes = b"=",
    length: int = 4,
    url: bool = False,
) -> bytes:
    """The local part ``SRS0<sep>HASH=TT=host=user`` for a sender seen at ``when``."""
    tt = stamp(when)
    return (
        b"SRS0"
        + sep
        + srs_hash(secret, tt, host, user, length=length, url=url)
        + (b"=" + tt + b"=" + host + b"=" + user)
    )


def srs1_local(
    secret: bytes,
    hop: bytes,
    opaque: bytes,
    *,
    sep: bytes = b"=",
    length: int = 4,
    url: bool = False,
) -> bytes:
    """The local part ``SRS1<sep>HASH=hop=opaque``."""
    return (
        b"SRS1"
        + sep
        + srs_hash(secret, hop, opaque, length=length, url=url)
        + (b"=" + hop + b"=" + opaque)
    )


def is_dot_atom(local: bytes) -> bool:
    return DOT_ATOM.fullmatch(local) is not None


def quote(local: bytes) -> bytes:
    """Quote ``local`` as a whole (always), escaping backslash and double quote."""
    return b'"' + re.sub(rb'(["\\])', rb"\\\1", local) + b'"'


def external(local: bytes) -> bytes:
    """The RFC 5322 external form of a local part: as is if a dot-atom, else quoted."""
    return local if is_dot_atom(local) else quote(local)


def answer_local(local: bytes, *, quoted: bool) -> bytes:
    """An answer's local part as the spec ("Quoted local parts") says: the external form
    when the input was quoted, and also when the local part is empty (``""@host`` is a
    mailbox, ``@host`` is not) or holds an address literal's ``[``, ``]`` or ``:`` and is
    not a quoted-string already (postsrsd's ``SRS0=…=x="a:b"@D`` decodes to ``"a:b"@x``);
    otherwise the bytes as they are (postsrsd's)."""
    literal = re.search(rb"[\[\]:]", local) and not re.fullmatch(rb'"(?:[^"\\]|\\.)*"', local, re.S)
    if quoted or not local or literal:
        return external(local)
    return local


def srs_tag(local: bytes) -> int | None:
    """0 or 1 for a local part starting SRS0/SRS1 plus a separator (any case), else None."""
    match = _SRS_TAG.match(local)
    return None if match is None else int(match.group(1))
