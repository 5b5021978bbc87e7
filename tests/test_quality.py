# Gates as tests: ruff lint and format over src, tests, fuzz and bench; mypy --strict over src.
"""The project's static checks run with the suite, so CI fails when they fail."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "srsd").rglob("*.py"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "--no-cache", "src", "tests", "fuzz", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    """One layout, the formatter's: no hand-wrapped lines kept with ``# fmt: skip``."""
    result = _run("ruff", "format", "--check", "--no-cache", "src", "tests", "fuzz", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_starts_with_a_header_comment_and_docstring() -> None:
    assert SOURCES, "no sources found"
    for path in SOURCES:
        text = path.read_text()
        assert text.startswith("# "), f"{path.name}: no header comment"
        if path.name != "__main__.py":
            assert ast.get_docstring(ast.parse(text)), f"{path.name}: no module docstring"


def test_public_functions_have_docstrings() -> None:
    missing = []
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        classes = [
            n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")
        ]
        for node in [*tree.body, *(m for c in classes for m in c.body)]:
            public = isinstance(node, kinds) and not node.name.startswith("_")
            if public and not ast.get_docstring(node):
                missing.append(f"{path.name}:{node.lineno} {node.name}")
    assert not missing, "public definitions without a docstring: " + ", ".join(missing)
