# Tests of the socketmap wire format (sans-IO): netstring framing, limits, exact reply bytes.
"""Exact bytes in, exact events or bytes out; then properties checked with hypothesis.

The framing rules under test (``srsd.wire.socketmap``): a request is ``LENGTH:PAYLOAD,``;
LENGTH is 1 to ``len(str(max_length))`` ASCII digits whose value is at most ``max_length``;
a value over the bound is :class:`TooBig` at the digit that proves it, whatever follows and
however the bytes were split; any other irregularity is :class:`BadFraming`; both close the
reader. The payload splits at its first space into map name and key.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srsd.serve.answers import socketmap_reply
from srsd.srs.policy import Decision, Outcome
from srsd.wire.socketmap import (
    MAX_REPLY,
    MAX_REQUEST,
    BadFraming,
    Event,
    Request,
    RequestReader,
    TooBig,
    netstring,
    not_found,
    ok,
    permanent_failure,
    temporary_failure,
)

TOO_BIG = TooBig("Address too long")
BAD_LENGTH = BadFraming("Invalid netstring length")
NO_COMMA = BadFraming("Netstring not terminated by a comma")
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATUS = re.compile(rb"(OK|NOTFOUND|TEMP|PERM) (.*)", re.DOTALL)


def feed_all(chunks: list[bytes], max_length: int = MAX_REQUEST) -> list[Event]:
    reader = RequestReader(max_length)
    return [event for chunk in chunks for event in reader.feed(chunk)]


def bytewise(data: bytes, max_length: int = MAX_REQUEST) -> list[Event]:
    return feed_all([data[i : i + 1] for i in range(len(data))], max_length)


def parse_reply(reply: bytes) -> tuple[bytes, bytes]:
    """(status word, text) of one reply netstring, checked as Postfix's client checks it."""
    match = re.fullmatch(rb"(\d+):(.*),", reply, re.DOTALL)
    assert match, reply[:80]
    assert int(match[1]) == len(match[2]), reply[:80]
    assert str(int(match[1])).encode() == match[1]  # no leading zeros, no sign
    payload = match[2]
    assert len(payload) <= MAX_REPLY
    status = STATUS.fullmatch(payload)
    assert status, payload[:80]
    return status[1], status[2]


# -- replies: exact bytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            ok(b"SRS0=abcd=AA=example.org=alice@forwarder.test"),
            b"48:OK SRS0=abcd=AA=example.org=alice@forwarder.test,",
        ),
        (ok(b"x"), b"4:OK x,"),
        (ok(b"a b,c:d"), b"10:OK a b,c:d,"),  # raw value, no escaping: netstrings need none
        (ok("jörg@example.org".encode()), b"20:OK j\xc3\xb6rg@example.org,"),
        (ok(b""), b"29:NOTFOUND Empty rewrite result,"),
        (not_found("no domain"), b"18:NOTFOUND no domain,"),
        (not_found(""), b"9:NOTFOUND ,"),
        (not_found("Not an SRS address."), b"28:NOTFOUND Not an SRS address.,"),
        (temporary_failure("srsd internal error"), b"24:TEMP srsd internal error,"),
        (permanent_failure("Too big"), b"12:PERM Too big,"),
        (permanent_failure("Unknown map name"), b"21:PERM Unknown map name,"),
        (permanent_failure("ö"), b"7:PERM \xc3\xb6,"),
        (permanent_failure("\udcff"), b"11:PERM \\udcff,"),  # never raises on odd text
        (netstring(b""), b"0:,"),
        (netstring(b"hello world"), b"11:hello world,"),
    ],
)
def test_reply_bytes(reply: bytes, expected: bytes) -> None:
    assert reply == expected


def test_ok_value_up_to_the_reply_bound() -> None:
    largest = b"a" * (MAX_REPLY - 3)  # "OK " + value: exactly MAX_REPLY bytes of payload
    reply = ok(largest)
    assert reply == b"100000:OK " + largest + b","
    assert parse_reply(reply) == (b"OK", largest)
    too_long = ok(largest + b"a")
    assert too_long == b"49:NOTFOUND Rewritten address too long for socketmap,"


@pytest.mark.parametrize("build", [not_found, temporary_failure, permanent_failure])
def test_long_reason_is_cut_to_the_reply_bound(build: object) -> None:
    assert callable(build)
    reply = build("x" * (2 * MAX_REPLY))
    assert reply.startswith(b"100000:")
    word, text = parse_reply(reply)
    assert len(word) + 1 + len(text) == MAX_REPLY
    assert set(text) == {ord("x")}


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision(Outcome.REWRITTEN, b"SRS0=x@f.test", "rewritten"), b"16:OK SRS0=x@f.test,"),
        (Decision(Outcome.REWRITTEN, b"", "rewritten"), b"29:NOTFOUND Empty rewrite result,"),
        (Decision(Outcome.REWRITTEN, None, "rewritten"), b"18:NOTFOUND rewritten,"),
        (Decision(Outcome.NULL_SENDER, reason="null sender"), b"20:NOTFOUND null sender,"),
        (Decision(Outcome.LOCAL, reason="local domain"), b"21:NOTFOUND local domain,"),
        (Decision(Outcome.EXCLUDED, reason="excluded domain"), b"24:NOTFOUND excluded domain,"),
        (
            Decision(Outcome.NOT_SRS, reason="Not an SRS address."),
            b"28:NOTFOUND Not an SRS address.,",
        ),
        (
            Decision(Outcome.BAD_HASH, reason="Hash invalid in SRS address."),
            b"37:NOTFOUND Hash invalid in SRS address.,",
        ),
        (
            Decision(Outcome.EXPIRED, reason="Time stamp out of date."),
            b"32:NOTFOUND Time stamp out of date.,",
        ),
        (
            Decision(Outcome.MALFORMED, reason="No host in SRS1 address."),
            b"33:NOTFOUND No host in SRS1 address.,",
        ),
        (Decision(Outcome.UNKNOWN_ALIAS, reason="Unknown alias."), b"23:NOTFOUND Unknown alias.,"),
        (
            Decision(Outcome.ERROR, reason="envelope database unavailable"),
            b"34:TEMP envelope database unavailable,",
        ),
    ],
)
def test_reply_for_decision(decision: Decision, expected: bytes) -> None:
    """Every "no rewrite" is NOTFOUND (never PERM: that would defer the mail); only srsd's
    own failure is TEMP."""
    assert socketmap_reply(decision) == expected


@PROPERTY
@given(
    value=st.binary(max_size=200)
    | st.integers(MAX_REPLY - 6, MAX_REPLY + 3).map(lambda n: b"v" * n)
)
def test_ok_never_carries_an_empty_or_oversized_value(value: bytes) -> None:
    word, text = parse_reply(ok(value))
    if word == b"OK":
        assert text == value
        assert text
    else:
        assert word == b"NOTFOUND"
        assert not value or len(value) > MAX_REPLY - 3


@PROPERTY
@given(
    outcome=st.sampled_from(Outcome),
    value=st.none() | st.binary(max_size=300),
    reason=st.text(max_size=300),
)
def test_every_decision_gives_one_well_formed_reply(
    outcome: Outcome, value: bytes | None, reason: str
) -> None:
    word, text = parse_reply(socketmap_reply(Decision(outcome, value, reason)))
    if outcome is Outcome.ERROR:
        assert word == b"TEMP"  # srsd cannot decide now: Postfix defers and retries
    elif word == b"OK":
        assert outcome is Outcome.REWRITTEN
        assert text == value
    else:
        assert word == b"NOTFOUND"  # never PERM: that would defer the mail for good reasons
    if outcome is not Outcome.REWRITTEN:
        assert text == reason.encode("utf-8", "backslashreplace")[: MAX_REPLY - len(word) - 1]


@PROPERTY
@given(reason=st.text(max_size=200), size=st.sampled_from([0, 1, MAX_REPLY - 5, MAX_REPLY]))
def test_status_replies_are_well_formed(reason: str, size: int) -> None:
    reason += "r" * size
    for build, word in (
        (not_found, b"NOTFOUND"),
        (temporary_failure, b"TEMP"),
        (permanent_failure, b"PERM"),
    ):
        assert parse_reply(build(reason))[0] == word


# -- requests: exact events ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "events"),
    [
        (b"25:forward alice@example.org,", [Request(b"forward", b"alice@example.org")]),
        (b"25:reverse alice@example.org,", [Request(b"reverse", b"alice@example.org")]),
        # the key is raw and split at the FIRST space only: it may hold spaces, commas, colons
        (b"19:forward a b@c d,e:f,", [Request(b"forward", b"a b@c d,e:f")]),
        (b"10:forward  a,", [Request(b"forward", b" a")]),
        (b"9:forward a,", [Request(b"forward", b"a")]),
        (b"8:forward ,", [Request(b"forward", b"")]),  # empty key
        (b"7:forward,", [Request(b"forward", b"")]),  # no space at all
        (b"2: x,", [Request(b"", b"x")]),  # empty name
        (b"0:,", [Request(b"", b"")]),
        (b"13:forward \xc3\xb6\x00\n\xff,", [Request(b"forward", b"\xc3\xb6\x00\n\xff")]),
        (b"7:FORWARD,", [Request(b"FORWARD", b"")]),  # names are the server's business
        # leading zeros, within the width of the bound (4096: four digits)
        (b"09:forward a,", [Request(b"forward", b"a")]),
        (b"0009:forward a,", [Request(b"forward", b"a")]),
        (b"00:,", [Request(b"", b"")]),
        (b"0000:,", [Request(b"", b"")]),
        # incomplete: nothing yet
        (b"", []),
        (b"2", []),
        (b"25", []),
        (b"25:", []),
        (b"25:forward alice@example.org", []),
    ],
)
def test_request(data: bytes, events: list[Event]) -> None:
    assert feed_all([data]) == events
    assert bytewise(data) == events


def test_concatenated_requests_and_a_partial_rest() -> None:
    reader = RequestReader()
    events = reader.feed(b"9:forward a,9:reverse b,0:,7:bogus c,9:forward d,7:forw")
    assert events == [
        Request(b"forward", b"a"),
        Request(b"reverse", b"b"),
        Request(b"", b""),
        Request(b"bogus", b"c"),
        Request(b"forward", b"d"),
    ]
    assert reader.buffered == len(b"7:forw")
    assert not reader.closed
    assert reader.feed(b"ard,") == [Request(b"forward", b"")]
    assert reader.buffered == 0


REQUESTS = (
    b"25:forward alice@example.org,"
    b"0:,"
    b"23:reverse SRS0=x=AA=b=c@d,"
    b"011:forward a b,"
    b"15:forward \xc3\xb6 \x00,:\n,"
)
REQUEST_EVENTS = [
    Request(b"forward", b"alice@example.org"),
    Request(b"", b""),
    Request(b"reverse", b"SRS0=x=AA=b=c@d"),
    Request(b"forward", b"a b"),
    Request(b"forward", b"\xc3\xb6 \x00,:\n"),
]


@pytest.mark.parametrize(
    "tail",
    [b"", b"4", b"40", b"409", b"4096", b"4096:", b"5:ab", b"3:abc", b"x", b"4097", b"12:a,"],
)
def test_split_at_every_point_gives_identical_events(tail: bytes) -> None:
    """Every two-way and three-way split of a stream gives the events of the whole."""
    data = REQUESTS + tail
    whole = feed_all([data])
    assert whole[: len(REQUEST_EVENTS)] == REQUEST_EVENTS
    for i in range(len(data) + 1):
        assert feed_all([data[:i], data[i:]]) == whole, i
    step = 7
    for i in range(0, len(data) + 1, step):
        for j in range(i, len(data) + 1):
            assert feed_all([data[:i], data[i:j], data[j:]]) == whole, (i, j)
    assert bytewise(data) == whole


@pytest.mark.parametrize(
    ("data", "event"),
    [
        # not a length at all
        (b"x", BAD_LENGTH),
        (b"a:bc,", BAD_LENGTH),
        (b"0x10:", BAD_LENGTH),
        (b"+5:hello,", BAD_LENGTH),
        (b"-5:hello,", BAD_LENGTH),
        (b" 5:hello,", BAD_LENGTH),
        (b"5 :hello,", BAD_LENGTH),
        (b"5\n:hello,", BAD_LENGTH),
        (b"\n", BAD_LENGTH),
        (b",", BAD_LENGTH),
        (b":x,", BAD_LENGTH),  # missing digits
        (b":", BAD_LENGTH),
        (b"\xd9:x,", BAD_LENGTH),  # not an ASCII digit
        ("٣:abc,".encode(), BAD_LENGTH),  # Arabic-Indic three: int() would take it
        (b"5;hello,", BAD_LENGTH),
        # a tcp_table request sent to the socketmap port
        (b"get alice@example.org\n", BAD_LENGTH),
        # more digits than the bound has, even with a small value
        (b"00009:forward a,", BAD_LENGTH),
        (b"00000", BAD_LENGTH),
        (b"0004096:", BAD_LENGTH),
        # the payload is not followed by a comma
        (b"3:abc;", NO_COMMA),
        (b"3:abcd,", NO_COMMA),
        (b"3:ab,x", NO_COMMA),  # an early comma is payload: the byte after it is checked
        (b"0:x", NO_COMMA),
        (b"5:hello\n", NO_COMMA),
        # over the bound: refused at the digit that proves it, before any payload
        (b"4097", TOO_BIG),
        (b"4097:", TOO_BIG),
        (b"5000", TOO_BIG),
        (b"99999:", TOO_BIG),
        (b"10000", TOO_BIG),
        (b"1234567890123456789012345678901234567890:", TOO_BIG),
        (b"04097", TOO_BIG),  # the value proves it before the width does
    ],
)
def test_bad_framing_closes_the_reader(data: bytes, event: Event) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = RequestReader()
        events = [e for chunk in chunks for e in reader.feed(chunk)]
        assert events == [event]
        assert reader.closed
        assert reader.buffered == 0
        # nothing more comes out of a closed reader, not even a valid request
        assert reader.feed(b"9:forward a,") == []
        assert reader.feed_eof() == []


def test_events_before_the_bad_framing_are_kept() -> None:
    reader = RequestReader()
    assert reader.feed(b"9:forward a,get b@c\n9:forward d,") == [
        Request(b"forward", b"a"),
        BAD_LENGTH,
    ]
    assert reader.closed
    reader = RequestReader()
    assert reader.feed(b"9:forward a,99999:") == [Request(b"forward", b"a"), TOO_BIG]


def test_too_big_is_refused_on_the_proving_digit_without_the_payload() -> None:
    """``99999:`` is all the client needs to send: the reader does not wait for 99999 bytes."""
    reader = RequestReader(4096)
    assert reader.feed(b"409") == []
    assert reader.buffered == 3
    assert reader.feed(b"7") == [TOO_BIG]
    assert reader.buffered == 0
    reader = RequestReader(4096)
    assert reader.feed(b"9999") == [TOO_BIG]


@pytest.mark.parametrize("max_length", [1, 9, 10, 256, 999, 1000, MAX_REQUEST, 65536, MAX_REPLY])
def test_length_bound_boundaries(max_length: int) -> None:
    payload = b"forward " + b"a" * max_length
    at_bound = b"%d:%s," % (max_length, payload[:max_length])
    assert feed_all([at_bound], max_length) == [Request(*payload[:max_length].partition(b" ")[::2])]
    over = b"%d:%s," % (max_length + 1, payload[: max_length + 1])
    assert feed_all([over], max_length) == [TOO_BIG]
    # leading zeros up to the width of the bound, not beyond
    width = len(str(max_length))
    assert feed_all([b"0" * (width - 1) + b"1:x,"], max_length) == [Request(b"x", b"")]
    assert feed_all([b"0" * width + b"1:x,"], max_length) == [BAD_LENGTH]
    # the largest buffer: a complete header and the whole payload, the comma still to come
    reader = RequestReader(max_length)
    assert reader.feed(at_bound[:-1]) == []
    assert reader.buffered == len(at_bound) - 1 <= max_length + width + 2


@pytest.mark.parametrize("max_length", [0, -1, MAX_REPLY + 1])
def test_bound_out_of_range(max_length: int) -> None:
    with pytest.raises(ValueError, match="max_length"):
        RequestReader(max_length)


def test_eof_drops_an_incomplete_request_and_closes() -> None:
    reader = RequestReader()
    assert reader.feed(b"9:forward a,25:forward alice") == [Request(b"forward", b"a")]
    assert reader.feed_eof() == []
    assert reader.closed
    assert reader.buffered == 0
    assert reader.feed(b"9:forward a,") == []


def test_a_reader_starts_open_and_empty() -> None:
    reader = RequestReader()
    assert not reader.closed
    assert reader.buffered == 0
    assert reader.feed(b"") == []
    assert not reader.closed


# -- properties -------------------------------------------------------------------------------


def oracle(data: bytes, max_length: int) -> list[Event]:
    """The events for the whole stream, by the rules in the module docstring, written the
    declarative way (regex, prefixes), not like the reader."""
    width = len(str(max_length))
    events: list[Event] = []
    while data:
        digits = re.match(rb"[0-9]*", data)[0]  # type: ignore[index]
        for k in range(1, len(digits) + 1):
            if int(digits[:k]) > max_length:
                return [*events, TOO_BIG]
            if k > width:
                return [*events, BAD_LENGTH]
        rest = data[len(digits) :]
        if not rest:
            return events
        if not digits or not rest.startswith(b":"):
            return [*events, BAD_LENGTH]
        size = int(digits)
        if len(rest) < 1 + size + 1:
            return events
        if rest[1 + size] != ord(","):
            return [*events, NO_COMMA]
        name, _, key = rest[1 : 1 + size].partition(b" ")
        events.append(Request(name, key))
        data = rest[size + 2 :]
    return events


names = st.sampled_from([b"forward", b"reverse", b"", b"FORWARD", b"bogus"])
keys = st.binary(max_size=40) | st.sampled_from([b"alice@example.org", b"", b" ", b"a b,c:"])


@st.composite
def valid_netstrings(draw: st.DrawFn) -> bytes:
    name, key = draw(names), draw(keys)
    payload = name + b" " + key if draw(st.booleans()) or key else name
    zeros = b"0" * draw(st.integers(0, 2))
    return zeros + b"%d:%s," % (len(payload), payload)


junk = st.sampled_from(
    [
        b"0",
        b"00",
        b"1",
        b"9",
        b"4096",
        b"4097",
        b"99999",
        b":",
        b",",
        b" ",
        b"x",
        b"-",
        b"+",
        b"\n",
        b"get a@b\n",
        b"3:abc",
        b"0:",
    ]
) | st.binary(max_size=6)
streams = st.lists(valid_netstrings() | junk, max_size=12).map(b"".join)
bounds = st.sampled_from([1, 9, 10, 64, 100, 4096, MAX_REPLY]) | st.integers(1, 300)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@PROPERTY
@given(data=streams, cuts=st.lists(st.integers(0, 10_000), max_size=8), max_length=bounds)
def test_any_split_gives_the_events_of_the_oracle(
    data: bytes, cuts: list[int], max_length: int
) -> None:
    expected = oracle(data, max_length)
    assert feed_all([data], max_length) == expected
    assert feed_all(split(data, cuts), max_length) == expected


@PROPERTY
@given(
    data=streams | st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    max_length=bounds,
)
def test_random_bytes_never_raise_and_the_buffer_stays_bounded(
    data: bytes, cuts: list[int], max_length: int
) -> None:
    reader = RequestReader(max_length)
    events: list[Event] = []
    bound = max_length + len(str(max_length)) + 2
    for chunk in split(data, cuts):
        events += reader.feed(chunk)
        assert reader.buffered <= bound
    assert all(isinstance(e, Request | BadFraming | TooBig) for e in events)
    failures = [i for i, e in enumerate(events) if not isinstance(e, Request)]
    assert failures in ([], [len(events) - 1])  # a failure is the last event, and closes
    assert reader.closed == bool(failures)
    for event in events:
        if isinstance(event, Request):
            assert b" " not in event.name
            assert len(event.name) + len(event.key) <= max_length


@PROPERTY
@given(
    zeros=st.integers(0, 4),
    max_length=st.integers(1, 60) | st.sampled_from([99, 100, 256]),
    data=st.binary(max_size=70),
)
def test_buffer_bound_under_a_byte_by_byte_feed(zeros: int, max_length: int, data: bytes) -> None:
    """A length prefix (padded with zeros) fed slowly, then a payload up to the bound."""
    reader = RequestReader(max_length)
    stream = b"0" * zeros + str(max_length).encode() + b":" + b"p" * max_length + data
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        assert reader.buffered <= max_length + len(str(max_length)) + 2


# -- regressions (bugs found by the tests above, fixed in srsd.wire.socketmap) ---------------------


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b"0000004:abcd,", BAD_LENGTH),  # was: a Request whole, BadFraming split after "0000004"
        (b"1234567890:", TOO_BIG),  # was: BadFraming whole, TooBig split
    ],
)
def test_regression_the_split_does_not_change_the_verdict(data: bytes, event: Event) -> None:
    assert feed_all([data]) == [event]
    assert bytewise(data) == [event]


def test_regression_leading_zeros_cannot_stretch_the_buffer() -> None:
    """Was: up to 7 digits accepted, so ``0004096:`` + 4096 bytes held 4104 bytes, over the
    bound of 4096 + 4 + 2."""
    reader = RequestReader(4096)
    assert reader.feed(b"0004096:" + b"x" * 4096) == [BAD_LENGTH]
    assert reader.buffered == 0


@PROPERTY
@given(
    requests=st.lists(st.tuples(names, keys), max_size=10),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_encoded_requests_come_back(requests: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    data = b"".join(netstring(name + b" " + key) for name, key in requests)
    assert feed_all(split(data, cuts)) == [Request(name, key) for name, key in requests]
