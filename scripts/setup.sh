#!/usr/bin/env bash
# One-shot setup for a fresh CPU machine (and CI).
# torch==2.13.0 first: pip takes the local CPU build; an unpinned torch would
# pull a multi-GB CUDA build. GPU users: install your torch, then the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
  || echo "setup: torch==2.13.0 not available here; keeping/installing the default torch" >&2
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev,notebooks]"
