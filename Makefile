# Two entry points (README): `make demo` runs the main job, `make test` runs every test.
# Both create/refresh the virtual environment and build the extension themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp

.PHONY: demo test build venv bench gpu-prep triton-compat

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

build: $(STAMP)
	. $(VENV)/bin/activate && maturin develop --release -q

demo: build
	$(VENV)/bin/codellama-fast demo

# The shared test data: CODELLAMA_FAST_SHARED if set, else `shared` beside the checkout, else (a
# local clone such as `git clone . /tmp/x`) the one beside the repository it was cloned from.
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
CODELLAMA_FAST_SHARED ?= $(or $(wildcard $(CURDIR)/../shared),$(if $(ORIGIN),$(wildcard $(ORIGIN)/../shared)),$(CURDIR)/../shared)
export CODELLAMA_FAST_SHARED

test: build
	cargo test --release
	@# pytest exits 5 when it collects nothing (e.g. a -k filter): warn, do not fail.
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "warning: pytest collected no tests" >&2; rc=0; fi; exit $$rc

bench: build
	$(PY) benches/bench_tokenizer.py

# What scripts/gpu_run.sh needs on a GPU machine without Rust: the abi3 wheel, the shared tokenizer
# files and the commit the results belong to, all under the ignored .gpu/.
SHARED ?= ../shared
gpu-prep: $(STAMP)
	rm -rf .gpu && mkdir -p .gpu/shared
	. $(VENV)/bin/activate && maturin build --release -q -o .gpu
	cp -r $(SHARED)/tokenizers .gpu/shared/
	git rev-parse --short=12 HEAD > .gpu/GIT_SHA
	if [ -n "$$(git status --porcelain --untracked-files=no)" ]; then sed -i 's/$$/-dirty/' .gpu/GIT_SHA; fi

# The kernels against the GPU machine's Triton 3.6, without a GPU: compiled for sm_90, and their
# tests in its interpreter (installs Triton 3.6 outside .venv; needs PyPI once).
triton-compat: build
	PY=$(PY) bash scripts/triton_compat.sh
