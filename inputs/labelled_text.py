"""Labelled-text inputs: TweetEval-format text/label files and labelled JSONL rows (probe, fine-tune).

Plain readers over local files (no Spark): the content model's training and evaluation inputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

TWEETEVAL_SPLITS = ("train", "val", "test")


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


def validation_split(encoded: dict[str, tuple[list[str], np.ndarray]], seed: int
               ) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """(train, val): the file's val split, or 10% of train held out when it has none."""
    train_texts, train_labels = encoded["train"]
    if "val" in encoded:
        return encoded["train"], encoded["val"]
    order = np.random.default_rng(seed).permutation(len(train_texts))
    cut = max(1, len(order) // 10)
    pick = lambda idx: ([train_texts[i] for i in idx], train_labels[idx])  # noqa: E731
    return pick(order[cut:]), pick(order[:cut])
