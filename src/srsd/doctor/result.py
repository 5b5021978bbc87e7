# What one doctor check found: a status, the postmaster's words for it, and the exact fix.
"""The result of one check, and the two ways of showing a list of them.

A check is ✓ (works), ! (works, but risky or not verifiable) or ✗ (broken). Each ! and ✗
says what is wrong in the postmaster's terms and gives the fix as lines to apply: shell
commands (``postconf -e ...``), lines for srsd's settings file, or DNS records, named by
:class:`FixKind` so that a monitoring script (``--json``) can tell them apart.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass


class Status(enum.Enum):
    """How a check came out; the value is what ``--json`` prints."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def symbol(self) -> str:
        """✓, ! or ✗."""
        return {"ok": "✓", "warn": "!", "fail": "✗"}[self.value]


class FixKind(enum.Enum):
    """Where a fix's lines go."""

    SHELL = "shell"  # commands to run as root
    SETTINGS = "settings"  # lines for srsd's TOML settings file, then restart srsd
    DNS = "dns"  # records for the zone
    TEXT = "text"  # advice a person carries out


@dataclass(frozen=True)
class Fix:
    """The exact fix: ``lines`` of one :class:`FixKind`."""

    kind: FixKind
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    """One check's outcome. ``check`` is a stable name (``postfix-maps``, ``spf``...)."""

    check: str
    status: Status
    summary: str
    fix: Fix | None = None

    @classmethod
    def ok(cls, check: str, summary: str) -> Result:
        """A ✓ result."""
        return cls(check, Status.OK, summary)

    @classmethod
    def warn(cls, check: str, summary: str, kind: FixKind, *lines: str) -> Result:
        """A ! result with its fix."""
        return cls(check, Status.WARN, summary, Fix(kind, lines) if lines else None)

    @classmethod
    def fail(cls, check: str, summary: str, kind: FixKind, *lines: str) -> Result:
        """A ✗ result with its fix."""
        return cls(check, Status.FAIL, summary, Fix(kind, lines) if lines else None)


_FIX_WORDS = {
    FixKind.SHELL: "fix (run as root)",
    FixKind.SETTINGS: "fix (in srsd's settings file, then restart srsd)",
    FixKind.DNS: "fix (DNS records)",
    FixKind.TEXT: "fix",
}


def healthy(results: Sequence[Result]) -> bool:
    """True when nothing is ✗ (the exit status is 0 then)."""
    return all(r.status is not Status.FAIL for r in results)


def render_text(results: Sequence[Result]) -> str:
    """One line per check; each fix indented beneath its check."""
    lines = []
    for r in results:
        lines.append(f"{r.status.symbol} {r.check}: {r.summary}")
        if r.fix is not None:
            lines.append(f"    {_FIX_WORDS[r.fix.kind]}:")
            lines.extend(f"      {line}" for line in r.fix.lines)
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result]) -> str:
    """``{"ok": ..., "checks": [...]}``, for monitoring."""
    checks = [
        {
            "check": r.check,
            "status": r.status.value,
            "summary": r.summary,
            "fix": None
            if r.fix is None
            else {"kind": r.fix.kind.value, "lines": list(r.fix.lines)},
        }
        for r in results
    ]
    return (
        json.dumps({"ok": healthy(results), "checks": checks}, ensure_ascii=False, indent=2) + "\n"
    )
