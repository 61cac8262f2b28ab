"""Offline candidate evaluation: how much of what users engage with next do the sources retrieve?

Reads:  the serving versions in the store (built from config.data.path, the training snapshot),
        config.data.path (seen posts, popularity), --holdout-data (a later snapshot of the same world)
Writes: --out JSON (default reports/candidates.json)

Time-based split: held-out engagements are the likes/replies/reposts in the later
snapshot that happened after the newest event of the training snapshot. For each
user with held-out engagements, recall@K is the share of those posts among the
user's K candidates; it is reported per source (content, collaborative), combined,
and for two baselines on the same users: the K most engaged posts of the training
period, and K random posts (both excluding posts the user has seen). "eligible"
counts only held-out posts that existed in the training snapshot: posts created
later cannot be in an index built before them, whatever the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.config import NearlineConfig
from serving.api import CandidateQuery
from serving.index_side import load_index_bundle
from serving.lineage import INDEX_POINTERS, read_pointers
from storage.store import Store

POSITIVE_EVENTS = ["like", "reply", "repost"]


def _positives(data_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = ds.dataset(f"{data_path}/engagements").to_table(
        columns=["user_id", "post_id", "ts"], filter=pc.field("event").isin(POSITIVE_EVENTS))
    ts = table.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return table.column("user_id").to_numpy(), table.column("post_id").to_numpy(), ts


def held_out_engagements(train_path: str, holdout_path: str) -> dict[int, set[int]]:
    """user -> posts engaged with in the holdout snapshot after the training snapshot's newest event."""
    _, _, train_ts = _positives(train_path)
    if len(train_ts) == 0:
        raise ValueError(f"no engagements in the training snapshot {train_path}")
    users, posts, ts = _positives(holdout_path)
    later = ts > train_ts.max()
    held: dict[int, set[int]] = {}
    for user, post in zip(users[later].tolist(), posts[later].tolist(), strict=True):
        held.setdefault(user, set()).add(post)
    if not held:
        raise ValueError(f"{holdout_path} has no engagements after the training snapshot's newest event: "
                         "expected a later snapshot of the same world")
    return held


def recall(candidates: list[int], truth: set[int]) -> float:
    return len(truth.intersection(candidates)) / len(truth) if truth else 0.0


def evaluate(config: NearlineConfig, holdout_path: str, k: int, max_users: int, seed: int = 0) -> dict[str, Any]:
    store = Store(config.store.root)
    bundle = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config.serve, config.indexes)
    held = held_out_engagements(config.data.path, holdout_path)
    rng = np.random.default_rng(seed)
    users = sorted(u for u in held if bundle.is_known_user(u))
    if len(users) > max_users:
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    train_users, train_posts, _ = _positives(config.data.path)
    known_posts = np.unique(ds.dataset(f"{config.data.path}/posts").to_table(columns=["post_id"])
                            .column("post_id").to_numpy())
    known_set = set(known_posts.tolist())
    post_ids, counts = np.unique(train_posts, return_counts=True)
    popular = post_ids[np.argsort(-counts, kind="stable")]

    sources = {"content": ("content",), "collaborative": ("collaborative",), "combined": ("content", "collaborative")}
    per_source: dict[str, list[float]] = {name: [] for name in (*sources, "popularity", "random")}
    eligible: dict[str, list[float]] = {name: [] for name in per_source}
    batch = 64
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        results = {name: bundle.candidates([CandidateQuery(u, k, srcs) for u in chunk])
                   for name, srcs in sources.items()}
        for i, user in enumerate(chunk):
            truth = held[user]
            truth_known = truth & known_set
            seen = set(bundle.lists.seen.get(user).tolist())
            ranked = {name: [c["post_id"] for c in results[name][i]] for name in sources}
            ranked["popularity"] = [p for p in popular[: k + len(seen)].tolist() if p not in seen][:k]
            pool = known_posts[~np.isin(known_posts, list(seen))]
            ranked["random"] = rng.choice(pool, size=min(k, len(pool)), replace=False).tolist()
            for name, candidates in ranked.items():
                per_source[name].append(recall(candidates, truth))
                if truth_known:
                    eligible[name].append(recall(candidates, truth_known))
    return {
        "k": k,
        "users": len(users),
        "held_out_engagements": int(sum(len(held[u]) for u in users)),
        "train_positive_engagements": int(len(train_users)),
        "recall": {name: round(float(np.mean(v)), 4) for name, v in per_source.items()},
        "recall_eligible": {name: round(float(np.mean(v)), 4) if v else None for name, v in eligible.items()},
        "versions": bundle.versions,
    }


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    report = evaluate(config, args.holdout_data, args.k, args.max_users)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"recall@{args.k} over {report['users']:,} users ({report['held_out_engagements']:,} held-out engagements)")
    print(f"{'source':<15} {'recall':>8} {'eligible':>9}")
    for name, value in report["recall"].items():
        eligible = report["recall_eligible"][name]
        print(f"{name:<15} {value:>8.4f} {eligible if eligible is None else f'{eligible:.4f}':>9}")
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="offline evaluation")
    kinds = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    candidates = kinds.add_parser("candidates", help="recall@K of candidate sources on a later snapshot")
    candidates.add_argument("--k", type=int, default=100, help="candidates per user")
    candidates.add_argument("--holdout-data", required=True, help="a later snapshot of the dataset")
    candidates.add_argument("--max-users", type=int, default=2000)
    candidates.add_argument("--out", default="reports/candidates.json")
    candidates.set_defaults(handler=_handle)
