# The two commands a newcomer needs: `make run` and `make test`. Both set up everything first.
# Every dependency, transitive ones included, is pinned with hashes, by `make lock` (uv pip
# compile) from pyproject.toml, in two locks: requirements.lock (what runs: the dependencies and
# the scale extra; the Docker image installs it) and requirements-test.lock (that and the test
# extra, at the same versions; `make setup` installs it). Run `make lock` after changing a
# dependency in pyproject.toml (tests/test_lock.py fails until they agree); commit them together.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tbps-installed
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
  --generate-hashes --no-header --quiet --custom-compile-command "make lock" \
  --build-constraints $(BUILD_CONSTRAINTS)
# pins of the build backends that the lock's source distributions build with
BUILD_CONSTRAINTS := build-constraints.txt
UV_VERSION := 0.13.9

.PHONY: setup setup-gpu run test test-fast lint lock clean

# Reinstalls when the lock or the project metadata changes. The lock is installed with pip in
# hash-checking mode (so a changed file on the registry is refused), then tbps itself, editable,
# without letting pip resolve anything again. A locked sdist builds with the backend pinned in
# build-constraints.txt (PIP_CONSTRAINT reaches pip's isolated build environment).
$(STAMP): $(TEST_LOCK) pyproject.toml $(BUILD_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(BUILD_CONSTRAINTS) $(BIN)/python -m pip install -q --require-hashes -r $(TEST_LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

## make setup-gpu: make setup, then faiss-gpu (the gpu extra) in place of faiss-cpu, same faiss version
setup-gpu: setup
	$(BIN)/python -m pip uninstall -q -y faiss-cpu
	$(BIN)/python -m pip install -q "faiss-gpu==1.15.1"
	$(BIN)/python -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())"

## make run: migrate the embedded SQLite database, ingest the demo gallery if empty, build the index, serve on 127.0.0.1:8000
run: setup
	$(BIN)/tbps demo

# The suite runs on TEST_WORKERS pytest-xdist workers, one thread each (tests/parallel.py): 2,
# the CI machine's cores (each worker is a whole torch process with its own session fixtures;
# more workers than cores would slow the tests that time their servers). Many tests wait on
# processes they start (servers, Ray, Milvus, Chromium); the other worker runs meanwhile.
# Each test file is one unit of work (its module fixtures built once); files with slow tests
# are handed out first.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## make test: the whole suite (SQLite and the PostgreSQL on 127.0.0.1:5432), slowest 25 printed
test: setup
	bash scripts/ensure_test_deps.sh
	$(BIN)/python -m pytest -q $(XDIST) --durations=25

## make test-fast: the inner loop, SQLite and FAISS only, no browser/Ray/end-to-end/kill -9 processes
test-fast: setup
	$(BIN)/python -m pytest -q $(XDIST) --durations=10 -m "not slow and not postgres and not milvus"

## make lock: re-resolve pyproject.toml: requirements-test.lock (runtime, scale and test extras),
## then requirements.lock (runtime and scale, at the versions of the first)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(UV_COMPILE) --extra test --extra scale -o $(TEST_LOCK)
	$(UV_COMPILE) --extra scale --constraint $(TEST_LOCK) -o $(LOCK)

lint: setup
	$(BIN)/ruff check service models indexer tests bench

clean:
	rm -rf $(VENV) data .pytest_cache
