# srsd doctor against a real srsd, a throw-away Postfix per mode and a real DNS server:
# all ✓ when wired by `srsd postfix-config`, each misconfiguration ✗, and its fix turns it ✓.
"""``srsd doctor`` end to end, as a postmaster runs it.

One srsd (tcp_table ports, socketmap and milter), one NSD serving the SRS domain's SPF and
MX, and one throw-away Postfix per mode, wired by piping ``srsd postfix-config --mode M`` into
``sh`` (``MAIL_CONFIG`` = the instance's directory). Each case breaks one thing the way
postmasters do (``postconf -e``, a ``chmod``, a missing setting), checks that doctor reports
it as ✗ with a fix, applies the printed fix exactly (its shell lines through ``sh``, its
settings lines into srsd's settings file) and checks that doctor is all ✓ again. The clock
check reads the real kernel, so it may be ! on a test machine; everything else must be ✓.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from srsd.config import settings
from srsd.doctor import checks_postfix, gather, run
from srsd.doctor.result import FixKind, Result, Status
from tests.harness.dns_server import NsdServer
from tests.harness.mail_flow import SRS_DOMAIN
from tests.harness.ports import free_port
from tests.harness.postfix import PostfixInstance
from tests.harness.srsd_process import SrsdProcess

pytestmark = pytest.mark.postfix

SENDING = "192.0.2.25"
ZONE = (
    f'@ 60 IN TXT "v=spf1 ip4:{SENDING} -all"\n'
    "@ 60 IN MX 10 mx.forwarder.test.\n"
    f"mx 60 IN A {SENDING}\n"
)
HOSTED = "hosted.test"
NOBODY = pwd.getpwnam("nobody").pw_uid
NOBODY_GID = grp.getgrnam("nogroup").gr_gid


class Instance(PostfixInstance):
    """The throw-away instance with a ``local`` service (milter mode's wiring sets its
    ``cleanup_service_name``)."""

    def master_cf(self) -> str:
        return super().master_cf() + f"{'local':<22} {'unix':<10} -   n   n   -      -   local\n"


@dataclass
class Host:
    srsd: SrsdProcess
    postfix: Instance
    config: Path  # srsd's settings file, as doctor reads it
    lines: dict[str, str]
    units: Path  # where doctor looks for srsd.service (empty: no unit installed)

    @property
    def env(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"  # srsd keygen
        return {**os.environ, "MAIL_CONFIG": str(self.postfix.config_dir), "PATH": path}

    def sh(self, text: str) -> None:
        subprocess.run(["sh", "-eu"], input=text, text=True, env=self.env, check=True, timeout=60)

    def write_settings(self, **changed: str) -> None:
        self.config.write_text(
            "".join(f"{k} = {v}\n" for k, v in {**self.lines, **changed}.items())
        )

    def doctor(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, Result]:
        monkeypatch.setenv("MAIL_CONFIG", str(self.postfix.config_dir))
        monkeypatch.setattr(gather, "UNIT_DIRECTORIES", (str(self.units),))  # not the host's
        loaded = settings.load({}, environ={}, config=self.config, need_secrets=False)
        return {r.check: r for r in run.run(loaded, timeout=5.0)}

    def apply(self, result: Result) -> None:
        """Carry out ``result``'s fix as printed."""
        assert result.fix is not None, result
        if result.fix.kind is FixKind.SHELL:
            self.sh("\n".join(result.fix.lines) + "\n")
        elif result.fix.kind is FixKind.SETTINGS:
            for line in result.fix.lines:
                key, _, value = line.partition(" = ")
                self.lines[key] = value.split("   #")[0].strip()
            self.write_settings()
        else:
            raise AssertionError(f"not a fix a test can apply: {result}")

    def wire(self, mode: str) -> None:
        """``srsd postfix-config --mode MODE | sh`` with these settings, then a reload."""
        wiring = subprocess.run(
            [
                sys.executable,
                "-m",
                "srsd",
                "postfix-config",
                "--config",
                str(self.config),
                "--mode",
                mode,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
            timeout=60,
        ).stdout
        self.sh(wiring + "postfix reload\n")


def not_ok(results: dict[str, Result]) -> dict[str, Result]:
    """Every result that is not ✓, the clock aside (it reads this machine's kernel; never ✗)."""
    assert results["clock"].status is not Status.FAIL
    return {k: r for k, r in results.items() if r.status is not Status.OK and k != "clock"}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    with NsdServer(tmp_path_factory.mktemp("nsd"), {SRS_DOMAIN: ZONE}) as server:
        yield server


@pytest.fixture(scope="module")
def srsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SrsdProcess]:
    workdir = tmp_path_factory.mktemp("srsd")
    socketmap, milter = free_port("127.0.0.1"), free_port("127.0.0.1")
    extra = ["--socketmap", f"inet:127.0.0.1:{socketmap}", "--milter", f"inet:127.0.0.1:{milter}"]
    with SrsdProcess(workdir, domain=SRS_DOMAIN, extra_args=extra) as server:
        server.socketmap_port, server.milter_port = socketmap, milter  # type: ignore[attr-defined]
        yield server


def make_host(root: Path, srsd: SrsdProcess, nsd: NsdServer, mode: str) -> Iterator[Host]:
    lines = {
        "domain": f'"{SRS_DOMAIN}"',
        "secrets_file": f'"{srsd.secret_file}"',
        "state_dir": f'"{root / "state"}"',
        "listen": '["127.0.0.1"]',
        "forward_port": str(srsd.forward_port),
        "reverse_port": str(srsd.reverse_port),
        "socketmap": f'"inet:127.0.0.1:{srsd.socketmap_port}"',  # type: ignore[attr-defined]
        "milter": f'"inet:127.0.0.1:{srsd.milter_port}"',  # type: ignore[attr-defined]
        "dns_servers": f'["{nsd.server}"]',
        "sending_addresses": f'["{SENDING}"]',
        "exclude_domains": f'["{HOSTED}"]',
    }
    postfix = Instance(root / "postfix", main_cf={"mydestination": HOSTED})
    with postfix:
        (root / "units").mkdir()
        host = Host(srsd, postfix, root / "srsd.toml", lines, root / "units")
        host.write_settings()
        host.wire(mode)
        yield host


@pytest.fixture(scope="module")
def canonical(
    tmp_path_factory: pytest.TempPathFactory, srsd: SrsdProcess, nsd: NsdServer
) -> Iterator[Host]:
    yield from make_host(tmp_path_factory.mktemp("canonical"), srsd, nsd, "canonical")


@pytest.fixture(scope="module")
def milter(
    tmp_path_factory: pytest.TempPathFactory, srsd: SrsdProcess, nsd: NsdServer
) -> Iterator[Host]:
    yield from make_host(tmp_path_factory.mktemp("milter"), srsd, nsd, "milter")


def test_correct_canonical_host_is_all_ok(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    results = canonical.doctor(monkeypatch)
    assert not_ok(results) == {}
    assert results["postfix-wiring"].summary.endswith("canonical mode")
    expected = {
        "endpoint-forward",
        "endpoint-reverse",
        "endpoint-socketmap",
        "endpoint-milter",
        "secret-private",
        "secret-strength",
        "secret-in-use",
        "bounce-path",
        "exclude-domains",
        "srs-domain",
        "spf",
        "mx",
        "dmarc",
        "postfix:sender_canonical_maps",
        "postfix:recipient_canonical_maps",
    }
    assert expected <= results.keys()


def test_correct_milter_host_is_all_ok(milter: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    results = milter.doctor(monkeypatch)
    assert not_ok(results) == {}
    assert results["postfix-wiring"].summary.endswith("milter mode")
    assert {"postfix:smtpd_milters", "postfix:non_smtpd_milters", "bounce-path"} <= results.keys()


def break_and_fix(
    host: Host, monkeypatch: pytest.MonkeyPatch, breaking: str, failing: set[str]
) -> dict[str, Result]:
    """Break the host with ``breaking`` (shell), expect exactly ``failing`` ✗ (others may be
    !), apply every printed fix, expect all ✓; returns the broken results."""
    host.sh(breaking + "\npostfix reload\n")
    broken = host.doctor(monkeypatch)
    assert {k for k, r in broken.items() if r.status is Status.FAIL} == failing, not_ok(broken)
    for name in sorted(failing):
        host.apply(broken[name])
    fixed = host.doctor(monkeypatch)
    assert not_ok(fixed) == {}, fixed
    return broken


def test_swapped_ports(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    forward, reverse = canonical.srsd.forward_port, canonical.srsd.reverse_port
    broken = break_and_fix(
        canonical,
        monkeypatch,
        f"postconf -e 'sender_canonical_maps = tcp:127.0.0.1:{reverse}' "
        f"'recipient_canonical_maps = tcp:127.0.0.1:{forward}'",
        {"postfix:sender_canonical_maps", "postfix:recipient_canonical_maps", "bounce-path"},
    )
    assert "ports are swapped" in broken["postfix:sender_canonical_maps"].summary


def test_tcp_table_on_the_socketmap_port(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    port = canonical.srsd.socketmap_port  # type: ignore[attr-defined]
    broken = break_and_fix(
        canonical,
        monkeypatch,
        f"postconf -e 'sender_canonical_maps = tcp:127.0.0.1:{port}'",
        {"postfix:sender_canonical_maps"},
    )
    assert "speaks tcp_table to srsd's socketmap" in broken["postfix:sender_canonical_maps"].summary


def test_header_sender_in_the_classes(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = break_and_fix(
        canonical,
        monkeypatch,
        "postconf -e 'sender_canonical_classes = envelope_sender, header_sender'",
        {"postfix:sender_canonical_classes"},
    )
    assert "From:" in broken["postfix:sender_canonical_classes"].summary


def test_missing_exclude_domains(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    canonical.write_settings(exclude_domains="[]")
    broken = canonical.doctor(monkeypatch)
    assert {k for k, r in broken.items() if r.status is Status.FAIL} == {"exclude-domains"}
    assert HOSTED in broken["exclude-domains"].summary
    canonical.lines.pop("exclude_domains")
    canonical.apply(broken["exclude-domains"])
    assert not_ok(canonical.doctor(monkeypatch)) == {}


def test_srs_domain_is_myhostname(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SRS domain as Postfix's own host name. The fix moves srsd to a domain of its own;
    what that needs elsewhere (a restarted srsd, DNS) other cases cover, so only this check
    is asked again, with the fixed settings against the same Postfix."""
    before = canonical.postfix.main_cf()["myhostname"]
    canonical.sh(f"postconf -e 'myhostname = {SRS_DOMAIN}'\npostfix reload\n")
    try:
        broken = canonical.doctor(monkeypatch)
        assert broken["srs-domain"].status is Status.FAIL, broken["srs-domain"]
        fix = broken["srs-domain"]
        assert fix.fix is not None and fix.fix.kind is FixKind.SETTINGS
        saved = dict(canonical.lines)
        canonical.apply(fix)
        loaded = settings.load({}, environ={}, config=canonical.config, need_secrets=False)
        facts = gather.postfix_facts([])
        assert checks_postfix.srs_domain(facts, loaded).status is Status.OK
        canonical.lines = saved
        canonical.write_settings()
    finally:
        canonical.sh(f"postconf -e 'myhostname = {before}'\npostfix reload\n")


def test_secret_open_to_others(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    canonical.srsd.secret_file.chmod(0o644)
    broken = canonical.doctor(monkeypatch)
    assert {k for k, r in broken.items() if r.status is Status.FAIL} == {"secret-private"}
    canonical.apply(broken["secret-private"])
    assert canonical.srsd.secret_file.stat().st_mode & 0o777 == 0o600
    assert not_ok(canonical.doctor(monkeypatch)) == {}


def test_milter_default_action_accept(milter: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    break_and_fix(
        milter,
        monkeypatch,
        "postconf -e 'milter_default_action = accept'",
        {"postfix:milter_default_action"},
    )


def test_milter_pointed_at_a_map_port(milter: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    port = milter.srsd.forward_port
    broken = break_and_fix(
        milter,
        monkeypatch,
        f"postconf -e 'non_smtpd_milters = inet:127.0.0.1:{port}'",
        {"postfix:non_smtpd_milters"},
    )
    assert "tcp_table forward map" in broken["postfix:non_smtpd_milters"].summary


def test_the_command_line_json_and_exit_status(canonical: Host) -> None:
    """``srsd doctor --json`` as a monitoring script runs it: exit 0, every check listed."""
    done = subprocess.run(
        [sys.executable, "-m", "srsd", "doctor", "--config", str(canonical.config), "--json"],
        capture_output=True,
        text=True,
        env=canonical.env,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] is True
    assert {c["check"] for c in report["checks"]} >= {"bounce-path", "spf", "mx"}


def test_a_map_postfix_cannot_reach(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The right port on an address srsd does not listen on (srsd: 127.0.0.1 only)."""
    broken = break_and_fix(
        canonical,
        monkeypatch,
        f"postconf -e 'sender_canonical_maps = tcp:[::1]:{canonical.srsd.forward_port}'",
        {"postfix:sender_canonical_maps"},
    )
    assert "Postfix cannot reach" in broken["postfix:sender_canonical_maps"].summary


def test_a_socket_hidden_by_a_chroot(
    canonical: Host, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """srsd's socketmap socket inside the queue directory, named by its absolute path while a
    cleanup runs chrooted there: that cleanup looks for it under the queue directory a second
    time, and (in this test) the unchrooted smtpd cannot reach it either, because the path
    crosses root's 0700 temporary directory, which Postfix's mail_owner may not traverse:
    doctor tries unix sockets as mail_owner. The fix names the socket relative to the queue
    directory (where Postfix's daemons run), which works chrooted or not."""
    path = canonical.postfix.queue_dir / "srsd" / "srsd.sock"
    path.parent.mkdir()
    saved = dict(canonical.lines)
    with SrsdProcess(
        tmp_path, domain=SRS_DOMAIN, extra_args=["--socketmap", f"unix:{path}"]
    ) as unix:
        canonical.lines.update(
            forward_port=str(unix.forward_port),
            reverse_port=str(unix.reverse_port),
            socketmap=f'"unix:{path}"',
        )
        canonical.write_settings()
        try:
            broken = break_and_fix(
                canonical,
                monkeypatch,
                "postconf -M 'cleanup-chroot/unix=cleanup-chroot unix n - y - 0 cleanup'\n"
                f"postconf -e 'sender_canonical_maps = socketmap:unix:{path}:forward' "
                f"'recipient_canonical_maps = socketmap:unix:{path}:reverse'",
                {
                    "postfix:sender_canonical_maps",
                    "postfix:recipient_canonical_maps",
                    "bounce-path",
                },
            )
            summary = broken["postfix:sender_canonical_maps"].summary
            assert "run chrooted in the queue directory" in summary
            fix = broken["postfix:sender_canonical_maps"].fix
            assert fix is not None and "socketmap:unix:srsd/srsd.sock:forward" in fix.lines[0]
        finally:
            canonical.lines = saved
            canonical.write_settings()
            canonical.sh("postconf -MX cleanup-chroot/unix\n")
            canonical.wire("canonical")
    assert not_ok(canonical.doctor(monkeypatch)) == {}


def test_as_a_user_who_cannot_read_everything(
    canonical: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As nobody (effective uid) nothing crashes, and what it cannot read (the secret, in
    root's 0700 temporary directory) each secret check says."""
    monkeypatch.setenv("MAIL_CONFIG", str(canonical.postfix.config_dir))
    loaded = settings.load({}, environ={}, config=canonical.config, need_secrets=False)
    os.setegid(NOBODY_GID)
    os.seteuid(NOBODY)
    try:
        results = {r.check: r for r in run.run(loaded, timeout=5.0)}
    finally:
        os.seteuid(0)
        os.setegid(0)
    for name in ("secret-private", "secret-strength", "secret-in-use"):
        assert results[name].status is Status.WARN, results[name]
        assert "nobody cannot read" in results[name].summary
    assert results["endpoint-forward"].status is Status.OK
    assert "postfix" in results or "postfix-wiring" in results
    assert results["spf"].status is Status.OK


def test_postfix_not_there(
    canonical: Host, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path / "no-such-directory"))
    loaded = settings.load({}, environ={}, config=canonical.config, need_secrets=False)
    results = {r.check: r for r in run.run(loaded, timeout=5.0)}
    assert results["postfix"].status is Status.FAIL
    assert "postconf failed" in results["postfix"].summary


def failing(results: dict[str, Result]) -> set[str]:
    return {k for k, r in results.items() if r.status is Status.FAIL}


def test_secret_in_use_differs_from_the_file(
    canonical: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secrets file replaced while srsd runs: srsd still signs with the old secret, and
    after its next restart every bounce to an address it handed out before is refused. The
    printed fix is a restart; here (no systemd) the test restarts the srsd process itself."""
    secret = canonical.srsd.secret_file
    before = secret.read_bytes()
    secret.write_bytes(b"another-secret-0123456789abcdefghij\n")
    try:
        broken = canonical.doctor(monkeypatch)
        assert failing(broken) == {"secret-in-use"}, not_ok(broken)
        assert "signs with another secret" in broken["secret-in-use"].summary
        fix = broken["secret-in-use"].fix
        assert fix is not None and fix.lines == ("systemctl restart srsd",)
        canonical.srsd.stop()  # = systemctl restart srsd
        canonical.srsd.start()
        assert not_ok(canonical.doctor(monkeypatch)) == {}
    finally:
        secret.write_bytes(before)
        canonical.srsd.stop()
        canonical.srsd.start()


def test_srsd_down(canonical: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """srsd stopped under a wired Postfix: each endpoint ✗ with 'start srsd', Postfix's
    tables unreachable, the bounce path failing; starting srsd (the printed fix, done here by
    the harness: no systemd) turns it all ✓."""
    canonical.srsd.stop()
    try:
        broken = canonical.doctor(monkeypatch)
        ends = {"endpoint-forward", "endpoint-reverse", "endpoint-socketmap", "endpoint-milter"}
        assert ends | {"bounce-path"} <= failing(broken), not_ok(broken)
        for name in ends:
            assert "no answer from srsd's" in broken[name].summary, broken[name]
            assert "Connection refused" in broken[name].summary
            fix = broken[name].fix
            assert fix is not None and any("systemctl start srsd" in line for line in fix.lines)
        assert "Postfix cannot reach" in broken["postfix:sender_canonical_maps"].summary
        assert broken["secret-in-use"].status is Status.WARN
    finally:
        canonical.srsd.start()
    assert not_ok(canonical.doctor(monkeypatch)) == {}


def test_another_program_holds_srsd_s_port(
    canonical: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """srsd down and another process listening on its forward port: `srsd serve` cannot
    start and names that process; doctor's endpoint check names it too (not 'srsd is down').
    The fix: stop that program, start srsd."""
    port = canonical.srsd.forward_port
    canonical.srsd.stop()
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == "listening\n"
        name = Path(f"/proc/{other.pid}/comm").read_text().strip()  # python or python3
        with pytest.raises(RuntimeError) as start:
            canonical.srsd.start()
        assert (
            f"cannot listen on 127.0.0.1:{port} for tcp_table forward: Address already in use "
            f"(held by {name} (pid {other.pid}, user root))" in str(start.value)
        ), start.value
        # srsd's other endpoints stay down with it; only the held one names a holder.
        broken = canonical.doctor(monkeypatch)
        result = broken["endpoint-forward"]
        assert result.status is Status.FAIL
        assert f"is held by {name} (pid {other.pid}, user root)" in result.summary, result
        assert result.fix is not None and "stop that program" in result.fix.lines[0]
        assert "held by" not in broken["endpoint-reverse"].summary
        other.terminate()  # = stop that program
        other.wait(timeout=10)
    finally:
        other.kill()
        other.wait(timeout=10)
        canonical.srsd.start()  # = start srsd
    assert not_ok(canonical.doctor(monkeypatch)) == {}


#: Another program: listens on the port given, accepts and closes each connection.
HOLDER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""


def test_postfix_not_wired_to_srsd(milter: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """No parameter names srsd: doctor says so and prints what `srsd postfix-config | sh`
    does; running it wires Postfix and doctor is all ✓."""
    broken = break_and_fix(
        milter,
        monkeypatch,
        "postconf -X smtpd_milters non_smtpd_milters",
        {"postfix-wiring"},
    )
    result = broken["postfix-wiring"]
    assert "does not use srsd" in result.summary
    assert result.fix is not None and result.fix.kind is FixKind.SHELL
    assert "srsd postfix-config --mode milter | sh" in result.fix.lines[0]
    assert any(line.startswith("postconf -e") for line in result.fix.lines)
    assert result.fix.lines[-1] == "postfix reload"


@pytest.mark.parametrize(
    ("breaking", "check", "status"),
    [
        # local still hands its mail to cleanup-srs: its forwards are deferred (✗).
        ("postconf -MX cleanup-srs/unix", "postfix:cleanup-srs/unix", Status.FAIL),
        # local uses the common cleanup: its forwards leave unrewritten (!: mail flows).
        (
            "postconf -PX local/unix/cleanup_service_name",
            "postfix:local/unix/cleanup_service_name",
            Status.WARN,
        ),
    ],
)
def test_milter_mode_master_cf_steps(
    milter: Host, monkeypatch: pytest.MonkeyPatch, breaking: str, check: str, status: Status
) -> None:
    """Milter mode's master.cf wiring (local's own cleanup, cleanup-srs, whose
    sender_canonical_maps rewrites local forwards) missing: reported with the postconf
    lines that restore it (with the service, its -o lines); applying them turns it ✓."""
    milter.sh(breaking + "\npostfix reload\n")
    broken = milter.doctor(monkeypatch)
    assert broken[check].status is status, not_ok(broken)
    assert all(name.startswith(check) for name in not_ok(broken)), not_ok(broken)
    for name in not_ok(broken):
        milter.apply(broken[name])
    assert not_ok(milter.doctor(monkeypatch)) == {}


UNIT = Path(__file__).parent.parent / "packaging" / "systemd" / "srsd.service"


def test_the_unit_s_credential_source_missing(
    canonical: Host, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The packaged unit (LoadCredential=srsd-secrets:SOURCE) whose source does not exist:
    systemd would refuse to start srsd with only '243/CREDENTIALS'; doctor says so in
    those words, and its fix (keygen there) turns it ✓. The restart the fix ends with is
    not run (no systemd here)."""
    source = tmp_path / "etc-srsd" / "secrets"
    unit = UNIT.read_text().replace("/etc/srsd/secrets", str(source))
    assert f"LoadCredential=srsd-secrets:{source}" in unit
    (canonical.units / "srsd.service").write_text(unit)
    try:
        broken = canonical.doctor(monkeypatch)
        assert failing(broken) == {"credential-source"}, not_ok(broken)
        result = broken["credential-source"]
        assert f"loads srsd's secret from {source} (LoadCredential=), which does not exist" in (
            result.summary
        )
        assert "243/CREDENTIALS" in result.summary
        assert result.fix is not None and result.fix.lines[-1] == "systemctl restart srsd"
        canonical.sh("\n".join(result.fix.lines[:-1]) + "\n")
        assert source.stat().st_mode & 0o777 == 0o600
        fixed = canonical.doctor(monkeypatch)
        assert fixed["credential-source"].status is Status.OK
        assert not_ok(fixed) == {}
        # A drop-in pointing elsewhere wins over the unit file's line.
        dropin = canonical.units / "srsd.service.d"
        dropin.mkdir()
        (dropin / "secret.conf").write_text(
            f"[Service]\nLoadCredential=\nLoadCredential=srsd-secrets:{tmp_path}/nope\n"
        )
        assert f"{tmp_path}/nope" in canonical.doctor(monkeypatch)["credential-source"].summary
    finally:
        for path in sorted(canonical.units.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
