"""Content-model encode benchmark: the export path from raw text against plain torch on ready batches.

Reads:  a content model directory (--model) and texts: a Parquet file/dir with a ``text`` column
        (--parquet, e.g. the posts table) or a text file, one per line (--texts)
Writes: reports/content.json (--out)

* plain torch (the model-only rate): ``model(batch)`` over batches featurised beforehand (not timed), in
  input order, as a torch script handed ready tensors would run;
* export path: ``embeddings.content_encoder.encode_batches`` over pandas batches from raw text, the
  function the Spark job (`nearline export content`) runs per partition via mapInPandas (Spark's own
  overhead excluded): featurisation, length-sorted batches, forward;
* featurise: ``TextFeaturizer`` alone (posts/s), the part the export path adds;
* ratio = export posts/s / plain posts/s (issue target >= 0.85 on CPU, >= 0.5 on a GPU);
* training seconds per epoch from the model's metrics.json (history), with CPU seconds where recorded.

The two paths are timed alternately, best of --repeats each, so a busy neighbour on a shared machine
slows both alike; the process CPU seconds of each run are recorded too (``*_cpu_*``): with one torch
thread they measure the work itself, whatever else the machine is doing. The vectors of both paths
must agree (checked).

Usage: python -m bench.content --model store/content_tweeteval --texts ../shared/data/tweeteval_emoji/val_text.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch


def _load_texts(args: argparse.Namespace) -> list[str]:
    if args.parquet:
        import pyarrow.parquet as pq

        texts = pq.read_table(args.parquet, columns=["text"]).column("text").to_pylist()
    else:
        with open(args.texts, encoding="utf-8", errors="replace") as f:
            texts = f.read().split("\n")
    texts = [t or "" for t in texts][: args.limit]
    if not texts:
        raise ValueError(f"no texts to encode in {args.parquet or args.texts}")
    return texts


def _plain_torch(model, batches: list) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(b.to(model.device))["embedding"].float().cpu().numpy() for b in batches])

    return run


def _export_path(model_dir: str, texts: list[str], batch_size: int, device: str) -> Callable[[], np.ndarray]:
    from embeddings.content_encoder import encode_batches

    frame = pd.DataFrame({"post_id": np.arange(len(texts), dtype=np.int64), "text": texts})
    arrow_batch = 10_000  # Spark's default spark.sql.execution.arrow.maxRecordsPerBatch

    def run() -> np.ndarray:
        frames = (frame.iloc[i: i + arrow_batch] for i in range(0, len(frame), arrow_batch))
        out = pd.concat(list(encode_batches(model_dir, frames, batch_size, device)))
        return np.stack(out["vector"].to_list())

    return run


def _alternate(first: Callable[[], np.ndarray], second: Callable[[], np.ndarray], repeats: int
               ) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """Best wall and best CPU seconds of each function, run alternately, and their last results."""
    wall, cpu = [float("inf")] * 2, [float("inf")] * 2
    results: list[np.ndarray] = [np.zeros(0), np.zeros(0)]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            started, cpu_started = time.perf_counter(), time.process_time()
            results[i] = fn()
            wall[i] = min(wall[i], time.perf_counter() - started)
            cpu[i] = min(cpu[i], time.process_time() - cpu_started)
    return wall, cpu, results[0], results[1]


def _measure(model_dir: str, texts: list[str], batch_size: int, device: str, repeats: int) -> dict:
    from embeddings.content_encoder import TextFeaturizer, iterate_batches, load_content_model

    model = load_content_model(model_dir, device)
    started, cpu_started = time.perf_counter(), time.process_time()
    features = TextFeaturizer(model.vocab, model.config)(texts)  # a fresh memo: the cold-start rate
    featurize_s, featurize_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    batches = [batch for _, batch in iterate_batches(features, batch_size)]
    (plain_s, export_s), (plain_cpu_s, export_cpu_s), plain, exported = _alternate(
        _plain_torch(model, batches), _export_path(model_dir, texts, batch_size, device), repeats)
    # Same vectors, only the schedule differs (bf16/TF32 on a GPU allow a little more).
    np.testing.assert_allclose(exported, plain, atol=1e-4 if device == "cpu" else 2e-2)
    n = len(texts)
    return {"plain_torch_posts_per_s": n / plain_s, "export_posts_per_s": n / export_s,
            "ratio_export_to_plain": plain_s / export_s, "featurize_posts_per_s": n / featurize_s,
            "plain_torch_posts_per_cpu_s": n / plain_cpu_s, "export_posts_per_cpu_s": n / export_cpu_s,
            "ratio_export_to_plain_cpu_time": plain_cpu_s / export_cpu_s,
            "featurize_posts_per_cpu_s": n / featurize_cpu_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="content model directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--parquet", help="Parquet with a text column (e.g. <data>/posts)")
    source.add_argument("--texts", help="one text per line")
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="best of N, alternating (the machine is shared)")
    parser.add_argument("--out", default="reports/content.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    texts = _load_texts(args)
    report: dict = {"model": args.model, "texts": args.parquet or args.texts, "posts": len(texts),
                    "threads": args.threads, "batch_size": args.batch_size, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_before": os.getloadavg()}
    report["cpu"] = _measure(args.model, texts, args.batch_size, "cpu", args.repeats)
    report["cpu"]["export_posts_per_s_per_core"] = report["cpu"]["export_posts_per_s"] / args.threads
    if torch.cuda.is_available():
        report["gpu"] = {"device": torch.cuda.get_device_name(0),
                         **_measure(args.model, texts, args.batch_size, "cuda", args.repeats)}
    report["load_average_after"] = os.getloadavg()
    metrics_path = os.path.join(args.model, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
        epochs = [h["epoch_s"] for h in metrics.get("history", [])]
        report["training"] = {"epochs_run": len(epochs), "epoch_s_mean": float(np.mean(epochs)) if epochs else None,
                              "train_s": metrics.get("train_s"), "cpu_s": metrics.get("cpu_s"),
                              "cpu_s_per_epoch_per_thread": (metrics["cpu_s"] / metrics.get("threads", 1) / len(epochs))
                              if epochs and metrics.get("cpu_s") else None,
                              "num_train": metrics.get("num_train")}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    for device in ("cpu", "gpu"):
        if device in report:
            r = report[device]
            print(f"{device}: export {r['export_posts_per_s']:,.0f} posts/s vs plain torch "
                  f"{r['plain_torch_posts_per_s']:,.0f} (ratio {r['ratio_export_to_plain']:.2f}; by CPU time "
                  f"{r['ratio_export_to_plain_cpu_time']:.2f}); featurise alone {r['featurize_posts_per_s']:,.0f} "
                  f"posts/s ({r['featurize_posts_per_cpu_s']:,.0f} per CPU second)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
