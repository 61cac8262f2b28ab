"""Generate the seeded synthetic dataset (users, follows, posts, engagements + latent truth).

Reads:  nothing (config.generate sets size and seed)
Writes: config.data.path/{users,follows,posts,engagements,truth/user_topics,truth/posts} (Parquet)

Blocks of users are Spark tasks; each block's rows depend only on the seed and the
block index, and part files are renamed by block, so the same seed gives the same
files with the same rows, schema and metadata on any number of cores, a cluster or
Spark Connect. The latent world the blocks share (the skeleton) is built from the seed
once and broadcast; Spark Connect has no broadcast, so there each Python worker
rebuilds it from the seed and keeps it for the tasks it runs.
(Byte equality holds within one JVM only: parquet-mr lists a column chunk's
encodings in hash-set order, which changes between JVM processes.) The dataset is written beside the target and
swapped in at the end, so a failed run leaves the previous dataset untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.utils import is_remote

from inputs.contract import TABLE_SCHEMAS_DDL
from inputs.synthetic import TABLE_GENERATORS, Skeleton, build_skeleton, cut_to_snapshot, num_blocks
from jobs.io import write_dataset
from nearline.config import GenerateConfig, NearlineConfig

TRUTH_SCHEMAS_DDL = {
    "truth/user_topics": "user_id long, topic_weights array<float>, author_topic int, author_popularity float",
    "truth/posts": "post_id long, topic int, sentiment int, quality float",
}


@functools.lru_cache(maxsize=1)
def skeleton_of_worker(config: GenerateConfig) -> Skeleton:
    """The skeleton built where it is used, once per Python worker (workers serve many tasks)."""
    return build_skeleton(config)


def generate_table(
    spark: SparkSession, config: GenerateConfig, table: str, skeleton: Callable[[], Skeleton]
) -> DataFrame:
    """One table as a DataFrame with one partition per user block; ``skeleton`` runs on the executors."""
    generator = TABLE_GENERATORS[table]
    schema = TABLE_SCHEMAS_DDL.get(table) or TRUTH_SCHEMAS_DDL[table]
    blocks = num_blocks(config)

    def generate_blocks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        skeleton_value = skeleton()
        for batch in batches:
            for block in batch["id"].tolist():
                yield cut_to_snapshot(config, table, generator(config, skeleton_value, int(block)))

    return spark.range(0, blocks, numPartitions=blocks).mapInPandas(generate_blocks, schema)


def run(spark: SparkSession, config: NearlineConfig) -> dict[str, int]:
    """Generate every table into a fresh directory, then swap it in. Returns row counts."""
    if is_remote():
        # The skeleton is a pure function of the seed, so rebuilding it per worker gives the same rows.
        rebuilt = functools.partial(skeleton_of_worker, config.generate)
        tables = {table: generate_table(spark, config.generate, table, rebuilt) for table in TABLE_GENERATORS}
        return write_dataset(tables, config.data.path, progress=True)
    skeleton_broadcast = spark.sparkContext.broadcast(build_skeleton(config.generate))
    try:
        tables = {table: generate_table(spark, config.generate, table, lambda: skeleton_broadcast.value)
                  for table in TABLE_GENERATORS}
        return write_dataset(tables, config.data.path, progress=True)
    finally:
        skeleton_broadcast.unpersist()
