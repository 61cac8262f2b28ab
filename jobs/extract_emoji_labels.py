"""Emoji labels for the self-supervised content model (DeepMoji-style distant supervision).

Reads:  config.data.path/posts (post_id, text)
Writes: <model version>/training/ Parquet (post_id long, text string, label int, emoji string,
        split string) and <model version>/training_labels.json, when called by
        `nearline content train` (jobs.train_content_model), so the rows a model learned from are
        versioned with it.

Pure DataFrame -> DataFrame transforms; the emoji work runs in an Arrow-batched pandas function
(mapInPandas) calling embeddings.text, never a row UDF.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

EXTRACTED_SCHEMA = ("post_id long, text string, emojis array<string>, num_tokens int, num_mentions int, "
                    "num_hashtags int, num_urls int, normalised string")


def _extract_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    from embeddings.text import extract_emojis, strip_emojis, tokenize

    for batch in batches:
        texts = batch["text"].fillna("").tolist()
        stripped = [" ".join(strip_emojis(t).split()) for t in texts]
        tokens = [tokenize(t) for t in stripped]
        yield pd.DataFrame({
            "post_id": batch["post_id"].to_numpy(),
            "text": stripped,
            "emojis": [extract_emojis(t) for t in texts],
            "num_tokens": [len(t) for t in tokens],
            "num_mentions": [t.count("<user>") for t in tokens],
            "num_hashtags": [sum(w.startswith("#") and len(w) > 1 for w in t) for t in tokens],
            "num_urls": [t.count("<url>") for t in tokens],
            "normalised": [" ".join(t) for t in tokens],
        })


def extract_post_emojis(posts: DataFrame) -> DataFrame:
    """(post_id, text) -> (post_id, text without emojis, distinct folded emojis, num_tokens, and for spam
    filtering: num_mentions, num_hashtags, num_urls, normalised (the tokens: lower case, links, mentions
    and numbers masked))."""
    return posts.select("post_id", "text").mapInPandas(_extract_batches, EXTRACTED_SCHEMA)


def label_set(extracted: DataFrame, num_labels: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """The ``num_labels`` most frequent emojis but ``exclude`` (by posts containing them; ties by code point)."""
    counts = (extracted.select(F.explode("emojis").alias("emoji"))
              .where(~F.col("emoji").isin(*exclude) if exclude else F.lit(True))
              .groupBy("emoji").count()
              .orderBy(F.col("count").desc(), F.col("emoji").asc())
              .limit(num_labels))
    return [row["emoji"] for row in counts.collect()]


def emoji_examples(extracted: DataFrame, labels: list[str], max_examples_per_label: int,
                   min_text_tokens: int, val_fraction: float) -> DataFrame:
    """One example per (post, distinct emoji in the label set), capped per label, with a split column.

    Returns:
        DataFrame (post_id long, text string, label int, emoji string, split string "train"|"val");
        the split is a hash of post_id so all examples of a post land on the same side.
    """
    if not labels:
        raise ValueError("no emojis found in the posts: cannot build an emoji label set")
    label_map = F.create_map(*[x for i, e in enumerate(labels) for x in (F.lit(e), F.lit(i))])
    examples = (extracted.where(F.col("num_tokens") >= min_text_tokens)
                .select("post_id", "text", F.explode("emojis").alias("emoji"))
                .withColumn("label", label_map[F.col("emoji")])
                .where(F.col("label").isNotNull()))
    # Deterministic cap: a hash order, not a random sample, so reruns pick the same rows.
    rank = F.row_number().over(Window.partitionBy("label").orderBy(F.xxhash64("post_id"), "post_id"))
    bucket = F.pmod(F.xxhash64(F.col("post_id"), F.lit("split")), F.lit(10_000))
    return (examples.withColumn("rank", rank).where(F.col("rank") <= max_examples_per_label)
            .select(F.col("post_id").cast("long"), "text", F.col("label").cast("int"), "emoji",
                    F.when(bucket < int(val_fraction * 10_000), "val").otherwise("train").alias("split")))
