"""Import a TweetEval-format emoji directory into the data contract.

Reads:  DIR/{split}_text.txt + DIR/{split}_labels.txt for every split present, DIR/mapping.txt
Writes: --out/{users,follows,posts,engagements} (Parquet), swapped in whole at the end

TweetEval has texts and the emoji each contained, but no people: every tweet
becomes a post of one pseudo-author (user 1) with its emoji put back at the end,
so the emoji-label extraction job recovers exactly TweetEval's label. Follows and
engagements are empty tables with the contract's schema.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from inputs.contract import TABLE_SCHEMAS_DDL
from jobs.io import write_dataset

SPLITS = ("train", "val", "test")
PSEUDO_AUTHOR_ID = 1
POSTED_AT = "2018-01-01 00:00:00"


def read_mapping(directory: Path) -> dict[int, str]:
    path = directory / "mapping.txt"
    if not path.is_file():
        raise FileNotFoundError(f"TweetEval mapping not found: {path} (expected lines 'label<TAB>emoji<TAB>name')")
    mapping = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip().isdigit():
            raise ValueError(f"{path}:{line_number}: expected 'label<TAB>emoji', got {line!r}")
        mapping[int(parts[0])] = parts[1].strip()
    return mapping


def read_split(directory: Path, split: str, mapping: dict[int, str]) -> list[tuple[str, str]]:
    """(text with its emoji appended, split) pairs; a label not in mapping.txt is an error."""
    texts = (directory / f"{split}_text.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    labels = (directory / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
    if len(texts) != len(labels):
        raise ValueError(f"{directory}/{split}: {len(texts)} texts but {len(labels)} labels; expected equal counts")
    rows = []
    for line_number, (text, label) in enumerate(zip(texts, labels, strict=True), start=1):
        if not label.strip().isdigit() or int(label) not in mapping:
            raise ValueError(f"{directory}/{split}_labels.txt:{line_number}: unknown label {label!r}, "
                             f"expected one of 0..{max(mapping)}")
        rows.append((f"{text.strip()} {mapping[int(label)]}", split))
    return rows


def build_posts(spark: SparkSession, rows: list[tuple[str, str]]) -> DataFrame:
    frame = spark.createDataFrame([(i + 1, text, split) for i, (text, split) in enumerate(rows)],
                                  "post_id long, text string, split string")
    return frame.select(
        "post_id", F.lit(PSEUDO_AUTHOR_ID).cast("long").alias("author_id"), "text",
        (F.to_timestamp(F.lit(POSTED_AT)) + F.make_interval(secs=F.col("post_id"))).alias("created_at"),
        F.lit(False).alias("has_media"), F.length("text").cast("int").alias("text_length"),
    )


def run(spark: SparkSession, directory: str, out: str) -> dict[str, int]:
    source = Path(directory)
    mapping = read_mapping(source)
    splits = [s for s in SPLITS if (source / f"{s}_text.txt").is_file()]
    if not splits:
        raise FileNotFoundError(f"no TweetEval split in {directory}: expected files like train_text.txt")
    rows = [row for split in splits for row in read_split(source, split, mapping)]
    users = spark.createDataFrame([(PSEUDO_AUTHOR_ID,)], "user_id long").select(
        "user_id", F.to_timestamp(F.lit("2010-01-01 00:00:00")).alias("created_at"),
        F.lit(None).cast("string").alias("country"), F.lit("en").alias("language"), F.lit(False).alias("is_verified"))
    tables = {
        "users": users,
        "follows": spark.createDataFrame([], TABLE_SCHEMAS_DDL["follows"]),
        "posts": build_posts(spark, rows).repartition(1),
        "engagements": spark.createDataFrame([], TABLE_SCHEMAS_DDL["engagements"]),
    }
    return write_dataset(tables, out)
