"""`nearline content pretrain|train|eval|probe|finetune`: the DeepMoji-style content model."""

from __future__ import annotations

import argparse
import json
import os
import time

from cli.main import positive_int
from inputs.labelled_text import encode_labels, read_labelled_jsonl, read_tweeteval_split, validation_split
from jobs import pretrain_content_model
from jobs.spark import build_spark_session
from jobs.train_content_model import resolve_model_dir, train_from_dataset, train_from_tweeteval
from nearline.config import NearlineConfig


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
    (train_texts, train_y), (val_texts, val_y) = validation_split(encoded, config.content.seed)
    test_texts, test_y = encoded["test"]
    result = linear_probe(encode_texts(model, train_texts), train_y, encode_texts(model, val_texts), val_y,
                          encode_texts(model, test_texts), test_y)
    print(json.dumps({"jsonl": args.jsonl, "labels": names, "test_examples": len(test_texts), **result}))
    return 0


def _handle_finetune(args: argparse.Namespace, config: NearlineConfig) -> int:
    from embeddings.content_encoder import featurize, run_model, save_content_model
    from embeddings.training import chain_thaw, class_average_f1, tune_thresholds

    model, names, encoded = _probe_data(args, config)
    (train_texts, train_y), (val_texts, val_y) = validation_split(encoded, config.content.seed)
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
    parser = subparsers.add_parser("content")
    actions = parser.add_subparsers(dest="content_command", metavar="ACTION", required=True)

    _add_pretrain_arguments(actions.add_parser(
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


def _handle_pretrain(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="content-pretrain")
    summary = pretrain_content_model.run(spark, config, args.input, args.out, args.sample_fraction)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PARQUET",
                        help="Parquet file or directory with a text column (content.pretrain.text_column)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="model directory; running again with the same DIR resumes an interrupted run")
    parser.add_argument("--sample-fraction", type=float, default=1.0,
                        help="use this share of the distinct posts (a hash sample), e.g. for a quick run")
    parser.set_defaults(handler=_handle_pretrain)
