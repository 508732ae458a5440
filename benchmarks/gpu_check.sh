#!/usr/bin/env bash
# One prepared check of the GPU path (issue 16): CUDA tests, lod_inference in fp32/bf16/fp16,
# detect over a folder (naive / parallel / concat), a training step, an eval run.
#
#   bash benchmarks/gpu_check.sh --device cuda --out gpu_check.jsonl    # published sizes, < 8 min on one GPU
#   bash benchmarks/gpu_check.sh --device cpu --out cpu_check.jsonl     # every stage at small sizes (CI)
#   ... --budget 480    # finish within 480 s whatever the stages take (a complete report under a call limit)
#
# Writes JSON lines to --out (one per figure, each with a "stage"), prints a summary and the packages
# found. Nothing is downloaded (the hubs are set offline). PYTHON=... picks the interpreter (default:
# .venv/bin/python, else python3). On a machine that reaches no package index, carry the folder that
# benchmarks/gpu_carry.sh prepares (.gpu-carry/): the check installs what this Python lacks from it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
