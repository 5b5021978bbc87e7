# Mail through a throw-away Postfix and srsd: main.cf for the maps, sending, waiting, an SRS oracle.
"""What the real-Postfix tests (``tests/postfix/``) share: :class:`MailFlow` (a running srsd,
SMTP sink and Postfix instance: send a message, wait for its delivery, look for map trouble in
Postfix's log), :func:`canonical_maps_flow` (main.cf for mail through srsd's tcp_table maps,
as README's "Postfix" section says), and an oracle for the SRS addresses srsd must produce
(:func:`expected_srs0`: HMAC-SHA1 over the lower-cased fields, base64url, first 4 characters),
so that the tests check exact bytes, not just shapes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import smtplib
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest

from srsd.config import settings
from srsd.config.postfix import Mode, wiring
from tests.harness.postfix import PostfixInstance
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SECRET, SrsdProcess

SRS_DOMAIN = "forwarder.test"


B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True)
class PostfixPrograms:
    postfix: str
    postmap: str
    postconf: str
    postqueue: str


def canonical_maps_flow(forward_port: int, reverse_port: int, sink_port: int) -> dict[str, str]:
    """main.cf for mail through srsd's tcp_table maps: the main.cf lines ``srsd
    postfix-config --mode canonical`` prints for these ports (README's "Postfix"), then
    bob@SRS_DOMAIN a virtual alias forwarding to carol@dest.test, and dest.test and
    origin.test relayed to the SMTP sink on ``sink_port``."""
    ports = {"forward_port": forward_port, "reverse_port": reverse_port}
    srsd = settings.load({"domain": SRS_DOMAIN, **ports}, environ={}, need_secrets=False)
    relay = f"smtp:[127.0.0.1]:{sink_port}"
    return {
        **{s.name: s.value for s in wiring(srsd, Mode.CANONICAL) if s.kind == "main"},
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


SMTP_TIMEOUT = 20.0


FIRST_WAIT = 3.0


DELIVERY_TIMEOUT = 20.0


MAP_TROUBLE = re.compile(
    r"warning: .*(TCP map|tcp:127\.0\.0\.1|lookup error|map lookup problem|"
    r"[Tt]emporary lookup failure|map nesting|non-address result|multi-valued)"
)


@dataclass
class MailFlow:
    """The running srsd, sink and Postfix, plus what has been sent through them."""

    srsd: SrsdProcess
    sink: SmtpSink
    postfix: PostfixInstance
    forwarded: dict[str, Delivery] = field(default_factory=dict)

    def diagnostics(self) -> str:
        deliveries = "\n".join(
            f"  MAIL FROM:<{d.mail_from}> RCPT TO:{list(d.rcpt_tos)} {d.mail_options}"
            for d in self.sink.deliveries
        )
        return (
            f"\n--- sink deliveries ---\n{deliveries or '  (none)'}\n"
            f"--- postqueue -p ---\n{self.postfix.queue()}\n"
            f"{self.postfix.diagnostics()}\n"
            f"--- srsd log ---\n{self.srsd.log()}"
        )

    def send(
        self, sender: str, recipient: str, *, token: str, utf8: bool = False
    ) -> tuple[int, bytes] | None:
        """Send one message; None when accepted, else the (code, text) of the refusal."""
        message = (
            f"From: {'MAILER-DAEMON@origin.test' if sender == '' else sender}\r\n"
            f"To: {recipient}\r\n"
            f"Subject: srsd mail-flow test {token}\r\n"
            f"Date: {formatdate()}\r\n"
            f"Message-ID: <{token}@client.test>\r\n"
            f"X-Test-Token: {token}\r\n"
            "\r\n"
            f"token {token}\r\n"
        ).encode()
        options = ["SMTPUTF8"] if utf8 else []
        with smtplib.SMTP("127.0.0.1", self.postfix.smtpd_port, timeout=SMTP_TIMEOUT) as smtp:
            smtp.ehlo("client.test")
            if utf8:
                assert smtp.has_extn("smtputf8"), "Postfix does not offer SMTPUTF8"
            code, text = smtp.mail(sender, options)
            if code != 250:
                return code, text
            code, text = smtp.rcpt(recipient)
            if code not in (250, 251):
                smtp.rset()
                return code, text
            code, text = smtp.data(message)
            if code != 250:
                return code, text
        return None

    def wait_for_token(self, token: str, timeout: float = DELIVERY_TIMEOUT) -> Delivery:
        """The delivery carrying ``token``; flush the queue once if it is slow; bounded."""
        match = self.sink.wait_for(lambda d: token in d.text(), min(FIRST_WAIT, timeout))
        if match is None:
            self.postfix.flush()
            match = self.sink.wait_for(lambda d: token in d.text(), timeout - FIRST_WAIT)
        if match is None:
            pytest.fail(
                f"no delivery with token {token} within {timeout} s" + self.diagnostics(),
                pytrace=False,
            )
        return match

    def assert_no_map_trouble(self, log_offset: int) -> None:
        trouble = [
            line
            for line in self.postfix.log()[log_offset:].splitlines()
            if MAP_TROUBLE.search(line)
        ]
        report = "\n".join(trouble)
        assert not trouble, f"Postfix had trouble with the srsd maps:\n{report}{self.diagnostics()}"

    def forward(self, sender: str, *, utf8: bool = False) -> Delivery:
        """Mail ``sender`` → bob@forwarder.test (cached per sender): the delivery to carol."""
        if sender not in self.forwarded:
            token = uuid.uuid4().hex
            refused = self.send(sender, f"bob@{SRS_DOMAIN}", token=token, utf8=utf8)
            assert refused is None, f"Postfix refused the mail: {refused}" + self.diagnostics()
            self.forwarded[sender] = self.wait_for_token(token)
        return self.forwarded[sender]


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
