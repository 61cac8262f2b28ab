"""`nearline content pretrain | train | eval | probe | finetune`: the DeepMoji-style content model.

`content pretrain`  see jobs.pretrain_content_model (self-supervised emoji pre-training, resumable)
`content train`
    Reads:  config.data.path/posts (emoji labels extracted with Spark, jobs.extract_emoji_labels),
            or a TweetEval-format directory (--tweeteval DIR: train split trains, val split stops early)
    Writes: --out PATH (model dir), or store models/content/<version> (model, vocab, labels, config,
            metrics.json, training_curve.png, and for posts the training rows under data/) and publishes it
`content eval`      Reads a model and a TweetEval split; last stdout line: JSON macro_f1, accuracy, top5_accuracy
`content probe`     Reads a model and a JSONL file {id, split, text, label} (label: one name, or a list for
                    multi-label sets, see inputs.labelled_text.encode_labels); logistic regression on frozen
                    embeddings; last stdout line: JSON with accuracy (test split), or for multi-label sets
                    class_average_f1 (one sigmoid per label, thresholds tuned on val, as DeepMoji)
`content finetune`  Same input; chain-thaw fine-tuning; writes --out (and thresholds.json for multi-label
                    sets); last stdout line: JSON with accuracy or class_average_f1
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from inputs.labelled_text import read_tweeteval_label_names, read_tweeteval_split
from nearline.config import NearlineConfig

if TYPE_CHECKING:
    from embeddings.content_encoder import ContentModel

# ---------------------------------------------------------------- model location
def resolve_model_dir(model: str, config: NearlineConfig) -> str:
    """``--model``: a model directory, or a version of store models/content (``current`` for CURRENT)."""
    if os.path.isfile(os.path.join(model, "model.pt")):
        return model
    from storage.store import Store

    store = Store(config.store.root)
    version = store.current("models", "content") if model == "current" else model
    if version and version in store.versions("models", "content"):
        return store.path("models", "content", version)
    raise ValueError(f"--model {model!r}: neither a model directory (with model.pt) nor a version of "
                     f"models/content in {config.store.root} (have {store.versions('models', 'content')})")


# ---------------------------------------------------------------- train
def load_init_model(config: NearlineConfig) -> ContentModel | None:
    """The model named by content.init_from (e.g. a `content pretrain` output), or None."""
    from embeddings.content_encoder import load_content_model

    return load_content_model(config.content.init_from) if config.content.init_from else None


def train_from_tweeteval(directory: str, config: NearlineConfig, out_dir: str) -> dict:
    """Train on ``directory``'s train split (val split for early stopping/calibration) into ``out_dir``."""
    from embeddings.content_encoder import save_content_model
    from embeddings.training import train_content_model

    train_texts, train_labels = read_tweeteval_split(directory, "train")
    val_texts, val_labels = read_tweeteval_split(directory, "val")
    num_labels = int(max(train_labels.max(), val_labels.max())) + 1
    names = read_tweeteval_label_names(directory, num_labels)
    result = train_content_model(config.content, train_texts, train_labels, val_texts, val_labels, names, out_dir,
                                 init_model=load_init_model(config))
    save_content_model(result.model, result.model.featurizer().vocab, names, config.content, out_dir)
    return result.metrics


def train_from_dataset(spark, config: NearlineConfig, store, publish: bool) -> tuple[str, dict]:
    """Extract emoji labels from the configured posts (Spark), train, stage into models/content.

    Returns:
        (version, details) where details holds row counts and validation metrics.
    """
    import pyarrow.parquet as pq

    from embeddings.content_encoder import save_content_model
    from embeddings.training import train_content_model
    from jobs.extract_emoji_labels import emoji_examples, extract_post_emojis, label_set
    from jobs.io import write_parquet_deterministic
    from storage.store import config_hash

    content = config.content
    posts_path = f"{config.data.path}/posts"
    extracted = extract_post_emojis(spark.read.parquet(posts_path)).cache()
    try:
        labels = label_set(extracted, content.num_labels)
        examples = emoji_examples(extracted, labels, content.max_examples_per_label, content.min_text_tokens,
                                  content.val_fraction)
        manifest = {"producer": "nearline content train", "input": {"posts": posts_path},
                    "config_hash": config_hash(content), "labels": labels}
        with store.stage("models", "content", manifest=manifest) as staged:
            write_parquet_deterministic(examples.orderBy("post_id", "label"), staged.data_path)
            with open(os.path.join(staged.path, "training_labels.json"), "w", encoding="utf-8") as f:
                json.dump(labels, f, ensure_ascii=False)
            rows = pq.read_table(staged.data_path).to_pandas()
            train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
            if len(train) == 0 or len(val) == 0:
                raise ValueError(f"emoji label extraction from {posts_path} gave {len(train)} train and "
                                 f"{len(val)} val examples: need posts with emojis of the label set in both")
            result = train_content_model(content, train["text"].tolist(), train["label"].to_numpy(),
                                         val["text"].tolist(), val["label"].to_numpy(), labels, staged.path,
                                         init_model=load_init_model(config))
            save_content_model(result.model, result.model.featurizer().vocab, labels, content, staged.path)
            details = {"row_counts": {"train": len(train), "val": len(val)}, "metrics": result.metrics["val"]}
            staged.manifest.update(details)
    finally:
        extracted.unpersist()
    if publish:
        store.publish("models", "content", staged.version)
    return staged.version, details
