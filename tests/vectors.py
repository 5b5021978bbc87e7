# Loader for the golden SRS vectors in tests/data/srs-golden.jsonl (bytes, not text).
"""Read ``srs-golden.jsonl`` into :class:`Row` objects whose addresses are bytes.

The file is part of the repository (``tests/data/``, described in its README.md); it is
found relative to this file so the tests run from any working directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "data" / "srs-golden.jsonl"


@dataclass(frozen=True)
class Row:
    """One golden case. ``output`` is None exactly when the references answered an error."""

    line: int
    op: str
    input: bytes
    output: bytes | None
    error: str | None
    secrets: tuple[bytes, ...]
    domain: bytes
    timestamp: int
    srs_ts: bytes
    category: str

    @property
    def id(self) -> str:
        shown = self.input.decode("utf-8", "backslashreplace")
        if len(shown) > 48:
            shown = shown[:45] + "..."
        return f"L{self.line:03d}-{self.op}-{self.category}-{shown}"


def _field(raw: dict[str, object], name: str, line: int) -> bytes | None:
    text = raw.get(name)
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{GOLDEN}:{line}: {name} is not a string")
    data = text.encode("utf-8", "surrogateescape")
    hex_text = raw.get(f"{name}_hex")
    if isinstance(hex_text, str):
        # The hex field is the truth; the text must be its surrogateescape spelling.
        truth = bytes.fromhex(hex_text)
        if truth != data:
            raise ValueError(f"{GOLDEN}:{line}: {name} and {name}_hex disagree")
        return truth
    return data


def load_golden() -> list[Row]:
    """All rows of the golden file, in file order; a clear error if the file is missing."""
    if not GOLDEN.is_file():
        raise FileNotFoundError(
            f"golden SRS vectors not found at {GOLDEN}: tests/data/ is part of the repository "
            "(a sparse or partial checkout?)"
        )
    rows = []
    with GOLDEN.open(encoding="utf-8") as lines:
        for line, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            raw = json.loads(text)
            secret = raw["secret"]
            secrets = tuple(s.encode() for s in (secret if isinstance(secret, list) else [secret]))
            data = _field(raw, "input", line)
            if data is None:
                raise ValueError(f"{GOLDEN}:{line}: no input")
            output = _field(raw, "output", line)
            error = raw.get("error")
            if (output is None) == (error is None):
                raise ValueError(f"{GOLDEN}:{line}: needs exactly one of output and error")
            rows.append(
                Row(
                    line=line,
                    op=raw["op"],
                    input=data,
                    output=output,
                    error=error,
                    secrets=secrets,
                    domain=raw["domain"].encode(),
                    timestamp=int(raw["timestamp"]),
                    srs_ts=raw["srs_ts"].encode(),
                    category=raw["category"],
                )
            )
    return rows
