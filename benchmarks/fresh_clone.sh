#!/usr/bin/env bash
# README command 1 (or 2) as a new user runs it: a fresh clone of this repository's HEAD, a new virtual environment
# (nothing installed), an empty WORKBENCH_CACHE. Prints and writes to OUT the wall time of the setup and of the
# command, with the run's stage and verdict lines (command 1) or pytest's summary (command 2); logs beside OUT. The
# result also replaces this command's block in benchmarks/RESULTS.md (benchmarks/fresh_clone.py).
#   bash benchmarks/fresh_clone.sh [OUT] [run|tests]      (default: runs/fresh_clone.md, run)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
what=${2:-run}
out=${1:-$repo/runs/fresh_clone$([ "$what" = tests ] && echo _tests).md}
case "$what" in
  run) setup=(bash scripts/setup.sh); cmd=(python -m workbench run) ;;
  tests) setup=(bash scripts/setup.sh --dev); cmd=(python -m pytest -q) ;;
  *) echo "fresh_clone.sh: unknown command '$what'; expected run or tests" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
git clone -q "$repo" "$tmp/repo"
ln -s "$repo/../shared" "$tmp/shared" 2>/dev/null || true   # the shared data sits beside every clone
python -m venv "$tmp/venv"
export PATH="$tmp/venv/bin:$PATH" WORKBENCH_CACHE="$tmp/cache" PIP_NO_CACHE_DIR=1
[ "$what" = tests ] && export CI=true   # as CI runs it (.ci/run)
cd "$tmp/repo"
t0=$(date +%s)
"${setup[@]}" > "$tmp/setup.log" 2>&1
t1=$(date +%s)
rc=0
"${cmd[@]}" > "$tmp/run.log" 2>&1 || rc=$?
t2=$(date +%s)
mkdir -p "$(dirname "$out")"
{
  echo "# README command $([ "$what" = tests ] && echo 2 || echo 1) on a fresh clone ($(date -u +%F), $(nproc) cores, commit $(git rev-parse --short HEAD))"
  echo
  echo "| part | seconds |"
  echo "|---|---|"
  echo "| setup (new venv: ${setup[*]}) | $((t1 - t0)) |"
  echo "| ${cmd[*]} (empty cache, exit $rc) | $((t2 - t1)) |"
  echo "| total | $((t2 - t0)) |"
  echo
  echo '```'
  if [ "$what" = tests ]; then tail -n 15 "$tmp/run.log"; else grep -E '\[[1-5]/5\]|seconds|verdict|PASS|FAIL' "$tmp/run.log" | tail -n 40; fi
  echo '```'
} | tee "$out"
(cd "$repo" && python -m benchmarks.fresh_clone benchmarks/RESULTS.md "$what" "$out")   # its section of RESULTS.md
if [ "$what" = run ]; then
  for f in report.json trace/importance_mlp.json trace/importance_attn.json; do
    cp "$tmp/repo/runs/default/$f" "${out%.md}.$(basename "$f")" 2>/dev/null || true
  done
  rm -rf "${out%.md}.figures" && cp -r "$tmp/repo/runs/default/figures" "${out%.md}.figures" 2>/dev/null || true
fi
cp "$tmp/run.log" "${out%.md}.run.log"
rm -rf "$tmp"
exit $rc
