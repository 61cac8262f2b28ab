"""Content embeddings for every post, and users' interest vectors pooled from them.

`nearline export content`
    Reads:  config.data.path/posts; store models/content (CURRENT, or --model-version)
    Writes: store embeddings/content/<version>/data: Parquet (post_id long, vector array<float>)
`nearline export user-interest`
    Reads:  config.data.path/engagements; store embeddings/content (CURRENT, or --content-version)
    Writes: store embeddings/user_interest/<version>/data: Parquet
            (user_id long, vector array<float>, recent_post_ids array<long>)

The model is loaded once per Python worker (cached by path) and applied through
mapInPandas on Arrow batches; nothing is collected to the driver. Outputs are
written into a staging version and appear only when complete.

Health gate (content.gate.content / content.gate.user_interest): a seeded sample of the
written vectors is checked for collapse (mean pairwise cosine, effective rank) and, where the
dataset has generator truth tables (truth/posts: a post's latent topic; truth/user_topics: a
user's strongest topic), for nearest-neighbour topic agreement against chance. The report goes
into the manifest ("health"); a version that fails is kept complete in the store for inspection,
never published, and EmbeddingHealthFailed names the version and the failed checks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from embeddings.config import EmbeddingHealthConfig
from inputs.contract import POSITIVE_EVENTS
from jobs.io import write_parquet_deterministic
from nearline.config import NearlineConfig, UserInterestConfig
from storage.store import Store, config_hash


class EmbeddingHealthFailed(RuntimeError):
    """Exported embeddings failed the health gate; the version was kept unpublished. A RuntimeError, as
    the job ran and its gate said no: `nearline` exits 1 (a usage or config error exits 2)."""


@functools.lru_cache(maxsize=2)
def _cached_model(model_dir: str):
    # One load per Python worker process, reused across partitions and batches.
    from embeddings.content_encoder import load_content_model

    return load_content_model(model_dir)


def encode_posts(posts: DataFrame, model_dir: str, batch_size: int) -> DataFrame:
    """(post_id, text) -> (post_id, vector) with the content model applied per Arrow batch."""

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from embeddings.content_encoder import encode_texts

        model = _cached_model(model_dir)
        for batch in batches:
            vectors = encode_texts(model, batch["text"].fillna("").tolist(), batch_size=batch_size)
            yield pd.DataFrame({"post_id": batch["post_id"].to_numpy(), "vector": list(vectors)})

    return posts.select("post_id", "text").mapInPandas(encode, "post_id long, vector array<float>")


def pool_user_interests(engagements: DataFrame, content: DataFrame, config: UserInterestConfig) -> DataFrame:
    """Recency-weighted mean of the content vectors a user engaged with, L2-normalised.

    The weight of an engagement halves every half_life_days before the newest event
    in the data; engagements older than window_days are ignored.
    """
    positives = engagements.where(F.col("event").isin(*POSITIVE_EVENTS)).select("user_id", "post_id", "ts")
    newest = positives.agg(F.max("ts").alias("newest"))
    age_days = (F.unix_micros(F.col("newest")) - F.unix_micros(F.col("ts"))) / F.lit(86_400 * 1e6)
    recent = (
        positives.crossJoin(F.broadcast(newest))
        .where(age_days <= config.window_days)
        .withColumn("weight", F.pow(F.lit(0.5), age_days / config.half_life_days))
        .dropDuplicates(["user_id", "post_id"])
        .join(content, on="post_id", how="inner")
    )
    by_recency = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("post_id"))
    recent = recent.withColumn("rank", F.row_number().over(by_recency))
    dim = F.size(F.first("vector"))
    pooled = recent.groupBy("user_id").agg(
        F.collect_list(F.struct("weight", "vector")).alias("items"),
        F.sort_array(F.collect_list(F.when(F.col("rank") <= config.max_recent_posts,
                                           F.struct("rank", "post_id")))).alias("recent"),
        dim.alias("dim"),
    )
    weighted_sum = F.aggregate(
        "items", F.array_repeat(F.lit(0.0), F.col("dim")),
        lambda acc, item: F.zip_with(acc, item["vector"], lambda a, v: a + item["weight"] * v),
    )
    norm = F.sqrt(F.aggregate(F.col("summed"), F.lit(0.0), lambda acc, v: acc + v * v))
    return (
        pooled.withColumn("summed", weighted_sum)
        .withColumn("norm", norm)
        .where(F.col("norm") > 0)
        .select(
            "user_id",
            F.transform("summed", lambda v: (v / F.col("norm")).cast("float")).alias("vector"),
            F.transform("recent", lambda r: r["post_id"]).alias("recent_post_ids"),
        )
    )


def _truth(spark: SparkSession, path: str) -> DataFrame | None:
    """The truth table at ``path``, or None when the dataset has none (real data)."""
    try:
        return spark.read.parquet(path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            return None
        raise


def health_sample(vectors: DataFrame, key: str, num_rows: int, truth: DataFrame | None, sample_size: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A seeded hash sample of about ``sample_size`` rows of ``vectors`` (key, vector), with truth labels.

    Args:
        vectors: DataFrame (``key`` long, vector array<float>) of ``num_rows`` rows.
        truth: DataFrame (``key`` long, label int) or None.

    Returns:
        (float32 (S, D) vectors, int64 (S,) labels with -1 where truth has no row, or None without truth).
    """
    # A hash of the key, not DataFrame.sample: the same rows whatever the partitioning.
    fraction = min(1.0, 1.2 * sample_size / max(num_rows, 1))
    bucket = F.pmod(F.xxhash64(F.col(key), F.lit(seed)), F.lit(1_000_000))
    sample = vectors.where(bucket < int(fraction * 1_000_000)).select(key, "vector")
    if truth is not None:
        sample = sample.join(truth.select(key, "label"), on=key, how="left")
    rows = cast(pd.DataFrame, sample.limit(sample_size).toPandas()).sort_values(key)
    matrix = np.stack(rows["vector"].to_list()).astype(np.float32) if len(rows) else np.zeros((0, 0), np.float32)
    labels = rows["label"].fillna(-1).to_numpy(dtype=np.int64) if truth is not None else None
    return matrix, labels


def check_health(vectors: DataFrame, key: str, num_rows: int, truth: DataFrame | None,
                 thresholds: EmbeddingHealthConfig, truth_name: str | None) -> dict[str, Any]:
    """Health report of exported vectors (embeddings.health) with the gate's verdict under ``gate``."""
    from embeddings.health import embedding_health, gate_embedding_health

    matrix, labels = health_sample(vectors, key, num_rows, truth, thresholds.sample_size, thresholds.seed)
    if len(matrix) < 2:
        # One vector has no pairs to compare; nothing to gate on.
        return {"num_vectors": num_rows, "sample_size": len(matrix), "gate": {"passed": True, "reason": None,
                                                                               "checks": []}}
    report = embedding_health(matrix, labels, len(matrix), thresholds.num_neighbors, thresholds.seed)
    report["truth"] = truth_name if labels is not None else None
    report["gate"] = gate_embedding_health(report, thresholds)
    report["gate"]["enforced"] = thresholds.enabled
    return report


def _enforce(kind: str, version: str, health: dict[str, Any]) -> None:
    gate = health["gate"]
    if gate["enforced"] and not gate["passed"]:
        raise EmbeddingHealthFailed(
            f"embeddings/{kind} {version} failed the embedding health gate ({gate['reason']}); "
            "kept unpublished for inspection (see its manifest.json 'health')")


def run_content(spark: SparkSession, config: NearlineConfig, store: Store, model_version: str | None,
                publish: bool) -> tuple[str, int]:
    """Encode every post into a staged embeddings/content version, gate its health, publish if asked.

    Returns:
        (version, number of posts).

    Raises:
        EmbeddingHealthFailed: the vectors failed the health gate (the version stays staged, unpublished).
    """
    model_version = store.resolve("models", "content", model_version)
    model_dir = store.path("models", "content", model_version)
    posts_path = f"{config.data.path}/posts"
    posts = spark.read.parquet(posts_path)
    manifest = {"producer": "nearline export content", "model_version": model_version,
                "input": {"posts": posts_path}, "config_hash": config_hash(config.content)}
    with store.stage("embeddings", "content", manifest=manifest) as staged:
        rows = write_parquet_deterministic(encode_posts(posts, model_dir, config.content.batch_size),
                                          staged.data_path)
        if rows == 0:
            raise ValueError(f"no posts to encode in {posts_path}: expected at least one row")
        truth = _truth(spark, f"{config.data.path}/truth/posts")
        health = check_health(
            spark.read.parquet(staged.data_path), "post_id", rows,
            None if truth is None else truth.select("post_id", F.col("topic").alias("label")),
            config.content.gate.content, "truth/posts topic")
        staged.manifest.update({"row_counts": {"posts": rows}, "dim": config.content.content_embedding_dim,
                                "health": health})
    _enforce("content", staged.version, health)
    if publish:
        store.publish("embeddings", "content", staged.version)
    return staged.version, rows


def run_user_interest(spark: SparkSession, config: NearlineConfig, store: Store, content_version: str | None,
                      publish: bool) -> tuple[str, int]:
    """Pool users' interest vectors into a staged embeddings/user_interest version, gate, publish if asked.

    Returns:
        (version, number of users).

    Raises:
        EmbeddingHealthFailed: the vectors failed the health gate (the version stays staged, unpublished).
    """
    content_version = store.resolve("embeddings", "content", content_version)
    content_manifest = store.manifest("embeddings", "content", content_version)
    content = spark.read.parquet(store.data_path("embeddings", "content", content_version))
    engagements_path = f"{config.data.path}/engagements"
    engagements = spark.read.parquet(engagements_path)
    manifest = {"producer": "nearline export user-interest", "content_version": content_version,
                "model_version": content_manifest.get("model_version"),
                "input": {"engagements": engagements_path}, "config_hash": config_hash(config.user_interest)}
    with store.stage("embeddings", "user_interest", manifest=manifest) as staged:
        interests = pool_user_interests(engagements, content, config.user_interest)
        rows = write_parquet_deterministic(interests, staged.data_path)
        truth = _truth(spark, f"{config.data.path}/truth/user_topics")
        strongest_topic = F.array_position("topic_weights", F.array_max("topic_weights")) - 1
        health = check_health(
            spark.read.parquet(staged.data_path), "user_id", rows,
            None if truth is None else truth.select("user_id", strongest_topic.cast("int").alias("label")),
            config.content.gate.user_interest, "truth/user_topics strongest topic")
        staged.manifest.update({"row_counts": {"users": rows}, "dim": content_manifest.get("dim"),
                                "health": health})
    _enforce("user_interest", staged.version, health)
    if publish:
        store.publish("embeddings", "user_interest", staged.version)
    return staged.version, rows


def with_health(store: Store, kind: str, result: tuple[str, int]) -> tuple[str, dict[str, Any]]:
    """``(version, rows)`` of :func:`run_content` / :func:`run_user_interest` -> ``(version, details)`` for a
    refresh record: the row count and the version's health report (with the topic agreement where known)."""
    version, rows = result
    health = store.manifest("embeddings", kind, version).get("health", {})
    return version, {"rows": rows, "health": {k: v for k, v in health.items() if k != "gate"},
                     "gate": health.get("gate")}


def health_line(health: dict[str, Any]) -> str:
    parts = [f"{key} {health[key]:.3f}" for key in ("mean_cosine", "effective_rank", "nn_agreement",
                                                   "chance_agreement", "nn_lift") if health.get(key) is not None]
    return f"health ({health.get('truth') or 'no truth labels'}): " + ", ".join(parts) + \
        f"; gate {'passed' if health['gate']['passed'] else 'FAILED'}"
