# The unit's settings files: `srsd health` finds them (no domain, no secret); reload re-reads both.
"""``srsd health`` run from a bare root shell against an srsd started the way the packaged
unit starts it: its ``EnvironmentFile=`` (/etc/default/srsd) or its TOML file
(/etc/srsd/srsd.toml), both moved to temporary paths for the test. The probe needs no
domain and never reads the secret; the caller's environment still wins over the file.
A reload of an srsd that started with the environment file's values reads the file again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from srsd.config import service_env
from srsd.host.systemd import parse_environment_file
from tests.harness.daemon import TIMEOUT, Daemon, write_secret
from tests.harness.ports import free_port
from tests.harness.srsd_process import SRC, child_env, lookup
from tests.harness.units import UNITS, environment_file, one, parse_unit

# srsd health with the unit's environment file and the default TOML file moved.
AS_ROOT_SHELL = r"""
import sys
from pathlib import Path
from srsd import cli
from srsd.config import service_env, settings
settings.DEFAULT_CONFIG = Path(sys.argv[1])
service_env.ENVIRONMENT_FILE = Path(sys.argv[2])
sys.exit(cli.main(["health", *sys.argv[3:]]))
"""


def root_shell_health(
    default_config: Path, env_file: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``srsd health ARGS`` from a shell with nothing of srsd's in its environment."""
    return subprocess.run(
        [sys.executable, "-c", AS_ROOT_SHELL, str(default_config), str(env_file), *args],
        env=child_env(
            Path("/root"), allow_root=False, **{"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd="/",
    )


def serve(workdir: Path, env: dict[str, str], *args: str) -> Daemon:
    """``srsd serve`` with ``env`` (what the unit gives it) and a secret the probe never sees."""
    secret = write_secret(workdir / "unit-secret")
    argv = [sys.executable, "-m", "srsd", "serve", "--secret-file", str(secret), *args]
    return Daemon(argv, child_env(workdir, **env), workdir)


def test_the_unit_reads_the_file_health_reads() -> None:
    unit = parse_unit(UNITS / "srsd.service")
    # srsd's own default, without the suite's SRSD_SYSCONFDIR (tests/conftest.py)
    default = subprocess.run(
        [
            sys.executable,
            "-c",
            "from srsd.config import service_env; print(service_env.ENVIRONMENT_FILE)",
        ],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout.strip()
    assert one(unit, "Service", "EnvironmentFile") == f"-{default}"


def test_health_reads_the_units_environment_file(tmp_path: Path) -> None:
    port = free_port(count=2)
    env_file = tmp_path / "default-srsd"
    example = (UNITS / "srsd.env.example").read_text()
    env_file.write_text(f"{example}\nSRS_FORWARD_PORT={port}\nSRS_REVERSE_PORT={port + 1}\n")
    unit_env = parse_environment_file(env_file.read_text())
    absent = tmp_path / "absent.toml"
    with serve(tmp_path, unit_env, "--config", "/dev/null") as daemon:
        daemon.wait_log("srsd ready: ")
        done = root_shell_health(absent, env_file)
        assert (done.returncode, done.stderr) == (0, ""), done
        assert done.stdout.startswith(
            f"srsd OK: tcp_table 127.0.0.1:{port}/{port + 1}: round trip ok ("
        ), done.stdout
        # what the caller sets explicitly wins over the file
        dead = free_port()
        done = root_shell_health(absent, env_file, SRS_FORWARD_PORT=str(dead))
        assert done.returncode == 1, done
        assert done.stdout.startswith(f"srsd CRITICAL: tcp_table 127.0.0.1:{dead}/{port + 1}: ")
    # without the file, health probes the defaults: the file was what found the server
    done = root_shell_health(absent, tmp_path / "no-such-file")
    assert done.returncode in {0, 1}, done
    assert done.stdout.startswith("srsd ") and f":{port}/" not in done.stdout, done.stdout


def test_health_reads_the_default_toml_file(tmp_path: Path) -> None:
    port = free_port(count=2)
    toml = tmp_path / "srsd.toml"
    toml.write_text(
        f'domain = "forwarder.test"\nforward_port = {port}\nreverse_port = {port + 1}\n'
    )
    toml_without_domain = tmp_path / "probe.toml"
    toml_without_domain.write_text(f"forward_port = {port}\nreverse_port = {port + 1}\n")
    with serve(tmp_path, {}, "--config", str(toml)) as daemon:
        daemon.wait_log("srsd ready: ")
        for default_config in (toml, toml_without_domain):
            done = root_shell_health(default_config, tmp_path / "no-such-file")
            assert (done.returncode, done.stderr) == (0, ""), done
            assert f"tcp_table 127.0.0.1:{port}/{port + 1}: round trip ok" in done.stdout


def test_an_unreadable_environment_file_is_one_clear_line(tmp_path: Path) -> None:
    done = root_shell_health(tmp_path / "absent.toml", tmp_path)  # a directory
    assert done.returncode == 2
    assert done.stderr == (
        f"srsd: configuration error: environment file {tmp_path}: Is a directory\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB = two words \n", {"A": "1", "B": "two words"}),
        ("# A=1\n; B=2\n\n  C=3\nnot a line\n4D=x\n", {"C": "3"}),
        (
            'A="quoted \\"x\\" \\\\ y"\nB=\'single \\\\ kept\'\nC="unbalanced\n',
            {"A": 'quoted "x" \\ y', "B": "single \\\\ kept", "C": '"unbalanced'},
        ),
        ("A=first \\\n  second\nB=x=y\n", {"A": "first   second", "B": "x=y"}),
    ],
)
def test_environment_file_syntax(text: str, expected: dict[str, str]) -> None:
    assert parse_environment_file(text) == expected


def test_environment_file_example_parses_as_the_unit_tests_read_it() -> None:
    example = (UNITS / "srsd.env.example").read_text()
    assert parse_environment_file(example) == environment_file()


# -- a reload re-reads the environment file srsd started with ------------------------------------

SERVE_WITH_ENV_FILE = r"""
import sys
from pathlib import Path
from srsd import cli
from srsd.config import service_env
service_env.ENVIRONMENT_FILE = Path(sys.argv[1])
sys.exit(cli.main(["serve", *sys.argv[2:]]))
"""


def test_reload_environment_follows_the_file_only_when_it_was_in_effect(tmp_path: Path) -> None:
    env_file = tmp_path / "default-srsd"
    env_file.write_text("SRS_DOMAIN=a.example\nSRS_EXCLUDE_DOMAINS=x.example\n")
    started = {"PATH": "/bin", "SRS_DOMAIN": "a.example", "SRS_EXCLUDE_DOMAINS": "x.example"}
    following = service_env.ReloadEnvironment(started, env_file)
    assert following.from_file == {"SRS_DOMAIN", "SRS_EXCLUDE_DOMAINS"}
    env_file.write_text("SRS_DOMAIN=b.example\n")  # edited, one removed
    assert following() == {"PATH": "/bin", "SRS_DOMAIN": "b.example"}
    env_file.unlink()
    assert following() == {"PATH": "/bin"}
    # srsd did not start with the file's values (another unit, a shell): the file is not used
    env_file.write_text("SRS_DOMAIN=a.example\nSRS_EXCLUDE_DOMAINS=other.example\n")
    for unrelated in (
        service_env.ReloadEnvironment(started, env_file),
        service_env.ReloadEnvironment(started, tmp_path / "absent"),
    ):
        assert unrelated.from_file is None
        env_file.write_text("SRS_DOMAIN=c.example\n")
        assert unrelated() == started


def test_reload_applies_an_edited_environment_file(tmp_path: Path) -> None:
    port = free_port(count=2)
    env_file = tmp_path / "default-srsd"
    unit_file = f"SRS_DOMAIN=forwarder.test\nSRS_FORWARD_PORT={port}\nSRS_REVERSE_PORT={port + 1}\n"
    env_file.write_text(unit_file)
    secret = write_secret(tmp_path / "unit-secret")
    argv = [
        sys.executable,
        "-c",
        SERVE_WITH_ENV_FILE,
        str(env_file),
        "--config",
        "/dev/null",
        "--secret-file",
        str(secret),
    ]
    env = child_env(tmp_path, **parse_environment_file(unit_file))  # as systemd gives it
    with Daemon(argv, env, tmp_path) as daemon:
        daemon.wait_log("srsd ready: ")
        assert lookup(port, b"alice@example.org", timeout=TIMEOUT).startswith(b"200 SRS0=")
        env_file.write_text(
            f"{unit_file}SRS_EXCLUDE_DOMAINS=example.org\n".replace(
                f"SRS_FORWARD_PORT={port}", "SRS_FORWARD_PORT=1"
            )
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded")
        assert lookup(port, b"alice@example.org", timeout=TIMEOUT).startswith(b"500 ")
        assert "forward_port changed: restart to apply" in daemon.log()
        assert daemon.stop() == 0
