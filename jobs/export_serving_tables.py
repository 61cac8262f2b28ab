"""`nearline export serving-tables`: the per-post features and per-user id lists serving reads.

Reads:  config.data.path/{users,follows,posts,engagements} (the data contract, Parquet).
Writes: store features/post/<version>/data/ (Parquet), one row per post:
            post_id long, author_id long, created_at_us long (post creation, unix µs), then every
            column ``build_ranking_features.post_features`` computes (post_impressions_so_far, ...,
            author_follower_count) as double, and ``topics`` array<float>: the post's topic
            mixture (embeddings/topics.py, fitted here on a sample of the posts; ``topics`` in the
            manifest records its size and sample);
        store features/user_lists/<version>/data/ (Parquet), one row per user found in users,
        engagements or follows (as follower or followee):
            user_id long, engaged array<long>, seen array<long>, followees array<long>;
        each version's manifest records snapshot_us, input_fingerprint and row_counts (user_lists also
        its caps); both are published unless --no-publish (a refresh stages them and publishes them
        with the rest of the serving set).

Both tables are "as of" one snapshot: just after the dataset's last engagement (or just after its
newest post when there are no engagements). Post features come from the very function that builds
the ranker's training rows, queried once per post at the snapshot, so serving scores posts with the
features the ranker was trained on rather than a second implementation of them.

Lists are newest first, each id once (at its latest time), ties broken by id descending so that the
output does not depend on Spark's task order: ``engaged`` holds posts with a positive event
(``inputs.contract.POSITIVE_EVENTS``), at most ``serve.recent_posts_per_user``; ``seen`` holds posts with any
event, impressions included, at most ``serve.seen_posts_per_user``; ``followees`` holds accounts
followed before the snapshot, most recently followed first, at most ``serve.followees_per_user``.
A user without any history gets empty lists, not nulls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from embeddings.config import TopicModelConfig
from embeddings.topics import PostTopicModel, fit_topic_model
from inputs.contract import POSITIVE_EVENTS
from jobs.build_ranking_features import post_features, read_tables
from jobs.io import input_fingerprint, write_parquet_deterministic
from nearline.config import NearlineConfig
from serving.arrays import TOPICS_COLUMN
from serving.config import ServeConfig
from storage.store import Store

POST_KEY_COLUMNS = ("post_id", "author_id", "created_at_us")
USER_LIST_COLUMNS = ("engaged", "seen", "followees")
# Output files are sized by rows, not by the session's shuffle partitions, so that the same input
# gives the same files whatever the Spark configuration.
ROWS_PER_FILE = 1_000_000


def snapshot_time_us(tables: dict[str, DataFrame]) -> tuple[int, int | None]:
    """The as-of time of both tables, and the last engagement's time (None without engagements).

    Returns:
        (snapshot_us, last_engagement_us). snapshot_us is 1 µs after the last engagement (else after
        the newest post): the point-in-time features count events strictly before their query time,
        so querying at the last event's own time would leave that event out.

    Raises:
        ValueError: the dataset has neither engagements nor posts.
    """
    last_engagement = tables["engagements"].agg(F.max("ts_us")).collect()[0][0]
    if last_engagement is not None:
        return int(last_engagement) + 1, int(last_engagement)
    newest_post = tables["posts"].agg(F.max(F.unix_micros("created_at"))).collect()[0][0]
    if newest_post is None:
        raise ValueError("the dataset has no engagements and no posts: there is no snapshot time to export at")
    return int(newest_post) + 1, None


def post_feature_rows(tables: dict[str, DataFrame], snapshot_us: int) -> DataFrame:
    """Every post's serving features as of snapshot_us.

    Returns:
        (post_id long, author_id long, created_at_us long, <post_features columns> double), one row
        per post; the feature columns are those ``post_features`` outputs besides its keys and ts_us.
    """
    posts = tables["posts"]
    queries = posts.select("post_id").distinct().withColumn("ts_us", F.lit(snapshot_us))
    rows = post_features(queries, posts, tables["follows"], tables["engagements"])
    feature_columns = [c for c in rows.columns if c not in ("post_id", "author_id", "ts_us")]
    created = posts.select("post_id", F.unix_micros("created_at").alias("created_at_us"))
    return rows.join(created, on="post_id", how="inner").select(
        F.col("post_id").cast("long"),
        F.col("author_id").cast("long"),
        F.col("created_at_us").cast("long"),
        *[F.col(c).cast("double") for c in feature_columns],
    )


def fit_post_topics(posts: DataFrame, config: TopicModelConfig) -> tuple[PostTopicModel, int]:
    """The topic model, fitted on the driver over at most config.max_fit_posts posts.

    The sample is the posts with the smallest hash of their id (seeded), so it is the same on every run
    and spread over authors and time. Returns the model and the number of posts it was fitted on.
    """
    sample = (
        posts.select("post_id", "text")
        .orderBy(F.xxhash64(F.col("post_id"), F.lit(config.seed)), "post_id")
        .limit(config.max_fit_posts)
        .collect()
    )
    if not sample:
        raise ValueError("topic model: the dataset has no posts to fit it on")
    return fit_topic_model([row["text"] for row in sample], config), len(sample)


def post_topic_rows(posts: DataFrame, model: PostTopicModel) -> DataFrame:
    """(post_id long, topics array<float>) for every post, the fitted model applied partition by partition."""

    def transform(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield pd.DataFrame({"post_id": batch["post_id"], TOPICS_COLUMN: list(model.transform(batch["text"].tolist()))})

    schema = T.StructType(
        [T.StructField("post_id", T.LongType()), T.StructField(TOPICS_COLUMN, T.ArrayType(T.FloatType()))]
    )
    return posts.select(F.col("post_id").cast("long"), "text").mapInPandas(transform, schema)


def newest_first(pairs: DataFrame, key: str, value: str, cap: int, name: str) -> DataFrame:
    """Per key, its distinct values, newest first, at most cap.

    Args:
        pairs: rows with ``key``, ``value`` and ``ts_us``; a value may repeat (it counts at its latest time).
        key: the grouping column, e.g. "user_id".
        value: the listed column, e.g. "post_id".
        cap: the longest list kept.
        name: the output list column.

    Returns:
        (key, name array<long>), one row per key with any pair; ties in time go to the larger value first.
    """
    latest = pairs.groupBy(key, value).agg(F.max("ts_us").alias("_ts_us"))
    order = Window.partitionBy(key).orderBy(F.desc("_ts_us"), F.desc(value))
    ranked = latest.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= cap)
    # collect_list order follows task order; sorting the (rank, value) structs makes it the window's.
    ordered = F.array_sort(F.collect_list(F.struct("_rank", F.col(value).cast("long").alias("_value"))))
    return ranked.groupBy(key).agg(F.transform(ordered, lambda s: s["_value"]).alias(name))


def user_list_rows(tables: dict[str, DataFrame], snapshot_us: int, serve: ServeConfig) -> DataFrame:
    """Every known user's engaged, seen and followee lists as of snapshot_us (see the module docstring).

    Returns:
        (user_id long, engaged array<long>, seen array<long>, followees array<long>), one row per user
        in users, engagements or follows; lists are never null.
    """
    engagements = tables["engagements"].where(F.col("ts_us") < snapshot_us)
    follows = tables["follows"].select(
        F.col("follower_id").alias("user_id"),
        F.col("followee_id"),
        F.unix_micros("created_at").alias("ts_us"),
    ).where(F.col("ts_us") < snapshot_us)
    users = (
        tables["users"].select("user_id")
        .unionByName(tables["engagements"].select("user_id"))
        .unionByName(tables["follows"].select(F.col("follower_id").alias("user_id")))
        .unionByName(tables["follows"].select(F.col("followee_id").alias("user_id")))
        .distinct()
        .select(F.col("user_id").cast("long"))
    )
    lists = {
        "engaged": newest_first(
            engagements.where(F.col("event").isin(*POSITIVE_EVENTS)),
            "user_id", "post_id", serve.recent_posts_per_user, "engaged",
        ),
        "seen": newest_first(engagements, "user_id", "post_id", serve.seen_posts_per_user, "seen"),
        "followees": newest_first(follows, "user_id", "followee_id", serve.followees_per_user, "followees"),
    }
    rows = users
    for frame in lists.values():
        rows = rows.join(frame, on="user_id", how="left")
    empty = F.array().cast("array<long>")
    return rows.select("user_id", *[F.coalesce(F.col(c), empty).alias(c) for c in USER_LIST_COLUMNS])


def write_keyed(frame: DataFrame, key: str, num_rows: int, path: str) -> int:
    """Write frame deterministically: hash-partitioned on key into files sized by num_rows, sorted within.

    Hash partitioning, unlike orderBy's sampled range bounds, puts each row in the same file on every
    run; readers sort by the key themselves. Returns the row count written.
    """
    num_files = max(1, math.ceil(num_rows / ROWS_PER_FILE))
    return write_parquet_deterministic(frame.repartition(num_files, key).sortWithinPartitions(key), path)


def list_caps(serve: ServeConfig) -> dict[str, int]:
    """The list caps user_lists is built with (part of its manifest and of its refresh stage key)."""
    return {
        "engaged": serve.recent_posts_per_user,
        "seen": serve.seen_posts_per_user,
        "followees": serve.followees_per_user,
    }


def _lineage(config: NearlineConfig, tables: dict[str, DataFrame], fingerprint: str | None) -> dict:
    snapshot_us, last_engagement_us = snapshot_time_us(tables)
    return {
        "producer": "nearline export serving-tables",
        "input": {"data": config.data.path},
        "input_fingerprint": fingerprint or input_fingerprint(config.data.path),
        "snapshot_us": snapshot_us,
        "last_engagement_us": last_engagement_us,
    }


def _stage(store: Store, name: str, manifest: dict, frame: DataFrame, key: str, num_rows: int,
           publish: bool) -> dict:
    started = time.perf_counter()
    with store.stage("features", name, manifest=manifest) as staged:
        count = write_keyed(frame, key, num_rows, staged.data_path)
        if count == 0:
            raise ValueError(f"export serving-tables: features/{name} would be empty ({manifest['input']['data']})")
        staged.manifest.update(
            {"row_counts": {name: count}, "columns": frame.columns,
             "elapsed_s": round(time.perf_counter() - started, 3)}
        )
    if publish:
        store.publish("features", name, staged.version)
    return store.manifest("features", name, staged.version)


def run_post_features(
    spark: SparkSession, config: NearlineConfig, publish: bool = True, fingerprint: str | None = None
) -> dict:
    """Stage (and publish) features/post; returns its manifest (version, checksums, row_counts, ...).

    fingerprint: the input fingerprint to record (a refresh passes the one its stage keys use);
    None computes it from config.data.path.
    """
    tables = read_tables(spark, config.data.path)
    manifest = _lineage(config, tables, fingerprint)
    rows = post_feature_rows(tables, manifest["snapshot_us"])
    manifest["feature_columns"] = [c for c in rows.columns if c not in POST_KEY_COLUMNS]
    model, fitted_on = fit_post_topics(tables["posts"], config.topics)
    rows = rows.join(post_topic_rows(tables["posts"], model), on="post_id", how="left")
    manifest["topics"] = {"column": TOPICS_COLUMN, "num_topics": model.num_topics, "fitted_on_posts": fitted_on,
                          "effective_topics": round(model.health.effective_topics, 3),
                          "share_without_terms": round(model.health.share_without_terms, 4),
                          "config": config.topics.model_dump()}
    num_posts = tables["posts"].count()
    return _stage(Store(config.store.root), "post", manifest, rows, "post_id", num_posts, publish)


def run_user_lists(
    spark: SparkSession, config: NearlineConfig, publish: bool = True, fingerprint: str | None = None
) -> dict:
    """Stage (and publish) features/user_lists; returns its manifest (version, checksums, caps, ...)."""
    tables = read_tables(spark, config.data.path)
    manifest = _lineage(config, tables, fingerprint)
    manifest["caps"] = list_caps(config.serve)
    manifest["positive_events"] = list(POSITIVE_EVENTS)
    rows = user_list_rows(tables, manifest["snapshot_us"], config.serve).cache()
    try:
        return _stage(Store(config.store.root), "user_lists", manifest, rows, "user_id", rows.count(), publish)
    finally:
        rows.unpersist()
