# Shared helpers for the peer cross-checks: tools, pinned clocks, sender corpus, tcp_table.
"""Helpers for cross-checking srsd against real SRS implementations.

The peers are Debian's Mail::SRS 0.31 (``libmail-srs-perl``) and postsrsd 1.10, both run
with their clock pinned by libfaketime (Debian ``faketime``). What they are expected to
agree on, and where srsd deliberately differs, is ``docs/srs-format.md``; how to
drive them is ``docs/srs-libraries.md`` §4-§6.

Everything here works on ``bytes``; the corpus is deterministic (fixed seed).
"""

from __future__ import annotations

import calendar
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MAILSRS_SCRIPT = HERE / "mailsrs.pl"
DOMAIN = b"forwarder.test"
#: First secret signs, both verify (key rotation), in every implementation.
SECRETS = (b"Peer-Secret-1", b"Peer-Secret-0")
#: The main pinned instant: 2024-01-01 12:00:00 UTC, day stamp "IL".
PINNED = "2024-01-01 12:00:00"
DAY = 86400
#: Every bounded wait in the peer tests (seconds).
TIMEOUT = 30.0

LIBFAKETIME_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)

B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def epoch(when: str) -> float:
    """Unix seconds of a ``YYYY-MM-DD hh:mm:ss`` UTC date."""
    return float(calendar.timegm(time.strptime(when, "%Y-%m-%d %H:%M:%S")))


def day_stamp(now: float) -> bytes:
    """The SRS day stamp, computed here independently of srsd (spec: ``TT``)."""
    day = int(now // DAY)
    return bytes((B32[(day >> 5) & 31], B32[day & 31]))


# -- the peers must be installed: fail loudly, never skip -------------------------------


def libfaketime() -> str:
    """Path of libfaketime.so.1; fails the test if the ``faketime`` package is missing."""
    for path in LIBFAKETIME_CANDIDATES:
        if Path(path).exists():
            return path
    pytest.fail(
        "libfaketime not found (tried " + ", ".join(LIBFAKETIME_CANDIDATES) + "): "
        "install Debian's 'faketime' package; the peer tests need a pinned clock",
        pytrace=False,
    )


def require_mailsrs() -> str:
    """Path of perl, after checking that Mail::SRS 0.31 loads; fails otherwise."""
    perl = shutil.which("perl")
    if perl is None:
        pytest.fail("perl not found: install 'perl' and 'libmail-srs-perl'", pytrace=False)
    probe = subprocess.run(
        [perl, "-MMail::SRS::Guarded", "-e", "print $Mail::SRS::VERSION"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(
            "perl cannot load Mail::SRS::Guarded: install Debian's 'libmail-srs-perl'\n"
            + probe.stderr.decode(errors="replace"),
            pytrace=False,
        )
    if probe.stdout.strip() != b"0.31":
        pytest.fail(f"expected Mail::SRS 0.31, found {probe.stdout!r}", pytrace=False)
    return perl


def require_postsrsd() -> str:
    """Path of postsrsd 1.x; fails the test if it is missing."""
    path = shutil.which("postsrsd") or next(
        (p for p in ("/usr/sbin/postsrsd", "/sbin/postsrsd") if Path(p).exists()), None
    )
    if path is None:
        pytest.fail("postsrsd not found: install Debian's 'postsrsd' (1.10)", pytrace=False)
    return path


def faketime_vars(when: str, *, frozen: bool) -> dict[str, str]:
    """Environment variables that pin a child's wall clock to ``when`` (UTC).

    ``frozen`` stops the clock (fine for a short batch run); otherwise it starts at
    ``when`` and ticks (servers). The monotonic clock stays real, so timeouts work.
    """
    return {
        "TZ": "UTC",
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": when if frozen else "@" + when,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def faketime_env(when: str, *, frozen: bool) -> dict[str, str]:
    """The whole environment for a child with its clock pinned (see :func:`faketime_vars`)."""
    return {**os.environ, **faketime_vars(when, frozen=frozen)}


# -- Mail::SRS -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One peer answer: ``ok`` and the value, or not ok and an error text."""

    ok: bool
    value: bytes


def run_mailsrs(
    requests: Sequence[tuple[str, bytes]],
    when: str,
    secrets: Sequence[bytes] = SECRETS,
    domain: bytes = DOMAIN,
) -> list[Answer]:
    """Run Mail::SRS::Guarded once over a batch of ``(op, address)`` requests.

    ``op`` is ``F`` (forward), ``R`` (reverse) or ``T`` (today's stamp). The clock is
    frozen at ``when`` by libfaketime. Returns one :class:`Answer` per request.
    """
    perl = require_mailsrs()
    for _, arg in requests:
        if b"\n" in arg:
            raise ValueError(f"a request cannot hold a newline: {arg!r}")
    stdin = b"".join(op.encode() + b" " + arg + b"\n" for op, arg in requests)
    proc = subprocess.run(
        [perl, str(MAILSRS_SCRIPT), domain.decode(), *(s.hex() for s in secrets)],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=faketime_env(when, frozen=True),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mailsrs.pl failed ({proc.returncode}): {proc.stderr!r}")
    lines = proc.stdout.split(b"\n")
    if lines[-1] != b"" or len(lines) - 1 != len(requests):
        raise RuntimeError(f"mailsrs.pl gave {len(lines) - 1} lines for {len(requests)}")
    answers = []
    for line in lines[:-1]:
        status, _, value = line.partition(b" ")
        answers.append(Answer(status == b"OK", value))
    return answers


# -- the sender corpus -----------------------------------------------------------------

_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_ALNUM = _LOWER + b"0123456789"
_ATEXT_SPECIALS = b"!#$%&'*/?^_`{|}~-"
_UTF8_PIECES = [s.encode() for s in ("ä", "ß", "Ä", "ü", "é", "Ж", "ж", "日本", "ø", "İ", "😀")]
_TLDS = (b"example", b"test", b"org", b"com", b"net", b"co.uk")


def _word(rng: random.Random, alphabet: bytes, lo: int, hi: int) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _domain(rng: random.Random) -> bytes:
    labels = [_word(rng, _ALNUM, 1, 10) for _ in range(rng.randint(1, 3))]
    return b".".join([*labels, rng.choice(_TLDS)])


def _srs0_local(rng: random.Random, *, tag: bytes = b"SRS0") -> bytes:
    sep = bytes([rng.choice(b"=+-")])
    fields = [
        _word(rng, B64, 4, 4),
        _word(rng, B32, 2, 2),
        _domain(rng),
        _word(rng, _ALNUM + b".+=", 1, 12),
    ]
    return tag + sep + b"=".join(fields)


def _mixed_case(rng: random.Random, data: bytes) -> bytes:
    return bytes(
        b ^ 0x20 if chr(b).isalpha() and b < 0x80 and rng.random() < 0.5 else b for b in data
    )


def sender_corpus(seed: int = 20240101) -> list[tuple[str, bytes]]:
    """A few hundred ``(category, sender)`` pairs, deterministic for a given seed.

    Categories that every implementation must agree on come first; the ones where srsd
    deliberately differs (see :func:`deliberate_difference`) are in the corpus too, so
    that the exclusion rules are exercised and their documented behaviour asserted.
    No sender contains LF, CR or NUL (the line protocols cannot carry them).
    """
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []

    def add(category: str, local: bytes, host: bytes) -> None:
        out.append((category, local + b"@" + host))

    for _ in range(60):
        add("plain", _word(rng, _ALNUM, 1, 20), _domain(rng))
    for _ in range(25):
        tags = b"+".join(_word(rng, _ALNUM + b"-_", 1, 8) for _ in range(rng.randint(1, 3)))
        add("plus", _word(rng, _ALNUM, 1, 10) + b"+" + tags, _domain(rng))
    for _ in range(25):
        parts = [_word(rng, _ALNUM, 0, 6) for _ in range(rng.randint(2, 4))]
        add("equals", b"=".join(parts) or b"=", _domain(rng))
    for _ in range(20):
        parts = [_word(rng, _ALNUM, 1, 8) for _ in range(rng.randint(2, 4))]
        local = b".".join(parts)
        if rng.random() < 0.2:  # not a dot-atom, but unquoted: plain bytes everywhere
            local = rng.choice((b".", b"")) + local.replace(b".", b"..", 1) + b"."
        add("dots", local, _domain(rng))
    for _ in range(25):
        local = _mixed_case(rng, _word(rng, _LOWER + b".+", 1, 14))
        add(
            "case",
            local or b"X",
            _mixed_case(rng, _domain(rng)).upper()
            if rng.random() < 0.3
            else _mixed_case(rng, _domain(rng)),
        )
    for _ in range(20):
        add("specials", _word(rng, _ALNUM + _ATEXT_SPECIALS, 1, 12), _domain(rng))
    for stray in (b'a"b', b'"ab', b'ab"', b'"a"b"', b"a\\b", b'"', b'x"y"z'):
        add("stray-quotes", stray, _domain(rng))  # not quoted-strings: plain bytes
    for _ in range(30):
        pieces = [rng.choice(_UTF8_PIECES) for _ in range(rng.randint(1, 3))]
        local = _word(rng, _ALNUM, 0, 4) + b"".join(pieces) + _word(rng, _ALNUM, 0, 4)
        host = _domain(rng)
        if rng.random() < 0.5:
            host = rng.choice(_UTF8_PIECES) + b"-" + host
        add("utf8", local, host)
    for _ in range(20):
        raw = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 4)))
        local = _word(rng, _ALNUM, 0, 4) + raw + _word(rng, _ALNUM, 0, 4)
        host = _domain(rng)
        if rng.random() < 0.4:
            host = bytes(rng.randrange(0x80, 0x100) for _ in range(2)) + b"." + host
        add("non-utf8", local, host)
    for local in (b"a b", b"tab\there", b"ctl\x01x", b"del\x7f", b" lead", b"trail "):
        add("controls", local, _domain(rng))
    for _ in range(30):
        tag = rng.choice((b"SRS0", b"srs0", b"Srs0"))
        local = _srs0_local(rng, tag=tag)
        if rng.random() < 0.15:  # an SRS0 that is not well formed is still someone's
            local = tag + bytes([rng.choice(b"=+-")]) + _word(rng, _ALNUM, 0, 6)
        add("srs0-foreign", local, _domain(rng))
    for _ in range(30):
        tag = rng.choice((b"SRS1", b"srs1"))
        sep = bytes([rng.choice(b"=+-")])
        opaque = _srs0_local(rng)[4:]  # starts with that hop's separator
        local = tag + sep + _word(rng, B64, 4, 4) + b"=" + _domain(rng) + b"=" + opaque
        add("srs1-foreign", local, _domain(rng))
    for _ in range(5):
        add(
            "long",
            _word(rng, _ALNUM + b".", 40, 120),
            b".".join(_word(rng, _ALNUM, 20, 60) for _ in range(4)) + b".example",
        )
    for _ in range(3):
        add("empty-local", b"", _domain(rng))
    for local in (b"SRS0", b"srs1", b"SRS0x", b"SRS2=a=b", b"SRS", b"SRS0_a=b"):
        add("srs-lookalike", local, _domain(rng))

    # -- where srsd deliberately differs (see deliberate_difference) --
    for local in (
        b'"a b"',
        b'"john doe"',
        b'"a\\"b"',
        b'"x@y"',
        b'"first.last"',
        b'"\\\\"',
        b'"a=b c"',
        b'"SRS0=abcd=IL=ex.org=u v"',
        # an address literal's "[", "]", ":" in a quoted sender (issue 18)
        b'"a:b"',
        b'"[192.0.2.1]"',
        b'"a]b[c"',
        b'"IPv6:2001:db8::1"',
    ):
        add("quoted", local, _domain(rng))
    for local in (b"a@b", b"x@y@z", b"SRS0=abcd=IL=ex.org=a@b", b"user@example.com"):
        add("at-in-local", local, _domain(rng))
    for local in (
        b"SRS1=",
        b"SRS1=abc",
        b"SRS1=h=",
        b"SRS1=h=hop.example",
        b"SRS1==hop=",
        b"SRS1=h=hop.example=",
        b"SRS1=h=hop.example=user",
        b"srs1+h=hop=x=y",
    ):
        add("malformed-srs1", local, _domain(rng))
    for sender in (b"user@", b"SRS0=abcd=IL=ex.org=u@", b"@"):
        out.append(("empty-domain", sender))
    for sender in (
        b"user@forwarder.test",
        b"User@FORWARDER.test",
        b"a.b+c@Forwarder.Test",
        b"SRS0=zzzz=IL=ex.org=u@forwarder.test",
    ):
        out.append(("own-domain", sender))
    return out


# -- where srsd deliberately differs ----------------------------------------------------

# RFC 5322 quoted-string (no folding white space): written out here, independently of srsd.
_QUOTED_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"\Z', re.DOTALL)


def is_quoted_string(local: bytes) -> bool:
    """True for a well-formed RFC 5322 quoted-string local part."""
    return bool(_QUOTED_STRING.match(local))


def srs_tag(local: bytes) -> int | None:
    """0/1 for ``SRS0``/``SRS1`` (any case) followed by one of ``=+-``; else None."""
    if len(local) >= 5 and local[:3].upper() == b"SRS" and local[3:4] in (b"0", b"1"):
        return local[3] - 0x30 if local[4] in b"=+-" else None
    return None


def srs1_malformed(local: bytes) -> bool:
    """SRS1 local part whose hop or opaque part is empty, or opaque lacks a separator."""
    fields = local[5:].split(b"=", 2)
    return len(fields) < 3 or not fields[1] or not fields[2] or fields[2][0] not in b"=+-"


def deliberate_difference(sender: bytes, domain: bytes = DOMAIN) -> str | None:
    """The category of a sender on which srsd deliberately differs from Mail::SRS and
    postsrsd (``docs/srs-format.md``, "Where srsd deliberately differs"), else None.

    * ``quoted``: a well-formed quoted-string local part; srsd unquotes, hashes the
      unquoted form and re-quotes ("Quoted local parts"), the peers keep the quotes inside.
    * ``at-in-local``: the local part holds ``@``; srsd splits at the last ``@``
      (Mail::SRS refuses such senders, postsrsd splits at the first ``@``).
    * ``malformed-srs1``: ``SRS1`` + separator with an empty hop, an empty opaque part or
      an opaque part without a leading separator; srsd answers "not found", the peers
      produce garbage ("Malformed SRS1/SRS0 inputs are clean not-found answers").
    * ``empty-domain``: nothing after the last ``@``; srsd's policy does not rewrite it
      (no domain), Mail::SRS refuses it, postsrsd mints ``…==user@D`` (same bullet).
    * ``own-domain``: the sender is in the SRS domain; srsd's policy leaves it alone
      (Forward rule 1) by answering "not found"; the codec is not asked.
    """
    at = sender.rfind(b"@")
    local, host = sender[:at], sender[at + 1 :]
    if at < 0 or not host:
        return "empty-domain"
    if is_quoted_string(local):
        return "quoted"
    if b"@" in local:
        return "at-in-local"
    if host.lower() == domain.lower():
        return "own-domain"
    if srs_tag(local) == 1 and srs1_malformed(local):
        return "malformed-srs1"
    return None


def expected_reverse(sender: bytes) -> bytes:
    """What decoding the SRS address made for ``sender`` must give back.

    SRS0 (ordinary sender): the sender itself. SRS1 made from a foreign SRS0: that SRS0,
    with the tag written ``SRS0`` (every implementation rebuilds the tag in upper case).
    SRS1 made from a foreign SRS1: the first hop's SRS0 (bounces skip the middle hop).
    """
    at = sender.rfind(b"@")
    local, host = sender[:at], sender[at + 1 :]
    tag = srs_tag(local)
    if tag == 0:
        return b"SRS0" + local[4:] + b"@" + host
    if tag == 1:
        _hash, hop, opaque = local[5:].split(b"=", 2)
        return b"SRS0" + opaque + b"@" + hop
    return sender


def srsd_decoded(address: bytes) -> bytes:
    """``address`` as srsd answers a decode: an empty local part written ``""`` (README,
    "What srsd answers": ``""@origin.example`` is a mailbox, ``@origin.example`` is not);
    postsrsd and Mail::SRS give the bare ``@``."""
    return b'""' + address if address.startswith(b"@") else address


def _is_dot_atom(local: bytes) -> bool:
    atext = set(b"!#$%&'*+-/=?^_`{|}~0123456789") | set(range(0x80, 0x100))
    atext |= set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return bool(local) and all(atom and atext.issuperset(atom) for atom in local.split(b"."))


def canonical_address(sender: bytes) -> bytes:
    """``"first.last"@x`` and ``first.last@x`` are the same address; srsd quotes only
    what needs quoting (spec, "Quoted local parts"), so it gives back the latter."""
    at = sender.rfind(b"@")
    local = sender[:at]
    if is_quoted_string(local) and b"\\" not in local and _is_dot_atom(local[1:-1]):
        return local[1:-1] + sender[at:]
    return sender


def swap_alphabet(srs_address: bytes) -> bytes:
    """The same SRS address with its hash spelled in base64url (``+/`` to ``-_``)."""
    quote = srs_address[:1] if srs_address[:1] == b'"' else b""
    body = srs_address[len(quote) :]
    head, hash_and_rest = body[:5], body[5:]
    srs_hash, sep, rest = hash_and_rest.partition(b"=")
    return quote + head + srs_hash.translate(bytes.maketrans(b"+/", b"-_")) + sep + rest


def srs_hash_field(srs_address: bytes) -> bytes:
    """The hash field of an SRS address (between the tag separator and the next ``=``)."""
    body = srs_address[1:] if srs_address[:1] == b'"' else srs_address
    return body[5:].partition(b"=")[0]


# -- tcp_table (postfix tcp_table(5)) --------------------------------------------------


def tcp_encode(key: bytes) -> bytes:
    """%-encode a lookup key as Postfix does: ``%``, white space, controls, non-ASCII."""
    return b"".join(bytes([c]) if 0x20 < c < 0x7F and c != 0x25 else b"%%%02X" % c for c in key)


_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")


def tcp_decode(text: bytes) -> bytes:
    """Undo %-encoding in a reply text."""
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), text)


@dataclass(frozen=True)
class Reply:
    """A tcp_table reply: status code and %-decoded text."""

    code: int
    text: bytes
    raw: bytes = field(default=b"", compare=False)

    @classmethod
    def parse(cls, line: bytes) -> Reply:
        code, _, text = line.partition(b" ")
        if not code.isdigit():
            raise ValueError(f"not a tcp_table reply: {line!r}")
        return cls(int(code), tcp_decode(text), line)

    @property
    def found(self) -> bool:
        return self.code == 200

    def __str__(self) -> str:
        return f"{self.code} {self.text!r}"


class TcpTableClient:
    """A persistent tcp_table connection (as Postfix keeps one), bounded waits.

    A server may hang up after a reply (postsrsd does after "500 Invalid request"); the
    next request then opens a new connection.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = b""

    def get(self, key: bytes) -> Reply:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=TIMEOUT)
            self.buffer = b""
        self.sock.sendall(b"get " + tcp_encode(key) + b"\n")
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError(f"server closed the connection on {key!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        reply = Reply.parse(line)
        if reply.code == 500 and reply.text == b"Invalid request":
            self.close()
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def wait_accepting(ports: Iterable[int], proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait (bounded) until every port accepts a connection; fail if ``proc`` dies."""
    deadline = time.monotonic() + TIMEOUT
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {pending} within {TIMEOUT} s")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)
