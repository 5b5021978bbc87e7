# atheris harness for the socketmap wire format: any bytes, any split, bounded and consistent.
"""Coverage-guided fuzzing of :mod:`srsd.wire.socketmap` (``fuzz/README.md``).

The input chooses a length bound and a segmentation, then is fed to a
:class:`~srsd.wire.socketmap.RequestReader` in those pieces. Asserted:

* the reader never holds more than the bound plus its framing (digits, ``:`` and ``,``),
  and nothing once closed;
* events are Request, BadFraming or TooBig; a failure is the last event and closes the
  reader; EOF gives no event; nothing comes after closing;
* the pieces give exactly the events of the whole stream fed at once;
* a Request's name has no space and the payload fits the bound; framed again as a
  netstring it decodes to the same Request;
* replies for any value are one netstring within Postfix's bound that a client parses.
"""

from __future__ import annotations

try:
    import atheris
except ImportError:  # replaying an input (tests/test_fuzz_campaign.py) needs no fuzzer
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from srsd.wire import socketmap
else:
    from srsd.wire import socketmap

from common import Input, run, split_rest

LIMITS = [1, 9, 10, 64, 99, 100, 255, socketmap.MAX_REQUEST]
FAILURES = (socketmap.BadFraming, socketmap.TooBig)
# The stream, then (read from the end) no cut points and the index of the bound.
SEEDS = [
    socketmap.netstring(b"forward alice@example.org") + b"\x00\x07",
    socketmap.netstring(b"reverse SRS0=abcd=IL=x=y@f") * 2 + b"3:ab\x00\x07",
    b"0064:" + b"x" * 64 + b",\x00\x03",
    b"0:,1:x,4097:\x00\x07",
]


def feed(reader: socketmap.RequestReader, pieces: list[bytes], bound: int) -> list[object]:
    events: list[object] = []
    for piece in pieces:
        was_closed = reader.closed
        new = reader.feed(piece)
        if was_closed and new:
            raise AssertionError(f"events after closing: {new!r}")
        if reader.buffered > bound:
            raise AssertionError(f"{reader.buffered} bytes buffered, bound {bound}")
        events += new
    if reader.feed_eof() or reader.buffered or not reader.closed or reader.feed(b"1:x,"):
        raise AssertionError("EOF gave an event, or left the reader open")
    return events


def test_one_input(data: bytes) -> None:
    """One fuzz input: the stream, then cut points and a bound at its end."""
    fdp = Input(data)
    max_length = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    bound = max_length + len(str(max_length)) + 2
    stream, pieces = split_rest(fdp)
    events = feed(socketmap.RequestReader(max_length), pieces, bound)
    if events != feed(socketmap.RequestReader(max_length), [stream], bound):
        raise AssertionError("the segmentation changed the events")
    for i, event in enumerate(events):
        if isinstance(event, FAILURES):
            if i != len(events) - 1:
                raise AssertionError("a framing failure is not the last event")
            continue
        if not isinstance(event, socketmap.Request):
            raise AssertionError(f"unexpected event {event!r}")
        payload = event.name + b" " + event.key
        if b" " in event.name or len(event.name) + len(event.key) > max_length:
            raise AssertionError(f"bad request {event!r}")
        if len(payload) <= max_length:
            again = socketmap.RequestReader(max_length).feed(socketmap.netstring(payload))
            if again != [event]:
                raise AssertionError(f"{event!r} does not survive framing: {again!r}")
        check_replies(event.key)


def check_replies(value: bytes) -> None:
    for reply in (socketmap.ok(value), socketmap.not_found(value.decode("latin-1"))):
        parsed = socketmap.parse_netstring(reply)
        if parsed is None or parsed[1] or len(parsed[0]) > socketmap.MAX_REPLY:
            raise AssertionError(f"malformed reply {reply[:80]!r}")


if __name__ == "__main__":
    run(test_one_input, SEEDS)
