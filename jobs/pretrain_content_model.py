"""`nearline content pretrain`: self-supervised emoji pre-training of the content model over raw text.

Reads:  --input: Parquet (file or directory, any path Spark reads) with a text column
        (content.pretrain.text_column), e.g. ../shared/data/emoji_tweets/tweets.parquet
Writes: --out DIR: examples/ (Parquet: post_id long, text string, label int, emoji string, split string;
        complete when examples/_labels.json exists), checkpoint.pt while training, then the model
        (model.pt, vocab.json, labels.json, config.json), metrics.json, training_curve.png

The emojis of each post become its labels (DeepMoji distant supervision: one example per distinct emoji
of the label set) and are removed from the text the model reads. Spam-like posts are filtered first
(content.pretrain: mention, hashtag and link counts, too many emojis, near-duplicates), then every
label is capped at max_examples_per_label posts in a hash order (deterministic sampling). Extraction and
filtering are a Spark job; training runs on the driver (GPU when present) and checkpoints, so running
the same command again after a kill resumes where it stopped. Start `content train` / `content finetune`
from the result with --set content.init_from=DIR (train) or --model DIR (finetune).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from embeddings.config import PretrainConfig
from nearline.config import NearlineConfig

if TYPE_CHECKING:
    # Imported where used: `nearline --help` must not start pyspark (cli.main imports commands lazily).
    from pyspark.sql import DataFrame, SparkSession

LABELS_FILE = "_labels.json"


def posts_from_text_column(frame: DataFrame, text_column: str) -> DataFrame:
    """Any frame with a string column -> (post_id long, text string): one row per distinct non-empty text,
    ``post_id`` a hash of the text (stable across runs and partitionings)."""
    from pyspark.sql import functions as F

    if text_column not in frame.columns:
        raise ValueError(f"no column {text_column!r} in the input (columns: {frame.columns}); "
                         "set content.pretrain.text_column")
    text = F.col(text_column).cast("string")
    return (frame.where(text.isNotNull() & (F.length(F.trim(text)) > 0))
            .select(text.alias("text")).distinct()
            .select(F.xxhash64("text").alias("post_id"), "text"))


def filter_spam(extracted: DataFrame, config: PretrainConfig) -> DataFrame:
    """Posts of :func:`jobs.extract_emoji_labels.extract_post_emojis` that pass the spam filters of ``config``;
    with ``deduplicate``, one post (the smallest id) per normalised text."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kept = extracted.where(
        (F.col("num_mentions") <= config.max_mentions) & (F.col("num_hashtags") <= config.max_hashtags)
        & (F.col("num_urls") <= config.max_urls) & (F.size("emojis") <= config.max_emojis_per_post))
    if config.deduplicate:
        first = Window.partitionBy("normalised").orderBy("post_id")
        kept = kept.withColumn("copy", F.row_number().over(first)).where(F.col("copy") == 1).drop("copy")
    return kept


def build_examples(spark: SparkSession, input_path: str, config: PretrainConfig, out_dir: str,
                   seed_fraction: float = 1.0) -> tuple[list[str], dict[str, int]]:
    """Extract, filter and sample the labelled examples into ``out_dir/examples`` (Spark).

    Returns:
        (label emojis in label order, counts at each filtering step).

    Raises:
        ValueError: on an empty corpus, no emojis, or no post left with text once emojis are removed.
    """
    from pyspark.sql import functions as F

    from jobs.extract_emoji_labels import emoji_examples, extract_post_emojis, label_set
    from jobs.io import write_parquet_deterministic

    posts = posts_from_text_column(spark.read.parquet(input_path), config.text_column)
    if seed_fraction < 1.0:
        posts = posts.where(F.pmod(F.col("post_id"), F.lit(1_000_000)) < int(seed_fraction * 1_000_000))
    extracted = extract_post_emojis(posts).cache()
    try:
        counts = {"posts": extracted.count()}
        if counts["posts"] == 0:
            raise ValueError(f"no posts in {input_path} (column {config.text_column!r} is empty or all null)")
        with_emoji = extracted.where(F.size("emojis") > 0)
        counts["with_emoji"] = with_emoji.count()
        if counts["with_emoji"] == 0:
            raise ValueError(f"none of the {counts['posts']:,} posts in {input_path} contains an emoji: "
                             "nothing to learn the emoji objective from")
        with_text = with_emoji.where(F.col("num_tokens") >= config.min_text_tokens)
        counts["with_text"] = with_text.count()
        if counts["with_text"] == 0:
            raise ValueError(f"all {counts['with_emoji']:,} posts with emojis in {input_path} have fewer than "
                             f"{config.min_text_tokens} tokens once the emojis are removed (all-emoji texts?): "
                             "nothing is left to read")
        kept = filter_spam(with_text, config).cache()
        counts["after_spam_filter"] = kept.count()
        if counts["after_spam_filter"] == 0:
            raise ValueError(f"the spam filters of content.pretrain removed all {counts['with_text']:,} posts")
        labels = label_set(kept, config.num_labels, config.exclude_emojis)
        if len(labels) < 2:
            raise ValueError(f"only {len(labels)} distinct emoji label(s) in {input_path}: need at least 2")
        examples = emoji_examples(kept, labels, config.max_examples_per_label, config.min_text_tokens,
                                  config.val_fraction)
        path = os.path.join(out_dir, "examples")
        counts["examples"] = write_parquet_deterministic(examples.orderBy("post_id", "label"), path)
        kept.unpersist()
    finally:
        extracted.unpersist()
    with open(os.path.join(path, LABELS_FILE), "w", encoding="utf-8") as f:
        json.dump({"labels": labels, "counts": counts}, f, ensure_ascii=False)
    return labels, counts


def run(spark: SparkSession, config: NearlineConfig, input_path: str, out_dir: str,
        seed_fraction: float = 1.0) -> dict:
    """Build (or reuse) the examples, train with checkpoints (resuming one left by a kill), save the model.

    Returns:
        A summary: counts, labels, val metrics, seconds.
    """
    import pyarrow.parquet as pq

    from embeddings.content_encoder import save_content_model
    from embeddings.training import train_content_model
    from jobs.train_content_model import load_init_model

    os.makedirs(out_dir, exist_ok=True)
    labels_path = os.path.join(out_dir, "examples", LABELS_FILE)
    if os.path.isfile(labels_path):
        # The examples are written before their label file: its presence means they are complete.
        with open(labels_path, encoding="utf-8") as f:
            saved = json.load(f)
        labels, counts = saved["labels"], saved["counts"]
        print(f"reusing the examples in {os.path.dirname(labels_path)}", flush=True)
    else:
        labels, counts = build_examples(spark, input_path, config.content.pretrain, out_dir, seed_fraction)
    rows = pq.read_table(os.path.join(out_dir, "examples")).to_pandas()
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{len(train)} train and {len(val)} val examples: raise content.pretrain.val_fraction "
                         "or give more posts")
    print(f"pre-training on {len(train):,} examples ({len(val):,} val) of {len(labels)} emojis: {counts}",
          flush=True)
    result = train_content_model(config.content, train["text"].tolist(), train["label"].to_numpy(),
                                 val["text"].tolist(), val["label"].to_numpy(), labels, out_dir,
                                 init_model=load_init_model(config), checkpoint_every_steps=config.content.pretrain.checkpoint_every_steps)
    assert result.model.vocab is not None
    save_content_model(result.model, result.model.vocab, labels, config.content, out_dir)
    return {"out": out_dir, "labels": labels, "counts": counts, "num_train": len(train), "num_val": len(val),
            "val": result.metrics["val"], "train_s": result.metrics["train_s"]}
