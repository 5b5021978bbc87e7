# Mail through a real Postfix while two other local users hold every srsd connection they can.
"""A throw-away Postfix (as in ``test_mail_flow.py``) with srsd's tcp_table ports as its
canonical maps, srsd with ``--max-connections 50``; two local users (``nobody`` and a
second uid) open connections to srsd's forward port and send nothing, as many as they
can, so that srsd is full the whole time. Postfix's smtpd and cleanup processes start
during the flood and open their map connections then: each is admitted by evicting one
of the flooders' idle connections. Asserted: each message is delivered with the exact
SRS0 sender, at once (no queue flush, no deferral), and Postfix logged no map trouble.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.attacks import ADMISSION_LIMITS, MAX_CONNECTIONS, Target, attackers
from tests.harness.local_users import NOBODY, SECOND_UID
from tests.harness.mail_flow import (
    SRS_DOMAIN,
    MailFlow,
    PostfixPrograms,
    canonical_maps_flow,
    expected_srs0_candidates,
)
from tests.harness.postfix import PostfixInstance
from tests.harness.smtp_sink import SmtpSink

pytestmark = pytest.mark.postfix

MESSAGES = 3
#: Delivery through Postfix takes well under a second; a lookup that failed would make
#: Postfix retry for 9 s and defer: a message must arrive within this, without a flush.
UNDEFERRED = 5.0


@pytest.fixture
def flooded_flow(postfix_programs: PostfixPrograms, tmp_path: Path) -> Iterator[MailFlow]:
    with ExitStack() as stack:
        srsd = stack.enter_context(Target(tmp_path, *ADMISSION_LIMITS))
        sink = stack.enter_context(SmtpSink())
        main_cf = canonical_maps_flow(srsd.forward_port, srsd.reverse_port, sink.port)
        postfix = stack.enter_context(PostfixInstance(tmp_path / "postfix", main_cf=main_cf))
        yield MailFlow(srsd=srsd, sink=sink, postfix=postfix)


def test_mail_is_delivered_with_srs_while_two_users_flood_srsd(flooded_flow: MailFlow) -> None:
    flow = flooded_flow
    srsd = flow.srsd
    assert isinstance(srsd, Target)
    log_offset = len(flow.postfix.log())
    start = time.time()
    with attackers(
        srsd.forward_port, "idle", (NOBODY, MAX_CONNECTIONS), (SECOND_UID, MAX_CONNECTIONS)
    ) as attacks:
        full = srsd.metrics()["srsd_connections_open"]
        assert full == MAX_CONNECTIONS, f"the flood did not fill srsd: {full} open"
        for i in range(MESSAGES):
            token = uuid.uuid4().hex
            refused = flow.send(f"alice{i}@origin.test", f"bob@{SRS_DOMAIN}", token=token)
            assert refused is None, f"Postfix refused the mail: {refused}" + flow.diagnostics()
            delivery = flow.sink.wait_for(lambda d, t=token: t in d.text(), UNDEFERRED)
            assert delivery is not None, (
                f"message {i} not delivered within {UNDEFERRED} s (deferred?)" + flow.diagnostics()
            )
            assert delivery.rcpt_tos == ("carol@dest.test",)
            assert delivery.mail_from in expected_srs0_candidates(
                f"alice{i}", "origin.test", start
            ), flow.diagnostics()
        evicted = srsd.metrics()["srsd_connections_evicted_total"]
    print(
        f"\n[postfix under flood] {MESSAGES} messages delivered with SRS in "
        f"{time.time() - start:.1f} s; srsd evicted {evicted:.0f} flooder connections; "
        f"attackers: {attacks}"
    )
    assert evicted > 0
    assert all(a["answers"] == 0 for a in attacks)  # they sent nothing
    flow.assert_no_map_trouble(log_offset)
    assert "deferred" not in flow.postfix.log()[log_offset:], flow.diagnostics()
