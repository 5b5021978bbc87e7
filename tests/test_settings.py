# Settings: precedence of defaults < TOML < environment < command line, validation, files.
"""Tests for :mod:`srsd.config.settings`.

Every call passes an explicit ``environ`` so the machine's environment cannot leak in;
``DEFAULT_CONFIG`` lies in the suite's private, empty configuration directory
(``tests/conftest.py``), so a real ``/etc/srsd/srsd.toml`` cannot change the results.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_h
from hypothesis import strategies as st

from srsd.config import render, settings
from srsd.config.settings import ConfigError
from srsd.envelope import EnvelopeMode
from srsd.envelope.location import RedisTarget, SQLiteLocation
from srsd.srs.codec import Alphabet, BadHash, Codec, Expired, day_stamp
from srsd.srs.policy import DomainSet, Outcome

DOMAIN = "forwarder.example.net"
SECRET = b"s3cr3t-for-settings"
NOW = 1_577_836_860.0  # 2020-01-01 00:01:00 UTC
DAY = 86400


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    return write_secret(tmp_path / "srsd.secret", SECRET + b"\n")


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def base_cli(secret: Path) -> dict[str, object]:
    return {"domain": DOMAIN, "secrets_file": str(secret)}


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        settings.load(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- defaults and precedence -----------------------------------------------------------------


def test_defaults(secret: Path) -> None:
    s = settings.load(base_cli(secret), environ={})
    assert s.domain == DOMAIN
    assert s.secrets_file == secret
    assert s.secrets == (SECRET,)
    assert s.exclude_domains == ()
    assert s.exclude_file is None
    assert len(s.excluded) == 0
    assert s.separator == "="
    assert (s.hash_length, s.hash_min, s.max_age) == (4, 4, 21)
    assert s.hash_alphabet is Alphabet.BASE64URL
    assert s.listen == ("127.0.0.1",)
    assert (s.forward_port, s.reverse_port) == (10001, 10002)
    assert (s.socketmap, s.socketmap_mode, s.socketmap_owner) == (None, 0o666, None)
    assert s.metrics_listen is None
    assert s.envelope_database == SQLiteLocation(Path("envelopes.sqlite"))
    assert s.keep_alive == 30.0
    assert s.idle_timeout == 1800.0
    assert (s.max_connections, s.max_request) == (1000, 4096)
    assert s.shutdown_grace == 10.0
    assert (s.log_level, s.syslog, s.run_as) == ("info", False, None)
    assert s.config_file is None
    assert s.warnings == ()


def test_toml_beats_defaults(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", 'separator = "+"\nhash_length = 6\n')
    s = settings.load(base_cli(secret), environ={}, config=toml)
    assert (s.separator, s.hash_length) == ("+", 6)
    assert s.hash_min == 4  # not in the file: still the default
    assert s.config_file == toml
    # The winning source is the one an invalid value is blamed on.
    bad = write_toml(tmp_path / "bad.toml", 'separator = "*"\n')
    message = config_error(cli=base_cli(secret), environ={}, config=bad)
    assert message.startswith("separator:")
    assert f"(from config file {bad})" in message


def test_environment_beats_toml(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", 'separator = "+"\nhash_length = 6\nmax_age = 9\n')
    environ = {"SRS_SEPARATOR": "-", "SRS_HASHLENGTH": "8"}
    s = settings.load(base_cli(secret), environ=environ, config=toml)
    assert (s.separator, s.hash_length, s.max_age) == ("-", 8, 9)
    message = config_error(cli=base_cli(secret), environ={"SRS_HASHLENGTH": "x"}, config=toml)
    assert message.startswith("hash_length:")
    assert "(from environment SRS_HASHLENGTH)" in message


def test_command_line_beats_environment(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", 'domain = "toml.example"\nseparator = "+"\n')
    environ = {"SRS_DOMAIN": "env.example", "SRS_SEPARATOR": "-", "SRS_HASHLENGTH": "8"}
    cli = {
        "domain": "cli.example",
        "secrets_file": str(secret),
        "separator": "=",
        "hash_length": None,
    }
    s = settings.load(cli, environ=environ, config=toml)
    assert (s.domain, s.separator) == ("cli.example", "=")
    assert s.hash_length == 8  # None means "not given on the command line"
    message = config_error(cli={**cli, "hash_length": "0"}, environ=environ, config=toml)
    assert message.startswith("hash_length:")
    assert "(from command line --hash-length)" in message


def test_first_environment_name_wins(tmp_path: Path, secret: Path) -> None:
    environ = {"SRS_STATE_DIR": str(tmp_path / "a"), "STATE_DIRECTORY": str(tmp_path / "b")}
    assert settings.load(base_cli(secret), environ=environ).state_dir == tmp_path / "a"
    environ = {"STATE_DIRECTORY": str(tmp_path / "b")}  # systemd's StateDirectory=
    assert settings.load(base_cli(secret), environ=environ).state_dir == tmp_path / "b"


def test_command_line_values_as_argparse_gives_them(secret: Path) -> None:
    cli = {
        **base_cli(secret),
        "exclude_domains": ["a.example", ".B.example"],
        "listen": ["[::1]", "127.0.0.2"],
        "syslog": "yes",
        "hash_length": "6",
        "hash_min": "5",
        "idle_timeout": "2.5",
        "hash_alphabet": "base64",
    }
    s = settings.load(cli, environ={})
    assert s.exclude_domains == ("a.example", ".B.example")
    assert b"x.b.example" in s.excluded
    assert s.listen == ("::1", "127.0.0.2")
    assert s.syslog is True
    assert (s.hash_length, s.hash_min, s.idle_timeout) == (6, 5, 2.5)
    assert s.hash_alphabet is Alphabet.BASE64


def test_default_config_file_read_only_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: Path
) -> None:
    default = write_toml(tmp_path / "default.toml", "hash_length = 7\n")
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", default)
    s = settings.load(base_cli(secret), environ={})
    assert (s.config_file, s.hash_length) == (default, 7)
    explicit = write_toml(tmp_path / "explicit.toml", "hash_min = 2\n")
    s = settings.load(base_cli(secret), environ={}, config=explicit)
    assert (s.config_file, s.hash_length, s.hash_min) == (explicit, 4, 2)


# -- errors name the key and the source ------------------------------------------------------


def test_unknown_toml_key(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", "hash_lenght = 5\n")
    message = config_error(cli=base_cli(secret), environ={}, config=toml)
    assert message == f"hash_lenght: unknown setting (from config file {toml})"
    toml = write_toml(tmp_path / "table.toml", "[server]\nlisten = ['::1']\n")
    assert config_error(cli=base_cli(secret), environ={}, config=toml).startswith("server:")


def test_invalid_toml_syntax(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", 'domain = "unterminated\n')
    message = config_error(cli=base_cli(secret), environ={}, config=toml)
    assert message.startswith(f"config file {toml}:")


def test_missing_explicit_config_file(tmp_path: Path, secret: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(cli=base_cli(secret), environ={}, config=missing)
    assert message.startswith(f"config file {missing}:")
    assert "No such file" in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("hash_length = true", "hash_length"),
        ("hash_length = 4.5", "hash_length"),
        ('domain = ["a.example"]', "domain"),
        ("domain = 5", "domain"),
        ('syslog = "maybe"', "syslog"),
        ('log_level = "verbose"', "log_level"),
        ('hash_alphabet = "base32"', "hash_alphabet"),
        ("idle_timeout = 0", "idle_timeout"),
        ("max_request = 100", "max_request"),
        ("listen = []", "listen"),
        ('exclude_domains = ["ok.example", "not a domain"]', "exclude_domains"),
    ],
)
def test_wrong_toml_values(tmp_path: Path, secret: Path, toml: str, key: str) -> None:
    path = write_toml(tmp_path / "srsd.toml", toml + "\n")
    message = config_error(cli=base_cli(secret), environ={}, config=path)
    assert message.startswith(f"{key}:")
    assert message.endswith(f"(from config file {path})")


@pytest.mark.parametrize("value", ["*", "==", "x", "SRS"])
def test_bad_separator(secret: Path, value: str) -> None:
    message = config_error(cli=base_cli(secret), environ={"SRS_SEPARATOR": value})
    assert message.startswith("separator: must be one of = + -")
    assert message.endswith("(from environment SRS_SEPARATOR)")


@pytest.mark.parametrize("value", ["0", "21", "-1"])
def test_hash_length_outside_1_to_20(secret: Path, value: str) -> None:
    message = config_error(cli={**base_cli(secret), "hash_length": value}, environ={})
    assert message.startswith("hash_length: must be between 1 and 20")
    assert message.endswith("(from command line --hash-length)")


@pytest.mark.parametrize("length", [1, 20])
def test_hash_length_limits_accepted(secret: Path, length: int) -> None:
    cli = {**base_cli(secret), "hash_length": str(length), "hash_min": "1"}
    s = settings.load(cli, environ={})
    assert s.hash_length == length
    srs = s.codec().forward(b"user@example.org", NOW)
    assert len(srs.split(b"=")[1]) == length


def test_hash_min_more_than_hash_length(tmp_path: Path, secret: Path) -> None:
    toml = write_toml(tmp_path / "srsd.toml", "hash_length = 3\n")
    message = config_error(cli=base_cli(secret), environ={"SRS_HASHMIN": "5"}, config=toml)
    assert message == "hash_min: 5 is more than hash_length 3 (from environment SRS_HASHMIN)"
    s = settings.load(base_cli(secret), environ={"SRS_HASHMIN": "3"}, config=toml)
    assert (s.hash_length, s.hash_min) == (3, 3)


def test_srs_domain_missing(secret: Path) -> None:
    message = config_error(cli={"secrets_file": str(secret)}, environ={})
    assert message.startswith("domain: the SRS domain is not set")
    assert "--domain" in message
    assert "SRS_DOMAIN" in message


@pytest.mark.parametrize(
    "value",
    [
        "localhost",
        "net",
        "-bad.example",
        "exa mple.com",
        "user@example.com",
        "example.com.",
        "b\u00fccher.example",
        "a..example",
        "$myhostname",
    ],
)
def test_srs_domain_not_a_domain_name(secret: Path, value: str) -> None:
    message = config_error(cli={"secrets_file": str(secret)}, environ={"SRS_DOMAIN": value})
    assert message.startswith("domain: not a fully qualified domain name")
    assert message.endswith("(from environment SRS_DOMAIN)")


def test_srs_domain_lower_cased_and_stripped(secret: Path) -> None:
    s = settings.load({"secrets_file": str(secret)}, environ={"SRS_DOMAIN": " Fw.EXAMPLE.Net\n"})
    assert s.domain == "fw.example.net"
    assert s.codec().domain == b"fw.example.net"


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("SRS_FORWARD_PORT", "forward_port", "65536"),
        ("SRS_FORWARD_PORT", "forward_port", "-1"),
        ("SRS_REVERSE_PORT", "reverse_port", "postsrsd-reverse"),
    ],
)
def test_bad_port(secret: Path, name: str, key: str, value: str) -> None:
    message = config_error(cli=base_cli(secret), environ={name: value})
    assert message.startswith(f"{key}:")
    assert message.endswith(f"(from environment {name})")


@pytest.mark.parametrize(
    "name",
    [
        "SRS_SEPARATOR",
        "SRS_REVERSE_PORT",
        "SRS_LISTEN_ADDR",
        "SRS_HASHLENGTH",
        "SRS_EXCLUDE_DOMAINS",
    ],
)
def test_empty_environment_variable_means_unset(secret: Path, name: str) -> None:
    # An env file line "SRS_LISTEN_ADDR=" leaves the default, as postsrsd's launcher does.
    s = settings.load(base_cli(secret), environ={name: "  "})
    field = next(f for f in settings.FIELDS if name in f.env)
    assert getattr(s, field.key) == field.default


def test_empty_domain_variable_is_a_missing_domain(secret: Path) -> None:
    message = config_error(cli={"secrets_file": str(secret)}, environ={"SRS_DOMAIN": ""})
    assert message.startswith("domain: the SRS domain is not set")


@pytest.mark.parametrize("name", ["SRS_HASHLENGTH", "SRS_HASHMIN"])
def test_postsrsd_zero_hash_lengths_are_ignored(secret: Path, name: str) -> None:
    s = settings.load(base_cli(secret), environ={name: "0"})
    assert (s.hash_length, s.hash_min) == (4, 4)


def test_short_hash_length_lowers_the_default_hash_min(secret: Path) -> None:
    s = settings.load({**base_cli(secret), "hash_length": "2"}, environ={})
    assert (s.hash_length, s.hash_min) == (2, 2)
    message = config_error(
        cli={**base_cli(secret), "hash_length": "2", "hash_min": "3"}, environ={}
    )
    assert message.startswith("hash_min: 3 is more than hash_length 2")


def test_port_zero_turns_a_table_off(secret: Path) -> None:
    s = settings.load(base_cli(secret), environ={"SRS_REVERSE_PORT": "0"})
    assert (s.forward_port, s.reverse_port) == (10001, 0)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("SRS_HASHLENGTH", "hash_length", "four"),
        ("SRS_HASHMIN", "hash_min", "4.0"),
        ("SRS_MAX_AGE", "max_age", "1.5"),
        ("SRS_MAX_AGE", "max_age", "366"),
        ("SRS_TIMEOUT", "idle_timeout", "soon"),
        ("SRS_TIMEOUT", "idle_timeout", "-5"),
        ("SRS_TIMEOUT", "idle_timeout", "nan"),
        ("SRS_MAX_CONNECTIONS", "max_connections", "0"),
        ("SRS_SHUTDOWN_GRACE", "shutdown_grace", "inf"),
        ("SRS_SYSLOG", "syslog", "sometimes"),
    ],
)
def test_bad_number_in_environment(secret: Path, name: str, key: str, value: str) -> None:
    message = config_error(cli=base_cli(secret), environ={name: value})
    assert message.startswith(f"{key}:")
    assert repr(value) in message or value in message
    assert message.endswith(f"(from environment {name})")


# -- the secrets file ------------------------------------------------------------------------


def test_secrets_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no.secret"
    message = config_error(cli={"domain": DOMAIN, "secrets_file": str(missing)}, environ={})
    assert message.startswith(f"secrets_file: cannot read {missing}")
    assert "(from command line --secret-file)" in message
    assert f"srsd keygen {missing}" in message


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n\r\n\r\n", b"\r"])
def test_secrets_file_without_a_secret(tmp_path: Path, data: bytes) -> None:
    path = write_secret(tmp_path / "empty.secret", data)
    message = config_error(cli={"domain": DOMAIN}, environ={"SRS_SECRET": str(path)})
    assert message == f"secrets_file: {path} holds no secret (from environment SRS_SECRET)"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secrets_file_readable_by_others_warns(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "open.secret", SECRET + b"\n", mode)
    s = settings.load({"domain": DOMAIN, "secrets_file": str(path)}, environ={})
    assert s.secrets == (SECRET,)
    [warning] = s.warnings
    assert str(path) in warning
    assert f"{mode:04o}" in warning
    assert "chmod 600" in warning


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_secrets_file_does_not_warn(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "private.secret", SECRET + b"\n", mode)
    assert settings.load({"domain": DOMAIN, "secrets_file": str(path)}, environ={}).warnings == ()


@pytest.mark.parametrize(
    ("data", "secrets"),
    [
        (b"first\nsecond\nthird\n", (b"first", b"second", b"third")),
        (b"one\r\ntwo\r\n", (b"one", b"two")),
        (b"\n\nafter-blank\n\n\nlast-without-newline", (b"after-blank", b"last-without-newline")),
        (b"# not a comment\nreal\n", (b"# not a comment", b"real")),
        (b"  spaced secret \t\r\n", (b"  spaced secret \t",)),
        (b"caf\xe9\xff\n", (b"caf\xe9\xff",)),
        (b"old-mac\rline\n", (b"old-mac", b"line")),  # postsrsd cuts at \r too
    ],
)
def test_secrets_file_lines(tmp_path: Path, data: bytes, secrets: tuple[bytes, ...]) -> None:
    path = write_secret(tmp_path / "srsd.secret", data)
    s = settings.load({"domain": DOMAIN, "secrets_file": str(path)}, environ={})
    assert s.secrets == secrets


def test_first_secret_signs_every_secret_verifies(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "srsd.secret", b"new\nold\n")
    s = settings.load({"domain": DOMAIN, "secrets_file": str(path)}, environ={})
    srs = s.codec().forward(b"user@example.org", NOW)
    assert srs == Codec([b"new"], DOMAIN.encode()).forward(b"user@example.org", NOW)
    by_old = Codec([b"old"], DOMAIN.encode()).forward(b"user@example.org", NOW)
    assert by_old != srs
    assert s.codec().reverse(by_old, NOW) == b"user@example.org"
    by_other = Codec([b"other"], DOMAIN.encode()).forward(b"user@example.org", NOW)
    with pytest.raises(BadHash):
        s.codec().reverse(by_other, NOW)


# -- state directory and the generated secret ------------------------------------------------


def test_default_state_dir_as_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings.os, "geteuid", lambda: 0)
    secret = write_secret(tmp_path / "srsd.secret", SECRET)
    s = settings.load(base_cli(secret), environ={"XDG_STATE_HOME": str(tmp_path)})
    assert s.state_dir == Path("/var/lib/srsd")
    assert s.secrets_file == secret  # configured explicitly: not STATE_DIR/secrets


def test_default_state_dir_and_secrets_path_for_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(settings.os, "geteuid", lambda: 1000)
    state = tmp_path / "xdg" / "srsd"
    state.mkdir(parents=True)
    write_secret(state / "secrets", SECRET)
    # XDG_STATE_HOME and HOME come from the environ given to load(), not from os.environ
    # (regression: they used to be read from os.environ).
    environ = {"SRS_DOMAIN": DOMAIN, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    s = settings.load(None, environ=environ)
    assert (s.state_dir, s.secrets_file, s.secrets) == (state, state / "secrets", (SECRET,))
    home_state = tmp_path / "home" / ".local" / "state" / "srsd"
    home_state.mkdir(parents=True)
    write_secret(home_state / "secrets", b"from-home")
    s = settings.load(None, environ={"SRS_DOMAIN": DOMAIN, "HOME": str(tmp_path / "home")})
    assert (s.state_dir, s.secrets) == (home_state, (b"from-home",))


def test_configured_state_dir_holds_the_secrets(tmp_path: Path) -> None:
    write_secret(tmp_path / "secrets", SECRET)
    s = settings.load({"domain": DOMAIN, "state_dir": str(tmp_path)}, environ={})
    assert (s.state_dir, s.secrets_file, s.secrets) == (tmp_path, tmp_path / "secrets", (SECRET,))


def test_missing_default_secret_is_an_error_without_create(tmp_path: Path) -> None:
    state = tmp_path / "state"
    message = config_error(cli={"domain": DOMAIN, "state_dir": str(state)}, environ={})
    assert message.startswith(f"secrets_file: cannot read {state / 'secrets'}")
    assert f"srsd keygen {state / 'secrets'}" in message
    assert not state.exists()


def test_create_secret_writes_state_dir_secrets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cli = {"domain": DOMAIN, "state_dir": str(state)}
    s = settings.load(cli, environ={}, create_secret=True)
    path = state / "secrets"
    assert s.secrets_file == path
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    [line] = path.read_bytes().splitlines()
    assert len(line) >= 24
    assert s.secrets == (line,)
    assert s.warnings == (f"created a new secret in {path}",)
    # A second start keeps the secret it made the first time.
    again = settings.load(cli, environ={}, create_secret=True)
    assert again.secrets == (line,)
    assert again.warnings == ()


def test_system_secret_is_the_default_when_readable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A host set up for the units (/etc/srsd/secrets) signs with that secret when srsd runs
    by hand: no second, different secret in STATE_DIR; a credential still comes first."""
    system = write_secret(tmp_path / "etc-srsd-secrets", b"the-service-secret")
    monkeypatch.setattr(settings, "SYSTEM_SECRETS", system)
    state = tmp_path / "state"
    cli = {"domain": DOMAIN, "state_dir": str(state)}
    s = settings.load(cli, environ={}, create_secret=True)
    assert (s.secrets_file, s.secrets, s.sources["secrets_file"]) == (
        system,
        (b"the-service-secret",),
        "default",
    )
    assert not state.exists()  # nothing generated
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_secret(credentials / settings.SECRETS_CREDENTIAL, b"from-the-credential")
    s = settings.load(cli, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert s.secrets == (b"from-the-credential",)
    monkeypatch.setattr(settings, "SYSTEM_SECRETS", tmp_path / "absent")
    s = settings.load(cli, environ={}, create_secret=True)
    assert s.secrets_file == state / "secrets"


_HOST_PATHS = (
    "from srsd.config import service_env, settings;"
    "print(settings.DEFAULT_CONFIG, settings.SYSTEM_SECRETS, service_env.ENVIRONMENT_FILE)"
)


@pytest.mark.parametrize(
    ("sysconfdir", "expected"),
    [
        (None, "/etc/srsd/srsd.toml /etc/srsd/secrets /etc/default/srsd"),
        ("/opt/etc", "/opt/etc/srsd/srsd.toml /opt/etc/srsd/secrets /opt/etc/default/srsd"),
    ],
)
def test_the_host_configuration_is_in_etc_unless_srsd_sysconfdir_moves_it(
    sysconfdir: str | None, expected: str
) -> None:
    """srsd's own defaults are /etc's; ``SRSD_SYSCONFDIR`` moves all three (the suite's
    conftest points it at an empty directory, so the host's files never count)."""
    src = str(Path(settings.__file__).resolve().parents[2])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": src}
    if sysconfdir is not None:
        env["SRSD_SYSCONFDIR"] = sysconfdir
    done = subprocess.run(
        [sys.executable, "-c", _HOST_PATHS], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == expected.split()


def test_the_suite_never_sees_the_hosts_configuration() -> None:
    private = Path(os.environ["SRSD_SYSCONFDIR"])
    assert private != Path("/etc") and not any(private.iterdir())
    assert private / "srsd" / "srsd.toml" == settings.DEFAULT_CONFIG
    assert private / "srsd" / "secrets" == settings.SYSTEM_SECRETS
    names = {name for field in settings.FIELDS for name in field.env}
    assert {n for n in os.environ if n in names} == {"SRS_ALLOW_ROOT"}
    assert "CREDENTIALS_DIRECTORY" not in os.environ


@pytest.mark.parametrize("hidden", [False, True], ids=["file-0600", "directory-0700"])
def test_an_unreadable_system_secret_is_an_error_never_another_secret(
    tmp_path: Path, hidden: bool
) -> None:
    """A user who cannot read a root-only /etc/srsd/secrets, or cannot even look into a
    root-only /etc/srsd, is told so; srsd never falls back to another secret (after run_as, a
    reload would switch secrets quietly). Checked in a child running as nobody, with Debian's
    python3 and a copy of the sources in a directory nobody can reach (the checkout may be
    root-only)."""
    place = Path(tempfile.mkdtemp(prefix="srsd-nobody-"))
    try:
        place.chmod(0o755)
        shutil.copytree(Path(settings.__file__).parent.parent, place / "srsd")
        etc = place / "etc"
        etc.mkdir(mode=0o700 if hidden else 0o755)
        system = write_secret(etc / "system-secrets", b"root-only")
        state = place / "nobody-state"
        state.mkdir()
        write_secret(state / "secrets", b"nobody-secret")
        for path in (state, state / "secrets"):
            shutil.chown(path, "nobody")
        child = (
            "from pathlib import Path; from srsd.config import settings;"
            f"settings.SYSTEM_SECRETS = Path({str(system)!r});"
            f"s = settings.load({{'domain': {DOMAIN!r}, 'state_dir': {str(state)!r}}},"
            " environ={});"
            "print(s.secrets_file)"
        )
        out = subprocess.run(
            ["/usr/bin/python3", "-c", child],
            env={
                "PYTHONPATH": str(place),
                "PATH": "/usr/bin:/bin",
                "SRSD_SYSCONFDIR": os.environ["SRSD_SYSCONFDIR"],
            },
            user="nobody",
            group="nogroup",
            extra_groups=[],
            cwd=place,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, (out.stdout, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(
            "srsd.config.settings.ConfigError: secrets_file: "
            f"cannot read {system}: Permission denied"
        ), out.stderr
    finally:
        shutil.rmtree(place)


def test_create_secret_never_creates_a_configured_secrets_file(tmp_path: Path) -> None:
    missing = tmp_path / "configured.secret"
    cli = {"domain": DOMAIN, "secrets_file": str(missing), "state_dir": str(tmp_path / "state")}
    message = config_error(cli=cli, environ={}, create_secret=True)
    assert message.startswith(f"secrets_file: cannot read {missing}")
    assert not missing.exists()
    assert not (tmp_path / "state").exists()


def test_write_new_secret_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "secret", b"keep\n", 0o644)
    with pytest.raises(FileExistsError):
        settings.write_new_secret(path)
    assert path.read_bytes() == b"keep\n"
    settings.write_new_secret(path, force=True)
    assert path.read_bytes() != b"keep\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


# -- postsrsd 1.x environment names ----------------------------------------------------------


def test_postsrsd_environment_names(tmp_path: Path, secret: Path) -> None:
    environ = {
        "SRS_DOMAIN": "Forwarder.Example.NET",
        "SRS_EXCLUDE_DOMAINS": "example.net,.lists.example.net",
        "SRS_SECRET": str(secret),
        "SRS_SEPARATOR": "+",
        "SRS_HASHLENGTH": "6",
        "SRS_HASHMIN": "5",
        "SRS_FORWARD_PORT": "20001",
        "SRS_REVERSE_PORT": "20002",
        "SRS_LISTEN_ADDR": "127.0.0.2",
        "SRS_TIMEOUT": "300",
        "RUN_AS": "postsrsd",
    }
    s = settings.load(None, environ=environ)
    assert s.domain == "forwarder.example.net"
    assert s.exclude_domains == ("example.net", ".lists.example.net")
    assert (s.secrets_file, s.secrets) == (secret, (SECRET,))
    assert (s.separator, s.hash_length, s.hash_min) == ("+", 6, 5)
    assert (s.forward_port, s.reverse_port) == (20001, 20002)
    assert s.listen == ("127.0.0.2",)
    assert s.idle_timeout == 300.0
    assert s.run_as == "postsrsd"
    assert s.warnings == ()


def test_exclude_domains_split_on_commas_semicolons_and_white_space(secret: Path) -> None:
    value = " a.example,b.example;c.example d.example\te.example\n.f.example\r\n,, ;g.example "
    s = settings.load(base_cli(secret), environ={"SRS_EXCLUDE_DOMAINS": value})
    assert s.exclude_domains == (
        "a.example",
        "b.example",
        "c.example",
        "d.example",
        "e.example",
        ".f.example",
        "g.example",
    )
    assert (
        settings.load(base_cli(secret), environ={"SRS_EXCLUDE_DOMAINS": ""}).excluded.entries()
        == []
    )


def test_exclude_domains_invalid_entry_names_the_variable(secret: Path) -> None:
    environ = {"SRS_EXCLUDE_DOMAINS": "ok.example bad_name.example"}
    message = config_error(cli=base_cli(secret), environ=environ)
    assert message.startswith("exclude_domains: not a domain name: 'bad_name.example'")
    assert message.endswith("(from environment SRS_EXCLUDE_DOMAINS)")


ETC_DEFAULT_POSTSRSD = """\
# /etc/default/postsrsd: settings for the postsrsd launcher (shell syntax).

# The domain rewritten senders appear to come from.
SRS_DOMAIN=forwarder.example.net

# Domains never rewritten: a leading dot covers the subdomains, not the domain itself.
# Separate entries with commas or spaces; quote the value if it holds spaces.
SRS_EXCLUDE_DOMAINS="example.net, .lists.example.net
    partner.example;Other.Example"

# First separator after SRS0/SRS1: one of - + =
SRS_SEPARATOR==

# The secret that signs rewritten addresses (generated at installation).
SRS_SECRET={secret}

# Hash length written, and the shortest accepted on the way back.
#SRS_HASHLENGTH=4
#SRS_HASHMIN=4

# tcp_table ports on the loopback interface; match them in main.cf.
SRS_FORWARD_PORT=10001
SRS_REVERSE_PORT=10002

# Drop root privileges after binding.
RUN_AS=postsrsd

# Listen only on this interface.
SRS_LISTEN_ADDR=127.0.0.1

# Jail the daemon in a chroot environment.
CHROOT=/var/lib/postsrsd
"""


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs /bin/sh to source the file")
def test_etc_default_postsrsd_sourced_by_the_shell(tmp_path: Path, secret: Path) -> None:
    defaults = tmp_path / "postsrsd"
    defaults.write_text(ETC_DEFAULT_POSTSRSD.format(secret=secret), encoding="utf-8")
    # What the launcher (or systemd's EnvironmentFile=) hands to the daemon.
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; exec env -0', "sh", str(defaults)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    environ = dict(item.split("=", 1) for item in out.decode().split("\0") if item)
    assert "\n" in environ["SRS_EXCLUDE_DOMAINS"]
    s = settings.load(None, environ=environ)
    assert s.domain == "forwarder.example.net"
    assert s.exclude_domains == (
        "example.net",
        ".lists.example.net",
        "partner.example",
        "Other.Example",
    )
    assert s.excluded.entries() == [
        ".lists.example.net",
        "example.net",
        "other.example",
        "partner.example",
    ]
    assert (s.separator, s.hash_length, s.hash_min) == ("=", 4, 4)
    assert s.secrets == (SECRET,)
    assert (s.forward_port, s.reverse_port, s.listen) == (10001, 10002, ("127.0.0.1",))
    assert s.run_as == "postsrsd"
    assert s.warnings == ("environment CHROOT is not used by srsd; ignored",)


@pytest.mark.parametrize("name", ["CHROOT", "SRS_PID_FILE", "SRS_EXTRA_OPTIONS"])
def test_postsrsd_only_variables_warn_and_are_ignored(secret: Path, name: str) -> None:
    s = settings.load(base_cli(secret), environ={name: "/var/lib/postsrsd"})
    assert s.warnings == (f"environment {name} is not used by srsd; ignored",)
    assert settings.load(base_cli(secret), environ={name: ""}).warnings == ()


# -- the exclusion file ----------------------------------------------------------------------

EXCLUDE_FILE = """\
# Domains srsd never rewrites.
example.org

.lists.example.net   # every list host, not lists.example.net itself
   Partner.Example\t# trailing comment after a tab
# another comment

upper.EXAMPLE.com
"""


def test_exclusion_file(tmp_path: Path, secret: Path) -> None:
    path = tmp_path / "excluded"
    path.write_text(EXCLUDE_FILE, encoding="utf-8")
    environ = {"SRS_EXCLUDE_DOMAINS_FILE": str(path), "SRS_EXCLUDE_DOMAINS": "env.example"}
    s = settings.load(base_cli(secret), environ=environ)
    assert s.exclude_file == path
    assert s.excluded.entries() == [
        ".lists.example.net",
        "env.example",
        "example.org",
        "partner.example",
        "upper.example.com",
    ]


@pytest.mark.parametrize(
    ("domain", "excluded"),
    [
        (b"example.org", True),
        (b"EXAMPLE.Org", True),
        (b"sub.example.org", False),  # exact entry: subdomains are not covered
        (b"lists.example.net", False),  # .subdomain entry: the apex is not covered
        (b"a.lists.example.net", True),
        (b"A.b.LISTS.example.NET", True),
        (b"xlists.example.net", False),
        (b"partner.example", True),
        (b"upper.example.com", True),
        (b"env.example", True),
        (b"example.org.evil", False),
        (b"", False),
    ],
)
def test_excluded_domain_set_matches(
    tmp_path: Path, secret: Path, domain: bytes, excluded: bool
) -> None:
    path = tmp_path / "excluded"
    path.write_text(EXCLUDE_FILE, encoding="utf-8")
    s = settings.load(
        {**base_cli(secret), "exclude_domains": ["env.example"], "exclude_file": str(path)},
        environ={},
    )
    assert isinstance(s.excluded, DomainSet)
    assert (domain in s.excluded) is excluded


def test_exclusion_file_invalid_name_gives_file_and_line(tmp_path: Path, secret: Path) -> None:
    path = tmp_path / "excluded"
    path.write_text("# header\nok.example\n\nbad_name.example  # oops\n", encoding="utf-8")
    message = config_error(cli={**base_cli(secret), "exclude_file": str(path)}, environ={})
    assert message == f"exclude_file: {path} line 4: not a domain name: 'bad_name.example'"


def test_exclusion_file_unreadable(tmp_path: Path, secret: Path) -> None:
    missing = tmp_path / "missing"
    message = config_error(cli={**base_cli(secret), "exclude_file": str(missing)}, environ={})
    assert message.startswith(f"exclude_file: cannot read {missing}")
    binary = tmp_path / "binary"
    binary.write_bytes(b"caf\xe9.example\n")
    message = config_error(cli={**base_cli(secret), "exclude_file": str(binary)}, environ={})
    assert message == f"exclude_file: cannot read {binary}: not UTF-8 text"


# -- the Settings object ---------------------------------------------------------------------


def test_settings_is_immutable(secret: Path) -> None:
    s = settings.load(base_cli(secret), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.domain = "other.example"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.secrets = (b"x",)  # type: ignore[misc]
    assert isinstance(s.secrets, tuple)
    assert isinstance(s.listen, tuple)
    assert isinstance(s.exclude_domains, tuple)


def test_secrets_are_not_in_the_repr(secret: Path) -> None:
    assert SECRET.decode() not in repr(settings.load(base_cli(secret), environ={}))


def test_codec_and_policy_reflect_every_setting(tmp_path: Path) -> None:
    secrets = write_secret(tmp_path / "srsd.secret", b"signer\nverifier\n")
    cli = {
        "domain": "FW.example",
        "secrets_file": str(secrets),
        "separator": "-",
        "hash_length": "8",
        "hash_min": "6",
        "max_age": "30",
        "hash_alphabet": "base64",
        "exclude_domains": ["excluded.example"],
    }
    s = settings.load(cli, environ={})
    codec = s.codec()
    assert codec.domain == b"fw.example"
    assert (codec.hash_length, codec.hash_min, codec.max_age) == (8, 6, 30)
    assert (codec.separator, codec.alphabet) == (b"-", Alphabet.BASE64)
    expected = Codec(
        [b"signer"],
        b"fw.example",
        hash_length=8,
        hash_min=6,
        separator=b"-",
        max_age=30,
        alphabet=Alphabet.BASE64,
    )
    for n in range(40):
        sender = f"user{n}@example.org".encode()
        assert codec.forward(sender, NOW) == expected.forward(sender, NOW)
    srs = codec.forward(b"user@example.org", NOW)
    assert srs.startswith(b"SRS0-") and srs.endswith(b"@fw.example")
    assert codec.reverse(srs, NOW + 30 * DAY) == b"user@example.org"
    with pytest.raises(Expired):
        codec.reverse(srs, NOW + 31 * DAY)
    # hash_min: 6 characters of a hash are enough, 5 are not.
    hash_field = srs.split(b"=")[0][5:]
    rest = srs[5 + len(hash_field) :]
    assert codec.reverse(b"SRS0-" + hash_field[:6] + rest, NOW) == b"user@example.org"
    with pytest.raises(BadHash):
        codec.reverse(b"SRS0-" + hash_field[:5] + rest, NOW)
    # The second secret verifies.
    by_verifier = Codec([b"verifier"], b"elsewhere.example", hash_length=8).forward(
        b"user@example.org", NOW
    )
    assert codec.reverse(by_verifier, NOW) == b"user@example.org"

    policy = s.policy()
    assert policy.excluded is s.excluded
    assert policy.forward(b"x@excluded.example", NOW).outcome is Outcome.EXCLUDED
    assert policy.forward(b"x@fw.example", NOW).outcome is Outcome.LOCAL
    decision = policy.forward(b"x@other.example", NOW)
    assert decision.outcome is Outcome.REWRITTEN
    assert decision.value == expected.forward(b"x@other.example", NOW)
    assert decision.value is not None
    assert decision.value.split(b"=")[1] == day_stamp(NOW)
    assert policy.reverse(decision.value, NOW).value == b"x@other.example"


FULL_TOML = """\
# /etc/srsd/srsd.toml: every setting, as a postmaster would write them.

domain = "forwarder.example.net"      # the SRS domain (required)
secrets_file = "{dir}/srsd.secret"    # first line signs, every line verifies
exclude_domains = [
    "example.net",                    # our own mail is never rewritten
    ".lists.example.net",             # nor anything from the list hosts
]
exclude_file = "{dir}/excluded"
separator = "+"
hash_length = 6
hash_min = 5
max_age = 14
hash_alphabet = "base64"              # postsrsd 1.x spelling
original_envelope = "auto"            # long senders through the envelope database
envelope_database = "sqlite:{dir}/state/envelopes.sqlite"
envelope_write_limit = 600
redis_password_file = "{dir}/redis-password"  # read only for a Redis envelope_database
state_dir = "{dir}/state"

listen = ["127.0.0.1", "[::1]"]
forward_port = 20001
reverse_port = 20002
socketmap = "inet:[::1]:20003"        # postsrsd 2.x style socketmap as well
socketmap_mode = 0o660
socketmap_owner = "postfix:postfix"
milter = "unix:{dir}/milter.sock"     # smtpd_milters: rewrite forwarded mail only
local_domains = ["example.net", ".hosted.example"]
rewrite_local = false
milter_recipient_limit = 500
milter_message_bytes = 262144
milter_memory = 33554432
milter_max_sessions = 300
milter_max_sessions_per_user = 100
milter_idle_timeout = 400
milter_message_timeout = 1800
split_mixed = "off"
keep_alive = 60
idle_timeout = 300                    # an integer is fine for seconds
max_connections = 200
max_connections_per_user = 60
allowed_users = ["postfix", 0]
request_timeout = 5
max_request = 1024
shutdown_grace = 2.5
log_level = "debug"
log_format = "json"
syslog = true
metrics_listen = "127.0.0.1:9187"
run_as = "srsd"
allow_root = true
dns_servers = ["127.0.0.1:5353", "::1"]
sending_addresses = ["192.0.2.25"]
inbound_relays = ["mx1.example.org"]
"""


def test_full_toml_example(tmp_path: Path) -> None:
    write_secret(tmp_path / "srsd.secret", b"new-secret\nold-secret\n")
    (tmp_path / "excluded").write_text("partner.example\n", encoding="utf-8")
    path = write_toml(tmp_path / "srsd.toml", FULL_TOML.format(dir=tmp_path))
    s = settings.load(None, environ={}, config=path)
    assert s.domain == "forwarder.example.net"
    assert s.secrets_file == tmp_path / "srsd.secret"
    assert s.secrets == (b"new-secret", b"old-secret")
    assert s.exclude_domains == ("example.net", ".lists.example.net")
    assert s.exclude_file == tmp_path / "excluded"
    assert s.excluded.entries() == [".lists.example.net", "example.net", "partner.example"]
    assert (s.separator, s.hash_length, s.hash_min, s.max_age) == ("+", 6, 5, 14)
    assert s.hash_alphabet is Alphabet.BASE64
    assert s.state_dir == tmp_path / "state"
    assert s.original_envelope is EnvelopeMode.AUTO
    assert s.envelope_database == SQLiteLocation(tmp_path / "state" / "envelopes.sqlite")
    assert s.envelope_write_limit == 600
    assert s.redis_password_file == tmp_path / "redis-password"
    assert s.listen == ("127.0.0.1", "::1")
    assert (s.forward_port, s.reverse_port) == (20001, 20002)
    assert s.socketmap == settings.InetEndpoint("::1", 20003)
    assert str(s.socketmap) == "inet:[::1]:20003"
    assert s.metrics_listen == settings.InetEndpoint("127.0.0.1", 9187)
    assert s.milter == settings.UnixEndpoint(tmp_path / "milter.sock")
    assert s.local_domains == ("example.net", ".hosted.example")
    assert (s.milter_message_bytes, s.milter_memory) == (262144, 32 << 20)
    assert (s.milter_max_sessions, s.milter_max_sessions_per_user) == (300, 100)
    assert (s.milter_idle_timeout, s.milter_message_timeout) == (400.0, 1800.0)
    assert (s.rewrite_local, s.milter_recipient_limit, s.split_mixed) == (False, 500, "off")
    assert (s.socketmap_mode, s.socketmap_owner, s.keep_alive) == (0o660, "postfix:postfix", 60.0)
    assert s.idle_timeout == 300.0
    assert isinstance(s.idle_timeout, float)
    assert (s.max_connections, s.max_request, s.shutdown_grace) == (200, 1024, 2.5)
    assert (s.max_connections_per_user, s.allowed_users, s.request_timeout) == (
        60,
        ("postfix", "0"),
        5.0,
    )
    assert (s.log_level, s.syslog, s.run_as) == ("debug", True, "srsd")
    assert s.config_file == path
    assert s.warnings == ()


def test_full_toml_example_covers_every_setting() -> None:
    keys = {
        line.split("=", 1)[0].strip()
        for line in FULL_TOML.splitlines()
        if "=" in line and not line.startswith((" ", "#"))
    }
    assert keys == set(settings.FIELD_BY_KEY)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://db/srs", "expected sqlite:PATH, redis://"),
        ("redis://127.0.0.1:99999/0", "bad port"),
    ],
)
def test_bad_envelope_database(secret: Path, value: str, message: str) -> None:
    error = config_error(cli={**base_cli(secret), "envelope_database": value}, environ={})
    assert error.startswith("envelope_database:")
    assert message in error
    assert error.endswith("(from command line --envelope-database)")


def test_a_redis_password_on_the_command_line_is_refused(secret: Path) -> None:
    # Every local user can read a process's arguments (/proc/PID/cmdline).
    url = "redis://srsd:hunter2@redis.internal:6379/0"
    error = config_error(cli={**base_cli(secret), "envelope_database": url}, environ={})
    assert error.startswith("envelope_database: a password on the command line is visible")
    assert "hunter2" not in error
    # Without a password, or from the environment, it is fine.
    plain = settings.load({**base_cli(secret), "envelope_database": "redis://h:1/0"}, environ={})
    assert isinstance(plain.envelope_database, RedisTarget)
    s = settings.load(base_cli(secret), environ={"SRS_ENVELOPE_DATABASE": url})
    assert isinstance(s.envelope_database, RedisTarget)
    assert s.envelope_database.password == "hunter2"
    assert s.warnings == ()


def test_redis_password_file(tmp_path: Path, secret: Path) -> None:
    password = write_secret(tmp_path / "redis-password", b"p@ss word:/\nignored\n")
    cli = {
        **base_cli(secret),
        "envelope_database": "redis://srsd@redis.internal/2",
        "redis_password_file": str(password),
    }
    s = settings.load(cli, environ={})
    assert isinstance(s.envelope_database, RedisTarget)
    assert (s.envelope_database.username, s.envelope_database.password) == ("srsd", "p@ss word:/")
    assert s.envelope_database.db == 2
    assert s.warnings == ()
    password.chmod(0o644)
    assert settings.load(cli, environ={}).warnings == (
        f"{password} is a Redis password and is readable by group or others (mode 0644); "
        "chmod 600 it",
    )
    write_secret(password, b"\nsecond line\n")
    error = config_error(cli=cli, environ={})
    assert error == f"redis_password_file: {password} holds no password on its first line"
    password.unlink()
    error = config_error(cli=cli, environ={})
    assert error == f"redis_password_file: cannot read {password}: No such file or directory"


def test_a_settings_file_with_a_redis_password_others_can_read_is_warned_about(
    tmp_path: Path, secret: Path
) -> None:
    toml = write_toml(tmp_path / "srsd.toml", 'envelope_database = "redis://:pw@h/0"\n')
    toml.chmod(0o600)
    assert settings.load(base_cli(secret), environ={}, config=toml).warnings == ()
    toml.chmod(0o644)
    assert settings.load(base_cli(secret), environ={}, config=toml).warnings == (
        f"{toml} holds a Redis password and is readable by group or others (mode 0644); "
        "chmod 600 it",
    )


def test_bad_original_envelope(secret: Path) -> None:
    error = config_error(cli=base_cli(secret), environ={"SRS_ORIGINAL_ENVELOPE": "sometimes"})
    assert error == (
        "original_envelope: must be embedded, database or auto, got 'sometimes' "
        "(from environment SRS_ORIGINAL_ENVELOPE)"
    )


# -- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", settings.FIELDS, ids=lambda f: f.key)
def test_every_setting_is_fully_declared(field: settings.Field) -> None:
    assert field.flag.startswith("--") and field.env and field.help
    assert "\n" not in field.help
    if not field.required and field.default is not None:
        # the default, written as TOML, reads back to itself
        raw = tomllib.loads(f"x = {field.literal(field.default)}")["x"]
        assert field.parse(raw) == field.default
    if field.example is not None:  # the example file's value is valid
        field.parse(tomllib.loads(f"x = {field.example}")["x"])


def test_the_table_is_the_settings_class() -> None:
    declared = [f.name for f in dataclasses.fields(settings.Settings)]
    assert [f.key for f in settings.FIELDS] == declared[: len(settings.FIELDS)]
    assert len({f.flag for f in settings.FIELDS}) == len(settings.FIELDS)
    assert len({n for f in settings.FIELDS for n in f.env}) == sum(
        len(f.env) for f in settings.FIELDS
    )


# -- SIGHUP: what a reload applies ---------------------------------------------------------------


def test_plan_reload_applies_what_it_can_and_keeps_the_rest(tmp_path: Path, secret: Path) -> None:
    old = settings.load({**base_cli(secret), "socketmap": "inet:127.0.0.1:10003"}, environ={})
    same = settings.plan_reload(old, old)
    assert (same.applied, same.restart, same.settings) == ((), (), old)
    toml = write_toml(
        tmp_path / "srsd.toml",
        'log_level = "debug"\nlog_format = "json"\n'
        'max_age = 9\nforward_port = 20001\nsocketmap = ""\nrun_as = "srsd"\n',
    )
    new = settings.load({**base_cli(secret)}, environ={}, config=toml)
    plan = settings.plan_reload(old, new)
    assert plan.applied == ("max_age", "log_level", "log_format")
    assert plan.restart == ("forward_port", "socketmap", "run_as")
    s = plan.settings
    assert (s.max_age, s.log_level, s.log_format) == (9, "debug", "json")
    assert (s.forward_port, s.socketmap, s.run_as) == (10001, old.socketmap, None)
    assert s.sources["forward_port"] == "default"
    assert s.sources["max_age"] == f"config file {toml}"
    # The kept values are compared again next time: the change is still pending.
    assert settings.plan_reload(s, new).restart == plan.restart


# -- srsd config: the effective configuration as TOML ----------------------------------------------


def config_round_trip(tmp_path: Path, s: settings.Settings) -> settings.Settings:
    printed = tmp_path / "printed.toml"
    printed.write_text(render.effective_config(s), encoding="utf-8")
    return settings.load(None, environ={}, config=printed)


def test_config_names_every_source_and_reads_back(tmp_path: Path) -> None:
    secrets = write_secret(tmp_path / "srsd.secret", b"first\nsecond\n")
    toml = write_toml(
        tmp_path / "srsd.toml",
        'domain = "fw.example"\nmax_age = 9\n'
        'envelope_database = "redis://srsd:hunter2@[::1]:6380/3"\n',
    )
    environ = {"SRS_SECRET": str(secrets), "SRS_LISTEN_ADDR": "::1 127.0.0.2"}
    s = settings.load(
        {"hash_length": "6", "socketmap": "unix:/run/srsd/srsd.sock"}, environ=environ, config=toml
    )
    text = render.effective_config(s)
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines.keys() == settings.FIELD_BY_KEY.keys()
    assert lines["max_age"] == f"max_age = 9  # from config file {toml}"
    assert lines["hash_length"] == "hash_length = 6  # from command line --hash-length"
    assert lines["listen"] == 'listen = ["::1", "127.0.0.2"]  # from environment SRS_LISTEN_ADDR'
    assert lines["separator"] == 'separator = "="  # default'
    assert lines["secrets_file"] == (
        f'secrets_file = "{secrets}"  # from environment SRS_SECRET; holds 2 secrets (not shown)'
    )
    assert "first" not in text and "second" not in text
    assert "hunter2" not in text
    assert lines["envelope_database"].endswith("; its password is not shown")
    again = config_round_trip(tmp_path, s)
    assert {**again.values(), "envelope_database": None} == {
        **s.values(),
        "envelope_database": None,
    }
    assert again.envelope_database == dataclasses.replace(s.envelope_database, password=None)
    assert again.secrets == s.secrets


def test_config_changed_shows_only_what_is_not_a_default(tmp_path: Path, secret: Path) -> None:
    s = settings.load(base_cli(secret), environ={"SRS_MAX_AGE": "9"})
    text = render.effective_config(s, changed=True)
    assert [line.split(" = ")[0] for line in text.splitlines()[1:]] == [
        "domain",
        "secrets_file",
        "max_age",
    ]
    printed = write_toml(tmp_path / "changed.toml", text)
    assert settings.load(None, environ={}, config=printed).values() == s.values()


_KEY_VALUES = {
    "exclude_domains": st.lists(
        st.from_regex(r"\.?[a-z]{1,8}\.example", fullmatch=True), max_size=3
    ),
    "separator": st.sampled_from(["=", "+", "-"]),
    "hash_length": st.integers(4, 20),
    "max_age": st.integers(1, 365),
    "hash_alphabet": st.sampled_from(["base64", "base64url"]),
    "original_envelope": st.sampled_from(["embedded", "database", "auto"]),
    "envelope_database": st.sampled_from(
        [
            "",
            "sqlite:x.db",
            "sqlite:/var/lib/e.db",
            "redis://h:1/2",
            "redis:/run/r.sock",
            "redis+unix:///run/r%20s.sock?db=3",
            "redis:rel.sock",
        ]
    ),
    "listen": st.lists(
        st.sampled_from(["127.0.0.1", "::1", "[::1]", "0.0.0.0"]), min_size=1, max_size=3
    ),
    "socketmap": st.sampled_from(["", "inet:127.0.0.1:1", "inet:[::1]:65535", "unix:/run/s a"]),
    "socketmap_mode": st.integers(0, 0o777),
    "socketmap_owner": st.sampled_from(["", "postfix", "postfix:mail"]),
    "keep_alive": st.floats(0.001, 604800.0),
    "idle_timeout": st.integers(1, 604800),
    "log_format": st.sampled_from(["plain", "json"]),
    "syslog": st.booleans(),
    "metrics_listen": st.sampled_from(["", "127.0.0.1:9187", "[::1]:1"]),
    "run_as": st.text(
        st.characters(
            min_codepoint=32, max_codepoint=0x10FFFF, exclude_characters=" \t\n\r\x85\xa0"
        ),
        max_size=5,
    ),
    "state_dir": st.sampled_from(["/var/lib/srsd", '/tmp/s "q" \\ d']),
}


@settings_h(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.fixed_dictionaries({}, optional=_KEY_VALUES))
def test_config_output_reads_back_to_the_same_settings(
    tmp_path: Path, secret: Path, chosen: dict[str, object]
) -> None:
    toml = tmp_path / "in.toml"
    toml.write_text("".join(f"{k} = {settings.toml_literal(v)}\n" for k, v in chosen.items()))
    s = settings.load(base_cli(secret), environ={}, config=toml)
    assert config_round_trip(tmp_path, s).values() == s.values()


def test_settings_and_the_command_line_import_no_server_machinery() -> None:
    # Validating envelope_database parses the URL only: no store, no trio, no sqlite3.
    code = (
        "import sys, srsd.cli, srsd.config.settings\n"
        "srsd.config.settings.parse_location('redis://h/1')\n"
        "print(sorted(m for m in ('trio', 'sqlite3', 'redis', 'srsd.envelope.store', "
        "'srsd.serve.server') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
