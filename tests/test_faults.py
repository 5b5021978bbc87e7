# Faults: a read-only state directory, secrets unreadable at SIGHUP, no file descriptor left.
"""Real ``srsd serve`` processes whose files or descriptors go wrong under them.

* The state directory read-only (``chattr +i``: root ignores permissions, not the
  immutable flag; always removed again): at the first start (no secret can be generated:
  one clear line, exit 2), at a later start (it serves with the secret it finds; the
  envelope database cannot be created, so only the lookups that need it are deferred),
  at SIGHUP (reloads) and when it becomes writable again (the database heals, no restart).
* The secrets file unreadable at SIGHUP, in the ways ``test_serve_process.py`` does not
  already cover (emptied, removed): replaced by a directory, by a FIFO with and without a
  writer, by a link to ``/dev/zero``, and readable by root but not by the ``run_as`` user.
  Each time the old secrets are kept, one error line says why, srsd keeps serving and
  stops promptly on SIGTERM.
* No file descriptor left (``prlimit --nofile=64``, more connections than that) with the
  metrics endpoint on: accepts are retried, open connections keep working, a scrape waits;
  and the metrics endpoint serves only a few connections at once.

Database outages while serving (SQLite immutable, Redis stopped, store down at start) are
in ``test_database_mode.py``. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from srsd.serve.metrics_endpoint import HTTP_CONNECTIONS
from srsd.srs.codec import Codec
from tests.harness.attacks import Target
from tests.harness.clients import LineConn
from tests.harness.immutable import immutable
from tests.harness.srsd_process import (
    ALICE,
    SECRET,
    TIMEOUT,
    SrsdProcess,
    assert_clean_log,
    child_env,
    empty_config,
    forward,
    lookup,
    running,
    signed,
    srsd_command,
    wait_log,
)

DOMAIN = b"forwarder.test"
LONG_SENDER = b"a-rather-long-mailing-list-bounce-address.with-a-tracking-id@origin.test"
RELOAD_FAILED = "ERROR: reload failed, keeping the previous configuration: "


def newcomer(workdir: Path, *extra: str) -> SrsdProcess:
    """``srsd serve`` with a domain and a state directory only (no --secret-file)."""
    srv = SrsdProcess(workdir, extra_args=["--config", str(empty_config(workdir)), *extra])
    at = srv.args.index("--secret-file")
    del srv.args[at : at + 2]
    srv.env = child_env(workdir / "home")
    return srv


# -- the state directory read-only ----------------------------------------------------------------


def test_first_start_with_a_read_only_state_directory_is_one_clear_line(tmp_path: Path) -> None:
    """Regression: srsd died with a PermissionError traceback when it could not write the
    secret it generates on a first start."""
    state = tmp_path / "state"
    state.mkdir()
    with immutable(state):
        started = time.monotonic()
        result = subprocess.run(
            srsd_command(
                "serve",
                "--config",
                str(empty_config(tmp_path)),
                "--domain",
                DOMAIN.decode(),
                "--state-dir",
                str(state),
            ),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=child_env(tmp_path / "home"),
            cwd=tmp_path,
        )
    assert time.monotonic() - started < TIMEOUT
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"srsd: configuration error: secrets_file: cannot create {state / 'secrets'}: "
        "Operation not permitted"
    ], result.stderr
    assert not (state / "secrets").exists()


def test_read_only_state_directory_at_start_at_sighup_and_after(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with newcomer(tmp_path) as first:  # a first start generates STATE/secrets
        assert first.stop(TIMEOUT) == 0
    secret = (state / "secrets").read_bytes().strip()
    # Auto mode: long senders need the envelope database, which cannot be created now.
    srv = newcomer(tmp_path, "--original-envelope", "auto")
    try:
        with immutable(state, state / "secrets"):
            srv.start()
            wait_log(srv, "envelope database unavailable")
            for _ in range(2):  # after the start, and after SIGHUP
                reply, t0, t1 = forward(srv.forward_port)
                assert reply[4:] in signed(secret, ALICE, t0, t1)
                assert lookup(srv.reverse_port, reply[4:]) == b"200 " + ALICE
                assert lookup(srv.forward_port, LONG_SENDER).startswith(b"400 "), srv.log()
                srv.signal(signal.SIGHUP)  # the secret can still be read: reloads work
                wait_log(srv, "configuration reloaded: 1 secret(s)")
        # Writable again: the database is created on the next lookup, without a restart.
        reply = lookup(srv.forward_port, LONG_SENDER)
        assert re.fullmatch(
            rb"200 SRS0=[^=]{4}=[A-Z2-7]{2}=1=[0-9A-V]{32}@forwarder\.test", reply
        ), reply + srv.log().encode()
        assert lookup(srv.reverse_port, reply[4:]) == b"200 " + LONG_SENDER
        assert srv.stop(TIMEOUT) == 0
    finally:
        srv.stop()
    log = srv.log()
    assert log.count("envelope database unavailable") == 1  # logged once, not per lookup
    assert re.search(r"envelope database \S+ is back after", log), log
    assert_clean_log(log, secret)


# -- the secrets file unreadable at SIGHUP ---------------------------------------------------------


def still_serving(srv: SrsdProcess, secret: bytes) -> None:
    """The old secret still signs and decodes."""
    assert srv.proc is not None
    assert srv.proc.poll() is None
    reply, t0, t1 = forward(srv.forward_port)
    assert reply[4:] in signed(secret, ALICE, t0, t1), reply
    assert lookup(srv.reverse_port, reply[4:], timeout=TIMEOUT) == b"200 " + ALICE


def test_secrets_file_unreadable_at_sighup(tmp_path: Path) -> None:
    """Regression (the FIFO and ``/dev/zero`` cases): the reload read the secrets file with
    a plain open in the server's only thread: a FIFO in its place stopped srsd for good
    (even SIGTERM), and ``/dev/zero`` would have been read until memory ran out."""
    with running(tmp_path) as srv:
        path = srv.secret_file
        original = path.read_bytes()
        secret = original.strip()
        still_serving(srv, secret)
        writer = -1

        def fifo() -> None:
            path.unlink()
            os.mkfifo(path, 0o600)

        def fifo_with_a_silent_writer() -> None:
            nonlocal writer
            fifo()
            writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes

        def repair() -> None:
            nonlocal writer
            if writer >= 0:
                os.close(writer)
                writer = -1
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
            path.write_bytes(original)
            path.chmod(0o600)

        breakages = [
            (lambda: (path.unlink(), path.mkdir()), "Is a directory"),
            (fifo, "holds no secret"),
            (fifo_with_a_silent_writer, "Resource temporarily unavailable"),
            (lambda: (path.unlink(), path.symlink_to("/dev/zero")), "larger than 16777216 bytes"),
        ]
        for n, (breakage, why) in enumerate(breakages, 1):
            breakage()
            started = time.monotonic()
            srv.signal(signal.SIGHUP)
            wait_log(srv, "reload failed", n)
            assert time.monotonic() - started < TIMEOUT
            failures = [line for line in srv.log().splitlines() if "reload failed" in line]
            assert RELOAD_FAILED + "secrets_file: " in failures[-1]
            assert str(path) in failures[-1]
            assert why in failures[-1], failures[-1]
            still_serving(srv, secret)
            repair()
        # broken once more, then stopped: SIGTERM is not held up by a FIFO
        fifo()
        srv.signal(signal.SIGHUP)
        wait_log(srv, "reload failed", len(breakages) + 1)
        started = time.monotonic()
        assert srv.stop(TIMEOUT) == 0
        assert time.monotonic() - started < TIMEOUT
        repair()
    assert "configuration reloaded" not in srv.log()


def test_secrets_file_unreadable_for_the_run_as_user_at_sighup() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (run_as)")
    nobody = pwd.getpwnam("nobody")
    world = Path(tempfile.mkdtemp(prefix="srsd-faults-", dir="/tmp"))  # nobody may traverse
    try:
        world.chmod(0o755)
        with running(world, extra=["--run-as", "nobody"]) as srv:
            secret = srv.secret_file.read_bytes().strip()
            assert srv.secret_file.stat().st_mode & 0o777 == 0o600  # root's: read at start
            still_serving(srv, secret)
            srv.signal(signal.SIGHUP)  # now srsd is nobody, who cannot read it
            wait_log(srv, "reload failed")
            assert (
                RELOAD_FAILED + f"secrets_file: cannot read {srv.secret_file}: Permission denied"
            ) in srv.log()
            # The advice is to fix its permissions, never to make a new secret.
            assert f"fix its permissions so that uid {nobody.pw_uid} can read it" in srv.log()
            assert "keygen" not in srv.log()
            still_serving(srv, secret)
            os.chown(srv.secret_file, nobody.pw_uid, nobody.pw_gid)  # the postmaster's fix
            srv.signal(signal.SIGHUP)
            wait_log(srv, "configuration reloaded: 1 secret(s)")
            still_serving(srv, secret)
    finally:
        shutil.rmtree(world, ignore_errors=True)


# -- out of file descriptors ---------------------------------------------------------------------


def test_out_of_file_descriptors_with_metrics_enabled(tmp_path: Path) -> None:
    """Regression: with ``metrics_listen`` set, a scrape arriving while srsd had no file
    descriptor left (EMFILE in accept) raised out of the metrics task and took the whole
    server down (all mail deferred). Now srsd fits ``max_connections`` into the open files
    limit it has (here a hard limit of 64, which it cannot raise): more connections than
    that evict idle ones instead of running accept() out of descriptors, and a scrape is
    answered meanwhile (the metrics endpoint serves at most HTTP_CONNECTIONS at once, and
    still waits and retries should accept() fail)."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) not installed")
    srv = Target(tmp_path, "--max-connections", "1000", "--timeout", "60")
    srv.args = ["prlimit", "--nofile=64:64", "--", *srv.args]  # exec: same pid
    with srv:
        assert "the open files limit (64) cannot hold max_connections 1000" in srv.log()
        codec = Codec([SECRET], DOMAIN)

        def round_trip() -> None:
            fwd = LineConn(srv.forward_port)
            rev = LineConn(srv.reverse_port)
            t0 = time.time()
            reply = fwd.ask(b"alice@example.org")
            assert reply[4:] in {codec.forward(b"alice@example.org", t) for t in (t0, time.time())}
            assert rev.ask(reply[4:]) == b"200 alice@example.org"
            fwd.close()
            rev.close()

        round_trip()
        hogs = [
            socket.create_connection(("127.0.0.1", srv.forward_port), timeout=TIMEOUT)
            for _ in range(80)
        ]  # more than 64 descriptors
        try:
            scrape = socket.create_connection(("127.0.0.1", srv.metrics_port), timeout=TIMEOUT)
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := scrape.recv(65536):
                data += chunk
            scrape.close()
            assert data.startswith(b"HTTP/1.1 200 OK"), data[:200]
            assert srv.alive(), srv.log()[-3000:]
            round_trip()  # fresh connections are served: they evict idle hogs
        finally:
            for hog in hogs:
                hog.close()
        round_trip()
        assert srv.stop(TIMEOUT) == 0
    assert "Traceback" not in srv.log()
    assert "accept failed" not in srv.log()


def test_metrics_endpoint_serves_a_few_connections_at_once(tmp_path: Path) -> None:
    with Target(tmp_path) as srv:
        idle = [
            socket.create_connection(("127.0.0.1", srv.metrics_port), timeout=TIMEOUT)
            for _ in range(HTTP_CONNECTIONS)
        ]
        try:
            deadline = time.monotonic() + TIMEOUT
            extra: list[bytes] = []
            for _ in range(1000):  # until all the idle ones have been accepted
                with socket.create_connection(
                    ("127.0.0.1", srv.metrics_port), timeout=TIMEOUT
                ) as over:
                    over.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                    try:
                        extra.append(over.recv(100))
                    except ConnectionResetError:
                        extra.append(b"")
                if extra[-1] == b"" or time.monotonic() > deadline:
                    break
            assert extra[-1] == b"", "the ninth connection was served"  # closed at once
        finally:
            for conn in idle:
                conn.close()
        # the idle ones are gone (closed by us): scrapes work again
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                assert srv.open_connections() == 0
                break
            except ConnectionResetError:
                assert time.monotonic() < deadline, "metrics never served again"
                time.sleep(0.05)
        assert srv.stop(TIMEOUT) == 0
