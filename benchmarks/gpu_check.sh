#!/usr/bin/env bash
# One prepared check of the GPU path (issue 16), most wanted figures first: lod_inference in
# fp32/bf16/fp16, detect over a folder (naive / parallel / concat), a training step, an eval run, the
# CUDA tests, the detect command end to end (benchmarks/gpu_check.py's docstring: order and time limits).
#
#   bash benchmarks/gpu_check.sh --device cuda --out gpu_check.jsonl    # published sizes, < 8 min on one GPU
#   bash benchmarks/gpu_check.sh --device cpu --out cpu_check.jsonl     # every stage at small sizes (CI)
#   ... --budget 480    # finish within 480 s whatever the stages take (a complete report under a call limit)
#
# A stage cut by its time limit keeps the figures it measured; a Ctrl-C or SIGTERM stops the running
# stage's processes, all of them; the report always ends with its "done" line.
#
# Writes JSON lines to --out (one per figure, each with a "stage"), prints a summary and the packages
# found. Nothing is downloaded (the hubs are set offline). PYTHON=... picks the interpreter (default:
# .venv/bin/python, else python3). On a machine that reaches no package index, carry the folder that
# benchmarks/gpu_carry.sh prepares (.gpu-carry/): the check installs what this Python lacks from it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)  # the stages run there; a relative --out is the caller's
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
