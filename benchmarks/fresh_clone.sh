#!/usr/bin/env bash
# README command 1 as a new user runs it: a fresh clone of this repository's HEAD, a new virtual environment
# (nothing installed), an empty WORKBENCH_CACHE. Prints and writes to OUT (default runs/fresh_clone.md) the wall
# time of the setup and of the run with the run's own stage and verdict lines; the run's log and report.json beside it.
#   bash benchmarks/fresh_clone.sh [OUT]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/runs/fresh_clone.md}
tmp=$(mktemp -d)
git clone -q "$repo" "$tmp/repo"
ln -s "$repo/../shared" "$tmp/shared" 2>/dev/null || true   # the shared data sits beside every clone
python -m venv "$tmp/venv"
export PATH="$tmp/venv/bin:$PATH" WORKBENCH_CACHE="$tmp/cache" PIP_NO_CACHE_DIR=1
cd "$tmp/repo"
t0=$(date +%s)
bash scripts/setup.sh > "$tmp/setup.log" 2>&1
t1=$(date +%s)
python -m workbench run > "$tmp/run.log" 2>&1
t2=$(date +%s)
mkdir -p "$(dirname "$out")"
{
  echo "# README command 1 on a fresh clone ($(date -u +%F), $(nproc) cores, commit $(git rev-parse --short HEAD))"
  echo
  echo "| part | seconds |"
  echo "|---|---|"
  echo "| setup (new venv: scripts/setup.sh) | $((t1 - t0)) |"
  echo "| python -m workbench run (empty cache) | $((t2 - t1)) |"
  echo "| total | $((t2 - t0)) |"
  echo
  echo '```'
  grep -E '\[[1-5]/5\]|seconds|verdict|PASS|FAIL' "$tmp/run.log" | tail -n 40
  echo '```'
} | tee "$out"
for f in report.json trace/importance_mlp.json trace/importance_attn.json; do
  cp "$tmp/repo/runs/default/$f" "${out%.md}.$(basename "$f")" 2>/dev/null || true
done
cp "$tmp/run.log" "${out%.md}.run.log"
rm -rf "$tmp"
