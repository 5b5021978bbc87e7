# The `srsd` command line, run as a real subprocess: encode, decode, keygen, --help, exit codes.
"""Tests for :mod:`srsd.cli` through ``python -m srsd`` in a child process.

Each child gets an explicit environment (no SRS_* variable of the machine leaks in), a
temporary working directory, an empty ``--config`` file (so a real /etc/srsd/srsd.toml
cannot change the results) and a timeout. The children use the real clock, so expected
SRS addresses are computed for the day before and after each call.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

import srsd
from srsd.config import settings
from srsd.srs.codec import Alphabet, Codec
from tests.harness.srsd_process import child_env

TIMEOUT = 20.0
DOMAIN = "forwarder.example.net"
SECRET = b"cli-test-secret-0123456789"


class Srsd:
    """Runs ``python -m srsd`` in a temporary directory with a clean environment."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = child_env(workdir / "home", allow_root=False)
        self.config = workdir / "empty.toml"
        self.config.write_text("# no settings\n", encoding="utf-8")
        self.secret = self.secret_file("srsd.secret", SECRET)

    def secret_file(self, name: str, *secrets: bytes, mode: int = 0o600) -> Path:
        path = self.workdir / name
        path.write_bytes(b"".join(s + b"\n" for s in secrets))
        path.chmod(mode)
        return path

    def common(self, secret: Path | None = None) -> list[str]:
        """The flags every encode/decode call here needs."""
        return [
            "--config",
            str(self.config),
            "--domain",
            DOMAIN,
            "--secret-file",
            str(secret or self.secret),
        ]

    def argv(self, *args: str | bytes) -> list[str | bytes]:
        return [sys.executable, "-m", "srsd", *args]

    def run(
        self, *args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            check=False,
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            timeout=TIMEOUT,
        )

    def popen(self, *args: str | bytes, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(*args), env=self.env, cwd=self.workdir, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def cli(tmp_path: Path) -> Srsd:
    return Srsd(tmp_path)


def lines(output: bytes) -> list[bytes]:
    assert output.endswith(b"\n") or output == b""
    return output.split(b"\n")[:-1]


def text(output: bytes) -> str:
    return output.decode("utf-8", "replace")


def codec(*secrets: bytes, **kwargs: object) -> Codec:
    return Codec(secrets or (SECRET,), DOMAIN.encode(), **kwargs)  # type: ignore[arg-type]


def expected_forward(
    srs: Codec, senders: Iterable[bytes], before: float, after: float, got: Sequence[bytes]
) -> list[bytes]:
    """The codec's output for ``senders`` on the day ``got`` was made (before or after)."""
    senders = list(senders)
    candidates = [[srs.forward(s, now) for s in senders] for now in (before, after)]
    return candidates[1] if list(got) == candidates[1] else candidates[0]


def read_line(stream: object, timeout: float = TIMEOUT) -> bytes:
    """One line from a raw pipe, failing instead of hanging if it does not come."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"no complete line within {timeout} s (got {data!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"end of output before a complete line (got {data!r})")
        data += chunk
    return data


# -- version and help ------------------------------------------------------------------------


def test_version(cli: Srsd) -> None:
    result = cli.run("--version")
    assert result.returncode == 0
    assert text(result.stdout).strip() == f"srsd {srsd.__version__}"


COMMON_FLAGS = [
    "--config",
    "--domain",
    "--secret-file",
    "--exclude",
    "--exclude-file",
    "--separator",
    "--hash-length",
    "--hash-min",
    "--max-age",
    "--hash-alphabet",
    "--state-dir",
]
SERVE_FLAGS = [
    "--listen",
    "--forward-port",
    "--reverse-port",
    "--timeout",
    "--max-connections",
    "--max-request",
    "--shutdown-grace",
    "--log-level",
    "--syslog",
    "--run-as",
    "--check",
]


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ([], ["encode", "decode", "keygen", "serve", "config", "health", "postfix-config"]),
        ([], ["--version"]),
        (["config"], [*COMMON_FLAGS, *SERVE_FLAGS[:-1], "--changed"]),
        (["encode"], [*COMMON_FLAGS, "ADDRESS"]),
        (["decode"], [*COMMON_FLAGS, "ADDRESS"]),
        (["keygen"], ["PATH", "--force"]),
        (["serve"], [*COMMON_FLAGS, *SERVE_FLAGS, *(f.flag for f in settings.FIELDS if f.flag)]),
        (
            ["postfix-config"],
            [*COMMON_FLAGS, "--mode", "--milter", "--socketmap", "--listen", "--forward-port"],
        ),
    ],
)
def test_help(cli: Srsd, command: list[str], flags: list[str]) -> None:
    result = cli.run(*command, "--help")
    assert result.returncode == 0, text(result.stderr)
    out = text(result.stdout)
    assert out.startswith("usage: srsd")
    missing = [flag for flag in flags if flag not in out]
    assert not missing, out
    if command not in (["serve"], ["config"], ["postfix-config"]):
        assert "--listen" not in out


def test_config_prints_toml_that_config_accepts(cli: Srsd, tmp_path: Path) -> None:
    cli.config.write_text("max_age = 9\n", encoding="utf-8")
    result = cli.run(
        "config", *cli.common(), "--socketmap", "inet:[::1]:10003", env={"SRS_HASHLENGTH": "6"}
    )
    assert result.returncode == 0, text(result.stderr)
    out = text(result.stdout)
    assert f"max_age = 9  # from config file {cli.config}\n" in out
    assert "hash_length = 6  # from environment SRS_HASHLENGTH\n" in out
    assert 'socketmap = "inet:[::1]:10003"  # from command line --socketmap\n' in out
    assert 'separator = "="  # default\n' in out
    assert SECRET.decode() not in out
    assert "holds 1 secret (not shown)" in out
    printed = tmp_path / "printed.toml"
    printed.write_text(out, encoding="utf-8")
    again = cli.run("config", "--config", str(printed))  # nothing else: the file alone
    assert again.returncode == 0, text(again.stderr)
    strip = [line.split("  # ")[0] for line in out.splitlines()]
    assert [line.split("  # ")[0] for line in text(again.stdout).splitlines()] == strip
    changed = cli.run("config", "--changed", "--config", str(printed))
    assert text(changed.stdout).splitlines()[1:] == text(again.stdout).splitlines()[1:]
    only = cli.run("config", "--changed", *cli.common(), env={"SRS_HASHLENGTH": "6"})
    keys = [line.split(" = ")[0] for line in text(only.stdout).splitlines()[1:]]
    assert keys == ["domain", "secrets_file", "hash_length", "max_age"]


# -- encode and decode -----------------------------------------------------------------------


def test_encode_all_rewritten_then_decode(cli: Srsd) -> None:
    senders = [b"alice@example.org", b"Bob.Smith@Mail.Example.COM", b"x+tag@a.b.example"]
    before = time.time()
    result = cli.run("encode", *cli.common(), *senders)
    after = time.time()
    assert result.returncode == 0, text(result.stderr)
    assert result.stderr == b""
    encoded = lines(result.stdout)
    assert encoded == expected_forward(codec(), senders, before, after, encoded)
    assert all(e.startswith(b"SRS0=") and e.endswith(b"@" + DOMAIN.encode()) for e in encoded)

    result = cli.run("decode", *cli.common(), *encoded)
    assert result.returncode == 0, text(result.stderr)
    assert lines(result.stdout) == senders


def test_encode_one_line_per_input_in_order(cli: Srsd, tmp_path: Path) -> None:
    inputs = [
        b"first@example.org",
        b"",
        b"no-domain",
        b"user@" + DOMAIN.upper().encode(),
        b"x@excluded.example",
        b"<>",
        b"last@example.org",
    ]
    result = cli.run("encode", *cli.common(), "--exclude", "excluded.example", *inputs)
    assert result.returncode == 1
    out = lines(result.stdout)
    assert len(out) == len(inputs)
    assert out[0].startswith(b"SRS0=") and out[0].endswith(b"=first@" + DOMAIN.encode())
    assert out[1:-1] == inputs[1:-1]  # not rewritten: the input, unchanged
    assert out[-1].startswith(b"SRS0=") and out[-1].endswith(b"=last@" + DOMAIN.encode())
    err = text(result.stderr).splitlines()
    assert err == [
        "srsd encode: : not rewritten: null sender",
        "srsd encode: no-domain: not rewritten: no domain",
        f"srsd encode: user@{DOMAIN.upper()}: not rewritten: local domain",
        "srsd encode: x@excluded.example: not rewritten: excluded domain",
        "srsd encode: <>: not rewritten: null sender",
    ]


def test_decode_reports_each_failure(cli: Srsd) -> None:
    good = codec().forward(b"user@example.org", time.time())
    forged = b"SRS0=XXXX=" + good.split(b"=", 2)[2]
    old = codec().forward(b"old@example.org", time.time() - 40 * 86400)
    inputs = [good, b"plain@example.org", forged, old, b"SRS0=broken", good.lower()]
    result = cli.run("decode", *cli.common(), *inputs)
    assert result.returncode == 1
    out = lines(result.stdout)
    assert out == [b"user@example.org", *inputs[1:5], b"user@example.org"]
    err = text(result.stderr).splitlines()
    assert len(err) == 4
    for item, line in zip(inputs[1:5], err, strict=True):
        assert line.startswith(f"srsd decode: {item.decode()}: not rewritten: ")
    assert err[0].endswith("Not an SRS address.")
    assert err[1].endswith("Hash invalid in SRS address.")
    assert err[2].endswith("Time stamp out of date.")


def test_stdin_mode_reads_one_address_per_line(cli: Srsd) -> None:
    data = b"a@x.example\nb@y.example\r\nnot-an-address\na@x.example\r\n\nlast@z.example"
    result = cli.run("encode", *cli.common(), stdin=data)
    assert result.returncode == 1
    out = lines(result.stdout)
    assert len(out) == 6
    assert b"\r" not in result.stdout
    assert out[0] == out[3]  # a CRLF line is the same address as an LF line
    assert out[1].endswith(b"=y.example=b@" + DOMAIN.encode())
    assert out[2] == b"not-an-address"
    assert out[4] == b""
    assert out[5].endswith(b"=z.example=last@" + DOMAIN.encode())  # no final newline needed


def test_stdin_mode_streams(cli: Srsd) -> None:
    proc = cli.popen(
        "encode",
        *cli.common(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first@example.org\n")
        first = read_line(proc.stdout)  # answered while stdin is still open
        assert first.startswith(b"SRS0=") and first.endswith(b"=first@" + DOMAIN.encode() + b"\n")
        proc.stdin.write(b"no-domain\r\n")
        assert read_line(proc.stdout) == b"no-domain\n"
        proc.stdin.write(b"second@example.org\n")
        assert read_line(proc.stdout).endswith(b"=second@" + DOMAIN.encode() + b"\n")
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 1
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


RAW_SENDERS = [
    b"\xff\xfeuser@example.org",
    b"caf\xe9@h\xf4te.example",
    b'"a b"@example.org',
    b"plain@example.org",
]


def test_raw_bytes_round_trip(cli: Srsd) -> None:
    # encode from stdin, decode from the argument list: bytes survive both ways.
    encoded = cli.run("encode", *cli.common(), stdin=b"".join(s + b"\n" for s in RAW_SENDERS))
    assert encoded.returncode == 0, text(encoded.stderr)
    srs = lines(encoded.stdout)
    assert len(srs) == len(RAW_SENDERS)
    assert srs[1].startswith(b"SRS0=") and b"h\xf4te.example=caf\xe9@" in srs[1]
    assert srs[2].startswith(b'"SRS0=')  # a quoted local part stays quoted
    decoded = cli.run("decode", *cli.common(), *srs)
    assert decoded.returncode == 0, text(decoded.stderr)
    assert lines(decoded.stdout) == RAW_SENDERS


def test_raw_bytes_in_reasons_are_escaped(cli: Srsd) -> None:
    result = cli.run("decode", *cli.common(), b"\xffnot\x1bsrs@example.org")
    assert result.returncode == 1
    assert result.stdout == b"\xffnot\x1bsrs@example.org\n"
    assert text(result.stderr).startswith("srsd decode: \\xffnot\\x1bsrs@example.org: ")


def test_encode_decode_pipeline(cli: Srsd) -> None:
    senders = [f"user{n}@host{n % 7}.example".encode() for n in range(200)]
    encode = cli.popen("encode", *cli.common(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    decode = cli.popen("decode", *cli.common(), stdin=encode.stdout, stdout=subprocess.PIPE)
    assert encode.stdin is not None and encode.stdout is not None
    encode.stdout.close()  # the decoder holds the read end now
    try:
        encode.stdin.write(b"".join(s + b"\n" for s in senders))
        encode.stdin.close()
        out, _ = decode.communicate(timeout=TIMEOUT)
        assert encode.wait(timeout=TIMEOUT) == 0
        assert decode.returncode == 0
        assert lines(out) == senders
    finally:
        for proc in (encode, decode):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_hash_alphabet(cli: Srsd) -> None:
    senders = [f"sender{n}@example.org".encode() for n in range(128)]
    before = time.time()
    url = cli.run("encode", *cli.common(), *senders)
    standard = cli.run("encode", *cli.common(), "--hash-alphabet", "base64", *senders)
    after = time.time()
    assert url.returncode == standard.returncode == 0
    url_out, std_out = lines(url.stdout), lines(standard.stdout)
    assert url_out == expected_forward(codec(), senders, before, after, url_out)
    assert std_out == expected_forward(
        codec(alphabet=Alphabet.BASE64), senders, before, after, std_out
    )
    hashes = [(u.split(b"=")[1], s.split(b"=")[1]) for u, s in zip(url_out, std_out, strict=True)]
    special = [(u, s) for u, s in hashes if b"+" in s or b"/" in s]
    assert special, "no sender with + or / in its base64 hash: add senders"
    for url_hash, std_hash in special:
        assert url_hash == std_hash.replace(b"+", b"-").replace(b"/", b"_")
    assert not any(b"+" in u or b"/" in u for u, _ in hashes)
    # Either spelling decodes, whichever alphabet is configured.
    decoded = cli.run("decode", *cli.common(), *url_out, *std_out)
    assert decoded.returncode == 0, text(decoded.stderr)
    assert lines(decoded.stdout) == senders + senders


def test_separator(cli: Srsd) -> None:
    senders = [b"user@example.org", b"SRS0=abcd=AB=orig.example=u@hop.example"]
    plus = cli.run("encode", *cli.common(), "--separator", "+", *senders)
    assert plus.returncode == 0, text(plus.stderr)
    srs0, srs1 = lines(plus.stdout)
    assert srs0.startswith(b"SRS0+")
    assert srs1.startswith(b"SRS1+") and b"=hop.example==abcd=AB=" in srs1
    decoded = cli.run("decode", *cli.common(), srs0, srs1)  # configured "=", accepts "+"
    assert decoded.returncode == 0, text(decoded.stderr)
    assert lines(decoded.stdout) == [senders[0], b"SRS0=abcd=AB=orig.example=u@hop.example"]
    bad = cli.run("encode", *cli.common(), "--separator", "*", "a@b.example")
    assert bad.returncode == 2
    assert "--separator" in text(bad.stderr)


def test_exclude_repeatable_and_exclude_file(cli: Srsd, tmp_path: Path) -> None:
    excluded = tmp_path / "excluded"
    excluded.write_text(
        "# partners\nPartner.Example  # trailing comment\n\n.lists.example\n", encoding="utf-8"
    )
    inputs = {
        b"x@one.example": True,
        b"x@sub.one.example": False,  # exact entry: no subdomains
        b"x@two.example": False,  # .two.example: subdomains only
        b"x@a.two.example": True,
        b"x@partner.example": True,
        b"x@PARTNER.EXAMPLE": True,
        b"x@lists.example": False,
        b"x@b.lists.example": True,
        b"x@other.example": False,
    }
    result = cli.run(
        "encode",
        *cli.common(),
        "--exclude",
        "one.example",
        "--exclude",
        ".two.example",
        "--exclude-file",
        str(excluded),
        *inputs,
    )
    assert result.returncode == 1
    for (item, is_excluded), out in zip(inputs.items(), lines(result.stdout), strict=True):
        assert (out == item) is is_excluded, (item, out)
    reasons = text(result.stderr).splitlines()
    assert reasons == [
        f"srsd encode: {item.decode()}: not rewritten: excluded domain"
        for item, is_excluded in inputs.items()
        if is_excluded
    ]


def test_several_secrets(cli: Srsd) -> None:
    old_only = cli.secret_file("old.secret", b"old-secret")
    rotated = cli.secret_file("rotated.secret", b"new-secret", b"old-secret")
    new_only = cli.secret_file("new.secret", b"new-secret")
    signed_old = cli.run("encode", *cli.common(old_only), "user@example.org")
    assert signed_old.returncode == 0
    [srs] = lines(signed_old.stdout)
    decoded = cli.run("decode", *cli.common(rotated), srs)
    assert decoded.returncode == 0, text(decoded.stderr)
    assert decoded.stdout == b"user@example.org\n"
    refused = cli.run("decode", *cli.common(new_only), srs)
    assert refused.returncode == 1
    assert refused.stdout == srs + b"\n"
    assert "Hash invalid in SRS address." in text(refused.stderr)
    signed_new = cli.run("encode", *cli.common(rotated), "user@example.org")
    [srs_new] = lines(signed_new.stdout)
    now = time.time()
    assert srs_new in {
        codec(b"new-secret").forward(b"user@example.org", t) for t in (now - 86400, now)
    }


def test_settings_from_the_environment(cli: Srsd) -> None:
    secret = cli.secret_file("env.secret", SECRET, mode=0o644)
    env = {
        "SRS_DOMAIN": DOMAIN,
        "SRS_SECRET": str(secret),
        "SRS_SEPARATOR": "-",
        "CHROOT": "/var/lib/postsrsd",
    }
    result = cli.run("encode", "--config", str(cli.config), "a@b.example", env=env)
    assert result.returncode == 0
    assert result.stdout.startswith(b"SRS0-")
    assert result.stdout.endswith(b"@" + DOMAIN.encode() + b"\n")
    err = text(result.stderr)
    assert f"srsd: warning: secrets file {secret} is readable by group or others" in err
    assert "srsd: warning: environment CHROOT is not used by srsd; ignored" in err
    result = cli.run(
        "encode", "--config", str(cli.config), "--separator", "+", "a@b.example", env=env
    )
    assert result.stdout.startswith(b"SRS0+")  # the flag beats the environment


def test_settings_from_a_config_file(cli: Srsd, tmp_path: Path) -> None:
    config = tmp_path / "srsd.toml"
    config.write_text(
        f'domain = "toml.example"\nsecrets_file = "{cli.secret}"\nhash_length = 6\n',
        encoding="utf-8",
    )
    result = cli.run("encode", "--config", str(config), "a@b.example")
    assert result.returncode == 0, text(result.stderr)
    [srs] = lines(result.stdout)
    assert srs.endswith(b"@toml.example")
    assert len(srs.split(b"=")[1]) == 6


# -- usage and configuration errors: exit 2 --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["encode", "{common}", "--bogus", "a@b.example"], "unrecognized arguments: --bogus"),
        (
            ["decode", "--config", "{config}", "--secret-file", "{secret}", "a@b.example"],
            "srsd: configuration error: domain: the SRS domain is not set",
        ),
        (
            [
                "encode",
                "--config",
                "{config}",
                "--domain",
                DOMAIN,
                "--secret-file",
                "{missing}",
                "a@b.example",
            ],
            "srsd: configuration error: secrets_file: cannot read {missing}",
        ),
        (
            ["encode", "--config", "{missing}", "--domain", DOMAIN, "a@b.example"],
            "srsd: configuration error: config file {missing}",
        ),
        (
            ["encode", "{common}", "--hash-length", "0", "a@b.example"],
            "hash_length: must be between 1 and 20, got 0 (from command line --hash-length)",
        ),
        (
            ["decode", "{common}", "--domain", "localhost", "a@b.example"],
            "domain: not a fully qualified domain name: 'localhost' (from command line --domain)",
        ),
        (
            ["encode", "{common}", "--exclude", "bad_name", "a@b.example"],
            "exclude_domains: not a domain name: 'bad_name' (from command line --exclude)",
        ),
        (["keygen"], "the following arguments are required: PATH"),
    ],
)
def test_usage_and_configuration_errors(cli: Srsd, args: list[str], message: str) -> None:
    names = {
        "config": str(cli.config),
        "secret": str(cli.secret),
        "missing": str(cli.workdir / "missing"),
    }
    argv: list[str] = []
    for arg in args:
        argv += cli.common() if arg == "{common}" else [arg.format(**names)]
    result = cli.run(*argv)
    assert result.returncode == 2
    assert result.stdout == b""
    assert message.format(**names) in text(result.stderr)


# -- keygen ----------------------------------------------------------------------------------


def test_keygen(cli: Srsd, tmp_path: Path) -> None:
    path = tmp_path / "etc" / "srsd.secret"  # the directory is created too
    created = cli.run("keygen", str(path))
    assert created.returncode == 0, text(created.stderr)
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert re.fullmatch(rb"[A-Za-z0-9+/_-]{24,}=*\n", first), first
    assert str(path) in text(created.stderr)

    refused = cli.run("keygen", str(path))
    assert refused.returncode == 2
    assert "--force" in text(refused.stderr)
    assert path.read_bytes() == first

    path.chmod(0o644)
    replaced = cli.run("keygen", "--force", str(path))
    assert replaced.returncode == 0, text(replaced.stderr)
    second = path.read_bytes()
    assert second != first
    assert re.fullmatch(rb"[A-Za-z0-9+/_-]{24,}=*\n", second), second
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["srsd.secret"]

    # The generated secret signs and verifies, with no warning about its mode.
    encoded = cli.run("encode", *cli.common(path), "user@example.org")
    assert (encoded.returncode, encoded.stderr) == (0, b"")
    now = time.time()
    assert encoded.stdout.rstrip(b"\n") in {
        codec(second.rstrip(b"\n")).forward(b"user@example.org", t) for t in (now - 86400, now)
    }
    decoded = cli.run("decode", *cli.common(path), encoded.stdout.rstrip(b"\n"))
    assert (decoded.returncode, decoded.stdout) == (0, b"user@example.org\n")


def test_keygen_unwritable_path(cli: Srsd, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    result = cli.run("keygen", str(blocker / "secret"))
    assert result.returncode == 2
    assert "Traceback" not in text(result.stderr)


def test_exclude_takes_a_list_like_srs_exclude_domains(cli: Srsd) -> None:
    result = cli.run(
        "encode",
        *cli.common(),
        "--exclude",
        "one.example,two.example;three.example",
        "x@one.example",
        "x@two.example",
        "x@three.example",
    )
    assert result.returncode == 1
    assert lines(result.stdout) == [b"x@one.example", b"x@two.example", b"x@three.example"]
    assert text(result.stderr).count("excluded domain") == 3


def test_output_reader_going_away_is_not_a_traceback(cli: Srsd) -> None:
    # `srsd encode ... | head -1`: like cat(1), srsd dies of SIGPIPE, silently.
    proc = cli.popen(
        "encode",
        *cli.common(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    _, err = proc.communicate(b"a@x.example\n" * 20000, timeout=TIMEOUT)
    assert b"Traceback" not in err
    assert proc.returncode == -signal.SIGPIPE


def test_argument_with_a_line_break_is_a_usage_error(cli: Srsd) -> None:
    result = cli.run("encode", *cli.common(), "a@x.example", "b\n@y.example")
    assert result.returncode == 2
    assert result.stdout == b""
    assert "not rewritten: Control character in address" in text(result.stderr)
