# The package layout as a rule: which layer may import which, and README's map of the tree.
"""The layers of :mod:`srsd` and the direction of their imports (see ``srsd/__init__.py``).

Rule 1, h11's "no I/O in the protocol" at package scale: :mod:`srsd.srs` and
:mod:`srsd.wire` import neither trio nor any I/O module, and nothing of srsd but each other
(the wire formats share the address rules of :mod:`srsd.srs.address`). Rule 2: only
:mod:`srsd.serve` and the entry points (:mod:`srsd.cli`, :mod:`srsd.__main__`) import
:mod:`srsd.serve`; only :mod:`srsd.__main__` imports :mod:`srsd.cli`. Imports inside
functions count too.

README's "Layout" table is generated from the tree (each module's header comment):
``.venv/bin/python tests/test_layout.py --write`` rewrites it; the test fails on drift.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "srsd"
README = ROOT / "README.md"
PURE = ("srsd.srs", "srsd.wire")
ENTRY_POINTS = ("srsd.cli", "srsd.__main__")
IO_MODULES = {"trio", "socket", "selectors", "sqlite3", "redis", "subprocess", "threading"}
BEGIN = "<!-- layout: generated from the tree by tests/test_layout.py -->"
END = "<!-- layout: end -->"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(PURE)))
def test_pure_layers_import_no_io_and_nothing_above(module: str) -> None:
    imported = imports_of(MODULES[module])
    io = {name for name in imported if name.split(".")[0] in IO_MODULES}
    above = {
        n for n in imported if n.split(".")[0] == "srsd" and not any(within(n, p) for p in PURE)
    }
    assert not io, f"{module} does I/O: imports {sorted(io)}"
    assert not above, f"{module} imports a layer above the pure ones: {sorted(above)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_serve_and_the_entry_points_import_serve(module: str) -> None:
    imported = {n for n in imports_of(MODULES[module]) if n.startswith("srsd")}
    if not within(module, "srsd.serve") and module not in ENTRY_POINTS:
        assert not {n for n in imported if within(n, "srsd.serve")}, module
    if module != "srsd.__main__":
        assert not {n for n in imported if within(n, "srsd.cli")}, module


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker sees an import of trio hidden in a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import trio\n    from srsd.serve import loop\n")
    assert {"trio", "srsd.serve", "srsd.serve.loop"} <= imports_of(bad)


def header(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), path
    return first[2:].strip()


def layout_table() -> str:
    """README's table of the tree: a row per package, then a row per module in it."""
    rows = ["| where | holds |", "|---|---|"]
    packages = sorted({p.parent for p in PACKAGE.rglob("*.py")}, key=lambda d: (d != PACKAGE, d))
    for directory in packages:
        relative = directory.relative_to(ROOT)
        init = directory / "__init__.py"
        if directory != PACKAGE:
            rows.append(f"| **`{relative}/`** | {header(init)} |")
        for path in sorted(directory.glob("*.py")):
            if path.name == "__init__.py" and directory != PACKAGE:
                continue
            rows.append(f"| `{path.relative_to(ROOT)}` | {header(path)} |")
    return "\n".join([BEGIN, *rows, END])


def readme_block() -> str:
    text = README.read_text()
    match = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
    assert match, f"README.md has no {BEGIN} ... {END} block"
    return match.group(0)


def test_readme_layout_is_the_tree() -> None:
    assert readme_block() == layout_table(), (
        "README's Layout table differs from the tree: run "
        "`.venv/bin/python tests/test_layout.py --write`"
    )


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    README.write_text(README.read_text().replace(readme_block(), layout_table()))
