# The repository stands alone: nothing refers to reference material outside the clone.
"""A user's clone has nothing next to it: no file of the project may point outside it (the
design material the project was built from lived in a ``shared`` directory beside the
repository; what the code, tests and docs need of it is copied into ``docs/``,
``tests/data/`` and ``bench/loadgen/``), and every ``docs/*.md`` a file names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Written so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./shared\b|/work/[s]hared\b|\bshared/(?:spec|vectors|research|tools)/")
DOC_REFERENCE = re.compile(r"\bdocs/([\w.-]+\.md)\b")
# Walked when the tree is not a git checkout (an unpacked source archive).
UNTRACKED_NOISE = {
    ".git",
    ".venv",
    ".cache",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}


def project_files() -> list[Path]:
    """The files of the project: git's tracked and new (not ignored) files, else a walk."""
    listed = subprocess.run(
        # safe.directory: root may run the suite in a clone another user owns
        [
            "git",
            "-c",
            "safe.directory=*",
            "-C",
            str(REPO),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
        return [REPO / n for n in names if (REPO / n).is_file()]
    return [
        p
        for p in REPO.rglob("*")
        if p.is_file() and not UNTRACKED_NOISE.intersection(p.relative_to(REPO).parts)
    ]


def texts() -> dict[str, str]:
    out = {}
    for path in project_files():
        try:
            out[str(path.relative_to(REPO))] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return out


def test_the_walk_sees_the_project() -> None:
    seen = texts()
    for name in (
        "README.md",
        "src/srsd/srs/codec.py",
        "tests/data/srs-golden.jsonl",
        "bench/loadgen/tcpmap_load.c",
        "docs/srs-format.md",
    ):
        assert name in seen


def test_nothing_points_outside_the_clone() -> None:
    found = [
        f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for name, text in texts().items()
        for m in OUTSIDE.finditer(text)
    ]
    assert found == []


def test_every_cited_doc_exists() -> None:
    missing = sorted(
        {
            f"{name}: docs/{m.group(1)}"
            for name, text in texts().items()
            for m in DOC_REFERENCE.finditer(text)
            if not (REPO / "docs" / m.group(1)).is_file()
        }
    )
    assert missing == []
