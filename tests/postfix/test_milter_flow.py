# Mail through a throw-away Postfix whose only SRS is srsd's milter: forwarded mail only.
"""srsd as ``smtpd_milters`` and ``non_smtpd_milters`` of a real Postfix 3.x, no canonical maps.

The instance (``tests/harness/postfix.py``) is set up as a small hosting server::

    smtpd_milters = non_smtpd_milters = inet:127.0.0.1:MILTER
    milter_default_action = tempfail, milter_protocol = 6
    mydestination            = forwarder.test (the SRS domain)
    local_recipient_maps     = socketmap:...:reverse (valid SRS addresses of ours only)
    virtual_mailbox_domains  = mailbox.test   (dave@mailbox.test: a maildir, virtual(8))
    virtual_alias_maps       = fwd@mailbox.test -> carol@dest.test
    transport_maps           = dest.test, origin.test -> the SMTP sink

srsd learns all of this from the instance itself (``MAIL_CONFIG`` = its configuration
directory), so it rewrites the sender only of mail that leaves: mail to dave keeps its
sender in the Return-Path written by virtual(8); mail to fwd@mailbox.test, a local-domain
address that a virtual alias sends to dest.test, gets SRS0 (postsrsd's milter does not);
a bounce to the SRS0 address is given back to the original sender by the milter alone.

This is deliberately not the wiring ``srsd postfix-config`` prints (that one, with
``recipient_canonical_maps`` and the SRS domain as a virtual alias domain, is tested through
Debian's chrooted master.cf in ``test_wiring_flow.py``): here no map restores a bounce, so
the milter's own DELRCPT + ADDRCPT is what is tested, as set-ups written for README's
earlier milter lines (the SRS domain in ``mydestination``) still run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from srsd.wire.milter import negotiate
from tests.harness.mail_flow import (
    SRS_DOMAIN,
    PostfixPrograms,
    SmtpClient,
    expected_srs0_candidates,
)
from tests.harness.ports import free_port
from tests.harness.postfix import PostfixInstance, find_program
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SECRET, SrsdProcess

pytestmark = pytest.mark.postfix

ALICE = "alice@origin.test"
DAVE = "dave@mailbox.test"
FWD = "fwd@mailbox.test"
CAROL = "carol@dest.test"
SMTP_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 20.0
READY_TIMEOUT = 20.0
MAILBOX_USER = "nobody"


class MilterInstance(PostfixInstance):
    """The throw-away instance plus the virtual(8) delivery agent."""

    def master_cf(self) -> str:
        row = f"{'virtual':<22} {'unix':<10} -   n   n   -      -   virtual\n"
        return super().master_cf() + row


class Flow(SmtpClient):
    """srsd (milter), the sink, Postfix and dave's maildir."""

    subject = "milter test"

    def __init__(
        self,
        srsd: SrsdProcess,
        milter_port: int,
        sink: SmtpSink,
        postfix: PostfixInstance,
        maildir: Path,
    ) -> None:
        self.srsd = srsd
        self.milter_port = milter_port
        self.sink = sink
        self.postfix = postfix
        self.maildir = maildir

    def at_sink(self, token: str) -> Delivery:
        found = self.sink.wait_for(lambda d: token in d.text(), DELIVERY_TIMEOUT / 4)
        if found is None:
            self.postfix.flush()
            found = self.sink.wait_for(lambda d: token in d.text(), DELIVERY_TIMEOUT)
        assert found is not None, f"no delivery of {token} at the sink" + self.diagnostics()
        return found

    def in_mailbox(self, token: str) -> str:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            for path in (self.maildir / "new").glob("*"):
                text = path.read_text(errors="replace")
                if token in text:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"no delivery of {token} to dave's maildir" + self.diagnostics())

    def diagnostics(self) -> str:
        deliveries = "\n".join(
            f"  MAIL FROM:<{d.mail_from}> RCPT TO:{list(d.rcpt_tos)}" for d in self.sink.deliveries
        )
        return (
            f"\n--- sink ---\n{deliveries or '  (none)'}\n--- postqueue -p ---\n"
            f"{self.postfix.queue()}\n{self.postfix.diagnostics()}\n--- srsd log ---\n"
            f"{self.srsd.log()}"
        )

    def wait_milter(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.milter_port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "srsd's milter port never opened"
                time.sleep(0.05)


@pytest.fixture(scope="module")
def flow(
    postfix_programs: PostfixPrograms, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flow]:
    root = tmp_path_factory.mktemp("milter-flow")
    owner = pwd.getpwnam(MAILBOX_USER)
    # virtual(8) writes as MAILBOX_USER, who cannot traverse pytest's 0700 directories.
    base = Path(tempfile.mkdtemp(prefix="srsd-mailbox-", dir="/tmp"))
    base.chmod(0o755)
    os.chown(base, owner.pw_uid, owner.pw_gid)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        sink = stack.enter_context(SmtpSink())
        relay = f"smtp:[127.0.0.1]:{sink.port}"
        milter_port = free_port("127.0.0.1")
        milter = f"inet:127.0.0.1:{milter_port}"
        socketmap = f"inet:127.0.0.1:{free_port('127.0.0.1')}"
        main_cf = {
            "smtpd_milters": milter,
            "non_smtpd_milters": milter,
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "mydestination": SRS_DOMAIN,
            # smtpd accepts a bounce to the SRS domain only for a valid SRS address of ours
            # (the reverse map finds it); the milter then gives it back to its sender. What
            # the milter left is discarded, so a test sees it missing at the sink.
            "local_recipient_maps": f"socketmap:{socketmap}:reverse",
            "local_transport": "discard:SRS address the milter did not restore",
            "virtual_mailbox_domains": "mailbox.test",
            "virtual_mailbox_maps": f"inline:{{ {DAVE}=dave/ }}",
            "virtual_mailbox_base": str(base),
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "virtual_minimum_uid": "1",
            "virtual_transport": "virtual",
            "virtual_alias_maps": f"inline:{{ {FWD}={CAROL} }}",
            "transport_maps": f"inline:{{ dest.test={relay}, origin.test={relay} }}",
        }
        # srsd first: Postfix's own readiness probe is an SMTP session, which calls the milter.
        postfix = MilterInstance(root / "postfix", main_cf=main_cf)
        (root / "srsd").mkdir()
        srsd = stack.enter_context(
            SrsdProcess(
                root / "srsd",
                domain=SRS_DOMAIN,
                secrets=(SECRET,),
                extra_args=["--milter", milter, "--socketmap", socketmap, "--log-level", "debug"],
                env={"MAIL_CONFIG": str(postfix.config_dir)},
            )
        )
        flow = Flow(srsd, milter_port, sink, postfix, base / "dave")
        flow.wait_milter()
        stack.enter_context(postfix)
        yield flow


def test_mail_to_a_local_mailbox_keeps_its_sender(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, DAVE, token=token) is None, flow.diagnostics()
    text = flow.in_mailbox(token)
    assert text.startswith(f"Return-Path: <{ALICE}>\n"), text[:300] + flow.diagnostics()
    assert "kept: every recipient is delivered here" in flow.srsd.log()


def test_mail_to_a_virtual_alias_that_forwards_gets_srs0(flow: Flow) -> None:
    start = time.time()
    token = uuid.uuid4().hex
    assert flow.send(ALICE, FWD, token=token) is None, flow.diagnostics()
    delivery = flow.at_sink(token)
    assert delivery.rcpt_tos == (CAROL,), flow.diagnostics()
    assert delivery.mail_from in expected_srs0_candidates("alice", "origin.test", start), (
        delivery.mail_from + flow.diagnostics()
    )
    assert f"From: {ALICE}" in delivery.text()  # only the envelope changes
    # Postfix took every reply as it is (no "milter ... unexpected/ignoring" warnings).
    trouble = [
        line
        for line in flow.postfix.log().splitlines()
        if "warning" in line and "milter" in line.lower()
    ]
    assert not trouble, "\n".join(trouble)


def test_a_remote_recipient_after_a_local_one_gets_452_then_srs0_on_its_own(flow: Flow) -> None:
    start = time.time()
    token = uuid.uuid4().hex
    expected = expected_srs0_candidates("alice", "origin.test", start)
    with smtplib.SMTP("127.0.0.1", flow.postfix.smtpd_port, timeout=SMTP_TIMEOUT) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail(ALICE)[0] == 250
        assert smtp.rcpt(DAVE)[0] == 250  # the first recipient: delivered here
        code, text = smtp.rcpt(CAROL)  # leaves: the other class
        assert (code, text[:5]) == (452, b"4.5.3"), (code, text)
        assert smtp.data(flow.message(token, DAVE))[0] == 250
    # The local copy keeps its sender; the client sends carol's copy on its own: SRS0.
    assert flow.in_mailbox(token).split("\n", 1)[0] == f"Return-Path: <{ALICE}>"
    assert flow.send(ALICE, CAROL, token=token) is None, flow.diagnostics()
    delivery = flow.at_sink(token)
    assert delivery.rcpt_tos == (CAROL,) and delivery.mail_from in expected, flow.diagnostics()


def test_sendmail_submission_goes_through_non_smtpd_milters(flow: Flow) -> None:
    start = time.time()
    token = uuid.uuid4().hex
    program = find_program("sendmail")
    assert program is not None, "Postfix's sendmail is not installed"
    done = subprocess.run(
        [program, "-C", str(flow.postfix.config_dir), "-f", ALICE, FWD],
        input=flow.message(token, FWD).replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    delivery = flow.at_sink(token)
    assert delivery.rcpt_tos == (CAROL,), flow.diagnostics()
    assert delivery.mail_from in expected_srs0_candidates("alice", "origin.test", start)


def test_a_mixed_sendmail_submission_is_not_split(flow: Flow) -> None:
    """A local submission (non_smtpd_milters, client port 0) cannot send a recipient again:
    it is rewritten as a whole, and both copies are delivered."""
    start = time.time()
    token = uuid.uuid4().hex
    program = find_program("sendmail")
    assert program is not None, "Postfix's sendmail is not installed"
    done = subprocess.run(
        [program, "-C", str(flow.postfix.config_dir), "-f", ALICE, DAVE, CAROL],
        input=flow.message(token, f"{DAVE}, {CAROL}").replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = expected_srs0_candidates("alice", "origin.test", start)
    delivery = flow.at_sink(token)
    assert delivery.rcpt_tos == (CAROL,) and delivery.mail_from in expected, flow.diagnostics()
    return_path = flow.in_mailbox(token).split("\n", 1)[0]
    assert return_path in {f"Return-Path: <{e}>" for e in expected}, return_path


def test_bounce_to_srs0_address_reaches_the_original_sender(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, FWD, token=token) is None, flow.diagnostics()
    srs_address = flow.at_sink(token).mail_from
    assert srs_address.startswith("SRS0=")
    bounce = uuid.uuid4().hex
    assert flow.send("", srs_address, token=bounce) is None, flow.diagnostics()
    delivery = flow.at_sink(bounce)
    assert delivery.rcpt_tos == (ALICE,) and delivery.mail_from == "", flow.diagnostics()
    # A forged one is refused by Postfix itself (the reverse map does not find it).
    forged = srs_address.replace("=alice@", "=mallory@")
    refused = flow.send("", forged, token=uuid.uuid4().hex)
    assert refused is not None and refused[0] == 550, f"{refused}" + flow.diagnostics()


def test_srsd_stopped_defers_mail_then_it_is_delivered(flow: Flow) -> None:
    start = time.time()
    expected = expected_srs0_candidates("alice", "origin.test", start)
    flow.srsd.stop()
    smtp_token, sendmail_token = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        refused = flow.send(ALICE, FWD, token=smtp_token)
        assert refused is not None and refused[0] == 451, f"{refused}" + flow.diagnostics()
        program = find_program("sendmail")
        assert program is not None
        done = subprocess.run(
            [program, "-C", str(flow.postfix.config_dir), "-f", ALICE, FWD],
            input=flow.message(sendmail_token, FWD),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        # Nothing leaves while srsd is down: nothing goes out unrewritten.
        assert flow.sink.wait_for(lambda d: sendmail_token in d.text(), 3.0) is None
        assert flow.postfix.queue().strip(), "the submission is not queued"
    finally:
        flow.srsd.start()
        flow.wait_milter()
    flow.postfix.flush()
    assert flow.send(ALICE, FWD, token=smtp_token) is None, flow.diagnostics()  # the retry
    for token in (smtp_token, sendmail_token):
        delivery = flow.at_sink(token)
        assert delivery.mail_from in expected and delivery.rcpt_tos == (CAROL,), flow.diagnostics()


def _data(smtp: smtplib.SMTP, message: bytes) -> int:
    """The reply code to DATA and the message (a refusal of DATA itself included)."""
    try:
        return smtp.data(message)[0]
    except smtplib.SMTPDataError as err:
        return err.smtp_code


def test_a_message_whose_milter_session_is_evicted_is_deferred_then_delivered(
    flow: Flow,
) -> None:
    """The milter full (``milter_max_sessions`` 2) of two SMTP sessions stalled after RCPT
    (messages that do not end): a new milter session evicts the one idle the longest in its
    message. Postfix answers that message 4xx (``milter_default_action = tempfail``), the
    other message goes through, and the deferred one sent again is delivered with SRS0."""
    expected = expected_srs0_candidates("alice", "origin.test", time.time())
    evicted, kept = uuid.uuid4().hex, uuid.uuid4().hex
    args = list(flow.srsd.args)
    flow.srsd.stop()
    flow.srsd.args += ["--milter-max-sessions", "2", "--milter-max-sessions-per-user", "2"]
    try:
        flow.srsd.start()
        flow.wait_milter()
        port = flow.postfix.smtpd_port
        with (
            smtplib.SMTP("127.0.0.1", port, timeout=SMTP_TIMEOUT) as first,
            smtplib.SMTP("127.0.0.1", port, timeout=SMTP_TIMEOUT) as second,
        ):
            for smtp in (first, second):
                smtp.ehlo("client.test")
                assert smtp.mail(ALICE)[0] == 250, flow.diagnostics()
                assert smtp.rcpt(FWD)[0] in (250, 251), flow.diagnostics()
            with socket.create_connection(("127.0.0.1", flow.milter_port), timeout=10) as sock:
                sock.sendall(negotiate())
                assert sock.recv(65536)[4:5] == b"O", flow.diagnostics()  # admitted
                code = _data(first, flow.message(evicted, FWD))
                assert 400 <= code < 500, f"{code}" + flow.diagnostics()
                assert _data(second, flow.message(kept, FWD)) == 250, flow.diagnostics()
    finally:
        flow.srsd.stop()
        flow.srsd.args[:] = args
        flow.srsd.start()
        flow.wait_milter()
    assert "in the middle of a transaction" in flow.srsd.log(), flow.diagnostics()
    assert flow.send(ALICE, FWD, token=evicted) is None, flow.diagnostics()  # the retry
    for token in (kept, evicted):
        delivery = flow.at_sink(token)
        assert delivery.mail_from in expected and delivery.rcpt_tos == (CAROL,), flow.diagnostics()
