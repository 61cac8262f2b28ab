"""Offline candidate evaluation: how much of what users engage with next do the sources retrieve?

Reads:  the index side of the serving set CURRENT in config.store.root (its features/post manifest
        holds the snapshot time) and --holdout-data (a later snapshot of the same world)
Writes: --out JSON (default reports/candidates.json)

The same time split, users, lists and metrics as ``nearline eval recommend`` (jobs/eval_recommend.py)
without the ranker: recall@k (and NDCG@k, MRR@k) at each k of the fused candidates ("combined", in
their own order) against every enabled source alone and the popularity and random baselines.
"eligible" recall counts only held-out posts that existed at the snapshot: posts created later cannot
be in an index built before them, whatever the model.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jobs import eval_recommend
from jobs.cli import positive_int
from jobs.config import NearlineConfig
from jobs.eval_recommend import (
    BASELINES,
    BATCH_USERS,
    DEFAULT_KS,
    MetricTable,
    comparison_lists,
    evaluation_period,
    known_users,
    popularity_order,
    sample_users,
    with_fusion_file,
)
from serving.api import CandidateQuery
from serving.index_side import load_index_bundle
from serving.lineage import INDEX_POINTERS, read_pointers
from storage.store import Store


def evaluate(
    config: NearlineConfig,
    holdout_path: str,
    ks: Sequence[int] = DEFAULT_KS,
    max_users: int = 2000,
    period_hours: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall and friends of the combined candidates, each source and the baselines at each k."""
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1 or ks[-1] > config.serve.max_k:
        raise ValueError(f"every k must be between 1 and serve.max_k={config.serve.max_k}, got {list(ks)}")
    store = Store(config.store.root)
    index = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config.serve, config.indexes)
    period = evaluation_period(holdout_path, index.posts.snapshot_us, period_hours)
    rng = np.random.default_rng(seed)
    users = sample_users(known_users(index, period, config.store.root), max_users, rng)
    sources = index.sources.enabled
    table = MetricTable(("candidates", *sources, *BASELINES), ks)
    popular = popularity_order(index)
    for start in range(0, len(users), BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        fused = index.candidates([CandidateQuery(u, ks[-1]) for u in batch])
        for user, lists in zip(batch, comparison_lists(index, batch, fused, ks[-1], popular, rng), strict=True):
            truth = period.truth[user]
            table.add(lists, truth, truth[np.isin(truth, index.posts.post_ids)])
    metrics = table.report()
    metrics["combined"] = metrics.pop("candidates")
    return {
        "ks": list(ks),
        "users": len(users),
        "held_out_engagements": int(sum(len(period.truth[u]) for u in users)),
        "period": {"start": eval_recommend.iso(period.start_us),
                   "end": None if period.end_us is None else eval_recommend.iso(period.end_us)},
        "sources": list(sources),
        "fusion": "learned hit rates" if index.sources.hit_rates is not None else "reciprocal-rank (k=60)",
        "metrics": {name: metrics[name] for name in ("combined", *sources, *BASELINES)},
        "versions": index.versions,
    }


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    config = with_fusion_file(config, args.fusion)
    ks = [int(k) for k in args.ks.split(",")]
    report = {"dataset": args.name, **evaluate(config, args.holdout_data, ks, args.max_users, args.period_hours)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"candidate recall over {report['users']:,} users ({report['held_out_engagements']:,} held-out posts), "
          f"fusion: {report['fusion']}")
    print(f"{'source':<15}" + "".join(f"{f'recall@{k}':>11}{'eligible':>9}" for k in report["ks"]))
    for name, values in report["metrics"].items():
        print(f"{name:<15}" + "".join(
            f"{values[f'recall@{k}']:>11.4f}{values.get(f'eligible_recall@{k}', float('nan')):>9.4f}"
            for k in report["ks"]))
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval")
    kinds = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    candidates = kinds.add_parser("candidates", help="recall@K of candidate sources on a later snapshot")
    candidates.add_argument("--ks", "--k", default=",".join(map(str, DEFAULT_KS)), help="comma list of cut-offs")
    candidates.add_argument("--holdout-data", required=True, help="a later snapshot of the dataset")
    candidates.add_argument("--max-users", type=positive_int, default=2000)
    candidates.add_argument("--period-hours", type=float, help="evaluate this long after the snapshot (default: all)")
    candidates.add_argument("--fusion", help="a `eval recommend --fit-fusion` file (replaces serve.fusion_hit_rates)")
    candidates.add_argument("--name", default="dataset", help="label stored in the report")
    candidates.add_argument("--out", default="reports/candidates.json")
    candidates.set_defaults(handler=_handle)
    eval_recommend.add_commands(kinds)
