# Operations, for real: socket activation, sd_notify, credentials, run_as, metrics, health, logs.
"""srsd as a service manager, a container runtime and a monitoring system see it.

Every test runs real ``srsd`` processes: under ``systemd-socket-activate`` (Debian's
``systemd`` package) for socket activation, with ``NOTIFY_SOCKET`` pointing at a datagram
socket the test binds for sd_notify, with ``CREDENTIALS_DIRECTORY`` for credentials, as root
with ``--run-as nobody`` for the privilege drop (the serving process's ``/proc/PID/status``
is read), with ``--metrics-listen`` scraped over HTTP and parsed with prometheus_client's
own parser, and ``srsd health`` as a subprocess. Nothing is mocked. Every listener is on
loopback below port 32768, every wait is bounded by :data:`TIMEOUT`, every process started
is stopped. Expected SRS addresses come from :class:`srsd.srs.codec.Codec` and the secret the
test wrote, for the time before and after each lookup (a day may turn in between).
"""

from __future__ import annotations

import itertools
import json
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from srsd.srs.codec import Codec
from srsd.wire import tcp_table
from tests.harness.daemon import (
    DOMAIN,
    SECRET,
    TIMEOUT,
    Daemon,
    NotifySocket,
    activation_argv,
    health,
    need_root,
    proc_status,
    serve_args,
    socketmap_query,
    write_secret,
)
from tests.harness.metrics import labels, samples, scrape
from tests.harness.ports import free_port
from tests.harness.srsd_process import child_env, empty_config, fd_targets, lookup, poll

ALICE = b"alice@example.org"


def signed(sender: bytes, t0: float, t1: float, secret: bytes = SECRET) -> set[bytes]:
    """The SRS address ``sender`` gets with ``secret`` signing, between t0 and t1."""
    codec = Codec([secret], DOMAIN.encode())
    return {codec.forward(sender, t) for t in (t0, t1)}


def forward_ok(port: int, secret: bytes = SECRET, sender: bytes = ALICE) -> bytes:
    """A forward lookup that must be rewritten with ``secret``; returns the SRS address."""
    t0 = time.time()
    reply = lookup(port, sender, timeout=TIMEOUT)
    assert reply.startswith(b"200 "), reply
    assert reply[4:] in signed(sender, t0, time.time(), secret), reply
    return reply[4:]


def forge(srs: bytes) -> bytes:
    """``srs`` with its first hash character changed: a bad hash. Changed to another letter,
    not another case: hashes are checked case-insensitively, so "a" to "A" forges nothing."""
    changed = b"A" if srs[5:6].upper() != b"A" else b"B"
    return srs[:5] + changed + srs[6:]


def bindable(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- socket activation ------------------------------------------------------------------------


def test_socket_activation_tcp_table(tmp_path: Path) -> None:
    passed = free_port(count=2)
    configured = free_port(count=2)
    while configured in (passed - 1, passed, passed + 1):
        configured = free_port(count=2)
    env = child_env(tmp_path)
    command = serve_args(
        tmp_path,
        "--forward-port",
        str(configured),
        "--reverse-port",
        str(configured + 1),
        secret=write_secret(tmp_path / "secret"),
    )
    argv = activation_argv(
        [f"127.0.0.1:{passed}", f"127.0.0.1:{passed + 1}"], ["forward", "reverse"], env, command
    )
    with Daemon(argv, env, tmp_path) as daemon:
        daemon.wait_log(f"Listening on 127.0.0.1:{passed + 1} as 4.")
        srs = forward_ok(passed)  # the first connection makes it exec srsd, which answers it
        daemon.wait_log("srsd ready: ")
        assert lookup(passed + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE
        assert (
            f"srsd ready: tcp_table forward on 127.0.0.1:{passed}, tcp_table reverse on "
            f"127.0.0.1:{passed + 1}; SRS domain {DOMAIN}, 1 secret(s)"
        ) in daemon.log()
        # srsd adopted the passed sockets and bound nothing by itself
        assert bindable(configured)
        assert bindable(configured + 1)
        fds = set(fd_targets(daemon.pid).values())
        assert sum(fd.startswith("socket:") for fd in fds) >= 2
        daemon.signal(signal.SIGHUP)  # a reload keeps the passed sockets, binds nothing
        daemon.wait_log("configuration reloaded")
        forward_ok(passed)
        assert bindable(configured)
        assert daemon.stop() == 0
    assert "stopped after 3 lookup(s)" in daemon.log()


def test_socket_activation_unix_socketmap_and_metrics(tmp_path: Path) -> None:
    unix = tmp_path / "passed.sock"
    own_unix = tmp_path / "configured.sock"
    metrics = free_port()
    own_metrics = free_port()
    env = child_env(tmp_path)
    command = serve_args(
        tmp_path,
        "--forward-port",
        "0",
        "--reverse-port",
        "0",
        "--socketmap",
        f"unix:{own_unix}",
        "--metrics-listen",
        f"127.0.0.1:{own_metrics}",
        secret=write_secret(tmp_path / "secret"),
    )
    argv = activation_argv(
        [str(unix), f"127.0.0.1:{metrics}"], ["socketmap", "metrics"], env, command
    )
    with Daemon(argv, env, tmp_path) as daemon:
        daemon.wait_log(f"Listening on 127.0.0.1:{metrics} as 4.")
        t0 = time.time()
        (reply,) = socketmap_query(str(unix), b"forward " + ALICE)
        assert reply.startswith(b"OK "), reply
        assert reply[3:] in signed(ALICE, t0, time.time())
        assert socketmap_query(str(unix), b"reverse " + reply[3:]) == [b"OK " + ALICE]
        daemon.wait_log("srsd ready: ")
        assert f"srsd ready: socketmap forward+reverse on unix:{unix}; " in daemon.log()
        values = samples(scrape(metrics)[1])  # the metrics socket was passed too
        key = labels(map="forward", protocol="socketmap", outcome="rewritten")
        assert values[("srsd_lookups_total", key)] == 1
        assert not own_unix.exists()
        assert bindable(own_metrics)
        assert daemon.stop() == 0
    assert unix.exists(), "srsd removed a socket it did not create (systemd owns it)"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            "forward:bogus",
            "cannot start: socket activation: socket 4 is named 'bogus'; name it one "
            "of forward, reverse, socketmap, milter, metrics with FileDescriptorName=",
        ),
        (
            "metrics:metrics",
            "cannot start: socket activation passed no forward, reverse, "
            "socketmap or milter socket",
        ),
    ],
    ids=["unknown name", "no map socket"],
)
def test_socket_activation_with_wrong_names_fails_clearly(
    tmp_path: Path, names: str, message: str
) -> None:
    port = free_port(count=2)
    env = child_env(tmp_path)
    command = serve_args(tmp_path, secret=write_secret(tmp_path / "secret"))
    argv = activation_argv(
        [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"], names.split(":"), env, command
    )
    with Daemon(argv, env, tmp_path) as daemon:
        daemon.wait_log(f"Listening on 127.0.0.1:{port + 1} as 4.")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as trigger:
            assert daemon.wait_exit() == 1
            with suppress(OSError):
                assert trigger.recv(100) == b""  # closed, never answered
    lines = [line for line in daemon.log().splitlines() if " srsd[" in line]
    assert len(lines) == 1, daemon.log()
    assert lines[0].endswith(message)


# -- sd_notify --------------------------------------------------------------------------------


def assert_status(line: str, lookups: int, failed_reloads: int = 0) -> None:
    assert re.fullmatch(
        rf"STATUS={lookups} lookups, \d+ connections open, 0 evicted, 0 "
        rf"refused \(limit\), 0 refused \(user\), {failed_reloads} failed "
        "reloads",
        line,
    ), line


def test_sd_notify_ready_reload_status_stopping(tmp_path: Path) -> None:
    notify = NotifySocket(str(tmp_path / "notify"))
    port = free_port(count=2)
    env = child_env(tmp_path, NOTIFY_SOCKET=notify.address)
    args = serve_args(
        tmp_path,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        secret=write_secret(tmp_path / "secret"),
    )
    config = Path(args[args.index("--config") + 1])
    try:
        with Daemon(args, env, tmp_path) as daemon:
            lines, sender = notify.receive()  # the first message srsd sends at all
            for p in (port, port + 1):  # READY=1 means: the ports accept connections now
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            assert lines[0] == "READY=1"
            assert_status(lines[1], 0)
            assert len(lines) == 2
            assert sender == daemon.pid, "NotifyAccess=main: only the main process may notify"
            srs = forward_ok(port)
            assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE

            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            daemon.signal(signal.SIGHUP)
            lines, _ = notify.receive()
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert lines[0] == "RELOADING=1"
            assert lines[1].startswith("MONOTONIC_USEC=")
            assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
            lines, _ = notify.receive()
            assert lines[0] == "READY=1"
            assert_status(lines[1], 2)

            config.write_text("this is = not TOML [\n")  # a failed reload is READY=1 too
            daemon.signal(signal.SIGHUP)
            assert notify.receive()[0][0] == "RELOADING=1"
            lines, _ = notify.receive()
            assert lines[0] == "READY=1"
            assert_status(lines[1], 2, failed_reloads=1)
            daemon.wait_log("reload failed")
            forward_ok(port)  # still serving with the previous configuration

            daemon.signal(signal.SIGTERM)
            assert notify.receive()[0] == ["STOPPING=1"]
            assert daemon.wait_exit() == 0
            assert notify.nothing_more()
    finally:
        notify.close()


def test_sd_notify_abstract_socket_and_unreachable_socket(tmp_path: Path) -> None:
    notify = NotifySocket(f"@srsd-test-{uuid.uuid4().hex}")
    port = free_port(count=2)
    args = serve_args(
        tmp_path,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        secret=write_secret(tmp_path / "secret"),
    )
    try:
        with Daemon(args, child_env(tmp_path, NOTIFY_SOCKET=notify.address), tmp_path) as d:
            lines, sender = notify.receive()
            assert lines[0] == "READY=1"
            assert sender == d.pid
            d.signal(signal.SIGTERM)
            assert notify.receive()[0] == ["STOPPING=1"]
            assert d.wait_exit() == 0
    finally:
        notify.close()
    # nobody listening at NOTIFY_SOCKET: srsd serves anyway
    gone = str(tmp_path / "no-such-notify-socket")
    with Daemon(args, child_env(tmp_path, NOTIFY_SOCKET=gone), tmp_path) as daemon:
        daemon.wait_log("srsd ready: ")
        forward_ok(port)
        assert daemon.stop() == 0


# -- credentials ------------------------------------------------------------------------------


def test_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o500)
    old = b"old-credential-secret-55aa"
    secret = b"credential-secret-0f1e2d3c"
    write_secret(credentials / "srsd-secrets", secret, old)
    (credentials / "srsd-secrets").chmod(0o400)  # as systemd leaves it
    port = free_port(count=2)
    env = child_env(tmp_path, CREDENTIALS_DIRECTORY=str(credentials))
    args = serve_args(tmp_path, "--forward-port", str(port), "--reverse-port", str(port + 1))
    state = tmp_path / "state"

    check = subprocess.run(
        [*args, "--check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert check.returncode == 0, check.stderr
    assert f"2 secret(s) from {credentials / 'srsd-secrets'}," in check.stdout
    with Daemon(args, env, tmp_path) as daemon:
        daemon.wait_log("srsd ready: ")
        srs = forward_ok(port, secret)
        assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE
        by_old = Codec([old], DOMAIN.encode()).forward(ALICE, time.time())
        assert lookup(port + 1, by_old, timeout=TIMEOUT) == b"200 " + ALICE
        assert daemon.stop() == 0
    assert not (state / "secrets").exists(), "a secret was generated despite the credential"

    # an explicit secrets file wins over the credential
    own = write_secret(tmp_path / "own-secret")
    check = subprocess.run(
        [*args, "--check", "--secret-file", str(own)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert f"1 secret(s) from {own}," in check.stdout, check.stderr
    # a credentials directory without srsd-secrets: the state directory, as without systemd
    (credentials / "srsd-secrets").chmod(0o600)
    (credentials / "srsd-secrets").unlink()
    check = subprocess.run(
        [*args, "--check"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert check.returncode == 2
    assert f"cannot read {state / 'secrets'}" in check.stderr


# -- privilege drop ---------------------------------------------------------------------------


def test_run_as_drops_every_privilege(world_dir: Path) -> None:
    need_root()
    nobody = pwd.getpwnam("nobody")
    port = free_port(count=2)
    env = child_env(world_dir, allow_root=False)
    args = serve_args(
        world_dir,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--run-as",
        "nobody",
    )  # no secret: srsd generates one
    state = world_dir / "state"
    with Daemon(args, env, world_dir) as daemon:
        daemon.wait_log("srsd ready: ")
        status = proc_status(daemon.pid)
        assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert status["Groups"] == ""
        assert status["CapEff"] == "0000000000000000"
        assert f"running as nobody (uid {nobody.pw_uid})" in daemon.log()
        # nobody is every other daemon too: they could read the secret. srsd says so.
        assert "WARNING: run_as nobody: every daemon running as nobody can read" in daemon.log()
        # the generated secret was handed over with the state directory
        secrets = state / "secrets"
        for path in (state, secrets):
            assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
        first = secrets.read_bytes().strip()
        srs = forward_ok(port, first)
        assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE
        # SIGHUP as nobody re-reads the secret: rotate it (the file keeps its owner)
        rotated = b"rotated-after-the-drop-77"
        with secrets.open("r+b") as f:
            f.write(rotated + b"\n" + first + b"\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded: 2 secret(s)")
        forward_ok(port, rotated)
        assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE
        assert daemon.stop() == 0
    assert "reload failed" not in daemon.log()
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize(
    ("env_extra", "expected"),
    [
        (
            {},
            "cannot start: refusing to serve as root: set run_as (RUN_AS, --run-as) to an "
            "unprivileged user, or allow_root (--allow-root) to insist",
        ),
        (
            {"RUN_AS": "no-such-user-for-srsd"},
            "cannot start: run_as: no such user: 'no-such-user-for-srsd'",
        ),
    ],
    ids=["no run_as", "unknown user"],
)
def test_root_without_a_usable_run_as_is_refused(
    world_dir: Path, env_extra: dict[str, str], expected: str
) -> None:
    need_root()
    port = free_port(count=2)
    args = serve_args(
        world_dir,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        secret=write_secret(world_dir / "secret"),
    )
    env = child_env(world_dir, allow_root=False, **env_extra)
    started = time.monotonic()
    with Daemon(args, env, world_dir) as daemon:
        assert daemon.wait_exit() == 1
    assert time.monotonic() - started < TIMEOUT
    lines = daemon.log().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"ERROR: {expected}")
    assert bindable(port)
    assert bindable(port + 1)


def test_allow_root_serves_as_root(world_dir: Path) -> None:
    need_root()
    port = free_port(count=2)
    args = serve_args(
        world_dir,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--allow-root",
        secret=write_secret(world_dir / "secret"),
    )
    with Daemon(args, child_env(world_dir, allow_root=False), world_dir) as daemon:
        daemon.wait_log("srsd ready: ")
        assert proc_status(daemon.pid)["Uid"].split() == ["0"] * 4
        forward_ok(port)
        assert daemon.stop() == 0
    assert "running as" not in daemon.log()


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_what_happened(tmp_path: Path) -> None:
    port = free_port(count=2)
    metrics = free_port()
    sm = free_port()
    args = serve_args(
        tmp_path,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--socketmap",
        f"inet:127.0.0.1:{sm}",
        "--max-connections",
        "2",
        "--max-connections-per-user",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{metrics}",
        secret=write_secret(tmp_path / "secret"),
    )
    config = Path(args[args.index("--config") + 1])

    def value(name: str, **label: str) -> float:
        return samples(scrape(metrics)[1])[(name, labels(**label))]

    with Daemon(args, child_env(tmp_path), tmp_path) as daemon:
        daemon.wait_log("srsd ready: ")
        content_type, body = scrape(metrics)
        assert content_type.startswith("text/plain; version=")  # the Prometheus text format
        start = samples(body)
        assert not [k for k in start if k[0] == "srsd_lookups_total"]
        assert start[("srsd_connections_open", labels())] == 0

        srs = forward_ok(port)  # forward, rewritten
        assert lookup(port, b"<>", timeout=TIMEOUT).startswith(b"500 ")  # null sender
        assert lookup(port + 1, ALICE, timeout=TIMEOUT).startswith(b"500 ")  # not SRS
        assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE  # reverse, rewritten
        assert lookup(port + 1, forge(srs), timeout=TIMEOUT).startswith(b"500 ")  # bad hash
        assert lookup(port, b"", timeout=TIMEOUT).startswith(b"500 ")  # "get ": bad request
        replies = socketmap_query(("127.0.0.1", sm), b"forward " + ALICE, b"nosuchmap x")
        assert replies[0].startswith(b"OK ")
        assert replies[1].startswith(b"PERM ")  # unknown map name: a bad request
        poll(lambda: value("srsd_connections_open") == 0, "the connections to close")

        # the connection limit: two held connections; a third evicts the one idle longest
        # (a lookup's connection the client closed may be evicted before srsd saw the EOF)
        evicted = value("srsd_connections_evicted_total")
        held = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in "ab"]
        try:
            for conn in held:  # a lookup on each: both are accepted and counted
                conn.sendall(tcp_table.encode_request(ALICE))
                assert conn.recv(1000).startswith(b"200 ")
            assert value("srsd_connections_open") == 2
            with socket.create_connection(("127.0.0.1", port + 1), timeout=TIMEOUT):
                assert held[0].recv(100) == b""  # evicted
            assert value("srsd_connections_evicted_total") == evicted + 1
        finally:
            for conn in held:
                conn.close()
        poll(lambda: value("srsd_connections_open") == 0, "the held connections to close")

        daemon.signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded")
        config.write_text("not = [valid TOML\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload failed")

        content_type, body = scrape(metrics)
        values = samples(body)
        lookups = {
            dict(k[1])["map"] + " " + dict(k[1])["protocol"] + " " + dict(k[1])["outcome"]: v
            for k, v in values.items()
            if k[0] == "srsd_lookups_total"
        }
        assert lookups == {
            "forward tcp_table rewritten": 3,  # one, then one on each held connection
            "forward tcp_table null sender": 1,
            "forward tcp_table bad request": 1,
            "reverse tcp_table not SRS": 1,
            "reverse tcp_table rewritten": 1,
            "reverse tcp_table bad hash": 1,
            "forward socketmap rewritten": 1,
            "- socketmap bad request": 1,
        }
        assert values[("srsd_connections_evicted_total", labels())] == evicted + 1
        for closed in ("rejected", "refused_user"):  # nothing refused
            assert values[(f"srsd_connections_{closed}_total", labels())] == 0
        assert values[("srsd_requests_timed_out_total", labels())] == 0
        assert values[("srsd_connections_open", labels())] == 0
        assert values[("srsd_reloads_total", labels(result="ok"))] == 1
        assert values[("srsd_reloads_total", labels(result="failed"))] == 1
        assert values[("srsd_database_errors_total", labels())] == 0
        assert values[("srsd_database_writes_refused_total", labels())] == 0
        # the latency histogram counts every decision (bad requests are not decisions)
        decided = {"forward": 5, "reverse": 3}
        for name, count in decided.items():
            assert values[("srsd_lookup_duration_seconds_count", labels(map=name))] == count
            buckets = sorted(
                (
                    (float(dict(k[1])["le"]), v)
                    for k, v in values.items()
                    if k[0] == "srsd_lookup_duration_seconds_bucket" and dict(k[1])["map"] == name
                ),
            )
            assert buckets[-1] == (float("inf"), count)
            assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
            assert 0 < values[("srsd_lookup_duration_seconds_sum", labels(map=name))] < count
        assert sum(lookups.values()) - 2 == sum(decided.values())

        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(metrics, "/other")
        assert missing.value.code == 404
        assert "srsd_lookups_total" in scrape(metrics, "/metrics?name=x")[1]
        post = urllib.request.Request(f"http://127.0.0.1:{metrics}/metrics", data=b"x")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=TIMEOUT)
        assert refused.value.code == 405
        assert daemon.stop() == 0


# -- srsd health ------------------------------------------------------------------------------


@contextmanager
def serving(workdir: Path, *args: str) -> Iterator[Daemon]:
    secret = write_secret(workdir / "secret")
    with Daemon(serve_args(workdir, *args, secret=secret), child_env(workdir), workdir) as d:
        d.wait_log("srsd ready: ")
        yield d


def test_health_against_live_servers(tmp_path: Path) -> None:
    port = free_port(count=2)
    sm = free_port()
    unix = tmp_path / "srsd.sock"
    tcp = ("--forward-port", str(port), "--reverse-port", str(port + 1))
    off = ("--forward-port", "0", "--reverse-port", "0")
    mt = free_port()
    milter_unix = tmp_path / "milter.sock"
    with (
        serving(
            tmp_path,
            *tcp,
            "--socketmap",
            f"inet:127.0.0.1:{sm}",
            "--milter",
            f"inet:127.0.0.1:{mt}",
        ),
        serving(tmp_path, *off, "--socketmap", f"unix:{unix}", "--milter", f"unix:{milter_unix}"),
    ):
        cases = {
            "tcp_table only": (
                (*tcp,),
                f"srsd OK: tcp_table 127.0.0.1:{port}/{port + 1}: round trip ok (",
            ),
            "tcp_table and socketmap": (
                (*tcp, "--socketmap", f"inet:127.0.0.1:{sm}"),
                f"srsd OK: tcp_table 127.0.0.1:{port}/{port + 1}: round trip ok; socketmap "
                f"inet:127.0.0.1:{sm}: round trip ok (",
            ),
            "socketmap inet only": (
                (*off, "--socketmap", f"inet:127.0.0.1:{sm}"),
                f"srsd OK: socketmap inet:127.0.0.1:{sm}: round trip ok (",
            ),
            "socketmap unix only": (
                (*off, "--socketmap", f"unix:{unix}"),
                f"srsd OK: socketmap unix:{unix}: round trip ok (",
            ),
            "forward only": (
                ("--forward-port", str(port), "--reverse-port", "0"),
                f"srsd OK: tcp_table 127.0.0.1:{port}/-: forward ok (",
            ),
            "reverse only": (
                ("--forward-port", "0", "--reverse-port", str(port + 1)),
                f"srsd OK: tcp_table 127.0.0.1:-/{port + 1}: reverse ok (",
            ),
            "milter inet, test message aborted": (
                (*off, "--milter", f"inet:127.0.0.1:{mt}"),
                f"srsd OK: milter inet:127.0.0.1:{mt}: negotiated version 6, test message "
                "aborted (",
            ),
            "socketmap and milter on unix sockets": (
                (*off, "--socketmap", f"unix:{unix}", "--milter", f"unix:{milter_unix}"),
                f"srsd OK: socketmap unix:{unix}: round trip ok; milter unix:{milter_unix}: "
                "negotiated version 6, test message aborted (",
            ),
            # a server listening on 0.0.0.0 (the container) is probed on loopback
            "wildcard listen": (
                ("--listen", "0.0.0.0", *tcp),
                f"srsd OK: tcp_table 127.0.0.1:{port}/{port + 1}: round trip",
            ),
        }
        for name, (args, start) in cases.items():
            status, lines, _ = health(tmp_path, *args)
            assert (status, len(lines)) == (0, 1), (name, lines)
            assert lines[0].startswith(start), (name, lines)
            assert lines[0].endswith(" ms)"), (name, lines)


def test_health_against_dead_endpoints(tmp_path: Path) -> None:
    dead = free_port(count=2)
    status, lines, took = health(
        tmp_path, "--forward-port", str(dead), "--reverse-port", str(dead + 1)
    )
    assert (status, len(lines)) == (1, 1), lines
    assert lines[0].startswith(f"srsd CRITICAL: tcp_table 127.0.0.1:{dead}/{dead + 1}: ")
    assert "refused" in lines[0]
    assert took < 5

    status, lines, took = health(
        tmp_path,
        "--forward-port",
        "0",
        "--reverse-port",
        "0",
        "--socketmap",
        f"unix:{tmp_path / 'gone.sock'}",
    )
    assert (status, len(lines)) == (1, 1), lines
    assert lines[0].startswith(f"srsd CRITICAL: socketmap unix:{tmp_path / 'gone.sock'}: ")

    # a milter-only set-up is probed too (it passed with no probe at all)
    off = ("--forward-port", "0", "--reverse-port", "0")
    status, lines, took = health(tmp_path, *off, "--milter", f"inet:127.0.0.1:{dead}")
    assert (status, len(lines)) == (1, 1), lines
    assert lines[0].startswith(f"srsd CRITICAL: milter inet:127.0.0.1:{dead}: "), lines
    # something else answering there (a socketmap server) is not a milter
    with serving(tmp_path, *off, "--socketmap", f"inet:127.0.0.1:{dead}"):
        status, lines, took = health(tmp_path, *off, "--milter", f"inet:127.0.0.1:{dead}")
    assert (status, len(lines)) == (1, 1), lines
    assert lines[0].startswith(f"srsd CRITICAL: milter inet:127.0.0.1:{dead}: "), lines

    # a port that accepts and never answers: the probe time-out bounds the check
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        silent.bind(("127.0.0.1", free_port()))
        silent.listen()
        mute = silent.getsockname()[1]
        status, lines, took = health(
            tmp_path, "--forward-port", str(mute), "--reverse-port", "0", "--probe-timeout", "0.5"
        )
    finally:
        silent.close()
    assert (status, len(lines)) == (1, 1), lines
    assert lines[0].startswith(f"srsd CRITICAL: tcp_table 127.0.0.1:{mute}/-: timed out")
    assert took < 5


# -- JSON logs --------------------------------------------------------------------------------


def test_json_log_lines(tmp_path: Path) -> None:
    port = free_port(count=2)
    args = serve_args(
        tmp_path,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--log-format",
        "json",
    )  # no secret: one is generated
    env = child_env(tmp_path, CHROOT="/var/spool/postsrsd")  # a postsrsd variable: a warning
    started = datetime.now(UTC) - timedelta(seconds=1)
    with Daemon(args, env, tmp_path) as daemon:
        daemon.wait_log('"srsd ready: ')
        secret = (tmp_path / "state" / "secrets").read_bytes().strip()
        srs = forward_ok(port, secret)
        assert lookup(port + 1, forge(srs), timeout=TIMEOUT).startswith(b"500 ")
        evil = b"line\nbreak\x1b[31m@example.org"  # an attacker's bytes, %-encoded on the wire
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            conn.sendall(tcp_table.encode_request(evil))
            assert conn.recv(1000) == b"500 Control%20character%20in%20address\n"
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded")
        assert daemon.stop() == 0
    ended = datetime.now(UTC) + timedelta(seconds=1)
    entries = [json.loads(line) for line in daemon.log().splitlines()]  # every line is JSON
    for entry in entries:
        assert {"time", "level", "pid", "message"} <= entry.keys(), entry
        assert entry["level"] in {"debug", "info", "warning", "error"}
        assert entry["pid"] == daemon.pid
        when = datetime.fromisoformat(entry["time"])
        assert when.utcoffset() == timedelta(0)
        assert started <= when <= ended
    messages = [e["message"] for e in entries]
    levels = {e["message"]: e["level"] for e in entries}
    assert levels["environment CHROOT is not used by srsd; ignored"] == "warning"
    assert levels[f"created a new secret in {tmp_path / 'state' / 'secrets'}"] == "warning"
    assert levels[f"forward <{ALICE.decode()}> rewritten as <{srs.decode()}>"] == "info"
    assert (
        levels[f"reverse <{forge(srs).decode()}> not rewritten: Hash invalid in SRS address."]
        == "info"
    )
    refused = (
        "forward <line\\nbreak\\x1b[31m@example.org> not rewritten: Control character in address"
    )
    assert levels[refused] == "info", messages
    assert any(m.startswith("configuration reloaded: ") for m in messages)
    assert messages[-2:] == ["SIGTERM received: stopping", "stopped after 3 lookup(s)"]


# -- the container image, without a container engine -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "packaging" / "container" / "Containerfile"


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def test_container_image_instructions_work(tmp_path: Path) -> None:
    """What the image would run, run here: ENTRYPOINT with the image's ENV plus what
    `docker run -e` adds, and the HEALTHCHECK command against it. Only the listen address
    differs: the image's 0.0.0.0 becomes 127.0.0.1 for the server (tests stay on loopback),
    while the health check keeps 0.0.0.0 and so probes loopback, as in the container."""
    instructions = containerfile()

    def only(name: str) -> str:
        (value,) = [rest for word, rest in instructions if word == name]
        return value

    assert only("FROM") == "python:3.12-slim"
    assert only("USER") == "srsd:srsd"  # never root
    assert any("--uid 10025" in rest for word, rest in instructions if word == "RUN")
    image_env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            image_env.update(item.split("=", 1) for item in shlex.split(rest))
    assert image_env["SRS_SECRET"] == "/run/secrets/srsd-secrets"
    assert image_env["SRS_LISTEN_ADDR"] == "0.0.0.0"
    assert only("EXPOSE").split() == ["10001", "10002"]
    entrypoint = json.loads(only("ENTRYPOINT"))
    assert entrypoint == ["srsd", "serve"]
    options, _, command = only("HEALTHCHECK").partition(" CMD ")
    healthcheck = json.loads(command)
    assert healthcheck[:2] == ["srsd", "health"]
    readme = (ROOT / "README.md").read_text()
    for shown in (
        "-p 127.0.0.1:10001:10001",
        "-p 127.0.0.1:10002:10002",
        ":/run/secrets/srsd-secrets:ro",
        "chown 10025 ",
    ):
        assert shown in readme, f"README's docker run example lacks {shown}"

    port = free_port(count=2)
    run_env = {
        **image_env,
        **child_env(tmp_path),
        "SRS_SECRET": str(write_secret(tmp_path / "srsd-secrets")),  # the mounted secret
        "SRS_STATE_DIR": str(tmp_path / "state"),
        "SRS_DOMAIN": DOMAIN,  # docker run -e ...
        "SRS_FORWARD_PORT": str(port),
        "SRS_REVERSE_PORT": str(port + 1),
    }
    config = str(empty_config(tmp_path))
    server_argv = [sys.executable, "-m", *entrypoint, "--config", config]
    with Daemon(server_argv, {**run_env, "SRS_LISTEN_ADDR": "127.0.0.1"}, tmp_path) as daemon:
        daemon.wait_log("srsd ready: ")
        srs = forward_ok(port)
        check = subprocess.run(
            [sys.executable, "-m", *healthcheck, "--config", config],
            env=run_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith(f"srsd OK: tcp_table 127.0.0.1:{port}/{port + 1}: ")
        assert "--timeout=" in options
        daemon.signal(signal.SIGHUP)  # docker kill -s HUP
        daemon.wait_log("configuration reloaded")
        assert lookup(port + 1, srs, timeout=TIMEOUT) == b"200 " + ALICE
        assert daemon.stop() == 0  # docker stop
