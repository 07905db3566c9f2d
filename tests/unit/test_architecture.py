"""The layout's rules: no import cycles, and family names only where a family is defined."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from talkinghead.families.registry import BUILTIN, families

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("talkinghead", "shared", "services")


def project_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports module a.b when it is one, else a name of a.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = list(project_files())
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_project_modules() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the scan sees the whole project
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_an_import_inside_a_function(
    tmp_path: Path,
) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "def f() -> None:\n    from talkinghead.media import probe\n"
    known = {"talkinghead.media", "talkinghead.metrics"}
    found = imported_modules_of_text(source, ROOT / "talkinghead" / "metrics.py", known)
    assert found == {"talkinghead.media"}


def imported_modules_of_text(source: str, path: Path, known: set[str]) -> set[str]:
    """`imported_modules` for a source text standing in for `path`."""
    tmp = path.with_name("_architecture_probe.py")
    tmp.write_text(source)
    try:
        return imported_modules(tmp, known)
    finally:
        tmp.unlink()


# Where a family may be named besides its folder: the registry of built-ins, and the
# database's migrations (history: a migration that renames a family's rows must name it).
EXEMPT = (Path("talkinghead/families/registry.py"), Path("shared/db/migrations"))


def allowed(path: Path, folder: Path) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel.parts[: len(p.parts)] == p.parts for p in (folder, *EXEMPT))


def test_family_names_appear_only_in_their_folder_and_the_registry() -> None:
    names = set(families()) | set(BUILTIN)
    assert {"radnerf", "meanframe"} <= names
    leaks = []
    for name in sorted(names):
        module = BUILTIN.get(name, "").partition(":")[0]
        if not module.startswith("talkinghead.families."):
            continue  # a family from another package lives outside this repository
        folder = Path(*module.split(".")[:3])
        word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE)
        for path in project_files():
            if allowed(path, folder):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if word.search(line):
                    leaks.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert leaks == []


def test_the_name_check_would_see_a_leak() -> None:
    word = re.compile(r"(?<![A-Za-z0-9])radnerf(?![A-Za-z0-9])", re.IGNORECASE)
    assert word.search('if avatar.renderer == "radnerf":')
    assert word.search("from talkinghead.families.radnerf.model import RadNerf")
    assert not word.search("RadNerfConfig")  # a class name of the family's own folder
