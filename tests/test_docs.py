# README and the packaging examples agree with the settings table; the examples are valid.
"""Documentation drifts silently; these tests make it drift loudly.

The README's settings table and ``packaging/srsd.toml.example`` are generated from the one
table in :mod:`srsd.config.settings` (``python3 -m srsd.config.render --write``): they must be
exactly what the table gives.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from srsd.config import render, settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOML_EXAMPLE = ROOT / "packaging" / "srsd.toml.example"
ENV_EXAMPLE = ROOT / "packaging" / "systemd" / "srsd.env.example"
REGENERATE = "regenerate with: python3 -m srsd.config.render --write"


def test_readme_settings_table_is_the_table() -> None:
    assert render.readme_with_table(README) == README, REGENERATE


def test_toml_example_is_the_table() -> None:
    assert TOML_EXAMPLE.read_text(encoding="utf-8") == render.example_file(), REGENERATE


@pytest.mark.parametrize("field", settings.FIELDS, ids=lambda f: f.key)
def test_readme_settings_table_names_key_env_and_flag(field: settings.Field) -> None:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{field.key}` |")]
    assert len(rows) == 1, f"README has no settings row for {field.key}"
    for name in (*field.env, field.flag):
        assert f"`{name}`" in rows[0], f"README row for {field.key} lacks {name}"
    assert ("| restart |" in rows[0]) is not field.reloads


def test_toml_example_mentions_every_key_and_loads(tmp_path: Path) -> None:
    text = TOML_EXAMPLE.read_text()
    for key in settings.FIELD_BY_KEY:
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"{key} missing from the example"
    secret = tmp_path / "secrets"
    secret.write_bytes(b"example-secret\n")
    secret.chmod(0o600)
    config = tmp_path / "srsd.toml"
    config.write_text(text)
    loaded = settings.load({"secrets_file": str(secret)}, environ={}, config=config)
    assert loaded.domain == "forwarder.example"
    example = tomllib.loads(text)
    for key in example.keys() - {"domain"}:
        assert getattr(loaded, key) == settings.FIELD_BY_KEY[key].default, f"example {key}"
    # The commented-out examples are valid values too.
    commented = dict(re.findall(r"^# (\w+) = (.*)$", text, re.M))
    assert commented.keys() == {f.key for f in settings.FIELDS if f.example and not f.required}
    config.write_text(
        text + "".join(f"{k} = {v}\n" for k, v in commented.items() if k != "secrets_file")
    )
    (tmp_path / "exclude").write_text("")
    with pytest.raises(settings.ConfigError, match="exclude_file: cannot read"):
        settings.load({"secrets_file": str(secret)}, environ={}, config=config)


def test_env_example_uses_known_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    known = {name for f in settings.FIELDS for name in f.env}
    names = re.findall(r"^#?([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M)
    assert names, "no variables found"
    assert set(names) <= known, f"unknown: {set(names) - known}"
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    secret = tmp_path / "secrets"
    secret.write_bytes(b"example-secret\n")
    secret.chmod(0o600)
    loaded = settings.load({"secrets_file": str(secret)}, environ=values)
    assert loaded.domain == "forwarder.example"
    assert b"a.example.com" in loaded.excluded
