"""Offline candidate evaluation: how much of what users engage with next do the sources retrieve?

Reads:  the index side of the serving set CURRENT in config.store.root (its features/post manifest
        holds the snapshot time) and --holdout-data (a later snapshot of the same world)
Writes: --out JSON (default reports/candidates.json)

The same time split, users, lists and metrics as ``nearline eval recommend`` (evaluation/recommend.py)
without the ranker: recall@k (and NDCG@k, MRR@k) at each k of the fused candidates ("combined", in
their own order) against every enabled source alone and the popularity and random baselines.
"eligible" recall counts only held-out posts that existed at the snapshot: posts created later cannot
be in an index built before them, whatever the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.metrics import MetricTable
from evaluation.recommend import (
    BASELINES,
    BATCH_USERS,
    DEFAULT_KS,
    comparison_lists,
    evaluation_period,
    iso,
    known_users,
    popularity_order,
    sample_users,
)
from nearline.config import NearlineConfig
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
        "period": {"start": iso(period.start_us),
                   "end": None if period.end_us is None else iso(period.end_us)},
        "sources": list(sources),
        "fusion": "learned hit rates" if index.sources.hit_rates is not None else "reciprocal-rank (k=60)",
        "metrics": {name: metrics[name] for name in ("combined", *sources, *BASELINES)},
        "versions": index.versions,
    }
