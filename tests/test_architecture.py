"""Imports between gpa's packages point the way docs/architecture.md draws them.

Each module's top-level ``import gpa…`` statements are read with ``ast`` (imports inside
functions are lazy and documented where they point up: ``Report.__str__`` renders); a
package may import only the packages its row below allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpa"

BASICS = {"errors", "names", "options", "columns"}
# group -> the groups its modules may import at top level (its own always)
ALLOWED = {
    "errors": set(),
    "names": set(),
    "columns": set(),
    "options": {"errors"},
    "core.graph": BASICS,
    "core": BASICS | {"core.graph"},
    "frontends": BASICS | {"core.graph"},
    # the channel analysis runs the fx graph a frontend keeps (docs/architecture.md)
    "channels": BASICS | {"core", "core.graph", "frontends"},
    "models": {"errors"},
    "render": BASICS | {"core", "core.graph"},
    "api": BASICS | {"core", "core.graph", "frontends", "pipeline", "target"},
    "pipeline": BASICS | {"core", "core.graph", "frontends", "channels"},
    "target": BASICS | {"frontends"},
    "growth": BASICS,
    "measure": BASICS | {"core", "core.graph", "frontends", "channels", "api", "render"},
    "ci": BASICS | {"core", "core.graph", "api", "gpa"},
    "testing": BASICS | {"core", "api", "ci"},
    "cli": BASICS | {"gpa"},
}


def _group(module: str) -> str:
    """The group of a dotted module name: a subpackage, ``core`` (``core.graph`` apart:
    the frontends build it), or a top-level module's own name."""
    parts = module.split(".")[1:]
    if not parts:
        return "gpa"
    if parts[0] == "core":
        return "core.graph" if parts[1:2] == ["graph"] else "core"
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The gpa modules ``path`` imports at its top level."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue  # (an `if TYPE_CHECKING:` block imports for annotations only)
        found.update(n for n in names if n == "gpa" or n.startswith("gpa."))
    return found


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["gpa", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


# The package itself, ``python -m gpa`` and the two public aliases (gpa.compare, gpa.plot)
# import what they re-export.
ENTRIES = {"gpa", "__main__", "compare", "plot"}
CHECKED = [(m, p) for m, p in _modules() if _group(m) in ALLOWED]


@pytest.mark.parametrize(("module", "path"), CHECKED, ids=[m for m, _ in CHECKED])
def test_imports_point_the_documented_way(module: str, path: Path) -> None:
    group = _group(module)
    wrong = sorted(
        target
        for target in _imports(path)
        if _group(target) != group and _group(target) not in ALLOWED[group]
    )
    assert not wrong, f"{module} ({group}) imports {wrong}; see docs/architecture.md"


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    """A new package gets a row (or it is checked against nothing); a renamed one must not
    leave its row checking nothing."""
    groups = {_group(m) for m, _ in _modules()}
    assert groups - ENTRIES == set(ALLOWED)
    named = {g for allowed in ALLOWED.values() for g in allowed}
    assert named <= groups, sorted(named - groups)
