# Mail through a throw-away Postfix whose canonical maps are srsd: forward, bounce, forgery.
"""A full mail flow through a real Postfix 3.x instance with srsd as its SRS maps.

Postfix (own config, queue and log under a pytest temp dir, smtpd on a free loopback port)
is configured the way a forwarding host runs postsrsd/srsd::

    sender_canonical_maps      = tcp:127.0.0.1:FORWARD    (envelope_sender)
    recipient_canonical_maps   = tcp:127.0.0.1:REVERSE    (envelope_recipient, header_recipient)
    virtual_alias_maps         = bob@forwarder.test -> carol@dest.test
    transport_maps             = dest.test, origin.test -> smtp:[127.0.0.1]:SINK

Messages are sent with smtplib to Postfix's smtpd and arrive at an aiosmtpd sink. Nothing
leaves loopback: every other destination goes to Postfix's ``error`` transport.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    DELIVERY_TIMEOUT,
    SRS_DOMAIN,
    MailFlow,
    PostfixPrograms,
    canonical_maps_flow,
    expected_srs0_candidates,
    tamper_hash,
)
from tests.harness.postfix import PostfixInstance
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SrsdProcess

pytestmark = pytest.mark.postfix

# Delivery to the sink takes milliseconds; after this long the queue is flushed once.
# How long a bounce to a forged SRS address is given to (wrongly) show up at the sink: short
# when smtpd refused it (it never entered the queue), longer when Postfix accepted it.
FORGERY_WAIT_REFUSED = 1.0
FORGERY_WAIT_ACCEPTED = 5.0
# Warnings in the mail log that mean the maps misbehaved (dropped connection, bad reply...).


@pytest.fixture(scope="module")
def flow(
    postfix_programs: PostfixPrograms,
    tmp_path_factory: pytest.TempPathFactory,
    srsd_server: SrsdProcess,
) -> Iterator[MailFlow]:
    """srsd + SMTP sink + Postfix, started once for the module and always stopped."""
    root: Path = tmp_path_factory.mktemp("postfix")
    with ExitStack() as stack:
        sink = stack.enter_context(SmtpSink())
        main_cf = canonical_maps_flow(srsd_server.forward_port, srsd_server.reverse_port, sink.port)
        instance = PostfixInstance(root / "instance", main_cf=main_cf)
        stack.enter_context(instance)
        yield MailFlow(srsd=srsd_server, sink=sink, postfix=instance)
    assert not instance.master_running(), "Postfix master still running after stop"


@pytest.fixture
def log_offset(flow: MailFlow) -> int:
    return len(flow.postfix.log())


def _headers(delivery: Delivery) -> str:
    return delivery.text().split("\r\n\r\n", 1)[0]


# -- 1. forward -------------------------------------------------------------------------


def test_forwarded_mail_gets_srs0_envelope_sender(flow: MailFlow, log_offset: int) -> None:
    start = time.time()
    delivery = flow.forward("alice@origin.test")
    context = flow.diagnostics
    assert delivery.rcpt_tos == ("carol@dest.test",), context()
    assert delivery.mail_from in expected_srs0_candidates("alice", "origin.test", start), (
        f"envelope sender {delivery.mail_from!r} is not "
        f"SRS0=HHHH=TT=origin.test=alice@{SRS_DOMAIN}" + context()
    )
    # Only the envelope is rewritten (sender_canonical_classes = envelope_sender).
    assert "From: alice@origin.test" in _headers(delivery), context()
    flow.assert_no_map_trouble(log_offset)


# -- 2. the bounce comes home --------------------------------------------------------------


def test_bounce_to_srs_address_reaches_original_sender(flow: MailFlow, log_offset: int) -> None:
    srs_address = flow.forward("alice@origin.test").mail_from
    token = uuid.uuid4().hex
    refused = flow.send("", srs_address, token=token)
    assert refused is None, f"bounce to {srs_address} refused: {refused}" + flow.diagnostics()
    delivery = flow.wait_for_token(token)
    assert delivery.rcpt_tos == ("alice@origin.test",), flow.diagnostics()
    assert delivery.mail_from == "", flow.diagnostics()
    # header_recipient: the To: header of a locally submitted bounce is reversed too.
    assert "To: alice@origin.test" in _headers(delivery), flow.diagnostics()
    flow.assert_no_map_trouble(log_offset)


# -- 3. a forged bounce goes nowhere ---------------------------------------------------------


@pytest.mark.parametrize("forgery", ["hash", "local-part"])
def test_bounce_to_tampered_srs_address_is_not_delivered(
    flow: MailFlow, log_offset: int, forgery: str, record_property: Callable[[str, object], None]
) -> None:
    genuine = flow.forward("alice@origin.test").mail_from
    forged = tamper_hash(genuine) if forgery == "hash" else genuine.replace("=alice@", "=mallory@")
    assert forged != genuine
    token = uuid.uuid4().hex
    refused = flow.send("", forged, token=token)
    if refused is None:
        flow.postfix.flush()
    wait = FORGERY_WAIT_REFUSED if refused else FORGERY_WAIT_ACCEPTED
    wrongly = flow.sink.wait_for(lambda d: token in d.text(), wait)
    queue = flow.postfix.queue()
    reaction = (
        f"RCPT TO:<{forged}> refused: {refused[0]} {refused[1].decode(errors='replace')}"
        if refused
        else f"accepted at SMTP; queue afterwards: {queue.strip()}"
    )
    record_property("postfix_reaction", reaction)
    print(f"[{forgery}] Postfix's reaction to a bounce to a forged SRS address: {reaction}")
    assert wrongly is None, (
        f"bounce to forged {forged} was delivered: {wrongly}" + flow.diagnostics()
    )
    assert not any(
        "alice@origin.test" in d.rcpt_tos and token in d.text() for d in flow.sink.deliveries
    ), flow.diagnostics()
    if refused is not None:
        # Unknown user in a virtual alias domain: a permanent refusal, never a 4xx.
        assert refused[0] == 550, reaction + flow.diagnostics()
    flow.assert_no_map_trouble(log_offset)


# -- 4. quoted and UTF-8 senders ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "local", "utf8"),
    [
        pytest.param('"a b"@origin.test', "a b", False, id="quoted"),
        pytest.param("jörg@origin.test", "jörg", True, id="utf8"),
    ],
)
def test_round_trip_of_unusual_sender(
    flow: MailFlow, log_offset: int, sender: str, local: str, utf8: bool
) -> None:
    start = time.time()
    delivery = flow.forward(sender, utf8=utf8)
    context = flow.diagnostics
    assert delivery.rcpt_tos == ("carol@dest.test",), context()
    expected = expected_srs0_candidates(local, "origin.test", start, quoted=True)
    assert delivery.mail_from in expected, (
        f"envelope sender {delivery.mail_from!r}, expected one of {sorted(expected)}" + context()
    )
    assert delivery.smtp_utf8 == utf8, context()

    token = uuid.uuid4().hex
    refused = flow.send("", delivery.mail_from, token=token, utf8=utf8)
    assert refused is None, f"bounce to {delivery.mail_from} refused: {refused}" + context()
    bounce = flow.wait_for_token(token)
    assert bounce.rcpt_tos == (sender,), context()
    assert bounce.mail_from == "", context()
    assert bounce.smtp_utf8 == utf8, context()
    flow.assert_no_map_trouble(log_offset)


@pytest.mark.parametrize("host", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_round_trip_of_address_literal_sender(flow: MailFlow, log_offset: int, host: str) -> None:
    """An address literal's '[', ']', ':' make the SRS local part quoted as a whole: Postfix
    takes the answer as the envelope sender, and the bounce to it reaches the sender."""
    sender = f"user@{host}"
    start = time.time()
    delivery = flow.forward(sender)
    context = flow.diagnostics
    expected = expected_srs0_candidates("user", host, start, quoted=True)
    assert all(e.startswith('"SRS0=') for e in expected)
    assert delivery.mail_from in expected, (
        f"envelope sender {delivery.mail_from!r}, expected one of {sorted(expected)}" + context()
    )
    token = uuid.uuid4().hex
    refused = flow.send("", delivery.mail_from, token=token)
    assert refused is None, f"bounce to {delivery.mail_from} refused: {refused}" + context()
    # The instance routes only dest.test and origin.test out, so the bounce to an address
    # literal ends in its error transport; what matters is the recipient Postfix made of it.
    decoded = f"to=<{sender}>, orig_to=<{delivery.mail_from}>"
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while decoded not in flow.postfix.log()[log_offset:]:
        assert time.monotonic() < deadline, f"no {decoded!r} in the Postfix log" + context()
        flow.postfix.flush()
        time.sleep(0.2)
    flow.assert_no_map_trouble(log_offset)
