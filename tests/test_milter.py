# Tests of the milter wire format (sans-IO): negotiation, the state machine, limits, replies.
"""Exact bytes in, exact actions and bytes out; then properties checked with hypothesis.

The conversations are those Postfix 3.7 holds with a milter (``milter_protocol = 6``): it
offers every action and step flag it knows, sends macros before each step, answers each
step srsd did not switch off, and sends ``A`` between messages and ``Q`` at the end.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srsd.wire import milter
from srsd.wire.milter import (
    MAX_PACKET,
    Close,
    Decide,
    Send,
    Session,
    Transaction,
    Verdict,
    command,
    macros,
    negotiate,
    packet,
    split_replies,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONTINUE = Send(b"\x00\x00\x00\x01c")
# Postfix offers every step flag, SMFIP_NR_MAIL among them: srsd takes it (0x4000).
OPTNEG_REPLY = Send(b"\x00\x00\x00\x0dO" + struct.pack("!III", 6, 0x4C, 0x4373))
NO_NR_MAIL = 0x1FFFFF & ~milter.ProtocolFlag.NO_REPLY_MAIL  # an MTA that always waits


def conversation(*recipients: bytes, sender: bytes = b"<alice@origin.test>") -> bytes:
    """What Postfix sends for one message on a fresh connection."""
    return b"".join(
        [
            negotiate(),
            macros(milter.MAIL, [(b"i", b"4Xq1"), (b"{mail_addr}", b"alice@origin.test")]),
            command(milter.MAIL, sender, b"SIZE=100"),
            *(command(milter.RCPT, r) for r in recipients),
            macros(milter.END_OF_MESSAGE, [(b"i", b"4Xq1A")]),
            command(milter.END_OF_MESSAGE),
        ]
    )


def test_postfix_conversation_gives_exact_actions() -> None:
    session = Session()
    actions = session.feed(conversation(b"<carol@dest.test>", b"<dave@mailbox.test>"))
    assert actions == [
        OPTNEG_REPLY,  # MAIL: no reply, Postfix does not wait for one
        CONTINUE,
        CONTINUE,
        Decide(
            Transaction(
                b"4Xq1A", b"<alice@origin.test>", (b"<carol@dest.test>", b"<dave@mailbox.test>")
            )
        ),
    ]
    assert session.version == 6 and milter.NEEDED_ACTIONS in session.actions
    assert not session.mail_replied
    assert session.feed(command(milter.ABORT) + command(milter.QUIT)) == [Close(None)]
    assert session.closed and session.feed(conversation()) == []


def test_mail_is_answered_when_the_mta_waits_for_it() -> None:
    # An MTA that does not offer SMFIP_NR_MAIL, or one without the actions srsd needs (its
    # MAIL gets a temporary failure, which only a reply can say), waits for MAIL's reply.
    session = Session()
    [reply] = session.feed(negotiate(steps=NO_NR_MAIL))
    assert reply == Send(packet(b"O", struct.pack("!III", 6, 0x4C, 0x373)))
    assert session.mail_replied
    assert session.feed(command(milter.MAIL, b"<a@b.test>")) == [CONTINUE]
    session = Session()
    [reply] = session.feed(negotiate(actions=0x0C))  # no CHGFROM, NR_MAIL offered
    assert reply == Send(packet(b"O", struct.pack("!III", 6, 0x0C, 0x373)))
    assert session.mail_replied


def test_negotiation_asks_only_for_what_is_needed_and_offered() -> None:
    # An MTA offering version 2 without CHGFROM and only some skip flags.
    session = Session()
    [reply] = session.feed(negotiate(version=2, actions=0x0F, steps=0x13))
    assert reply == Send(packet(b"O", struct.pack("!III", 2, 0x0C, 0x13)))
    assert milter.NEEDED_ACTIONS not in session.actions
    # Every sender then gets a temporary failure: srsd cannot rewrite through this MTA, and
    # the session says so, naming what is missing (for the postmaster's log line).
    [event] = session.feed(command(milter.MAIL, b"<a@b.test>"))
    assert event == milter.CannotRewrite(packet(b"t"), milter.Action.CHANGE_SENDER)
    assert event.missing_names == "CHGFROM"
    session = Session()
    session.feed(negotiate(actions=0x01))  # ADDHDRS only
    [event] = session.feed(command(milter.MAIL, b"<a@b.test>"))
    assert event == milter.CannotRewrite(packet(b"t"), milter.NEEDED_ACTIONS)
    assert event.missing_names == "CHGFROM, ADDRCPT, DELRCPT"


def test_verdict_bytes() -> None:
    session = Session()
    verdict = Verdict(
        sender=b"SRS0=abcd=JM=origin.test=alice@forwarder.test",
        replace=((b"<SRS0=x@forwarder.test>", b"alice@origin.test"),),
    )
    assert split_replies(session.verdict(verdict)) == [
        (b"-", b"<SRS0=x@forwarder.test>\x00"),
        (b"+", b"alice@origin.test\x00"),
        (b"e", b"SRS0=abcd=JM=origin.test=alice@forwarder.test\x00"),
        (b"c", b""),
    ]
    assert session.verdict(Verdict()) == packet(b"c")
    assert session.verdict(Verdict(sender=b"x@y", tempfail=True)) == packet(b"t")


def test_steps_the_mta_cannot_skip_are_answered_continue() -> None:
    session = Session()
    session.feed(negotiate(steps=0))
    stream = b"".join(
        [
            command(milter.CONNECT, b"client.test"),
            command(milter.HELO, b"client.test"),
            command(milter.MAIL, b"<a@b.test>"),
            command(milter.RCPT, b"<c@d.test>"),
            command(milter.DATA),
            command(milter.HEADER, b"Subject", b"hi"),
            command(milter.END_OF_HEADERS),
            command(milter.BODY, b"body"),
            command(milter.UNKNOWN_COMMAND, b"XFOO"),
            command(milter.END_OF_MESSAGE),
        ]
    )
    actions = session.feed(stream)
    assert actions[:9] == [CONTINUE] * 9
    assert actions[9] == Decide(Transaction(b"", b"<a@b.test>", (b"<c@d.test>",)))


def test_abort_and_new_connection_reset_the_message() -> None:
    session = Session()
    session.feed(negotiate() + command(milter.MAIL, b"<a@b.test>") + command(milter.RCPT, b"<c@d>"))
    assert session.feed(command(milter.ABORT)) == []
    # After ABORT a recipient is out of place: there is no message.
    out_of_place = Close("command 'R' out of place (ready)")
    assert session.feed(command(milter.RCPT, b"<c@d>")) == [out_of_place]
    session = Session()
    session.feed(negotiate() + command(milter.MAIL, b"<a@b.test>"))
    assert session.feed(command(milter.QUIT_NEW_CONNECTION)) == []
    actions = session.feed(command(milter.MAIL, b"<x@y.test>") + command(milter.END_OF_MESSAGE))
    assert actions == [Decide(Transaction(b"", b"<x@y.test>", ()))]


def test_recipient_limit_answers_452_and_keeps_the_first_ones() -> None:
    session = Session(recipient_limit=2)
    rcpts = [b"<r%d@d.test>" % i for i in range(4)]
    actions = session.feed(conversation(*rcpts))
    too_many = Send(packet(b"y", b"452 4.5.3 Too many recipients\x00"))
    assert actions[1:5] == [CONTINUE, CONTINUE, too_many, too_many]
    assert actions[5] == Decide(Transaction(b"4Xq1A", b"<alice@origin.test>", tuple(rcpts[:2])))
    assert session.refused == 2


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (command(milter.MAIL, b"<a@b>"), "command 'M' before the option negotiation"),
        (packet(b"O", b"\x00" * 11), "option negotiation of 11 bytes"),
        (negotiate(version=1), "milter protocol version 1 (2 to 6 supported)"),
        (negotiate() + negotiate(), "command 'O' out of place (ready)"),
        (negotiate() + command(milter.END_OF_MESSAGE), "command 'E' out of place (ready)"),
        (negotiate() + packet(b"M"), "malformed sender packet"),
        (negotiate() + packet(b"M", b"<a@b>"), "malformed sender packet"),
        (
            negotiate() + command(milter.MAIL, b"<a@b>") + packet(b"R", b"x"),
            "malformed recipient packet",
        ),
        (negotiate() + packet(b"D"), "empty macro packet"),
        (negotiate() + packet(b"D", b"Mi\x00"), "malformed macro packet"),
        (negotiate() + packet(b"Z"), "command 'Z' out of place (ready)"),
        (negotiate() + packet(b"\x01"), "command 0x01 out of place (ready)"),
        (b"\x00\x00\x00\x00", "packet length 0 out of range 1..65536"),
        (b"\xff\xff\xff\xff", "packet length 4294967295 out of range 1..65536"),
        (struct.pack("!I", MAX_PACKET + 1), "packet length 65537 out of range 1..65536"),
    ],
)
def test_protocol_errors_close_the_session(stream: bytes, reason: str) -> None:
    session = Session()
    actions = session.feed(stream)
    assert actions[-1] == Close(reason)
    assert session.closed and session.buffered == 0
    assert session.feed(conversation()) == [] and session.feed_eof() == []


def test_hostile_length_is_refused_before_its_payload() -> None:
    session = Session()
    assert session.feed(negotiate() + struct.pack("!I", MAX_PACKET + 1)) == [
        OPTNEG_REPLY,
        Close("packet length 65537 out of range 1..65536"),
    ]
    # The largest allowed packet is buffered whole, and no more.
    session = Session()
    session.feed(negotiate(steps=NO_NR_MAIL) + struct.pack("!I", MAX_PACKET) + b"M")
    session.feed(b"x" * (MAX_PACKET - 2))
    assert session.buffered == 4 + MAX_PACKET - 1
    assert session.feed(b"\x00") == [CONTINUE] and session.buffered == 0


def test_eof_mid_packet_closes_quietly() -> None:
    session = Session()
    session.feed(negotiate() + command(milter.MAIL, b"<a@b>")[:-3])
    assert session.feed_eof() == [Close(None)]
    assert session.closed and session.buffered == 0


def test_unbracket() -> None:
    assert milter.unbracket(b"<a@b>") == b"a@b"
    assert milter.unbracket(b"<>") == b""
    assert milter.unbracket(b"a@b") == b"a@b"
    assert milter.unbracket(b"<") == b"<"


# -- properties ---------------------------------------------------------------------------

CONTROL = re.compile(rb"[\x00-\x1f\x7f]|\A\Z")  # written out here, independently of srsd
addresses = st.binary(max_size=40).map(lambda b: b"<" + b.replace(b"\x00", b"") + b">")
packets = st.one_of(
    addresses.map(lambda a: command(milter.MAIL, a)),
    addresses.map(lambda a: command(milter.RCPT, a)),
    st.sampled_from(
        [
            command(milter.END_OF_MESSAGE),
            command(milter.ABORT),
            command(milter.DATA),
            command(milter.QUIT_NEW_CONNECTION),
            macros(milter.RCPT, [(b"i", b"Q1")]),
            command(milter.QUIT),
        ]
    ),
    st.binary(max_size=12),  # garbage
)


def feed_pieces(stream: bytes, cuts: list[int]) -> list[milter.MilterAction]:
    session = Session(recipient_limit=3, max_packet=128)
    actions: list[milter.MilterAction] = []
    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        actions += session.feed(stream[last:cut])
        assert session.buffered <= 4 + 128
        last = cut
    return actions + session.feed_eof()


@PROPERTY
@given(st.lists(packets, max_size=12), st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_gives_the_same_actions(parts: list[bytes], cuts: list[int]) -> None:
    stream = negotiate() + b"".join(parts)
    whole = feed_pieces(stream, [])
    assert feed_pieces(stream, cuts) == whole
    # Exactly one Close, last; every Decide carries at most the limit of recipients.
    assert [type(a) for a in whole].count(Close) == 1 and isinstance(whole[-1], Close)
    for action in whole:
        if isinstance(action, Decide):
            assert len(action.transaction.recipients) <= 3


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_give_actions_never_an_exception(data: bytes) -> None:
    actions = feed_pieces(data, [])
    assert isinstance(actions[-1], Close)
    for action in actions:
        if isinstance(action, Send):
            split_replies(action.data)  # well-formed packets


@PROPERTY
@given(st.lists(st.tuples(addresses, addresses), max_size=5), st.one_of(st.none(), addresses))
def test_verdict_is_well_formed(replace: list[tuple[bytes, bytes]], sender: bytes | None) -> None:
    replies = split_replies(Session().verdict(Verdict(sender=sender, replace=tuple(replace))))
    assert replies[-1] == (b"c", b"")
    kept = [pair for pair in replace if not CONTROL.search(pair[1])]
    written = sender is not None and not CONTROL.search(sender)
    changes = [b"-", b"+"] * len(kept) + [b"e"] * written
    assert [c for c, _ in replies[:-1]] == changes
    assert all(data.endswith(b"\x00") and data.count(b"\x00") == 1 for _, data in replies[:-1])
    assert not any(CONTROL.search(data[:-1]) for c, data in replies[:-1] if c in b"+e")


@pytest.mark.parametrize(
    "bad", [b"a\r\nb@x.example", b"a@x.example\r\nRCPT TO:<c@d>", b"a\0b@x.example", b"a\tb@x", b""]
)
def test_verdict_never_writes_control_bytes(bad: bytes) -> None:
    # Such addresses are refused before any decision (address.refusal); a value that did
    # not come from the input (an old envelope database entry) is still never written:
    # that sender or recipient is left as it is.
    good = b"ok@x.example"
    verdict = Verdict(sender=bad, replace=((b"<r1>", bad), (b"<r2>", good)))
    assert milter.writable(verdict) == Verdict(replace=((b"<r2>", good),))
    replies = split_replies(Session().verdict(verdict))
    assert replies == [(b"-", b"<r2>\x00"), (b"+", good + b"\x00"), (b"c", b"")]
    assert milter.writable(Verdict(sender=good)) == Verdict(sender=good)


# -- memory: bytes per message and the shared allowance ----------------------------------------


class Pool:
    """An allowance of ``room`` bytes that records what is taken and given."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.room:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size
        assert self.used >= 0


TOO_MANY = Send(packet(b"y", b"452 4.5.3 Too many recipients\x00"))
NO_ROOM = Send(packet(b"y", b"452 4.3.1 Insufficient system storage\x00"))
TEMPFAIL = Send(packet(b"t"))


def test_recipients_past_the_message_bytes_are_answered_452_and_not_kept() -> None:
    big = b"<" + b"x" * 988 + b"@d.test>"  # 998 bytes: 1,062 counted
    session = Session(message_bytes=4000)
    actions = session.feed(conversation(*[big] * 5))
    sender = len(b"<alice@origin.test>") + milter.ITEM_OVERHEAD
    assert 3 * (len(big) + milter.ITEM_OVERHEAD) + sender <= 4000
    assert actions[1:6] == [CONTINUE, CONTINUE, CONTINUE, TOO_MANY, TOO_MANY]
    decide = actions[-1]
    assert isinstance(decide, Decide) and len(decide.transaction.recipients) == 3
    assert session.refused == 2


def test_the_shared_allowance_bounds_what_sessions_keep_and_gets_it_back() -> None:
    pool = Pool(3000)
    one, two = Session(allowance=pool), Session(allowance=pool)
    big = b"<" + b"y" * 988 + b"@d.test>"
    first = one.feed(negotiate() + command(milter.MAIL, b"<a@b>") + command(milter.RCPT, big) * 2)
    assert first[1:] == [CONTINUE, CONTINUE]
    assert one.held == pool.used == 2 * (len(big) + 64) + len(b"<a@b>") + 64
    # the other session finds no room for a big recipient: 452 4.3.1, nothing kept
    second = two.feed(negotiate() + command(milter.MAIL, b"<c@d>") + command(milter.RCPT, big))
    assert second[1:] == [NO_ROOM]
    assert two.held == len(b"<c@d>") + 64
    # no room even for a sender: MAIL has no reply (Postfix does not wait for one), so
    # each of its recipients is answered 452 4.3.1 (the client tries later) and an end of
    # the message (no MTA sends one without a recipient) a temporary failure
    pool.room = one.held  # room for what the first session keeps, no more
    assert two.feed(command(milter.ABORT) + command(milter.MAIL, b"<e@f>")) == []
    refused = two.refused
    assert two.feed(command(milter.RCPT, b"<g@h>") * 2) == [NO_ROOM, NO_ROOM]
    assert two.refused == refused + 2 and two.held == 0
    assert two.feed(command(milter.END_OF_MESSAGE)) == [TEMPFAIL]
    assert not two.in_message and two.held == 0
    # an MTA that waits for MAIL's reply hears it there
    three = Session(allowance=pool)
    three.feed(negotiate(steps=NO_NR_MAIL))
    assert three.feed(command(milter.MAIL, b"<e@f>")) == [TEMPFAIL]
    assert not three.in_message and three.held == 0
    # the end of a message keeps its bytes until its verdict is rendered
    pool.room = 3000
    [decide] = one.feed(command(milter.END_OF_MESSAGE))
    assert isinstance(decide, Decide) and pool.used == one.held > 0
    one.verdict(Verdict())
    assert pool.used == one.held == 0
    # a session that ends gives back all it keeps
    one.feed(command(milter.MAIL, b"<a@b>") + command(milter.RCPT, big))
    assert pool.used > 0
    one.release()
    assert pool.used == one.held == 0


def test_a_sender_over_the_message_bytes_is_a_temporary_failure() -> None:
    session = Session(message_bytes=1024)
    mail = command(milter.MAIL, b"<" + b"s" * 2000 + b"@x>")
    actions = session.feed(negotiate(steps=NO_NR_MAIL) + mail)
    assert actions[1:] == [TEMPFAIL]
    assert not session.in_message and session.held == 0
    # Postfix, not waiting for MAIL's reply, hears it at each recipient
    session = Session(message_bytes=1024)
    actions = session.feed(negotiate() + mail + command(milter.RCPT, b"<r@x>"))
    assert actions[1:] == [NO_ROOM] and session.held == 0


# -- splitting mixed transactions ----------------------------------------------------------


def connect(port: int, family: bytes = b"4") -> bytes:
    """Postfix's connect step: host name, family, port, address (port 0: sendmail/pickup)."""
    return packet(b"C", b"client.test\x00" + family + struct.pack("!H", port) + b"127.0.0.1\x00")


def test_a_splitting_session_asks_for_the_connect_step() -> None:
    [reply] = Session(split=True).feed(negotiate())
    steps = struct.unpack("!III", reply.data[5:])[2]  # type: ignore[union-attr]
    assert not steps & milter.ProtocolFlag.NO_CONNECT and steps & milter.ProtocolFlag.NO_HELO


def test_recipients_of_the_other_class_get_452_and_the_message_keeps_one_class() -> None:
    session = Session(split=True)
    actions = session.feed(
        negotiate()
        + connect(40000)
        + command(milter.MAIL, b"<a@b.test>")
        + command(milter.RCPT, b"<local@here>")
    )
    assert actions[-1] == milter.Classify(b"<local@here>") and session.splitting
    assert session.admit(True) == CONTINUE.data
    assert session.feed(command(milter.RCPT, b"<x@away>")) == [milter.Classify(b"<x@away>")]
    assert session.admit(False) == TOO_MANY.data  # the other class: sent again later
    assert session.feed(command(milter.RCPT, b"<y@away>")) == [milter.Classify(b"<y@away>")]
    assert session.admit(None) == packet(b"t")  # cannot tell: that recipient is deferred
    assert session.feed(command(milter.RCPT, b"<other@here>")) == [milter.Classify(b"<other@here>")]
    assert session.admit(True) == CONTINUE.data
    [decide] = session.feed(command(milter.END_OF_MESSAGE))
    assert decide == Decide(Transaction(b"", b"<a@b.test>", (b"<local@here>", b"<other@here>")))
    assert session.split == 1
    # The next message starts over: its first recipient fixes its class.
    session.feed(command(milter.MAIL, b"<a@b.test>") + command(milter.RCPT, b"<x@away>"))
    assert session.admit(False) == CONTINUE.data


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (connect(0) + command(milter.MAIL, b"<a@b.test>"), "a local submission (port 0)"),
        (command(milter.MAIL, b"<a@b.test>"), "no connect step"),
        (packet(b"C", b"client.test\x00U") + command(milter.MAIL, b"<a@b>"), "family U"),
        (connect(40000) + command(milter.MAIL, b"<>"), "a bounce"),
    ],
)
def test_sessions_that_are_never_split(stream: bytes, why: str) -> None:
    session = Session(split=True)
    actions = session.feed(negotiate() + stream + command(milter.RCPT, b"<x@y>"))
    assert actions[-1] == CONTINUE and not session.splitting, why


def test_packets_behind_a_recipient_wait_for_its_class() -> None:
    session = Session(split=True)
    stream = negotiate() + connect(1234) + command(milter.MAIL, b"<a@b.test>")
    stream += command(milter.RCPT, b"<r1@x>") + command(milter.RCPT, b"<r2@y>")
    stream += command(milter.END_OF_MESSAGE)
    actions = session.feed(stream)
    assert actions[-1] == milter.Classify(b"<r1@x>")
    assert session.feed(b"more") == []  # still waiting; kept, bounded
    assert session.admit(False) == CONTINUE.data
    session = Session(split=True)
    session.feed(stream)
    session.admit(False)
    assert session.feed(b"") == [milter.Classify(b"<r2@y>")]
    session.admit(True)  # the other class
    assert session.feed(b"") == [Decide(Transaction(b"", b"<a@b.test>", (b"<r1@x>",)))]


def test_input_while_classifying_is_bounded() -> None:
    session = Session(split=True, max_packet=100)
    session.feed(
        negotiate() + connect(1234) + command(milter.MAIL, b"<a@b>") + command(milter.RCPT, b"<r>")
    )
    assert session.feed(b"x" * 200) == [Close("input while a recipient is being classified")]
    with pytest.raises(RuntimeError):
        session.admit(True)


def where(recipient: bytes) -> bool | None:
    """A made-up class per recipient: here, not here, or cannot tell."""
    return (True, False, None)[len(recipient) % 3]


def feed_splitting(stream: bytes, cuts: list[int]) -> list[milter.MilterAction]:
    """Feed ``stream`` in pieces to a splitting session, answering each Classify as a server
    does (admit, then feed(b"") for what waited behind it)."""
    session = Session(recipient_limit=3, max_packet=128, split=True)
    actions: list[milter.MilterAction] = []

    def take(new: list[milter.MilterAction]) -> None:
        while new:
            actions.extend(new)
            last = new[-1]
            new = []
            if isinstance(last, milter.Classify) and not session.closed:
                reply = session.admit(where(last.recipient))
                assert split_replies(reply)
                new = session.feed(b"")
            assert session.buffered <= 4 + 128

    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        take(session.feed(stream[last:cut]))
        last = cut
    take(session.feed_eof())
    return actions


messages = st.tuples(addresses, st.lists(addresses, max_size=5)).map(
    lambda m: (
        command(milter.MAIL, m[0])
        + b"".join(command(milter.RCPT, r) for r in m[1])
        + command(milter.END_OF_MESSAGE)
    )
)


@PROPERTY
@given(
    st.lists(st.one_of(messages, packets), max_size=8),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_a_splitting_session_keeps_one_class_per_message(
    parts: list[bytes], cuts: list[int]
) -> None:
    # One SMTP session throughout: no new connection (K) or connect step after the first.
    kept = [p for p in parts if p[4:5] not in (b"K", b"C")]
    stream = negotiate() + connect(2525) + b"".join(kept)
    # Not the same actions for every cut: input piled up behind a recipient being classified
    # (no MTA sends it) is refused once over one packet, which depends on how it came.
    actions = feed_splitting(stream, cuts)
    assert [type(a) for a in actions].count(Close) == 1 and isinstance(actions[-1], Close)
    for action in actions:
        if isinstance(action, Decide):
            recipients = action.transaction.recipients
            assert len(recipients) <= 3
            if milter.unbracket(action.transaction.sender):
                assert len({where(r) for r in recipients}) <= 1, recipients
                assert None not in {where(r) for r in recipients}
