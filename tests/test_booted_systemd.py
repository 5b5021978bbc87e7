# The packaged units under a real systemd: a fresh Debian 12 root booted with systemd-nspawn.
"""packaging/systemd/README.md, run as written, in a fresh Debian 12 root booted with
``systemd-nspawn -b`` (systemd 252 as PID 1), entered with ``nsenter``.

srsd is installed either documented way before the boot, while the root still has the
host's network: ``sh install.sh`` (a venv in /opt/srsd, linked to /usr/local/bin/srsd; the
README's unit copied to /etc/systemd/system), or the .deb built by
``packaging/debian/build.sh`` from a clean clone (README "Debian package": its own unit with
/usr/bin/srsd, Debian's python3-trio; the domain set as that section says). The root boots
with ``--private-network`` so that the documented default ports (10001/10002) inside
collide with nothing on this host. Then, in order, each README shell block is run as it
stands and what it promises is checked from outside: the unit's status line, the dynamic
user without capabilities, the credential's secret signing lookups, a reload applying a
changed srsd.toml, journal priorities, ``srsd health`` from a bare root shell (TOML and
/etc/default/srsd), secret rotation, socket activation across a restart, the socketmap
socket's permissions, and the way back to srsd binding by itself.

This host's PID 1 is not systemd, so nspawn runs with ``--register=no --keep-unit``. A host
that cannot build or boot the root fails the test with the reason; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from srsd.srs.codec import Codec
from tests.harness import roots

REPO = Path(__file__).resolve().parents[1]
UNIT_README = REPO / "packaging" / "systemd" / "README.md"
README = REPO / "README.md"
INSTALLS = ("install.sh", "deb")  # the two documented ways
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0"
PACKAGES = ("systemd-sysv", "dbus", "python3-venv")  # a bootable root; the venv made offline
SOURCE_INSIDE = "/root/srsd"  # the clone install.sh runs from, as a postmaster's would be
INSTALL_TIMEOUT = 300.0  # pip fetches trio and prometheus-client; apt, python3-trio
BOOT_TIMEOUT = 180.0  # a loaded CI host (2 cores, other suites) boots slowly
STEP_TIMEOUT = 60.0  # one command inside
DOMAIN = "forwarder.example"  # what the README's srsd.toml says
ALICE = "alice@example.org"
SHELL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROBE_PATH = "/usr/local/share/srsd-probe.py"  # readable by every user inside
# Inside the root: tcp_table and socketmap lookups, and a stream of lookups across a restart.
PROBE = r"""
import socket, sys, time

def tcp(port, key):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
        s.sendall(b"get " + key.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()

def socketmap(path, request):
    data = request.encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"%d:%s," % (len(data), data))
        return s.recv(4096).decode()

def stream(port, seconds):
    ok, failures, end = 0, [], time.monotonic() + float(seconds)
    while time.monotonic() < end:
        try:
            reply = tcp(port, "alice@example.org")
            if reply.startswith("200 SRS0="):
                ok += 1
            else:
                failures.append(reply)
        except OSError as err:
            failures.append(str(err))
        time.sleep(0.01)
    return f"{ok} ok, {len(failures)} failed {failures[:3]}"

command, *args = sys.argv[1:]
try:
    print({"tcp": tcp, "socketmap": socketmap, "stream": stream}[command](*args))
except OSError as err:
    print(f"error: {err}")
"""


@dataclass
class Booted:
    """A root booted with systemd, and how to run commands in it."""

    install: str  # one of INSTALLS
    root: Path
    nspawn: subprocess.Popen[bytes]
    leader: int
    log: Path

    def run(self, command: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``sh -c command`` inside, as root, from a bare root shell's environment."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", command],
            env={"PATH": SHELL_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )

    def ok(self, command: str, timeout: float = STEP_TIMEOUT) -> str:
        """Its output; the test fails with everything it printed when it exits non-zero."""
        done = self.run(command, timeout)
        assert done.returncode == 0, (
            f"{command!r} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def tcp(self, port: int, key: str) -> str:
        return self.ok(f"python3 {PROBE_PATH} tcp {port} {key}").strip()

    def main_pid(self) -> int:
        return int(self.ok("systemctl show -p MainPID --value srsd"))

    def active(self, *units: str) -> list[str]:
        return self.run(f"systemctl is-active {' '.join(units)}").stdout.split()


def readme_block(marker: str, readme: Path = UNIT_README) -> str:
    """The one ```sh block of ``readme`` (packaging/systemd/README.md) with ``marker``."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", readme.read_text(), re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def need_host() -> None:
    """Fail (never skip) with the reason this host cannot boot a root."""
    reason = roots.require_roots()
    if reason is None and shutil.which("nsenter") is None:
        reason = "nsenter is not installed (util-linux)"
    if reason is not None:
        pytest.fail(f"the booted-systemd test cannot run here: {reason}")


def copy_checkout(dest: Path) -> None:
    """This checkout's files (tracked and new, not ignored) into ``dest``: the clone."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        pytest.fail(f"not a git checkout, cannot copy the source: {listed.stderr.decode()}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def build_deb(work: Path) -> Path:
    """The .deb that packaging/debian/build.sh builds from a clean clone of this checkout."""
    clone = work / "clone"
    for command in (
        ["git", "clone", "--quiet", str(REPO), str(clone)],
        [str(clone / "packaging/debian/build.sh"), str(work / "dist")],
    ):
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT
        )
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}{done.stderr}"
    (deb,) = (work / "dist").glob("srsd_*_all.deb")
    return deb


def install(root: Path, how: str, work: Path) -> None:
    """srsd into ``root`` the documented way ``how`` (network needed: before the boot)."""
    if how == "install.sh":
        command = f"cd {SOURCE_INSIDE} && sh install.sh"
    else:
        deb = build_deb(work)
        shutil.copyfile(deb, root / "root" / deb.name)
        command = f"{APT} update >/dev/null && cd /root && {APT} install ./{deb.name}"
    done = roots.run_in(root, command, timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    command_path = "usr/local/bin/srsd" if how == "install.sh" else "usr/bin/srsd"
    assert os.path.lexists(root / command_path)  # install.sh's is a link to /opt/srsd


def set_key(toml: Path, key: str, value: str) -> None:
    """``key = value`` in the TOML file: its line replaced, or added."""
    text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", toml.read_text(), flags=re.M)
    toml.write_text(text if count else f"{text}{key} = {value}\n")


def find_leader(nspawn: subprocess.Popen[bytes], log: Path) -> int:
    """The container's PID 1 (host pid): the only child of the nspawn process."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            pytest.fail(f"systemd-nspawn exited ({nspawn.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(FileNotFoundError):
            if kids := children.read_text().split():
                return int(kids[0])
        time.sleep(0.05)
    pytest.fail(f"systemd-nspawn started no init in {BOOT_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def wait_booted(booted: Booted) -> str:
    """Wait until systemd finished booting; its verdict (running or degraded)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        done = booted.run("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT)
        state = done.stdout.strip()
        if state in {"running", "degraded"}:
            return state
        time.sleep(0.2)  # "offline": PID 1 is not systemd yet
    pytest.fail(
        f"the root did not boot in {BOOT_TIMEOUT} s (state {state!r}):\n"
        f"{booted.log.read_text()[-3000:]}"
    )


def poweroff(nspawn: subprocess.Popen[bytes], booted: Booted | None) -> None:
    if booted is not None and nspawn.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            booted.run("systemctl poweroff", timeout=STEP_TIMEOUT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            nspawn.wait(BOOT_TIMEOUT)
    if nspawn.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(nspawn.pid, signal.SIGKILL)
        nspawn.wait(BOOT_TIMEOUT)


@pytest.fixture(scope="module", params=INSTALLS)
def booted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Booted]:
    need_host()
    how: str = request.param
    work = tmp_path_factory.mktemp(f"booted-{how.replace('.', '-')}")
    started = time.monotonic()
    root = roots.fresh_root(work / "root", extra=PACKAGES)
    try:
        copy_checkout(root / SOURCE_INSIDE.lstrip("/"))
        (root / PROBE_PATH.lstrip("/")).write_text(PROBE)
        install(root, how, work)
        (root / "usr/sbin/policy-rc.d").unlink()  # a real host has none
        log = work / "nspawn.log"
        with log.open("wb") as out:
            nspawn = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--quiet",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "-D",
                    str(root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        machine: Booted | None = None
        try:
            machine = Booted(how, root, nspawn, find_leader(nspawn, log), log)
            wait_booted(machine)
            print(
                f"root unpacked, srsd installed ({how}) and booted in "
                f"{time.monotonic() - started:.1f} s"
            )
            yield machine
        finally:
            poweroff(nspawn, machine)
    finally:
        roots.remove_root(root)


# -- the tests, in the README's order: each builds on the state the previous one left ---------


def test_install_steps_start_the_service(booted: Booted) -> None:
    if booted.install == "install.sh":
        steps = readme_block("sh install.sh")
        assert steps.startswith("sh install.sh"), steps  # ran before the boot (it needs PyPI)
        output = booted.ok(f"cd {SOURCE_INSIDE}\n" + steps.partition("\n")[2])
    else:  # the package left the service disabled: no domain yet
        assert booted.active("srsd") == ["inactive"]
        booted.ok(readme_block("sed -i 's/^# domain = ", README))
        output = booted.ok("srsd health")
    assert "srsd OK: tcp_table 127.0.0.1:10001/10002: round trip ok" in output, output
    assert booted.active("srsd") == ["active"]
    status = booted.ok("systemctl show -p StatusText --value srsd").strip()
    assert re.fullmatch(
        r"\d+ lookups, \d+ connections open, \d+ evicted, \d+ refused "
        r"\(limit\), \d+ refused \(user\), 0 failed reloads",
        status,
    ), status
    security = booted.ok("systemd-analyze security --no-pager srsd.service")
    assert re.search(r"Overall exposure level for srsd\.service: \d\.\d OK", security), security


def test_unprivileged_user_without_capabilities(booted: Booted) -> None:
    """The service runs as the system user srsd where install.sh made it (DynamicUser=
    takes a static user of the unit's name), else as a dynamic user; never with privileges."""
    fields = dict(
        line.split(":\t", 1)
        for line in booted.ok(f"cat /proc/{booted.main_pid()}/status").splitlines()
    )
    uids = set(fields["Uid"].split())
    assert len(uids) == 1, fields["Uid"]
    uid = int(uids.pop())
    accounts = {
        entry[0]: int(entry[2])
        for entry in (
            line.split(":") for line in (booted.root / "etc/passwd").read_text().splitlines()
        )
        if len(entry) > 2
    }
    if booted.install == "install.sh":
        assert uid == accounts["srsd"], (uid, accounts.get("srsd"))
    else:  # the .deb makes no account: DynamicUser= allocates one
        assert "srsd" not in accounts and 61184 <= uid <= 65519, fields["Uid"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # SystemCallFilter=


def test_credential_secret_signs_lookups(booted: Booted) -> None:
    secret = (booted.root / "etc/srsd/secrets").read_bytes().split(b"\n")[0]
    t0 = time.time()
    reply = booted.tcp(10001, ALICE)
    signed = {
        Codec([secret], DOMAIN.encode()).forward(ALICE.encode(), t).decode()
        for t in (t0, time.time())
    }
    assert reply.startswith("200 SRS0=") and reply[4:] in signed, (reply, signed)
    check = booted.ok("journalctl -u srsd -o cat --no-pager")
    assert "secret(s) from /run/credentials/srsd.service/srsd-secrets" in check, check
    # the sandbox lets srsd ask the kernel who owns each TCP peer (AF_NETLINK, sock_diag)
    assert "sock_diag netlink is not available" not in check, check
    if booted.install == "install.sh":  # the packaging README's srsd.toml excludes it
        assert booted.tcp(10001, "bob@example.com").startswith("500 ")
    assert booted.tcp(10002, reply[4:]) == f"200 {ALICE}"


def test_reload_applies_a_changed_toml_and_warns_at_warning_priority(booted: Booted) -> None:
    toml = booted.root / "etc/srsd/srsd.toml"
    documented = toml.read_text()
    pid = booted.main_pid()
    set_key(toml, "exclude_domains", '["example.org"]')
    booted.ok("systemctl reload srsd")
    assert booted.tcp(10001, ALICE).startswith("500 "), "the reload did not apply"
    # a change a reload cannot apply: srsd says so, as a warning the journal ranks as one
    set_key(toml, "forward_port", "10011")
    booted.ok("systemctl reload srsd")
    toml.write_text(documented)
    booted.ok("systemctl reload srsd")
    assert booted.main_pid() == pid, "reloaded, not restarted"
    assert booted.tcp(10001, ALICE).startswith("200 SRS0=")
    warnings = booted.ok("journalctl -u srsd -t srsd -p warning -o cat --no-pager")
    assert "WARNING: forward_port changed: restart to apply" in warnings, warnings
    assert "srsd ready" not in warnings  # info lines stay out of -p warning
    entries = [
        json.loads(line)
        for line in booted.ok("journalctl -u srsd -t srsd -o json --no-pager").splitlines()
    ]
    by_priority = {
        e["MESSAGE"].split(":", 1)[0]: e["PRIORITY"] for e in entries if e.get("_PID") == str(pid)
    }
    assert by_priority == {"INFO": "6", "WARNING": "4"}, by_priority
    assert {e["SYSLOG_FACILITY"] for e in entries} == {"2"}  # mail
    assert not [e for e in entries if re.match(r"\d{4}-\d\d-\d\d ", e["MESSAGE"])]  # no time


def test_syslog_lines_carry_the_mail_facility_and_priority(booted: Booted) -> None:
    """``syslog = true``: srsd also writes to /dev/log (journald's syslog socket here)."""
    toml = booted.root / "etc/srsd/srsd.toml"
    documented = toml.read_text()
    try:
        set_key(toml, "syslog", "true")
        booted.ok("systemctl reload srsd")  # logging settings apply on reload
        set_key(toml, "reverse_port", "10012")
        booted.ok("systemctl reload srsd")  # a warning, to syslog as well
        assert booted.tcp(10001, ALICE).startswith("200 SRS0=")  # an info line
    finally:
        toml.write_text(documented)
        booted.ok("systemctl reload srsd")
    entries = [
        json.loads(line)
        for line in booted.ok(
            "journalctl -u srsd _TRANSPORT=syslog -o json --no-pager"
        ).splitlines()
    ]
    seen = {
        (e["SYSLOG_IDENTIFIER"], e["SYSLOG_FACILITY"], e["PRIORITY"], e["MESSAGE"])
        for e in entries
        if isinstance(e["MESSAGE"], str)
    }
    assert ("srsd", "2", "4", "reverse_port changed: restart to apply") in seen, seen
    assert [m for (_, _, p, m) in seen if p == "6" and m.startswith(f"forward <{ALICE}>")]
    assert {e["_PID"] for e in entries} == {str(booted.main_pid())}


def test_health_and_reload_with_the_environment_file(booted: Booted) -> None:
    assert booted.ok("srsd health").startswith("srsd OK: tcp_table 127.0.0.1:10001/10002: ")
    env_file = booted.root / "etc/default/srsd"
    ports = "SRS_FORWARD_PORT=10101\nSRS_REVERSE_PORT=10102\n"
    env_file.write_text(ports)
    try:
        booted.ok("systemctl restart srsd")  # new ports: a restart (README)
        assert booted.ok("srsd health").startswith(
            "srsd OK: tcp_table 127.0.0.1:10101/10102: round trip ok"
        )
        assert booted.tcp(10101, ALICE).startswith("200 SRS0=")
        env_file.write_text(ports + "SRS_EXCLUDE_DOMAINS=example.org\n")
        booted.ok("systemctl reload srsd")  # srsd reads the file again itself
        assert booted.tcp(10101, ALICE).startswith("500 "), "the reload did not apply"
    finally:
        env_file.unlink()
        booted.ok("systemctl restart srsd")
    assert booted.ok("srsd health").startswith("srsd OK: tcp_table 127.0.0.1:10001/10002: ")


def test_secret_rotation_under_the_credential(booted: Booted) -> None:
    secrets = booted.root / "etc/srsd/secrets"
    old_secret = secrets.read_bytes().split(b"\n")[0]
    old_srs = booted.tcp(10001, ALICE)[4:]
    booted.ok(readme_block("secrets.new"))
    first, second = secrets.read_bytes().split(b"\n")[:2]
    assert (second, first != old_secret) == (old_secret, True)  # the old one stays below
    assert secrets.stat().st_mode & 0o777 == 0o600
    t0 = time.time()
    reply = booted.tcp(10001, ALICE)
    assert reply[4:] in {
        Codec([first], DOMAIN.encode()).forward(ALICE.encode(), t).decode()
        for t in (t0, time.time())
    }, "not signed with the new secret"
    assert booted.tcp(10002, old_srs) == f"200 {ALICE}"  # the old secret still verifies


def test_socket_activation_across_a_restart(booted: Booted) -> None:
    booted.ok(f"cd {SOURCE_INSIDE}\n" + readme_block("systemctl enable --now srsd-forward"))
    units = ("srsd", "srsd-forward.socket", "srsd-reverse.socket")
    assert booted.active(*units) == ["inactive", "active", "active"]
    assert booted.tcp(10001, ALICE).startswith("200 SRS0=")  # the first connection starts srsd
    assert booted.active("srsd") == ["active"]
    before = booted.main_pid()
    lookups = subprocess.Popen(
        ["nsenter", "-t", str(booted.leader), "-a", "python3", PROBE_PATH, "stream", "10001", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": SHELL_PATH},
    )
    try:
        time.sleep(1)
        booted.ok("systemctl restart srsd")
        streamed, _ = lookups.communicate(timeout=STEP_TIMEOUT)
    finally:
        if lookups.poll() is None:
            lookups.kill()
            lookups.wait()
    assert booted.main_pid() != before
    match = re.match(r"(\d+) ok, 0 failed", streamed)
    assert match and int(match[1]) > 20, streamed


def test_socketmap_socket_for_the_postfix_group(booted: Booted) -> None:
    toml = booted.root / "etc/srsd/srsd.toml"
    documented = toml.read_text()
    health = booted.ok(f"cd {SOURCE_INSIDE}\n" + readme_block("srsd-socketmap.socket /etc"))
    assert "; socketmap unix:/run/srsd/srsd.sock: round trip ok" in health, health
    assert booted.active("srsd", "srsd-socketmap.socket") == ["active", "active"]
    listing = booted.ok("stat -c '%U %G %a' /run/srsd/srsd.sock").split()
    assert listing == ["root", "postfix", "660"]
    query = f"python3 {PROBE_PATH} socketmap /run/srsd/srsd.sock 'forward alice@example.org'"
    as_postfix = booted.ok(f"setpriv --reuid postfix --regid postfix --init-groups {query}")
    assert re.match(r"\d+:OK SRS0=", as_postfix), as_postfix
    as_nobody = booted.ok(f"setpriv --reuid nobody --regid nogroup --clear-groups {query}")
    assert "Permission denied" in as_nobody, as_nobody
    toml.write_text(documented)  # as the README says, before srsd binds by itself again


def test_back_to_srsd_binding_by_itself(booted: Booted) -> None:
    booted.ok(readme_block("systemctl disable --now srsd-forward"))
    assert booted.active("srsd", "srsd-forward.socket", "srsd-reverse.socket") == [
        "active",
        "inactive",
        "inactive",
    ]
    assert booted.ok("srsd health").startswith("srsd OK: tcp_table 127.0.0.1:10001/10002: ")
