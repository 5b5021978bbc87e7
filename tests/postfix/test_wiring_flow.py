# Mail through Debian's stock master.cf (chrooted daemons), wired by `srsd postfix-config | sh`.
"""Every forwarding case, in both modes, through a throw-away Postfix wired only by piping
``srsd postfix-config --mode MODE`` into ``sh`` (``MAIL_CONFIG`` at the instance).

The instance runs Debian's own ``master.cf`` (``stock_master_cf``: smtpd, cleanup, bounce and
the other daemons chrooted in the queue directory) and is a small host::

    mydestination   = local.test: nobody (a mailbox in mail_spool_directory), daemon (whose
                      forward file says carol@dest.test, forward_path), aliases(5):
                      alias-fwd -> carol@dest.test, alias-both -> nobody, carol@dest.test
    virtual_alias_maps: fwd@local.test -> carol@dest.test, fwd-refused@ -> x@refuse.test
                      (the next hop answers 550), fwd-silent@ -> x@silent.test (a next hop
                      that never greets; smtp_helo_timeout = 2s, delay_warning_time = 1s,
                      maximal_queue_lifetime = 8s: a delay notice, then a bounce)
    transport_maps  : dest.test, origin.test, refuse.test -> the SMTP sink; silent.test -> a
                      listening socket nobody answers on

srsd's endpoints are unix sockets in the queue directory (socketmap in canonical mode, the
milter in milter mode; the tcp_table ports in milter mode), so the chrooted daemons reach them
only by the relative names postfix-config prints. Each test says what it saw (Return-Path,
MAIL FROM) in its assertion messages; ``-s`` prints them for the closing note.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    SRS_DOMAIN,
    PostfixPrograms,
    SmtpClient,
    expected_srs0_candidates,
)
from tests.harness.postfix import PostfixInstance, backdate, find_program
from tests.harness.smtp_sink import Delivery, SmtpSink
from tests.harness.srsd_process import SECRET, SrsdProcess

pytestmark = pytest.mark.postfix

ALICE = "alice@origin.test"
CAROL = "carol@dest.test"
MAILBOX = "nobody@local.test"  # a local mailbox
DOT_FORWARD = "daemon@local.test"  # a local user whose forward file sends to carol
SMTP_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 30.0
READY_TIMEOUT = 20.0
SRC = Path(__file__).resolve().parents[2] / "src"


class WiredInstance(PostfixInstance):
    """Debian's master.cf; main.cf and master.cf then edited by ``srsd postfix-config | sh``."""

    def __init__(self, root: Path, wire: Callable[[WiredInstance], None], **kw: object) -> None:
        super().__init__(root, stock_master_cf=True, **kw)  # type: ignore[arg-type]
        self._wire = wire
        self.wiring = ""

    def write_config(self) -> None:
        super().write_config()
        self._wire(self)
        for name in ("main.cf", "master.cf"):
            backdate(self.config_dir / name)


class Flow(SmtpClient):
    """srsd, the sink, the instance, nobody's mailbox; what was seen, for the report."""

    subject = "wiring test"

    def __init__(self, mode: str, srsd: SrsdProcess, sink: SmtpSink, spool: Path) -> None:
        self.mode = mode
        self.srsd = srsd
        self.sink = sink
        self.spool = spool
        self.postfix: WiredInstance

    def at_sink(self, token: str, predicate: Callable[[Delivery], bool] = bool) -> Delivery:
        def match(d: Delivery) -> bool:
            return token in d.text() and predicate(d)

        found = self.sink.wait_for(match, DELIVERY_TIMEOUT / 4)
        if found is None:
            self.postfix.flush()
            found = self.sink.wait_for(match, DELIVERY_TIMEOUT)
        assert found is not None, f"no delivery of {token} at the sink" + self.diagnostics()
        return found

    def in_mailbox(self, token: str) -> str:
        """The Return-Path line of the message with ``token`` in nobody's mailbox."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        mailbox = self.spool / "nobody"
        while time.monotonic() < deadline:
            text = mailbox.read_text(errors="replace") if mailbox.exists() else ""
            for message in text.split("\nFrom ")[::-1]:
                if token in message:
                    return next(
                        line for line in message.splitlines() if line.startswith("Return-Path:")
                    )
            time.sleep(0.1)
        raise AssertionError(f"no delivery of {token} to nobody's mailbox" + self.diagnostics())

    def diagnostics(self) -> str:
        deliveries = "\n".join(
            f"  MAIL FROM:<{d.mail_from}> RCPT TO:{list(d.rcpt_tos)}" for d in self.sink.deliveries
        )
        return (
            f"\n--- wiring ({self.mode}) ---\n{self.postfix.wiring}"
            f"\n--- sink ---\n{deliveries or '  (none)'}\n--- postqueue -p ---\n"
            f"{self.postfix.queue()}\n{self.postfix.diagnostics()}\n--- srsd log ---\n"
            f"{self.srsd.log()}"
        )

    def srs0(self, start: float) -> set[str]:
        return expected_srs0_candidates("alice", "origin.test", start)

    def report(self, case: str, seen: str) -> None:
        print(f"[{self.mode}] {case}: {seen}")


def postfix_config(mode: str, endpoints: list[str], config_dir: Path, workdir: Path) -> str:
    """``srsd postfix-config`` as a postmaster runs it (this checkout's srsd)."""
    empty = workdir / "empty.toml"
    empty.write_text("")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "srsd",
            "postfix-config",
            "--mode",
            mode,
            "--config",
            str(empty),
            "--domain",
            SRS_DOMAIN,
            *endpoints,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={
            "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
            "MAIL_CONFIG": str(config_dir),
            "PYTHONPATH": str(SRC),
            "SRSD_SYSCONFDIR": os.environ["SRSD_SYSCONFDIR"],  # the suite's empty /etc (conftest)
        },
    )
    return done.stdout


@pytest.fixture(scope="module", params=["canonical", "milter"])
def flow(
    request: pytest.FixtureRequest,
    postfix_programs: PostfixPrograms,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Flow]:
    mode: str = request.param
    root = tmp_path_factory.mktemp(f"wiring-{mode}")
    # Files the unprivileged daemons read or write (proxymap as postfix, local(8) as the
    # recipient): outside pytest's 0700 directories.
    shared = Path(tempfile.mkdtemp(prefix="srsd-wiring-", dir="/tmp"))
    shared.chmod(0o755)
    spool = shared / "spool"
    spool.mkdir()
    spool.chmod(0o1777)
    forwards = shared / "forward"
    forwards.mkdir()
    (forwards / "daemon").write_text(f"{CAROL}\n")
    os.chown(forwards / "daemon", pwd.getpwnam("daemon").pw_uid, -1)
    aliases = shared / "aliases"
    aliases.write_text(f"alias-fwd: {CAROL}\nalias-both: nobody, {CAROL}\n")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, shared, True)
        sink = stack.enter_context(SmtpSink())
        silent = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=64))
        relay = f"smtp:[127.0.0.1]:{sink.port}"
        quiet = f"smtp:[127.0.0.1]:{silent.getsockname()[1]}"
        main_cf = {
            "mydestination": "local.test, $myhostname",
            "local_transport": "local",
            "alias_maps": f"hash:{aliases}",
            "alias_database": f"hash:{aliases}",
            "local_recipient_maps": "proxy:unix:passwd.byname $alias_maps",
            "forward_path": f"{forwards}/$user",
            "mail_spool_directory": str(spool),
            "virtual_alias_maps": (
                f"inline:{{ fwd@local.test={CAROL}, fwd-refused@local.test=x@refuse.test, "
                "fwd-silent@local.test=x@silent.test }"
            ),
            "transport_maps": (
                f"inline:{{ dest.test={relay}, origin.test={relay}, refuse.test={relay}, "
                f"silent.test={quiet} }}"
            ),
            # A next hop that times out: a delay notice after the first attempt (qmgr checks
            # the lifetime first: the first attempt, 2 s, must end well within it), a bounce
            # once the lifetime is over.
            "maximal_queue_lifetime": "8s",
            "bounce_queue_lifetime": "8s",
            "delay_warning_time": "1s",
            "smtp_helo_timeout": "2s",
            "smtp_connect_timeout": "2s",
        }
        (root / "srsd").mkdir()
        postfix_root = root / "postfix"
        socket_dir = postfix_root / "queue" / "srsd"
        socket_dir.mkdir(parents=True)
        if mode == "canonical":
            endpoints = ["--socketmap", f"unix:{socket_dir / 'srsd.sock'}", "--milter", ""]
        else:
            endpoints = ["--socketmap", "", "--milter", f"unix:{socket_dir / 'milter.sock'}"]

        def wire(instance: WiredInstance) -> None:
            subprocess.run(
                ["postalias", "-c", str(instance.config_dir), f"hash:{aliases}"], check=True
            )
            ports = ["--forward-port", str(srsd.forward_port)]
            ports += ["--reverse-port", str(srsd.reverse_port)]
            args = [*endpoints, "--listen", "127.0.0.1", *ports]
            instance.wiring = postfix_config(mode, args, instance.config_dir, root / "srsd")
            env = {**os.environ, "MAIL_CONFIG": str(instance.config_dir)}
            env["PATH"] = f"{env.get('PATH', '')}:/usr/sbin:/sbin"
            subprocess.run(["sh", "-e"], input=instance.wiring, text=True, env=env, check=True)

        postfix = WiredInstance(postfix_root, wire, main_cf=main_cf)
        srsd = stack.enter_context(
            SrsdProcess(
                root / "srsd",
                domain=SRS_DOMAIN,
                secrets=(SECRET,),
                extra_args=[*endpoints, "--log-level", "debug"],
                env={"MAIL_CONFIG": str(postfix.config_dir)},
            )
        )
        flow = Flow(mode, srsd, sink, spool)
        flow.postfix = postfix
        wait_socket(socket_dir)
        stack.enter_context(postfix)
        yield flow


def wait_socket(directory: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not any(p.is_socket() for p in directory.iterdir()):
        assert time.monotonic() < deadline, f"srsd's socket in {directory} never appeared"
        time.sleep(0.05)


def test_wiring_is_what_postfix_config_printed(flow: Flow) -> None:
    postconf = find_program("postconf")
    assert postconf is not None
    master = subprocess.run(
        [postconf, "-c", str(flow.postfix.config_dir), "-M", "smtpd/inet", "cleanup/unix"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Debian's chroot column is still there: smtpd and cleanup run chrooted.
    assert all(line.split()[4] == "y" for line in master.splitlines()), master
    assert "postconf -e" in flow.postfix.wiring


@pytest.mark.parametrize(
    ("case", "recipient"),
    [
        ("virtual alias forward", "fwd@local.test"),
        ("aliases(5) forward", "alias-fwd@local.test"),
        (".forward", DOT_FORWARD),
    ],
)
def test_forward_gets_srs0(flow: Flow, case: str, recipient: str) -> None:
    start, token = time.time(), uuid.uuid4().hex
    assert flow.send(ALICE, recipient, token=token) is None, flow.diagnostics()
    delivery = flow.at_sink(token)
    flow.report(case, f"MAIL FROM:<{delivery.mail_from}>")
    assert delivery.rcpt_tos == (CAROL,), flow.diagnostics()
    assert delivery.mail_from in flow.srs0(start), flow.diagnostics()


def local_return_path(flow: Flow, start: float) -> set[str]:
    """The Return-Path a local mailbox gets: the original sender with the milter, SRS0 with
    canonical maps (which rewrite every sender cleanup sees, but excluded domains')."""
    senders = {ALICE} if flow.mode == "milter" else flow.srs0(start)
    return {f"Return-Path: <{s}>" for s in senders}


def test_local_mailbox(flow: Flow) -> None:
    start, token = time.time(), uuid.uuid4().hex
    assert flow.send(ALICE, MAILBOX, token=token) is None, flow.diagnostics()
    seen = flow.in_mailbox(token)
    flow.report("local mailbox", seen)
    assert seen in local_return_path(flow, start), seen + flow.diagnostics()


def test_alias_to_a_local_user_and_a_remote_address(flow: Flow) -> None:
    start, token = time.time(), uuid.uuid4().hex
    assert flow.send(ALICE, "alias-both@local.test", token=token) is None, flow.diagnostics()
    delivery = flow.at_sink(token)
    seen = flow.in_mailbox(token)
    flow.report("alias to local + remote", f"MAIL FROM:<{delivery.mail_from}>; local {seen}")
    assert delivery.mail_from in flow.srs0(start), flow.diagnostics()
    assert seen in local_return_path(flow, start), seen + flow.diagnostics()


def test_mixed_recipients_from_a_sending_postfix(
    flow: Flow, tmp_path: Path, postfix_programs: PostfixPrograms
) -> None:
    """A real Postfix sends one message to a local mailbox and a remote forward: with the
    milter the second recipient gets 452 4.5.3 and comes in a later transaction (the sending
    Postfix defers it until its next queue run), so the local copy keeps its sender;
    canonical maps rewrite the message as a whole."""
    start, token = time.time(), uuid.uuid4().hex
    to_wired = f"smtp:[127.0.0.1]:{flow.postfix.smtpd_port}"
    client_cf = {"default_transport": to_wired, "relay_transport": to_wired}
    with PostfixInstance(tmp_path / "mta", main_cf=client_cf, myhostname="mta.origin.test") as mta:
        done = subprocess.run(
            [
                postfix_programs.postfix.replace("postfix", "sendmail"),
                "-C",
                str(mta.config_dir),
                "-f",
                ALICE,
                MAILBOX,
                CAROL,
            ],
            input=flow.message(token, f"{MAILBOX}, {CAROL}"),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        delivery = flow.at_sink(token)
        local = flow.in_mailbox(token)
        sent = sent_lines(mta, 2)
        mta_log = mta.log()
    delays = {line.split("to=<")[1].split(">")[0]: delay_of(line) for line in sent}
    flow.report(
        "mixed recipients (a real Postfix sends)",
        f"remote MAIL FROM:<{delivery.mail_from}>; local {local}; the sending Postfix's "
        f"delay= per recipient {delays}",
    )
    assert delivery.rcpt_tos == (CAROL,) and delivery.mail_from in flow.srs0(start)
    assert local in local_return_path(flow, start), local + flow.diagnostics()
    if flow.mode == "milter":
        assert "452 4.5.3" in flow.postfix.log() and "comes in a transaction of its own" in (
            flow.srsd.log()
        ), flow.diagnostics()
        # Postfix's smtp(8) defers a recipient answered 452 and sends it at its next
        # deferred-queue run (here within seconds: minimal_backoff_time = 1s).
        deferred = [line for line in mta_log.splitlines() if "status=deferred" in line]
        assert len(deferred) == 1 and "452 4.5.3" in deferred[0], mta_log


def sent_lines(mta: PostfixInstance, count: int) -> list[str]:
    """The sending Postfix's ``status=sent`` lines, once there are ``count`` of them."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        lines = [line for line in mta.log().splitlines() if "status=sent" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, mta.diagnostics()
            return lines
        time.sleep(0.1)


def delay_of(line: str) -> float:
    return float(line.split(" delay=")[1].split(",")[0])


def test_remote_bounce_to_the_srs_address_reaches_the_sender(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, "fwd@local.test", token=token) is None, flow.diagnostics()
    srs_address = flow.at_sink(token).mail_from
    bounce = uuid.uuid4().hex
    assert flow.send("", srs_address, token=bounce) is None, flow.diagnostics()
    delivery = flow.at_sink(bounce)
    flow.report(
        "remote bounce to the SRS address",
        f"MAIL FROM:<{delivery.mail_from}> RCPT TO:{list(delivery.rcpt_tos)}",
    )
    assert delivery.rcpt_tos == (ALICE,) and delivery.mail_from == "", flow.diagnostics()
    time.sleep(0.5)  # a second copy (cleanup's and the milter's rewriting both) would be here
    copies = [d for d in flow.sink.deliveries if bounce in d.text()]
    assert len(copies) == 1, flow.diagnostics()


def own_notice(flow: Flow, token: str, subject: str) -> Delivery:
    """Postfix's own notice (null sender) about the message with ``token``."""
    delivery = flow.at_sink(token, lambda d: d.mail_from == "" and subject in d.text())
    flow.report(
        f"Postfix's own notice {subject!r}",
        f"MAIL FROM:<{delivery.mail_from}> RCPT TO:{list(delivery.rcpt_tos)}",
    )
    assert delivery.rcpt_tos == (ALICE,), flow.diagnostics()
    return delivery


def test_postfix_bounce_after_a_550_from_the_next_hop_reaches_the_sender(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, "fwd-refused@local.test", token=token) is None, flow.diagnostics()
    bounce = own_notice(flow, token, "Undelivered Mail Returned to Sender")
    assert "no such user here" in bounce.text()


def test_postfix_notices_after_a_next_hop_timeout_reach_the_sender(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, "fwd-silent@local.test", token=token) is None, flow.diagnostics()
    delay = own_notice(flow, token, "Delayed Mail (still being retried)")
    assert "timed out" in delay.text()
    bounce = own_notice(flow, token, "Undelivered Mail Returned to Sender")
    assert "timed out" in bounce.text()


def test_forged_srs_recipient_is_refused_at_rcpt(flow: Flow) -> None:
    token = uuid.uuid4().hex
    assert flow.send(ALICE, "fwd@local.test", token=token) is None, flow.diagnostics()
    srs_address = flow.at_sink(token).mail_from
    forged = srs_address.replace("=alice@", "=mallory@")
    for address in (forged, f"nobody@{SRS_DOMAIN}", f"SRS0=xxxx=AA=origin.test=a@{SRS_DOMAIN}"):
        refused = flow.send("", address, token=uuid.uuid4().hex)
        flow.report(f"RCPT TO:<{address}>", f"{refused}")
        assert refused is not None and refused[0] == 550, f"{refused}" + flow.diagnostics()


def test_postfix_logged_no_warning(flow: Flow) -> None:
    """Postfix took the wiring and every milter reply as they are (run before srsd is
    stopped, which Postfix rightly warns about)."""
    warnings = [
        line
        for line in flow.postfix.log().splitlines()
        if "warning:" in line
        # the notices' templates round the test's seconds to 0 hours or days, and say so
        and not ("postfix/bounce[" in line and ("template" in line or "bounce(5)" in line))
    ]
    assert not warnings, "\n".join(warnings)


def test_srsd_down_defers_and_nothing_is_lost(flow: Flow) -> None:
    start, token = time.time(), uuid.uuid4().hex
    flow.srsd.stop()
    try:
        refused = flow.send(ALICE, "fwd@local.test", token=token)
        flow.report("srsd down", f"{refused}")
        assert refused is not None and refused[0] == 451, f"{refused}" + flow.diagnostics()
        assert flow.sink.wait_for(lambda d: token in d.text(), 2.0) is None
        assert not flow.postfix.queue().strip().startswith("-Queue ID-"), flow.diagnostics()
    finally:
        flow.srsd.start()
    wait_socket(flow.postfix.queue_dir / "srsd")
    assert flow.send(ALICE, "fwd@local.test", token=token) is None, flow.diagnostics()
    assert flow.at_sink(token).mail_from in flow.srs0(start), flow.diagnostics()
