# atheris harness for the tcp_table wire format: any bytes, any split, bounded and consistent.
"""Coverage-guided fuzzing of :mod:`srsd.wire.tcp_table` (``fuzz/README.md``).

The input chooses a line limit and a segmentation, then is fed to a
:class:`~srsd.wire.tcp_table.RequestReader` in those pieces. Asserted:

* the reader never holds more than ``max_line + 1`` bytes, and nothing once closed;
* events are Request, BadRequest or TooLong; a Request's key is non-empty;
  TooLong is the last event and closes the reader; nothing comes after EOF;
* the pieces give exactly the events of the whole stream fed at once;
* a decoded key, encoded again as Postfix would send it, decodes to the same key;
* the reply for any key is one well-formed line within Postfix's bound that decodes back
  to the key (200) or says why not (500).
"""

from __future__ import annotations

try:
    import atheris
except ImportError:  # replaying an input (tests/test_fuzz_campaign.py) needs no fuzzer
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from srsd.wire import tcp_table
else:
    from srsd.wire import tcp_table

from common import Input, run, split_rest

LIMITS = [1, 2, 5, 16, 64, 255, tcp_table.MAX_REQUEST]
EVENTS = (tcp_table.Request, tcp_table.BadRequest, tcp_table.TooLong)
# The stream, then (read from the end) no cut points and the index of the limit.
SEEDS = [
    b"get alice@example.org\n\x00\x06",
    b"get a%20b%25c@x\r\nget b\nget\x00\x06",
    b"get 0123456789abcdef\n\x00\x03",
    b"put x\nget %zz\nget %00\n\nget  a@b \n\x00\x06",
]


def feed(reader: tcp_table.RequestReader, pieces: list[bytes], bound: int) -> list[object]:
    events: list[object] = []
    for piece in pieces:
        was_closed = reader.closed
        new = reader.feed(piece)
        if was_closed and new:
            raise AssertionError(f"events after closing: {new!r}")
        if reader.buffered > bound:
            raise AssertionError(f"{reader.buffered} bytes buffered, bound {bound}")
        events += new
    closed_before_eof = reader.closed
    last = reader.feed_eof()
    if closed_before_eof and last:
        raise AssertionError(f"events after closing: {last!r}")
    if reader.buffered or not reader.closed or reader.feed(b"x\n"):
        raise AssertionError("the reader is not closed and empty after EOF")
    return events + last


def test_one_input(data: bytes) -> None:
    """One fuzz input: the stream, then cut points and a limit at its end."""
    fdp = Input(data)
    max_line = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    stream, pieces = split_rest(fdp)
    events = feed(tcp_table.RequestReader(max_line), pieces, max_line + 1)
    if events != feed(tcp_table.RequestReader(max_line), [stream], max_line + 1):
        raise AssertionError("the segmentation changed the events")
    for i, event in enumerate(events):
        if not isinstance(event, EVENTS):
            raise AssertionError(f"unexpected event {event!r}")
        if isinstance(event, tcp_table.TooLong) and i != len(events) - 1:
            raise AssertionError("TooLong is not the last event")
        if isinstance(event, tcp_table.Request):
            key = event.key
            if not key:
                raise AssertionError(f"bad key {key!r}")
            reader = tcp_table.RequestReader(max(max_line, 4 * len(key) + 4))
            again = reader.feed(tcp_table.encode_request(key))
            if again != [event]:
                raise AssertionError(f"{key!r} does not survive Postfix's encoding: {again!r}")
            check_reply(key)


def check_reply(value: bytes) -> None:
    reply = tcp_table.found(value)
    if len(reply) > tcp_table.MAX_REPLY or not reply.endswith(b"\n") or reply.count(b"\n") != 1:
        raise AssertionError(f"malformed reply {reply[:80]!r}")
    code, text = tcp_table.parse_reply(reply)
    if (code, text) != (200, value) and code != 500:
        raise AssertionError(f"reply {reply[:80]!r} for {value[:80]!r}")


if __name__ == "__main__":
    run(test_one_input, SEEDS)
