"""Import Twitter15/16 propagation cascades into the data contract.

Reads:  DIR/engagements.csv.gz (dataset, source_tweet_id, author_uid, engager_uid, parent_uid,
        engager_tweet_id, delay_min, depth) and DIR/source_tweets.tsv (post_id <TAB> text)
Writes: --out/{users,follows,posts,engagements} (Parquet), swapped in whole at the end

Mapping: author and engagers become users; each source tweet is a post whose
created_at comes from its snowflake id; each cascade row is an engagement at
post time + delay_min: a direct child of the source (depth 1) is a repost, a
deeper node a reply. Who re-shared from whom (parent -> engager) is the only
social signal in the data, so it becomes a follow edge (engager follows parent).
User profiles are unknown: created_at is set to Twitter's launch day so the
contract's time order holds, and country/language are left empty.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.io import write_dataset

CASCADE_COLUMNS = ["dataset", "source_tweet_id", "author_uid", "engager_uid", "parent_uid",
                   "engager_tweet_id", "delay_min", "depth"]
TWITTER_EPOCH_MS = 1288834974657
TWITTER_LAUNCH = "2006-03-21 00:00:00"


def snowflake_time(tweet_id: F.Column) -> F.Column:
    """Creation time encoded in a Twitter snowflake id (ms since Twitter's epoch in the top bits)."""
    return F.timestamp_millis(F.shiftright(tweet_id, 22) + F.lit(TWITTER_EPOCH_MS))


def build_posts(cascades: DataFrame, sources: DataFrame) -> DataFrame:
    authors = cascades.select(F.col("source_tweet_id").alias("post_id"), F.col("author_uid").alias("author_id"))
    authors = authors.dropDuplicates(["post_id"])
    posts = authors.join(sources, on="post_id", how="left")
    return posts.select(
        "post_id", "author_id", F.coalesce(F.col("text"), F.lit("")).alias("text"),
        snowflake_time(F.col("post_id")).alias("created_at"),
        F.col("text").contains("URL").alias("has_media"),
        F.length(F.coalesce(F.col("text"), F.lit(""))).cast("int").alias("text_length"),
    )


def build_engagements(cascades: DataFrame) -> DataFrame:
    delay_us = (F.col("delay_min") * 60_000_000).cast("long")
    created_us = F.unix_micros(snowflake_time(F.col("source_tweet_id")))
    return cascades.select(
        F.col("engager_uid").alias("user_id"),
        F.col("source_tweet_id").alias("post_id"),
        F.when(F.col("depth") <= 1, F.lit("repost")).otherwise(F.lit("reply")).alias("event"),
        F.timestamp_micros(created_us + F.greatest(delay_us, F.lit(0))).alias("ts"),
    )


def build_follows(cascades: DataFrame) -> DataFrame:
    edges = cascades.where(F.col("parent_uid") != F.col("engager_uid")).groupBy(
        F.col("engager_uid").alias("follower_id"), F.col("parent_uid").alias("followee_id")
    ).agg(F.min(F.timestamp_millis(F.shiftright("engager_tweet_id", 22) + F.lit(TWITTER_EPOCH_MS))).alias("created_at"))
    return edges.select("follower_id", "followee_id", "created_at")


def build_users(cascades: DataFrame) -> DataFrame:
    ids = cascades.select(F.col("author_uid").alias("user_id")).union(
        cascades.select(F.col("engager_uid").alias("user_id"))).union(
        cascades.select(F.col("parent_uid").alias("user_id"))).distinct()
    return ids.select(
        "user_id", F.to_timestamp(F.lit(TWITTER_LAUNCH)).alias("created_at"),
        F.lit(None).cast("string").alias("country"), F.lit(None).cast("string").alias("language"),
        F.lit(False).alias("is_verified"),
    )


def read_cascades(spark: SparkSession, directory: Path) -> tuple[DataFrame, DataFrame]:
    cascade_path, sources_path = directory / "engagements.csv.gz", directory / "source_tweets.tsv"
    for path in (cascade_path, sources_path):
        if not path.is_file():
            raise FileNotFoundError(f"Twitter15/16 input not found: {path}")
    raw = spark.read.option("header", True).csv(str(cascade_path))
    missing = [c for c in CASCADE_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{cascade_path}: missing columns {missing}, expected {CASCADE_COLUMNS}")
    cascades = raw.select(
        *[F.col(c).cast("long").alias(c) for c in ("source_tweet_id", "author_uid", "engager_uid", "parent_uid",
                                                    "engager_tweet_id", "depth")],
        F.col("delay_min").cast("double").alias("delay_min"),
    ).where(F.col("source_tweet_id").isNotNull() & F.col("engager_uid").isNotNull() & F.col("author_uid").isNotNull())
    sources = spark.read.option("sep", "\t").schema("post_id long, text string").csv(str(sources_path))
    return cascades, sources.where(F.col("post_id").isNotNull()).dropDuplicates(["post_id"])


def run(spark: SparkSession, directory: str, out: str) -> dict[str, int]:
    cascades, sources = read_cascades(spark, Path(directory))
    cascades = cascades.cache()
    tables = {
        "users": build_users(cascades).repartition(2, "user_id").sortWithinPartitions("user_id"),
        "follows": build_follows(cascades).repartition(2, "follower_id").sortWithinPartitions("follower_id", "followee_id"),
        "posts": build_posts(cascades, sources).repartition(1).sortWithinPartitions("post_id"),
        "engagements": build_engagements(cascades).repartition(4, "user_id").sortWithinPartitions("user_id", "ts", "post_id"),
    }
    try:
        return write_dataset(tables, out)
    finally:
        cascades.unpersist()
