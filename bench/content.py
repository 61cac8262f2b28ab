"""Content-model benchmark: export-path encode throughput vs a plain torch loop, and training time per epoch.

Reads:  a content model directory (--model) and texts: a Parquet file/dir with a ``text`` column
        (--parquet, e.g. the posts table) or a TweetEval text file (--texts)
Writes: reports/content.json (--out)

* export path: ``embeddings.content_encoder.encode_batches`` over pandas batches, the function the Spark
  job (`nearline export content`) runs per partition via mapInPandas (Spark's own overhead excluded);
* plain loop: the same model and features, batches in input order with no length sorting, one
  ``model(batch)`` per batch, as a straightforward torch script would do;
* ratio = export posts/s / plain posts/s (issue target >= 0.85); posts/s per core = posts/s / torch threads;
* training seconds per epoch from the model's metrics.json (history), with CPU seconds where recorded.
On a CUDA machine the same encode is also timed on the GPU (absolute posts/s).

Usage: python bench/content.py --model store/content_tweeteval --texts ../shared/data/tweeteval_emoji/val_text.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

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
        raise ValueError("no texts to encode")
    return texts


def _plain_loop(model_dir: str, texts: list[str], batch_size: int, device: str) -> np.ndarray:
    from embeddings.content_encoder import featurize, iterate_batches, load_content_model

    model = load_content_model(model_dir, device)
    features = featurize(texts, model.vocab, model.config)
    out = []
    with torch.no_grad():
        for _, batch in iterate_batches(features, batch_size):
            out.append(model(batch.to(model.device))["embedding"].cpu().numpy())
    return np.concatenate(out)


def _export_path(model_dir: str, texts: list[str], batch_size: int, device: str) -> np.ndarray:
    from embeddings.content_encoder import encode_batches

    frame = pd.DataFrame({"post_id": np.arange(len(texts), dtype=np.int64), "text": texts})
    arrow_batch = 10_000  # Spark's default spark.sql.execution.arrow.maxRecordsPerBatch
    frames = (frame.iloc[i: i + arrow_batch] for i in range(0, len(frame), arrow_batch))
    return np.stack(pd.concat(list(encode_batches(model_dir, frames, batch_size, device)))["vector"].to_list())


def _time(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="content model directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--parquet", help="Parquet with a text column (e.g. <data>/posts)")
    source.add_argument("--texts", help="one text per line")
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of N (the machine is shared)")
    parser.add_argument("--out", default="reports/content.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    texts = _load_texts(args)
    report: dict = {"model": args.model, "posts": len(texts), "threads": args.threads,
                    "batch_size": args.batch_size, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average": os.getloadavg()}
    plain_s, plain = _time(lambda: _plain_loop(args.model, texts, args.batch_size, "cpu"), args.repeats)
    export_s, exported = _time(lambda: _export_path(args.model, texts, args.batch_size, "cpu"), args.repeats)
    np.testing.assert_allclose(exported, plain, atol=1e-4)  # same vectors, only the schedule differs
    report["cpu"] = {
        "plain_loop_posts_per_s": len(texts) / plain_s,
        "export_posts_per_s": len(texts) / export_s,
        "ratio_export_to_plain": plain_s / export_s,
        "export_posts_per_s_per_core": len(texts) / export_s / args.threads,
    }
    if torch.cuda.is_available():
        gpu_plain_s, _ = _time(lambda: _plain_loop(args.model, texts, args.batch_size, "cuda"), args.repeats)
        gpu_export_s, _ = _time(lambda: _export_path(args.model, texts, args.batch_size, "cuda"), args.repeats)
        report["gpu"] = {"device": torch.cuda.get_device_name(0),
                         "plain_loop_posts_per_s": len(texts) / gpu_plain_s,
                         "export_posts_per_s": len(texts) / gpu_export_s}
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
    cpu = report["cpu"]
    print(f"export {cpu['export_posts_per_s']:,.0f} posts/s vs plain {cpu['plain_loop_posts_per_s']:,.0f} "
          f"(ratio {cpu['ratio_export_to_plain']:.2f}); {cpu['export_posts_per_s_per_core']:,.0f} posts/s/core "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
