# A local user attacking srsd's milter as another uid while root's good milter sessions are checked.
"""No local user can shut Postfix's milter sessions out, nor crash srsd through them (issue 18).

Each test starts ``srsd serve`` (tcp_table, the milter on TCP, metrics) and runs
``tests/harness/attacker.py`` (its milter modes) as ``nobody`` while this process, as
root (Postfix's place), runs good milter sessions, each on a fresh connection (as Postfix's
smtpd opens one per SMTP session), and fresh tcp_table lookups. Asserted: every good
session's message is answered and rewritten, every lookup answered right, during the whole
attack; what srsd did to the attacker (evicted, refused, timed out, answered 452) shows in
its metrics; srsd stays up. The figures are printed (``pytest -s``) and quoted in
``docs/reliability.md``. No wall-clock bound is asserted: how fast is
``bench/milter_attacks.py``'s question.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from srsd.wire import milter
from srsd.wire.milter import command, negotiate, split_replies
from tests.harness.attacks import ATTACKER_SECONDS, Target, attackers
from tests.harness.local_users import NOBODY, SECOND_UID
from tests.harness.ports import free_port
from tests.harness.srsd_process import lookup

MAX_SESSIONS = 40
ATTACK_SECONDS = 3.0
TIMEOUT = 10.0


class MilterTarget(Target):
    """:class:`Target` with the milter on a loopback port too (``local_domains`` fixed, so
    that Postfix is not asked), and ``prefix`` before its command (``prlimit ...``)."""

    def __init__(self, workdir: Path, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        self.milter_port = free_port("127.0.0.1")
        milter_args = ("--milter", f"inet:127.0.0.1:{self.milter_port}")
        super().__init__(workdir, *milter_args, "--local-domains", "mailbox.test", *extra)
        self.args = [*prefix, *self.args]


def good_session(port: int) -> str | None:
    """One message on a fresh milter connection; None when rewritten, else what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(
                negotiate()
                + command(milter.MAIL, b"<good@example.org>")
                + command(milter.RCPT, b"<someone@elsewhere.example>")
                + command(milter.END_OF_MESSAGE)
                + command(milter.QUIT)
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as err:
        return repr(err)
    try:
        codes = [code for code, _ in split_replies(data)]
    except ValueError:
        return f"cut short: {data!r}"
    if codes != [b"O", b"c", b"e", b"c"]:  # negotiation, RCPT (MAIL has none), end
        return f"replies {codes}"
    return None


def good_lookup(port: int) -> str | None:
    """A fresh tcp_table lookup; None when answered with an SRS address."""
    try:
        data = lookup(port, b"good@example.org", timeout=TIMEOUT)
    except OSError as err:
        return repr(err)
    return None if data.startswith(b"200 SRS0=") else repr(data)


def serve_good_clients(srv: MilterTarget, seconds: float) -> dict[str, Any]:
    """Good milter sessions and fresh lookups, alternating, for ``seconds``; every one
    must succeed."""
    sessions: list[str | None] = []
    lookups: list[str | None] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(sessions) < 5:
        sessions.append(good_session(srv.milter_port))
        lookups.append(good_lookup(srv.forward_port))
    failed = [x for x in sessions if x] + [x for x in lookups if x]
    assert not failed, f"{len(failed)} failed: {failed[:5]}\n{srv.log()[-3000:]}"
    return {"good milter sessions": len(sessions), "fresh lookups": len(lookups)}


def report(name: str, figures: dict[str, Any], srv: MilterTarget) -> dict[str, float]:
    metrics = srv.metrics()
    figures["srsd"] = {
        k.removeprefix("srsd_"): v for k, v in metrics.items() if k.startswith("srsd_milter")
    }
    print(f"\n[{name}] {json.dumps(figures)}")
    assert srv.alive(), srv.log()[-3000:]
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
    return metrics


@pytest.mark.parametrize(
    ("mode", "sessions"),
    [
        ("idle", 5 * MAX_SESSIONS),
        ("message", 5 * MAX_SESSIONS),
        ("drip", 5 * MAX_SESSIONS),
        ("message", MAX_SESSIONS // 2),
        ("drip", MAX_SESSIONS // 2),
    ],
)
def test_a_user_holding_milter_sessions_cannot_shut_postfix_out(
    tmp_path: Path, mode: str, sessions: int
) -> None:
    """``nobody`` keeps sessions open: idle between messages, inside messages that never
    end, or dribbling a packet inside a message. Asking 5 x milter_max_sessions, it reaches
    its share and its own newcomers evict its own sessions (between messages first, else in
    a message); asking its share, nothing needs evicting and the time-outs close them
    (milter_message_timeout, request_timeout). Root's sessions and lookups get in all along."""
    with MilterTarget(
        tmp_path,
        "--milter-max-sessions",
        str(MAX_SESSIONS),
        "--request-timeout",
        "1",
        "--milter-message-timeout",
        "2",
        "--milter-idle-timeout",
        "600",
    ) as srv:
        with attackers(srv.milter_port, f"milter-{mode}", (NOBODY, sessions)) as done:
            figures = serve_good_clients(srv, ATTACK_SECONDS)
        counts = done[0]
        figures["attacker"] = counts
        metrics = report(f"milter hold ({mode}), {sessions} sessions", figures, srv)
    evicted = metrics["srsd_milter_sessions_evicted_total"]
    in_message = metrics["srsd_milter_sessions_evicted_in_message_total"]
    if sessions <= MAX_SESSIONS // 2:  # within its share: the time-outs
        assert counts["closed by srsd"] >= sessions and evicted == 0
        what = "message" if mode == "message" else "request"
        assert metrics[f'srsd_milter_sessions_timed_out_total{{what="{what}"}}'] > 0
    elif mode == "idle":
        assert counts["closed by srsd"] > MAX_SESSIONS
        assert evicted > 0 and in_message == 0
    else:  # none between messages: its own newcomers take them, before any time-out
        assert counts["closed by srsd"] > MAX_SESSIONS
        assert in_message > 0


def test_two_users_holding_their_shares_in_messages_cannot_shut_postfix_out(
    tmp_path: Path,
) -> None:
    """Two users fill the milter with their shares (half of milter_max_sessions each) of
    sessions inside messages that never end, ``nobody`` silent after MAIL, the other sending
    a recipient every 0.5 s; milter_message_timeout (an hour) closes none of them. Root's
    sessions evict one of the biggest holder's, idle the longest in its message: every one
    is answered and rewritten, and the lookups too."""
    share = MAX_SESSIONS // 2
    with MilterTarget(tmp_path, "--milter-max-sessions", str(MAX_SESSIONS)) as srv:
        plan_silent, plan_dribbling = (NOBODY, share), (SECOND_UID, share)
        with (
            attackers(srv.milter_port, "milter-mail", plan_silent) as silent,
            attackers(srv.milter_port, "milter-message", plan_dribbling) as dribbling,
        ):
            deadline = time.monotonic() + ATTACKER_SECONDS
            while srv.metrics()["srsd_milter_sessions_open"] < MAX_SESSIONS:  # all held
                assert time.monotonic() < deadline and srv.alive(), srv.log()[-3000:]
                time.sleep(0.2)
            figures = serve_good_clients(srv, ATTACK_SECONDS)
        figures["attacker nobody (silent)"] = silent[0]
        figures["attacker 64123 (dribbling)"] = dribbling[0]
        metrics = report(f"two users, {share} sessions each in messages", figures, srv)
    assert metrics["srsd_milter_sessions_evicted_in_message_total"] > 0
    assert metrics['srsd_milter_sessions_timed_out_total{what="message"}'] == 0


#: The bound of docs/reliability.md for S sessions: milter_memory, plus per session a
#: packet buffer (MAX_PACKET), a read (16 KiB) and its objects (8 KiB), plus
#: ALLOCATOR_SLACK for what the allocator keeps of freed memory.
SESSION_BYTES = milter.MAX_PACKET + 16384 + 8192
ALLOCATOR_SLACK = 8 << 20


def test_recipient_flood_keeps_memory_bounded(tmp_path: Path) -> None:
    """The attack that took srsd to 1 GB: 16 sessions each send 1,000 recipients of 65,000
    bytes and hold. Each message keeps at most milter_message_bytes (the rest answered
    452), all sessions at most milter_memory: peak RSS stays below the documented bound,
    a good session is served meanwhile, srsd stays up."""
    memory, sessions = 16 << 20, 32
    with MilterTarget(
        tmp_path, "--milter-memory", str(memory), "--milter-max-sessions", str(sessions)
    ) as srv:
        base = srv.status("VmRSS")
        with attackers(srv.milter_port, "milter-recipients", (NOBODY, 16)) as done:
            deadline = time.monotonic() + ATTACKER_SECONDS
            while srv.metrics()["srsd_milter_sessions_open"] < 16:  # all 16 holding
                assert time.monotonic() < deadline and srv.alive(), srv.log()[-3000:]
                time.sleep(0.5)
            good = good_session(srv.milter_port)
            held = srv.metrics()["srsd_milter_memory_bytes"]
        peak = srv.status("VmHWM")
        counts = done[0]
        bound = base + memory + sessions * SESSION_BYTES + ALLOCATOR_SLACK
        figures = {
            "rss at start MiB": round(base / 2**20, 1),
            "peak RSS MiB": round(peak / 2**20, 1),
            "bound MiB": round(bound / 2**20, 1),
            "kept by the 16 sessions MiB": round(held / 2**20, 1),
            "attacker": counts,
        }
        report("recipient flood, 16 x 1,000 x 65,000 bytes", figures, srv)
    assert good is None, good
    assert counts["connections"] == 16 and counts["temporary failures"] > 15_000
    assert held <= memory // 2  # one user: half of milter_memory at most
    assert peak < bound, figures


def test_the_recipient_flood_under_an_address_space_limit(tmp_path: Path) -> None:
    """The crash of issue 18: under a 400 MB address-space limit the same flood made srsd
    run out of memory and exit (tcp_table with it). With the default bounds it stays far
    below: srsd stays up, a good session and a lookup are served, no MemoryError."""
    with MilterTarget(tmp_path, prefix=("prlimit", "--as=400000000", "--")) as srv:
        with attackers(srv.milter_port, "milter-recipients", (NOBODY, 16)) as done:
            deadline = time.monotonic() + ATTACKER_SECONDS
            while srv.metrics()["srsd_milter_sessions_open"] < 16:  # all 16 holding
                assert time.monotonic() < deadline and srv.alive(), srv.log()[-3000:]
                time.sleep(0.5)
            assert good_session(srv.milter_port) is None
            assert good_lookup(srv.forward_port) is None
        metrics = report("recipient flood under --as=400MB", {"attacker": done[0]}, srv)
        assert metrics["srsd_internal_errors_total"] == 0
        assert "MemoryError" not in srv.log()


def test_a_shell_start_under_ulimit_1024_survives_a_milter_flood(tmp_path: Path) -> None:
    """Started with a soft open files limit of 1,024 (a shell's) while ``nobody`` floods the
    milter with 2,000 sessions: srsd raises its soft limit to the hard one, so tcp_table
    and metrics keep accepting, and accept() never fails."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open files limit ({hard}) is too low to show the raise")
    with MilterTarget(tmp_path, prefix=("prlimit", f"--nofile=1024:{hard}", "--")) as srv:
        limits = Path(f"/proc/{srv.pid}/limits").read_text()
        soft = next(x for x in limits.splitlines() if x.startswith("Max open files")).split()[3]
        with attackers(srv.milter_port, "milter-idle", (NOBODY, 2000)) as done:
            figures = serve_good_clients(srv, ATTACK_SECONDS)
            assert srv.metrics()["srsd_milter_sessions_open"] > 0  # scraped under the flood
        figures.update(attacker=done[0], soft_limit=soft)
        report("start under ulimit -n 1024, 2,000 milter sessions", figures, srv)
        assert "accept failed" not in srv.log()
    assert int(soft) == hard or hard == resource.RLIM_INFINITY


def test_the_connection_limits_fit_the_open_files_limit(tmp_path: Path) -> None:
    """A hard limit too low for max_connections plus milter_max_sessions: srsd says so and
    serves fewer of each, in proportion, instead of running out of descriptors."""
    with MilterTarget(tmp_path, prefix=("prlimit", "--nofile=512:512", "--")) as srv:
        assert (
            "the open files limit (512) cannot hold max_connections 1000 and "
            "milter_max_sessions 1000: serving at most 224 connections and 224 milter "
            "sessions" in srv.log()
        ), srv.log()
        assert good_session(srv.milter_port) is None
        assert good_lookup(srv.forward_port) is None
