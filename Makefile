# `make demo` and `make test` create or reuse .venv and do everything a fresh machine needs.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-all bench docs clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,timm,hf]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/salience demo --out demo-out

# ruff and mypy come from the test extra (pinned); any finding fails the target
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# the documentation site into site/: MkDocs Material, the API reference from the docstrings, the registries'
# tables and the tutorials executed (docs/hooks.py); strict (mkdocs.yml), so any warning fails it
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/attribution.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
