# SIGHUP before srsd is ready: noted, never fatal, applied as a reload once it is serving.
"""Hold SIGHUP off while ``srsd serve`` starts.

SIGHUP's default action ends a process, and srsd only takes it over (as "reload") once it
serves: a ``kill -HUP`` from logrotate or a script in the first fraction of a second after
a start used to end srsd silently. :func:`hold` is the first thing the ``srsd`` command
does (this module imports nothing else of srsd, so little runs before it): from then on a
SIGHUP is only noted, and :func:`pending` tells the server, once ready, that one came (it
then reloads once, so that a change made during the start is not missed). What runs before
:func:`hold` is Python's own start-up, a few tens of milliseconds, which no Python code can
cover.
"""

from __future__ import annotations

import signal
from types import FrameType

_received = 0


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received += 1


def hold() -> None:
    """From now on, a SIGHUP is noted (see :func:`pending`) instead of ending the process."""
    signal.signal(signal.SIGHUP, _note)


def pending() -> int:
    """SIGHUPs noted since the last call (0 when none came); starts counting again."""
    global _received
    count, _received = _received, 0
    return count
