#!/usr/bin/env bash
# One-shot setup for a fresh CPU machine (and CI). Idempotent: a second run is quick.
#   bash scripts/setup.sh           what `python -m workbench` needs
#   bash scripts/setup.sh --dev     and what the tests need (pytest, lm-eval, nbclient, hypothesis)
#  1. torch==2.13.0 first: pip takes the local CPU build; an unpinned torch would pull a
#     multi-GB CUDA build. GPU users: install your own torch, then run this script.
#  2. the package in editable mode (with the test extras under --dev). Jupyter itself is the
#     `notebooks` extra: pip install -e ".[notebooks]".
#  3. a Chromium for kaleido (PNG/SVG/PDF export), best effort: HTML figures need none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
pipq() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  pipq "torch==2.13.0" || echo "setup: torch==2.13.0 is not available here; pip will choose a torch" >&2
fi
case "${1:-}" in
  "") pipq -e . ;;
  --dev) pipq -e ".[dev]" ;;
  *) echo "setup: unknown option '$1'; expected nothing or --dev" >&2; exit 2 ;;
esac

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium; figures will be written as HTML only (PNG/PDF need a Chromium)" >&2
  else
    echo "setup: no Chromium found; install one (e.g. 'apt-get install chromium') for PNG/SVG/PDF figures" >&2
  fi
fi
echo "setup: done ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
