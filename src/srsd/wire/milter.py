# The Sendmail milter wire format, sans-IO: MTA packets in, events and filter replies out.
"""Speak the filter side of the Sendmail milter protocol (version 6) without doing any I/O.

Postfix's ``smtpd_milters`` / ``non_smtpd_milters`` open one connection per SMTP session
(or per local submission) and talk in packets: a 4-byte big-endian length, counting the
command byte, then the command byte and its data; strings are NUL-terminated. srsd takes
part in four steps only: option negotiation (``O``), the envelope sender (``M``), each
envelope recipient (``R``) and the end of the message (``E``), where it may change the
sender (``e``, CHGFROM) and replace recipients (``-`` DELRCPT, ``+`` ADDRCPT), plus the
connect step (``C``) for its client port when it splits mixed transactions (below). Every
other step is switched off in the negotiation (``SMFIP_NOCONNECT`` unless splitting,
``NOHELO``, ``NOHDRS``, ``NOEOH``, ``NOBODY``, ``NODATA``, ``NOUNKNOWN``), and answered
``continue`` when an MTA sends it anyway. Macros (``D``) are read for the queue id (``i``)
only. When the MTA offers it (Postfix does, with ``milter_protocol = 6``) and grants every
action srsd needs, srsd also asks for no reply to MAIL (``SMFIP_NR_MAIL``): that reply
would be ``continue``, and the MTA saves a round trip per message.

:class:`Session` turns received bytes into :class:`Send`, :class:`Decide`,
:class:`Classify`, :class:`CannotRewrite` and :class:`Close` actions;
:meth:`Session.verdict` turns the decision for a message into the reply bytes. Rules:

* a packet length of 0 or over ``max_packet`` (:data:`MAX_PACKET`) is refused as soon as its
  four bytes are in, before any payload is read: the session buffers at most one packet;
* the first packet must be ``O``; a command out of place (a recipient before a sender, the
  end of a message outside one, a second negotiation), an unknown command or a malformed
  packet is a protocol error: the session says why in :class:`Close` and takes no more
  input. Postfix then applies ``milter_default_action`` (``tempfail``) to that SMTP session;
* at most ``recipient_limit`` recipients and ``message_bytes`` bytes of sender and
  recipients (each counted with :data:`ITEM_OVERHEAD` bytes more, what Python adds) are kept
  per message; each recipient over either is answered ``452 4.5.3 Too many recipients``, so
  the client sends it again in a later transaction and every recipient srsd decides on is
  one Postfix accepted;
* the bytes a session keeps are also taken from an :class:`Allowance` shared with other
  sessions (the server's memory budget): a recipient it refuses is answered ``452 4.3.1
  Insufficient system storage``, a sender ``t`` (temporary failure) when the MTA waits for
  MAIL's reply, else each recipient of that message ``452 4.3.1`` (and an end of it,
  which no MTA sends without a recipient, ``t``); all are retried by the client later.
  The bytes of a message go back to the allowance when its verdict is rendered
  (:meth:`Session.verdict`), or at :meth:`Session.release` when the session ends;
* a session that splits (``split=True``, setting ``split_mixed``) and serves an SMTP client
  keeps one class of recipient per message: each recipient is handed out as
  :class:`Classify`, the caller says whether it is delivered on this host, and
  :meth:`Session.admit` accepts it when it is of the first recipient's class, else answers
  ``452 4.5.3``: the client sends it again in a transaction of its own. A session splits
  only when the MTA's connect step names a client port: Postfix's ``non_smtpd_milters``
  sessions (sendmail, pickup) give port 0, and their client cannot send a recipient again
  (Postfix defers the whole submission), so they are never split; nor is a bounce (null
  sender, nothing to rewrite). While a recipient is being classified no further packet is
  taken from the input (:meth:`Session.feed` keeps it; ``feed(b"")`` goes on); an MTA waits
  for each reply, so more than one packet's worth behind it is a protocol error;
* an MTA that does not offer CHGFROM, ADDRCPT and DELRCPT (``milter_protocol`` below 6)
  gets a temporary failure for every sender, as a :class:`CannotRewrite` event that names
  what is missing: srsd never lets mail it cannot rewrite through;
* a change whose address is empty or holds a control byte (NUL, CR, LF, ...:
  :data:`srsd.srs.address.CONTROLS`) is never written: :func:`writable` leaves that sender or
  recipient as it is (a NUL would cut the string, a CR LF forge a line). Addresses with
  those bytes are refused before any decision (:func:`srsd.srs.address.refusal`); this holds
  even for a value that did not come from the input (an envelope database entry).

Why not ``kilter-protocol`` (PyPI, 0.6.0, the one sans-IO milter codec for Python): under
hostile input it fails in ways a server must not: a packet length of 0 leaves the command
byte in its buffer and yields nothing more for ever; an empty ``M`` packet escapes as
``RuntimeError`` (``StopIteration`` in a generator); a short ``O`` raises ``struct.error``;
non-ASCII macro values and host names raise ``UnicodeDecodeError``; a 4 GiB length is not
refused but waited for; some checks are ``assert`` statements (gone under ``python -O``).
It is marked "Development Status 1 - Planning" and was last released in May 2024. The
part of the protocol srsd needs is small, so it is written here and fuzzed
(``fuzz/fuzz_milter.py``).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from srsd.srs import address

#: Longest packet accepted, counting the command byte (libmilter's MILTER_MAX_DATA_SIZE is
#: 65535 bytes of data; srsd switches off the body and header steps that could need more).
MAX_PACKET = 65536
#: Default recipients kept per message (postsrsd's ``milter-recipient-limit``).
MAX_RECIPIENTS = 1000
#: Default bytes of sender and recipients kept per message.
MESSAGE_BYTES = 512 * 1024
#: Bytes counted for each address kept beyond its length (a bytes object and its list slot).
ITEM_OVERHEAD = 64
#: The milter protocol version srsd speaks (Postfix: ``milter_protocol = 6``).
VERSION = 6
_LENGTH = struct.Struct("!I")
_unpack_length = _LENGTH.unpack_from
_NEGOTIATION = struct.Struct("!III")

# MTA commands (libmilter mfdef.h, SMFIC_*).
ABORT = ord("A")
BODY = ord("B")
CONNECT = ord("C")
MACRO = ord("D")
END_OF_MESSAGE = ord("E")
HELO = ord("H")
QUIT_NEW_CONNECTION = ord("K")
HEADER = ord("L")
MAIL = ord("M")
END_OF_HEADERS = ord("N")
NEGOTIATE = ord("O")
QUIT = ord("Q")
RCPT = ord("R")
DATA = ord("T")
UNKNOWN_COMMAND = ord("U")

# Filter replies (SMFIR_*).
ADD_RECIPIENT = b"+"
DELETE_RECIPIENT = b"-"
ACCEPT = b"a"
CONTINUE = b"c"
CHANGE_SENDER = b"e"
TEMPORARY_FAILURE = b"t"
REPLY_CODE = b"y"


class Action(enum.IntFlag):
    """What a filter may do at the end of a message (SMFIF_*)."""

    ADD_RECIPIENT = 0x04
    DELETE_RECIPIENT = 0x08
    CHANGE_SENDER = 0x40


class ProtocolFlag(enum.IntFlag):
    """Protocol flags (SMFIP_*): steps the MTA may leave out."""

    NO_CONNECT = 0x001
    NO_HELO = 0x002
    NO_BODY = 0x010
    NO_HEADERS = 0x020
    NO_END_OF_HEADERS = 0x040
    NO_UNKNOWN = 0x100
    NO_DATA = 0x200
    NO_REPLY_MAIL = 0x4000  # SMFIP_NR_MAIL: the MTA goes on without waiting for a reply


#: The protocol's names of those actions (libmilter's smfi_chgfrom, smfi_addrcpt, ...).
ACTION_NAMES = {
    Action.CHANGE_SENDER: "CHGFROM",
    Action.ADD_RECIPIENT: "ADDRCPT",
    Action.DELETE_RECIPIENT: "DELRCPT",
}
#: The actions srsd needs, all of them: without one it cannot rewrite.
NEEDED_ACTIONS = Action.CHANGE_SENDER | Action.ADD_RECIPIENT | Action.DELETE_RECIPIENT
#: The steps srsd asks the MTA to leave out (when it offers to).
SKIPPED_STEPS = (
    ProtocolFlag.NO_CONNECT
    | ProtocolFlag.NO_HELO
    | ProtocolFlag.NO_BODY
    | ProtocolFlag.NO_HEADERS
    | ProtocolFlag.NO_END_OF_HEADERS
    | ProtocolFlag.NO_UNKNOWN
    | ProtocolFlag.NO_DATA
)
#: Steps answered ``continue`` whatever they carry (sent when the MTA cannot skip them).
_IGNORED_STEPS = frozenset({CONNECT, HELO, DATA, HEADER, END_OF_HEADERS, BODY, UNKNOWN_COMMAND})
_QUEUE_ID_MACROS = frozenset({b"i", b"{i}"})
_TOO_MANY = b"452 4.5.3 Too many recipients"
_NO_ROOM = b"452 4.3.1 Insufficient system storage"


class Allowance(Protocol):
    """Bytes a session may keep, shared with other sessions."""

    def take(self, size: int) -> bool:
        """Take ``size`` bytes; False (nothing taken) when there is no room."""
        ...

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken before."""
        ...


class Unlimited:
    """An allowance that always has room."""

    def take(self, size: int) -> bool:
        """Always True."""
        return True

    def give(self, size: int) -> None:
        """Nothing to give back."""


def packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length (command byte included), command, data."""
    return _LENGTH.pack(len(data) + 1) + command + data


def _strings(data: bytes) -> list[bytes] | None:
    """NUL-terminated strings; None unless ``data`` is one or more of them."""
    if not data or data[-1] != 0:
        return None
    return data[:-1].split(b"\x00")


def unbracket(address: bytes) -> bytes:
    """The address in a MAIL/RCPT argument: ``<a@b>`` → ``a@b``, ``<>`` → empty."""
    if len(address) >= 2 and address[0] == 0x3C and address[-1] == 0x3E:
        return address[1:-1]
    return address


class Transaction(NamedTuple):  # made once per message: a tuple's is the cheapest __init__
    """One message at its end: the queue id, the sender and recipients as the MTA sent them
    (``<...>`` included; see :func:`unbracket`)."""

    queue_id: bytes
    sender: bytes
    recipients: tuple[bytes, ...]


class Verdict(NamedTuple):
    """What to do with a message: a new sender, recipients to replace (as sent, new), or a
    temporary failure (nothing changed, the MTA defers the message)."""

    sender: bytes | None = None
    replace: tuple[tuple[bytes, bytes], ...] = ()
    tempfail: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send to the MTA now."""

    data: bytes


class Decide(NamedTuple):  # made once per message: a tuple's is the cheapest __init__
    """A message ended: decide, then send :meth:`Session.verdict`'s bytes."""

    transaction: Transaction


@dataclass(frozen=True, slots=True)
class Classify:
    """A recipient arrived in a session that splits: find out whether it is delivered on
    this host, then send :meth:`Session.admit`'s bytes and call ``feed(b"")``."""

    recipient: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The session is over: ``reason`` is None after QUIT, else the protocol error."""

    reason: str | None


@dataclass(frozen=True, slots=True)
class CannotRewrite:
    """A sender arrived and the MTA does not offer every action srsd needs to rewrite
    (``milter_protocol`` below 6): send ``data``, a temporary failure, so that the message
    is deferred, never let through unrewritten; and tell the postmaster what is ``missing``."""

    data: bytes
    missing: Action

    @property
    def missing_names(self) -> str:
        """The missing actions as the protocol names them (``CHGFROM, DELRCPT``)."""
        return ", ".join(name for action, name in ACTION_NAMES.items() if action in self.missing)


MilterAction = Send | Decide | Classify | CannotRewrite | Close


class _State(enum.Enum):
    NEGOTIATE = "negotiate"  # expecting O
    READY = "ready"  # between messages
    MESSAGE = "message"  # after MAIL
    CLOSED = "closed"


_CLOSED, _MESSAGE = _State.CLOSED, _State.MESSAGE
# Replies that never change, made once.
_SEND_CONTINUE = Send(packet(CONTINUE))
_SEND_TEMPFAIL = Send(packet(TEMPORARY_FAILURE))
_CONTINUE_PACKET = _SEND_CONTINUE.data


class Session:
    """One milter connection, as a state machine fed with the bytes received."""

    __slots__ = (
        "_allowance",
        "_buf",
        "_classifying",
        "_deciding",
        "_held",
        "_here",
        "_max_packet",
        "_message_bytes",
        "_recipient_limit",
        "_recipients",
        "_refusal",
        "_rewrites",
        "_sender",
        "_split",
        "_state",
        "actions",
        "client_port",
        "mail_replied",
        "queue_id",
        "refused",
        "split",
        "version",
    )

    def __init__(
        self,
        *,
        recipient_limit: int = MAX_RECIPIENTS,
        max_packet: int = MAX_PACKET,
        message_bytes: int = MESSAGE_BYTES,
        allowance: Allowance | None = None,
        split: bool = False,
    ) -> None:
        if recipient_limit < 1 or not 13 <= max_packet <= MAX_PACKET or message_bytes < 1:
            raise ValueError(
                "recipient_limit and message_bytes must be >= 1, max_packet 13..MAX_PACKET"
            )
        self._recipient_limit = recipient_limit
        self._max_packet = max_packet
        self._message_bytes = message_bytes
        self._allowance: Allowance = allowance or Unlimited()
        self._held = 0  # bytes of the message now received, taken from the allowance
        self._deciding: deque[int] = deque()  # bytes of the messages awaiting their verdict
        self._buf = bytearray()
        self._state = _State.NEGOTIATE
        self._sender = b""
        self._recipients: list[bytes] = []
        self._split = split
        self._here: bool | None = None  # the class of this message's first recipient
        self._classifying: bytes | None = None  # the recipient awaiting admit()
        #: The client port of the MTA's connect step (0: a local submission), None if none.
        self.client_port: int | None = None
        #: The protocol version and actions agreed on (0 before the negotiation).
        self.version = 0
        self.actions = Action(0)
        self._rewrites = False
        #: Whether MAIL is answered: False once the MTA agreed not to wait for that reply
        #: (``SMFIP_NR_MAIL``: asked for when the MTA offers it and grants every action).
        self.mail_replied = True
        #: The reply to each recipient of a message whose sender found no room (no reply
        #: to MAIL can say so), else None.
        self._refusal: bytes | None = None
        #: The latest queue id the MTA sent (macro ``i``), empty if none.
        self.queue_id = b""
        #: Recipients answered "too many" so far (a metric).
        self.refused = 0
        #: Recipients answered 452 because they are of the other class (a metric).
        self.split = 0

    @property
    def closed(self) -> bool:
        """True after QUIT, EOF or a protocol error."""
        return self._state is _State.CLOSED

    @property
    def in_message(self) -> bool:
        """True between a sender and the end of its message (or an abort)."""
        return self._state is _MESSAGE

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet (at most four plus ``max_packet``)."""
        return len(self._buf)

    @property
    def held(self) -> int:
        """Bytes of sender and recipients kept (overhead counted), decided messages included."""
        return self._held + sum(self._deciding)

    def release(self) -> None:
        """The session is over: give every byte it keeps back to the allowance."""
        self._allowance.give(self.held)
        self._held = 0
        self._deciding.clear()
        self._sender = b""
        self._recipients = []

    @property
    def splitting(self) -> bool:
        """Whether this message's recipients are classified (see the module docstring)."""
        return (
            self._split
            and bool(self.client_port)
            and self._state is _MESSAGE
            and unbracket(self._sender) != b""
        )

    def feed(self, data: bytes | bytearray) -> list[MilterAction]:
        """Take the next bytes received; return what to do, in order."""
        if self._state is _CLOSED:
            return []
        out: list[MilterAction] = []
        held = self._buf
        buffered = bool(held) or self._classifying is not None
        if buffered:
            held += data
            buf: bytes | bytearray = held
            if self._classifying is not None:
                if len(buf) > 4 + self._max_packet:
                    self._fail(out, "input while a recipient is being classified")
                    self._buf = bytearray()
                return out
        else:
            buf = data  # the usual case, nothing held: the packets are read where they came
        start, size, most = 0, len(buf), self._max_packet
        handle = self._handle
        while size - start >= 4:
            (length,) = _unpack_length(buf, start)
            if not 1 <= length <= most:
                self._fail(out, f"packet length {length} out of range 1..{most}")
                break
            end = start + 4 + length
            if size < end:
                break
            command, payload = buf[start + 4], buf[start + 5 : end]
            start = end
            handle(command, payload if isinstance(payload, bytes) else bytes(payload), out)
            if self._state is _CLOSED or self._classifying is not None:
                break
        if self._classifying is not None and size - start > 4 + most:
            out.pop()  # an MTA waits for each reply: that much input behind it is no MTA
            self._classifying = None
            self._fail(out, "input while a recipient is being classified")
        if self._state is _CLOSED:
            self._buf = bytearray()
        elif buffered:
            del held[:start]
        elif start < size:
            held += buf[start:]
        return out

    def feed_eof(self) -> list[MilterAction]:
        """The MTA closed its side; an incomplete packet is dropped (nothing to answer)."""
        if self._state is _State.CLOSED:
            return []
        self._state = _State.CLOSED
        self._buf = bytearray()
        return [Close(None)]

    def admit(self, here: bool | None) -> bytes:
        """The reply to the recipient of the last :class:`Classify`: ``here`` says whether it
        is delivered on this host (None: cannot tell, a temporary failure for it)."""
        recipient, self._classifying = self._classifying, None
        if recipient is None or self._state is not _MESSAGE:
            raise RuntimeError("admit() without a recipient being classified")
        if here is None or (self._here is not None and here is not self._here):
            size = len(recipient) + ITEM_OVERHEAD  # taken in _rcpt, not kept after all
            self._held -= size
            self._allowance.give(size)
            if here is None:
                return packet(TEMPORARY_FAILURE)
            self.split += 1
            return packet(REPLY_CODE, _TOO_MANY + b"\x00")
        self._here = here
        self._recipients.append(recipient)
        return _CONTINUE_PACKET

    def verdict(self, verdict: Verdict) -> bytes:
        """The reply to the end of a message: the changes, then ``continue``. The message's
        bytes go back to the allowance (verdicts come in the order of the messages)."""
        if self._deciding:
            self._allowance.give(self._deciding.popleft())
        if verdict.tempfail:
            return _SEND_TEMPFAIL.data
        verdict = writable(verdict)
        if not verdict.replace:  # the usual case: a new sender or none
            if verdict.sender is None:
                return _CONTINUE_PACKET
            return packet(CHANGE_SENDER, verdict.sender + b"\x00") + _CONTINUE_PACKET
        parts = []
        for old, new in verdict.replace:
            parts.append(packet(DELETE_RECIPIENT, old + b"\x00"))
            parts.append(packet(ADD_RECIPIENT, new + b"\x00"))
        if verdict.sender is not None:
            parts.append(packet(CHANGE_SENDER, verdict.sender + b"\x00"))
        parts.append(_CONTINUE_PACKET)
        return b"".join(parts)

    # -- one packet -------------------------------------------------------------------------

    def _fail(self, out: list[MilterAction], reason: str) -> None:
        self._state = _State.CLOSED
        out.append(Close(reason))

    def _handle(self, command: int, data: bytes, out: list[MilterAction]) -> None:
        state = self._state
        if command == MACRO:
            self._macros(data, out)
        elif state is _State.NEGOTIATE:
            if command == NEGOTIATE:
                self._negotiate(data, out)
            else:
                self._fail(out, f"{_name(command)} before the option negotiation")
        elif command == RCPT and state is _MESSAGE:  # the steps of every message first
            self._rcpt(data, out)
        elif command == MAIL:
            self._mail(data, out)
        elif command == END_OF_MESSAGE and state is _MESSAGE and self._refusal:
            self._reset()  # every recipient was refused: an MTA sends no such message
            out.append(_SEND_TEMPFAIL)
        elif command == END_OF_MESSAGE and state is _MESSAGE:
            transaction = Transaction(self.queue_id, self._sender, tuple(self._recipients))
            self._deciding.append(self._held)  # given back by verdict()
            self._held = 0
            self._reset()
            out.append(Decide(transaction))
        elif command in _IGNORED_STEPS:
            if command in (CONNECT, HELO):
                self._reset()  # a new SMTP session or EHLO ends any message
            if command == CONNECT:
                self.client_port = _client_port(data)
            out.append(_SEND_CONTINUE)
        elif command in (ABORT, QUIT_NEW_CONNECTION):
            self._reset()  # no reply; K: the MTA reuses the connection for a new session
            if command == QUIT_NEW_CONNECTION:
                self.client_port = None
        elif command == QUIT:
            self._state = _State.CLOSED
            out.append(Close(None))
        else:
            self._fail(out, f"{_name(command)} out of place ({state.value})")

    def _reset(self) -> None:
        if self._held:
            self._allowance.give(self._held)
            self._held = 0
        self._state = _State.READY
        self._sender = b""
        self._recipients = []
        self._here = None
        self._refusal = None

    def _negotiate(self, data: bytes, out: list[MilterAction]) -> None:
        if len(data) < _NEGOTIATION.size:
            self._fail(out, f"option negotiation of {len(data)} bytes")
            return
        version, offered_actions, offered_steps = _NEGOTIATION.unpack_from(data)
        skipped = SKIPPED_STEPS & ~ProtocolFlag.NO_CONNECT if self._split else SKIPPED_STEPS
        if version < 2:
            self._fail(out, f"milter protocol version {version} (2 to {VERSION} supported)")
            return
        self.version = min(version, VERSION)
        self.actions = Action(offered_actions & NEEDED_ACTIONS)
        self._rewrites = NEEDED_ACTIONS in self.actions  # asked at every sender: once here
        steps = offered_steps & skipped
        if self._rewrites and offered_steps & ProtocolFlag.NO_REPLY_MAIL:
            steps |= ProtocolFlag.NO_REPLY_MAIL  # MAIL's reply would be continue: skip it
            self.mail_replied = False
        self._state = _State.READY
        reply = _NEGOTIATION.pack(self.version, int(self.actions), steps)
        out.append(Send(packet(b"O", reply)))

    def _macros(self, data: bytes, out: list[MilterAction]) -> None:
        if not data:
            self._fail(out, "empty macro packet")
            return
        strings = _strings(data[1:]) if len(data) > 1 else []
        if strings is None or len(strings) % 2:
            self._fail(out, "malformed macro packet")
            return
        for i in range(0, len(strings), 2):
            if strings[i] in _QUEUE_ID_MACROS:
                self.queue_id = strings[i + 1]

    def _mail(self, data: bytes, out: list[MilterAction]) -> None:
        args = _strings(data)
        if args is None:
            self._fail(out, "malformed sender packet")
            return
        self._reset()
        size = len(args[0]) + ITEM_OVERHEAD
        if size > self._message_bytes or not self._allowance.take(size):
            if self.mail_replied:
                out.append(_SEND_TEMPFAIL)  # no room: the client tries later
            else:  # the MTA did not wait: each recipient hears it, the client tries later
                self._state = _MESSAGE
                self._refusal = packet(REPLY_CODE, _NO_ROOM + b"\x00")
            return
        self._held = size
        self._state = _MESSAGE
        self._sender = args[0]
        if not self._rewrites:
            out.append(CannotRewrite(_SEND_TEMPFAIL.data, NEEDED_ACTIONS & ~self.actions))
        elif self.mail_replied:
            out.append(_SEND_CONTINUE)

    def _rcpt(self, data: bytes, out: list[MilterAction]) -> None:
        args = _strings(data)
        if args is None:
            self._fail(out, "malformed recipient packet")
            return
        if self._refusal is not None:
            self.refused += 1
            out.append(Send(self._refusal))
            return
        size = len(args[0]) + ITEM_OVERHEAD
        if (
            len(self._recipients) >= self._recipient_limit
            or self._held + size > self._message_bytes
        ):
            self.refused += 1
            out.append(Send(packet(REPLY_CODE, _TOO_MANY + b"\x00")))
            return
        if not self._allowance.take(size):
            self.refused += 1
            out.append(Send(packet(REPLY_CODE, _NO_ROOM + b"\x00")))
            return
        self._held += size
        if self.splitting:
            self._classifying = args[0]
            out.append(Classify(args[0]))
            return
        self._recipients.append(args[0])
        out.append(_SEND_CONTINUE)


def _writable(value: bytes) -> bool:
    """Whether ``value`` can be a CHGFROM / ADDRCPT argument: not empty, no control byte."""
    return bool(value) and not address.has_control(value)


def writable(verdict: Verdict) -> Verdict:
    """``verdict`` without the changes no MTA should be given: a new sender or recipient
    that is empty or holds a control byte (that sender or recipient is left as it is)."""
    sender, replace = verdict.sender, verdict.replace
    if sender is not None and not _writable(sender):
        sender = None
    if not replace:  # the usual verdict: a new sender, or nothing
        return verdict if sender is verdict.sender else verdict._replace(sender=None)
    kept = tuple(pair for pair in replace if _writable(pair[1]))
    if sender is verdict.sender and len(kept) == len(replace):
        return verdict
    return verdict._replace(sender=sender, replace=kept)


def _client_port(data: bytes) -> int | None:
    """The client port of a connect packet (host name, family, port, address); None when it
    names none (family ``U``, unknown) or is cut short."""
    host_end = data.find(b"\x00")
    if host_end < 0 or len(data) < host_end + 4 or data[host_end + 1] not in b"46L":
        return None
    return int.from_bytes(data[host_end + 2 : host_end + 4], "big")


def _name(command: int) -> str:
    char = chr(command)
    return f"command {char!r}" if char.isprintable() else f"command 0x{command:02x}"


# -- the MTA's side, for tests, benchmarks and ``srsd health`` ----------------------------


def negotiate(version: int = VERSION, actions: int = 0x1FF, steps: int = 0x1FFFFF) -> bytes:
    """The MTA's option negotiation packet (Postfix offers everything it supports)."""
    return packet(b"O", _NEGOTIATION.pack(version, actions, steps))


def mail_replied(options: bytes) -> bool:
    """From the data of the filter's option negotiation reply (``O``), as the MTA reads it:
    whether MAIL will be answered (not when the filter asked for ``SMFIP_NR_MAIL``)."""
    steps = int.from_bytes(options[8:12], "big")
    return not steps & ProtocolFlag.NO_REPLY_MAIL


def command(code: int, *strings: bytes) -> bytes:
    """An MTA packet whose data is NUL-terminated strings (``M``, ``R``, ``D`` take these)."""
    return packet(bytes([code]), b"".join(s + b"\x00" for s in strings))


def macros(stage: int, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An MTA macro packet for ``stage`` (the command byte the macros precede)."""
    body = b"".join(name + b"\x00" + value + b"\x00" for name, value in pairs)
    return packet(b"D", bytes([stage]) + body)


def split_replies(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split filter replies into (command, data) pairs; ValueError if ``data`` is cut short."""
    out = []
    while data:
        if len(data) < 5:
            raise ValueError("incomplete packet")
        (length,) = _LENGTH.unpack_from(data)
        if length < 1 or len(data) < 4 + length:
            raise ValueError("incomplete packet")
        out.append((data[4:5], data[5 : 4 + length]))
        data = data[4 + length :]
    return out
