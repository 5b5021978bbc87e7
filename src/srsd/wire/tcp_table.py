# Postfix's tcp_table wire format, sans-IO: parse request lines, build reply lines.
"""Speak Postfix's ``tcp_table(5)`` protocol without doing any I/O.

Postfix, configured with ``sender_canonical_maps = tcp:127.0.0.1:10001``, opens a TCP
connection, keeps it, and sends one request at a time, waiting for each reply::

    get SP key LF                          e.g.  b"get alice@example.org\\n"

The key is %-encoded: Postfix sends ``%``, white space, control bytes, DEL and every byte
>= 0x80 as ``%XX`` (upper-case hex; either case is accepted here). The server answers with
one line::

    NNN SP text LF                         e.g.  b"200 SRS0=abcd=JM=example.org=alice@fw.test\\n"

``200`` means found (``text`` is the new value), ``500`` not found (``text`` is a reason,
ignored by Postfix; the connection stays open), ``400`` a temporary error (Postfix hangs up
and the mail is deferred). The text is %-encoded the same way; a bad ``%`` escape anywhere
makes Postfix treat the whole reply as a temporary error. A reply is at most
:data:`MAX_REPLY` bytes, LF included, and ``200`` with an empty value is a configuration
error to Postfix.

This module is the protocol and nothing else, in the style of h11: a
:class:`RequestReader` is fed the bytes a socket produced and hands back events
(:class:`Request`, :class:`BadRequest`, :class:`TooLong`); :func:`found`,
:func:`not_found` and :func:`temporary_failure` return the bytes to send.
The caller owns the socket::

    reader = RequestReader()
    while not reader.closed:
        data = await stream.receive_some()
        events = reader.feed(data) if data else reader.feed_eof()
        for event in events:
            if isinstance(event, Request):
                await stream.send_all(found(rewritten(event.key)))
            else:  # BadRequest keeps the connection, TooLong closes it (reader.closed)
                await stream.send_all(not_found(event.reason))

Precise rules implemented here:

* A request line ends at LF; one CR right before the LF is dropped too. Its length is
  counted *without* that ending (LF or CR LF): at most ``max_line`` bytes are accepted. A
  longer line is :class:`TooLong` as soon as the buffered part proves it, without waiting
  for the LF, and the reader is then closed. The reader never buffers more than
  ``max_line + 1`` bytes (a full line plus a CR whose LF is still to come).
* The line must start with exactly ``get`` and one space; everything after that space is
  the key, extra spaces included (``get  a@b`` has the key ``b" a@b"``, as in postsrsd).
  An empty key, another command or a bad ``%`` escape make a :class:`BadRequest`, and the
  reader carries on. Other raw bytes in the key are taken as they are, NUL (raw or
  ``%00``) and control bytes too: whether a key is an address at all is decided once for
  every endpoint (:func:`srsd.srs.address.refusal`), not by this wire format.
* :func:`line_limit` gives the line bound that carries every key of up to so many bytes
  (an address of ``max_request`` bytes, %-encoded); a :class:`TooLong` then says the same
  as a key over that many bytes does on every endpoint (:data:`srsd.srs.address.TOO_LONG`).
* A last line without LF before EOF is still a request (postsrsd answers it too).
* Replies encode every byte <= 0x20, >= 0x7F and ``%`` as ``%XX`` with upper-case hex,
  like Postfix's own ``hex_quote``, and end in a bare LF (Postfix would keep a CR).
"""

from __future__ import annotations

from dataclasses import dataclass

from srsd.srs import address

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "BadRequest",
    "Event",
    "Request",
    "RequestReader",
    "TooLong",
    "encode_request",
    "found",
    "line_limit",
    "not_found",
    "parse_reply",
    "temporary_failure",
]

#: Postfix's bound on a reply line, in bytes, the LF included.
MAX_REPLY: int = 4096


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed ``get KEY`` line; ``key`` is %-decoded and never empty."""

    key: bytes


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A malformed line: answer ``500 <reason>`` and keep reading the connection."""

    reason: str


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line over the limit: answer ``500 <reason>`` and close; the reader is closed."""

    reason: str


Event = Request | BadRequest | TooLong

_TOO_LONG = TooLong(address.TOO_LONG)
_GET = b"get "
_BAD_COMMAND = BadRequest("Invalid request, expected 'get KEY'")
_EMPTY_KEY = BadRequest("Empty key in request")
_BAD_ESCAPE = BadRequest("Invalid %-escape in request")

_HEX = "0123456789abcdefABCDEF"
# Every two-hex-digit pair, in any case, to the byte it stands for.
_UNHEX: dict[bytes, bytes] = {
    (h + lo).encode(): bytes((int(h + lo, 16),)) for h in _HEX for lo in _HEX
}


def line_limit(max_key: int) -> int:
    """The longest request line that carries every key of up to ``max_key`` bytes:
    ``get``, a space and the key with each byte %-encoded (three bytes)."""
    return len(_GET) + 3 * max_key


#: Default limit on a request line, in bytes, its LF or CR LF ending not counted: the line
#: of any key of :data:`srsd.srs.address.MAX_LENGTH` bytes.
MAX_REQUEST: int = line_limit(address.MAX_LENGTH)


def _parse(line: bytes) -> Event:
    """The event for one line, its LF / CR LF ending already removed."""
    # Membership tests with an int (``0 in key``) are the cheapest scans bytes offer.
    command, _, key = line.partition(b" ")
    if command != b"get":
        return _BAD_COMMAND
    if not key:
        return _EMPTY_KEY
    if 0x25 not in key:
        return Request(key)
    try:
        return Request(percent_decode(key))
    except ValueError:
        return _BAD_ESCAPE


def percent_decode(text: bytes) -> bytes:
    """``text`` with every ``%XX`` replaced by its byte (hex digits in either case).

    ValueError, whose argument is the two bytes after the ``%``, at the first escape that
    is not two hex digits. Requests and replies (:func:`parse_reply`) are decoded by this
    one function.
    """
    parts = text.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        byte = _UNHEX.get(part[:2])
        if byte is None:
            raise ValueError(part[:2])
        out += (byte, part[2:])
    return b"".join(out)


class RequestReader:
    """Turn the bytes of one tcp_table connection into events, whatever their chunking.

    Feeding a stream in one piece or one byte at a time gives the same events.
    """

    __slots__ = ("_buf", "_closed", "_max_line")

    def __init__(self, max_line: int = MAX_REQUEST) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._max_line = max_line
        self._buf = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete line are held (at most ``max_line + 1``)."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True after :class:`TooLong` or EOF: :meth:`feed` then returns ``[]``."""
        return self._closed

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Take the next bytes received; return an event for each line they complete.

        Events come in line order (several requests in one chunk are all returned). The
        bytes after the last LF are kept for the next call. A :class:`TooLong` is the last
        event ever returned: the reader closes and forgets its buffer. An empty ``data``
        is not EOF (call :meth:`feed_eof`); a ``bytearray`` is accepted and copied.
        """
        if self._closed:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        lines = data.split(b"\n")  # one pass over the chunk, however many lines it holds
        rest = lines.pop()  # the start of the next line, or b""
        if not lines:
            return self._hold(rest) if rest else []
        limit = self._max_line
        if self._buf:
            if len(self._buf) + len(lines[0]) > limit + 1:
                self._close()
                return [_TOO_LONG]
            lines[0] = b"".join((self._buf, lines[0]))
            self._buf.clear()
        events: list[Event] = []
        for raw in lines:
            line = raw[:-1] if 0x0D in raw and raw[-1] == 0x0D else raw
            if len(line) > limit:
                self._close()
                events.append(_TOO_LONG)
                return events
            events.append(_parse(line))
        if rest:
            events.extend(self._hold(rest))
        return events

    def feed_eof(self) -> list[Event]:
        """The peer closed its side: return the event for a last line without LF, if any.

        The reader is closed afterwards.
        """
        if self._closed:
            return []
        line = bytes(self._buf)
        self._close()
        if not line:
            return []
        if line[-1] == 0x0D:
            line = line[:-1]
        # _hold() keeps max_line + 1 bytes only when the last one is a CR: no check needed.
        return [_parse(line)]

    def _hold(self, data: bytes) -> list[Event]:
        """Buffer the start of a line (non-empty, no LF); TooLong once it cannot fit.

        The partial line may reach ``max_line + 1`` bytes only if its last byte is a CR,
        which an LF may yet turn into a line ending.
        """
        size = len(self._buf) + len(data)
        limit = self._max_line
        if size > limit and (size > limit + 1 or data[-1] != 0x0D):
            self._close()
            return [_TOO_LONG]
        self._buf += data
        return []

    def _close(self) -> None:
        self._closed = True
        self._buf = bytearray()


# Bytes sent as they are in a reply text; everything else becomes %XX.
_SAFE = bytes(c for c in range(0x21, 0x7F) if c != 0x25)
_ESCAPE: list[bytes] = [bytes((c,)) if c in _SAFE else b"%%%02X" % c for c in range(256)]
# Up to this many distinct bytes to escape, bytes.replace passes beat a per-byte join.
_FEW = 4
_MAX_TEXT = MAX_REPLY - 5  # room for "NNN " and LF

_FOUND = b"200 "
_NOT_FOUND = b"500 "
_TEMPORARY = b"400 "


def _quote(text: bytes) -> bytes:
    """``text`` with every byte <= 0x20, >= 0x7F and ``%`` written as upper-case ``%XX``."""
    special = text.translate(None, _SAFE)
    if not special:
        return text
    distinct = set(special)
    if len(distinct) > _FEW:
        return b"".join([_ESCAPE[c] for c in text])
    if 0x25 in distinct:  # first, or it would re-escape the other escapes
        text = text.replace(b"%", b"%25")
        distinct.discard(0x25)
    for c in distinct:
        text = text.replace(bytes((c,)), _ESCAPE[c])
    return text


# Replies with a reason, by reason: the reasons are a small fixed set of strings, and the
# reverse map answers "500 Not an SRS address." to nearly every inbound RCPT.
_NOT_FOUND_CACHE: dict[str, bytes] = {}
_TEMPORARY_CACHE: dict[str, bytes] = {}
_CACHE_SIZE = 256


def _with_reason(prefix: bytes, reason: str, cache: dict[str, bytes]) -> bytes:
    """``prefix`` and the encoded reason, cut so that the line fits :data:`MAX_REPLY`."""
    text = reason.encode("utf-8", "backslashreplace")
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT]  # each byte encodes to one or more: this is enough
    quoted = _quote(text)
    if len(quoted) > _MAX_TEXT:
        cut = quoted.rfind(b"%", _MAX_TEXT - 2, _MAX_TEXT)  # an escape that would not fit
        quoted = quoted[: cut if cut >= 0 else _MAX_TEXT]
    reply = prefix + quoted + b"\n"
    if len(cache) < _CACHE_SIZE:
        cache[reason] = reply
    return reply


def not_found(reason: str) -> bytes:
    """``500 <reason>``: no rewrite; Postfix tries its next map and keeps the connection.

    A reason too long for one reply line is cut (never inside a ``%XX`` escape).
    """
    reply = _NOT_FOUND_CACHE.get(reason)
    if reply is None:
        reply = _with_reason(_NOT_FOUND, reason, _NOT_FOUND_CACHE)
    return reply


def temporary_failure(reason: str) -> bytes:
    """``400 <reason>``: cannot decide now; Postfix hangs up and defers the mail.

    A reason too long for one reply line is cut (never inside a ``%XX`` escape).
    """
    reply = _TEMPORARY_CACHE.get(reason)
    if reply is None:
        reply = _with_reason(_TEMPORARY, reason, _TEMPORARY_CACHE)
    return reply


_EMPTY_VALUE = not_found("Empty rewrite result")
_VALUE_TOO_LONG = not_found("Rewritten address too long for tcp_table")


def found(value: bytes) -> bytes:
    """``200 <value>``: Postfix uses ``value`` instead of the key.

    Postfix refuses ``200`` with an empty value and replies over :data:`MAX_REPLY` bytes, so
    an empty value, or one whose encoded reply would be too long, gives a ``500`` instead.
    """
    if not value:
        return _EMPTY_VALUE
    if len(value) > _MAX_TEXT:
        return _VALUE_TOO_LONG
    quoted = _quote(value)
    if len(quoted) > _MAX_TEXT:
        return _VALUE_TOO_LONG
    return _FOUND + quoted + b"\n"


# -- the client side (``srsd health``, tests): what Postfix sends and how it reads a reply --


def encode_request(key: bytes) -> bytes:
    """The request line Postfix sends for ``key``: ``get`` + %-encoded key + LF."""
    return b"get " + _quote(key) + b"\n"


def parse_reply(line: bytes) -> tuple[int, bytes]:
    """Read a reply line as Postfix does: (status code, %-decoded text); ValueError if bad."""
    line = line.removesuffix(b"\n")
    if len(line) < 4 or not line[:3].isdigit() or line[3:4] != b" ":
        raise ValueError(f"malformed tcp_table reply: {line[:80]!r}")
    try:
        text = percent_decode(line[4:])
    except ValueError:
        raise ValueError(f"bad %-escape in tcp_table reply: {line[:80]!r}") from None
    return int(line[:3]), text
