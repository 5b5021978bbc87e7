# Settings as text: `srsd config`, the README settings table and the example TOML file.
"""Write settings out, from the one table in :mod:`srsd.config.settings`.

* :func:`effective_config` - ``srsd config``: the effective configuration as TOML that
  ``--config`` accepts, each key followed by a comment naming where its value came from.
  Secrets are never written: the secrets file's path and how many secrets it holds are;
  a Redis password in ``envelope_database`` is left out (and the comment says so).
* :func:`readme_table` - the "Settings" table of README.md;
* :func:`example_file` - ``packaging/srsd.toml.example``.

``python3 -m srsd.config.render --write`` rewrites the two files from the table (the tests
fail when they disagree with it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from srsd.config.settings import FIELDS, Field, Settings
from srsd.envelope.location import RedisTarget

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
EXAMPLE = ROOT / "packaging" / "srsd.toml.example"
TABLE_HEADER = (
    "| TOML key | environment | flag | default | SIGHUP | meaning |\n|---|---|---|---|---|---|\n"
)
EXAMPLE_HEADER = """\
# /etc/srsd/srsd.toml: every srsd setting with its default. The environment and the
# command line override this file (see README.md, "Settings"). Generated from the table in
# src/srsd/config/settings.py (python3 -m srsd.config.render --write): edit that, not this.
"""


def effective_config(settings: Settings, *, changed: bool = False) -> str:
    """``srsd config``: one ``key = value  # source`` line per setting (with ``changed``,
    only those not at their default, like ``postconf -n``)."""
    lines = [f"# srsd effective configuration{' (settings not at their default)' * changed}"]
    for f in FIELDS:
        source = settings.sources.get(f.key, "default")
        if changed and source == "default":
            continue
        value = getattr(settings, f.key)
        note = f"from {source}" if source != "default" else "default"
        if f.key == "secrets_file":
            count = len(settings.secrets)
            note += f"; holds {count} secret{'s' * (count != 1)} (not shown)"
        if isinstance(value, RedisTarget) and value.password is not None:
            note += "; its password is not shown"
        lines.append(f"{f.key} = {f.literal(value)}  # {note}")
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """The README's settings table, one row per setting."""
    return TABLE_HEADER + "".join(_row(f) + "\n" for f in FIELDS)


def _row(f: Field) -> str:
    env = ", ".join(f"`{name}`" for name in f.env)
    flag = f"`{f.flag}`" + " (repeatable)" * f.repeatable
    if f.doc_default is not None:
        default = f.doc_default
    elif f.required:
        default = "(none: required)"
    elif f.default is None:
        default = "(none)" if f.example is not None else f"`{f.literal(None)}` (off)"
    else:
        default = f"`{f.literal(f.default)}`"
    reload = "applies" if f.reloads else "restart"
    return f"| `{f.key}` | {env} | {flag} | {default} | {reload} | {f.help} |"


def example_file() -> str:
    """``packaging/srsd.toml.example``: every key with its help, at its default (commented
    out with an example value when the default is computed or unset)."""
    lines = [EXAMPLE_HEADER]
    for f in FIELDS:
        lines.append(f"# {f.help.replace('`', '')}")
        if f.required:
            lines.append(f"{f.key} = {f.example}")
        elif f.example is not None:
            lines.append(f"# {f.key} = {f.example}")
        else:
            lines.append(f"{f.key} = {f.literal(f.default)}")
        lines.append("")
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    """``readme`` with its settings table replaced by :func:`readme_table`."""
    start = readme.index(TABLE_HEADER)
    end = readme.index("\n\n", start) + 1
    return readme[:start] + readme_table() + readme[end:]


def main(argv: list[str]) -> int:
    """``--write``: rewrite README.md's table and the example file; else print both."""
    if argv == ["--write"]:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
        EXAMPLE.write_text(example_file(), encoding="utf-8")
        return 0
    sys.stdout.write(readme_table() + "\n" + example_file())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
