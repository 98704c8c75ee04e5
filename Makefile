# The two commands a newcomer needs: `make run` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tbps-installed

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## make run: migrate the embedded SQLite database, ingest the demo gallery if empty, build the index, serve on 127.0.0.1:8000
run: setup
	$(BIN)/tbps demo

## make test: the whole suite (SQLite and the PostgreSQL on 127.0.0.1:5432)
test: setup
	bash scripts/ensure_test_deps.sh
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check service models indexer tests bench

clean:
	rm -rf $(VENV) data .pytest_cache
