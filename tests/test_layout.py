"""The repository's layout rules that code can check (docs/design.md, "Layout"): the library (`src/flexip`)
never imports the recipe folder (`recipes/`) or the tests, so an installed `flexip` needs neither, and inside
the library every import points down a floor."""

from __future__ import annotations

import ast
import re
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
    assert not (LIBRARY / "demo").exists(), "the demo factory belongs in recipes/demo, not the library"
    assert (REPO / "recipes" / "demo" / "__init__.py").is_file()


# docs/design.md, "Layout": the library's floors, bottom first. A module imports only its own unit (folder or
# top-level module) and units on lower floors; every unit of the package must be placed here.
FLOORS = [
    {"errors"},
    {"denoisers", "model_paths", "schedulers"},
    {"__init__", "atomic", "defaults", "contact_sheet", "text_files", "families", "settings"},
    {"models", "references", "demo_subject"},
    {"tiny", "manifest"},
    {"pipeline"},
    {"evaluation", "app", "prep"},
    {"calibration"},
    {"training"},
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


# docs/design.md: the architecture and its seams in one page, then a summary of each part linking to its decision
# record in docs/decisions/. The cap keeps it a document a newcomer reads in ten minutes.
DESIGN = REPO / "docs" / "design.md"
DECISIONS = REPO / "docs" / "decisions"
DESIGN_MAX_LINES = 650


def test_the_design_document_stays_short():
    lines = len(DESIGN.read_text().splitlines())
    assert lines < DESIGN_MAX_LINES, (
        f"docs/design.md has {lines} lines (the cap is {DESIGN_MAX_LINES}): move a part's reasoning into its "
        "record in docs/decisions/ and leave a summary"
    )


def test_every_decision_record_is_linked_from_the_design_and_exists():
    linked = set(re.findall(r"\]\((decisions/[\w.-]+\.md)\)", DESIGN.read_text()))
    records = {f"decisions/{path.name}" for path in DECISIONS.glob("*.md")}
    assert linked, "docs/design.md links no decision record"
    assert not linked - records, f"docs/design.md links records that do not exist: {sorted(linked - records)}"
    assert not records - linked, f"decision records docs/design.md does not link: {sorted(records - linked)}"


# The code and the docs describe the project as it is, not the work that made it: no issue or pull-request
# numbers (an upstream bug is cited by its address). `#` followed by digits counts unless it is part of a word,
# an HTML entity, an address or a format spec.
ISSUE_REFERENCE = re.compile(r"\b(?:[Ii]ssue|PR|[Pp]ull request)s? #?\d+|(?<![\w&/#:{])#\d+\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".sh"}


def text_files() -> list[Path]:
    """The code, recipes, configs, benchmarks, docs and tests a reader reads (this file holds the pattern)."""
    roots = [REPO / name for name in ("src", "recipes", "configs", "bench", "docs", "tests")]
    found = [REPO / "README.md"]
    for root in roots:
        found += [path for path in root.rglob("*") if path.suffix in TEXT_SUFFIXES and path.is_file()]
    return sorted(path for path in found if path != Path(__file__).resolve() and "egg-info" not in str(path))


def test_the_issue_pattern_finds_issue_references():
    found = ["the dial (is" + "sue 23)", "see #" + "12", "Iss" + "ues 4 and 5", "fixed in PR " + "7"]
    kept = ["a 2-core machine", "colour &#39;", 'f"{x:#010x}"', "issue the request", "https://x/#12"]
    assert all(ISSUE_REFERENCE.search(text) for text in found)
    assert not any(ISSUE_REFERENCE.search(text) for text in kept)


def test_every_decision_record_named_in_the_repository_exists():
    named = {
        (f"{path.relative_to(REPO)}", name)
        for path in text_files()
        for name in re.findall(r"docs/decisions/([\w.-]+\.md)", path.read_text(errors="replace"))
    }
    assert named  # code and docs cite the records
    missing = sorted(
        f"{path}: docs/decisions/{name}" for path, name in named if not (DECISIONS / name).is_file()
    )
    assert not missing, "no such decision record:\n" + "\n".join(missing)


def test_no_issue_numbers_in_code_or_docs():
    files = text_files()
    assert len(files) > 100  # the scan found the repository
    bad = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if ISSUE_REFERENCE.search(line)
    ]
    assert not bad, "describe the project, not the work that made it:\n" + "\n".join(bad)


# A function reads on one screen: a longer one is cut into named steps. The attention processor's `__call__`
# stays whole, every layer call visible in one forward, as diffusers keeps its processors.
FUNCTION_MAX_LINES = 60
WHOLE_ON_PURPOSE = {("src/flexip/models/processor.py", "FlexIPAttnProcessor.__call__")}


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from its `def` to its last line) of every function and method in `path`, nested
    ones included."""
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_the_function_scan_measures_every_function(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "@decorator\ndef f():\n    x = 1\n\n    return x\n\n\n"
        "class A:\n    def m(self):\n        def inner():\n            pass\n\n        return inner\n\n\n"
        "if True:\n\n    async def g():\n        pass\n"
    )
    assert function_lengths(source) == [("f", 4), ("A.m", 5), ("A.m.inner", 2), ("g", 2)]


def test_no_function_in_the_library_is_over_the_cap():
    long = [
        f"{path.relative_to(REPO)}: {name} has {lines} lines"
        for path in sorted(LIBRARY.rglob("*.py"))
        for name, lines in function_lengths(path)
        if lines > FUNCTION_MAX_LINES and (str(path.relative_to(REPO)), name) not in WHOLE_ON_PURPOSE
    ]
    assert not long, (
        f"functions over {FUNCTION_MAX_LINES} lines from `def` to the last line: cut them into named steps\n"
        + "\n".join(long)
    )


def test_package_inits_import_nothing():
    """A package's `__init__.py` is its docstring, so importing one module of a package (a torch-free one the
    command line needs before torch) never imports the rest; `flexip/__init__.py` exports lazily, and
    `flexip/cli/__init__.py` is the command's entry point, `main`, on the standard library, the error type and
    the thread policy (`cli/threads.py`, torch-free)."""
    importing = []
    for path in LIBRARY.rglob("__init__.py"):
        if path == LIBRARY / "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        if path == LIBRARY / "cli" / "__init__.py":
            imports = [node for node in imports if isinstance(node, ast.ImportFrom) and node.level
                       and node.module not in ("errors", "threads")]  # fmt: skip
        if imports:
            importing.append(str(path.relative_to(REPO)))
    assert not importing, f"these package inits import modules: {importing}"


def test_tests_are_laid_out_by_room():
    """A room's tests are in `tests/<room>/`: a folder of `src/flexip`, or `demo` (the recipe) or `bench`; the
    rules of the whole house stay at the top."""
    rooms = {path.name for path in LIBRARY.iterdir() if path.is_dir() and path.name != "__pycache__"}
    folders = {path.name for path in (REPO / "tests").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders - rooms <= {"demo", "bench"}, f"test folders that name no room: {sorted(folders - rooms)}"


# Code, help texts and docs cite only documents a reader has: the method's description is the repository's own
# `docs/method.md` (help texts, read without the repository, cite the paper), and every section cited exists.
METHOD = REPO / "docs" / "method.md"
CITED_DOCUMENT = re.compile(r"([\w./-]*\b(?:method|ecosystem|style)\.md)\)?((?:[,;]? ?§\d+(?:\.\d+)?)*)")


def cited_documents(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, document as cited, sections cited) of every citation of the method or house notes in `path`."""
    return [
        (number, document, re.findall(r"§(\d+(?:\.\d+)?)", sections))
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for document, sections in CITED_DOCUMENT.findall(line)
    ]


def test_citations_name_documents_in_the_repository(tmp_path):
    example = tmp_path / "example.py"
    example.write_text('"""Gate (method.md §2.4) and docs/method.md §2.3, §4; see ../shared/docs/style.md."""\n')
    assert cited_documents(example) == [
        (1, "method.md", ["2.4"]), (1, "docs/method.md", ["2.3", "4"]), (1, "../shared/docs/style.md", [])
    ]
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", METHOD.read_text(), re.MULTILINE))
    bad = []
    for path in text_files():
        for number, document, cited in cited_documents(path):
            found = [place.resolve() for place in (REPO / document, path.parent / document) if place.is_file()]
            where = f"{path.relative_to(REPO)}:{number}"
            if not any(place.is_relative_to(REPO) for place in found):
                bad.append(f"{where}: {document} is no file of the repository")
            elif METHOD in found and not set(cited) <= sections:
                bad.append(f"{where}: docs/method.md has no section {sorted(set(cited) - sections)}")
    assert not bad, "cite docs/method.md (or the paper, in help texts):\n" + "\n".join(bad)
