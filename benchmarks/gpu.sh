#!/usr/bin/env bash
# The main pipeline at OLMo-1B's shape on a GPU, in bfloat16, with the wall time of each stage.
#
#   bash benchmarks/gpu.sh                                    # random weights at OLMo-1B's shape, micro's facts
#   OLMO=/path/to/OLMo-1B-0724-hf bash benchmarks/gpu.sh      # a checkpoint (local dir, or hub id in the HF cache)
#   OLMO=... DATA=/path/to/lume OUT=runs/gpu-lume bash benchmarks/gpu.sh
#
# Steps: benchmarks/gpu.py prepare (the model, when no checkpoint is given, and pipeline.yaml), `workbench run`
# (trace, select, unlearn, evaluate and re-trace on one GPU), then, with two GPUs or more, the same unlearning run
# data parallel under `accelerate launch` (configs/accelerate/ddp.yaml, one process per GPU), and benchmarks/gpu.py
# report: $OUT/timings.json and $OUT/timings.md, one row per stage. Needs a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-bench}"

python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
           "benchmarks/gpu.sh needs a CUDA GPU: torch.cuda.is_available() is False (install a CUDA build of torch)")'
rm -rf "$OUT/run" "$OUT"/unlearn-*gpu   # timings of a fresh run, not of stages a previous run left behind

python -m benchmarks.gpu prepare --out "$OUT" ${OLMO:+--model "$OLMO"} ${DATA:+--data "$DATA"}
python -m workbench run --config "$OUT/pipeline.yaml" --quiet

NGPU="$(python -c 'import torch; print(torch.cuda.device_count())')"
if [ "$NGPU" -ge 2 ]; then
  MODEL="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model"])' "$OUT/pipeline.yaml")"
  DATADIR="$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"])' "$OUT/pipeline.yaml")"
  accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes "$NGPU" -m workbench unlearn \
    --method joint --layers "$OUT/run/selection.json" --model "$MODEL" --data "$DATADIR" --dtype bfloat16 \
    --steps 50 --quiet --out "$OUT/unlearn-${NGPU}gpu"
fi

python -m benchmarks.gpu report --out "$OUT"
