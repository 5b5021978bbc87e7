# Cross-checks srsd's codec against pysrs 1.0.3 from PyPI, and the pysrs faults README cites.
"""srsd against pysrs, the SRS library Python users know first (README, "Why not pysrs").

pysrs comes from PyPI (``pysrs==1.0.3`` in the ``test`` extra: the latest release there).
It installs and imports on Python 3.11, but every rewrite fails: it calls
``base64.encodestring``, which Python 3.9 removed. The smallest shim that makes it work is
one line, applied here for the duration of each test (:func:`shim`)::

    base64.encodestring = base64.encodebytes

With it, and both sides given the same secrets, the same clock (pysrs reads the module
global ``SRS.Base.time``; srsd's codec takes ``now``), the same hash length and separator,
for every sender of the shared corpus (``tests.peers.sender_corpus``) not excluded below:

* pysrs and srsd (standard base64 alphabet) mint the same bytes, SRS0 and SRS1;
* srsd decodes what pysrs mints, and pysrs decodes what srsd mints, to the original
  (an SRS1 to the previous hop's SRS0, :func:`tests.peers.expected_reverse`; srsd writes
  an empty local part ``""``, :func:`tests.peers.srsd_decoded`).

Excluded, and what happens to them asserted in :func:`test_excluded_senders`:

* senders that are not UTF-8: pysrs takes ``str`` only and cannot hash them;
* local parts that begin and end with ``"`` where the two quoting rules differ: pysrs
  strips the outer quotes and quotes the whole SRS local part; srsd unquotes an RFC 5322
  quoted-string (escapes resolved) and quotes only what is not a dot-atom (spec, "Quoted
  local parts"). They agree on quoted strings without backslashes that need their quotes;
* srsd's other deliberate differences (own domain, malformed SRS1, no domain: policy
  decisions asserted against Mail::SRS in ``test_mailsrs.py``).
"""

from __future__ import annotations

import base64
import linecache
import subprocess
import sys
import types
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from srsd.srs.codec import Alphabet, BadHash, Codec, Malformed, SRSError
from tests.peers import (
    DOMAIN,
    PINNED,
    SECRETS,
    TIMEOUT,
    canonical_address,
    deliberate_difference,
    epoch,
    expected_reverse,
    is_quoted_string,
    sender_corpus,
    srsd_decoded,
)

pytestmark = pytest.mark.peer

NOW = epoch(PINNED)
PYSRS_VERSION = "1.0.3"
#: (hash length, separator) pairs both sides are configured with.
CONFIGS = [(4, "="), (8, "+")]
#: Corpus senders the comparison must cover at least (299 of the corpus's 339 today): a
#: guard against a corpus or exclusion change that would leave little to compare.
MIN_COMPARED = 290


@pytest.fixture(autouse=True)
def shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-line shim that makes PyPI's pysrs 1.0.3 work on Python >= 3.9."""
    monkeypatch.setattr(base64, "encodestring", base64.encodebytes, raising=False)


@pytest.fixture
def pysrs(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The ``SRS`` package of pysrs 1.0.3, its clock pinned to ``PINNED``; fails (never
    skips) when it is not installed."""
    try:
        version = metadata.version("pysrs")
        import SRS  # pysrs's top-level package
        import SRS.Base
    except (metadata.PackageNotFoundError, ImportError) as err:
        pytest.fail(
            f"pysrs is not installed ({err}): pip install -e '.[test]' installs "
            f"pysrs=={PYSRS_VERSION} from PyPI",
            pytrace=False,
        )
    if version != PYSRS_VERSION:
        pytest.fail(
            f"expected pysrs {PYSRS_VERSION} (PyPI's latest), found {version}", pytrace=False
        )
    monkeypatch.setattr(SRS.Base, "time", types.SimpleNamespace(time=lambda: NOW))
    yield SRS


def make_pysrs(srs: types.ModuleType, hash_length: int = 4, separator: str = "=") -> object:
    return srs.new(
        secret=[s.decode() for s in SECRETS],
        hashlength=hash_length,
        hashmin=hash_length,
        separator=separator,
    )


def make_codec(hash_length: int = 4, separator: str = "=", domain: bytes = DOMAIN) -> Codec:
    return Codec(
        SECRETS,
        domain,
        hash_length=hash_length,
        hash_min=hash_length,
        separator=separator.encode(),
        alphabet=Alphabet.BASE64,
    )


def quoting_differs(local: bytes) -> bool:
    """True when pysrs's quoting rule and srsd's give different bytes for ``local``."""
    if not (local.startswith(b'"') and local.endswith(b'"')):
        return False  # pysrs quotes only what begins and ends with a quote
    plain = local + b"@x"
    return not (
        is_quoted_string(local) and b"\\" not in local and canonical_address(plain) == plain
    )


def excluded(sender: bytes) -> str | None:
    """Why ``sender`` is left out of the byte comparison (module docstring), else None."""
    try:
        sender.decode("utf-8")
    except UnicodeDecodeError:
        return "not-utf8"
    difference = deliberate_difference(sender)
    if difference not in (None, "quoted", "at-in-local"):
        return difference
    if quoting_differs(sender[: sender.rfind(b"@")]):
        return "quoting"
    return None


def attempt(call: object, *args: object) -> str:
    """``call(*args)`` as text, or the name of the exception it raised."""
    try:
        result = call(*args)  # type: ignore[operator]
    except (SRSError, AssertionError, ValueError) as err:
        return f"<{type(err).__name__}>"
    return result.decode() if isinstance(result, bytes) else str(result)


@pytest.mark.parametrize(("hash_length", "separator"), CONFIGS)
def test_same_bytes_and_each_decodes_the_other(
    pysrs: types.ModuleType, hash_length: int, separator: str
) -> None:
    theirs = make_pysrs(pysrs, hash_length, separator)
    ours = make_codec(hash_length, separator)
    failures, compared, tags = [], 0, set()
    for category, sender in sender_corpus():
        if excluded(sender):
            continue
        compared += 1
        text = sender.decode()
        expected = expected_reverse(sender)
        minted_by_pysrs = theirs.forward(text, DOMAIN.decode())  # type: ignore[attr-defined]
        minted_by_srsd = ours.forward(sender, NOW).decode()
        tags.add(minted_by_srsd.lstrip('"')[:4])
        decoded_by_srsd = attempt(ours.reverse, minted_by_pysrs.encode(), NOW)
        decoded_by_pysrs = attempt(theirs.reverse, minted_by_srsd)  # type: ignore[attr-defined]
        if (minted_by_pysrs, decoded_by_srsd, decoded_by_pysrs) != (
            minted_by_srsd,
            srsd_decoded(expected).decode(),
            expected.decode(),
        ):
            failures.append(
                (
                    category,
                    sender,
                    minted_by_pysrs,
                    minted_by_srsd,
                    decoded_by_srsd,
                    decoded_by_pysrs,
                )
            )
    assert compared >= MIN_COMPARED
    assert tags == {"SRS0", "SRS1"}
    assert failures == []


@pytest.mark.parametrize("first", ["pysrs", "srsd"])
def test_srs1_chain_across_both(pysrs: types.ModuleType, first: str) -> None:
    """hop1 mints SRS0, hop2 (the other library) turns it into SRS1; the bounce goes back
    through hop2 to hop1's SRS0 and hop1 decodes that to the original sender."""
    sender, hop1, hop2 = "Alice.Smith+tag@origin.example", "hop1.example", "hop2.example"

    def pysrs_side(hop: str) -> tuple[object, object]:
        srs = make_pysrs(pysrs)
        return (
            lambda a: srs.forward(a, hop),  # type: ignore[attr-defined]
            srs.reverse,
        )  # type: ignore[attr-defined]

    def srsd_side(hop: str) -> tuple[object, object]:
        codec = make_codec(domain=hop.encode())
        return (
            lambda a: codec.forward(a.encode(), NOW).decode(),
            lambda a: codec.reverse(a.encode(), NOW).decode(),
        )

    sides = [pysrs_side, srsd_side] if first == "pysrs" else [srsd_side, pysrs_side]
    forward1, reverse1 = sides[0](hop1)
    forward2, reverse2 = sides[1](hop2)
    srs0 = forward1(sender)  # type: ignore[operator]
    srs1 = forward2(srs0)  # type: ignore[operator]
    assert srs0.startswith("SRS0=") and srs0.endswith("@" + hop1)
    assert srs1.startswith("SRS1=") and srs1.endswith("@" + hop2)
    assert reverse2(srs1) == srs0  # type: ignore[operator]
    assert reverse1(srs0) == sender  # type: ignore[operator]


def test_excluded_senders(pysrs: types.ModuleType) -> None:
    """What the exclusions do: pysrs cannot take non-UTF-8 senders at all; where the quoting
    rules differ the bytes differ, and srsd decodes its own address to the sender."""
    theirs, ours = make_pysrs(pysrs), make_codec()
    reasons: dict[str, int] = {}
    for _, sender in sender_corpus():
        reason = excluded(sender)
        if reason is None:
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        text = sender.decode("utf-8", "surrogateescape")
        if reason == "not-utf8":
            with pytest.raises(UnicodeEncodeError):
                theirs.forward(text, DOMAIN.decode())  # type: ignore[attr-defined]
        elif reason == "quoting":
            minted_by_pysrs = theirs.forward(text, DOMAIN.decode())  # type: ignore[attr-defined]
            minted_by_srsd = ours.forward(sender, NOW)
            assert minted_by_pysrs.encode() != minted_by_srsd
            assert ours.reverse(minted_by_srsd, NOW) == canonical_address(sender)
    assert {"not-utf8", "quoting"} <= reasons.keys()


def test_pypi_pysrs_fails_without_the_shim(
    pysrs: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: PyPI's pysrs imports, but every rewrite raises on Python >= 3.9."""
    assert sys.version_info >= (3, 9)
    monkeypatch.delattr(base64, "encodestring")
    theirs = make_pysrs(pysrs)
    with pytest.raises(AttributeError, match="encodestring"):
        theirs.forward("user@example.com", DOMAIN.decode())  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="encodestring"):
        theirs.reverse("SRS0=abcd=IL=example.com=user@forwarder.test")  # type: ignore[attr-defined]


# pysrs's reverse of a forged address (hash 0000), shim applied, clock pinned; prints the result.
_FORGED = "SRS0=0000=IL=example.com=user@forwarder.test"
_FORGERY_SCRIPT = f"""
import base64, types
base64.encodestring = base64.encodebytes
import SRS, SRS.Base
SRS.Base.time = types.SimpleNamespace(time=lambda: {NOW!r})
srs = SRS.new(secret={[s.decode() for s in SECRETS]!r})
try:
    print(srs.reverse({_FORGED!r}))
except AssertionError as err:
    print("AssertionError:", err)
"""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "AssertionError: Invalid hash"),
        (["-O"], "user@example.com"),
    ],
)
def test_pysrs_checks_are_asserts(
    pysrs: types.ModuleType, flags: list[str], expected: str, tmp_path: Path
) -> None:
    """README: pysrs validates with ``assert``: under ``python -O`` a forged address
    reverses. srsd refuses it either way (``test_optimize.py`` runs srsd under -O).

    pysrs is compiled here from its source (``pycache_prefix``: an empty cache of its own),
    never taken from the .pyc files its install left: pip without ``wheel`` installs it the
    legacy way, and those ``.opt-1.pyc`` keep the asserts."""
    proc = subprocess.run(
        [sys.executable, "-X", f"pycache_prefix={tmp_path}", *flags, "-c", _FORGERY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert proc.stdout.strip() == expected
    with pytest.raises(BadHash):
        make_codec().reverse(_FORGED.encode(), NOW)


def _stamp_loop_count(srs: types.ModuleType, stamp: str) -> int:
    """How many times pysrs's ``timestamp_check`` runs its ``now += TICKSLOTS`` line for
    an address with a valid hash and ``stamp``; srsd must refuse the same address as
    malformed before any arithmetic."""
    theirs = make_pysrs(srs)
    host, user = "example.com", "user"
    signature = theirs.hash_create(stamp.encode(), host.encode(), user.encode())  # type: ignore[attr-defined]
    address = f"SRS0={signature.decode()}={stamp}={host}={user}@{DOMAIN.decode()}"
    with pytest.raises(Malformed):
        make_codec().reverse(address.encode(), NOW)
    code = srs.Base.Base.timestamp_check.__code__
    lines = {n for _, _, n in code.co_lines() if n is not None}
    loop_line = next(
        n for n in sorted(lines) if "now += TICKSLOTS" in linecache.getline(code.co_filename, n)
    )
    count = 0

    def tracer(frame: types.FrameType, event: str, _arg: object) -> object:
        nonlocal count
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == loop_line:
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        attempt(theirs.reverse, address)  # type: ignore[attr-defined]
    finally:
        sys.settrace(None)
    return count


def test_pysrs_stamp_check_loops_32_times_longer_per_character(pysrs: types.ModuleType) -> None:
    """README: pysrs accepts day stamps of any length and its check loops about 32**n/1024
    times for an n-character stamp (a valid hash needed first); srsd reads exactly two."""
    counts = {n: _stamp_loop_count(pysrs, "7" * n) for n in (3, 4, 5)}
    assert counts[3] >= 32**3 // 1024 - 1
    assert counts[4] >= 31 * counts[3]
    assert counts[5] >= 31 * counts[4]


def test_pysrs_rejects_the_base64url_spelling(pysrs: types.ModuleType) -> None:
    """srsd's default hash spelling (base64url, postsrsd >= 2.2.6's) is not pysrs's: an
    address whose hash holds ``-`` or ``_`` does not decode in pysrs (README), while srsd
    decodes both spellings."""
    theirs = make_pysrs(pysrs)
    url = Codec(SECRETS, DOMAIN)  # the default alphabet
    spelled_apart = 0
    for _, sender in sender_corpus():
        if excluded(sender):
            continue
        address = url.forward(sender, NOW)
        if address == make_codec().forward(sender, NOW):
            continue  # no "+" or "/" in this hash: both spellings agree
        spelled_apart += 1
        assert attempt(theirs.reverse, address.decode()) == "<AssertionError>"  # type: ignore[attr-defined]
        assert url.reverse(address, NOW) == srsd_decoded(expected_reverse(sender))
    assert spelled_apart > 0
