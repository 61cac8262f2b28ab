"""TweetEval emoji quality protocol: a split that nothing is tuned on, and the linear baseline beside it.

`holdout --tweeteval DIR --out SPLIT_DIR`
    Writes a TweetEval-format directory. When DIR has the official test split, SPLIT_DIR holds the
    official train / val / test. Without it (../shared/data/tweeteval_emoji ships train and val only,
    on purpose): train = the official train minus every 10th line, val = those lines (early stopping,
    thresholds, mixing weights: everything tuned), test = the official val split, which no choice sees.
`svm --split SPLIT_DIR --out FILE`
    The design.md reference: TF-IDF word 1-2-grams + char 2-5-grams, class-balanced linear SVM, C picked
    on val; prints and writes val and test macro-F1 and fit seconds.

The content model is scored on the same SPLIT_DIR with `nearline content train --tweeteval SPLIT_DIR
--out M` then `nearline content eval --model M --tweeteval SPLIT_DIR --split test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _write(path: str, lines: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")


def write_holdout(source: str, out: str) -> dict[str, int]:
    """Write the split described in the module docstring; returns rows per split.

    Raises:
        ValueError: when ``source`` lacks the train or val files, or their line counts differ.
    """
    splits: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for split in ("train", "val", "test"):
        text, labels = os.path.join(source, f"{split}_text.txt"), os.path.join(source, f"{split}_labels.txt")
        if os.path.isfile(text) and os.path.isfile(labels):
            splits[split] = (_lines(text), _lines(labels))
            if len(splits[split][0]) != len(splits[split][1]):
                raise ValueError(f"{source}: {split} has {len(splits[split][0])} texts but "
                                 f"{len(splits[split][1])} labels")
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"{source}: expected train_text.txt/train_labels.txt and val_text.txt/val_labels.txt")
    os.makedirs(out, exist_ok=True)
    if "test" not in splits:
        texts, labels = splits["train"]
        held = [i % 10 == 0 for i in range(len(texts))]
        splits = {"train": ([t for t, h in zip(texts, held, strict=True) if not h],
                            [y for y, h in zip(labels, held, strict=True) if not h]),
                  "val": ([t for t, h in zip(texts, held, strict=True) if h],
                          [y for y, h in zip(labels, held, strict=True) if h]),
                  "test": splits["val"]}
    for split, (texts, labels) in splits.items():
        _write(os.path.join(out, f"{split}_text.txt"), texts)
        _write(os.path.join(out, f"{split}_labels.txt"), labels)
    if os.path.isfile(os.path.join(source, "mapping.txt")):
        shutil.copy(os.path.join(source, "mapping.txt"), os.path.join(out, "mapping.txt"))
    return {split: len(texts) for split, (texts, _) in splits.items()}


def linear_svm(split_dir: str, cs: tuple[float, ...] = (0.03, 0.1, 0.3)) -> dict:
    """The TF-IDF linear SVM baseline on ``split_dir``: C picked on val, macro-F1 on val and test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_union
    from sklearn.svm import LinearSVC

    from inputs.labelled_text import read_tweeteval_split

    (train, y), (val, val_y), (test, test_y) = (read_tweeteval_split(split_dir, s) for s in ("train", "val", "test"))
    started = time.perf_counter()
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    x_train = features.fit_transform(train)
    x_val, x_test = features.transform(val), features.transform(test)
    tried = []
    for c in cs:
        clf = LinearSVC(C=c, class_weight="balanced").fit(x_train, y)
        tried.append({"C": c, "val_macro_f1": float(f1_score(val_y, clf.predict(x_val), average="macro")), "clf": clf})
    best = max(tried, key=lambda t: t["val_macro_f1"])
    return {"split": split_dir, "C": best["C"], "val_macro_f1": best["val_macro_f1"],
            "test_macro_f1": float(f1_score(test_y, best["clf"].predict(x_test), average="macro")),
            "val_by_C": {t["C"]: t["val_macro_f1"] for t in tried}, "fit_s": round(time.perf_counter() - started, 1),
            "num_train": len(train), "num_test": len(test),
            "label_distribution_test": np.bincount(test_y).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    holdout = commands.add_parser("holdout", help="write a split whose test part nothing is tuned on")
    holdout.add_argument("--tweeteval", required=True, metavar="DIR")
    holdout.add_argument("--out", required=True, metavar="SPLIT_DIR")
    svm = commands.add_parser("svm", help="the TF-IDF linear SVM baseline on a split")
    svm.add_argument("--split", required=True, metavar="SPLIT_DIR")
    svm.add_argument("--out", default="reports/content_svm.json")
    args = parser.parse_args(argv)
    if args.command == "holdout":
        print(json.dumps({"out": args.out, "rows": write_holdout(args.tweeteval, args.out)}))
        return 0
    report = linear_svm(args.split)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "label_distribution_test"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
