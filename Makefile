# Two entry points (README): `make demo` runs the main job, `make test` runs every test.
# Both create/refresh the virtual environment and build the extension themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp

.PHONY: demo test build venv bench

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

test: build
	cargo test --release
	@# pytest exits 5 when it collects nothing (e.g. a -k filter): warn, do not fail.
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "warning: pytest collected no tests" >&2; rc=0; fi; exit $$rc

bench: build
	$(PY) benches/bench_tokenizer.py
