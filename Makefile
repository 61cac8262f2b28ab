# `make demo` and `make test` set up everything on a fresh machine (Python 3.10+, Java 17).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: demo test unit integration lint bench clean check-java

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: any other resolution would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17 is required by Spark but 'java' is not on PATH (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@java -version 2>&1 | head -1 | grep -Eq '"(17|21)\.' || { echo "error: Spark needs Java 17 (or 21); found: $$(java -version 2>&1 | head -1)"; exit 1; }

demo: $(STAMP) check-java
	$(BIN)/python -m jobs.demo

test: $(STAMP) check-java
	$(BIN)/python -m pytest -q tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) check-java
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff check jobs embeddings retrieval ranking tests bench
	$(BIN)/mypy jobs embeddings retrieval ranking

bench: $(STAMP) check-java
	$(BIN)/python -m bench.generate
	$(BIN)/python -m bench.retrieval
	$(BIN)/python -m bench.content
	$(BIN)/python -m bench.ranker
	$(BIN)/python -m bench.serve

clean:
	rm -rf store data build reports/*.tmp .pytest_cache
