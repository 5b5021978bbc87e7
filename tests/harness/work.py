# Counting the work srsd's own Python code does for a call: lines run, not seconds.
"""A bound on work that cannot flake: the number of lines of srsd's code (``src/srsd``) a call
runs, counted with :func:`sys.settrace`, is the same on an idle and on a loaded machine. A
loop whose length a sender controls (pysrs's and Mail::SRS's ``32**n`` loop on a long day
stamp, CVE-2020-35573's on a long time stamp) shows as a count that grows with the field;
CPU-time bounds caught it too, but also failed whenever the machine was busy.

Work done inside C (``bytes`` methods, ``re``, ``hmac``) is not counted: those are linear
in their input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import srsd

SRC = str(Path(srsd.__file__).resolve().parent)
#: The most lines one codec or policy call may run on an input of N bytes: a fixed amount,
#: plus a few a byte for the one character scan the grammar needs (a quoted local part: 4 a
#: byte). A loop on a field's value or length (pysrs's 32**n on a long stamp, postsrsd's
#: CVE-2020-35573) goes far past it.
CALL_LINES = 400
LINES_PER_BYTE = 8


def call_bound(size: int) -> int:
    """:data:`CALL_LINES` + :data:`LINES_PER_BYTE` x ``size``."""
    return CALL_LINES + LINES_PER_BYTE * size


def lines_run(call: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``call()``; the number of lines of srsd's code it ran, and its result or the
    exception it raised (returned, not raised)."""
    count = 0

    def tracer(frame: FrameType, event: str, _arg: object) -> Any:
        nonlocal count
        if not frame.f_code.co_filename.startswith(SRC):
            return None  # no line events for code outside srsd
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        outcome: Any = call()
    except Exception as err:
        outcome = err
    finally:
        sys.settrace(previous)
    return count, outcome
