# The rewrite policy: which senders get an SRS address, which recipients get decoded. Pure.
"""Decide, for one lookup, what srsd answers and why.

The policy sits between a wire codec and the SRS codec. :meth:`Policy.forward` takes a
sender as Postfix's ``sender_canonical_maps`` sends it; :meth:`Policy.reverse` takes a
recipient as ``recipient_canonical_maps`` (and smtpd's RCPT check) sends it. Both return a
:class:`Decision`: the new address, or the :class:`Outcome` that says why there is none.
Both first refuse what is no address (:func:`srsd.srs.address.refusal`: a NUL, a control
character, more than ``max_length`` bytes), so every endpoint answers those alike.
Nothing here reads a clock, a file or a socket.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from srsd.srs import address, codec


class Role(enum.Enum):
    """Which map a lookup is for."""

    FORWARD = "forward"  # sender_canonical_maps
    REVERSE = "reverse"  # recipient_canonical_maps


class Outcome(enum.Enum):
    """Why a lookup ended as it did; the values double as metric and log labels."""

    REWRITTEN = "rewritten"
    NULL_SENDER = "null sender"
    NO_DOMAIN = "no domain"
    LOCAL = "local"
    EXCLUDED = "excluded"
    ALREADY_SRS = "already SRS"
    NOT_SRS = "not SRS"
    MALFORMED = "malformed"
    BAD_HASH = "bad hash"
    EXPIRED = "expired"
    BAD_ADDRESS = "bad address"  # refused before any rewriting (address.refusal)
    UNKNOWN_ALIAS = "unknown alias"  # a database-mode address whose entry is gone
    ERROR = "error"  # srsd cannot decide now (storage down, internal error): defer


#: Outcomes that are routine on every mail host: logged at debug level only.
QUIET = frozenset({Outcome.NULL_SENDER, Outcome.NO_DOMAIN, Outcome.LOCAL, Outcome.NOT_SRS})

_NULL_SENDERS = frozenset({b"", b"<>", b'""'})
_ERROR_OUTCOMES: dict[type[codec.SRSError], Outcome] = {
    codec.NotSRS: Outcome.NOT_SRS,
    codec.Malformed: Outcome.MALFORMED,
    codec.BadHash: Outcome.BAD_HASH,
    codec.Expired: Outcome.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one lookup: ``value`` when rewritten, else None and a ``reason``."""

    outcome: Outcome
    value: bytes | None = None
    reason: str = ""


_REWRITTEN_REASON = "rewritten"
#: What :meth:`Policy.reverse` answers for an address that is not an SRS address.
NOT_SRS: Final = Decision(Outcome.NOT_SRS, reason=codec.NOT_SRS)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def is_domain_entry(entry: str) -> bool:
    """True for an entry of a :class:`DomainSet`: a domain name, or one with a leading dot
    (every subdomain), in any case."""
    return is_domain_name(entry.lower().removeprefix("."))


def is_domain_name(name: str, *, min_labels: int = 1) -> bool:
    """True for an ASCII host name: LDH labels, at least ``min_labels``, no trailing dot."""
    if len(name) > 253 or not name.isascii():
        return False
    labels = name.lower().split(".")
    return len(labels) >= min_labels and all(_LABEL.match(label) for label in labels)


class DomainSet:
    """Domains matched ASCII case-insensitively: ``example.com`` matches exactly that
    domain, ``.example.com`` every subdomain of it but not the apex."""

    def __init__(self, entries: Iterable[str]) -> None:
        exact: set[bytes] = set()
        suffixes: set[bytes] = set()
        for entry in entries:
            name = entry.strip().lower()
            if not is_domain_entry(name):
                raise ValueError(f"not a domain name: {entry!r}")
            (suffixes if name.startswith(".") else exact).add(name.encode("ascii"))
        self._exact = frozenset(exact)
        self._suffixes = frozenset(suffixes)

    def __contains__(self, domain: object) -> bool:
        if not isinstance(domain, bytes):
            return False
        name = domain.lower()
        if name in self._exact:
            return True
        if self._suffixes:
            dot = name.find(b".", 1)
            while dot > 0:
                if name[dot:] in self._suffixes:
                    return True
                dot = name.find(b".", dot + 1)
        return False

    def __len__(self) -> int:
        return len(self._exact) + len(self._suffixes)

    def entries(self) -> list[str]:
        """The configured entries, sorted, as given (lower-cased)."""
        return sorted(e.decode("ascii") for e in self._exact | self._suffixes)


class Policy:
    """What to do with a sender or recipient, given the codec and the exclusion list."""

    def __init__(
        self,
        srs: codec.Codec,
        excluded: DomainSet | None = None,
        *,
        max_length: int = address.MAX_LENGTH,
    ) -> None:
        self.codec = srs
        self.excluded = excluded if excluded is not None else DomainSet(())
        #: The longest address accepted, in bytes (``max_request``).
        self.max_length = max_length
        self._own_domain = srs.domain.lower()

    def forward(self, sender: bytes, now: float) -> Decision:
        """Decide on a sender from ``sender_canonical_maps``."""
        refused = address.refusal(sender, self.max_length)
        if refused is not None:
            return Decision(Outcome.BAD_ADDRESS, reason=refused)
        if sender in _NULL_SENDERS:
            return Decision(Outcome.NULL_SENDER, reason="null sender")
        parts = address.split(sender)
        if parts is None or not parts[1]:
            return Decision(Outcome.NO_DOMAIN, reason="no domain")
        domain = parts[1].lower()
        if domain == self._own_domain:
            return Decision(Outcome.LOCAL, reason="local domain")
        if domain in self.excluded:
            return Decision(Outcome.EXCLUDED, reason="excluded domain")
        user, quoted = address.plain_local(parts[0])
        if codec.srs_tag(user) is not None:
            try:
                self.codec.reverse(sender, now)
            except codec.SRSError:
                pass  # someone else's SRS address (or an expired one of ours): wrap it
            else:
                return Decision(Outcome.ALREADY_SRS, reason="already rewritten")
        try:
            rewritten = self.codec.forward_split(user, quoted, parts[1], now)
            return Decision(Outcome.REWRITTEN, rewritten, _REWRITTEN_REASON)
        except codec.SRSError as err:
            return Decision(_ERROR_OUTCOMES[type(err)], reason=err.reason)

    def plainly_not_srs(self, recipient: bytes) -> bool:
        """Whether :meth:`reverse` answers :data:`NOT_SRS` for ``recipient`` whatever the
        time, told from its form alone (a valid address whose local part cannot begin an
        SRS address): a caller deciding many recipients may skip those lookups."""
        if codec.may_be_srs(recipient):
            return False
        return address.refusal(recipient, self.max_length) is None

    def reverse(self, recipient: bytes, now: float) -> Decision:
        """Decide on a recipient from ``recipient_canonical_maps``: decode it if it is ours."""
        refused = address.refusal(recipient, self.max_length)
        if refused is not None:
            return Decision(Outcome.BAD_ADDRESS, reason=refused)
        if not codec.may_be_srs(recipient):  # the usual recipient: no exception to raise
            return NOT_SRS
        try:
            original = self.codec.reverse(recipient, now)
        except codec.SRSError as err:
            return Decision(_ERROR_OUTCOMES[type(err)], reason=err.reason)
        return Decision(Outcome.REWRITTEN, original, _REWRITTEN_REASON)
