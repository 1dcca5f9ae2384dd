# Thin wrapper: every target calls Python modules of the `dahp` package.
# On first use it creates .venv and installs the package with every extra, at the exact versions of
# constraints.txt (pyproject.toml declares the ranges the library accepts; constraints.txt pins what
# the book is built and tested with). torch comes from PyTorch's CPU index: the CPU build.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# where the +cpu build of torch is found (constraints.txt pins torch==...+cpu, so only the CPU build can
# be installed). Empty by default: pip's own configuration finds it (a local wheel directory on the machines
# this project runs on, CI included). Elsewhere: `make TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=

.PHONY: book browser constraints ground-truth selection lint format test test-random bench clean clean-cache

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  -c constraints.txt -e '.[test,book,large,cluster]'
	touch $(STAMP)

## Rewrite constraints.txt from the versions installed in .venv (after changing one on purpose).
constraints: $(STAMP)
	$(PY) tools/constraints.py --out constraints.txt

## The main job: execute the plan's notebooks (default profile) with papermill, then build the HTML.
PROFILE ?= default
# pages run at once (empty: 2 on a CPU machine with 2 cores or more, else 1; see `python -m dahp run-plan --help`)
JOBS ?=
book: $(STAMP)
	$(PY) -m dahp run-plan --profile $(PROFILE) $(if $(JOBS),--jobs $(JOBS))
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

ground-truth: $(STAMP)
	$(PY) -m dahp ground-truth --setting mnist_lr
	$(PY) -m dahp ground-truth --setting mnist_mlp

## ξ selection against every baseline on the embedded cases -> data/results/cli/selection_* (tens of minutes on two cores)
selection: $(STAMP)
	$(PY) -m dahp selection

## The site check opens the built book in Debian's chromium; install it when it is missing (needs root
## and Debian's package index; without them the browser test is skipped with a message).
browser:
	@command -v chromium >/dev/null && test -x /usr/bin/chromedriver || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium could not be installed: the browser check of the book will be skipped"

## Lint and format check (ruff, configured in pyproject.toml), then the package's layer contracts
## (import-linter, [tool.importlinter] in pyproject.toml); `make format` rewrites the files.
lint: $(STAMP)
	$(PY) -m ruff check lib tests bench tools
	$(PY) -m ruff format --check lib tests bench tools
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff check --fix lib tests bench tools
	$(PY) -m ruff format lib tests bench tools

## The suite in the files' order (pyproject's addopts switch pytest-randomly off).
test: $(STAMP) browser lint
	$(PY) -m pytest

## The suite in a shuffled order, to catch a test that depends on what ran before it. pytest-randomly
## prints its seed at the top ("Using --randomly-seed=N"); `make test-random SEED=N` replays that order
## and `SEED=last` the previous run's.
SEED ?=
test-random: $(STAMP) browser
	$(PY) -m pytest -p randomly $(if $(SEED),--randomly-seed=$(SEED))

bench: $(STAMP)
	@set -e; for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

clean-cache:
	rm -rf data/cache

clean: clean-cache
	rm -rf $(VENV) build _build book/executed lib/*.egg-info .pytest_cache test-artifacts
