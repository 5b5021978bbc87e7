# srsd doctor's pure parts: reference parsing, role problems, secret entropy and privacy, SPF
# record edits, the clock, and the two output formats.
"""Unit tests of doctor's checks over hand-made facts (the real-host cases are in
``tests/test_doctor_postfix.py`` and ``tests/test_doctor_dns.py``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from srsd.config import settings
from srsd.config.postfix import Mode
from srsd.doctor import checks_host, checks_postfix, checks_srsd, gather, refs, run
from srsd.doctor.facts import ClockFacts, ClockState, PostfixFacts, SecretFacts, Service
from srsd.doctor.result import FixKind, Result, Status, healthy, render_json, render_text
from tests.harness.local_users import NOBODY, require_root


@pytest.mark.parametrize(
    ("param", "entry", "kind", "target", "name"),
    [
        ("sender_canonical_maps", "tcp:127.0.0.1:10001", "tcp", ("127.0.0.1", 10001), ""),
        ("sender_canonical_maps", "tcp:[::1]:10001", "tcp", ("::1", 10001), ""),
        ("sender_canonical_maps", "proxy:tcp:localhost:10001", "tcp", ("localhost", 10001), ""),
        (
            "recipient_canonical_maps",
            "socketmap:inet:127.0.0.1:10003:reverse",
            "socketmap",
            ("127.0.0.1", 10003),
            "reverse",
        ),
        (
            "recipient_canonical_maps",
            "socketmap:unix:srsd/srsd.sock:reverse",
            "socketmap",
            "srsd/srsd.sock",
            "reverse",
        ),
        ("smtpd_milters", "inet:127.0.0.1:10004", "milter", ("127.0.0.1", 10004), ""),
        (
            "smtpd_milters",
            "{ unix:/run/srsd/milter.sock, default_action=tempfail }",
            "milter",
            "/run/srsd/milter.sock",
            "",
        ),
    ],
)
def test_references_are_parsed(
    param: str, entry: str, kind: str, target: refs.Target, name: str
) -> None:
    ref = refs.parse_entry("main.cf", param, entry)
    assert ref is not None
    assert (ref.kind, ref.target, ref.name) == (kind, target, name)


@pytest.mark.parametrize("entry", ["hash:/etc/postfix/canonical", "$alias_maps", "inline:{a=b}"])
def test_other_tables_are_no_references(entry: str) -> None:
    assert refs.parse_entry("main.cf", "sender_canonical_maps", entry) is None


def test_a_chrooted_daemon_looks_for_absolute_paths_inside_the_queue_directory() -> None:
    facts = PostfixFacts(
        "/etc/postfix",
        expanded={"queue_directory": "/var/spool/postfix"},
        services=(Service("smtp", "inet", True, "smtpd"),),
    )
    assert refs.opened_target("/run/srsd.sock", facts) == "/var/spool/postfix/run/srsd.sock"
    assert refs.opened_target("srsd/s.sock", facts) == "/var/spool/postfix/srsd/s.sock"
    unchrooted = PostfixFacts("/etc/postfix", expanded=facts.expanded)
    assert refs.opened_target("/run/srsd.sock", unchrooted) == "/run/srsd.sock"


def test_secret_entropy_estimate() -> None:
    assert checks_srsd.secret_bits(b"a" * 40) == 0
    assert checks_srsd.secret_bits(b"12345") < 20  # the 5-byte secret of the issue
    assert checks_srsd.secret_bits(b"password12345678") < checks_srsd.MIN_SECRET_BITS
    # 16 random bytes, however spelled, reach the limit
    assert checks_srsd.secret_bits(secrets.token_hex(16).encode()) >= 128
    assert checks_srsd.secret_bits(secrets.token_urlsafe(24).encode()) >= 128


def test_a_weak_secret_is_a_warning_with_a_rotation() -> None:
    facts = SecretFacts(Path("/etc/srsd/secrets"), 0o600, "root", "root", (b"12345",))
    result = checks_srsd.secret_strength(facts, "root")
    assert result.status is Status.WARN
    assert result.fix is not None and "srsd keygen /etc/srsd/secrets.new" in result.fix.lines[0]


@pytest.mark.parametrize(
    ("mode", "owner", "run_as", "status"),
    [
        (0o600, "root", None, Status.OK),
        (0o640, "root", None, Status.FAIL),
        (0o604, "srsd", "srsd", Status.FAIL),
        (0o600, "nobody", None, Status.FAIL),
        (0o600, "root", "nobody", Status.WARN),
        (0o600, "srsd", "srsd", Status.OK),
    ],
)
def test_secret_privacy(mode: int, owner: str, run_as: str | None, status: Status) -> None:
    facts = SecretFacts(Path("/etc/srsd/secrets"), mode, owner, "root", (b"x" * 32,))
    assert checks_srsd.secret_private(facts, run_as, "root").status is status


def test_an_unreadable_secret_is_said_not_crashed_on() -> None:
    facts = SecretFacts(Path("/etc/srsd/secrets"), 0o600, "root", "root", (), "Permission denied")
    result = checks_srsd.secret_strength(facts, "alice")
    assert result.status is Status.WARN and "alice cannot read" in result.summary


@pytest.mark.parametrize(
    ("record", "keep", "expected"),
    [
        (None, True, "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"),
        ("v=spf1 mx ~all", True, "v=spf1 mx ip4:192.0.2.1 ip6:2001:db8::1 ~all"),
        (
            "v=spf1 include:a.example",
            True,
            "v=spf1 include:a.example ip4:192.0.2.1 ip6:2001:db8::1 -all",
        ),
        ("v=spf1 include:a.example -all", False, "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"),
    ],
)
def test_spf_record_edits(record: str | None, keep: bool, expected: str) -> None:
    assert checks_host.spf_record_for(record, ["192.0.2.1", "2001:db8::1"], keep) == expected


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (ClockState.SYNCHRONIZED, Status.OK),
        (ClockState.UNSYNCHRONIZED, Status.WARN),
        (ClockState.UNKNOWN, Status.WARN),
    ],
)
def test_clock(state: ClockState, status: Status) -> None:
    assert checks_host.clock(ClockFacts(state, "adjtimex")).status is status


def test_forged_addresses_differ_in_every_spelling() -> None:
    for address in ("SRS0=abcd=J2=x.example=a@f.example", "SRS0=XbcD=J2=x.example=a@f.example"):
        forged = run.forge(address)
        assert forged.lower() != address.lower() and len(forged) == len(address)


def test_output_formats_and_exit_rule() -> None:
    results = [
        Result.ok("a", "fine"),
        Result.warn("b", "risky", FixKind.TEXT, "do this"),
        Result.fail("c", "broken", FixKind.SHELL, "postconf -e 'x = y'", "postfix reload"),
    ]
    text = render_text(results)
    assert text.splitlines()[0] == "✓ a: fine"
    assert "✗ c: broken" in text and "      postconf -e 'x = y'" in text
    report = json.loads(render_json(results))
    assert report["ok"] is False
    assert report["checks"][2] == {
        "check": "c",
        "status": "fail",
        "summary": "broken",
        "fix": {"kind": "shell", "lines": ["postconf -e 'x = y'", "postfix reload"]},
    }
    assert healthy(results[:2]) and not healthy(results)


def test_doctor_settings_parse(tmp_path: Path) -> None:
    empty = tmp_path / "srsd.toml"
    empty.write_text("")
    loaded = settings.load(
        {
            "dns_servers": "127.0.0.1:5353 ::1 [::1]:53",
            "sending_addresses": "192.0.2.1 [2001:DB8::1]",
            "inbound_relays": "MX1.Example.org. 192.0.2.9",
            "domain": "f.example",
        },
        environ={},
        config=empty,
        need_secrets=False,
    )
    assert [e.host_port for e in loaded.dns_servers] == ["127.0.0.1:5353", "[::1]:53", "[::1]:53"]
    assert loaded.sending_addresses == ("192.0.2.1", "2001:db8::1")
    assert loaded.inbound_relays == ("mx1.example.org", "192.0.2.9")
    for key, bad in (("dns_servers", "resolver.example"), ("sending_addresses", "mx.example")):
        with pytest.raises(settings.ConfigError, match=key):
            settings.load(
                {key: bad, "domain": "f.example"}, environ={}, config=empty, need_secrets=False
            )


def _facts(raw: dict[str, str], expanded: dict[str, str] | None = None) -> PostfixFacts:
    both = {"queue_directory": "/var/spool/postfix", **raw}
    return PostfixFacts("/etc/postfix", both, {**both, **(expanded or {})})


def _settings(tmp_path: Path) -> settings.Settings:
    path = tmp_path / "srsd.toml"
    path.write_text('domain = "forwarder.example"\n')
    return settings.load({}, environ={}, config=path, need_secrets=False)


def _check(facts: PostfixFacts, loaded: settings.Settings) -> dict[str, Result]:
    ours = refs.endpoints(loaded)
    return {r.check: r for r in checks_postfix.references_checks(facts, loaded, ours)}


def test_swapped_ports_say_what_each_side_loses(tmp_path: Path) -> None:
    loaded = _settings(tmp_path)
    facts = _facts(
        {
            "sender_canonical_maps": "hash:/etc/postfix/canonical, tcp:127.0.0.1:10002",
            "recipient_canonical_maps": "tcp:127.0.0.1:10001",
        }
    )
    results = _check(facts, loaded)
    sender = results["postfix:sender_canonical_maps"]
    assert sender.status is Status.FAIL and "senders are never rewritten" in sender.summary
    assert sender.fix is not None
    assert sender.fix.lines == (
        "postconf -e 'sender_canonical_maps = hash:/etc/postfix/canonical, tcp:127.0.0.1:10001'",
        "postfix reload",
    )
    assert "SRS-encoded into unknown users" in results["postfix:recipient_canonical_maps"].summary


def test_an_entry_named_through_a_variable_is_set_outright(tmp_path: Path) -> None:
    loaded = _settings(tmp_path)
    facts = _facts(
        {"sender_canonical_maps": "$srs_map"}, {"sender_canonical_maps": "tcp:127.0.0.1:10002"}
    )
    result = _check(facts, loaded)["postfix:sender_canonical_maps"]
    assert result.fix is not None
    assert result.fix.lines[0] == "postconf -e 'sender_canonical_maps = tcp:127.0.0.1:10001'"


def test_canonical_maps_cannot_use_srsd(tmp_path: Path) -> None:
    loaded = _settings(tmp_path)
    facts = _facts({"canonical_maps": "hash:/etc/postfix/c, tcp:127.0.0.1:10001"})
    result = _check(facts, loaded)["postfix:canonical_maps"]
    assert result.status is Status.FAIL and "alike" in result.summary
    assert result.fix is not None
    assert result.fix.lines[0] == "postconf -e 'canonical_maps = hash:/etc/postfix/c'"


def test_a_milter_parameter_on_a_map_port_is_still_milter_mode(tmp_path: Path) -> None:
    loaded = settings.load(
        {"milter": "inet:127.0.0.1:10004"},
        environ={},
        config=_settings(tmp_path).config_file,
        need_secrets=False,
    )
    facts = _facts({"smtpd_milters": "inet:127.0.0.1:10001"})
    ours = refs.endpoints(loaded)
    assert checks_postfix.mode_in_use(facts, ours) is Mode.MILTER
    result = _check(facts, loaded)["postfix:smtpd_milters"]
    assert "speaks the milter protocol to srsd's tcp_table forward map" in result.summary
    assert result.fix is not None
    assert result.fix.lines[0] == "postconf -e 'smtpd_milters = inet:127.0.0.1:10004'"


def test_the_unit_s_credential_source_as_a_user_and_as_a_directory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As a user who cannot see the source (root's 0700 directory) the check says it cannot
    tell (!), never that it is missing; as root, a directory where the file should be is ✗;
    no unit, or a unit without the credential, is no check at all."""
    require_root()
    secret_dir = tmp_path / "private"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "secrets").write_bytes(secrets.token_hex(16).encode() + b"\n")
    units = Path(tempfile.mkdtemp(prefix="srsd-units-"))  # readable by nobody
    units.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(units))
    assert gather.credential_facts((str(units),)) is None
    unit = units / "srsd.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/srsd serve\n")
    assert gather.credential_facts((str(units),)) is None
    unit.write_text(f"[Service]\nLoadCredential=srsd-secrets:{secret_dir}/secrets\n")
    assert checks_srsd.credential_source(gather.credential_facts((str(units),)), "root") == (
        Result.ok(
            "credential-source", f"the secret srsd's unit loads ({secret_dir}/secrets) is readable"
        )
    )
    os.seteuid(NOBODY)
    try:
        facts = gather.credential_facts((str(units),))
    finally:
        os.seteuid(0)
    result = checks_srsd.credential_source(facts, "nobody")
    assert result is not None and result.status is Status.WARN, result
    assert "nobody cannot read" in result.summary
    unit.write_text(f"[Service]\nLoadCredential=srsd-secrets:{secret_dir}\n")
    result = checks_srsd.credential_source(gather.credential_facts((str(units),)), "root")
    assert result is not None and result.status is Status.FAIL, result
    assert "Is a directory" in result.summary and "243/CREDENTIALS" in result.summary
