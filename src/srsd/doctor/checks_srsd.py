# doctor's checks of srsd itself: endpoints answer their roles; the secret is private and in use.
"""Judge srsd's own side from :class:`EndpointFacts` and :class:`SecretFacts`.

Each function returns :class:`Result` objects and does no I/O; the wording is the
postmaster's (what breaks for mail), the fix is exact.
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Sequence
from pathlib import PurePosixPath

from srsd.config.settings import Settings
from srsd.doctor.facts import CredentialFacts, EndpointFacts, EndpointRole, SecretFacts
from srsd.doctor.result import FixKind, Result
from srsd.host.health import PROBE
from srsd.srs.codec import Codec, SRSError

#: Bits of entropy below which a secret is reported as weak (16 bytes).
MIN_SECRET_BITS = 128
_NOBODY = ("nobody", "nogroup")
_ALPHABETS = tuple(
    frozenset(a)
    for a in (
        string.digits,
        "0123456789abcdef",
        string.ascii_lowercase + string.digits,
        string.ascii_letters + string.digits,
        string.ascii_letters + string.digits + "+/-_=",
        string.printable.strip(),
    )
)


def secret_bits(secret: bytes) -> float:
    """An estimate of a secret's entropy: its length times the bits per character of the
    smallest usual alphabet it is written in (digits, hex, alphanumeric, base64, printable
    ASCII, any byte), counting only as many characters as it actually uses when it uses
    fewer than half of that alphabet (``aaaa…`` is worth nothing)."""
    text = secret.decode("latin-1")
    if text in (text.lower(), text.upper()):
        text = text.lower()  # one case only: as strong as lower case alone
    size = next((len(a) for a in _ALPHABETS if set(text) <= a), 256)
    distinct = len(set(secret))
    if distinct < min(size, len(secret)) / 2:
        size = distinct
    return len(secret) * math.log2(size) if size > 1 else 0.0


def _no_answer(result_name: str, facts: EndpointFacts, user: str) -> Result:
    if facts.holder:
        return Result.fail(
            result_name,
            f"srsd's {facts.role.value} endpoint {facts.where} is {facts.holder}, which does not "
            f"answer as srsd ({facts.error}): another program has srsd's port, so srsd cannot "
            "start there",
            FixKind.TEXT,
            "stop that program (or give srsd and Postfix's wiring another port)",
            "start srsd (systemctl start srsd; journalctl -u srsd says why it stopped)",
        )
    return Result.fail(
        result_name,
        f"no answer from srsd's {facts.role.value} endpoint {facts.where}: {facts.error}",
        FixKind.TEXT,
        "start srsd (systemctl start srsd; journalctl -u srsd says why it stopped)",
        f"if srsd runs with allowed_users, run doctor as root or a listed user (now: {user})",
    )


def endpoint(facts: EndpointFacts, settings: Settings, user: str) -> Result:
    """Does this endpoint answer its role?"""
    name = f"endpoint-{facts.role.value}"
    domain = settings.domain.encode()
    if facts.error is not None and not facts.lookups:
        return _no_answer(name, facts, user)
    if facts.role is EndpointRole.MILTER:
        said = facts.lookups[0].answer.decode(errors="replace")
        return Result.ok(name, f"milter {facts.where}: {said}")
    found = {
        look.asked.partition(b" ")[0] if facts.role is EndpointRole.SOCKETMAP else b"": look
        for look in facts.lookups
    }
    if facts.role in (EndpointRole.FORWARD, EndpointRole.SOCKETMAP):
        look = found.get(b"forward" if facts.role is EndpointRole.SOCKETMAP else b"")
        if look is None or look.status not in ("200", "OK"):
            what = f"{look.status} {look.answer[:80]!r}" if look else facts.error
            return Result.fail(
                name,
                f"{facts.where} does not rewrite a test sender (answered {what}): forwarded "
                "mail would leave unrewritten or be deferred",
                FixKind.TEXT,
                "check that this port is srsd's "
                + (
                    "socketmap"
                    if facts.role is EndpointRole.SOCKETMAP
                    else "tcp_table forward port"
                )
                + " and that srsd runs with this configuration (srsd config --changed)",
            )
        if not look.answer.upper().startswith(
            (b"SRS0", b'"SRS0')
        ) or not look.answer.lower().endswith(b"@" + domain.lower()):
            return Result.fail(
                name,
                f"{facts.where} rewrites to {look.answer[:80].decode(errors='replace')}, not to "
                f"an SRS0 address at {settings.domain}: the running srsd has another "
                "configuration than this one",
                FixKind.SHELL,
                "systemctl restart srsd",
            )
        if facts.role is EndpointRole.FORWARD:
            return Result.ok(name, f"tcp_table {facts.where} rewrites a test sender to SRS0")
    look = found.get(b"reverse" if facts.role is EndpointRole.SOCKETMAP else b"")
    if look is None:
        return _no_answer(name, facts, user)
    if look.status in ("200", "OK") and look.answer == PROBE:
        kind = "socketmap" if facts.role is EndpointRole.SOCKETMAP else "tcp_table"
        return Result.ok(name, f"{kind} {facts.where} decodes a fresh SRS address of ours")
    if b"@doctor.invalid" in look.asked and look.status in ("500", "NOTFOUND"):
        return Result.warn(
            name,
            f"{facts.where} answers, but doctor had no SRS address of ours to decode (no "
            "forward endpoint, and the secret is not readable by this user)",
            FixKind.TEXT,
            "run doctor as root",
        )
    return Result.fail(
        name,
        f"{facts.where} does not decode a fresh SRS address of ours (answered {look.status} "
        f"{look.answer[:80]!r}): bounces to forwarded mail would be lost",
        FixKind.TEXT,
        "check that this port is srsd's reverse map, and that the running srsd uses the "
        "secrets file of this configuration (systemctl restart srsd)",
    )


def secret_private(facts: SecretFacts, run_as: str | None, user: str) -> Result:
    """Only srsd (and root) can read the secret."""
    path = facts.path
    if facts.mode is None and not facts.missing:
        return _unreadable("secret-private", facts, user)
    if facts.mode is None:
        return Result.fail(
            "secret-private",
            f"the secrets file {path} cannot be found ({facts.error}): srsd cannot start",
            FixKind.SHELL,
            f"srsd keygen {path}",
        )
    if facts.mode & 0o077:
        return Result.fail(
            "secret-private",
            f"the secrets file {path} is open to group or others (mode {facts.mode:04o}): "
            "whoever reads it can forge bounces that srsd accepts",
            FixKind.SHELL,
            f"chmod 600 {path}",
        )
    if facts.owner in _NOBODY:
        return Result.fail(
            "secret-private",
            f"the secrets file {path} belongs to {facts.owner}: every daemon running as "
            f"{facts.owner} can read it",
            FixKind.SHELL,
            f"chown root:root {path}",
        )
    if run_as in _NOBODY:
        return Result.warn(
            "secret-private",
            f"srsd runs as {run_as}, a user other daemons share: they can read its memory, "
            "the secret included",
            FixKind.SHELL,
            "adduser --system --group --no-create-home srsd",
            f"chown srsd: {path}",
            'then set run_as = "srsd" in srsd\'s settings and restart srsd',
        )
    return Result.ok("secret-private", f"{path} is mode {facts.mode:04o}, owner {facts.owner}")


def secret_strength(facts: SecretFacts, user: str) -> Result:
    """Every secret (each still verifies) has at least :data:`MIN_SECRET_BITS` of entropy."""
    if not facts.secrets:
        return _unreadable("secret-strength", facts, user)
    bits = min(secret_bits(s) for s in facts.secrets)
    if bits < MIN_SECRET_BITS:
        path = facts.path
        return Result.warn(
            "secret-strength",
            f"a secret in {path} has about {bits:.0f} bits of entropy (fewer than "
            f"{MIN_SECRET_BITS}): it may be guessed, and with it bounces forged",
            FixKind.SHELL,
            f"srsd keygen {path}.new && cat {path} >> {path}.new && mv {path}.new {path}",
            "systemctl reload srsd  # the new one signs; remove the old line after max_age days",
        )
    return Result.ok("secret-strength", f"{len(facts.secrets)} secret(s), each ≥ {bits:.0f} bits")


def _unreadable(name: str, facts: SecretFacts, user: str) -> Result:
    if facts.missing:
        return Result.warn(name, f"no secret to check: {facts.path} does not exist", FixKind.TEXT)
    return Result.warn(
        name,
        f"cannot check the secret: {user} cannot read {facts.path} ({facts.error})",
        FixKind.TEXT,
        "run doctor as root",
    )


def rewritten(endpoints: Sequence[EndpointFacts]) -> list[bytes]:
    """The SRS addresses srsd's forward map and socketmap gave for the probe sender."""
    return [
        look.answer
        for e in endpoints
        for look in e.lookups
        if e.role in (EndpointRole.FORWARD, EndpointRole.SOCKETMAP)
        and look.asked.endswith(PROBE)
        and look.status in ("200", "OK")
    ]


def secret_in_use(
    facts: SecretFacts, endpoints: Sequence[EndpointFacts], settings: Settings, user: str
) -> Result:
    """The running server signs with the first secret of this secrets file."""
    if not facts.secrets:
        return _unreadable("secret-in-use", facts, user)
    answers = rewritten(endpoints)
    if not answers:
        return Result.warn(
            "secret-in-use",
            "cannot tell which secret the running srsd signs with: no forward endpoint answered",
            FixKind.TEXT,
            "configure and start a forward map or socketmap endpoint",
        )
    signer = Codec(
        facts.secrets[:1],
        settings.domain.encode(),
        hash_length=settings.hash_length,
        hash_min=settings.hash_min,
        max_age=settings.max_age,
    )
    try:
        signer.reverse(answers[0], time.time())
    except SRSError as err:
        return Result.fail(
            "secret-in-use",
            f"the running srsd signs with another secret than the first line of {facts.path} "
            f"({err.reason}): after its next restart, bounces to addresses it hands out now "
            "are refused",
            FixKind.SHELL,
            "systemctl restart srsd",
        )
    return Result.ok(
        "secret-in-use", f"the running srsd signs with the first secret of {facts.path}"
    )


def credential_source(facts: CredentialFacts | None, user: str) -> Result | None:
    """The secret srsd's unit loads with ``LoadCredential=`` exists and root can read it:
    else systemd refuses to start srsd, and says only ``243/CREDENTIALS``. None when no
    installed unit loads one."""
    if facts is None:
        return None
    name = "credential-source"
    if facts.error is None:
        return Result.ok(name, f"the secret srsd's unit loads ({facts.source}) is readable")
    if not facts.checked:
        return Result.warn(
            name,
            f"cannot check the secret srsd's unit loads: {user} cannot read {facts.source} "
            f"({facts.error})",
            FixKind.TEXT,
            "run doctor as root",
        )
    summary = (
        f"{facts.unit} loads srsd's secret from {facts.source} (LoadCredential=), which "
        f"{'does not exist' if facts.missing else f'cannot be read ({facts.error})'}: systemd "
        "refuses to start srsd, and says only 'status=243/CREDENTIALS'"
    )
    if not facts.missing:  # a directory, a dangling link...: what to do depends on it
        return Result.fail(
            name,
            summary,
            FixKind.TEXT,
            f"make {facts.source} a file holding srsd's secret (srsd keygen writes one), "
            "then systemctl restart srsd",
        )
    parent = PurePosixPath(facts.source).parent
    return Result.fail(
        name,
        summary,
        FixKind.SHELL,
        f"install -d -m 0755 {parent}",
        f"srsd keygen {facts.source}",
        "systemctl restart srsd",
    )
