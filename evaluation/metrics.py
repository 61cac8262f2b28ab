"""Ranking metrics as plain functions over id arrays: recall / NDCG / MRR at k, per-source hit rates,
paired bootstrap differences, and the per-user table the offline evaluations fill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.candidates import NUM_RANK_BUCKETS, rank_buckets


def ranking_metrics(ranked: np.ndarray, truth: np.ndarray, ks: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """recall@k, NDCG@k and MRR@k of one ranked list against the held-out posts.

    Args:
        ranked: int64 (n,) post ids, best first (n may be below k).
        truth: int64 (t,) held-out post ids, t >= 1.
        ks: cut-offs.

    Returns:
        k -> (recall, ndcg, mrr).
    """
    if len(truth) == 0:
        raise ValueError("ranking_metrics needs at least one held-out post")
    hits = np.isin(ranked[: max(ks)], truth).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    first = int(np.argmax(hits)) if hits.any() else None
    out = {}
    for k in ks:
        ideal = discounts[: min(len(truth), k)].sum()
        mrr = 1.0 / (first + 1) if first is not None and first < k else 0.0
        out[k] = (hits[:k].sum() / len(truth), float(hits[:k] @ discounts[: len(hits[:k])]) / ideal, mrr)
    return out


def fit_hit_rates(lists: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> list[float]:
    """One source's hit rate per log2 rank bucket over a validation period (serve.fusion_hit_rates).

    The raw rate of a bucket is the share of its (user, rank) places that held a held-out post; an
    isotonic (non-increasing) fit weighted by places smooths the sparse deep buckets, and buckets
    deeper than any list keep the last fitted rate.

    Args:
        lists: per user, the source's ranked post ids (int64).
        truths: per user, the held-out post ids (int64), aligned with lists.

    Returns:
        NUM_RANK_BUCKETS rates.
    """
    from sklearn.isotonic import IsotonicRegression

    hits = np.zeros(NUM_RANK_BUCKETS)
    places = np.zeros(NUM_RANK_BUCKETS)
    for ranked, truth in zip(lists, truths, strict=True):
        buckets = rank_buckets(len(ranked))
        np.add.at(hits, buckets, np.isin(ranked, truth))
        np.add.at(places, buckets, 1.0)
    observed = np.flatnonzero(places)
    if len(observed) == 0:
        return [0.0] * NUM_RANK_BUCKETS
    fitted = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(
        observed, hits[observed] / places[observed], sample_weight=places[observed]
    )
    rates = fitted.predict(np.arange(NUM_RANK_BUCKETS))  # clipped to the end values outside
    return [round(float(r), 6) for r in rates]


METRICS = ("recall", "ndcg", "mrr")


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean over users of a - b with a 95% paired bootstrap interval (users resampled with replacement)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": round(float(diff.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)]}


class MetricTable:
    """Per-user recall / NDCG / MRR per list and k (summed for the report), and eligible recall."""

    def __init__(self, names: Sequence[str], ks: Sequence[int]) -> None:
        self.ks = tuple(ks)
        self.sums = {name: np.zeros((len(ks), 3)) for name in names}
        self.per_user: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self.eligible = {name: np.zeros(len(ks)) for name in names}
        self.users = 0
        self.eligible_users = 0

    def add(self, lists: Mapping[str, np.ndarray], truth: np.ndarray, eligible: np.ndarray) -> None:
        self.users += 1
        self.eligible_users += bool(len(eligible))
        for name, ranked in lists.items():
            metrics = ranking_metrics(ranked, truth, self.ks)
            values = np.asarray([metrics[k] for k in self.ks])
            self.sums[name] += values
            self.per_user[name].append(values)
            if len(eligible):
                self.eligible[name] += [ranking_metrics(ranked, eligible, self.ks)[k][0] for k in self.ks]

    def user_values(self, name: str, metric: str, k: int) -> np.ndarray:
        """One metric at one k of one list, per user in the order added: float64 (users,)."""
        return np.asarray([row[self.ks.index(k), METRICS.index(metric)] for row in self.per_user[name]])

    def compare(self, a: str, b: str, metric: str, k: int) -> dict[str, Any]:
        return paired_difference(self.user_values(a, metric, k), self.user_values(b, metric, k))

    def report(self) -> dict[str, Any]:
        if self.users == 0:
            return {}
        out: dict[str, Any] = {}
        for name, sums in self.sums.items():
            means = sums / self.users
            out[name] = {
                f"{metric}@{k}": round(float(means[i, j]), 4)
                for j, metric in enumerate(METRICS)
                for i, k in enumerate(self.ks)
            }
            if self.eligible_users:
                out[name].update(
                    {
                        f"eligible_recall@{k}": round(float(self.eligible[name][i] / self.eligible_users), 4)
                        for i, k in enumerate(self.ks)
                    }
                )
        return out
