# Thin wrapper: every target calls Python modules of the `dahp` package.
# On first use it creates .venv and installs the pinned dependencies of pyproject.toml.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: book ground-truth selection test bench clean clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,book]'
	touch $(STAMP)

## The main job: execute the plan's notebooks (default profile) with papermill, then build the HTML.
PROFILE ?= default
book: $(STAMP)
	$(PY) -m dahp run-plan --profile $(PROFILE)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

ground-truth: $(STAMP)
	$(PY) -m dahp ground-truth --setting mnist_lr
	$(PY) -m dahp ground-truth --setting mnist_mlp

## ξ selection against every baseline -> data/results/selection.csv (tens of minutes on two cores)
selection: $(STAMP)
	$(PY) -m dahp selection

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	@set -e; for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

clean-cache:
	rm -rf data/cache

clean: clean-cache
	rm -rf $(VENV) build _build book/executed lib/*.egg-info .pytest_cache
