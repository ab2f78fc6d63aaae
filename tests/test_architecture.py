"""The code's shape (issue 12): no import cycle between the project's modules (module-level and function-level
imports alike), and no module in abba/ or eval/ over MAX_LINES lines except the ones not split yet, listed below
(the list can only shrink: a listed module that fits, or grows, fails)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("abba", "eval")
MAX_LINES = 300
#: Modules not split yet, with their line counts when this list was written: each may shrink, never grow; one
#: that fits MAX_LINES must leave the list.
TOO_LONG: dict[str, int] = {}
#: Import cycles not removed yet (each a sorted tuple of module names); empty: there is none.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} of every module under abba/ and eval/ (a package is its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (top level, functions, `if` blocks alike)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name from pkg.
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import abba.data.templates.x` -> the deepest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "abba.table_registry" in graph["abba.plots"]          # module level, relative
    assert "abba.plots" in graph["abba.tables"] or "abba.plots" in graph["abba.table_mini_render"]  # in a function
    assert "abba.table_registry" in graph["eval.benchmarks"]     # absolute, from a package's __init__
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found - KNOWN_CYCLES == set(), f"import cycles: {sorted(found - KNOWN_CYCLES)}"
    assert KNOWN_CYCLES - found == set(), f"gone, remove from KNOWN_CYCLES: {sorted(KNOWN_CYCLES - found)}"


def test_no_module_over_the_line_limit():
    lengths = {str(path.relative_to(REPO_ROOT)): len(path.read_text().splitlines())
               for path in project_modules().values()}
    too_long = {path: n for path, n in lengths.items() if n > MAX_LINES and path not in TOO_LONG}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}: split them"
    grown = {path: (lengths.get(path), n) for path, n in TOO_LONG.items() if lengths.get(path, 0) > n}
    assert not grown, f"listed modules that grew (now, listed): {grown}"
    fits = [path for path in TOO_LONG if lengths.get(path, 0) <= MAX_LINES]
    assert not fits, f"{fits} fit {MAX_LINES} lines now (or are gone): remove them from TOO_LONG"


def _readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_the_readme_layout_lists_every_module_and_script():
    """Every module under abba/ and eval/ is named by its path in the README's Layout table, and every file in
    scripts/ by its name: a new module (or a renamed one) fails here until the table says what it is for."""
    layout = _readme_section("Layout")
    missing = [str(path.relative_to(REPO_ROOT)) for path in project_modules().values()
               if f"`{path.relative_to(REPO_ROOT)}`" not in layout]
    missing += [f"scripts/{path.name}" for path in sorted((REPO_ROOT / "scripts").iterdir())
                if path.is_file() and path.suffix in (".sh", ".py", ".sbatch") and path.name not in layout]
    assert not missing, f"not in the README's Layout table: {missing}"


def test_how_a_result_is_made_takes_at_most_six_files():
    """The README's "How a result is made" follows one Table 1 row through at most six files, all real."""
    section = _readme_section("How a result is made")
    table = [line for line in section.splitlines() if line.startswith("| ") and "](" in line]
    files = [line.split("](", 1)[1].split(")", 1)[0] for line in table]
    assert 0 < len(files) <= 6, files
    assert all((REPO_ROOT / f).is_file() for f in files), files
    assert files[0].startswith("configs/experiment/t1_") and files[-1] == "abba/tables.py"
