# `srsd serve` as a real child process: signals, reload, start-up failures, --check, newcomer path.
"""What only a real process shows: SIGHUP/SIGTERM/SIGINT from outside, exit statuses, the
log as a postmaster reads it, and the first start with nothing but a domain.

Every child gets a clean environment (no SRS_* variable of this machine leaks in), an empty
``--config`` file (so a real /etc/srsd/srsd.toml cannot change anything), free loopback
ports below 32768, and is stopped at the end; every wait has a deadline. Expected SRS
addresses are computed with :class:`srsd.srs.codec.Codec` from the secrets the test wrote, for
the time before and after each lookup (a day may turn). The reply paths, framing, limits
and time-outs are tested in-process in ``test_server.py``.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest

from tests.harness.clients import LineConn
from tests.harness.local_users import NOBODY, require_root
from tests.harness.ports import free_port
from tests.harness.srsd_process import (
    ALICE,
    NEW_SECRET,
    SECRET,
    TIMEOUT,
    SrsdProcess,
    assert_clean_log,
    child_env,
    empty_config,
    forward,
    lookup,
    poll,
    running,
    signed,
    srsd_command,
    wait_log,
)

DOMAIN = b"forwarder.test"


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # the listener closed while this connect was in flight
        return refused(port)


# -- SIGHUP -------------------------------------------------------------------------------------


def test_sighup_rotates_secrets(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        old, t0, t1 = forward(srv.forward_port)
        assert old.startswith(b"200 ")
        old = old[4:]
        assert old in signed(SECRET, ALICE, t0, t1)
        kept = LineConn(srv.forward_port)  # a connection from before the reload
        assert kept.ask(ALICE) == b"200 " + old

        srv.secret_file.write_bytes(NEW_SECRET + b"\n" + SECRET + b"\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "configuration reloaded: 2 secret(s), 0 excluded domain(s)")
        new, t0, t1 = forward(srv.forward_port)
        assert new[4:] in signed(NEW_SECRET, ALICE, t0, t1)
        assert new[4:] != old
        t0 = time.time()
        assert kept.ask(ALICE) in {b"200 " + a for a in signed(NEW_SECRET, ALICE, t0, time.time())}
        # addresses signed with either secret decode
        assert lookup(srv.reverse_port, old) == b"200 " + ALICE
        assert lookup(srv.reverse_port, new[4:]) == b"200 " + ALICE

        # retire the old secret: its addresses stop decoding
        srv.secret_file.write_bytes(NEW_SECRET + b"\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "configuration reloaded: 1 secret(s)")
        assert lookup(srv.reverse_port, old) == b"500 Hash%20invalid%20in%20SRS%20address."
        assert lookup(srv.reverse_port, new[4:]) == b"200 " + ALICE
        kept.close()


def catches_sighup(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGHUP (``SigCgt`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


@pytest.mark.parametrize("attempt", range(3))
def test_sighup_at_any_moment_of_the_start_is_never_fatal(tmp_path: Path, attempt: int) -> None:
    # logrotate or a script may send SIGHUP while srsd starts. From the moment srsd's own
    # code runs (Python's start-up before it cannot be covered) until well after it is ready,
    # a SIGHUP every millisecond: srsd starts, serves, and applies the change made meanwhile.
    srv = SrsdProcess(tmp_path)
    srv.spawn()
    assert srv.proc is not None
    deadline = time.monotonic() + 10
    while not catches_sighup(srv.proc.pid):
        assert srv.proc.poll() is None, srv.log()
        assert time.monotonic() < deadline, "srsd never took SIGHUP over"
        time.sleep(0.001)
    srv.secret_file.write_bytes(NEW_SECRET + b"\n" + SECRET + b"\n")  # changed while starting
    sent = 0
    try:
        while not all(srv._accepting(p) for p in (srv.forward_port, srv.reverse_port)):
            assert srv.proc.poll() is None, f"srsd died after {sent} SIGHUPs:\n{srv.log()}"
            assert time.monotonic() < deadline, srv.log()
            for _ in range(5):
                srv.signal(signal.SIGHUP)
                sent += 1
                time.sleep(0.001)
        srv.wait_ready()
        for _ in range(100):  # and on, once ready
            srv.signal(signal.SIGHUP)
            time.sleep(0.001)
        assert srv.proc.poll() is None, srv.log()
        wait_log(srv, "configuration reloaded: 2 secret(s)")
        reply, t0, t1 = forward(srv.forward_port)
        assert reply[4:] in signed(NEW_SECRET, ALICE, t0, t1), srv.log()
        assert sent > 0
    finally:
        assert srv.stop() == 0, srv.log()


def test_sighup_with_a_broken_file_keeps_the_configuration(tmp_path: Path) -> None:
    exclude = tmp_path / "exclude"
    exclude.write_text("excluded.example\n")
    config = tmp_path / "srsd.toml"
    config.write_text("max_age = 21\n")
    with running(tmp_path, extra=["--exclude-file", str(exclude), "--config", str(config)]) as srv:

        def still_serving() -> None:
            assert srv.proc is not None
            assert srv.proc.poll() is None
            reply, t0, t1 = forward(srv.forward_port)
            assert reply[4:] in signed(SECRET, ALICE, t0, t1)  # the old secret still signs
            assert lookup(srv.forward_port, b"bob@excluded.example") == (b"500 excluded%20domain")
            assert lookup(srv.reverse_port, reply[4:]) == b"200 " + ALICE

        still_serving()
        secrets = srv.secret_file.read_bytes()
        breakages: list[tuple[Callable[[], object], Callable[[], object], str]] = [
            (
                lambda: srv.secret_file.write_bytes(b""),
                lambda: srv.secret_file.write_bytes(secrets),
                f"secrets_file: {srv.secret_file} holds no secret",
            ),
            (
                srv.secret_file.unlink,
                lambda: srv.secret_file.write_bytes(secrets),
                f"secrets_file: cannot read {srv.secret_file}: No such file or directory",
            ),
            (
                lambda: exclude.write_text("excluded.example\nnot a domain!\n"),
                lambda: exclude.write_text("excluded.example\n"),
                f"exclude_file: {exclude} line 2: not a domain name: 'not a domain!'",
            ),
            (
                lambda: config.write_bytes(b"# r\xe9glages\nmax_age = 21\n"),  # Latin-1, not UTF-8
                lambda: config.write_text("max_age = 21\n"),
                f"config file {config}: 'utf-8' codec can't decode byte 0xe9",
            ),
            (
                lambda: config.write_text("max_age = [\n"),
                lambda: config.write_text("max_age = 21\n"),
                f"config file {config}: ",
            ),
        ]
        for n, (breakage, repair, why) in enumerate(breakages, 1):
            breakage()
            srv.signal(signal.SIGHUP)
            wait_log(srv, "reload failed, keeping the previous configuration", n)
            failures = [line for line in srv.log().splitlines() if "reload failed" in line]
            assert len(failures) == n
            assert (
                "ERROR: reload failed, keeping the previous configuration: " + why in (failures[-1])
            )
            still_serving()
            repair()

        # after all that, a good reload still works
        srv.secret_file.write_bytes(NEW_SECRET + b"\n" + SECRET + b"\n")
        exclude.write_text("excluded.example\nother.example\n")
        srv.signal(signal.SIGHUP)
        wait_log(srv, "configuration reloaded: 2 secret(s), 2 excluded domain(s)")
        reply, t0, t1 = forward(srv.forward_port)
        assert reply[4:] in signed(NEW_SECRET, ALICE, t0, t1)
        assert lookup(srv.forward_port, b"bob@other.example") == b"500 excluded%20domain"
        assert srv.log().count("configuration reloaded") == 1


def test_sighup_applies_logging_and_names_each_change_that_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "srsd.toml"
    config.write_text('log_level = "info"\n')
    srv = SrsdProcess(tmp_path, extra_args=["--config", str(config)])
    srv.env = child_env(tmp_path / "home")
    metrics = free_port()
    with srv:
        assert lookup(srv.forward_port, b"<>").startswith(b"500 ")  # quiet: debug level only
        config.write_text(
            f'log_level = "debug"\nlog_format = "json"\nrun_as = "nobody"\n'
            f'metrics_listen = "127.0.0.1:{metrics}"\nmax_age = 30\n'
        )
        srv.signal(signal.SIGHUP)
        wait_log(srv, '"message": "configuration reloaded')
        assert lookup(srv.forward_port, b"<>").startswith(b"500 ")
        wait_log(srv, '"message": "forward <<>> not rewritten: null sender"')
        assert refused(metrics)  # metrics_listen needs a restart: nothing listens there yet
        before, _, after = srv.log().partition("configuration reloaded")
        assert "<<>> not rewritten" not in before  # info level did not log the quiet lookup
        for key in ("run_as", "metrics_listen"):
            assert srv.log().count(f"{key} changed: restart to apply") == 1, srv.log()
        assert "max_age changed" not in srv.log()  # applied: nothing to say
        reloaded = after.splitlines()[1:]
        assert reloaded, srv.log()
        assert srv.proc is not None
        for line in reloaded:  # after the reload: JSON lines, as the new log_format says
            assert json.loads(line)["pid"] == srv.proc.pid, line
        assert srv.stop(TIMEOUT) == 0, srv.log()


# -- stopping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_promptly(tmp_path: Path, signum: signal.Signals) -> None:
    srv = SrsdProcess(
        tmp_path, extra_args=["--config", str(empty_config(tmp_path)), "--shutdown-grace", "3600"]
    )
    srv.env = child_env(tmp_path / "home")
    with srv:
        assert srv.proc is not None
        idle = LineConn(srv.forward_port)
        assert idle.ask(b"bob").startswith(b"500 ")
        assert idle.ask(ALICE).startswith(b"200 ")
        srv.signal(signum)
        # idle connections do not hold the exit back for the grace period
        assert srv.proc.wait(TIMEOUT) == 0
        assert idle.at_eof()
        idle.close()
        assert refused(srv.forward_port)
        assert refused(srv.reverse_port)
    log = srv.log()
    assert f"INFO: {signum.name} received: stopping" in log
    assert "INFO: stopped after 2 lookup(s)" in log
    assert "Traceback" not in log
    assert_clean_log(log)


def test_sigterm_gives_a_client_that_does_not_read_the_grace_period(tmp_path: Path) -> None:
    with running(tmp_path, extra=["--shutdown-grace", "3"]) as srv:
        assert srv.proc is not None
        stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stuck.settimeout(TIMEOUT)
        stuck.connect(("127.0.0.1", srv.forward_port))
        stuck.setblocking(False)
        chunk = b"get alice@example.org\n" * 3000
        # pipeline until srsd stops reading: its replies fill the buffers, nobody reads them
        deadline = time.monotonic() + TIMEOUT
        while select.select([], [stuck], [], 0.3)[1]:
            assert time.monotonic() < deadline, "srsd never stopped reading"
            with suppress(BlockingIOError):
                stuck.send(chunk)
        srv.signal(signal.SIGTERM)
        wait_log(srv, "SIGTERM received: stopping")
        poll(lambda: refused(srv.forward_port), "the listener to close")
        assert srv.proc.poll() is None  # still giving the reply in flight its grace period
        assert srv.proc.wait(TIMEOUT) == 0  # and then it is cut off
        stuck.close()
        assert "stopped after" in srv.log()


# -- start-up -----------------------------------------------------------------------------------


def run_all(workdir: Path, runs: dict[str, list[str]]) -> dict[str, tuple[int, list[str]]]:
    """Run ``srsd`` with each argument list at once; the exit status and the non-empty lines
    of stdout + stderr of each."""
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, args in runs.items():
            procs[name] = subprocess.Popen(
                srsd_command(*args),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=child_env(workdir / "home"),
                cwd=workdir,
            )
        results = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=TIMEOUT)
            results[name] = proc.returncode, [line for line in out.splitlines() if line.strip()]
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)


def test_start_failures_are_one_clear_line(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    empty = tmp_path / "empty-secret"
    empty.write_bytes(b"\n\n")
    empty.chmod(0o600)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# r\xe9glages\nmax_age = 21\n")
    config = str(empty_config(tmp_path))
    busy = free_port("127.0.0.1", count=2)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", busy + 1))
    holder.listen()
    ports = ["--listen", "127.0.0.1", "--forward-port", str(busy), "--reverse-port", str(busy + 1)]
    base = ["serve", "--config", config, "--domain", "forwarder.test", *ports]
    cases = {
        "port in use": (
            [*base, "--secret-file", str(secret)],
            1,
            f"ERROR: cannot start: cannot listen on 127.0.0.1:{busy + 1} for "
            "tcp_table reverse: Address already in use",
        ),
        "secrets file missing": (
            [*base, "--secret-file", str(tmp_path / "nope")],
            2,
            f"srsd: configuration error: secrets_file: cannot read "
            f"{tmp_path / 'nope'}: No such file or directory (from "
            "command line --secret-file)",
        ),
        "empty secrets file": (
            [*base, "--secret-file", str(empty)],
            2,
            f"srsd: configuration error: secrets_file: {empty} holds no secret",
        ),
        "domain missing": (
            ["serve", "--config", config, "--secret-file", str(secret), *ports],
            2,
            "srsd: configuration error: domain: the SRS domain is not set",
        ),
        "config not UTF-8": (
            [*base[:1], "--config", str(latin1), *base[3:], "--secret-file", str(secret)],
            2,
            f"srsd: configuration error: config file {latin1}: 'utf-8' "
            "codec can't decode byte 0xe9",
        ),
    }
    try:
        results = run_all(tmp_path, {name: args for name, (args, _, _) in cases.items()})
    finally:
        holder.close()
    for name, (_, status, message) in cases.items():
        got_status, lines = results[name]
        assert got_status == status, (name, lines)
        assert len(lines) == 1, (name, lines)
        assert message in lines[0], (name, lines)


def test_check_fails_when_srsd_could_not_create_its_unix_socket(tmp_path: Path) -> None:
    """The packaged unit's read-only /var/spool/postfix made srsd fail at every start while
    --check passed: the socket's directory must exist and be writable by the user that binds
    and the user srsd runs as (run_as: it removes the socket at exit)."""
    require_root()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    rooted = tmp_path / "root-only"  # 0755 root: root may bind, nobody may not remove
    rooted.mkdir(mode=0o755)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    base = ["serve", "--check", "--config", str(empty_config(tmp_path)), "--domain", "f.test"]
    base += ["--secret-file", str(secret), "--forward-port", "0", "--reverse-port", "0"]
    nobody = ["--run-as", "nobody"]
    runs = {
        "missing": [*base, "--socketmap", f"unix:{tmp_path}/no/such/dir/s.sock"],
        "root only, run as nobody": [*base, *nobody, "--milter", f"unix:{rooted}/m.sock"],
        "root only, as root": [*base, "--allow-root", "--milter", f"unix:{rooted}/m.sock"],
        "sticky": [*base, *nobody, "--socketmap", f"unix:{sticky}/s.sock"],
    }
    results = run_all(tmp_path, runs)
    status, lines = results["missing"]
    assert status == 2 and "No such file or directory" in lines[-1], lines
    status, lines = results["root only, run as nobody"]
    assert status == 2, lines
    assert f"milter unix:{rooted}/m.sock: nobody (uid {NOBODY}) cannot create files" in lines[-1]
    for name in ("root only, as root", "sticky"):
        status, lines = results[name]
        assert status == 0 and "configuration OK" in lines[-1], (name, lines)


def test_check_validates_without_listening(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    busy = free_port("127.0.0.1", count=2)
    holders = []
    for port in (busy, busy + 1):  # both ports taken: --check must not even try them
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        holders.append(holder)
    state = tmp_path / "state"
    base = [
        "serve",
        "--check",
        "--config",
        str(empty_config(tmp_path)),
        "--domain",
        "forwarder.test",
        "--listen",
        "127.0.0.1",
        "--forward-port",
        str(busy),
        "--reverse-port",
        str(busy + 1),
        "--state-dir",
        str(state),
    ]
    runs = {
        "good": [*base, "--secret-file", str(secret), "--exclude", "excluded.example"],
        "bad hash_min": [*base, "--secret-file", str(secret), "--hash-min", "6"],
        "no secret yet": base,  # --check never creates one
    }
    try:
        results = run_all(tmp_path, runs)
    finally:
        for holder in holders:
            holder.close()
    assert results["good"] == (
        0,
        [
            f"srsd: configuration OK: domain forwarder.test, 1 secret(s) from {secret}, "
            "1 excluded domain(s)"
        ],
    )
    status, lines = results["bad hash_min"]
    assert (status, len(lines)) == (2, 1)
    assert "hash_min: 6 is more than hash_length 4" in lines[0]
    status, lines = results["no secret yet"]
    assert (status, len(lines)) == (2, 1)
    assert f"cannot read {state / 'secrets'}" in lines[0]
    assert not state.exists()


def test_newcomer_gets_a_generated_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = str(empty_config(tmp_path))
    srv = SrsdProcess(tmp_path, domain="forwarder.example", extra_args=["--config", config])
    at = srv.args.index("--secret-file")
    del srv.args[at : at + 2]  # nothing but a domain and a state directory
    assert "--state-dir" in srv.args
    assert not state.exists()
    srv.env = child_env(tmp_path / "home")
    with srv:
        secrets = state / "secrets"
        assert secrets.stat().st_mode & 0o777 == 0o600
        assert state.stat().st_mode & 0o777 == 0o700
        secret = secrets.read_bytes()
        assert secret.endswith(b"\n")
        assert len(secret.strip()) >= 32
        assert f"created a new secret in {secrets}" in srv.log()
        reply, t0, t1 = forward(srv.forward_port)
        assert reply[4:] in signed(secret.strip(), ALICE, t0, t1, b"forwarder.example")
        assert lookup(srv.reverse_port, reply[4:]) == b"200 " + ALICE
        assert srv.stop(TIMEOUT) == 0
    assert_clean_log(srv.log(), secret.strip())
    # the next start uses that secret: it is never replaced
    check = subprocess.run(
        srsd_command(
            "serve",
            "--check",
            "--config",
            config,
            "--domain",
            "forwarder.example",
            "--state-dir",
            str(state),
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env(tmp_path / "home"),
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert f"1 secret(s) from {secrets}" in check.stdout
    assert secrets.read_bytes() == secret


# -- the log ------------------------------------------------------------------------------------


def test_log_at_debug_level(tmp_path: Path) -> None:
    with running(tmp_path, log_level="debug") as srv:
        fwd = LineConn(srv.forward_port)
        rev = LineConn(srv.reverse_port)
        rewritten = fwd.ask(ALICE)[4:]
        assert fwd.ask(b'""') == b"500 null%20sender"
        assert fwd.ask(b"bob@forwarder.test") == b"500 local%20domain"
        assert fwd.request(b"put x").startswith(b"500 Invalid")
        assert rev.ask(b"dave@example.org") == b"500 Not%20an%20SRS%20address."
        assert rev.ask(rewritten) == b"200 " + ALICE
        assert fwd.ask(b"a%0Ab@x.test") == b"500 Control%20character%20in%20address"
        srv.signal(signal.SIGHUP)
        wait_log(srv, "configuration reloaded")
        fwd.close()
        rev.close()
        assert srv.stop(TIMEOUT) == 0
        log = srv.log()
    lines = log.splitlines()

    def one(text: str) -> str:
        found = [line for line in lines if text in line]
        assert len(found) == 1, (text, found)
        return found[0]

    assert (
        one(f"forward <{ALICE.decode()}> rewritten as <{rewritten.decode()}>").count("INFO: ") == 1
    )
    assert 'DEBUG: forward <""> not rewritten: null sender' in one("null sender")
    assert "DEBUG: forward <bob@forwarder.test> not rewritten: local domain" in one("local")
    assert "DEBUG: reverse <dave@example.org> not rewritten: Not an SRS address." in one("dave")
    assert "INFO: tcp_table forward: bad request: Invalid request" in one("bad request")
    assert f"INFO: reverse <{rewritten.decode()}> rewritten as <{ALICE.decode()}>" in one(
        "INFO: reverse"
    )
    # the LF in the address is shown escaped: no line of the log starts with "b@"
    assert "forward <a\\nb@x.test> not rewritten: Control character in address" in one("x.test")
    assert not [line for line in lines if line.startswith("b@")]
    assert one("srsd ready: ")
    assert one("stopped after 7 lookup(s)")
    assert_clean_log(log)


def test_the_harness_never_hands_out_a_port_twice() -> None:
    """Ports picked before any is bound (a tcp_table pair, then a socketmap port) are distinct:
    a server once failed to start because its socketmap port was its own reverse port."""
    picked: list[int] = []
    for i in range(1000):
        base = free_port(count=1 + i % 2)
        picked.extend(range(base, base + 1 + i % 2))
    assert len(set(picked)) == len(picked)
