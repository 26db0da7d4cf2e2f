"""The package's data flow runs one way: a module imports only modules of its own stage or earlier ones."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "workbench"

# Earlier stages first. The first row is infrastructure every stage may use (errors, provenance, safe writes).
STAGES = [
    ["errors", "provenance", "outputs", "configfile", "distributed", "htmlview"],
    ["models"],
    ["data"],
    ["batching", "generation"],
    ["sites"],
    ["hooks"],
    ["backends"],
    ["prompts", "results"],
    ["restoration"],
    ["tracing", "patching"],
    ["attribution"],
    ["aggregate", "correlation", "selection", "trace_settings"],
    ["editors"],
    ["evaluation"],
    ["organism"],
    ["corpus"],
    ["figures", "display"],
    ["report"],
    ["sweep", "localize", "groundtruth"],
    ["pipeline"],
    ["commands", "cli", "__main__", "__init__"],
]
RANK = {module: i for i, stage in enumerate(STAGES) for module in stage}


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


def test_every_module_has_a_stage():
    modules = {_stage(p) for p in ROOT.rglob("*.py")}
    assert modules - set(RANK) == set(), "add the new module to STAGES (and to the README's module map)"


def test_imports_run_from_earlier_stages_to_later_ones():
    backwards = [f"{p.relative_to(ROOT)}:{line} imports {target} ({_stage(p)} is stage {RANK[_stage(p)]}, "
                 f"{target} is stage {RANK[target]})"
                 for p in sorted(ROOT.rglob("*.py")) for target, line in imported_stages(p)
                 if target in RANK and RANK[target] > RANK[_stage(p)]]
    assert backwards == []


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
