# Interop of srsd with a real postsrsd 1.10 over tcp_table: same answers, each decodes the other.
"""srsd against Debian's postsrsd 1.10 (issue 3), both speaking tcp_table.

postsrsd runs from ``conftest.py`` (free loopback ports, clock pinned with libfaketime,
same secrets). srsd's answers come from :func:`srsd_side`; both use the pinned clock.
Two srsd configurations are checked:

* ``--hash-alphabet base64`` (``srsd_std``): byte-identical to postsrsd 1.x. For every
  sender and every SRS address of the corpus both must give the same answer (``200``
  with the same value byte for byte after %-decoding, or both ``500``; reason texts may
  differ), and each must decode what the other minted.
* the default base64url (``srsd_url``): it mints the same addresses with ``-``/``_`` for
  ``+``/``/`` in the hash. postsrsd 1.10 only knows ``+``/``/`` and rejects those hashes
  ("Hash invalid in SRS address."), so here only "srsd decodes postsrsd" must hold;
  postsrsd decodes srsd's address exactly when its hash has neither ``-`` nor ``_``
  (about 7 in 8 addresses). Both are asserted.

Where the two disagree, the disagreement is a named category in :data:`DIFFERENCES`, with
its reference (mostly ``docs/srs-format.md``, "Where srsd deliberately differs"),
and the exact behaviour of each side is asserted; nothing is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from srsd.srs.codec import Alphabet, Codec
from tests.harness.srsd_process import SrsdProcess, lookup
from tests.peers import (
    DAY,
    DOMAIN,
    PINNED,
    SECRETS,
    Reply,
    canonical_address,
    deliberate_difference,
    epoch,
    expected_reverse,
    faketime_vars,
    sender_corpus,
    srs1_malformed,
    srs_hash_field,
    srs_tag,
    srsd_decoded,
    swap_alphabet,
    tcp_encode,
)

pytestmark = pytest.mark.peer

NOW = epoch(PINNED)
SPEC = "srs.md"
DIFFERS = f'{SPEC} "Where srsd deliberately differs"'

# -- the srsd side ----------------------------------------------------------------------


class SrsdSide:
    """srsd's tcp_table answers: the real ``srsd serve``, one connection per lookup."""

    def __init__(self, server: SrsdProcess) -> None:
        self.server = server

    def forward(self, sender: bytes) -> Reply:
        return Reply.parse(lookup(self.server.forward_port, tcp_encode(sender)))

    def reverse(self, recipient: bytes) -> Reply:
        return Reply.parse(lookup(self.server.reverse_port, tcp_encode(recipient)))


def srsd_side(alphabet: Alphabet, workdir: Path) -> Iterator[SrsdSide]:
    """``srsd serve`` with the pinned clock (libfaketime, as postsrsd), the shared secrets
    and ``alphabet`` for new hashes; stopped at teardown."""
    server = SrsdProcess(
        workdir,
        domain=DOMAIN.decode(),
        secrets=SECRETS,
        extra_args=["--hash-alphabet", alphabet.value],
        env=faketime_vars(PINNED, frozen=False),
    )
    with server:
        yield SrsdSide(server)


@pytest.fixture(scope="module")
def srsd_std(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SrsdSide]:
    yield from srsd_side(Alphabet.BASE64, tmp_path_factory.mktemp("srsd-std"))


@pytest.fixture(scope="module")
def srsd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SrsdSide]:
    yield from srsd_side(Alphabet.BASE64URL, tmp_path_factory.mktemp("srsd-url"))


# -- documented disagreements -----------------------------------------------------------

Check = Callable[[Reply, Reply, bytes], bool]


@dataclass(frozen=True)
class Difference:
    """A documented category of disagreement: why, and what each side does exactly."""

    reference: str
    check: Check  # (postsrsd reply, srsd reply, key) -> the documented behaviour holds


def _is_500(reply: Reply) -> bool:
    return reply.code == 500


#: A control character (C0 or DEL): written out here, independently of srsd.
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")

DIFFERENCES: dict[str, Difference] = {
    # -- forward (sender_canonical_maps) --
    "own-domain": Difference(
        "sender in the SRS domain: postsrsd answers '200 <same address>', srsd '500' "
        f"(not rewritten); Postfix keeps the address either way ({SPEC} Forward rule 1; "
        "tcp_table(5): 500 = not found)",
        lambda p, s, key: p.code == 200 and p.text == key and _is_500(s),
    ),
    "quoted": Difference(
        f"{SPEC} 'Quoted local parts' and {DIFFERS} bullet 2: srsd unquotes, hashes and "
        "re-quotes; postsrsd keeps the quotes inside the SRS local part (or splits a "
        "quoted '@' at the first '@')",
        lambda p, s, key: p.code == 200 and s.code == 200 and p.text != s.text,
    ),
    "at-in-local": Difference(
        f"{DIFFERS} bullet 1: srsd splits at the last '@', postsrsd at the first",
        lambda p, s, key: p.code == 200 and s.code == 200 and p.text != s.text,
    ),
    "bare-srs-tag": Difference(
        f"{DIFFERS} bullet 3: a local part of exactly SRS0/SRS1 is not SRS for srsd (plain "
        "SRS0 wrapper); postsrsd takes it as SRS (SRS1 with an empty opaque part, or "
        "'No host in SRS1 address.')",
        lambda p, s, key: s.code == 200 and s.text.startswith(b"SRS0=") and p != s,
    ),
    "malformed-srs1": Difference(
        f"{DIFFERS} bullet 4: srsd answers 'not found'; postsrsd also does for an empty "
        "hop or opaque part, but re-signs an opaque part without a leading separator",
        lambda p, s, key: _is_500(s) and (p.code == 500 or p.text.startswith(b"SRS1=")),
    ),
    "control-character": Difference(
        "README 'What srsd answers' (issue 18): an address holding a control character (tab, "
        "DEL, ...) is refused by every srsd endpoint alike, '500 Control character in "
        "address'; postsrsd rewrites it",
        lambda p, s, key: p.code == 200 and s == Reply(500, b"Control character in address"),
    ),
    "empty-domain": Difference(
        f"{DIFFERS} bullet 4 (and srs-libraries.md section 7.5): srsd does not rewrite a "
        "sender with nothing after the last '@'; postsrsd mints 'SRS0=h=TT==user@D'",
        lambda p, s, key: _is_500(s) and p.code == 200 and b"==" in p.text,
    ),
    "postsrsd-buffer": Difference(
        f"not in {SPEC}: postsrsd 1.10's 1024-byte result buffer ('500 Buffer too small.', "
        "postsrsd.md section 1.4); srsd's limit is its 4096-byte reply",
        lambda p, s, key: p.code == 500 and p.text == b"Buffer too small." and s.code == 200,
    ),
    "url-hash": Difference(
        f"{SPEC} Notation (hash alphabet): srsd accepts both spellings on input, "
        "postsrsd 1.10 only '+' and '/' (so it does not see srsd's own base64url address "
        "as 'Already rewritten' and wraps it, or fails to decode it)",
        lambda p, s, key: (p.code == 200) != (s.code == 200),
    ),
    # -- reverse (recipient_canonical_maps) --
    "rev-quoted": Difference(
        f"{SPEC} 'Quoted local parts': srsd decodes its quoted form "
        "'\"SRS0=...=a b\"@D' (postsrsd: 'Not an SRS address.') and re-quotes the result of "
        "the unquoted internal form (postsrsd returns it unquoted)",
        lambda p, s, key: s.code == 200 and p != s,
    ),
    "rev-at-in-local": Difference(
        f"{DIFFERS} bullet 1: the original local part contains '@'; postsrsd cuts the SRS "
        "address at the first '@' and the hash fails",
        lambda p, s, key: s.code == 200 and p.code == 500,
    ),
    "rev-control-character": Difference(
        "README 'What srsd answers' (issue 18): postsrsd's SRS address of a sender holding a "
        "control character holds it too; srsd refuses it as every such address",
        lambda p, s, key: p.code == 200 and s == Reply(500, b"Control character in address"),
    ),
    "rev-no-domain": Difference(
        f"{DIFFERS} bullet 4 (srs-libraries.md section 7.6): an SRS address without '@' is "
        "malformed for srsd; postsrsd decodes the bare local part",
        lambda p, s, key: _is_500(s) and p.code == 200,
    ),
    "rev-malformed-srs1": Difference(
        f"{DIFFERS} bullet 4 and {SPEC} Reverse/SRS1: an SRS1 with an empty hop or opaque "
        "part, or an opaque part without a leading separator, is 'not found' for srsd; "
        "postsrsd refuses the empty parts but decodes a correctly signed SRS1 without the "
        "separator to garbage ('SRS0user@hop')",
        lambda p, s, key: _is_500(s) and (p.code == 500 or p.text.startswith(b"SRS0")),
    ),
    "rev-postsrsd-buffer": Difference(
        f"not in {SPEC}: the SRS address of a sender of about 1000 bytes; postsrsd 1.10 "
        "cannot mint it ('Buffer too small.') and refuses a request line over 1022 bytes "
        "('500 Invalid request', then hangs up: postsrsd.md section 2.5); srsd decodes it",
        lambda p, s, key: s.code == 200 and p.code == 500 and p.text == b"Invalid request",
    ),
    "rev-url-hash": Difference(
        f"{SPEC} Notation (hash alphabet): base64url hash; srsd accepts it, postsrsd 1.10 "
        "says 'Hash invalid in SRS address.'",
        lambda p, s, key: s.code == 200 and p.code == 500 and b"Hash invalid" in p.text,
    ),
    "rev-empty-local": Difference(
        "README 'What srsd answers' (issue 11): the original local part is empty; srsd "
        "answers '\"\"@host', a mailbox, postsrsd the bare '@host'",
        lambda p, s, key: p.found and s.code == 200 and s.text == b'""' + p.text,
    ),
    "rev-long-hash": Difference(
        f"not in {SPEC}: a hash field longer than 27 characters (more than a whole SHA-1 "
        "digest) is malformed for srsd; postsrsd compares the first 4 characters only",
        lambda p, s, key: _is_500(s) and p.code == 200,
    ),
}


def forward_difference(sender: bytes) -> str | None:
    """The documented category of disagreement for a sender, or None (must agree)."""
    if CONTROL.search(sender):
        return "control-character"
    category = deliberate_difference(sender)
    if category is not None:
        return category
    local = sender[: sender.rfind(b"@")]
    if local.upper() in (b"SRS0", b"SRS1"):
        return "bare-srs-tag"
    if len(sender) + len(b"SRS0=HHHH=TT==@") + len(DOMAIN) >= 1024:
        return "postsrsd-buffer"
    return None


def reverse_difference(address: bytes) -> str | None:
    """The documented category of disagreement for an SRS address to decode, or None."""
    if CONTROL.search(address):
        return "rev-control-character"
    if address.startswith(b'"'):
        return "rev-quoted"
    if len(b"get " + tcp_encode(address)) > 1022:
        return "rev-postsrsd-buffer"
    at = address.rfind(b"@")
    if at < 0:
        return "rev-no-domain" if srs_tag(address) is not None else None
    local = address[:at]
    tag = srs_tag(local)
    if tag is None:
        return None
    if b"@" in local:
        return "rev-at-in-local"
    if tag == 1 and srs1_malformed(local):
        return "rev-malformed-srs1"
    srs_hash = srs_hash_field(local)
    if len(srs_hash) > 27:
        return "rev-long-hash"
    if b"-" in srs_hash or b"_" in srs_hash:
        return "rev-url-hash"
    if tag == 0 and local[5:].split(b"=", 3)[3:] == [b""]:  # hash=TT=host=(empty user)
        return "rev-empty-local"
    return None


# -- the corpus -------------------------------------------------------------------------


def std_codec(secrets: tuple[bytes, ...] = SECRETS) -> Codec:
    return Codec(secrets, DOMAIN, alphabet=Alphabet.BASE64)


def sign(secret: bytes, *fields: bytes) -> bytes:
    """A full-length standard base64 HASH, computed here independently of srsd."""
    mac = hmac.new(secret, b"".join(fields).lower(), hashlib.sha1).digest()
    return base64.b64encode(mac).rstrip(b"=")


def _url_spelled_sender(codec: Codec) -> bytes:
    """The first probe sender whose SRS hash needs '+' or '/' (deterministic)."""
    for i in range(1000):
        sender = b"probe%d@example.org" % i
        if set(srs_hash_field(codec.forward(sender, NOW))) & set(b"+/"):
            return sender
    raise AssertionError("no probe sender with '+' or '/' in its hash")


def forward_corpus() -> list[tuple[str, bytes, str | None]]:
    """The shared sender corpus plus what only a server sees."""
    std = std_codec()
    url = Codec(SECRETS, DOMAIN, alphabet=Alphabet.BASE64URL)
    own = std.forward(b"alice@example.org", NOW)
    own1 = std.forward(b"SRS0=abcd=IL=orig.example=bob@hop1.example", NOW)
    old = std.forward(b"carol@example.org", NOW - 30 * DAY)
    url_own = url.forward(_url_spelled_sender(std), NOW)
    at = len(b"@" + DOMAIN)
    server_only: list[tuple[str, bytes, str | None]] = [
        # Our own fresh SRS address: postsrsd "500 Already rewritten", srsd "500".
        ("own-srs-fresh", own, None),
        ("own-srs-fresh", own[:-at] + b"@elsewhere.example", None),
        ("own-srs-fresh", own1[:-at] + b"@elsewhere.example", None),
        ("own-srs-fresh", own.lower()[:-at] + b"@ELSEWHERE.example", None),
        # Our own expired one at another domain: someone's SRS0 now, wrapped into SRS1.
        ("own-srs-expired", old[:-at] + b"@elsewhere.example", None),
        # ... and in our domain: postsrsd "200 <same>", srsd "500".
        ("own-srs-expired", old, "own-domain"),
        # srsd's own fresh address in its default alphabet ('-' or '_' in the hash): srsd
        # sees "already rewritten", postsrsd 1.10 cannot verify it and wraps it into SRS1.
        ("own-srs-url", url_own[:-at] + b"@elsewhere.example", "url-hash"),
        ("null", b"<>", None),
        ("null", b'""', None),
        ("no-at", b"postmaster", None),
        ("no-at", b"SRS0=abcd=IL=example.org=user", None),
        ("long", b"u" * 60 + b"@" + b"d" * 800 + b".example", None),
        ("over-long", b"u" * 60 + b"@" + b"d" * 930 + b".example", "postsrsd-buffer"),
    ]
    return [(c, s, forward_difference(s)) for c, s in sender_corpus()] + server_only


@dataclass
class Row:
    """One key asked to postsrsd and to srsd (both alphabets)."""

    kind: str  # "forward" or "reverse"
    category: str
    key: bytes
    difference: str | None
    postsrsd: Reply
    std: Reply
    url: Reply
    expected: bytes | None = None  # what srsd must decode to (reverse rows), if known

    def agree(self) -> bool:
        return self.postsrsd.code == self.std.code and (
            self.postsrsd.code != 200 or self.postsrsd.text == self.std.text
        )

    def __str__(self) -> str:
        return (
            f"[{self.kind} {self.category} {self.difference}] {self.key!r}: "
            f"postsrsd {self.postsrsd}, srsd {self.std}, srsd-url {self.url}"
        )


@dataclass
class Results:
    forward: list[Row] = field(default_factory=list)
    reverse: list[Row] = field(default_factory=list)
    # srsd-url minted address -> (postsrsd reply, the original it must decode to)
    url_minted: list[tuple[bytes, Reply, bytes]] = field(default_factory=list)


def crafted_reverse() -> list[tuple[str, bytes, bytes | None]]:
    """Hand-made SRS addresses: (category, address, what srsd must decode it to)."""
    std = std_codec()
    user = b"user@example.com"
    base = std.forward(user, NOW)
    h = srs_hash_field(base)
    tail = base[5 + len(h) :]  # "=IL=example.com=user@forwarder.test"
    s1 = SECRETS[0]
    srs0_foreign = b"SRS0=abcd=IL=orig.example=u@hop1.example"

    def srs0(stamp: bytes, host: bytes, local: bytes) -> bytes:
        fields = (sign(s1, stamp, host, local)[:4], stamp, host, local)
        return b"SRS0=" + b"=".join(fields) + b"@" + DOMAIN

    def srs1(hop: bytes, opaque: bytes) -> bytes:
        return b"SRS1=" + b"=".join((sign(s1, hop, opaque)[:4], hop, opaque)) + b"@" + DOMAIN

    out: list[tuple[str, bytes, bytes | None]] = []
    for days in (0, 1, 20, 21, 22, 23, 100, -1, -2, 1023, 1024, 1045, 1046):
        valid = 0 <= days % 1024 <= 21
        out.append(("age", std.forward(user, NOW - days * DAY), user if valid else None))
    out += [
        ("case", base.lower(), user.lower()),
        ("case", base.upper(), user.upper()),
        ("tampered", b"SRS0=" + bytes([h[0] ^ 1]) + h[1:] + tail, None),
        ("hash-short", b"SRS0=" + h[:3] + tail, None),
        ("hash-junk", b"SRS0=" + h + b"XYZ" + tail, user),
        ("hash-full", b"SRS0=" + sign(s1, b"IL", b"example.com", b"user") + tail, user),
        ("hash-long", b"SRS0=" + sign(s1, b"IL", b"example.com", b"user") + b"A" + tail, None),
        ("sep", b"SRS0+" + base[5:], user),
        ("sep", b"SRS0-" + base[5:], user),
        ("tag-case", b"srs0=" + base[5:], user),
        ("foreign-domain", base[: -len(DOMAIN)] + b"elsewhere.example", user),
        ("no-domain", base[: -len(b"@" + DOMAIN)], None),
        ("old-secret", std_codec((SECRETS[1],)).forward(user, NOW), user),
        ("unknown-secret", std_codec((b"Other-Secret",)).forward(user, NOW), None),
        ("ts-3", srs0(b"ILL", b"example.com", b"user"), None),
        ("ts-bad-char", srs0(b"I1", b"example.com", b"user"), None),
        ("ts-empty", srs0(b"", b"example.com", b"user"), None),
        ("empty-host", srs0(b"IL", b"", b"user"), b"user@"),
        ("empty-user", srs0(b"IL", b"example.com", b""), b"@example.com"),
        ("srs1", std.forward(srs0_foreign, NOW), srs0_foreign),
        ("srs1-hashless", b"SRS1=hop1.example==abcd=IL=orig.example=u@forwarder.test", None),
        ("srs1-malformed", srs1(b"hop1.example", b"user"), None),
        ("srs1-malformed", srs1(b"", b"=opaque"), None),
        ("srs1-malformed", srs1(b"hop1.example", b""), None),
        ("not-srs", user, None),
        ("not-srs", b"SRS2=abcd=IL=example.com=user@forwarder.test", None),
        ("not-srs", b"SRS0@forwarder.test", None),
        ("not-srs", b"SRS0_" + base[5:], None),
        ("not-srs", b" " + base, None),
        ("not-srs", b"srs", None),
    ]
    quoted = std.forward(b'"a b"@example.com', NOW)  # "SRS0=HHHH=IL=example.com=a b"@D
    out += [
        ("quoted", quoted, b'"a b"@example.com'),
        # smtpd also asks the internal (unquoted) form; both decode it to the internal
        # form of the original (srsd re-quotes only what arrived quoted).
        ("quoted-internal", quoted[1:].replace(b'"@', b"@"), b"a b@example.com"),
        ("at-in-local", std.forward(b"x@y@example.com", NOW), b"x@y@example.com"),
    ]
    return out


@pytest.fixture(scope="module")
def results(postsrsd, srsd_std: SrsdSide, srsd_url: SrsdSide) -> Results:  # type: ignore[no-untyped-def]
    """Ask every key of the corpus to postsrsd and to both srsd configurations, once."""
    res = Results()
    for category, sender, difference in forward_corpus():
        res.forward.append(
            Row(
                "forward",
                category,
                sender,
                difference,
                postsrsd.forward(sender),
                srsd_std.forward(sender),
                srsd_url.forward(sender),
            )
        )

    # Decode: what srsd minted, what postsrsd minted, and crafted addresses.
    to_reverse: dict[bytes, tuple[list[str], bytes | None]] = {}

    def decode(address: bytes, source: str, want: bytes | None) -> None:
        want = None if want is None else srsd_decoded(want)  # what srsd must answer
        sources, _ = to_reverse.setdefault(address, ([], want))
        sources.append(source)

    for row in res.forward:
        original = expected_reverse(row.key) if row.difference is None else None
        if row.std.found:
            want = original
            if row.difference == "quoted":
                want = canonical_address(row.key)
            elif row.difference == "at-in-local":
                want = expected_reverse(row.key)
            decode(row.std.text, "srsd-minted", want)
        if row.postsrsd.found and row.postsrsd.text != row.key:
            decode(row.postsrsd.text, "postsrsd-minted", original)
        if row.url.found and row.difference is None:
            res.url_minted.append(
                (
                    row.url.text,
                    postsrsd.reverse(row.url.text),
                    original if original is not None else row.key,
                )
            )
    for category, address, want in crafted_reverse():
        decode(address, "crafted-" + category, want)
    for address, (sources, want) in to_reverse.items():
        res.reverse.append(
            Row(
                "reverse",
                "+".join(sources),
                address,
                reverse_difference(address),
                postsrsd.reverse(address),
                srsd_std.reverse(address),
                srsd_url.reverse(address),
                want,
            )
        )
    return res


def report(problems: list[str], limit: int = 25) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems[:limit])


# -- the checks -------------------------------------------------------------------------


def test_postsrsd_is_pinned(postsrsd) -> None:  # type: ignore[no-untyped-def]
    """postsrsd runs at the pinned date with our secret (known answer, day stamp IL)."""
    reply = postsrsd.forward(b"user@example.com")
    assert reply.found and reply.text.split(b"=")[2] == b"IL", reply
    assert reply.text == std_codec().forward(b"user@example.com", NOW)


def test_forward_same_answers(results: Results) -> None:
    """Every sender not in a documented category gets the same answer from both."""
    problems = [str(r) for r in results.forward if r.difference is None and not r.agree()]
    assert not problems, report(problems)
    categories = Counter(r.category for r in results.forward if r.difference is None)
    assert sum(categories.values()) >= 300, categories
    both_found = sum(r.postsrsd.found for r in results.forward if r.difference is None)
    assert both_found >= 280


def test_forward_documented_differences(results: Results) -> None:
    """Each documented forward disagreement behaves exactly as documented."""
    problems = []
    seen: Counter[str] = Counter()
    for row in results.forward:
        if row.difference is None:
            continue
        seen[row.difference] += 1
        if not DIFFERENCES[row.difference].check(row.postsrsd, row.std, row.key):
            problems.append(str(row))
    assert not problems, report(problems)
    assert set(seen) == {
        "own-domain",
        "quoted",
        "at-in-local",
        "control-character",
        "bare-srs-tag",
        "malformed-srs1",
        "empty-domain",
        "postsrsd-buffer",
        "url-hash",
    }, seen


def test_server_level_agreements(results: Results) -> None:
    """Own fresh SRS, null senders and no-'@' keys: both 'not found'; expired: both wrap."""
    rows: dict[str, list[Row]] = {r.category: [] for r in results.forward}
    for r in results.forward:
        rows[r.category].append(r)
    for category in ("own-srs-fresh", "null", "no-at"):
        for r in rows[category]:
            assert r.postsrsd.code == 500 and r.std.code == 500 and r.url.code == 500, str(r)
    assert all(r.postsrsd.text == b"Already rewritten" for r in rows["own-srs-fresh"])
    for r in rows["own-srs-expired"] + rows["long"]:
        if r.difference is None:
            assert r.agree() and r.std.found, str(r)
    (url_own,) = rows["own-srs-url"]
    assert url_own.difference == "url-hash"
    assert url_own.std.code == 500 and url_own.postsrsd.found, str(url_own)


def test_default_alphabet_mints_the_same_addresses(results: Results) -> None:
    """srsd's base64url output is the base64 one with '-'/'_' for '+'/'/' in the hash."""
    problems = []
    for r in results.forward:
        if r.url.code != r.std.code or (r.std.found and r.url.text != swap_alphabet(r.std.text)):
            problems.append(str(r))
    assert not problems, report(problems)


def test_reverse_same_answers(results: Results) -> None:
    """Every SRS address not in a documented category decodes the same way in both,
    and to the original where the original is known."""
    problems = []
    for r in results.reverse:
        if r.difference is not None:
            continue
        if not r.agree():
            problems.append(str(r))
        elif r.expected is not None and r.std.text != r.expected:
            problems.append(f"{r} (want {r.expected!r})")
        elif r.expected is None and r.category.startswith("crafted") and r.std.found:
            problems.append(f"{r} (want not found)")
    assert not problems, report(problems)


def test_reverse_documented_differences(results: Results) -> None:
    """Each documented reverse disagreement behaves exactly as documented."""
    problems = []
    for r in results.reverse:
        if r.difference is None:
            continue
        ok = DIFFERENCES[r.difference].check(r.postsrsd, r.std, r.key)
        if not ok or (r.expected is not None and r.std.text != r.expected):
            problems.append(f"{r} (want {r.expected!r})")
    assert not problems, report(problems)


def test_srsd_decodes_postsrsd(results: Results) -> None:
    """Every address postsrsd minted for an ordinary sender decodes through srsd, with
    either alphabet setting, to the original."""
    rows = [
        r
        for r in results.reverse
        if "postsrsd-minted" in r.category.split("+") and r.expected is not None
    ]
    assert len(rows) >= 280
    problems = [str(r) for r in rows if r.std.text != r.expected or r.url.text != r.expected]
    assert not problems, report(problems)


def test_quoted_senders_minted_by_postsrsd_decode_as_before(results: Results) -> None:
    """postsrsd 1.10 keeps a quoted sender's quotes inside the SRS address it mints
    (``SRS0=…=x.example="a:b"@D``); srsd decodes that, with either alphabet setting, to the
    sender as it was given, as postsrsd does, also when the quoted-string holds an address
    literal's ``[``, ``]`` or ``:`` (issue 18: never ``"\\"a:b\\""@x.example``)."""
    minted = {
        r.postsrsd.text: r.key
        for r in results.forward
        if r.category == "quoted" and r.postsrsd.found and b"@" not in r.key[: r.key.rfind(b"@")]
    }
    literal = [key for key in minted.values() if re.search(rb"[\[\]:]", key)]
    assert len(literal) >= 4, minted
    rows = {r.key: r for r in results.reverse}
    problems = []
    for address, sender in minted.items():
        assert re.fullmatch(rb'SRS0=[^"]*="[^@]*"@forwarder\.test', address), address
        row = rows[address]
        if not (row.postsrsd.text == row.std.text == row.url.text == sender):
            problems.append(f"{row} (want {sender!r})")
    assert not problems, report(problems)


def test_postsrsd_decodes_srsd(results: Results) -> None:
    """Every address srsd (base64) minted for an ordinary sender decodes through postsrsd."""
    rows = [
        r
        for r in results.reverse
        if "srsd-minted" in r.category.split("+")
        and r.expected is not None
        and r.difference is None
    ]
    assert len(rows) >= 280
    problems = [str(r) for r in rows if not r.postsrsd.found or r.postsrsd.text != r.expected]
    assert not problems, report(problems)


def test_postsrsd_decodes_srsd_default_alphabet_only_without_url_characters(
    results: Results,
) -> None:
    """srsd's default (base64url) addresses: postsrsd 1.10 decodes exactly those whose
    hash has no '-' or '_'; the rest it rejects as 'Hash invalid' (documented limit)."""
    problems = []
    url_spelled = 0
    for address, reply, original in results.url_minted:
        if set(srs_hash_field(address)) & set(b"-_"):
            url_spelled += 1
            if reply.code != 500 or b"Hash invalid" not in reply.text:
                problems.append(f"{address!r}: postsrsd {reply}, want 500 Hash invalid")
        elif not reply.found or reply.text != original:
            problems.append(f"{address!r}: postsrsd {reply}, want {original!r}")
    assert not problems, report(problems)
    assert 0 < url_spelled < len(results.url_minted) // 2, url_spelled


def _escapes_upper(raw: bytes) -> bytes:
    return re.sub(rb"%[0-9a-fA-F]{2}", lambda m: m.group().upper(), raw)


def test_same_wire_encoding(results: Results) -> None:
    """Where both find a value, the reply lines are the same bytes on the wire too, but
    for the case of the hex digits (postsrsd '%e9', srsd '%E9' like Postfix; Postfix
    decodes either)."""
    rows = [r for r in results.forward + results.reverse if r.agree() and r.std.found]
    problems = [str(r) for r in rows if _escapes_upper(r.postsrsd.raw) != r.std.raw]
    assert not problems, report(problems)
    assert any(b"%" in r.std.raw for r in rows)


def test_both_srsd_alphabets_decode_alike(results: Results) -> None:
    """Both spellings are accepted on input, whatever the output setting."""
    problems = [str(r) for r in results.reverse if r.std != r.url]
    assert not problems, report(problems)


def test_summary(results: Results) -> None:
    """The counts add up (run with -s to see them): every key was asked, every disagreement
    has a name, and srsd's base64url hashes hold '-' or '_' as often as chance says."""
    lines = []
    for kind, rows in (("forward", results.forward), ("reverse", results.reverse)):
        agree = sum(r.agree() for r in rows)
        lines.append(f"{kind}: {len(rows)} keys, {agree} identical answers")
        for name, count in sorted(Counter(r.difference for r in rows if r.difference).items()):
            disagreeing = sum(not r.agree() for r in rows if r.difference == name)
            lines.append(f"  {name}: {count} keys, {disagreeing} disagree")
        assert len(rows) >= 300 and agree >= len(rows) // 2, lines
        assert [str(r) for r in rows if not r.agree() and r.difference is None] == []
    url = results.url_minted
    spelled = sum(bool(set(srs_hash_field(a)) & set(b"-_")) for a, _, _ in url)
    lines.append(f"srsd base64url minted: {len(url)}, of which {spelled} with '-'/'_'")
    print("\n".join(lines))
    # Each hash character is '-' or '_' with odds 2 in 64: a hash of n characters holds one
    # with odds 1 - (62/64)**n. The count must be within 5 standard deviations of that.
    odds = [1 - (62 / 64) ** len(srs_hash_field(a)) for a, _, _ in url]
    mean, spread = sum(odds), sum(p * (1 - p) for p in odds) ** 0.5
    assert len(url) >= 100 and abs(spelled - mean) <= 5 * spread, (spelled, mean, spread)
