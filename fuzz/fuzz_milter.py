# atheris harness for the milter wire format: any bytes, any split, bounded and consistent.
"""Coverage-guided fuzzing of :mod:`srsd.wire.milter` (``fuzz/README.md``).

The first input byte picks a packet bound and a recipient limit, the next up to 12
two-byte numbers cut points (a count byte first); the rest is the stream, which follows a
valid option negotiation so the fuzzer starts past it. Asserted:

* the session never buffers more than one packet (four bytes plus the bound), and nothing
  once closed;
* actions are Send, Decide or Close; exactly one Close, the last action (EOF closes); every
  Send is whole, well-formed packets; a Decide holds at most the recipient limit;
* the pieces give exactly the actions of the whole stream fed at once;
* the verdict for every Decide is well-formed packets ending in ``continue``.

Importable without atheris (``tests/test_fuzz_campaign.py`` replays inputs in-process).
"""

from __future__ import annotations

import itertools
import sys

try:
    import atheris
except ImportError:  # replaying an input needs no fuzzer
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from srsd.wire import milter
else:
    from srsd.wire import milter

PACKET_BOUNDS = [13, 64, 200, milter.MAX_PACKET]
RECIPIENT_LIMITS = [1, 3, milter.MAX_RECIPIENTS]
PREFIX = milter.negotiate()
SEEDS = [
    b"\x00\x00"
    + milter.command(milter.MAIL, b"<a@b.test>")
    + milter.command(milter.RCPT, b"<c@d>")
    + milter.macros(milter.END_OF_MESSAGE, [(b"i", b"Q1")])
    + milter.command(milter.END_OF_MESSAGE),
    b"\x05\x02\x00\x03\x00\x09" + milter.command(milter.MAIL, b"<>") * 2 + b"\x00\x00\x00\x00",
    b"\x01\x00" + milter.command(milter.ABORT) + milter.command(milter.QUIT),
]


def config(data: bytes) -> tuple[int, int, list[int], bytes]:
    """(packet bound, recipient limit, cut points, stream) from one fuzz input."""
    if len(data) < 2:
        data = data + b"\x00" * (2 - len(data))
    bound = PACKET_BOUNDS[data[0] % len(PACKET_BOUNDS)]
    limit = RECIPIENT_LIMITS[(data[0] >> 4) % len(RECIPIENT_LIMITS)]
    count = data[1] % 13
    raw = data[2 : 2 + 2 * count]
    cuts = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw) - 1, 2)]
    return bound, limit, cuts, PREFIX + data[2 + 2 * count :]


def feed(stream: bytes, cuts: list[int], bound: int, limit: int) -> list[milter.MilterAction]:
    session = milter.Session(recipient_limit=limit, max_packet=bound)
    edges = [0, *sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]
    actions: list[milter.MilterAction] = []
    for a, b in itertools.pairwise(edges):
        was_closed = session.closed
        new = session.feed(stream[a:b])
        if was_closed and new:
            raise AssertionError(f"actions after closing: {new!r}")
        if session.buffered > 4 + bound or (session.closed and session.buffered):
            raise AssertionError(f"{session.buffered} bytes buffered, bound {bound}")
        actions += new
    actions += session.feed_eof()
    if not session.closed or session.feed(PREFIX) or session.feed_eof():
        raise AssertionError("the session is not closed after EOF")
    for action in actions:
        if isinstance(action, milter.Decide):
            if len(action.transaction.recipients) > limit:
                raise AssertionError(f"more than {limit} recipients kept")
            verdict = milter.Verdict(
                sender=b"x@y", replace=tuple((r, b"z@w") for r in action.transaction.recipients)
            )
            if milter.split_replies(session.verdict(verdict))[-1] != (b"c", b""):
                raise AssertionError("a verdict does not end in continue")
        elif isinstance(action, milter.Send | milter.CannotRewrite):
            milter.split_replies(action.data)
        elif not isinstance(action, milter.Close):
            raise AssertionError(f"unexpected action {action!r}")
    closes = [i for i, a in enumerate(actions) if isinstance(a, milter.Close)]
    if closes != [len(actions) - 1]:
        raise AssertionError(f"Close at {closes} of {len(actions)} actions")
    return actions


def test_one_input(data: bytes) -> None:
    """One fuzz input: configuration bytes, cut points, then the stream."""
    bound, limit, cuts, stream = config(data)
    if feed(stream, cuts, bound, limit) != feed(stream, [], bound, limit):
        raise AssertionError("the segmentation changed the actions")


if __name__ == "__main__":
    if atheris is None:
        sys.exit("atheris is not installed (pip install -e '.[test]')")
    from common import run

    run(test_one_input, SEEDS)
