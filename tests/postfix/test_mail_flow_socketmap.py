# The real Postfix mail flow once more, over socketmap (unix and inet), embedded and database mode.
"""The flow of ``test_mail_flow.py`` with Postfix asking srsd over socketmap instead of tcp_table.

Two throw-away Postfix instances, each with its own ``srsd serve``:

* embedded mode, socketmap on a unix socket: ``sender_canonical_maps =
  socketmap:unix:/PATH:forward`` and ``recipient_canonical_maps = socketmap:unix:/PATH:reverse``.
  The socket lives in a directory of its own under ``/tmp`` that every user may traverse
  (Postfix's cleanup and smtpd run as ``postfix`` and cannot enter pytest's 0700 temporary
  directories);
* database mode (``original_envelope = database``), socketmap on ``inet:127.0.0.1:PORT``.

Mail from alice@origin.test to bob@forwarder.test (a virtual alias for carol@dest.test)
reaches the SMTP sink with an SRS0 envelope sender, and a null-sender bounce to that address
reaches alice. Expected addresses come from the oracle in ``conftest.py``. The instance, the
sink and :class:`MailFlow` are those of ``test_mail_flow.py``; only the map lines differ.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    MAP_TROUBLE,
    SRS_DOMAIN,
    MailFlow,
    PostfixPrograms,
    expected_srs0_candidates,
    srs_hash,
    stamps_around,
)
from tests.harness.ports import free_port
from tests.harness.postfix import PostfixInstance
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SrsdProcess

pytestmark = pytest.mark.postfix

# Postfix's complaints about a socketmap (dict_sockmap.c) or any map lookup.
SOCKETMAP_TROUBLE = re.compile(
    r"warning: .*(socketmap|dict_sockmap|lookup error|map lookup problem|"
    r"[Tt]emporary lookup failure|malformed|non-address result)"
)
ALICE = "alice@origin.test"
LONG_SENDER = "a-rather-long-mailing-list-bounce-address.with-a-tracking-id@origin.test"


def expected_alias_candidates(sender: str, start: float) -> set[str]:
    """``SRS0=HHHH=TT=1=KEY@forwarder.test``, KEY = base32hex(SHA1(sender)), for the test's days."""
    key = base64.b32hexencode(hashlib.sha1(sender.encode()).digest()).decode()
    return {f"SRS0={srs_hash(s, '1', key)}={s}=1={key}@{SRS_DOMAIN}" for s in stamps_around(start)}


@pytest.fixture(scope="module")
def sockdir() -> Iterator[Path]:
    """A short directory under /tmp that the postfix user can traverse."""
    path = Path(tempfile.mkdtemp(prefix="srsd-pf-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _flow(
    root: Path, srsd_args: list[str], forward_map: str, reverse_map: str
) -> Iterator[MailFlow]:
    """srsd + SMTP sink + Postfix with the given maps, always stopped."""
    root.mkdir()
    with ExitStack() as stack:
        srsd = stack.enter_context(SrsdProcess(root, domain=SRS_DOMAIN, extra_args=srsd_args))
        sink = stack.enter_context(SmtpSink())
        relay = f"smtp:[127.0.0.1]:{sink.port}"
        main_cf = {
            "sender_canonical_maps": forward_map,
            "sender_canonical_classes": "envelope_sender",
            "recipient_canonical_maps": reverse_map,
            "recipient_canonical_classes": "envelope_recipient, header_recipient",
            "virtual_alias_domains": SRS_DOMAIN,
            "virtual_alias_maps": f"inline:{{ bob@{SRS_DOMAIN}=carol@dest.test }}",
            "transport_maps": f"inline:{{ dest.test={relay}, origin.test={relay} }}",
        }
        instance = stack.enter_context(PostfixInstance(root / "instance", main_cf=main_cf))
        yield MailFlow(srsd=srsd, sink=sink, postfix=instance)
    assert not instance.master_running(), "Postfix master still running after stop"


@pytest.fixture(scope="module")
def unix_flow(
    postfix_programs: PostfixPrograms,
    tmp_path_factory: pytest.TempPathFactory,
    sockdir: Path,
) -> Iterator[MailFlow]:
    """Embedded mode; Postfix asks srsd over a unix socket."""
    sock = sockdir / "srsd.sock"
    yield from _flow(
        tmp_path_factory.mktemp("sm-unix") / "flow",
        ["--socketmap", f"unix:{sock}"],
        f"socketmap:unix:{sock}:forward",
        f"socketmap:unix:{sock}:reverse",
    )
    assert not sock.exists(), "srsd left its socket behind"


@pytest.fixture(scope="module")
def database_flow(
    postfix_programs: PostfixPrograms, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailFlow]:
    """``original_envelope = database``; Postfix asks srsd over socketmap on TCP."""
    port = free_port("127.0.0.1")
    yield from _flow(
        tmp_path_factory.mktemp("sm-inet") / "flow",
        ["--original-envelope", "database", "--socketmap", f"inet:127.0.0.1:{port}"],
        f"socketmap:inet:127.0.0.1:{port}:forward",
        f"socketmap:inet:127.0.0.1:{port}:reverse",
    )


def _headers(delivery: Delivery) -> str:
    return delivery.text().split("\r\n\r\n", 1)[0]


def assert_no_trouble(flow: MailFlow, log_offset: int) -> None:
    lines = flow.postfix.log()[log_offset:].splitlines()
    trouble = [x for x in lines if SOCKETMAP_TROUBLE.search(x) or MAP_TROUBLE.search(x)]
    report = "\n".join(trouble)
    assert not trouble, f"Postfix had trouble with the srsd maps:\n{report}{flow.diagnostics()}"


def bounce_to(flow: MailFlow, address: str) -> Delivery:
    """Send a null-sender bounce to ``address``; the delivery it becomes at the sink."""
    token = uuid.uuid4().hex
    refused = flow.send("", address, token=token)
    assert refused is None, f"bounce to {address} refused: {refused}" + flow.diagnostics()
    return flow.wait_for_token(token)


# -- embedded mode over a unix socket -------------------------------------------------------


def test_forwarded_mail_gets_srs0_sender_over_socketmap(unix_flow: MailFlow) -> None:
    offset = len(unix_flow.postfix.log())
    start = time.time()
    delivery = unix_flow.forward(ALICE)
    assert delivery.rcpt_tos == ("carol@dest.test",), unix_flow.diagnostics()
    assert delivery.mail_from in expected_srs0_candidates("alice", "origin.test", start), (
        f"envelope sender {delivery.mail_from!r}" + unix_flow.diagnostics()
    )
    assert f"From: {ALICE}" in _headers(delivery), unix_flow.diagnostics()
    assert f"forward <{ALICE}> rewritten as <{delivery.mail_from}>" in unix_flow.srsd.log()
    assert_no_trouble(unix_flow, offset)


def test_bounce_reaches_alice_over_socketmap(unix_flow: MailFlow) -> None:
    offset = len(unix_flow.postfix.log())
    srs_address = unix_flow.forward(ALICE).mail_from
    bounce = bounce_to(unix_flow, srs_address)
    assert bounce.rcpt_tos == (ALICE,), unix_flow.diagnostics()
    assert bounce.mail_from == "", unix_flow.diagnostics()
    assert f"To: {ALICE}" in _headers(bounce), unix_flow.diagnostics()
    assert_no_trouble(unix_flow, offset)


# -- database mode over TCP -----------------------------------------------------------------


@pytest.mark.parametrize("sender", [ALICE, LONG_SENDER])
def test_database_mode_round_trip_through_postfix(database_flow: MailFlow, sender: str) -> None:
    offset = len(database_flow.postfix.log())
    start = time.time()
    delivery = database_flow.forward(sender)
    context = database_flow.diagnostics
    assert delivery.rcpt_tos == ("carol@dest.test",), context()
    assert delivery.mail_from in expected_alias_candidates(sender, start), (
        f"envelope sender {delivery.mail_from!r} is not the alias of {sender}" + context()
    )
    assert len(delivery.mail_from.rpartition("@")[0]) <= 64
    bounce = bounce_to(database_flow, delivery.mail_from)
    assert bounce.rcpt_tos == (sender,), context()
    assert bounce.mail_from == "", context()
    assert f"To: {sender}" in _headers(bounce), context()
    assert_no_trouble(database_flow, offset)
