"""`nearline index build|publish|rollback|list|eval` against a store holding Parquet embeddings (no Spark)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main
from jobs.build_index import GateFailed, evaluate, list_versions, publish, run
from nearline.config import load_config
from retrieval.synthetic import clustered_vectors
from storage.store import Store

DIM = 32


def write_embeddings(store: Store, name: str, num_vectors: int, seed: int, model_version: str = "m1") -> str:
    ids, vectors = clustered_vectors(num_vectors, DIM, num_clusters=16, seed=seed)
    id_column = {"content": "post_id", "user": "user_id"}[name]
    flat = pa.array(vectors.ravel())
    table = pa.table({id_column: ids * 5 + 1, "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)})
    with store.stage("embeddings", name, manifest={"model_version": model_version, "dim": DIM}) as staged:
        os.makedirs(staged.data_path)
        pq.write_table(table, os.path.join(staged.data_path, "part-00000.parquet"), row_group_size=700)
    store.publish("embeddings", name, staged.version)
    return staged.version


@pytest.fixture
def config(tmp_path):
    return load_config(None, [
        f"store.root={tmp_path / 'store'}",
        f"content.content_embedding_dim={DIM}",
        "indexes.content.factory_string=IVF{nlist},Flat",
        "indexes.content.metric=cosine",
        "indexes.content.add_batch_size=1000",
        "indexes.content.search.nprobe=8",
        "indexes.content.gate.query_sample_size=100",
        "indexes.content.keep_versions=2",
    ])


def test_build_gates_publishes_and_records(config) -> None:
    store = Store(config.store.root)
    embedding_version = write_embeddings(store, "content", 3000, seed=1, model_version="content-m7")
    result = run(config, "content")
    assert result["published"] and store.current("indexes", "content") == result["version"]
    manifest = store.manifest("indexes", "content", result["version"])
    assert manifest["embedding_version"] == embedding_version
    assert manifest["model_version"] == "content-m7"
    assert manifest["row_counts"] == {"vectors": 3000}
    assert manifest["factory_string"] == "IVF64,Flat"
    assert manifest["metrics"]["recall@10"] >= 0.9 and manifest["gate"]["passed"]
    assert manifest["spec"]["metric"] == "cosine" and manifest["build_time_s"]["total"] > 0
    assert {"index.faiss", "ids.npy", "index_meta.json"} <= set(manifest["checksums"])
    (record,) = store.runs()
    assert record["outcome"] == "published" and record["version"] == result["version"]


def test_failing_gate_keeps_the_version_unpublished(config) -> None:
    store = Store(config.store.root)
    write_embeddings(store, "content", 3000, seed=1)
    serving = run(config, "content")["version"]
    write_embeddings(store, "content", 1000, seed=2)  # a third of the previous count: below 0.5x
    with pytest.raises(GateFailed, match=r"count_ratio 0.3333 outside \[0.5, 2.0\]"):
        run(config, "content")
    assert store.current("indexes", "content") == serving
    failed = store.versions("indexes", "content")[-1]
    assert failed != serving and not store.manifest("indexes", "content", failed)["gate"]["passed"]
    record = store.runs()[-1]
    assert record["outcome"] == "gate_failed" and "count_ratio" in record["reason"]
    with pytest.raises(GateFailed, match="did not pass its validation gate"):
        publish(config, "content", failed)
    assert publish(config, "content", failed, force=True) == failed


def test_dimension_must_match_the_query_model(config) -> None:
    store = Store(config.store.root)
    write_embeddings(store, "content", 2000, seed=1)
    bad = config.model_copy(update={"content": config.content.model_copy(update={"content_embedding_dim": 64})})
    with pytest.raises(GateFailed, match="dimension 32 outside 64"):
        run(bad, "content")
    assert store.current("indexes", "content") is None


def test_cli_list_publish_rollback_retention_eval(config, tmp_path, capsys) -> None:
    store = Store(config.store.root)
    write_embeddings(store, "content", 2000, seed=1)
    overrides = [f"--set={item}" for item in (
        f"store.root={config.store.root}", f"content.content_embedding_dim={DIM}",
        "indexes.content.gate.query_sample_size=50", "indexes.content.keep_versions=2",
        "indexes.content.factory_string=IVF{nlist},Flat", "indexes.content.search.nprobe=8",
    )]
    versions = []
    for _ in range(3):
        assert main([*overrides, "index", "build", "content"]) == 0
        versions.append(store.current("indexes", "content"))
    # Retention keeps the newest two (the rollback target is among them).
    assert store.versions("indexes", "content") == versions[1:]
    assert main([*overrides, "index", "rollback", "content"]) == 0
    assert store.current("indexes", "content") == versions[1]
    assert main([*overrides, "index", "publish", "content", "--version", versions[2]]) == 0
    assert store.current("indexes", "content") == versions[2]
    capsys.readouterr()
    assert main([*overrides, "index", "list", "content"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[-1].startswith(f"* {versions[2]}") and "recall@10=" in listing[-1]
    assert [row["version"] for row in list_versions(config, "content")] == versions[1:]
    assert main([*overrides, "index", "publish", "content", "--version", "../x"]) == 2
    assert "error:" in capsys.readouterr().err

    out = tmp_path / "reports"
    result = evaluate(config, "content", None, str(out), num_queries=50)
    assert result["parameter"] == "nprobe" and result["points"][-1]["recall@100"] == 1.0
    assert json.loads((out / "index_content_eval.json").read_text())["version"] == versions[2]
    assert (out / "index_content_eval.png").stat().st_size > 0


def test_unknown_index_name_is_an_error(config) -> None:
    with pytest.raises(ValueError, match="unknown index 'posts'"):
        run(config, "posts")
