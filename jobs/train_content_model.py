"""`nearline content pretrain | train | eval | probe | finetune`: the DeepMoji-style content model.

`content pretrain`  see jobs.pretrain_content_model (self-supervised emoji pre-training, resumable)
`content train`
    Reads:  config.data.path/posts (emoji labels extracted with Spark, jobs.extract_emoji_labels),
            or a TweetEval-format directory (--tweeteval DIR: train split trains, val split stops early)
    Writes: --out PATH (model dir), or store models/content/<version> (model, vocab, labels, config,
            metrics.json, training_curve.png, and for posts the training rows under data/) and publishes it
`content eval`      Reads a model and a TweetEval split; last stdout line: JSON macro_f1, accuracy, top5_accuracy
`content probe`     Reads a model and a JSONL file {id, split, text, label} (label: one name, or a list for
                    multi-label sets, see encode_labels); logistic regression on frozen
                    embeddings; last stdout line: JSON with accuracy (test split), or for multi-label sets
                    class_average_f1 (one sigmoid per label, thresholds tuned on val, as DeepMoji)
`content finetune`  Same input; chain-thaw fine-tuning; writes --out (and thresholds.json for multi-label
                    sets); last stdout line: JSON with accuracy or class_average_f1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.cli import positive_int
from jobs.config import NearlineConfig

if TYPE_CHECKING:
    from embeddings.content_encoder import ContentModel

TWEETEVAL_SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- input adapters
def read_tweeteval_split(directory: str, split: str) -> tuple[list[str], np.ndarray]:
    """Texts and int labels of ``{split}_text.txt`` / ``{split}_labels.txt`` in ``directory``.

    Raises:
        ValueError: on missing files, a line-count mismatch or a non-integer label.
    """
    text_path = os.path.join(directory, f"{split}_text.txt")
    label_path = os.path.join(directory, f"{split}_labels.txt")
    for path in (text_path, label_path):
        if not os.path.isfile(path):
            raise ValueError(f"TweetEval split {split!r}: {path} does not exist")
    with open(text_path, "rb") as f:
        # Bytes, split on b"\n" only: tweets may hold U+2028 and other characters str.splitlines breaks on.
        texts = [line.decode("utf-8", errors="replace").rstrip("\r") for line in f.read().split(b"\n")]
    with open(label_path, encoding="utf-8") as f:
        raw_labels = [line.strip() for line in f if line.strip()]
    if texts and texts[-1] == "" and len(texts) == len(raw_labels) + 1:
        texts.pop()
    if len(texts) != len(raw_labels):
        raise ValueError(f"TweetEval split {split!r}: {len(texts)} texts but {len(raw_labels)} labels")
    try:
        labels = np.array([int(x) for x in raw_labels], dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"TweetEval split {split!r}: non-integer label in {label_path}: {exc}") from None
    return texts, labels


def read_tweeteval_label_names(directory: str, num_labels: int) -> list[str]:
    """Emoji of each label from mapping.txt when present, else "0".."num_labels-1"."""
    path = os.path.join(directory, "mapping.txt")
    names = [str(i) for i in range(num_labels)]
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) < num_labels:
                    names[int(parts[0])] = parts[1]
    return names


def read_labelled_jsonl(path: str) -> dict[str, tuple[list[str], list[Any]]]:
    """Rows {id, split, text, label} grouped by split: split -> (texts, raw labels)."""
    if not os.path.isfile(path):
        raise ValueError(f"--jsonl {path}: no such file")
    splits: dict[str, tuple[list[str], list[Any]]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                split, text, label = row["split"], row["text"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with split, text, label ({exc})") from None
            texts, labels = splits.setdefault(str(split), ([], []))
            texts.append(str(text))
            labels.append(label)
    for required in ("train", "test"):
        if required not in splits:
            raise ValueError(f"{path}: no rows with split {required!r} (have {sorted(splits)})")
    return splits


def encode_labels(splits: dict[str, tuple[list[str], list[Any]]]) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]]]:
    """Label names from the train split; every split's labels as indices (N,), or for multi-label
    sets as 0/1 rows (N, L).

    A row's label is one name (``"label": 1``) or, for multi-label sets such as Olympic and SE0714,
    a list: either the names that apply (``"label": ["fear", "joy"]``) or, as DeepMoji ships them, a
    0/1 vector over the classes (every row a list of 0/1 of one length, e.g. ``[0, 1, 1]``; classes
    are then named "0".."L-1").

    Raises:
        ValueError: on a label in val/test that the train split does not have, or a split mixing
            single labels and lists.
    """
    rows = [label for _, labels in splits.values() for label in labels]
    lists = [isinstance(label, list) for label in rows]
    if any(lists) and not all(lists):
        raise ValueError("labels mix single values and lists: a multi-label set needs a list on every row")
    if not any(lists):
        names = sorted({str(v) for v in splits["train"][1]})
        index = {name: i for i, name in enumerate(names)}
        encoded = {}
        for split, (texts, labels) in splits.items():
            unknown = sorted({str(v) for v in labels} - set(index))
            if unknown:
                raise ValueError(f"split {split!r} has label(s) {unknown[:5]} not in the train split's {names}")
            encoded[split] = (texts, np.array([index[str(v)] for v in labels], dtype=np.int64))
        return names, encoded
    widths = {len(label) for label in rows}
    if len(widths) == 1 and all(v in (0, 1) and not isinstance(v, bool) for label in rows for v in label) \
            and widths != {1}:
        width = widths.pop()
        return [str(i) for i in range(width)], {
            split: (texts, np.array(labels, dtype=np.int64).reshape(len(labels), width))
            for split, (texts, labels) in splits.items()}
    names = sorted({str(v) for label in splits["train"][1] for v in label})
    index = {name: i for i, name in enumerate(names)}
    encoded = {}
    for split, (texts, labels) in splits.items():
        unknown = sorted({str(v) for label in labels for v in label} - set(index))
        if unknown:
            raise ValueError(f"split {split!r} has label(s) {unknown[:5]} not in the train split's {names}")
        hot = np.zeros((len(labels), len(names)), dtype=np.int64)
        for row, label in enumerate(labels):
            hot[row, [index[str(v)] for v in label]] = 1
        encoded[split] = (texts, hot)
    return names, encoded


def _val_split(encoded: dict[str, tuple[list[str], np.ndarray]], seed: int
               ) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """(train, val): the file's val split, or 10% of train held out when it has none."""
    train_texts, train_labels = encoded["train"]
    if "val" in encoded:
        return encoded["train"], encoded["val"]
    order = np.random.default_rng(seed).permutation(len(train_texts))
    cut = max(1, len(order) // 10)
    pick = lambda idx: ([train_texts[i] for i in idx], train_labels[idx])  # noqa: E731
    return pick(order[cut:]), pick(order[:cut])


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


def _handle_train(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    if args.tweeteval:
        if args.out:
            metrics = train_from_tweeteval(args.tweeteval, config, args.out)
            where = args.out
        else:
            from storage.store import Store, config_hash

            store = Store(config.store.root)
            manifest = {"producer": "nearline content train", "input": {"tweeteval": args.tweeteval},
                        "config_hash": config_hash(config.content)}
            with store.stage("models", "content", manifest=manifest) as staged:
                metrics = train_from_tweeteval(args.tweeteval, config, staged.path)
                staged.manifest["metrics"] = metrics["val"]
            if not args.no_publish:
                store.publish("models", "content", staged.version)
            where = f"models/content/{staged.version}"
        summary = {"model": where, **metrics["val"], "train_s": metrics["train_s"]}
    else:
        from jobs.spark import build_spark_session
        from storage.store import Store

        if args.out:
            raise ValueError("--out is only for --tweeteval; models trained from posts go to the store")
        spark = build_spark_session(config.spark, app_suffix="content-train")
        version, details = train_from_dataset(spark, config, Store(config.store.root), not args.no_publish)
        summary = {"model": f"models/content/{version}", **details["metrics"], **details["row_counts"]}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))
    return 0


def _handle_eval(args: argparse.Namespace, config: NearlineConfig) -> int:
    from embeddings.content_encoder import load_content_model
    from embeddings.training import evaluate_content_model

    model = load_content_model(resolve_model_dir(args.model, config))
    texts, labels = read_tweeteval_split(args.tweeteval, args.split)
    metrics = evaluate_content_model(model, texts, labels)
    print(json.dumps({"split": args.split, "examples": len(texts), **metrics}))
    return 0


def _probe_data(args: argparse.Namespace, config: NearlineConfig):
    from embeddings.content_encoder import load_content_model

    model = load_content_model(resolve_model_dir(args.model, config))
    names, encoded = encode_labels(read_labelled_jsonl(args.jsonl))
    return model, names, encoded


def _handle_probe(args: argparse.Namespace, config: NearlineConfig) -> int:
    from embeddings.content_encoder import encode_texts
    from embeddings.training import linear_probe

    model, names, encoded = _probe_data(args, config)
    (train_texts, train_y), (val_texts, val_y) = _val_split(encoded, config.content.seed)
    test_texts, test_y = encoded["test"]
    result = linear_probe(encode_texts(model, train_texts), train_y, encode_texts(model, val_texts), val_y,
                          encode_texts(model, test_texts), test_y)
    print(json.dumps({"jsonl": args.jsonl, "labels": names, "test_examples": len(test_texts), **result}))
    return 0


def _handle_finetune(args: argparse.Namespace, config: NearlineConfig) -> int:
    from embeddings.content_encoder import featurize, run_model, save_content_model
    from embeddings.training import chain_thaw, class_average_f1, tune_thresholds

    model, names, encoded = _probe_data(args, config)
    (train_texts, train_y), (val_texts, val_y) = _val_split(encoded, config.content.seed)
    tuned, report = chain_thaw(model, train_texts, train_y, val_texts, val_y, names,
                               max_epochs_per_stage=args.max_epochs_per_stage)
    test_texts, test_y = encoded["test"]
    assert tuned.vocab is not None
    logits = run_model(tuned, featurize(test_texts, tuned.vocab, tuned.config))["embedding_logits"]
    save_content_model(tuned, tuned.vocab, names, tuned.config, args.out)
    if test_y.ndim == 2:
        # Multi-label: one threshold per label, tuned on val (never on test), then class-average F1.
        val_logits = run_model(tuned, featurize(val_texts, tuned.vocab, tuned.config))["embedding_logits"]
        thresholds = tune_thresholds(val_y, val_logits)
        with open(os.path.join(args.out, "thresholds.json"), "w", encoding="utf-8") as f:
            json.dump(dict(zip(names, thresholds.tolist(), strict=True)), f, ensure_ascii=False)
        metric = {"class_average_f1": class_average_f1(test_y, logits, thresholds)}
    else:
        metric = {"accuracy": float((logits.argmax(1) == test_y).mean())}
    print(json.dumps({"jsonl": args.jsonl, "out": args.out, "test_examples": len(test_texts), **metric, **report}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `content pretrain|train|eval|probe|finetune`."""
    from jobs import pretrain_content_model

    parser = subparsers.add_parser("content")
    actions = parser.add_subparsers(dest="content_command", metavar="ACTION", required=True)

    pretrain_content_model.add_arguments(actions.add_parser(
        "pretrain", help="self-supervised emoji pre-training over a Parquet text column (Spark; resumable)"))

    train = actions.add_parser("train", help="train from emoji labels of the posts, or from TweetEval")
    train.add_argument("--tweeteval", metavar="DIR", help="TweetEval-format directory (train + val splits)")
    train.add_argument("--out", metavar="PATH", help="model directory (with --tweeteval; default: the store)")
    train.add_argument("--no-publish", action="store_true", help="stage the store version without publishing")
    train.set_defaults(handler=_handle_train)

    evaluate = actions.add_parser("eval", help="macro-F1 / accuracy / top-5 on a TweetEval split")
    evaluate.add_argument("--model", required=True, help="model directory or models/content version")
    evaluate.add_argument("--tweeteval", metavar="DIR", required=True)
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"),
                          help="TweetEval split: reads {split}_text.txt/{split}_labels.txt")
    evaluate.set_defaults(handler=_handle_eval)

    probe = actions.add_parser("probe", help="logistic regression on frozen content embeddings")
    probe.add_argument("--model", required=True, help="model directory or models/content version")
    probe.add_argument("--jsonl", required=True, help="rows {id, split, text, label}")
    probe.set_defaults(handler=_handle_probe)

    finetune = actions.add_parser("finetune", help="chain-thaw fine-tuning on a labelled task")
    finetune.add_argument("--model", required=True, help="model directory or models/content version")
    finetune.add_argument("--jsonl", required=True, help="rows {id, split, text, label}")
    finetune.add_argument("--out", required=True, help="directory for the fine-tuned model")
    finetune.add_argument("--max-epochs-per-stage", type=positive_int, default=10,
                          help="each chain-thaw stage stops early on val accuracy (patience 2)")
    finetune.set_defaults(handler=_handle_finetune)
