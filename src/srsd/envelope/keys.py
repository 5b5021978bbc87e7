# Envelope database mode: short deterministic keys for long senders, and a write flood cap. Pure.
"""Why and how srsd stores a sender instead of carrying it inside the SRS address.

The problem
-----------
An SRS0 address carries the whole original sender: ``user@host`` becomes
``SRS0=HHHH=TT=host=user@srs-domain``. The local part grows by at least 13 octets
(``SRS0=`` + hash + ``=TT=`` + ``=``) on top of the sender's own local part *and domain*.
RFC 5321 section 4.5.3.1.1 caps a local part at 64 octets, and some receivers enforce it
(``553 5.1.7 local part too long``, postsrsd issue #108): with a 4-character hash, every
sender longer than 51 octets in total gives an SRS address that such a receiver refuses.

The database mode
-----------------
postsrsd 2.x solved it with an *envelope database*, and srsd uses exactly the same scheme
so that a fleet of MX hosts can share one Redis with postsrsd 2.x hosts:

* the key of a sender is ``base32hex(SHA1(sender))``: the SHA-1 digest of the sender bytes
  *exactly as given* (no case folding, no unquoting), written in RFC 4648's "extended hex"
  alphabet ``0-9A-V``, upper case, 20 bytes giving 32 characters without padding;
* the sender is stored under that key (``KEY@1`` in the database; see :mod:`srsd.envelope.store`)
  for the maximum age of an SRS address plus a margin;
* the SRS codec forwards the *alias address* ``KEY@1`` instead of the sender, giving
  ``SRS0=HHHH=TT=1=KEY@srs-domain``: a local part of 43 octets plus the hash length, so at
  most 63 octets with the longest hash srsd allows (20);
* a bounce to that address decodes (hash and age are checked as always) to ``KEY@1``;
  the domain ``1`` cannot be a real mail domain, so it marks an alias, and the key is
  looked up to find the original sender.

The key is a pure function of the sender, so the scheme is *deterministic* and writes are
*idempotent*: the same sender always gets the same key, writing it again only refreshes its
lifetime, any number of hosts sharing a store agree without coordination, and the database
holds one entry per distinct sender, not one per message. SHA-1's weakness against chosen
collisions does not matter here: an attacker who made two senders collide could only make
bounces for one go to the other, which they can already do by sending as it; and the SRS
hash still authenticates every address.

The cost is state: a bounce can only be decoded while its entry exists (the lifetime covers
the SRS maximum age), and random senders can fill the database (upstream warns about it):
:class:`WriteLimiter` caps the rate of writes, and :class:`RecentWrites` keeps repeated
senders from costing a write each.

Nothing here does I/O or reads a clock; :mod:`srsd.envelope.store` holds the stores.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections import OrderedDict

from srsd.srs import address, codec

#: The domain of an alias address: not a valid mail domain, so it cannot clash with one.
ALIAS_DOMAIN = b"1"
#: Length of a key: base32 of a 20-byte SHA-1 digest.
KEY_LENGTH = 32
#: RFC 5321 section 4.5.3.1.1: the longest local part a receiver must accept.
MAX_LOCAL_PART = 64
#: Safety margin added to the SRS maximum age for an entry's lifetime (see :func:`lifetime`).
DEFAULT_MARGIN_DAYS = 2
_BASE32HEX = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVabcdefghijklmnopqrstuv")


class EnvelopeMode(enum.Enum):
    """Where the original sender travels (setting ``original_envelope``)."""

    EMBEDDED = "embedded"  # inside the SRS address (stateless; the default)
    DATABASE = "database"  # always in the database; the address carries its key
    AUTO = "auto"  # in the database only when the embedded form would be too long


def alias_key(sender: bytes) -> bytes:
    """The database key of ``sender``: ``base32hex(SHA1(sender))``, 32 upper-case characters.

    The sender's bytes are hashed exactly as given, as postsrsd 2.x does, so both compute
    the same key: ``alias_key(b"test@otherdomain.com") == b"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ"``.
    """
    return base64.b32hexencode(hashlib.sha1(sender).digest())  # noqa: S324 - not a secret


def alias_address(key: bytes) -> bytes:
    """The address the SRS codec forwards in place of the sender: ``KEY@1``."""
    return key + b"@" + ALIAS_DOMAIN


def key_of(decoded: bytes) -> bytes | None:
    """The key if ``decoded`` (a successful SRS reverse) is an alias address, else None.

    An alias has the domain exactly ``1`` and a local part of 32 base32hex characters in
    any case (a receiver may have changed the case of the bounce address); the key is
    returned upper-cased, ready for a lookup. Anything else is an ordinary address.
    """
    parts = address.split(decoded)
    if parts is None or parts[1] != ALIAS_DOMAIN:
        return None
    local = parts[0]
    if len(local) != KEY_LENGTH or not _BASE32HEX.issuperset(local):
        return None
    return local.upper()


def local_part_length(srs_address: bytes) -> int:
    """Octets in the local part of ``srs_address`` (all of it when there is no ``@``)."""
    parts = address.split(srs_address)
    return len(srs_address if parts is None else parts[0])


def needs_database(srs_address: bytes) -> bool:
    """True when the embedded SRS address has a local part over RFC 5321's 64 octets."""
    return local_part_length(srs_address) > MAX_LOCAL_PART


def is_srs_sender(sender: bytes) -> bool:
    """True for a sender that is itself an SRS address (``SRS0``/``SRS1`` local part).

    Such senders are never aliased, as in postsrsd 2.x: the codec turns them into SRS1
    addresses that point at their first hop, which decodes the rest.
    """
    parts = address.split(sender)
    if parts is None:
        return False
    return codec.srs_tag(address.plain_local(parts[0])[0]) is not None


def use_database(mode: EnvelopeMode, sender: bytes, embedded: bytes) -> bool:
    """Whether ``sender`` should go through the database instead of its embedded form.

    ``embedded`` is the codec's ordinary forward of ``sender`` (only its length matters,
    and only in ``auto`` mode). SRS senders are never aliased (see :func:`is_srs_sender`).
    """
    if mode is EnvelopeMode.EMBEDDED or is_srs_sender(sender):
        return False
    return mode is EnvelopeMode.DATABASE or needs_database(embedded)


def lifetime(max_age_days: int, margin_days: float = DEFAULT_MARGIN_DAYS) -> float:
    """Seconds an entry must live: the SRS maximum age plus a margin.

    An address minted early on day D still decodes at the end of day D + ``max_age``, up to
    ``(max_age + 1)`` days later; the margin (2 days by default) covers that day and clock
    differences between the hosts of a fleet. postsrsd 2.x uses ``max_age`` days exactly.
    """
    if max_age_days < 0 or margin_days < 0:
        raise ValueError("max_age_days and margin_days must not be negative")
    return (max_age_days + margin_days) * codec.SECONDS_PER_DAY


class WriteLimiter:
    """Flood cap: at most ``max_per_minute`` database writes per minute, as a token bucket.

    The bucket holds up to ``max_per_minute`` tokens and refills continuously at
    ``max_per_minute / 60`` tokens per second; each allowed write takes one. So a burst of
    ``max_per_minute`` writes passes at once, and after that writes pass at the sustained
    rate, with no cliff at a minute boundary (a fixed window would let twice the cap through
    around one). ``max_per_minute = 0`` disables the cap.

    The clock is a parameter (``now``, seconds; any monotonic or wall clock, as long as the
    caller sticks to one); a clock that steps back refills nothing. :attr:`refused` counts
    refusals (the metric) and :attr:`refusing` is True from the first refusal to the next
    allowed write, so the caller can log once per flood::

        was = limiter.refusing
        if not limiter.allow(now) and not was:
            log.warning("envelope write cap reached ...")
    """

    def __init__(self, max_per_minute: int) -> None:
        if max_per_minute < 0:
            raise ValueError("max_per_minute must not be negative")
        self.max_per_minute = max_per_minute
        self.refused = 0
        self.refusing = False
        self._tokens = float(max_per_minute)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """Take one token if there is one: True if a write may go ahead now."""
        if self.max_per_minute == 0:
            return True
        if self._last is not None and now > self._last:
            refill = (now - self._last) * self.max_per_minute / 60.0
            self._tokens = min(float(self.max_per_minute), self._tokens + refill)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.refusing = False
            return True
        self.refused += 1
        self.refusing = True
        return False


class RecentWrites:
    """Keys this process wrote lately, so a repeated sender does not cost a write per message.

    Writes are idempotent and only refresh an entry's lifetime, and the lifetime has a margin
    of days, so re-writing a key more than once every ``refresh_after`` seconds (default one
    hour) gains nothing. Bounded: the least recently written key is forgotten beyond
    ``capacity``. A key skipped here is neither written nor counted by :class:`WriteLimiter`.
    Forgetting is always safe: the worst case is one more idempotent write.
    """

    def __init__(self, capacity: int = 10000, refresh_after: float = 3600.0) -> None:
        if capacity < 0 or refresh_after < 0:
            raise ValueError("capacity and refresh_after must not be negative")
        self.capacity = capacity
        self.refresh_after = refresh_after
        self._written: OrderedDict[bytes, float] = OrderedDict()

    def fresh(self, key: bytes, now: float) -> bool:
        """True if ``key`` was written less than ``refresh_after`` seconds before ``now``."""
        then = self._written.get(key)
        return then is not None and 0 <= now - then < self.refresh_after

    def note(self, key: bytes, now: float) -> None:
        """Record that ``key`` was written successfully at ``now``."""
        if self.capacity == 0:
            return
        self._written[key] = now
        self._written.move_to_end(key)
        while len(self._written) > self.capacity:
            self._written.popitem(last=False)

    def __len__(self) -> int:
        return len(self._written)
