"""The fresh-clone timings in RESULTS.md: `benchmarks/fresh_clone.sh` records each measurement here, and
`python -m benchmarks` keeps the recorded ones when it regenerates the file.

    python -m benchmarks.fresh_clone RESULTS.md KEY RESULT.md   # KEY: run (README command 1) or tests (command 2)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

KEYS = {"run": "README command 1", "tests": "README command 2"}
TITLE = "## Fresh clone: the README's commands as a new user runs them (`benchmarks/fresh_clone.sh`)"
_BLOCK = re.compile(r"<!-- fresh-clone:(\w+) -->\n(.*?)<!-- /fresh-clone:\1 -->\n", re.S)


def blocks(text: str) -> dict[str, str]:
    """{key: recorded result} of the fresh-clone blocks in a RESULTS.md text."""
    return {key: body for key, body in _BLOCK.findall(text)}


def section(recorded: dict[str, str]) -> str:
    """The fresh-clone section for these results, commands in README order; '' when none is recorded."""
    if not recorded:
        return ""
    body = "".join(f"<!-- fresh-clone:{k} -->\n{recorded[k]}<!-- /fresh-clone:{k} -->\n" for k in KEYS if k in recorded)
    return f"\n{TITLE}\n\n{body}"


def record(results: Path, key: str, result: Path) -> None:
    """Put `result` (fresh_clone.sh's report) into `results` as the `key` block, replacing an earlier one."""
    from workbench.provenance import atomic_write_text

    if key not in KEYS:
        raise SystemExit(f"unknown key {key!r}; expected one of {sorted(KEYS)}")
    text = results.read_text() if results.is_file() else "# Benchmarks\n"
    recorded = blocks(text)
    recorded[key] = re.sub(r"^# ", "### ", result.read_text(), flags=re.M).rstrip("\n") + "\n"  # a subsection here
    head = text.split(f"\n{TITLE}\n")[0].rstrip("\n") + "\n"
    atomic_write_text(results, head + section(recorded))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    record(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
