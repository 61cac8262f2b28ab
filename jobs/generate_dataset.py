"""Generate the seeded synthetic dataset (users, follows, posts, engagements + latent truth).

Reads:  nothing (config.generate sets size and seed)
Writes: config.data.path/{users,follows,posts,engagements,truth/user_topics,truth/posts} (Parquet)

Blocks of users are Spark tasks; each block's rows depend only on the seed and the
block index, and part files are renamed by block, so the same seed gives the same
files with the same rows, schema and metadata on any number of cores or a cluster.
(Byte equality holds within one JVM only: parquet-mr lists a column chunk's
encodings in hash-set order, which changes between JVM processes.) The dataset is written beside the target and
swapped in at the end, so a failed run leaves the previous dataset untouched.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from jobs.config import GenerateConfig, NearlineConfig
from jobs.contract import TABLE_SCHEMAS_DDL
from jobs.io import write_dataset
from jobs.spark import build_spark_session
from jobs.synthetic import TABLE_GENERATORS, build_skeleton, cut_to_snapshot, num_blocks

TRUTH_SCHEMAS_DDL = {
    "truth/user_topics": "user_id long, topic_weights array<float>, author_topic int, author_popularity float",
    "truth/posts": "post_id long, topic int, sentiment int, quality float",
}


def generate_table(spark: SparkSession, config: GenerateConfig, table: str, skeleton_broadcast) -> DataFrame:
    """One table as a DataFrame with one partition per user block."""
    generator = TABLE_GENERATORS[table]
    schema = TABLE_SCHEMAS_DDL.get(table) or TRUTH_SCHEMAS_DDL[table]
    blocks = num_blocks(config)

    def generate_blocks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        skeleton = skeleton_broadcast.value
        for batch in batches:
            for block in batch["id"].tolist():
                yield cut_to_snapshot(config, table, generator(config, skeleton, int(block)))

    return spark.range(0, blocks, numPartitions=blocks).mapInPandas(generate_blocks, schema)


def run(spark: SparkSession, config: NearlineConfig) -> dict[str, int]:
    """Generate every table into a fresh directory, then swap it in. Returns row counts."""
    skeleton_broadcast = spark.sparkContext.broadcast(build_skeleton(config.generate))
    try:
        tables = {table: generate_table(spark, config.generate, table, skeleton_broadcast)
                  for table in TABLE_GENERATORS}
        return write_dataset(tables, config.data.path, progress=True)
    finally:
        skeleton_broadcast.unpersist()


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    if config.spark.master.startswith("sc://"):
        raise ValueError(
            f"nearline generate cannot run on Spark Connect ({config.spark.master}): it ships the latent "
            "world to executors with sparkContext.broadcast, which Connect does not offer; use a classic "
            "master (local[*], spark://, yarn, k8s://) for generation"
        )
    started = time.perf_counter()
    print(
        f"generating {config.generate.num_users:,} users (seed {config.generate.seed}) into {config.data.path}"
    )
    spark = build_spark_session(
        config.spark, expected_rows=config.generate.num_users * 100, app_suffix="generate"
    )
    counts = run(spark, config)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    print(
        f"generated {total:,} rows in {elapsed:.1f} s ({total / elapsed:,.0f} rows/s) -> {config.data.path}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="write the seeded synthetic dataset (Spark)")
    parser.set_defaults(handler=_handle)
