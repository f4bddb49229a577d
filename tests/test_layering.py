"""The package map of docs/architecture.md holds: no folder imports a folder above it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; folders on one floor may not import each other either.
FLOORS: list[set[str]] = [
    {"core"}, {"sql"}, {"classifier"}, {"routing"}, {"providers"}, {"training", "stream_processors"}, {"ingest"},
    {"dashboard"}, {"stack"},
]
FLOOR_OF = {folder: floor for floor, folders in enumerate(FLOORS) for folder in folders}


def imported_folders(path: Path) -> set[str]:
    """Top-level project folders a module imports, wherever the import stands (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in FLOOR_OF)
    return found


def test_no_folder_imports_a_folder_above_it_or_beside_it() -> None:
    upward = []
    for folder, floor in FLOOR_OF.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for target in imported_folders(path) - {folder}:
                if FLOOR_OF[target] >= floor:
                    upward.append(f"{path.relative_to(REPO_ROOT)} imports {target}")
    assert not upward, "imports that run up (or across) a floor:\n" + "\n".join(upward)


def test_every_project_folder_has_a_floor() -> None:
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(FLOOR_OF), f"folders missing from the package map: {sorted(packages - set(FLOOR_OF))}"
