# The packaged systemd units as data: parsed as systemd reads them.
"""The units in ``packaging/systemd/`` (:data:`UNITS`) read into
``{section: {key: [values]}}`` (:func:`parse_unit`, :func:`one`), and the example environment
file read as systemd reads ``EnvironmentFile=`` (:func:`environment_file`).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


UNITS = ROOT / "packaging" / "systemd"


Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not expected"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}= in [{section}]: {values}"
    return values[0]


def environment_file() -> dict[str, str]:
    """srsd.env.example read as systemd reads EnvironmentFile=: KEY=value lines."""
    text = (UNITS / "srsd.env.example").read_text()
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))
