# `srsd postfix-config` and srsd.config.postfix: the wiring per mode, and the docs that show it.
"""The Postfix wiring as data (:mod:`srsd.config.postfix`) and its documentation.

README.md and packaging/systemd/README.md show ``srsd postfix-config`` output in ```console
blocks whose first line is the command: each is run here (an empty settings file, no
environment file, ``MAIL_CONFIG`` at a Postfix configuration with nothing but defaults) and
must print exactly the rest of the block. packaging/postfix/main.cf.snippet holds the canonical
mode's main.cf lines for the default settings. That the wiring works is shown with a real
Postfix in tests/postfix/test_wiring_flow.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from srsd import cli
from srsd.config import postfix, service_env, settings
from srsd.config.postfix import Mode, Site, Step
from tests.harness.postfix import backdate, find_program

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "packaging" / "systemd" / "README.md")
SNIPPET = ROOT / "packaging" / "postfix" / "main.cf.snippet"


def load(**values: object) -> settings.Settings:
    return settings.load(
        {"domain": "forwarder.example", **values}, config=None, environ={}, need_secrets=False
    )


def main_cf(steps: list[Step]) -> dict[str, str]:
    return {s.name: s.value for s in steps if s.kind == "main"}


def test_canonical_mode_uses_the_tcp_table_ports() -> None:
    steps = postfix.wiring(load(), Mode.CANONICAL)
    assert main_cf(steps) == {
        "sender_canonical_maps": "tcp:127.0.0.1:10001",
        "sender_canonical_classes": "envelope_sender",
        "recipient_canonical_maps": "tcp:127.0.0.1:10002",
        "recipient_canonical_classes": "envelope_recipient, header_recipient",
        "virtual_alias_domains": "$virtual_alias_maps, forwarder.example",
    }
    assert all(s.kind == "main" and s.why for s in steps)


def test_milter_mode_adds_a_cleanup_for_local_forwards() -> None:
    steps = postfix.wiring(load(milter="inet:0.0.0.0:10004", listen="::"), Mode.MILTER)
    main = main_cf(steps)
    assert main["smtpd_milters"] == main["non_smtpd_milters"] == "inet:127.0.0.1:10004"
    assert main["recipient_canonical_maps"] == "tcp:[::1]:10002"
    assert "sender_canonical_maps" not in main  # the milter rewrites, not cleanup
    master = {s.name: s.value for s in steps if s.kind != "main"}
    assert master == {
        "cleanup-srs/unix": "cleanup-srs unix n - - - 0 cleanup",
        "cleanup-srs/unix/sender_canonical_maps": "tcp:[::1]:10001",
        "cleanup-srs/unix/sender_canonical_classes": "envelope_sender",
        "local/unix/cleanup_service_name": "cleanup-srs",
    }
    names = [s.name for s in steps]  # the service exists before its parameters are set
    assert names.index("cleanup-srs/unix") < names.index("cleanup-srs/unix/sender_canonical_maps")


def test_unix_sockets_under_the_queue_directory_are_named_relative_to_it() -> None:
    site = Site(queue_directory="/srv/queue")
    inside = load(socketmap="unix:/srv/queue/srsd/map.sock", milter="unix:/srv/queue/m.sock")
    steps = postfix.wiring(inside, Mode.MILTER, site)
    main = main_cf(steps)
    assert main["recipient_canonical_maps"] == "socketmap:unix:srsd/map.sock:reverse"
    assert main["smtpd_milters"] == "unix:m.sock"
    assert not any("chrooted" in s.why for s in steps)
    outside = postfix.wiring(load(socketmap="unix:/run/srsd/srsd.sock"), Mode.CANONICAL, site)
    assert main_cf(outside)["sender_canonical_maps"] == "socketmap:unix:/run/srsd/srsd.sock:forward"
    assert "a chrooted smtpd or cleanup cannot reach it" in outside[0].why


def test_lists_are_extended_once_and_keep_what_is_there() -> None:
    site = Site(
        lists={
            "smtpd_milters": "inet:127.0.0.1:8891, { unix:/x.sock, default_action=accept }",
            "non_smtpd_milters": "$smtpd_milters",
            "virtual_alias_domains": "hosted.example",
        }
    )
    main = main_cf(postfix.wiring(load(milter="inet:127.0.0.1:10004"), Mode.MILTER, site))
    assert main["smtpd_milters"] == (
        "inet:127.0.0.1:8891, { unix:/x.sock, default_action=accept }, inet:127.0.0.1:10004"
    )
    assert main["virtual_alias_domains"] == "hosted.example, forwarder.example"
    # Applied once, the lists hold srsd already: running it again changes nothing.
    again = Site(lists={k: main[k] for k in postfix.LIST_DEFAULTS})
    steps = postfix.wiring(load(milter="inet:127.0.0.1:10004"), Mode.MILTER, again)
    assert {k: main_cf(steps)[k] for k in postfix.LIST_DEFAULTS} == again.lists


def test_an_srs_domain_postfix_already_accepts_is_left_where_it_is() -> None:
    site = Site(domains=frozenset({"forwarder.example"}))
    assert "virtual_alias_domains" not in main_cf(postfix.wiring(load(), Mode.CANONICAL, site))


def test_no_endpoint_for_the_mode_is_an_error() -> None:
    with pytest.raises(postfix.WiringError, match="milter"):
        postfix.wiring(load(), Mode.MILTER)
    with pytest.raises(postfix.WiringError, match="map endpoint"):
        postfix.wiring(load(forward_port=0), Mode.CANONICAL)


def test_script_quotes_each_command_for_the_shell() -> None:
    steps = [Step("main", "a", "$b, c d", "why it is so " * 10), Step("master", "s/unix", "x", "y")]
    text = postfix.script(steps)
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert [shlex.split(c) for c in commands] == [s.argv for s in steps]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) > 2 and all(len(c) <= postfix.COMMENT_WIDTH for c in comments)


@pytest.fixture
def defaults_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Postfix configuration with nothing but defaults, no environment file, no SRS_*."""
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    backdate(tmp_path / "main.cf")
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path))
    monkeypatch.setattr(service_env, "ENVIRONMENT_FILE", tmp_path / "no-such-file")
    for field in settings.FIELDS:
        for name in field.env:
            monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return empty


def documented() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        for block in re.findall(r"^```console\n(.*?)^```$", path.read_text(), re.M | re.S):
            command, _, output = block.partition("\n")
            if command.startswith("$ srsd postfix-config"):
                found.append((path.name, command, output))
    return found


def test_the_docs_show_both_modes() -> None:
    shown = " ".join(output for _, _, output in documented())
    assert "--mode canonical:" in shown and "--mode milter:" in shown


@pytest.mark.parametrize(("doc", "command", "output"), documented())
def test_docs_show_what_postfix_config_prints(
    doc: str,
    command: str,
    output: str,
    defaults_only: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert find_program("postconf"), "Postfix's postconf is needed"
    argv = shlex.split(command)[2:]
    assert cli.main([*argv, "--config", str(defaults_only)]) == 0
    assert capsys.readouterr().out == output, f"{doc}: {command} prints something else"


def test_main_cf_snippet_is_the_canonical_wiring() -> None:
    lines = SNIPPET.read_text().splitlines()
    shown = dict(line.split(" = ", 1) for line in lines if line and not line.startswith("#"))
    assert shown == main_cf(postfix.wiring(load(), Mode.CANONICAL))


def test_without_postconf_the_defaults_are_assumed(
    defaults_only: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "find_program", lambda *a, **k: None)
    argv = ["postfix-config", "--domain", "forwarder.example", "--config", str(defaults_only)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "(postconf not found); assuming Postfix's defaults" in captured.err
    assert "'virtual_alias_domains=$virtual_alias_maps, forwarder.example'" in captured.out


def test_the_default_mode_follows_the_milter_setting_and_a_missing_endpoint_is_an_error(
    defaults_only: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["postfix-config", "--domain", "forwarder.example", "--config", str(defaults_only)]
    assert cli.main([*base, "--milter", "inet:127.0.0.1:10004"]) == 0
    assert capsys.readouterr().out.startswith("# srsd postfix-config --mode milter:")
    assert cli.main(base) == 0
    assert capsys.readouterr().out.startswith("# srsd postfix-config --mode canonical:")
    assert cli.main([*base, "--mode", "milter"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "milter mode needs srsd's milter endpoint (setting milter)" in captured.err


def test_the_live_postfix_is_read_where_mail_config_says(
    defaults_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tmp_path / "main.cf"
    main.write_text(
        "compatibility_level = 3.6\nqueue_directory = /srv/queue\n"
        "mydestination = $mydomain, localhost\nmydomain = forwarder.example\n"
        "smtpd_milters = inet:127.0.0.1:8891\n"
    )
    backdate(main)
    argv = ["postfix-config", "--domain", "forwarder.example", "--config", str(defaults_only)]
    argv += ["--socketmap", "unix:/srv/queue/srsd/srsd.sock", "--milter", "inet:[::1]:10004"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "postconf -e recipient_canonical_maps=socketmap:unix:srsd/srsd.sock:reverse" in out
    assert "'smtpd_milters=inet:127.0.0.1:8891, inet:[::1]:10004'" in out
    assert "virtual_alias_domains" not in out  # $mydomain, expanded, is the SRS domain
