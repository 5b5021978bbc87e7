# Property: for any bytes, tcp_table, socketmap, milter and the CLI give one verdict and reason.
"""For any key, each endpoint's own path, wire codec included, gives the same answer: the
same new address, or none for the same reason (issue 18, deliverable 6). In-process, so
that Hypothesis can try many keys: the bytes of a tcp_table request line, of a socketmap
netstring and of a milter conversation go through the real readers and the services the
server uses (:mod:`srsd.serve.answers`, :func:`srsd.serve.milter_service.decide`); the CLI is
:func:`srsd.cli.main` with its standard streams replaced. The same endpoints over real
sockets and as real commands: ``test_bad_input.py``.

What a wire cannot carry is left out for that wire only, as Postfix cannot send it either:
an empty key on tcp_table, a NUL on the milter (its strings end at one), a line break on
the CLI's standard input (such a key is given as an argument, where it cannot hold a NUL).
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from srsd import cli
from srsd.config import settings as srsd_settings
from srsd.envelope import EnvelopeMode
from srsd.envelope.database import EnvelopeDatabase
from srsd.envelope.store import SQLiteStore
from srsd.serve import milter_service
from srsd.serve.answers import Lookups, MapService
from srsd.serve.delivery import PostfixDelivery
from srsd.srs import address
from srsd.srs.codec import Codec
from srsd.srs.policy import Decision, DomainSet, Role
from srsd.wire import Wire, milter, socketmap, tcp_table

DOMAIN = "forwarder.test"
SECRET = b"property-secret-0123456789"
MAX = 256  # max_request: small, so that Hypothesis reaches it
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # written out here, independently of srsd


@dataclass(frozen=True)
class Answer:
    """A verdict: the new address, or None and the reason."""

    value: bytes | None
    reason: str = ""


@dataclass
class World:
    """One configuration, and every endpoint built from it."""

    lookups: Lookups
    config: Path
    secrets: Path

    def tcp_table(self, role: Role, key: bytes) -> Answer | None:
        if not key:
            return None  # "get " + nothing is no request
        service = MapService(self.lookups, Wire.TCP_TABLE, role)
        events = service.reader().feed(tcp_table.encode_request(key))
        assert len(events) == 1, events
        reply = service.answer(events[0])
        assert isinstance(reply, bytes)  # embedded mode: never waits for storage
        code, text = tcp_table.parse_reply(reply)
        return Answer(text) if code == 200 else Answer(None, text.decode())

    def socketmap(self, role: Role, key: bytes) -> Answer:
        service = MapService(self.lookups, Wire.SOCKETMAP)
        events = service.reader().feed(socketmap.netstring(role.value.encode() + b" " + key))
        assert len(events) == 1, events
        reply = service.answer(events[0])
        assert isinstance(reply, bytes)
        payload = socketmap.parse_netstring(reply)
        assert payload is not None
        word, _, text = payload[0].partition(b" ")
        assert word in (b"OK", b"NOTFOUND"), reply  # never TEMP or PERM for an address
        return Answer(text) if word == b"OK" else Answer(None, text.decode())

    def milter(self, role: Role, key: bytes) -> Answer | None:
        """One message through a real milter session: ``key`` as the sender (forward) or
        as the only recipient (reverse); the changes are checked for control bytes."""
        if 0 in key:
            return None
        sender, recipient = (key, b"bob@elsewhere.example") if role is Role.FORWARD else (b"", key)
        session = milter.Session()
        actions = session.feed(
            milter.negotiate()
            + milter.command(milter.MAIL, b"<" + sender + b">")
            + milter.command(milter.RCPT, b"<" + recipient + b">")
            + milter.command(milter.END_OF_MESSAGE)
        )
        [decide] = [a for a in actions if isinstance(a, milter.Decide)]
        forward, reverse = milter_service.lookups_for(self.lookups)
        decided: list[Decision] = []

        async def seen(recipient: bytes) -> Decision:
            decided.append(await reverse(recipient))
            return decided[-1]

        delivery = PostfixDelivery(local_domains=DomainSet(["mailbox.test"]))
        outcome = trio.run(
            lambda: milter_service.decide(
                decide.transaction, forward=forward, reverse=seen, delivery=delivery
            )
        )
        replies = milter.split_replies(session.verdict(outcome.verdict))
        written = [data[:-1] for code, data in replies if code in (b"e", b"+")]
        assert not any(CONTROL.search(value) or not value for value in written), replies
        if written:
            return Answer(written[0])
        reason = outcome.reason if role is Role.FORWARD else decided[0].reason
        return Answer(None, reason)

    def cli(self, role: Role, key: bytes) -> Answer | None:
        """``srsd encode`` / ``decode`` with the key on stdin, or as an argument when stdin
        cannot carry it (a line break; a CR at its end would be taken as one)."""
        as_argument = b"\n" in key or key.endswith(b"\r")
        if as_argument and 0 in key:
            return None
        argv = ["encode" if role is Role.FORWARD else "decode", "--config", str(self.config)]
        argv += ["--domain", DOMAIN, "--secret-file", str(self.secrets)]
        argv += ["--max-request", str(MAX)]
        if as_argument:
            argv.append(os.fsdecode(key))
        status, out, err = run_cli(argv, b"" if as_argument else key + b"\n")
        if status == 0:
            assert out.endswith(b"\n") and out.count(b"\n") == 1, out
            return Answer(out[:-1])
        found = re.search(rb"not rewritten: (.*)\n", err)
        assert found is not None, (status, err)
        assert status == (2 if b"\n" in key else 1), (status, err)
        return Answer(None, found.group(1).decode())


def run_cli(argv: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
    """:func:`srsd.cli.main` with its own standard streams; (status, stdout, stderr)."""
    streams = sys.stdin, sys.stdout, sys.stderr
    pipe = signal.getsignal(signal.SIGPIPE)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    sys.stdout = io.TextIOWrapper(io.BytesIO())
    sys.stderr = io.TextIOWrapper(io.BytesIO())
    try:
        status = cli.main(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        out = sys.stdout.buffer.getvalue()  # type: ignore[attr-defined]
        err = sys.stderr.buffer.getvalue()  # type: ignore[attr-defined]
    finally:
        sys.stdin, sys.stdout, sys.stderr = streams
        signal.signal(signal.SIGPIPE, pipe)
    return status, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("property")
    secrets = tmp / "secrets"
    secrets.write_bytes(SECRET + b"\n")
    secrets.chmod(0o600)
    config = tmp / "empty.toml"
    config.write_text("")
    cli_values = {"domain": DOMAIN, "secrets_file": str(secrets), "max_request": MAX}
    loaded = srsd_settings.load(cli_values, environ={}, config=config)
    store = SQLiteStore(tmp / "unused.sqlite", 60.0)  # embedded mode: never opened
    envelopes = EnvelopeDatabase(store, EnvelopeMode.EMBEDDED, 0)
    yield World(Lookups(loaded, loaded.policy(), envelopes), config, secrets)


CODEC = Codec([SECRET], DOMAIN.encode())
PIECES = [
    b"a",
    b"user",
    b"@",
    b"x.example",
    b"\0",
    b"\r",
    b"\n",
    b"\r\n",
    b"\t",
    b"\x01",
    b"\x1f",
    b"\x7f",
    b"\x80",
    b"\xc3\xa9",
    b"%",
    b"%00",
    b" ",
    b'"',
    b"[",
    b":",
    b"SRS0=",
    b"=",
    b"<",
    b">",
    b"u" * 100,
    b"\xff" * 90,
]
pieces = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map(b"".join)
senders = st.builds(
    lambda local, host: local + b"@" + host,
    st.binary(max_size=2 * MAX) | pieces,
    st.sampled_from([b"x.example", b"[192.0.2.1]", b"\xc3\xa9.example"]),
)


@st.composite
def minted(draw: st.DrawFn) -> bytes:
    """An SRS address of ours (decodes unless it is too long or was spoilt)."""
    srs = CODEC.forward(draw(senders), time.time())  # the clock the endpoints read
    if draw(st.booleans()):
        at = draw(st.integers(0, len(srs)))
        srs = srs[:at] + draw(st.sampled_from(PIECES[4:13])) + srs[at:]
    return srs


keys = st.binary(min_size=1, max_size=3 * MAX) | pieces | senders | minted()


@settings(max_examples=400, deadline=None)
@given(role=st.sampled_from([Role.FORWARD, Role.REVERSE]), key=keys)
@example(role=Role.FORWARD, key=b"a\0b@x.example")
@example(role=Role.FORWARD, key=b"a@x.example\r\nRCPT TO:<e@evil.example>")
@example(role=Role.REVERSE, key=b"\x01" * (MAX + 1))
@example(role=Role.FORWARD, key=b"\xff" * (4 * MAX))
@example(role=Role.FORWARD, key=b"u" * (MAX - 10) + b"@x.example")
def test_every_endpoint_gives_one_verdict(world: World, role: Role, key: bytes) -> None:
    answers = {
        "tcp_table": world.tcp_table(role, key),
        "socketmap": world.socketmap(role, key),
        "milter": world.milter(role, key),
        "cli": world.cli(role, key),
    }
    given_ = {name: answer for name, answer in answers.items() if answer is not None}
    assert len(set(given_.values())) == 1, given_
    verdict = given_["socketmap"]
    refused = address.refusal(key, MAX)
    if refused is not None:  # the shared declaration, and nothing else, refused it
        assert verdict == Answer(None, refused)
    elif len(key) > MAX or CONTROL.search(key):
        raise AssertionError(f"refusal() let {key!r} through")
    if verdict.value is not None:
        assert not CONTROL.search(verdict.value)
    event(f"{role.value}: {'rewritten' if verdict.value is not None else verdict.reason}")
