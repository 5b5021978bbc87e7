# Fixtures for the real-Postfix tests: Postfix programs present, a running map server, SRS oracle.
"""Shared fixtures and helpers for ``tests/postfix``.

* ``postfix_programs`` (session, autouse): the tests here need Debian's ``postfix``; when
  ``postfix``/``postmap`` are missing every test FAILS with a clear message instead of being
  skipped, so that a broken CI image cannot pass silently.
* ``srsd_server`` (module): ``srsd serve`` on two free loopback ports (``SrsdProcess``).
* ``expected_srs0`` and friends: an independent oracle for the SRS addresses srsd must
  produce (HMAC-SHA1 over the lower-cased fields, base64url, first 4 characters), so the
  tests check exact bytes, not just shapes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate

import pytest

from tests.postfix.instance import PostfixInstance, backdate, find_program
from tests.server_process import SECRET, SrsdProcess

SRS_DOMAIN = "forwarder.test"
REQUIRED_PROGRAMS = ("postfix", "postmap", "postconf", "postqueue")
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True)
class PostfixPrograms:
    postfix: str
    postmap: str
    postconf: str
    postqueue: str


@pytest.fixture(scope="session", autouse=True)
def postfix_programs(tmp_path_factory: pytest.TempPathFactory) -> PostfixPrograms:
    """Fail (not skip) every test in this directory when Postfix is not installed."""
    found = {name: find_program(name) for name in REQUIRED_PROGRAMS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(
            f"tests/postfix need Debian's postfix, but {', '.join(missing)} "
            "cannot be found (on PATH or in /usr/sbin). Install it "
            "(DEBIAN_FRONTEND=noninteractive apt-get install -y postfix, 'No configuration') "
            "or deselect these tests with -m 'not postfix'.",
            pytrace=False,
        )
    programs = PostfixPrograms(**found)  # type: ignore[arg-type]
    # Every Postfix command wants a main.cf; Debian's "No configuration" install has none.
    confdir = tmp_path_factory.mktemp("postconf")
    (confdir / "main.cf").write_text("compatibility_level = 3.6\n")
    backdate(confdir / "main.cf")
    types = subprocess.run(
        [programs.postconf, "-c", str(confdir), "-m"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "tcp" not in types.stdout.split():
        pytest.fail(
            f"this Postfix has no tcp: lookup tables (postconf -m: {types.stdout.split()}, "
            f"{types.stderr.strip()})",
            pytrace=False,
        )
    return programs


@pytest.fixture(scope="module")
def srsd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SrsdProcess]:
    """``srsd serve --domain forwarder.test`` with the test secret, for one test module."""
    workdir = tmp_path_factory.mktemp("srsd")
    with SrsdProcess(workdir, domain=SRS_DOMAIN, secrets=(SECRET,)) as server:
        yield server


class SmtpClient:
    """Test messages into ``self.postfix``'s smtpd, one SMTP transaction each."""

    postfix: PostfixInstance
    author = "alice@origin.test"
    subject = "test"
    timeout = 30.0

    def message(self, token: str, to: str) -> bytes:
        """A message from :attr:`author` to ``to`` whose subject and body carry ``token``."""
        return (
            f"From: {self.author}\r\nTo: {to}\r\nSubject: {self.subject} {token}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: <{token}@client.test>\r\n\r\n"
            f"token {token}\r\n"
        ).encode()

    def send(self, sender: str, *recipients: str, token: str) -> tuple[int, bytes] | None:
        """One SMTP transaction; None when accepted, else the first refusal."""
        port = self.postfix.smtpd_port
        with smtplib.SMTP("127.0.0.1", port, timeout=self.timeout) as smtp:
            smtp.ehlo("client.test")
            code, text = smtp.mail(sender)
            if code != 250:
                return code, text
            for recipient in recipients:
                code, text = smtp.rcpt(recipient)
                if code not in (250, 251):
                    return code, text
            code, text = smtp.data(self.message(token, ", ".join(recipients)))
            return None if code == 250 else (code, text)


# -- the SRS oracle -----------------------------------------------------------------------


def canonical_maps_flow(forward_port: int, reverse_port: int, sink_port: int) -> dict[str, str]:
    """main.cf for mail through srsd's tcp_table maps, as README's "Postfix" section says:
    bob@SRS_DOMAIN is a virtual alias forwarding to carol@dest.test, and dest.test and
    origin.test are relayed to the SMTP sink on ``sink_port``."""
    relay = f"smtp:[127.0.0.1]:{sink_port}"
    return {
        "sender_canonical_maps": f"tcp:127.0.0.1:{forward_port}",
        "sender_canonical_classes": "envelope_sender",
        "recipient_canonical_maps": f"tcp:127.0.0.1:{reverse_port}",
        "recipient_canonical_classes": "envelope_recipient, header_recipient",
        "virtual_alias_domains": SRS_DOMAIN,
        "virtual_alias_maps": f"inline:{{ bob@{SRS_DOMAIN}=carol@dest.test }}",
        "transport_maps": f"inline:{{ dest.test={relay}, origin.test={relay} }}",
    }


def day_stamp(when: float) -> str:
    """The two-character base32 day stamp for Unix time ``when``."""
    day = int(when // 86400)
    return B32[(day >> 5) & 31] + B32[day & 31]


def stamps_around(start: float) -> set[str]:
    """Day stamps valid for a test that started at ``start`` and runs now (midnight-proof)."""
    return {day_stamp(start), day_stamp(time.time())}


def srs_hash(*fields: str | bytes, secret: bytes = SECRET) -> str:
    """The first 4 characters of base64url(HMAC-SHA1(secret, lc(f1) + lc(f2) + ...)).

    srsd's default hash alphabet is base64url (``-``/``_`` instead of ``+``/``/``).
    """
    message = b"".join(
        (f.encode("utf-8") if isinstance(f, str) else f).translate(_ASCII_LOWER) for f in fields
    )
    digest = hmac.new(secret, message, hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest)[:4].decode("ascii")


_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def is_dot_atom(local: str) -> bool:
    """RFC 5322 dot-atom (with RFC 6531 UTF-8 atext)."""
    atext = set("!#$%&'*+-/=?^_`{|}~")
    parts = local.split(".")
    return all(p and all(c.isalnum() or c in atext or ord(c) > 127 for c in p) for p in parts)


def expected_srs0(
    local: str, host: str, stamp: str, *, domain: str = SRS_DOMAIN, quoted: bool = False
) -> str:
    """What srsd must answer for ``local@host`` (``local`` unquoted) on day ``stamp``.

    ``quoted``: the SRS local part is quoted as a whole when it is not a dot-atom (srsd's
    rule for quoted senders, ``docs/srs-format.md``).
    """
    srs_local = f"SRS0={srs_hash(stamp, host, local)}={stamp}={host}={local}"
    if quoted and not is_dot_atom(srs_local):
        escaped = srs_local.replace("\\", "\\\\").replace('"', '\\"')
        srs_local = f'"{escaped}"'
    return f"{srs_local}@{domain}"


def expected_srs0_candidates(
    local: str, host: str, start: float, *, quoted: bool = False
) -> set[str]:
    """:func:`expected_srs0` for the day stamps of a test that started at ``start``."""
    return {expected_srs0(local, host, s, quoted=quoted) for s in stamps_around(start)}


def tamper_hash(srs_address: str) -> str:
    """``srs_address`` with the first hash character replaced by a different one.

    The hash is compared case-insensitively with ``-``=``+`` and ``_``=``/``, so the new
    character differs from the old one in all of these spellings.
    """
    prefix = srs_address.index("SRS0=") + len("SRS0=")
    old = srs_address[prefix]
    new = "x" if old.lower() != "x" else "y"
    return srs_address[:prefix] + new + srs_address[prefix + 1 :]
