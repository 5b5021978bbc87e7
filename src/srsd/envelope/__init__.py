# The envelope database: long senders stored under a short key instead of inside the address.
"""The envelope database (setting ``original_envelope``), as one package.

* :mod:`srsd.envelope.keys` - pure: why and how a sender is stored, the key scheme, when
  to alias, the flood cap (no I/O, no clock);
* :mod:`srsd.envelope.location` - pure: the ``envelope_database`` setting parsed (which
  store, where);
* :mod:`srsd.envelope.store` - the stores (SQLite, Redis) behind one async interface;
* :mod:`srsd.envelope.database` - the database between the policy and the wire at lookup
  time (aliasing, resolving, the flood cap, outages).

The pure names are re-exported here; importing this package never imports trio.
"""

from srsd.envelope.keys import (
    ALIAS_DOMAIN,
    KEY_LENGTH,
    MAX_LOCAL_PART,
    EnvelopeMode,
    RecentWrites,
    WriteLimiter,
    alias_address,
    alias_key,
    is_srs_sender,
    key_of,
    lifetime,
    local_part_length,
    needs_database,
    use_database,
)

__all__ = [
    "ALIAS_DOMAIN",
    "KEY_LENGTH",
    "MAX_LOCAL_PART",
    "EnvelopeMode",
    "RecentWrites",
    "WriteLimiter",
    "alias_address",
    "alias_key",
    "is_srs_sender",
    "key_of",
    "lifetime",
    "local_part_length",
    "needs_database",
    "use_database",
]
