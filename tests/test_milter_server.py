# The milter endpoint in-process over real loopback sockets: decisions, failures, time-outs.
"""A :class:`srsd.serve.milter_service.MilterService` served by the connection loop on a
real TCP listener, driven by a milter client speaking what Postfix 3.7 sends
(``milter_protocol = 6``). The policy and codec are the real ones; where recipients are
delivered is a fixed ``local_domains`` list here (the discovery through Postfix is tested
in ``test_delivery.py`` and end to end in ``tests/postfix/test_milter_flow.py``)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import socket
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from srsd.admission.gatekeeper import Gatekeeper
from srsd.admission.owners import PeerOwners
from srsd.admission.rule import Limits
from srsd.config import settings as srsd_settings
from srsd.envelope import EnvelopeMode
from srsd.envelope.database import EnvelopeDatabase
from srsd.envelope.store import SQLiteStore
from srsd.serve import milter_service
from srsd.serve.answers import Lookups
from srsd.serve.delivery import PostfixDelivery
from srsd.serve.listeners import Endpoint
from srsd.serve.loop import AdmitAll, Connection, ConnectionLoop, Gate
from srsd.serve.milter_service import MemoryBudget, MilterReader, MilterService
from srsd.srs.codec import Codec
from srsd.srs.policy import NOT_SRS, Decision, DomainSet, Outcome, Policy
from srsd.wire import Wire, milter
from srsd.wire.milter import command, macros, negotiate, packet, split_replies
from tests.harness.daemon import Daemon, activation_argv, serve_args, write_secret
from tests.harness.inprocess import CapturedLog
from tests.harness.metrics import labels, samples, scrape
from tests.harness.ports import free_port
from tests.harness.srsd_process import SECRET, SrsdProcess, child_env

DOMAIN = b"forwarder.test"
POLICY = Policy(Codec([SECRET], DOMAIN))
CONTINUE = (b"c", b"")


async def forward(sender: bytes) -> Decision:
    return POLICY.forward(sender, time.time())


async def reverse(recipient: bytes) -> Decision:
    return POLICY.reverse(recipient, time.time())


#: srsd's default settings (the milter's limits come from them).
SETTINGS = srsd_settings.load({"domain": DOMAIN.decode()}, environ={}, need_secrets=False)
#: What a test may set beyond the settings: the deciders, the delivery.
WIRING = ("forward", "reverse", "delivery", "lookups")


def service(**overrides: Any) -> MilterService:
    """A service with the default settings; ``overrides`` of its limits (e.g.
    ``recipient_limit``) are set on it as :meth:`MilterService.configure` would."""
    args: dict[str, Any] = {
        "forward": forward,
        "reverse": reverse,
        "delivery": PostfixDelivery(local_domains=DomainSet(["mailbox.test", DOMAIN.decode()])),
    }
    args.update({k: v for k, v in overrides.items() if k in WIRING})
    made = MilterService(SETTINGS, **args)
    for name, value in overrides.items():
        if name not in WIRING:
            assert hasattr(made, name), name
            setattr(made, name, value)
    return made


#: The bound on waiting for srsd's replies: longer than srsd's own bound on a decision, so
#: that on the autojump clock srsd's time-out comes first.
REPLY_TIMEOUT = milter_service.DECIDE_SECONDS + 10


class Client:
    """The MTA side of one milter connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.mail_replied = True  # until the negotiation says otherwise (SMFIP_NR_MAIL)

    async def replies(self, count: int) -> list[tuple[bytes, bytes]]:
        """Read until ``count`` replies have come; [] at EOF."""
        out: list[tuple[bytes, bytes]] = []
        with trio.fail_after(REPLY_TIMEOUT):
            while len(out) < count:
                while len(self.buf) >= 4 and len(self.buf) >= 4 + int.from_bytes(self.buf[:4]):
                    size = 4 + int.from_bytes(self.buf[:4])
                    out += split_replies(self.buf[:size])
                    self.buf = self.buf[size:]
                    if out[-1][0] == b"O":  # as Postfix: no wait for MAIL's reply if asked
                        self.mail_replied = milter.mail_replied(out[-1][1])
                if len(out) >= count:
                    break
                data = await self.stream.receive_some(65536)
                if not data:
                    return out
                self.buf += data
        return out

    async def message(self, sender: bytes, *recipients: bytes) -> list[tuple[bytes, bytes]]:
        """One message; the replies to its end (changes, then the final one)."""
        await self.stream.send_all(command(milter.MAIL, sender, b"BODY=8BITMIME"))
        if self.mail_replied:
            assert await self.replies(1) == [CONTINUE]
        for recipient in recipients:
            await self.stream.send_all(command(milter.RCPT, recipient))
            assert await self.replies(1) == [CONTINUE]
        await self.stream.send_all(
            macros(milter.END_OF_MESSAGE, [(b"i", b"QID1")]) + command(milter.END_OF_MESSAGE)
        )
        out: list[tuple[bytes, bytes]] = []
        while not out or out[-1][0] not in (b"c", b"a", b"t"):
            more = await self.replies(1)
            assert more, f"connection closed after {out}"
            out += more
        return out


@asynccontextmanager
async def serving(
    svc: MilterService, gate: Callable[[ConnectionLoop], Gate] = lambda _: AdmitAll()
) -> AsyncIterator[tuple[ConnectionLoop, int]]:
    """``svc`` served by a connection loop on a loopback port (the loop, the port), behind
    the gate ``gate`` makes for the loop (default: admit all)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    loop = ConnectionLoop()
    loop.request_timeout = 10.0
    try:
        async with trio.open_nursery() as nursery:
            endpoint = Endpoint(Wire.MILTER, None, sock, "test")
            await nursery.start(loop.serve, [(endpoint, svc, gate(loop))])
            yield loop, sock.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        sock.close()


def run(
    svc: MilterService, body: Callable[[Client], Awaitable[None]], *, autojump: bool = False
) -> ConnectionLoop:
    """Serve ``svc``, run ``body`` with a negotiated client; the loop, for its counts.
    ``autojump``: on trio's autojump clock (service and client run in this trio loop), so that
    srsd's own time-outs, at their real figures, take no real time."""
    served: list[ConnectionLoop] = []

    async def main() -> None:
        async with serving(svc) as (loop, port):
            served.append(loop)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            client = Client(stream)
            await stream.send_all(negotiate())
            [(code, data)] = await client.replies(1)
            assert code == b"O" and data[4:8] == b"\x00\x00\x00\x4c"
            await body(client)
            await stream.aclose()
            with trio.fail_after(5):
                while loop.connections:  # the loop sees the close
                    await trio.sleep(0.01)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0) if autojump else None)
    return served[0]


def test_forwarded_mail_gets_srs0_and_local_mail_keeps_its_sender() -> None:
    svc = service()

    async def body(client: Client) -> None:
        replies = await client.message(b"<alice@origin.test>", b"<carol@dest.test>")
        assert [c for c, _ in replies] == [b"e", b"c"]
        new = replies[0][1].rstrip(b"\x00")
        assert new.startswith(b"SRS0=") and new.endswith(b"=origin.test=alice@forwarder.test")
        assert POLICY.reverse(new, time.time()).value == b"alice@origin.test"
        # Every recipient delivered here: nothing changes.
        assert await client.message(b"<alice@origin.test>", b"<dave@mailbox.test>") == [CONTINUE]
        # One local and one remote recipient: the whole message is rewritten.
        mixed = await client.message(
            b"<alice@origin.test>", b"<dave@mailbox.test>", b"<carol@dest.test>"
        )
        assert [c for c, _ in mixed] == [b"e", b"c"]
        # An SRS sender of someone else's gets SRS1; a local-domain sender is excluded.
        srs1 = await client.message(b"<SRS0=abcd=JM=a.test=b@other.test>", b"<carol@dest.test>")
        assert srs1[0][1].startswith(b"SRS1=")
        own = await client.message(b"<x@forwarder.test>", b"<carol@dest.test>")
        assert own == [CONTINUE]

    run(svc, body)
    assert svc.messages == {"rewritten": 3, "delivered here": 1, "not rewritten": 1}


def test_recipients_answered_452_are_counted_when_the_session_ends() -> None:
    svc = service(recipient_limit=1)

    async def body(client: Client) -> None:
        await client.stream.send_all(command(milter.MAIL, b"<alice@origin.test>"))
        for recipient in (b"<carol@dest.test>", b"<dave@dest.test>", b"<erin@dest.test>"):
            await client.stream.send_all(command(milter.RCPT, recipient))
        codes = [code for code, _ in await client.replies(3)]
        assert codes == [b"c", b"y", b"y"]  # one accepted, two answered 452
        assert svc.recipients_refused == 0  # the session has not ended

    run(svc, body)
    assert (svc.recipients_refused, svc.recipients_split) == (2, 0)


def test_bounce_to_our_srs_address_is_restored_and_invalid_ones_stay() -> None:
    genuine = POLICY.forward(b"alice@origin.test", time.time()).value
    assert genuine is not None
    forged = genuine.replace(b"=alice@", b"=mallory@")

    async def body(client: Client) -> None:
        replies = await client.message(b"<>", b"<" + genuine + b">", b"<" + forged + b">")
        assert replies == [
            (b"-", b"<" + genuine + b">\x00"),
            (b"+", b"alice@origin.test\x00"),
            CONTINUE,
        ]
        # A lower-cased one (as smtpd folds) decodes too.
        folded = await client.message(b"<>", b"<" + genuine.lower() + b">")
        assert folded[1] == (b"+", b"alice@origin.test\x00")

    run(service(), body)


def test_rewrite_local_rewrites_local_mail_too() -> None:
    async def body(client: Client) -> None:
        replies = await client.message(b"<alice@origin.test>", b"<dave@mailbox.test>")
        assert [c for c, _ in replies] == [b"e", b"c"]

    run(service(delivery=PostfixDelivery(rewrite_local=True)), body)


async def failing(_: bytes) -> Decision:
    return Decision(Outcome.ERROR, reason="envelope database unavailable")


async def crashing(_: bytes) -> Decision:
    raise RuntimeError("boom")


async def hanging(_: bytes) -> Decision:
    await trio.sleep_forever()
    raise AssertionError


@pytest.mark.parametrize(
    "overrides",
    [{"forward": failing}, {"reverse": failing}, {"forward": crashing}, {"forward": hanging}],
    ids=["forward-error", "reverse-error", "forward-crash", "forward-hangs"],
)
def test_what_srsd_cannot_decide_is_deferred(overrides: dict[str, Any]) -> None:
    svc = service(**overrides)

    async def body(client: Client) -> None:
        assert await client.message(b"<alice@origin.test>", b"<carol@dest.test>") == [(b"t", b"")]
        # The session goes on: the next message is decided again.
        assert await client.message(b"<alice@origin.test>", b"<carol@dest.test>") == [(b"t", b"")]

    run(svc, body, autojump=True)  # a hanging decision waits DECIDE_SECONDS, virtually
    assert svc.messages == {"tempfail": 2}


def test_an_mta_that_cannot_change_the_sender_defers_and_is_named(log: CapturedLog) -> None:
    # The session's CannotRewrite event, not the bytes of its reply, makes the log line.
    svc = service()

    async def main() -> None:
        async with serving(svc) as (_, port):
            client = Client(await trio.open_tcp_stream("127.0.0.1", port))
            await client.stream.send_all(negotiate(actions=0x0C))  # ADDRCPT, DELRCPT only
            [(code, _)] = await client.replies(1)
            assert code == b"O"
            await client.stream.send_all(command(milter.MAIL, b"<alice@origin.test>"))
            assert await client.replies(1) == [(b"t", b"")]
            await client.stream.aclose()

    trio.run(main)
    assert log.messages(logging.ERROR) == [
        "milter: Postfix does not offer CHGFROM (set milter_protocol = 6): mail deferred"
    ]


def test_protocol_error_closes_the_connection() -> None:
    svc = service()

    async def body(client: Client) -> None:
        await client.stream.send_all(command(milter.RCPT, b"<x@y>") + b"more garbage")
        assert await client.replies(1) == []  # EOF, no reply

    loop = run(svc, body)
    assert svc.messages == {"protocol error": 1} and not loop.connections


def test_idle_connection_is_closed() -> None:
    idle = 20.0
    svc = service(idle_limit=idle)

    async def body(client: Client) -> None:
        began = trio.current_time()
        assert await client.replies(1) == []
        assert idle <= trio.current_time() - began < REPLY_TIMEOUT

    loop = run(svc, body, autojump=True)
    assert not loop.connections


# -- a real srsd process: the unix socket endpoint, SIGHUP --------------------------------


def milter_message(path: Path, recipient: bytes) -> list[tuple[bytes, bytes]]:
    """One conversation with srsd's milter on a unix socket: the end-of-message replies."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = b"".join(
            [
                negotiate(),
                command(milter.MAIL, b"<alice@origin.test>"),
                command(milter.RCPT, recipient),
                command(milter.END_OF_MESSAGE),
                command(milter.QUIT),
            ]
        )
        sock.sendall(stream)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    replies = split_replies(data)
    assert replies[0][0] == b"O" and replies[1:2] == [CONTINUE], replies  # RCPT's; MAIL: none
    return replies[2:]


def test_srsd_serves_the_milter_on_a_unix_socket_and_applies_sighup(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    config = tmp_path / "srsd.toml"
    config.write_text(f'milter = "unix:{path}"\nlocal_domains = ["mailbox.test"]\n')
    with SrsdProcess(tmp_path, extra_args=["--config", str(config)]) as srsd:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert [c for c, _ in milter_message(path, b"<carol@dest.test>")] == [b"e", b"c"]
        assert milter_message(path, b"<dave@mailbox.test>") == [CONTINUE]
        config.write_text(f'milter = "unix:{path}"\nrewrite_local = true\n')
        srsd.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in srsd.log():
            assert time.monotonic() < deadline, srsd.log()
            time.sleep(0.05)
        assert [c for c, _ in milter_message(path, b"<dave@mailbox.test>")] == [b"e", b"c"]
        assert srsd.stop() == 0
    assert not path.exists(), "srsd left its milter socket behind"


def test_socket_activated_milter_and_its_metrics(tmp_path: Path) -> None:
    """systemd passes a unix socket named ``milter`` (and the metrics one): srsd serves the
    milter on it, binds nothing itself, and counts the messages."""
    unix = tmp_path / "milter.sock"
    metrics = free_port()
    env = child_env(tmp_path)
    command = serve_args(
        tmp_path,
        "--forward-port",
        "0",
        "--reverse-port",
        "0",
        "--local-domains",
        "mailbox.test",
        secret=write_secret(tmp_path / "secret"),
    )
    argv = activation_argv([str(unix), f"127.0.0.1:{metrics}"], ["milter", "metrics"], env, command)
    with Daemon(argv, env, tmp_path) as daemon:
        daemon.wait_log(f"Listening on 127.0.0.1:{metrics} as 4.")
        assert [c for c, _ in milter_message(unix, b"<carol@dest.test>")] == [b"e", b"c"]
        assert milter_message(unix, b"<dave@mailbox.test>") == [CONTINUE]
        daemon.wait_log("srsd ready: ")
        assert f"srsd ready: milter on unix:{unix}; " in daemon.log()
        values = samples(scrape(metrics)[1])
        assert values[("srsd_milter_messages_total", labels(outcome="rewritten"))] == 1
        assert values[("srsd_milter_messages_total", labels(outcome="delivered here"))] == 1
        assert values[("srsd_milter_sessions_open", labels())] == 0
        for counted in (  # exported, none so far
            "srsd_milter_sessions_rejected_total",
            "srsd_milter_recipients_refused_total",
            "srsd_milter_recipients_split_total",
            "srsd_milter_delivery_unknown_total",
        ):
            assert values[(counted, labels())] == 0, counted
        key = labels(map="forward", protocol="milter", outcome="rewritten")
        assert values[("srsd_lookups_total", key)] == 1
        assert daemon.stop() == 0
    assert unix.exists(), "srsd removed a socket it did not create (systemd owns it)"


def test_stop_closes_idle_sessions_and_lets_a_message_in_flight_finish() -> None:
    svc = service()

    async def main() -> None:
        async with serving(svc) as (loop, port):
            idle = Client(await trio.open_tcp_stream("127.0.0.1", port))
            busy = Client(await trio.open_tcp_stream("127.0.0.1", port))
            for client in (idle, busy):
                await client.stream.send_all(negotiate())
                assert [c for c, _ in await client.replies(1)] == [b"O"]
            await busy.stream.send_all(
                command(milter.MAIL, b"<alice@origin.test>")
                + command(milter.RCPT, b"<carol@dest.test>")
            )
            assert await busy.replies(1) == [CONTINUE]  # RCPT's (MAIL has none)
            loop.stop(5.0)  # what SIGTERM does
            with trio.fail_after(5):
                assert await idle.replies(1) == []  # closed at once: between messages
            await busy.stream.send_all(command(milter.END_OF_MESSAGE))
            replies = await busy.replies(2)
            assert [c for c, _ in replies] == [b"e", b"c"]  # the message in flight finished
            assert await busy.replies(1) == []  # then the session ends
            assert not loop.connections

    trio.run(main)


def test_sigterm_lets_a_message_in_flight_finish(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    with SrsdProcess(
        tmp_path, extra_args=["--milter", f"unix:{path}", "--local-domains", "mailbox.test"]
    ) as srsd:
        with socket.socket(socket.AF_UNIX) as busy, socket.socket(socket.AF_UNIX) as idle:
            for sock in (busy, idle):
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(negotiate())
                assert sock.recv(65536)[4:5] == b"O"
            busy.sendall(
                command(milter.MAIL, b"<alice@origin.test>")
                + command(milter.RCPT, b"<carol@dest.test>")
            )
            data = b""
            while len(data) < 5:
                data += busy.recv(65536)
            assert split_replies(data) == [CONTINUE]  # RCPT's (MAIL has none)
            srsd.signal(signal.SIGTERM)
            assert idle.recv(65536) == b""  # between messages: closed at once
            busy.sendall(command(milter.END_OF_MESSAGE))
            data = b""
            while chunk := busy.recv(65536):
                data += chunk
            assert [c for c, _ in split_replies(data)] == [b"e", b"c"]
        assert srsd.proc is not None and srsd.proc.wait(10) == 0
    assert not path.exists()


# -- admission, time-outs, containment ------------------------------------------------------


async def negotiated(port: int) -> Client:
    client = Client(await trio.open_tcp_stream("127.0.0.1", port))
    await client.stream.send_all(negotiate())
    assert [c for c, _ in await client.replies(1)] == [b"O"]
    return client


def test_eviction_takes_sessions_between_messages_first_never_one_srsd_is_answering() -> None:
    """Full (three sessions, one user): a newcomer evicts a session between messages first,
    the newest though it is; when none is, the one idle the longest in the middle of a
    message waiting for the MTA; never the one whose end of message srsd is deciding (its
    decision held open), the oldest though it is. It is answered when the decision comes."""
    released = trio.Event()

    async def held(sender: bytes) -> Decision:
        await released.wait()
        return await forward(sender)

    svc = service(forward=held)
    gates: list[Gatekeeper[Connection]] = []

    def gate(loop: ConnectionLoop) -> Gatekeeper[Connection]:
        gates.append(Gatekeeper(Limits(3, 3), PeerOwners(), loop.close, lambda c: c.answering))
        return gates[0]

    async def in_message(port: int) -> Client:
        client = await negotiated(port)
        await client.stream.send_all(command(milter.MAIL, b"<bob@origin.test>"))
        return client

    async def main() -> None:
        async with serving(svc, gate) as (loop, port):
            answering = await in_message(port)
            await answering.stream.send_all(
                command(milter.RCPT, b"<carol@dest.test>") + command(milter.END_OF_MESSAGE)
            )
            assert await answering.replies(1) == [CONTINUE]
            with trio.fail_after(5):
                while not any(c.answering for c in loop.connections):
                    await trio.sleep(0.01)
            waiting = await in_message(port)
            between = await negotiated(port)
            newcomer = await negotiated(port)  # full: evicts
            assert await between.replies(1) == []  # between messages: first
            await newcomer.stream.send_all(command(milter.MAIL, b"<bob@origin.test>"))
            last = await in_message(port)  # none between messages: in a message, longest idle
            assert await waiting.replies(1) == []
            after = await negotiated(port)
            assert await newcomer.replies(1) == []  # and then the next in a message
            assert gates[0].counts["evicted in transaction"] == 2
            assert gates[0].counts["evicted"] == 3
            released.set()  # the oldest, being answered, was never the victim
            assert [c for c, _ in await answering.replies(2)] == [b"e", b"c"]
            for client in (answering, last, after):
                await client.stream.aclose()

    trio.run(main)


def test_neither_dribbled_bytes_nor_recipients_extend_a_session() -> None:
    """A packet must end within request_timeout of its first byte, a message within
    milter_message_timeout of its MAIL, however the bytes come."""
    svc = service(transaction_limit=0.6)

    async def main() -> None:
        async with serving(svc) as (loop, port):
            loop.request_timeout = 0.6
            dribbler = await negotiated(port)
            messenger = await negotiated(port)
            await messenger.stream.send_all(command(milter.MAIL, b"<alice@origin.test>"))
            partial = packet(b"R", b"<" + b"d" * 100 + b">\x00")
            started = trio.current_time()
            with trio.fail_after(5):
                for i in range(len(partial) - 1):
                    if not loop.connections:
                        break
                    with contextlib.suppress(trio.BrokenResourceError):  # closed by srsd
                        await dribbler.stream.send_all(partial[i : i + 1])
                    with contextlib.suppress(trio.BrokenResourceError):
                        rcpt = command(milter.RCPT, b"<r%d@dest.test>" % i)
                        await messenger.stream.send_all(rcpt)
                    await trio.sleep(0.05)
            assert not loop.connections, "a session outlived its time-outs"
            assert trio.current_time() - started < 3
            assert await dribbler.replies(1) == []
            await messenger.replies(100)  # the continues, then EOF

    trio.run(main)


class FailingReader(MilterReader):
    """Runs out of memory on a packet holding ``boom``."""

    def feed(self, data: bytes) -> list[Any]:
        if b"boom" in data:
            raise MemoryError
        return super().feed(data)


class FailingService(MilterService):
    def reader(self, owner: object) -> MilterReader:
        return FailingReader(super().reader(owner).session)


def test_an_exception_in_one_session_ends_that_session_only() -> None:
    svc = FailingService(SETTINGS, forward=forward, reverse=reverse, delivery=service().delivery)

    async def main() -> None:
        async with serving(svc) as (loop, port):
            good = await negotiated(port)
            bad = await negotiated(port)
            await bad.stream.send_all(command(milter.MAIL, b"<boom@origin.test>"))
            assert await bad.replies(1) == []  # closed
            assert loop.faults == 1
            replies = await good.message(b"<alice@origin.test>", b"<carol@dest.test>")
            assert [c for c, _ in replies] == [b"e", b"c"]
            fresh = await negotiated(port)  # still accepting
            await fresh.stream.aclose()
            await good.stream.aclose()

    trio.run(main)


def test_the_memory_budget_gives_each_owner_half() -> None:
    budget = MemoryBudget(1000)
    mallory, postfix = budget.allowance(65534), budget.allowance(0)
    assert mallory.take(500) and not mallory.take(1)
    assert postfix.take(400) and postfix.take(100) and not postfix.take(1)
    assert (budget.used, budget.refused) == (1000, 2)
    mallory.give(500)
    postfix.give(500)
    assert budget.used == 0 and not budget.by_owner


def test_a_split_transaction_is_classified_off_the_loop_packets_behind_wait() -> None:
    """split_mixed: each recipient is classified off the loop; the packets that came in the
    same read behind it are answered after it, in order; the bytes kept go back to the
    budget when the session ends."""
    svc = service(split=True)
    connect = packet(b"C", b"client.test\x00" + b"4" + (40000).to_bytes(2) + b"127.0.0.1\x00")

    async def main() -> None:
        async with serving(svc) as (loop, port):
            client = await negotiated(port)
            await client.stream.send_all(
                connect
                + command(milter.MAIL, b"<alice@origin.test>")
                + command(milter.RCPT, b"<carol@dest.test>")
                + command(milter.RCPT, b"<dave@mailbox.test>")
                + command(milter.END_OF_MESSAGE)
            )
            replies = await client.replies(5)
            too_many = (b"y", b"452 4.5.3 Too many recipients\x00")
            assert replies[:3] == [CONTINUE, CONTINUE, too_many]  # connect, RCPT, RCPT
            assert [c for c, _ in replies[3:]] == [b"e", b"c"]  # rewritten: it leaves
            assert svc.budget.used == 0  # the message was decided
            await client.stream.send_all(
                command(milter.MAIL, b"<alice@origin.test>")
                + command(milter.RCPT, b"<dave@mailbox.test>")
            )
            assert await client.replies(1) == [CONTINUE]
            assert svc.budget.used > 0
            await client.stream.aclose()
            with trio.fail_after(5):
                while loop.connections:
                    await trio.sleep(0.01)
            assert svc.budget.used == 0

    trio.run(main)


# -- the decision in the loop (issue 22): the same verdicts as off it, or none ----------------


def lookups_in(tmp_path: Path, mode: EnvelopeMode) -> Lookups:
    """The map endpoints' decisions (real settings, policy and envelope database)."""
    secrets = tmp_path / "secrets"
    secrets.write_bytes(SECRET + b"\n")
    secrets.chmod(0o600)
    config = tmp_path / "empty.toml"
    config.write_text("")
    loaded = srsd_settings.load(
        {"domain": DOMAIN.decode(), "secrets_file": str(secrets)}, environ={}, config=config
    )
    store = SQLiteStore(tmp_path / "envelopes.sqlite", 60.0)
    return Lookups(loaded, loaded.policy(), EnvelopeDatabase(store, mode, 0))


def messages() -> list[milter.Transaction]:
    """Forwarded, local, mixed, a bounce to our SRS address, a forged one, a null sender."""
    ours = b"<" + POLICY.forward(b"alice@origin.test", time.time()).value + b">"  # type: ignore[operator]
    forged = b"<SRS0=xxxx=AA=origin.test=bob@forwarder.test>"
    return [
        milter.Transaction(b"Q1", b"<bob@origin.test>", (b"<carol@dest.test>",)),
        milter.Transaction(b"Q2", b"<bob@origin.test>", (b"<dave@mailbox.test>",)),
        milter.Transaction(b"Q3", b"<bob@origin.test>", (b"<dave@mailbox.test>", b"<e@f.test>")),
        milter.Transaction(b"Q4", b"<>", (ours,)),
        milter.Transaction(b"Q5", b"<bob@origin.test>", (forged, b"<carol@dest.test>")),
        milter.Transaction(b"Q6", b"<>", (b"<carol@dest.test>",)),
    ]


def test_a_message_that_needs_no_storage_is_decided_in_the_loop_as_off_it(
    tmp_path: Path,
) -> None:
    lookups = lookups_in(tmp_path, EnvelopeMode.EMBEDDED)
    delivery = PostfixDelivery(local_domains=DomainSet(["mailbox.test"]))
    forward_lookup, reverse_lookup = milter_service.lookups_for(lookups)

    def counted() -> Counter[tuple[str, ...]]:  # lookups by outcome, and timed lookups by map
        seen: Counter[tuple[str, ...]] = Counter(lookups.counts)
        seen.update({("timed", m): sum(c) for m, c in lookups.latency.counts.items()})
        return seen

    for transaction in messages():
        before = counted()
        now = milter_service.decide_now(transaction, lookups, delivery)
        middle = counted()
        later = trio.run(
            functools.partial(
                milter_service.decide,
                transaction,
                forward=forward_lookup,
                reverse=reverse_lookup,
                delivery=delivery,
            )
        )
        assert now is not None and now == later, transaction
        # each lookup counted once, and alike: in the loop a recipient that cannot be an SRS
        # address is answered without a lookup (Policy.plainly_not_srs), counted all the same
        in_loop, off_loop = middle - before, counted() - middle
        assert in_loop == off_loop and in_loop.total() > 0, transaction


def test_a_message_is_logged_in_one_line_its_lookups_at_debug(
    tmp_path: Path, log: CapturedLog
) -> None:
    # The message's line says what the lookups rewrote: their own lines are debug; a lookup
    # the message line does not report (a forged SRS recipient) keeps its info line.
    genuine = POLICY.forward(b"alice@origin.test", time.time()).value
    assert genuine is not None
    forged = genuine.replace(b"=alice@", b"=mallory@")

    async def body(client: Client) -> None:
        await client.message(b"<alice@origin.test>", b"<carol@dest.test>")
        await client.message(b"<>", b"<" + genuine + b">", b"<" + forged + b">")

    lookups = lookups_in(tmp_path, EnvelopeMode.EMBEDDED)
    forward_lookup, reverse_lookup = milter_service.lookups_for(lookups)
    run(service(forward=forward_lookup, reverse=reverse_lookup, lookups=lookups), body)
    assert lookups.counts == {  # every lookup counted as ever
        ("milter", "forward", "rewritten"): 1,
        ("milter", "reverse", "not SRS"): 1,  # carol@dest.test: is it delivered here?
        ("milter", "reverse", "rewritten"): 1,
        ("milter", "reverse", "bad hash"): 1,
    }
    lines = log.messages()
    info = log.messages(logging.INFO)
    assert len(info) == 4, lines
    head = r"milter QID1: sender <alice@origin\.test> rewritten as <SRS0=[^>]*@forwarder\.test>"
    assert re.fullmatch(head + r" \([0-9.]+ ms\)", info[0])
    assert info[1] == f"reverse <{forged.decode()}> not rewritten: Hash invalid in SRS address."
    assert info[2] == f"milter QID1: recipient <{genuine.decode()}> restored as <alice@origin.test>"
    assert info[3] == "milter QID1: sender <> kept: null sender"
    assert any(m.startswith("forward <alice@origin.test> rewritten as <SRS0=") for m in lines)
    assert f"reverse <{genuine.decode()}> rewritten as <alice@origin.test>" in lines
    # at debug, the recipient that cannot be SRS is looked up like any (a line of its own)
    assert f"reverse <carol@dest.test> not rewritten: {NOT_SRS.reason}" in lines
    assert set(lines) - set(info) == set(log.messages(logging.DEBUG))


def test_a_message_that_needs_storage_or_postfix_is_left_to_wait(tmp_path: Path) -> None:
    fixed = PostfixDelivery(local_domains=DomainSet(["mailbox.test"]))
    database = lookups_in(tmp_path, EnvelopeMode.DATABASE)
    forwarded = messages()[0]
    assert milter_service.decide_now(forwarded, database, fixed) is None
    assert not database.counts  # nothing counted or logged for a message decided later
    embedded = lookups_in(tmp_path, EnvelopeMode.EMBEDDED)
    assert milter_service.decide_now(forwarded, embedded, PostfixDelivery()) is None
    assert not embedded.counts
