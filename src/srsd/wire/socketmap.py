# Postfix's socketmap wire format, sans-IO: netstring requests in, netstring replies out.
"""Speak Postfix's ``socketmap_table(5)`` protocol without doing any I/O.

With ``sender_canonical_maps = socketmap:inet:127.0.0.1:10003:forward`` (or
``socketmap:unix:/run/srsd/srsd.sock:forward``) Postfix sends each lookup as one
netstring, ``LENGTH:PAYLOAD,`` with LENGTH in decimal, whose payload is the map name, a
space and the key, raw (no %-encoding)::

    b"25:forward alice@example.org,"

The server answers with one netstring whose payload is ``OK <value>``, ``NOTFOUND <text>``,
``TEMP <text>``, ``TIMEOUT <text>`` or ``PERM <text>``. To Postfix's canonical maps
``NOTFOUND`` means "no rewrite", while ``TEMP`` and ``PERM`` both defer the mail; so srsd
sends ``PERM`` only for an unknown map name or broken framing, never for anything a sender
controls. ``OK`` with an empty value counts as not found, and a reply payload over
:data:`MAX_REPLY` bytes is an error to Postfix.

:class:`RequestReader` turns received bytes into events (:class:`Request`,
:class:`BadFraming`, :class:`TooBig`); the functions below build reply bytes. Rules:

* LENGTH is one or more ASCII digits, no more than ``max_length`` has (leading zeros are
  allowed within that width); it may not exceed ``max_length``, and a length over the
  limit is :class:`TooBig` as soon as its digits prove it, so the reader never holds more
  than the bound plus its framing, however the bytes are split; its reason is the one
  every endpoint gives for a key over so many bytes (:data:`srsd.srs.address.TOO_LONG`), and
  srsd answers it ``NOTFOUND`` (then closes), as a sender controls it. Anything else before
  ``:`` (more digits too), or a payload not followed by ``,``, is :class:`BadFraming`.
  Both close the reader: the framing can no longer be trusted.
* The payload splits at its first space into the map name and the key; the key may be
  empty and may hold spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from srsd.srs import address

#: Default bound on a request payload, in bytes.
MAX_REQUEST = 4096
#: Postfix's bound on a reply payload, in bytes (socketmap_table(5)).
MAX_REPLY = 100_000


@dataclass(frozen=True, slots=True)
class Request:
    """One lookup: the map ``name`` (``forward`` / ``reverse``) and the raw ``key``."""

    name: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class BadFraming:
    """Not a netstring: answer ``PERM <reason>`` and close; the reader is closed."""

    reason: str


@dataclass(frozen=True, slots=True)
class TooBig:
    """A request over the length bound: answer ``NOTFOUND <reason>`` and close (the
    reader is closed: the rest of the netstring is not read)."""

    reason: str


Event = Request | BadFraming | TooBig

_TOO_BIG = TooBig(address.TOO_LONG)
_BAD_LENGTH = BadFraming("Invalid netstring length")
_NO_COMMA = BadFraming("Netstring not terminated by a comma")
_DIGITS = frozenset(b"0123456789")


class RequestReader:
    """Turn the bytes of one socketmap connection into events, whatever their chunking."""

    __slots__ = ("_buf", "_closed", "_max_digits", "_max_length")

    def __init__(self, max_length: int = MAX_REQUEST) -> None:
        if not 1 <= max_length <= MAX_REPLY:
            raise ValueError(f"max_length must be 1..{MAX_REPLY}")
        self._max_length = max_length
        self._max_digits = len(str(max_length))
        self._buf = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete netstring (at most the bound plus its framing)."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True after :class:`BadFraming`, :class:`TooBig` or EOF."""
        return self._closed

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Take the next bytes received; return an event for each netstring they complete."""
        if self._closed:
            return []
        held = self._buf
        if held:
            held += data
            buf: bytes | bytearray = held
        else:
            buf = data  # the usual case, nothing held: parse the chunk as it came
        events: list[Event] = []
        start, size = 0, len(buf)
        max_length, widest = self._max_length, self._max_digits
        while start < size:
            # The usual netstring, whole and well-formed, in a few C-level steps; anything
            # else (split, malformed, over the bound) is decided digit by digit below.
            colon = buf.find(b":", start, start + widest + 1)
            if colon > start:
                digits = buf[start:colon]
                if digits.isdigit() and (length := int(digits)) <= max_length:
                    end = colon + 1 + length
                    if end < size and buf[end] == 0x2C:  # ","
                        name, _, key = bytes(buf[colon + 1 : end]).partition(b" ")
                        events.append(Request(name, key))
                        start = end + 1
                        continue
            # Digit by digit, so that the verdict does not depend on how the bytes were split.
            length, colon = 0, start
            while colon < size and buf[colon] in _DIGITS:
                length = length * 10 + buf[colon] - 0x30
                colon += 1
                if length > max_length:
                    return self._fail(events, _TOO_BIG)
                if colon - start > widest:
                    return self._fail(events, _BAD_LENGTH)
            if colon == size:
                break  # the length is not complete yet
            if colon == start or buf[colon] != 0x3A:  # ":"
                return self._fail(events, _BAD_LENGTH)
            end = colon + 1 + length
            if size <= end:
                break  # payload or comma still to come
            return self._fail(events, _NO_COMMA)
        if held:
            del held[:start]
        elif start < size:
            held += buf[start:]
        return events

    def feed_eof(self) -> list[Event]:
        """The peer closed its side. An incomplete netstring is dropped (nothing to answer)."""
        self._closed = True
        self._buf = bytearray()
        return []

    def _fail(self, events: list[Event], event: Event) -> list[Event]:
        self._closed = True
        self._buf = bytearray()
        events.append(event)
        return events


def netstring(payload: bytes) -> bytes:
    """``payload`` framed as a netstring."""
    return b"%d:%s," % (len(payload), payload)


def _status(word: bytes, text: bytes) -> bytes:
    room = MAX_REPLY - len(word) - 1
    return netstring(word + b" " + text[:room])


def ok(value: bytes) -> bytes:
    """``OK <value>``; an empty or over-long value is not found instead (Postfix refuses it)."""
    if not value:
        return not_found("Empty rewrite result")
    if len(value) + 3 > MAX_REPLY:
        return not_found("Rewritten address too long for socketmap")
    return netstring(b"OK " + value)


def not_found(reason: str) -> bytes:
    """``NOTFOUND <reason>``: no rewrite; Postfix keeps the address."""
    return _status(b"NOTFOUND", reason.encode("utf-8", "backslashreplace"))


def temporary_failure(reason: str) -> bytes:
    """``TEMP <reason>``: srsd cannot decide now; Postfix defers the mail."""
    return _status(b"TEMP", reason.encode("utf-8", "backslashreplace"))


def permanent_failure(reason: str) -> bytes:
    """``PERM <reason>``: only for an unknown map name or broken framing."""
    return _status(b"PERM", reason.encode("utf-8", "backslashreplace"))


def parse_netstring(data: bytes) -> tuple[bytes, bytes] | None:
    """Split one netstring off ``data``: (payload, rest), None if incomplete; ValueError if
    malformed. For clients (``srsd health``, tests) reading srsd's replies."""
    most = len(str(MAX_REPLY))  # digits of the longest reply Postfix accepts
    colon = data.find(b":", 0, most + 1)
    if colon < 0:
        if len(data) > most or not _DIGITS.issuperset(data):
            raise ValueError("malformed netstring length")
        return None
    digits = data[:colon]
    if not digits or not _DIGITS.issuperset(digits):
        raise ValueError("malformed netstring length")
    end = colon + 1 + int(digits)
    if len(data) <= end:
        return None
    if data[end] != 0x2C:
        raise ValueError("netstring not terminated by a comma")
    return data[colon + 1 : end], data[end + 1 :]
