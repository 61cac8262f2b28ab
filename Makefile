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
	$(BIN)/python -m cli.demo

test: $(STAMP) check-java
	$(BIN)/python -m pytest -q --durations=15 tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) check-java
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff check cli jobs evaluation inputs nearline embeddings retrieval ranking serving storage tests bench
	$(BIN)/mypy cli jobs evaluation inputs nearline embeddings retrieval ranking serving storage
	$(BIN)/lint-imports

bench: $(STAMP) check-java
	$(BIN)/python -m bench.generate
	$(BIN)/python -m bench.retrieval
	$(BIN)/python -m bench.content
	$(BIN)/python -m bench.ranker
	$(BIN)/python -m bench.serve

clean:
	rm -rf store data build reports/*.tmp .pytest_cache

# A Spark standalone master + worker from the pyspark package on loopback, then every Spark job of the
# chain sent to it with `nearline submit --run` (small models), then both daemons stopped (also on failure).
# Output: data/cluster-demo and store/cluster-demo; daemon and executor logs under build/cluster-demo.
CLUSTER_DEMO_PORT ?= 7177
CLUSTER_DEMO_SETTINGS := --set data.path=data/cluster-demo --set store.root=store/cluster-demo \
	--set generate.num_users=1000 --set content.epochs=1 --set content.embedding_dim=32 --set content.lstm_hidden=32 \
	--set content.content_embedding_dim=32 --set content.wide_buckets=16384 --set content.num_labels=16 \
	--set ranker.training.epochs=2
.PHONY: cluster-demo
cluster-demo: $(STAMP) check-java
	@set -e; logs=build/cluster-demo; mkdir -p $$logs; \
	export SPARK_HOME=$$($(BIN)/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'); \
	$(BIN)/spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port $(CLUSTER_DEMO_PORT) --webui-port 0 >$$logs/master.log 2>&1 & master=$$!; \
	trap 'kill $$worker $$master 2>/dev/null; wait 2>/dev/null' EXIT; \
	until grep -q "elected leader" $$logs/master.log; do \
		kill -0 $$master 2>/dev/null || { echo "error: the Spark master exited:"; tail -5 $$logs/master.log; exit 1; }; sleep 1; done; \
	$(BIN)/spark-class org.apache.spark.deploy.worker.Worker spark://127.0.0.1:$(CLUSTER_DEMO_PORT) --host 127.0.0.1 --cores 2 --memory 2g --webui-port 0 --work-dir $$logs/work >$$logs/worker.log 2>&1 & worker=$$!; \
	until grep -q "Successfully registered" $$logs/worker.log; do \
		kill -0 $$worker 2>/dev/null || { echo "error: the Spark worker exited:"; tail -5 $$logs/worker.log; exit 1; }; sleep 1; done; \
	for job in generate "content train" "export content" "export user-interest" features "ranker train" \
		"export user" "export user-author"; do \
		echo "== nearline submit --run $$job"; \
		$(BIN)/nearline --set spark.master=spark://127.0.0.1:$(CLUSTER_DEMO_PORT) --set spark.python=$(abspath $(BIN))/python \
			$(CLUSTER_DEMO_SETTINGS) submit --run --build-dir $$logs $$job; \
	done
