# Stateful fuzzing of the two wire decoders: random splits, joins, garbage between requests, EOF.
"""hypothesis state machines drive :class:`srsd.wire.tcp_table.RequestReader` and
:class:`srsd.wire.socketmap.RequestReader` the way a hostile or clumsy client drives a connection.

Rules queue bytes (a valid request, garbage, an over-long line or length) and deliver the
queue in pieces of any size, or all at once, or end the stream; once the reader is closed
only delivering and EOF remain (they must produce nothing). A small model of the framing
(written out here, line lengths and netstring segments, not taken from the readers) says
which requests went in *intact*: at a frame boundary, within the limit, and wholly fed
before anything closed the reader. Every valid request carries a unique serial in its key
(``#17``), which garbage never contains, so each can be told apart. After every step:

* the reader holds no more than its bound (tcp_table: ``max_line + 1``; socketmap: the
  bound plus its framing), and nothing once closed;
* every event is of an allowed type, and a Request has a key the protocol allows;
* the intact requests came out, each exactly once, in order, and no other serial did;
* the reader closed exactly when the model says (an over-long line, broken framing, EOF),
  the closing event was the last one, and nothing came out after it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from srsd.wire import socketmap, tcp_table
from tests.harness.clients import hex_quote

#: Examples per machine; ``SRSD_STATEFUL_EXAMPLES=20000`` for a long run by hand.
EXAMPLES = int(os.environ.get("SRSD_STATEFUL_EXAMPLES", "300"))
MACHINE = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MARK = ord("#")  # only valid requests carry it: garbage is stripped of it

key_bodies = st.binary(min_size=0, max_size=30).map(
    lambda b: b.replace(b"#", b"").replace(b"\0", b"")
)
sizes = st.integers(1, 64) | st.integers(1, 5000)


def tcp_overlong_at(stream: bytes, max_line: int) -> int | None:
    """Where the first line the limit refuses starts, judging only by bytes already fed:
    a line over ``max_line`` (its LF and one CR before it not counted), or a partial line
    that can no longer fit (over ``max_line + 1``, or exactly that without a final CR)."""
    start = 0
    while True:
        lf = stream.find(b"\n", start)
        if lf < 0:
            partial = stream[start:]
            size = len(partial)
            if size > max_line + 1 or (size == max_line + 1 and partial[-1] != 0x0D):
                return start
            return None
        line = stream[start:lf]
        if len(line.removesuffix(b"\r")) > max_line:
            return start
        start = lf + 1


class TcpTableReaderMachine(RuleBasedStateMachine):
    """One tcp_table connection, seen by the reader."""

    def __init__(self) -> None:
        super().__init__()
        self.max_line = tcp_table.MAX_REQUEST
        self.reader = tcp_table.RequestReader()
        self.fed = bytearray()  # delivered to the reader, in order
        self.queue = bytearray()  # queued, not yet delivered
        self.at_boundary = True  # the queued stream ends at a line boundary
        self.serial = 0
        # intact requests: (where the key ends, where the line ends, key, ends in LF)
        self.candidates: list[tuple[int, int, bytes, bool]] = []
        self.events: list[tcp_table.Event] = []
        self.eof_at: int | None = None  # how many events there were when EOF was fed

    @initialize(max_line=st.sampled_from([12, 40, 120, tcp_table.MAX_REQUEST]))
    def limit(self, max_line: int) -> None:
        self.max_line = max_line
        self.reader = tcp_table.RequestReader(max_line)

    def _queue(self, data: bytes) -> int:
        self.queue += data
        return len(self.fed) + len(self.queue)

    def _key(self, body: bytes) -> bytes:
        self.serial += 1
        return body + b"#%d#" % self.serial  # no cut of one key is another key

    @precondition(lambda self: not self.reader.closed)
    @rule(body=key_bodies, crlf=st.booleans())
    def request(self, body: bytes, crlf: bool) -> None:
        key = self._key(body)
        line = b"get " + hex_quote(key)
        intact = self.at_boundary and len(line) <= self.max_line
        key_end = self._queue(line)
        end = self._queue(b"\r\n" if crlf else b"\n")
        if intact:
            self.candidates.append((key_end, end, key, True))
        self.at_boundary = True

    @precondition(lambda self: not self.reader.closed)
    @rule(bodies=st.lists(key_bodies, min_size=2, max_size=12), crlf=st.booleans())
    def pipelined_requests(self, bodies: list[bytes], crlf: bool) -> None:
        for body in bodies:
            self.request(body, crlf)

    @precondition(lambda self: not self.reader.closed)
    @rule(
        data=st.binary(max_size=40)
        | st.sampled_from(
            [
                b"get ",
                b"get",
                b"\n",
                b"\r",
                b"\r\n",
                b"%",
                b"%4",
                b"%00\n",
                b"get a%zz\n",
                b"GET a\n",
                b"get \n",
                b"get a\x00b\n",
                b"get a\r\r\n",
                b" \n",
            ]
        )
    )
    def garbage(self, data: bytes) -> None:
        data = data.replace(b"#", b"")
        if data:
            self._queue(data)
            self.at_boundary = data.endswith(b"\n")

    @precondition(lambda self: not self.reader.closed)
    @rule(extra=st.integers(0, 2), crlf=st.booleans(), back=st.none() | st.integers(0, 2))
    def line_at_the_limit(self, extra: int, crlf: bool, back: int | None) -> None:
        """A line of exactly ``max_line + extra`` bytes: at the limit, or just over it;
        then, unless ``back`` is None, everything queued is delivered up to ``back`` bytes
        before the line's LF (where the limit's verdict is decided)."""
        ending = b"\r\n" if crlf else b"\n"
        end = self._queue(b"get " + b"x" * (self.max_line - 4 + extra) + ending)
        self.at_boundary = True
        if back is not None:
            self.deliver_some(end - len(self.fed) - 1 - back, as_bytearray=False)

    @precondition(lambda self: not self.reader.closed)
    @rule(size=sizes, as_bytearray=st.booleans())
    def deliver_some(self, size: int, as_bytearray: bool) -> None:
        chunk = bytes(self.queue[:size])
        del self.queue[:size]
        self._feed(bytearray(chunk) if as_bytearray else chunk)

    @precondition(lambda self: not self.reader.closed)
    @rule(nth=st.integers(0, 3), back=st.integers(0, 2))
    def deliver_to_a_line_end(self, nth: int, back: int) -> None:
        """A split where the limits are decided: ``back`` bytes before the nth LF queued."""
        lf = -1
        for _ in range(nth + 1):
            lf = self.queue.find(b"\n", lf + 1)
            if lf < 0:
                return
        self.deliver_some(max(lf - back, 0), as_bytearray=False)

    @rule()
    def deliver_all(self) -> None:  # a join: everything queued in one segment
        chunk = bytes(self.queue)
        self.queue.clear()
        self._feed(chunk)

    def _feed(self, chunk: bytes | bytearray) -> None:
        was_closed = self.reader.closed
        new = self.reader.feed(chunk)
        if was_closed:
            assert new == []  # nothing after a closing event
        else:
            self.fed += chunk  # the model judges only what arrived while the reader was open
        self.events += new

    @rule()
    def eof(self) -> None:
        new = self.reader.feed_eof()
        if self.eof_at is not None:
            assert new == []
        else:
            self.eof_at = len(self.events) + len(new)
        self.events += new
        assert len(new) <= 1

    @precondition(lambda self: not self.reader.closed)
    @rule(body=key_bodies, cr=st.booleans())
    def last_request_without_newline_then_eof(self, body: bytes, cr: bool) -> None:
        key = self._key(body)
        line = b"get " + hex_quote(key)
        key_end = self._queue(line)
        end = self._queue(b"\r" if cr else b"")
        if self.at_boundary and len(line) <= self.max_line:
            self.candidates.append((key_end, end, key, False))
        self.deliver_all()
        self.eof()

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def buffer_is_bounded(self) -> None:
        assert self.reader.buffered <= self.max_line + 1
        if self.reader.closed:
            assert self.reader.buffered == 0

    @invariant()
    def events_are_of_the_allowed_types(self) -> None:
        for event in self.events:
            assert isinstance(event, tcp_table.Request | tcp_table.BadRequest | tcp_table.TooLong)
            if isinstance(event, tcp_table.Request):
                assert event.key

    @invariant()
    def closing_is_last_and_when_the_model_says(self) -> None:
        too_long = [i for i, e in enumerate(self.events) if isinstance(e, tcp_table.TooLong)]
        overlong = tcp_overlong_at(bytes(self.fed), self.max_line)
        assert bool(too_long) == (overlong is not None)
        if too_long:
            assert too_long == [len(self.events) - 1]  # the last event ever
        if self.eof_at is not None:
            assert len(self.events) == self.eof_at  # nothing after EOF
        assert self.reader.closed == (self.eof_at is not None or bool(too_long))

    @invariant()
    def intact_requests_come_out_once_in_order(self) -> None:
        fed = len(self.fed)
        overlong = tcp_overlong_at(bytes(self.fed), self.max_line)
        cutoff = fed if overlong is None else overlong
        expected = []
        for key_end, end, key, has_lf in self.candidates:
            complete = has_lf and end <= cutoff
            # EOF answers a last line that lacks only its ending (LF, CR LF, or all of it)
            last_at_eof = (
                self.eof_at is not None
                and overlong is None
                and key_end <= fed
                and (fed < end or not has_lf)
            )
            if complete or last_at_eof:
                expected.append(key)
        keys = {key for _, _, key, _ in self.candidates}
        marked = [e.key for e in self.events if isinstance(e, tcp_table.Request) and e.key in keys]
        assert marked == expected


# -- socketmap ----------------------------------------------------------------------------------

NAMES = [b"forward", b"reverse"]


class SocketmapReaderMachine(RuleBasedStateMachine):
    """One socketmap connection, seen by the reader."""

    def __init__(self) -> None:
        super().__init__()
        self.max_length = socketmap.MAX_REQUEST
        self.reader = socketmap.RequestReader()
        self.fed = bytearray()
        self.queue = bytearray()
        self.framed = True  # the queued stream ends at a netstring boundary we can vouch for
        self.serial = 0
        self.candidates: list[tuple[int, tuple[bytes, bytes]]] = []
        self.breaks: list[tuple[int, int]] = []  # (start, end) of segments that must close
        self.unknown_from: int | None = None  # where bytes of unknown effect begin
        self.events: list[socketmap.Event] = []
        self.eof_fed = False

    @initialize(max_length=st.sampled_from([16, 64, 100, socketmap.MAX_REQUEST]))
    def limit(self, max_length: int) -> None:
        self.max_length = max_length
        self.reader = socketmap.RequestReader(max_length)

    @property
    def bound(self) -> int:
        return self.max_length + len(str(self.max_length)) + 2

    def _queue(self, data: bytes) -> tuple[int, int]:
        start = len(self.fed) + len(self.queue)
        self.queue += data
        return start, start + len(data)

    @precondition(lambda self: not self.reader.closed)
    @rule(name=st.sampled_from(NAMES), body=key_bodies)
    def request(self, name: bytes, body: bytes) -> None:
        self.serial += 1
        key = body + b"#%d#" % self.serial
        payload = name + b" " + key
        if len(payload) > self.max_length:
            key = key[len(payload) - self.max_length :]  # keep the serial, fit the bound
            payload = name + b" " + key
            if len(payload) > self.max_length or MARK not in key:
                return
        _, end = self._queue(socketmap.netstring(payload))
        if self.framed:
            self.candidates.append((end, (name, key)))

    @precondition(lambda self: not self.reader.closed)
    @rule(requests=st.lists(st.tuples(st.sampled_from(NAMES), key_bodies), min_size=2, max_size=12))
    def pipelined_requests(self, requests: list[tuple[bytes, bytes]]) -> None:
        for name, body in requests:
            self.request(name, body)

    @precondition(lambda self: not self.reader.closed)
    @rule(payload=st.binary(max_size=20) | st.sampled_from([b"", b"bogus x", b"FORWARD a", b" "]))
    def framed_junk(self, payload: bytes) -> None:
        """A well-framed netstring that is no valid request of ours (unknown map name...)."""
        payload = payload.replace(b"#", b"")[: self.max_length]
        self._queue(socketmap.netstring(payload))

    @precondition(lambda self: not self.reader.closed)
    @rule(extra=st.integers(0, 2), back=st.none() | st.integers(0, 1))
    def length_at_the_bound(self, extra: int, back: int | None) -> None:
        """A netstring of exactly ``max_length`` bytes (well framed, no request of ours), a
        length one over it (refused as soon as its last digit arrives) or, for ``extra`` 2,
        the bound written with one digit too many (``0`` + bound: refused too); unless
        ``back`` is None, everything queued is then delivered but for the last ``back``
        bytes."""
        digits = b"%d" % (self.max_length + min(extra, 1))
        if extra == 2:
            digits = b"0%d" % self.max_length
        if extra:
            start, end = self._queue(digits + b":")
            if self.framed:
                self.breaks.append((start, end))
            self.framed = False
        else:
            _, end = self._queue(digits + b":" + b"x" * self.max_length + b",")
        if back is not None:
            self.deliver_some(end - len(self.fed) - back, as_bytearray=False)

    @precondition(lambda self: not self.reader.closed)
    @rule(
        kind=st.sampled_from(
            ["letter", "colon", "comma", "sign", "too big", "no comma", "too many digits", "space"]
        ),
        back=st.none() | st.integers(0, 1),
    )
    def breaking_junk(self, kind: str, back: int | None) -> None:
        """Bytes that close the reader when they arrive at a frame boundary; unless ``back``
        is None, everything queued is then delivered but for the last ``back`` bytes."""
        data = {
            "letter": b"x",
            "colon": b":",
            "comma": b",",
            "sign": b"-1:a,",
            "too big": b"%d:" % (self.max_length + 1),
            "no comma": b"1:ab",
            "too many digits": b"0" * (len(str(self.max_length)) + 1) + b":",
            "space": b" 1:a,",
        }[kind]
        start, end = self._queue(data)
        if self.framed:
            self.breaks.append((start, end))
        self.framed = False
        if back is not None:
            self.deliver_some(end - len(self.fed) - back, as_bytearray=False)

    @precondition(lambda self: not self.reader.closed)
    @rule(data=st.binary(min_size=1, max_size=30))
    def raw_garbage(self, data: bytes) -> None:
        data = data.replace(b"#", b"")
        if data:
            start, _ = self._queue(data)
            if self.framed:
                self.unknown_from = start if self.unknown_from is None else self.unknown_from
            self.framed = False

    @precondition(lambda self: not self.reader.closed)
    @rule(size=sizes, as_bytearray=st.booleans())
    def deliver_some(self, size: int, as_bytearray: bool) -> None:
        chunk = bytes(self.queue[:size])
        del self.queue[:size]
        self._feed(bytearray(chunk) if as_bytearray else chunk)

    @precondition(lambda self: not self.reader.closed)
    @rule(nth=st.integers(0, 5), back=st.integers(-1, 2))
    def deliver_to_a_frame_point(self, nth: int, back: int) -> None:
        """A split near the nth ``:`` or ``,`` queued, where the framing is decided."""
        points = [i for i, c in enumerate(self.queue) if c in b":,"]
        if nth < len(points):
            self.deliver_some(max(points[nth] - back, 0), as_bytearray=False)

    @rule()
    def deliver_all(self) -> None:
        chunk = bytes(self.queue)
        self.queue.clear()
        self._feed(chunk)

    def _feed(self, chunk: bytes | bytearray) -> None:
        was_closed = self.reader.closed
        new = self.reader.feed(chunk)
        if was_closed:
            assert new == []  # nothing after a closing event
        else:
            self.fed += chunk  # the model judges only what arrived while the reader was open
        self.events += new

    @rule()
    def eof(self) -> None:
        assert self.reader.feed_eof() == []  # an incomplete netstring has nothing to answer
        self.eof_fed = True

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def buffer_is_bounded(self) -> None:
        assert self.reader.buffered <= self.bound
        if self.reader.closed:
            assert self.reader.buffered == 0

    @invariant()
    def events_are_of_the_allowed_types(self) -> None:
        for event in self.events:
            assert isinstance(event, socketmap.Request | socketmap.BadFraming | socketmap.TooBig)
            if isinstance(event, socketmap.Request):
                assert b" " not in event.name
                assert len(event.name) + len(event.key) <= self.max_length

    def _first_uncertain(self) -> int | None:
        """Where the stream stops being one the model can vouch for."""
        starts = [start for start, _ in self.breaks[:1]]
        if self.unknown_from is not None:
            starts.append(self.unknown_from)
        return min(starts, default=None)

    @invariant()
    def closing_is_last_and_when_the_model_says(self) -> None:
        failures = [i for i, e in enumerate(self.events) if not isinstance(e, socketmap.Request)]
        assert failures in ([], [len(self.events) - 1])  # a failure is the last event
        fed = len(self.fed)
        uncertain = self._first_uncertain()
        if not self.eof_fed and (uncertain is None or fed <= uncertain):
            assert not self.reader.closed  # nothing has broken the framing yet
            assert not failures
        if self.breaks and self.breaks[0][1] <= fed and self.breaks[0][0] == uncertain:
            assert self.reader.closed  # the breaking bytes have all arrived
            assert failures or self.eof_fed
        if failures or self.eof_fed:
            assert self.reader.closed

    @invariant()
    def intact_requests_come_out_once_in_order(self) -> None:
        uncertain = self._first_uncertain()
        cutoff = len(self.fed) if uncertain is None else min(uncertain, len(self.fed))
        expected = [request for end, request in self.candidates if end <= cutoff]
        keys = {request for _, request in self.candidates}
        marked = [
            (e.name, e.key)
            for e in self.events
            if isinstance(e, socketmap.Request) and (e.name, e.key) in keys
        ]
        assert marked == expected


TestTcpTableReader = TcpTableReaderMachine.TestCase
TestTcpTableReader.settings = MACHINE
TestSocketmapReader = SocketmapReaderMachine.TestCase
TestSocketmapReader.settings = MACHINE
