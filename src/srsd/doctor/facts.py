# The facts doctor's gatherers collect and its checks judge: plain, immutable data.
"""What the gatherers (:mod:`srsd.doctor.gather`, :mod:`srsd.doctor.dns`) found on the host.

Every field is data read from the host at one moment; nothing here does I/O. A gatherer that
could not find a fact says why in an ``error`` field instead of raising, so that every check
can still say what it could not verify.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class EndpointRole(enum.Enum):
    """What an srsd endpoint is for."""

    FORWARD = "forward"  # tcp_table forward map (sender_canonical_maps)
    REVERSE = "reverse"  # tcp_table reverse map (recipient_canonical_maps)
    SOCKETMAP = "socketmap"  # both maps, by name
    MILTER = "milter"


@dataclass(frozen=True)
class Lookup:
    """One question asked of an endpoint and its answer (``200``/``500``, ``OK``/``NOTFOUND``,
    or the milter reply's command letter)."""

    asked: bytes
    status: str
    answer: bytes


@dataclass(frozen=True)
class EndpointFacts:
    """One configured srsd endpoint as probed: ``where`` is ``inet:HOST:PORT`` or ``unix:PATH``."""

    role: EndpointRole
    where: str
    lookups: tuple[Lookup, ...] = ()
    error: str | None = None
    #: When it did not answer, on TCP: who holds its port when that is not srsd
    #: (:func:`srsd.host.holders.held_by_another`), else "".
    holder: str = ""


@dataclass(frozen=True)
class SecretFacts:
    """The secrets file: its metadata and, when this user may read it, the secrets."""

    path: Path
    mode: int | None = None
    owner: str = ""
    group: str = ""
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    error: str | None = None  # why it could not be read (then ``secrets`` is empty)
    missing: bool = False  # it does not exist (else an error means: not readable by this user)


@dataclass(frozen=True)
class CredentialFacts:
    """The secret srsd's systemd unit loads (``LoadCredential=srsd-secrets:SOURCE``): the
    unit file naming it, the source, and why systemd could not read it (None: it can)."""

    unit: str
    source: str
    error: str | None = None
    missing: bool = False  # the source does not exist
    checked: bool = True  # False: this user cannot tell (not root, and the source is hidden)


@dataclass(frozen=True)
class Service:
    """One master.cf service (``postconf -M`` and ``postconf -P``)."""

    name: str
    type: str
    chroot: bool
    command: str
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PostfixFacts:
    """Postfix's configuration as ``postconf`` shows it (``MAIL_CONFIG`` honoured).

    ``raw`` holds the values as written, ``expanded`` with ``$name`` expanded (``postconf -x``);
    ``reachable`` maps each srsd-looking target Postfix uses (a table or milter, as its
    daemons will open it) to None when it connects, else the error.
    """

    config_dir: str
    raw: Mapping[str, str] = field(default_factory=dict)
    expanded: Mapping[str, str] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    reachable: Mapping[str, str | None] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class SmtpFacts:
    """The bounce path tried on this host's smtpd: ``MAIL FROM:<>``, then a fresh valid SRS
    recipient and a forged one, each with its reply (code, text); then RSET and QUIT."""

    where: str
    valid: str = ""
    valid_reply: tuple[int, str] | None = None
    forged: str = ""
    forged_reply: tuple[int, str] | None = None
    error: str | None = None


class ClockState(enum.Enum):
    """What the kernel says of the system clock."""

    SYNCHRONIZED = "synchronized"
    UNSYNCHRONIZED = "unsynchronized"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClockFacts:
    """The clock's state and where it was read."""

    state: ClockState
    source: str


@dataclass(frozen=True)
class SpfVerdict:
    """pyspf's answer for one sending address: ``pass``, ``fail``, ``permerror``..."""

    address: str
    result: str
    explanation: str


@dataclass(frozen=True)
class DnsFacts:
    """What the resolver said about the SRS domain.

    ``mx`` is None when the domain has no MX (the A/AAAA fallback applies); ``hosts`` maps
    each host mail is delivered to (MX targets, or the domain itself) to its addresses.
    ``dmarc`` is the DMARC record in force (the domain's, else its parents'), with the name
    it was found at.
    """

    domain: str
    resolver: str
    spf_record: str | None = None
    spf: tuple[SpfVerdict, ...] = ()
    mx: tuple[tuple[int, str], ...] | None = None
    hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dmarc: tuple[str, str] | None = None
    error: str | None = None
