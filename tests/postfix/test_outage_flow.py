# srsd killed while a real Postfix is sending: mail is deferred, never sent unrewritten, never lost.
"""What a real Postfix 3.x does with mail while srsd is down (SIGKILL), and after it returns.

The instance, sink and map lines are those of ``test_mail_flow.py`` (tcp_table maps on
srsd's two ports, bob@forwarder.test a virtual alias of carol@dest.test, dest.test and
origin.test relayed to the sink). srsd is killed with SIGKILL, then mail from
alice@origin.test to bob@forwarder.test comes in three ways at once:

1. an SMTP session that had its RCPT accepted while srsd was up, and sends DATA after
   the kill: cleanup's lookup for the ``To:`` header (``header_recipient``) fails, and
   smtpd answers ``451 4.3.0 Error: queue file write error`` at the end of DATA;
2. a new SMTP session: smtpd's recipient check asks the reverse map, and answers
   ``451 4.3.0 <bob@forwarder.test>: Temporary lookup failure`` to RCPT;
3. ``sendmail`` (local submission): pickup hands the message to cleanup, whose sender
   lookup fails (``sender_canonical_maps map lookup problem ... message not accepted, try
   again later``); the message stays in the ``maildrop`` queue (``postqueue -j``).

Postfix's tcp client tries for about 9 s (10 connects, 1 s apart) before it gives up, so
the three run at the same time and the test waits once. Nothing reaches the sink while
srsd is down (nothing leaves unrewritten). Then srsd is started again on the same ports,
``postqueue -f`` delivers the queued message with an SRS0 sender, and the two messages the
SMTP client was told to retry are sent again and delivered with an SRS0 sender too.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    SRS_DOMAIN,
    PostfixPrograms,
    canonical_maps_flow,
    expected_srs0_candidates,
)
from tests.harness.postfix import PostfixInstance, find_program
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SECRET, SrsdProcess

pytestmark = pytest.mark.postfix

ALICE = "alice@origin.test"
BOB = f"bob@{SRS_DOMAIN}"
# Postfix's tcp client gives up after about 9 s; every wait for it is bounded by this.
POSTFIX_GIVES_UP = 30.0
DELIVERY_TIMEOUT = 20.0


def message(token: str) -> bytes:
    return (
        f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: srsd outage test {token}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: <{token}@client.test>\r\n\r\n"
        f"token {token}\r\n"
    ).encode()


class Outage:
    """srsd, the sink and Postfix; srsd can be killed and started again on its ports."""

    def __init__(
        self, srsd: SrsdProcess, sink: SmtpSink, postfix: PostfixInstance, postqueue: str
    ) -> None:
        self.srsd = srsd
        self.sink = sink
        self.postfix = postfix
        self.postqueue = postqueue

    def smtp(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.postfix.smtpd_port, timeout=POSTFIX_GIVES_UP)
        smtp.ehlo("client.test")
        return smtp

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: one JSON object per queued message."""
        out = subprocess.run(
            [self.postqueue, "-c", str(self.postfix.config_dir), "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def kill_srsd(self) -> None:
        assert self.srsd.proc is not None
        self.srsd.proc.send_signal(signal.SIGKILL)
        self.srsd.proc.wait(10)

    def delivered(self, token: str, timeout: float = DELIVERY_TIMEOUT) -> Delivery:
        found = self.sink.wait_for(lambda d: token in d.text(), timeout)
        assert found is not None, f"no delivery of {token}" + self.diagnostics()
        return found

    def diagnostics(self) -> str:
        deliveries = "\n".join(
            f"  MAIL FROM:<{d.mail_from}> RCPT TO:{list(d.rcpt_tos)}" for d in self.sink.deliveries
        )
        return (
            f"\n--- sink ---\n{deliveries or '  (none)'}\n--- postqueue -j ---\n"
            f"{self.queue()}\n{self.postfix.diagnostics()}\n--- srsd log ---\n"
            f"{self.srsd.log()}"
        )


@pytest.fixture
def outage(postfix_programs: PostfixPrograms, tmp_path: Path) -> Iterator[Outage]:
    (tmp_path / "srsd").mkdir()
    with ExitStack() as stack:
        srsd = stack.enter_context(
            SrsdProcess(tmp_path / "srsd", domain=SRS_DOMAIN, secrets=(SECRET,))
        )
        sink = stack.enter_context(SmtpSink())
        main_cf = canonical_maps_flow(srsd.forward_port, srsd.reverse_port, sink.port)
        postfix = stack.enter_context(PostfixInstance(tmp_path / "postfix", main_cf=main_cf))
        yield Outage(srsd, sink, postfix, postfix_programs.postqueue)


def test_mail_sent_while_srsd_is_down_is_deferred_then_delivered_with_srs(
    outage: Outage,
) -> None:
    start = time.time()
    tokens = {name: uuid.uuid4().hex for name in ("mid-session", "new session", "sendmail")}

    # 1. A session whose RCPT srsd answered; srsd dies before DATA.
    mid = outage.smtp()
    assert mid.mail(ALICE)[0] == 250
    assert mid.rcpt(BOB)[0] == 250, outage.diagnostics()
    outage.kill_srsd()
    killed = time.monotonic()
    results: dict[str, tuple[int, bytes]] = {}

    def finish_data() -> None:
        try:
            results["mid-session"] = mid.data(message(tokens["mid-session"]))
        except smtplib.SMTPResponseException as err:
            results["mid-session"] = (err.smtp_code, err.smtp_error)
        finally:
            mid.close()

    data_thread = threading.Thread(target=finish_data, daemon=True)
    data_thread.start()

    # 3. Local submission: accepted by sendmail at once, then stuck before the queue.
    program = find_program("sendmail")
    assert program is not None, "Postfix's sendmail is not installed"
    sendmail = subprocess.run(
        [program, "-C", str(outage.postfix.config_dir), "-f", ALICE, BOB],
        input=message(tokens["sendmail"]).replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert sendmail.returncode == 0, sendmail.stderr

    # 2. A new session: smtpd's recipient check cannot ask the reverse map.
    with outage.smtp() as new:
        assert new.mail(ALICE)[0] == 250
        results["new session"] = new.rcpt(BOB)
    data_thread.join(POSTFIX_GIVES_UP)
    assert not data_thread.is_alive()
    waited = time.monotonic() - killed
    print(f"\nsrsd down: Postfix's answers after {waited:.1f} s: {results}")

    assert results["new session"] == (451, f"4.3.0 <{BOB}>: Temporary lookup failure".encode())
    assert results["mid-session"] == (451, b"4.3.0 Error: queue file write error")
    # The local submission waits in the maildrop queue; pickup has tried and failed.
    deadline = time.monotonic() + POSTFIX_GIVES_UP
    while "message not accepted, try again later" not in outage.postfix.log():
        assert time.monotonic() < deadline, outage.diagnostics()
        time.sleep(0.2)
    queued = outage.queue()
    assert [(q["queue_name"], q["sender"]) for q in queued] == [("maildrop", ALICE)], queued
    recipients = queued[0]["recipients"]
    assert isinstance(recipients, list)
    assert [r["address"] for r in recipients] == [BOB], queued
    log = outage.postfix.log()
    assert "sender_canonical_maps map lookup problem for alice@origin.test" in log
    # Nothing left Postfix while srsd was down: nothing went out unrewritten.
    assert outage.sink.deliveries == [], outage.diagnostics()

    # srsd returns on the same ports; the queue is flushed; the client retries.
    outage.srsd.start()
    outage.postfix.flush()
    delivery = outage.delivered(tokens["sendmail"])
    for name in ("mid-session", "new session"):
        with outage.smtp() as retry:
            assert retry.sendmail(ALICE, [BOB], message(tokens[name])) == {}
    expected = expected_srs0_candidates("alice", "origin.test", start)
    for token in tokens.values():
        delivery = outage.delivered(token)
        assert delivery.mail_from in expected, outage.diagnostics()
        assert delivery.rcpt_tos == ("carol@dest.test",), outage.diagnostics()
    assert len(outage.sink.deliveries) == 3  # each message once
    assert all(d.mail_from in expected for d in outage.sink.deliveries)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while outage.queue():
        assert time.monotonic() < deadline, outage.diagnostics()
        time.sleep(0.2)
