# The systemd units in packaging/: systemd-analyze verify and security, and their command lines run.
"""``packaging/systemd/*.service|*.socket`` checked by systemd's own tools and exercised.

* ``systemd-analyze verify`` on copies whose ``/usr/local/bin/srsd`` points at the srsd this
  suite runs (verify insists the executable exists); its output must be empty. systemd 252
  prints nothing else for these units here, so nothing is filtered.
* ``systemd-analyze security --offline=yes``: the service's exposure stays "OK".
* The units' settings agree with srsd: socket names are the roles srsd adopts, ports are
  its defaults and those of the Postfix snippet.
* The unit's own ExecStartPre=, ExecStart= (under ``systemd-socket-activate`` with the
  socket units' sockets and names) and ExecReload= command lines run with what systemd
  gives them: ``CREDENTIALS_DIRECTORY``, ``STATE_DIRECTORY``, ``NOTIFY_SOCKET``, the
  EnvironmentFile= (``srsd.env.example``), ``UMask=``, ``NoNewPrivileges=`` and, on
  kernels with ``PR_SET_MDWE`` (6.3+), ``MemoryDenyWriteExecute=`` (the same W^X rule,
  set with prctl). Not emulated here (no systemd as PID 1): ``DynamicUser=`` (so the
  child is told ``SRS_ALLOW_ROOT=yes``), the mount namespace and the system-call filter.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from srsd.config import settings
from srsd.serve import listeners
from srsd.srs.codec import Codec
from tests.harness.daemon import (
    TIMEOUT,
    Daemon,
    NotifySocket,
    activation_argv,
    need_tool,
    proc_status,
    socketmap_query,
    write_secret,
)
from tests.harness.ports import free_port
from tests.harness.srsd_process import SRC, child_env, empty_config, lookup
from tests.harness.units import ROOT, UNITS, Unit, environment_file, one, parse_unit

SERVICE = "srsd.service"
SOCKETS = ("srsd-forward.socket", "srsd-reverse.socket", "srsd-socketmap.socket")
INSTALLED_SRSD = "/usr/local/bin/srsd"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def installed_srsd() -> str:
    """The srsd console script of the Python running the suite (verify wants it to exist)."""
    script = Path(sys.executable).parent / "srsd"
    found = str(script) if script.exists() else shutil.which("srsd")
    if found is None:
        pytest.fail("no srsd console script: pip install -e . first")
    return found


def copy_units(target: Path, *, transform: dict[str, str] | None = None) -> list[Path]:
    copies = []
    for name in (SERVICE, *SOCKETS):
        text = (UNITS / name).read_text().replace(INSTALLED_SRSD, installed_srsd())
        for old, new in (transform or {}).items():
            text = re.sub(old, new, text, flags=re.M)
        (target / name).write_text(text)
        copies.append(target / name)
    return copies


def verify(*paths: Path) -> str:
    """systemd-analyze verify's whole output (and its exit status when not 0)."""
    done = subprocess.run(
        [need_tool("systemd-analyze"), "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=paths[0].parent,
    )
    status = "" if done.returncode == 0 else f"\n(exit status {done.returncode})"
    return (done.stdout + done.stderr).strip() + status


# -- systemd's own checks -----------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = copy_units(tmp_path)
    assert verify(*copies) == ""
    # the commented alternative: a generated secret in the state directory, no credential
    alternative = tmp_path / "alternative"
    alternative.mkdir()
    copies = copy_units(
        alternative,
        transform={r"^LoadCredential=": "#LoadCredential=", r"^#ExecStartPre=": "ExecStartPre="},
    )
    service = parse_unit(alternative / SERVICE)
    assert "LoadCredential" not in service["Service"]
    assert len(service["Service"]["ExecStartPre"]) == 2
    assert verify(*copies) == ""


def test_verify_reports_mistakes(tmp_path: Path) -> None:
    """The empty output above means something: these mistakes all show."""
    copies = copy_units(
        tmp_path,
        transform={
            r"^Type=notify$": "Type=notify-reload",  # systemd 253+, unknown to Debian 12's 252
            r"^FileDescriptorName=forward$": "FileDescriptorName=for:ward",
            r"^ProtectHome=yes$": "ProtectHomes=yes",
            r"^ExecStart=\S+": "ExecStart=/nonexistent/srsd",
        },
    )
    output = verify(*copies)
    for expected in (
        "Failed to parse service type",
        "Invalid file descriptor name",
        "Unknown key 'ProtectHomes'",
        "/nonexistent/srsd is not executable",
    ):
        assert expected in output, output


def test_service_exposure_is_ok(tmp_path: Path) -> None:
    (service,) = [p for p in copy_units(tmp_path) if p.name == SERVICE]
    done = subprocess.run(
        [need_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for srsd\.service: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match[1]) <= 2.0, done.stdout  # 1.4 when written: "OK"
    assert match[2] == "OK"


# -- what the units say -------------------------------------------------------------------------


def test_service_unit_settings() -> None:
    unit = parse_unit(UNITS / SERVICE)
    s = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/sh -c 'kill -HUP $MAINPID'",
        "Restart": "on-failure",
        "EnvironmentFile": "-/etc/default/srsd",
        "SyslogFacility": "mail",
        "LoadCredential": f"{settings.SECRETS_CREDENTIAL}:/etc/srsd/secrets",
        "DynamicUser": "yes",
        "StateDirectory": "srsd",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet": "",
        "ExecStart": f"{INSTALLED_SRSD} serve",
        "ExecStartPre": f"{INSTALLED_SRSD} serve --check",  # the only one: it gets the credential
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert s["SystemCallFilter"][0] == "@system-service"
    # never root: no User=/Group= that could be root, nothing that would make srsd serve as root
    assert "User" not in s
    assert "Group" not in s
    assert not [e for e in s.get("Environment", []) if "SRS_ALLOW_ROOT" in e or "RUN_AS" in e]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_socket_units_match_srsd() -> None:
    snippet = (ROOT / "packaging" / "postfix" / "main.cf.snippet").read_text()
    defaults = {f.key: f.default for f in settings.FIELDS}
    for name, fd_name, listen in (
        ("srsd-forward.socket", "forward", f"127.0.0.1:{defaults['forward_port']}"),
        ("srsd-reverse.socket", "reverse", f"127.0.0.1:{defaults['reverse_port']}"),
        ("srsd-socketmap.socket", "socketmap", "/run/srsd/srsd.sock"),
    ):
        unit = parse_unit(UNITS / name)
        assert one(unit, "Socket", "FileDescriptorName") == fd_name
        assert fd_name in listeners.ACTIVATION_NAMES
        assert one(unit, "Socket", "ListenStream") == listen
        assert one(unit, "Socket", "Service") == SERVICE
        assert one(unit, "Install", "WantedBy") == "sockets.target"
        if fd_name != "socketmap":
            assert f"tcp:{listen}" in snippet
    socketmap = parse_unit(UNITS / "srsd-socketmap.socket")
    assert one(socketmap, "Socket", "SocketMode") == "0660"
    assert one(socketmap, "Socket", "SocketGroup") == "postfix"  # Postfix's daemons may query


# -- the unit's command lines, run as systemd runs them -------------------------------------------

LAUNCHER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(%(nnp)d, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed")
mdwe = libc.prctl(%(mdwe)d, %(refuse)d, 0, 0, 0) == 0
print("launcher: MemoryDenyWriteExecute " + ("on" if mdwe else "unavailable"), file=sys.stderr,
      flush=True)
os.execv(sys.argv[1], sys.argv[1:])
"""


def sandboxed(argv: list[str]) -> list[str]:
    """``argv`` under NoNewPrivileges= and (kernel permitting) MemoryDenyWriteExecute=."""
    code = LAUNCHER % {
        "nnp": PR_SET_NO_NEW_PRIVS,
        "mdwe": PR_SET_MDWE,
        "refuse": PR_MDWE_REFUSE_EXEC_GAIN,
    }
    return [sys.executable, "-c", code, *argv]


def exec_line(unit: Unit, key: str, config: Path) -> list[str]:
    """An Exec*= line of the unit, run with the suite's srsd (and an empty --config, so a
    real /etc/srsd/srsd.toml on this machine cannot change the outcome)."""
    argv = shlex.split(one(unit, "Service", key))
    assert argv[0] == INSTALLED_SRSD
    return [sys.executable, "-m", "srsd", *argv[1:], "--config", str(config)]


def test_unit_command_lines_run_as_systemd_runs_them(tmp_path: Path) -> None:
    service = parse_unit(UNITS / SERVICE)
    sockets = {name: parse_unit(UNITS / name) for name in SOCKETS}
    config = empty_config(tmp_path)
    # what systemd prepares: the state directory, the credential's private copy, NOTIFY_SOCKET
    state = tmp_path / "var-lib-srsd"
    state.mkdir(mode=0o700)
    credential_id, _, _ = one(service, "Service", "LoadCredential").partition(":")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret = b"unit-credential-secret-4242"
    write_secret(credentials / credential_id, secret).chmod(0o400)
    credentials.chmod(0o500)
    notify = NotifySocket(str(tmp_path / "notify"))
    env = {
        **environment_file(),
        "PATH": SYSTEMD_PATH,
        "HOME": "/",
        "SRSD_SYSCONFDIR": os.environ["SRSD_SYSCONFDIR"],  # the suite's empty /etc (conftest)
        "STATE_DIRECTORY": str(state),
        "CREDENTIALS_DIRECTORY": str(credentials),
        "NOTIFY_SOCKET": notify.address,
        "SRS_ALLOW_ROOT": "yes",  # DynamicUser= is never root; this test runs as root
        "PYTHONPATH": str(SRC),
    }
    domain = env["SRS_DOMAIN"].encode()
    umask = int(one(service, "Service", "UMask"), 8)

    check = subprocess.run(
        sandboxed(exec_line(service, "ExecStartPre", config)),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        umask=umask,
    )
    assert check.returncode == 0, check.stderr
    assert f"1 secret(s) from {credentials / credential_id}, " in check.stdout
    if "MemoryDenyWriteExecute unavailable" in check.stderr:
        warnings.warn(
            "kernel without PR_SET_MDWE: MemoryDenyWriteExecute= not emulated", stacklevel=1
        )

    # ExecStart= with the socket units' sockets, on free ports / a temporary path
    forward, reverse = free_port(), free_port()
    unix = tmp_path / "run-srsd" / "srsd.sock"
    unix.parent.mkdir()
    replace = {
        "127.0.0.1:10001": f"127.0.0.1:{forward}",
        "127.0.0.1:10002": f"127.0.0.1:{reverse}",
        "/run/srsd/srsd.sock": str(unix),
    }
    listen = [replace[one(u, "Socket", "ListenStream")] for u in sockets.values()]
    names = [one(u, "Socket", "FileDescriptorName") for u in sockets.values()]
    argv = activation_argv(listen, names, env, exec_line(service, "ExecStart", config))
    daemon = Daemon(sandboxed(argv), env, tmp_path, umask=umask)
    try:
        with daemon:
            daemon.wait_log(f"Listening on {unix} as 5.")
            codec = Codec([secret], domain)
            t0 = time.time()
            reply = lookup(forward, b"alice@example.org", timeout=TIMEOUT)
            assert reply[4:] in {
                codec.forward(b"alice@example.org", t) for t in (t0, time.time())
            }, reply
            lines, sender = notify.receive()
            assert (lines[0], sender) == ("READY=1", daemon.pid)
            assert lookup(reverse, reply[4:], timeout=TIMEOUT) == b"200 alice@example.org"
            assert socketmap_query(str(unix), b"reverse " + reply[4:]) == [b"OK alice@example.org"]
            # excluded by the EnvironmentFile's SRS_EXCLUDE_DOMAINS
            assert lookup(forward, b"bob@example.com", timeout=TIMEOUT).startswith(b"500 ")
            status = proc_status(daemon.pid)
            assert status["NoNewPrivs"] == "1"
            assert status["Umask"] == f"{umask:04o}"

            reload = shlex.split(
                one(service, "Service", "ExecReload").replace("$MAINPID", str(daemon.pid))
            )
            assert subprocess.run(reload, timeout=TIMEOUT).returncode == 0
            assert notify.receive()[0][0] == "RELOADING=1"
            assert notify.receive()[0][0] == "READY=1"
            daemon.signal(signal.SIGTERM)  # KillSignal= (the default)
            assert notify.receive()[0] == ["STOPPING=1"]
            assert daemon.wait_exit() == 0  # a clean stop: Restart=on-failure leaves it
    finally:
        notify.close()
    assert "Traceback" not in daemon.log()


# -- bugs the unit's DynamicUser= met: unreadable places gave tracebacks -------------------------


AS_NOBODY = r"""
# imported before the drop: this python may live in /root, which nobody cannot read
import argparse, gettext, locale, os, shutil, sys
from pathlib import Path
from srsd import cli
from srsd.config import settings
settings.DEFAULT_CONFIG = Path(sys.argv[1])
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(cli.main(sys.argv[2:]))
"""


def run_as_nobody(
    default_config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``srsd ARGS`` as nobody with DEFAULT_CONFIG moved to ``default_config``."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (to switch to nobody): run the suite as root")
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(default_config), *args],
        env=child_env(Path("/"), allow_root=False, **{"PATH": SYSTEMD_PATH, **(env or {})}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd="/",
    )


@pytest.mark.parametrize("command", [["serve"], ["serve", "--check"], ["health"]])
def test_unsearchable_config_directory_is_one_clear_line(
    world_dir: Path, command: list[str]
) -> None:
    """`srsd keygen /etc/srsd/secrets` makes /etc/srsd 0700: the service user cannot even look
    for /etc/srsd/srsd.toml. That was a PermissionError traceback."""
    locked = world_dir / "etc-srsd"
    locked.mkdir(mode=0o700)
    default = locked / "srsd.toml"
    done = run_as_nobody(
        default, *command, "--domain", "forwarder.test", "--secret-file", "/nonexistent"
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"srsd: configuration error: config file {default}: Permission denied\n")


@pytest.mark.parametrize("command", [["serve"], ["serve", "--check"]])
def test_unreadable_credential_is_one_clear_line(world_dir: Path, command: list[str]) -> None:
    """A credentials directory the service user cannot read (seen with systemd 252 run as
    PID 1 of a PID namespace) was a PermissionError traceback."""
    credentials = world_dir / "credentials"
    credentials.mkdir(mode=0o700)
    write_secret(credentials / "srsd-secrets", b"never-read-by-nobody")
    state = world_dir / "state"
    done = run_as_nobody(
        world_dir / "absent.toml",
        *command,
        "--domain",
        "forwarder.test",
        "--state-dir",
        str(state),
        env={"CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert done.returncode == 2, done.stderr
    path = credentials / "srsd-secrets"
    assert done.stderr == (
        f"srsd: configuration error: secrets_file: cannot read {path}: "
        "Permission denied (from systemd credential srsd-secrets); fix its permissions so "
        f"that uid {pwd.getpwnam('nobody').pw_uid} can read it (chown or chmod), and keep it: "
        "bounces to the addresses it signed decode only with it\n"
    )
    assert not state.exists(), "a secret was generated instead of using the credential"
