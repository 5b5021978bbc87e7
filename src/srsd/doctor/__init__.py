# `srsd doctor`: prove a host's SRS works end to end and say how to fix what does not.
"""``srsd doctor``: a read-only check of everything SRS on a host depends on.

It changes nothing and sends no mail. Gatherers (:mod:`.gather`, :mod:`.dns`) read the host
into plain facts (:mod:`.facts`); checks (:mod:`.checks_srsd`, :mod:`.checks_postfix`,
:mod:`.checks_host`) are pure functions from facts to :class:`.result.Result` (✓, ! or ✗,
what is wrong in the postmaster's terms, the exact fix); :mod:`.run` puts them together and
:mod:`.result` prints them, one line per check or as JSON.
"""
