# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# The venv is rebuilt only when requirements.txt changes (stamp keyed on its hash).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
export WANDB_MODE ?= disabled

.PHONY: setup run test test-all lint format bench

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(VENV)/bin/python main.py $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(ARGS)

test-all: setup
	$(VENV)/bin/python -m pytest -m "" $(ARGS)

lint: setup
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/python benchmarks/bench_exact_priors.py
