"""`nearline index build|publish|rollback|list|eval NAME`: FAISS indexes over the exported embeddings.

Reads:  store embeddings/<name>/<version>/data/ (Parquet: post_id or user_id long, vector list<float>)
        and its manifest.json (model_version, dim); CURRENT or else the latest version by default.
Writes: store indexes/<name>/<version>/ (index.faiss, ids.npy, index_meta.json, manifest.json with the spec,
        embedding and model versions, counts, build times, gate report and recall); store runs/<id>.json
        for each build; `index eval` writes index_<name>_eval.json and .png under --out (default reports/).

A build streams the Parquet twice with Arrow (training sample, then adds) and a third time for the exact
search of the validation gate. A version that fails the gate is kept for inspection, never published,
and the reason is in the run record.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

import numpy as np

from nearline.config import NearlineConfig
from retrieval.config import IndexConfig
from retrieval.evaluation import plot_recall_qps, sweep_index
from retrieval.index import (
    build_index,
    iter_parquet_vectors,
    load_index,
    parquet_row_count,
    sample_vectors,
    save_index,
)
from retrieval.search import Searcher
from retrieval.validation import exact_search_excluding_self, validate_index
from storage.store import Store, new_version

ID_COLUMNS = {"content": "post_id", "user": "user_id"}
VECTOR_COLUMN = "vector"


class GateFailed(RuntimeError):
    """An index version did not pass the validation gate: it was kept unpublished, or publishing it was
    refused. A RuntimeError, not a ValueError: the job ran and said no, so `nearline` exits 1, not 2."""


def configured_index(config: NearlineConfig, name: str) -> IndexConfig:
    if name not in config.indexes or name not in ID_COLUMNS:
        raise ValueError(f"unknown index {name!r}: expected one of {sorted(set(config.indexes) & set(ID_COLUMNS))}")
    return config.indexes[name]


def expected_query_dim(config: NearlineConfig, name: str, embedding_manifest: dict[str, Any]) -> int | None:
    """The dimension of the vectors that will query the index: the content model's, or the user tower's."""
    if name == "content":
        return config.content.content_embedding_dim
    dim = embedding_manifest.get("dim")
    return int(dim) if dim is not None else None


def run(
    config: NearlineConfig, name: str, embedding_version: str | None = None, publish: bool = True
) -> dict[str, Any]:
    """Build, validate and stage an index; publish it (and apply retention) when the gate passes.

    Returns:
        The staged version's manifest fields plus "version" and "published".

    Raises:
        GateFailed: the gate failed; the version is staged but not published (see the run record).
        ValueError / StoreError: bad name, no embeddings, bad vectors.
    """
    index_config = configured_index(config, name)
    store = Store(config.store.root)
    embedding_version = store.resolve("embeddings", name, embedding_version or "current")
    embedding_manifest = store.manifest("embeddings", name, embedding_version)
    data_path = store.data_path("embeddings", name, embedding_version)

    def batches():
        return iter_parquet_vectors(data_path, ID_COLUMNS[name], VECTOR_COLUMN, index_config.add_batch_size)

    started = time.perf_counter()
    num_vectors = parquet_row_count(data_path)
    if num_vectors == 0:
        raise ValueError(f"embeddings/{name} {embedding_version}: no vectors in {data_path}")
    sample_ids, sample = sample_vectors(batches(), index_config.train_sample_size, index_config.sample_seed)
    dim = int(sample.shape[1])
    built = build_index(index_config, dim, batches(), sample, num_vectors=num_vectors)

    gate_started = time.perf_counter()
    gate = index_config.gate
    rng = np.random.default_rng(index_config.sample_seed)
    picked = rng.choice(len(sample), min(gate.query_sample_size, len(sample)), replace=False)
    query_ids, queries = sample_ids[picked], sample[picked]
    true_ids, _ = exact_search_excluding_self(batches(), query_ids, queries, gate.recall_k, built.metric)
    previous = store.current("indexes", name)
    previous_count = store.manifest("indexes", name, previous)["row_counts"]["vectors"] if previous else None
    report = validate_index(
        Searcher(built, index_config), gate, queries, true_ids, expected_query_dim(config, name, embedding_manifest),
        previous_count, query_ids,
    )
    gate_s = time.perf_counter() - gate_started

    recall = next(c.value for c in report.checks if c.name.startswith("recall@"))
    manifest = {
        "producer": f"nearline index build {name}",
        "embedding_version": embedding_version,
        "model_version": embedding_manifest.get("model_version"),
        "spec": index_config.model_dump(),
        "factory_string": built.factory_string,
        "metric": built.metric,
        "dim": dim,
        "device": built.device,
        "row_counts": {"vectors": built.num_vectors},
        "build_time_s": {
            "train": round(built.train_s, 3), "add": round(built.add_s, 3), "gate": round(gate_s, 3),
            "total": round(time.perf_counter() - started, 3),
        },
        "metrics": {f"recall@{gate.recall_k}": recall},
        "gate": report.to_dict(),
    }
    with store.stage("indexes", name, manifest=manifest) as staged:
        save_index(built, staged.path)
    published = bool(report.passed and publish)
    if published:
        store.publish("indexes", name, staged.version)
        store.retain("indexes", name, index_config.keep_versions)
    store.record_run({
        "run_id": new_version(),
        "job": "index build",
        "artifact": f"indexes/{name}",
        "version": staged.version,
        "embedding_version": embedding_version,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "outcome": "published" if published else ("staged" if report.passed else "gate_failed"),
        "gate": report.to_dict(),
        "reason": report.reason,
    })
    if not report.passed:
        raise GateFailed(
            f"indexes/{name} {staged.version} failed the validation gate ({report.reason}); "
            "kept unpublished for inspection"
        )
    return {"version": staged.version, "published": published, **manifest}


def publish(config: NearlineConfig, name: str, version: str | None, force: bool = False) -> str:
    """Make a version (default: the latest) the serving one, if it passed its gate (or force)."""
    index_config = configured_index(config, name)
    store = Store(config.store.root)
    version = store.resolve("indexes", name, version or "latest")
    gate = store.manifest("indexes", name, version).get("gate", {})
    if not gate.get("passed") and not force:
        raise GateFailed(
            f"indexes/{name} {version} did not pass its validation gate ({gate.get('reason', 'no gate report')}); "
            "use --force to publish it anyway"
        )
    store.publish("indexes", name, version)
    store.retain("indexes", name, index_config.keep_versions)
    return version


def list_versions(config: NearlineConfig, name: str) -> list[dict[str, Any]]:
    """One row per complete version, oldest first, with its counts, recall and gate outcome."""
    configured_index(config, name)
    store = Store(config.store.root)
    current = store.current("indexes", name)
    rows = []
    for version in store.versions("indexes", name):
        manifest = store.manifest("indexes", name, version)
        rows.append({
            "version": version,
            "current": version == current,
            "vectors": manifest.get("row_counts", {}).get("vectors"),
            "factory_string": manifest.get("factory_string"),
            "metrics": manifest.get("metrics", {}),
            "gate_passed": manifest.get("gate", {}).get("passed"),
            "embedding_version": manifest.get("embedding_version"),
            "model_version": manifest.get("model_version"),
        })
    return rows


def evaluate(
    config: NearlineConfig, name: str, version: str | None, out_dir: str, num_queries: int = 1000
) -> dict[str, Any]:
    """Recall@10/@100 and QPS across search-parameter values for a stored version, against exact search."""
    index_config = configured_index(config, name)
    store = Store(config.store.root)
    version = store.resolve("indexes", name, version or "current")
    manifest = store.manifest("indexes", name, version)
    data_path = store.data_path("embeddings", name, manifest["embedding_version"])

    def batches():
        return iter_parquet_vectors(data_path, ID_COLUMNS[name], VECTOR_COLUMN, index_config.add_batch_size)

    query_ids, queries = sample_vectors(batches(), num_queries, index_config.sample_seed + 1)
    true_ids, _ = exact_search_excluding_self(batches(), query_ids, queries, 100, manifest["metric"])
    built = load_index(store.path("indexes", name, version))
    result = sweep_index(built, index_config, queries, true_ids, query_ids=query_ids)
    result.update({"index": name, "version": version, "embedding_version": manifest["embedding_version"]})
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"index_{name}_eval")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot_recall_qps({built.factory_string: result}, stem + ".png", f"indexes/{name} {version}")
    result["outputs"] = [stem + ".json", stem + ".png"]
    return result


# ---------------------------------------------------------------- command line
