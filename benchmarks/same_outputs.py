"""python -m benchmarks.same_outputs RUN_A RUN_B [--caches CACHE_A CACHE_B]: is a refactor's output the same?

Compares two `workbench run` directories made by two versions of the code: report.json, summary.json and
selection.json number by number to 1e-5 (timings, paths and provenance skipped), every figure byte for byte (an
HTML figure up to the random id plotly gives its div), and with --caches the organisms each version built (weights
and tokenizer by sha256). Prints each difference; exit status 1 when there is one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

SKIPPED = {"provenance", "code_version", "versions", "created", "path", "source", "run_dir", "out", "report",
           "edited_dir", "model_path", "cached"}
TIMING = re.compile(r"(^|_)(seconds|wall_s|elapsed|time)($|_)")
PLOTLY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def json_differences(a, b, where: str = "") -> list[str]:
    """Where two JSON values differ: keys (and their order), lengths, numbers beyond 1e-5, other values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys differ ({sorted(set(a) ^ set(b))}) or their order"] if list(a) != list(b) else []
        return out + [d for k in a if k in b and k not in SKIPPED and not TIMING.search(k)
                      for d in json_differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{where}[{i}]")]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers and (math.isclose(a, b, rel_tol=0, abs_tol=1e-5) or (a != a and b != b)):
        return []
    return [] if a == b else [f"{where}: {str(a)[:80]!r} != {str(b)[:80]!r}"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figure_differences(a: Path, b: Path) -> list[str]:
    names = sorted({p.name for p in a.glob("*") if p.is_file()} | {p.name for p in b.glob("*") if p.is_file()})
    out = []
    for name in names:
        x, y = a / name, b / name
        if not (x.is_file() and y.is_file()):
            out.append(f"figures/{name}: only in {a if x.is_file() else b}")
        elif name.endswith(".html"):
            if PLOTLY_ID.sub("ID", x.read_text()) != PLOTLY_ID.sub("ID", y.read_text()):
                out.append(f"figures/{name}: differs")
        elif _sha(x) != _sha(y):
            out.append(f"figures/{name}: differs")
    return out


def organisms(cache: Path) -> dict[str, dict[str, str]]:
    """{organism name without its key: {weights or tokenizer file: sha256}} of a cache."""
    return {d.name.rsplit("-", 1)[0]: {f.name: _sha(f) for f in sorted(d.iterdir())
                                       if f.suffix == ".safetensors" or f.name == "tokenizer.json"}
            for d in sorted((cache / "organisms").iterdir()) if d.is_dir()}


def differences(run_a: Path, run_b: Path, caches: tuple[Path, Path] | None = None) -> list[str]:
    out = []
    for name in ("report.json", "summary.json", "selection.json"):
        if (run_a / name).is_file() or (run_b / name).is_file():
            out += json_differences(json.loads((run_a / name).read_text()), json.loads((run_b / name).read_text()),
                                    name)
    out += figure_differences(run_a / "figures", run_b / "figures")
    if caches:
        oa, ob = organisms(caches[0]), organisms(caches[1])
        out += [f"organism {n}: weights differ" for n in sorted(set(oa) | set(ob)) if oa.get(n) != ob.get(n)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--caches", nargs=2, type=Path, default=None, metavar=("CACHE_A", "CACHE_B"))
    args = ap.parse_args(argv)
    found = differences(args.run_a, args.run_b, tuple(args.caches) if args.caches else None)
    print("\n".join(found) if found else "the same: json numbers to 1e-5, figures, organisms")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
