"""`nearline export user` / `nearline export user-author`: run the exported ranker splits in batch.

Reads:  the data contract tables (config.data.path) and store models/ranker/<version>/splits/{user,user_author}.
Writes: store embeddings/user/<version>/data/ (user_id int64, vector list<float>) for every user, or
        store embeddings/user_author/<version>/data/ (user_id, author_id, vector) for the pairs that matter:
        follow edges plus pairs with an impression or engagement in the last ``--recent-days``; then
        publishes the version. The manifest names the ranker version and the as-of time.

Features are computed "as of" one timestamp (default: just after the last event in the data) with
the same point-in-time functions as the training rows, so the exported vectors are the split's
output on exactly the features the ranker would have seen. Inference runs in ``mapInPandas``; the
split is loaded once per Python worker process and reused across its partitions.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.build_ranking_features import (
    MICROS_PER_DAY,
    read_tables,
    user_author_features,
    user_features,
)
from jobs.io import write_parquet_deterministic
from nearline.config import NearlineConfig
from storage.store import Store

GROUP_OF_KIND = {"user": "user", "user-author": "user_author"}
KEYS_OF_GROUP = {"user": ["user_id"], "user_author": ["user_id", "author_id"]}


@functools.lru_cache(maxsize=2)
def _cached_split(split_dir: str):  # executor-side cache of (split, group config, discretizer)
    import torch

    from ranking.training import load_split

    torch.set_num_threads(1)
    split, group_config, discretizer, _ = load_split(split_dir)
    return split, group_config, discretizer


def encode_frame(frame: pd.DataFrame, group_config, discretizer) -> tuple[np.ndarray, np.ndarray]:
    """Encode one group's raw feature frame into (ids (N, F), dense (N, D)) with the split's discretizer."""
    columns: dict[str, np.ndarray] = {}
    for name in (*group_config.continuous_features, *group_config.dense_features):
        columns[name] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    for name in group_config.categorical_features:
        columns[name] = frame[name].astype(object).where(frame[name].notna(), None).to_numpy()
    ids = discretizer.transform(columns, group_config.sparse_features)
    parts = [columns[n].astype(np.float32).reshape(-1, 1) for n in group_config.dense_features]
    dense = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0), dtype=np.float32)
    if not np.isfinite(dense).all():
        raise ValueError(
            "dense split inputs contain NaN or inf; the training rows would have been rejected too"
        )
    return ids, dense


def split_vectors_udf(split_dir: str, keys: list[str], batch_rows: int = 8192):
    """A mapInPandas function: feature frames -> (keys..., vector) frames."""

    def apply(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from ranking.scorer import compute_split_vectors

        split, group_config, discretizer = _cached_split(split_dir)
        for frame in frames:
            ids, dense = encode_frame(frame, group_config, discretizer)
            with torch.no_grad():
                vectors = compute_split_vectors(split, ids, dense, batch_rows)
            out = frame[keys].copy()
            out["vector"] = list(vectors.astype(np.float32))
            yield out

    return apply


def pairs_that_matter(tables: dict[str, DataFrame], as_of_us: int, recent_days: int) -> DataFrame:
    """Follow edges plus (user, author) pairs with any event in the last ``recent_days`` before as_of."""
    follows = tables["follows"].select(
        F.col("follower_id").alias("user_id"), F.col("followee_id").alias("author_id")
    )
    recent = (
        tables["engagements"]
        .where((F.col("ts_us") < as_of_us) & (F.col("ts_us") >= as_of_us - recent_days * MICROS_PER_DAY))
        .join(tables["posts"].select("post_id", "author_id"), on="post_id", how="inner")
        .select("user_id", "author_id")
    )
    return follows.unionByName(recent).distinct()


def feature_rows(kind: str, tables: dict[str, DataFrame], as_of_us: int, recent_days: int) -> DataFrame:
    """Raw feature rows as of ``as_of_us`` for every user (user) or every pair that matters (user-author)."""
    if kind == "user":
        queries = tables["users"].select("user_id").distinct().withColumn("ts_us", F.lit(as_of_us))
        return user_features(queries, tables["users"], tables["follows"], tables["engagements"])
    queries = pairs_that_matter(tables, as_of_us, recent_days).withColumn("ts_us", F.lit(as_of_us))
    return user_author_features(queries, tables["follows"], tables["engagements"], tables["posts"])


def run(
    spark: SparkSession,
    config: NearlineConfig,
    kind: str,
    model_version: str | None = None,
    as_of_us: int | None = None,
    recent_days: int = 28,
    publish: bool = True,
) -> dict:
    """Export one split's vectors; returns the manifest fields (version, rows, rows_per_s)."""
    if kind not in GROUP_OF_KIND:
        raise ValueError(f"unknown export kind {kind!r}: expected one of {sorted(GROUP_OF_KIND)}")
    group = GROUP_OF_KIND[kind]
    store = Store(config.store.root)
    model_version = store.resolve("models", "ranker", model_version)
    split_dir = f"{store.path('models', 'ranker', model_version)}/splits/{group}"
    tables = read_tables(spark, config.data.path)
    if as_of_us is None:
        last = tables["engagements"].agg(F.max("ts_us")).collect()[0][0]  # a global aggregate: one row
        if last is None:
            raise ValueError(f"no engagements in {config.data.path}: nothing to compute features from")
        as_of_us = int(last) + 1
    keys = KEYS_OF_GROUP[group]
    schema = ", ".join(f"{k} long" for k in keys) + ", vector array<float>"
    rows = feature_rows(kind, tables, as_of_us, recent_days)
    vectors = rows.mapInPandas(split_vectors_udf(split_dir, keys), schema).orderBy(*keys)
    manifest = {
        "producer": f"nearline export {kind}",
        "model_version": model_version,
        "as_of_us": as_of_us,
        "input": {"data": config.data.path},
        "recent_days": recent_days if group == "user_author" else None,
    }
    started = time.perf_counter()
    with store.stage("embeddings", group, manifest=manifest) as staged:
        count = write_parquet_deterministic(vectors, staged.data_path)
        if count == 0:
            raise ValueError(f"export {kind}: no rows to export from {config.data.path}")
        elapsed = time.perf_counter() - started
        staged.manifest.update(
            {
                "row_counts": {group: count},
                "dim": int(len(spark.read.parquet(staged.data_path).select("vector").head(1)[0][0])),
                "elapsed_s": round(elapsed, 3),
                "rows_per_s": round(count / elapsed, 1),
            }
        )
    if publish:
        store.publish("embeddings", group, staged.version)
    return {"version": staged.version, **staged.manifest}
