"""The repository's layout rules that code can check (docs/design.md, "Layout"): the library (`src/flexip`)
never imports the recipe folder (`recipes/`) or the tests, so an installed `flexip` needs neither, and inside
the library every import points down a floor."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "src" / "flexip"
FORBIDDEN = ("recipes", "tests")  # top-level packages of the repository that are not the library


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, including `importlib.import_module("x")` and
    `__import__("x")` with a literal name. Relative imports stay inside the package and are skipped."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_the_scan_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "import recipes.demo\nfrom tests import conftest\nfrom . import sibling\n"
        "def f():\n    from recipes.demo.world import render\n    importlib.import_module('tests.x')\n"
    )
    found = sorted(imported_modules(source))  # ast.walk is breadth first: sort by line
    assert found == [(1, "recipes.demo"), (2, "tests"), (5, "recipes.demo.world"), (6, "tests.x")]


def test_the_library_imports_neither_the_recipes_nor_the_tests():
    sources = sorted(LIBRARY.rglob("*.py"))
    assert len(sources) > 20  # the scan found the package
    bad = [
        f"{path.relative_to(REPO)}:{line}: imports {module}"
        for path in sources
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_the_demo_factory_lives_in_the_recipe_folder():
    assert not (LIBRARY / "demo").exists(), "src/flexip/demo moved to recipes/demo"
    assert (REPO / "recipes" / "demo" / "__init__.py").is_file()


# docs/design.md, "Layout": the library's floors, bottom first. A module imports only its own unit (folder or
# top-level module) and units on lower floors; every unit of the package must be placed here.
FLOORS = [
    {"errors"},
    {"denoisers"},
    {"__init__", "atomic", "defaults", "contact_sheet", "families"},
    {"models", "reference", "schedulers", "demo_subject"},
    {"tiny", "manifest"},
    {"pipeline"},
    {"training", "evaluation", "app", "prep"},
    {"cli"},
    {"__main__"},
]


def unit_of(module: str) -> str:
    """flexip.pipeline.call -> pipeline; flexip.tiny -> tiny; flexip -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def library_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of `flexip` in `path`, relative ones resolved."""
    package = ".".join(path.relative_to(LIBRARY.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
        else:
            found += [(line, module) for line, module in imported_modules_of(node) if module.split(".")[0] == "flexip"]
    return found


def imported_modules_of(node) -> list[tuple[int, str]]:
    if isinstance(node, ast.Import):
        return [(node.lineno, alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [(node.lineno, node.module)]
    return []


def test_every_import_in_the_library_points_down():
    floor = {unit: index for index, units in enumerate(FLOORS) for unit in units}
    bad = []
    for path in sorted(LIBRARY.rglob("*.py")):
        source = unit_of(".".join(path.relative_to(LIBRARY.parent).with_suffix("").parts))
        assert source in floor, f"{path.relative_to(REPO)}: place its unit {source!r} on a floor (FLOORS, docs/design.md)"
        for line, module in library_imports(path):
            target = unit_of(module)
            if target != source and floor[target] >= floor[source]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {source} (floor {floor[source]}) imports {module} (floor {floor[target]})")
    assert not bad, "\n".join(bad)
