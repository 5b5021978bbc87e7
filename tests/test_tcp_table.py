# Tests of the tcp_table wire format: request parsing, limits, reply encoding.
"""Exact bytes in, exact events or bytes out; then properties checked with hypothesis."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.serve.answers import tcp_table_reply
from srsd.srs.policy import Decision, Outcome
from srsd.wire.tcp_table import (
    MAX_REPLY,
    MAX_REQUEST,
    BadRequest,
    Event,
    Request,
    RequestReader,
    TooLong,
    encode_request,
    found,
    line_limit,
    not_found,
    temporary_failure,
)
from tests.harness.clients import hex_quote

BAD_ESCAPE = BadRequest("Invalid %-escape in request")
TOO_LONG = TooLong("Address too long")
PROPERTY = settings(max_examples=300, deadline=None)


def feed_all(chunks: list[bytes], max_line: int = MAX_REQUEST, *, eof: bool = False) -> list[Event]:
    reader = RequestReader(max_line)
    events = [event for chunk in chunks for event in reader.feed(chunk)]
    return events + reader.feed_eof() if eof else events


REPLY = re.compile(rb"(\d{3}) ((?:[\x21-\x24\x26-\x7e]|%[0-9A-F]{2})*)\n")


def parse_reply(reply: bytes) -> tuple[bytes, bytes]:
    """(code, decoded text) of a reply line, checked the way Postfix would, and stricter."""
    assert len(reply) <= MAX_REPLY
    match = REPLY.fullmatch(reply)
    assert match, reply
    return match[1], unquote_to_bytes(match[2])


# -- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b"get alice@example.org\n", b"alice@example.org"),
        (b"get alice@example.org\r\n", b"alice@example.org"),
        (b"get a\r\r\n", b"a\r"),  # one CR only is part of the ending
        (b"get a\rb\n", b"a\rb"),
        (b"get  a@b\n", b" a@b"),  # extra spaces belong to the key, as in postsrsd
        (b"get a@b \n", b"a@b "),
        (b"get get\n", b"get"),
        (b'get a%20b%25c"d\\%C3%B6@X.Test\n', b'a b%c"d\\\xc3\xb6@X.Test'),
        (b"get %c3%B6%e9%7F%01\n", b"\xc3\xb6\xe9\x7f\x01"),
        (b"get %25%32%30\n", b"%20"),  # decoded once, not twice
        (b"get \xff\x01\n", b"\xff\x01"),  # raw bytes are taken as they are
    ],
)
def test_request(line: bytes, key: bytes) -> None:
    assert feed_all([line]) == [Request(key)]


def test_nul_and_control_bytes_are_keys_for_the_policy_to_refuse() -> None:
    # Whether a key is an address at all is decided once for every endpoint
    # (address.refusal, through the policy): the wire only decodes it.
    reader = RequestReader()
    assert reader.feed(b"get a%00b\nget a\0b\nget a%0D%0Ab\n") == [
        Request(b"a\0b"),
        Request(b"a\0b"),
        Request(b"a\r\nb"),
    ]


def test_line_limit_carries_every_key_of_so_many_bytes() -> None:
    key = bytes(range(0x80, 0x100)) * 2  # every byte %-encoded: three bytes each
    line = encode_request(key)[:-1]
    assert len(line) == line_limit(len(key))
    assert RequestReader(line_limit(len(key))).feed(line + b"\n") == [Request(key)]
    assert RequestReader(line_limit(len(key)) - 1).feed(line + b"\n") == [TOO_LONG]
    assert TOO_LONG.reason == "Address too long"


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"\r\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"get\n", BadRequest("Empty key in request")),
        (b"get \n", BadRequest("Empty key in request")),
        (b"get \r\n", BadRequest("Empty key in request")),
        (b"GET a@b\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"put a@b c@d\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"getx a@b\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"get\ta@b\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b" get a@b\n", BadRequest("Invalid request, expected 'get KEY'")),
        (b"get a%zz@b\n", BAD_ESCAPE),
        (b"get a@b%\n", BAD_ESCAPE),
        (b"get a@b%4\n", BAD_ESCAPE),
        (b"get a%4g\n", BAD_ESCAPE),
        (b"get a%+1\n", BAD_ESCAPE),  # int("+1", 16) would take it
        (b"get a% 1\n", BAD_ESCAPE),
        (b"get a%_1\n", BAD_ESCAPE),
    ],
)
def test_bad_request(line: bytes, event: BadRequest) -> None:
    reader = RequestReader()
    assert reader.feed(line + b"get ok\n") == [event, Request(b"ok")]
    assert not reader.closed


def test_pipelined_requests_and_partial_rest() -> None:
    reader = RequestReader()
    events = reader.feed(b"get a@x\nget b@x\r\nget\nget c@x\nget d@")
    assert events == [
        Request(b"a@x"),
        Request(b"b@x"),
        BadRequest("Empty key in request"),
        Request(b"c@x"),
    ]
    assert reader.buffered == len(b"get d@")
    assert reader.feed(b"x") == []
    assert reader.feed(b"\n") == [Request(b"d@x")]
    assert reader.buffered == 0
    assert reader.feed(b"") == []  # not EOF: feed_eof() is
    assert not reader.closed


def test_byte_at_a_time_is_the_same() -> None:
    stream = b"get a%20b@x\r\nget\nget c@x\nget " + b"k" * 20 + b"\nget d@x\n"
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    expected = [Request(b"a b@x"), BadRequest("Empty key in request"), Request(b"c@x")]
    assert (
        feed_all([stream], 24)
        == feed_all(one_by_one, 24)
        == [
            *expected,
            Request(b"k" * 20),
            Request(b"d@x"),
        ]
    )
    assert feed_all([stream], 20) == feed_all(one_by_one, 20) == [*expected, TOO_LONG]


def test_bytearray_input_gives_bytes_keys() -> None:
    (event,) = RequestReader().feed(bytearray(b"get a@b\n"))
    assert isinstance(event, Request)
    assert type(event.key) is bytes


def test_eof() -> None:
    reader = RequestReader()
    assert reader.feed(b"get a@b\nget c@d") == [Request(b"a@b")]
    assert reader.feed_eof() == [Request(b"c@d")]  # answered, as postsrsd does
    assert reader.closed
    assert reader.buffered == 0
    assert reader.feed(b"get e@f\n") == []
    assert reader.feed_eof() == []
    assert feed_all([b"get a@b\r"], eof=True) == [Request(b"a@b")]
    assert feed_all([b"get a%4"], eof=True) == [BAD_ESCAPE]
    assert feed_all([b"get a@b\n"], eof=True) == [Request(b"a@b")]
    assert feed_all([], eof=True) == []


# -- the line limit ---------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_limit_boundary_complete_lines(ending: bytes) -> None:
    at_limit = b"get " + b"k" * (MAX_REQUEST - 4)
    assert feed_all([at_limit + ending]) == [Request(b"k" * (MAX_REQUEST - 4))]
    assert feed_all([at_limit + b"k" + ending]) == [TOO_LONG]
    assert feed_all([b"get " + b"k" * 6 + ending], max_line=10) == [Request(b"k" * 6)]
    assert feed_all([b"get " + b"k" * 7 + ending], max_line=10) == [TOO_LONG]


def test_too_long_without_newline_and_closed() -> None:
    reader = RequestReader(10)
    assert reader.feed(b"get kkkkkk") == []  # 10 bytes: could still end here
    assert reader.buffered == 10
    assert reader.feed(b"k") == [TOO_LONG]  # 11: cannot; no need to wait for the LF
    assert reader.closed
    assert reader.buffered == 0
    assert reader.feed(b"\nget a@b\n") == []
    assert reader.feed_eof() == []


def test_too_long_ends_a_pipelined_chunk() -> None:
    assert feed_all([b"get a@b\n" + b"x" * 11 + b"\nget c@d\n"], 10) == [Request(b"a@b"), TOO_LONG]
    assert feed_all([b"get kk", b"kkkkk\nget c@d\n"], 10) == [TOO_LONG]


def test_cr_at_the_limit_waits_for_its_lf() -> None:
    reader = RequestReader(10)
    assert reader.feed(b"get kkkkkk\r") == []
    assert reader.buffered == 11
    assert reader.feed(b"\n") == [Request(b"kkkkkk")]
    reader = RequestReader(10)
    assert reader.feed(b"get kkkkkk\r") == []
    assert reader.feed(b"x") == [TOO_LONG]
    assert feed_all([b"get kkkkkk\r"], 10, eof=True) == [Request(b"kkkkkk")]


def test_endless_line_is_bounded() -> None:
    reader = RequestReader(100)
    for i in range(1, 101):
        assert reader.feed(b"\r" if i % 2 else b"x") == []
        assert reader.buffered == i
    assert reader.feed(b"\r") == []  # 101: a CR that an LF may follow
    assert reader.feed(b"\r") == [TOO_LONG]


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        RequestReader(0)


# -- replies ----------------------------------------------------------------------------


def test_found() -> None:
    value = b"SRS0=abcd=JM=example.org=alice@forwarder.test"
    assert found(value) == b"200 " + value + b"\n"
    assert found(b'"a b"%c@x') == b'200 "a%20b"%25c@x\n'
    assert found(b"\0\t\n\r \x7f\x80\xc3\xb6\xff!~") == (b"200 %00%09%0A%0D%20%7F%80%C3%B6%FF!~\n")


def test_found_refuses_what_postfix_refuses() -> None:
    assert found(b"") == b"500 Empty%20rewrite%20result\n"
    too_long = b"500 Rewritten%20address%20too%20long%20for%20tcp_table\n"
    fits = b"k" * (MAX_REPLY - 5)
    assert found(fits) == b"200 " + fits + b"\n"
    assert len(found(fits)) == MAX_REPLY
    assert found(fits + b"k") == too_long
    assert found(b" " * 1363 + b"kk").startswith(b"200 %20")  # encoded: 4091 bytes, fits
    assert found(b" " * 1364) == too_long  # 4092


def test_not_found_and_temporary_failure() -> None:
    assert not_found("Not an SRS address.") == b"500 Not%20an%20SRS%20address.\n"
    assert not_found("Not an SRS address.") == b"500 Not%20an%20SRS%20address.\n"  # cached
    assert not_found("") == b"500 \n"  # the shortest reply Postfix accepts
    assert not_found("100% sûr\n") == b"500 100%25%20s%C3%BBr%0A\n"
    assert temporary_failure("secrets not loaded") == b"400 secrets%20not%20loaded\n"
    assert not_found("\udcff") == b"500 \\udcff\n"  # a lone surrogate does not raise


@pytest.mark.parametrize("reply", [not_found, temporary_failure])
@pytest.mark.parametrize("lead", ["", "x", "xx", "xxx"])
def test_long_reason_is_cut_between_escapes(reply: Callable[[str], bytes], lead: str) -> None:
    reason = lead + "%" * 2000
    line = reply(reason)
    code, text = parse_reply(line)
    assert code == (b"500" if reply is not_found else b"400")
    assert MAX_REPLY - 3 <= len(line) <= MAX_REPLY
    assert reason.encode().startswith(text)
    assert len(reply("y" * 10_000)) == MAX_REPLY


@pytest.mark.parametrize(
    ("decision", "reply"),
    [
        (
            Decision(Outcome.REWRITTEN, b"SRS0=h=JM=b=a@fw.test", "rewritten"),
            b"200 SRS0=h=JM=b=a@fw.test\n",
        ),
        (Decision(Outcome.REWRITTEN, b"a b@c", "rewritten"), b"200 a%20b@c\n"),
        (Decision(Outcome.REWRITTEN, b"", "rewritten"), b"500 Empty%20rewrite%20result\n"),
        (Decision(Outcome.REWRITTEN, None, "odd"), b"500 odd\n"),
        (Decision(Outcome.LOCAL, reason="local domain"), b"500 local%20domain\n"),
        (
            Decision(Outcome.NOT_SRS, b"ignored", "Not an SRS address."),
            b"500 Not%20an%20SRS%20address.\n",
        ),
    ],
)
def test_tcp_table_reply(decision: Decision, reply: bytes) -> None:
    assert tcp_table_reply(decision) == reply


# -- properties -------------------------------------------------------------------------

keys = st.lists(st.integers(1, 255), min_size=1, max_size=200).map(bytes)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut at arbitrary points."""
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@PROPERTY
@given(st.lists(keys, max_size=8), st.sampled_from(["%%%02X", "%%%02x"]), st.booleans(), st.data())
def test_postfix_requests_in_any_chunks(
    keys: list[bytes], hexcase: str, crlf: bool, data: st.DataObject
) -> None:
    ending = b"\r\n" if crlf else b"\n"
    stream = b"".join(b"get " + hex_quote(key, hexcase) + ending for key in keys)
    reader = RequestReader()
    events = [e for chunk in data.draw(chunked(stream)) for e in reader.feed(chunk)]
    assert events == [Request(key) for key in keys]
    assert reader.buffered == 0


noise = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from([b"get ", b"get", b"\n", b"\r", b"\r\n", b"%", b"%4", b"%41", b"%00"]),
    ),
    max_size=30,
).map(b"".join)


@PROPERTY
@given(noise, st.integers(1, 40), st.data())
def test_any_bytes_in_any_chunks(stream: bytes, max_line: int, data: st.DataObject) -> None:
    reader = RequestReader(max_line)
    events: list[Event] = []
    for chunk in data.draw(chunked(stream)):
        events += reader.feed(chunk)
        assert reader.buffered <= max_line + 1
    events += reader.feed_eof()
    assert events == feed_all([stream], max_line, eof=True)  # chunking changes nothing
    for event in events:
        assert isinstance(event, Request | BadRequest | TooLong)
        if isinstance(event, Request):
            assert event.key
    assert TOO_LONG not in events[:-1]
    assert reader.closed
    assert reader.buffered == 0


@PROPERTY
@given(st.binary(max_size=1600))
def test_found_is_one_clean_line(value: bytes) -> None:
    code, text = parse_reply(found(value))
    fits = 0 < len(hex_quote(value)) <= MAX_REPLY - 5
    assert code == (b"200" if fits else b"500")
    if fits:
        assert text == value


@PROPERTY
@given(st.text(max_size=1600), st.sampled_from([not_found, temporary_failure]))
def test_reason_is_one_clean_line(reason: str, reply: Callable[[str], bytes]) -> None:
    _, text = parse_reply(reply(reason))
    assert reason.encode("utf-8", "backslashreplace").startswith(text)


garbage = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"", b"get", b"get ", b"GET a@b", b"get a%zz", b"get a%00", b"get %", b"\r"]),
).map(lambda line: line.replace(b"\n", b""))


@PROPERTY
@given(st.lists(garbage, max_size=5), keys)
def test_request_after_garbage_lines(lines: list[bytes], key: bytes) -> None:
    stream = b"".join(line + b"\n" for line in lines) + b"get " + hex_quote(key) + b"\n"
    events = feed_all([stream])
    assert len(events) == len(lines) + 1
    assert events[-1] == Request(key)
