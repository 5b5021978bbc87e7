# README and packaging examples agree with the code: every setting documented, examples valid.
"""Documentation drifts silently; these tests make it drift loudly."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from srsd import settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOML_EXAMPLE = ROOT / "packaging" / "srsd.toml.example"
ENV_EXAMPLE = ROOT / "packaging" / "systemd" / "srsd.env.example"


@pytest.mark.parametrize("field", settings.FIELDS, ids=lambda f: f.key)
def test_readme_settings_table_names_key_env_and_flag(field: settings.Field) -> None:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{field.key}` |")]
    assert len(rows) == 1, f"README has no settings row for {field.key}"
    for name in (*field.env, field.flag):
        assert f"`{name}`" in rows[0], f"README row for {field.key} lacks {name}"


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
    defaults = {f.key: f.default for f in settings.FIELDS}
    example = tomllib.loads(text)
    for key in example.keys() - {"domain", "exclude_domains", "listen"}:
        assert getattr(loaded, key) == defaults[key], f"example {key} is not the default"


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
