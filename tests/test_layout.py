"""The package's data flow runs one way: a module imports only modules of its own stage or earlier ones, and no
module imports itself back through others.

The stages are the README's module map ("What is inside"): one row per file under workbench/, in stage order. The
tests read that table, so the README and the checks cannot drift apart; a file without a row fails."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "workbench"
README = REPO / "README.md"
MAP_HEADER = "| stage | module | what it is |"


def module_map(readme: Path = README) -> list[tuple[str, str, str]]:
    """(stage, file, description) of every row of the README's module map, in order; a blank stage cell continues
    the stage above. A package's row `editors/` names its `__init__.py`."""
    lines = readme.read_text().splitlines()
    assert MAP_HEADER in lines, f"{readme} has no module map (a table headed {MAP_HEADER!r})"
    rows, stage = [], None
    for line in lines[lines.index(MAP_HEADER) + 2:]:          # skip the header and its |---| line
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3, f"module map row {line!r}: expected | stage | module | what it is |"
        stage = cells[0] or stage
        name = cells[1].strip("`")
        rows.append((stage, name + "__init__.py" if name.endswith("/") else name, cells[2]))
    return rows


def stages(rows: list[tuple[str, str, str]]) -> list[list[str]]:
    """The top-level modules and packages of each stage, earlier stages first ('editors' for editors/rmu.py)."""
    out: dict[str, list[str]] = {}
    for stage, file, _ in rows:
        top = Path(file).with_suffix("").parts[0]
        if top not in out.setdefault(stage, []):
            out[stage].append(top)
    return list(out.values())


ROWS = module_map()
STAGES = stages(ROWS)
RANK = {module: i for i, stage in enumerate(STAGES) for module in stage}


def _files(root: Path = ROOT) -> list[Path]:
    files = sorted(root.rglob("*.py"))
    assert files, f"no .py files under {root}: the layout checks would pass vacuously"
    return files


def _stage(path: Path, root: Path = ROOT) -> str:
    """The top-level module or package a file belongs to ('editors' for editors/rmu.py)."""
    return path.relative_to(root).with_suffix("").parts[0]


def imported_stages(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(top-level workbench module, line) of every workbench import in a file, relative or absolute."""
    package = list(path.relative_to(root).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + [part for part in (node.module or "").split(".") if part]
            found += [(t, node.lineno) for t in ([target[0]] if target else [a.name for a in node.names])]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench."):
            found.append((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("workbench.")]
    return found


def _module_name(path: Path, root: Path) -> str:
    """'workbench.editors.registry' for editors/registry.py, 'workbench.editors' for editors/__init__.py."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement in the file (also those inside
    functions: an import deferred to call time is still a dependency). `from a import b` is an edge to the module a.b
    when there is one, else to a."""
    modules = {_module_name(p, root): p for p in _files(root)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)] if node.level else []
                target = ".".join(base + [p for p in (node.module or "").split(".") if p])
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected set of modules that import each other (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                cycles.append(_path_through(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A cycle inside one strongly connected component: from its first module back to it (breadth first)."""
    start = min(component)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if v != start else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_the_module_map_lists_every_file_once():
    """Every file under workbench/ has one row with a description, every row names a file that exists, and each
    stage's rows are together (a stage name does not come back after another stage)."""
    files = {str(p.relative_to(ROOT)) for p in _files()}
    named = [file for _, file, _ in ROWS]
    assert sorted(files - set(named)) == [], "add these files to the README's module map"
    assert sorted(set(named) - files) == [], "the README's module map names files that do not exist"
    assert sorted({f for f in named if named.count(f) > 1}) == []
    assert [file for _, file, what in ROWS if not what] == [], "every row says what its module is"
    order = [stage for stage, _, _ in ROWS]
    assert [s for i, s in enumerate(order) if s in order[:i] and order[i - 1] != s] == [], "a stage's rows go together"
    assert [m for m in RANK if sum(m in stage for stage in STAGES) > 1] == [], "a package sits in one stage"


def test_imports_run_from_earlier_stages_to_later_ones():
    backwards = [f"{p.relative_to(ROOT)}:{line} imports {target} ({_stage(p)} is stage {RANK[_stage(p)]}, "
                 f"{target} is stage {RANK[target]})"
                 for p in _files() for target, line in imported_stages(p)
                 if target in RANK and RANK[target] > RANK[_stage(p)]]
    assert backwards == []


def test_no_import_cycles():
    graph = import_graph()
    assert "workbench.editors.sequential" in graph["workbench.editors.registry"]  # the graph sees the package's edges
    assert find_cycles(graph) == []


def test_the_check_sees_a_backward_import(tmp_path):
    """The checker itself: a planted import of a later stage is reported, an earlier one is not."""
    root = tmp_path / "workbench"
    (root / "editors").mkdir(parents=True)
    toy = root / "editors" / "toy.py"
    toy.write_text("from ..report import evaluate\nfrom .. import sites\nfrom .loop import Editor\n"
                   "import workbench.pipeline\n")
    found = imported_stages(toy, root)
    assert found == [("report", 1), ("sites", 2), ("editors", 3), ("pipeline", 4)]
    assert [t for t, _ in found if RANK[t] > RANK[_stage(toy, root)]] == ["report", "pipeline"]


def test_the_check_sees_a_cycle(tmp_path):
    """The cycle checker itself: registry -> sequential -> registry (through an import inside a function) is found;
    the same package without the back edge has none."""
    root = tmp_path / "workbench"
    (root / "editors").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    (root / "editors" / "__init__.py").write_text("from .registry import EDITORS\n")
    (root / "editors" / "registry.py").write_text("from ..errors import ConfigError\nfrom .sequential import Seq\n"
                                                   "EDITORS = {}\n")
    sequential = root / "editors" / "sequential.py"
    sequential.write_text("from .. import errors\n\ndef phases():\n    from .registry import EDITORS\n")
    graph = import_graph(root)
    assert graph["workbench.editors.sequential"] == {"workbench.errors", "workbench.editors.registry"}
    assert find_cycles(graph) == [["workbench.editors.registry", "workbench.editors.sequential",
                                   "workbench.editors.registry"]]
    sequential.write_text("from .. import errors\n")
    assert find_cycles(import_graph(root)) == []


def test_the_map_reader_sees_a_missing_file_and_an_empty_tree(tmp_path):
    """The map reader and the file glob themselves: a README row without a description or a file without a row
    shows up, and an empty tree fails instead of passing."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{MAP_HEADER}\n|---|---|---|\n| infrastructure | `errors.py` | error types |\n"
                      "| | `editors/` | the package |\n| editors | `editors/rmu.py` | RMU \\| adaptive |\n\nafter\n")
    rows = module_map(readme)
    assert rows == [("infrastructure", "errors.py", "error types"), ("infrastructure", "editors/__init__.py",
                                                                      "the package"),
                    ("editors", "editors/rmu.py", "RMU \\| adaptive")]
    assert stages(rows) == [["errors", "editors"], ["editors"]]   # the package split over two stages: test 1 fails it
    (tmp_path / "empty").mkdir()
    try:
        _files(tmp_path / "empty")
    except AssertionError as e:
        assert "no .py files" in str(e)
    else:
        raise AssertionError("an empty tree passed the glob check")
