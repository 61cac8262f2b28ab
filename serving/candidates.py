"""Candidate sources over plain arrays, and the fusion that merges every source into one list.

Sources (``serving.api.SOURCES``; which ones run is ``serve.candidate_sources``):

- content and collaborative search FAISS indexes, so they live with the searchers in
  ``serving/index_side.py``; content keeps to posts created in the last ``serve.content_window_hours``
  (engagement falls off within a day or two of posting, so an old post that matches a user's
  interests is still a poor bet);
- trending (here): posts created in the last ``serve.trending_window_hours`` before the snapshot, the
  most positively engaged first. It needs no history, so a user we know nothing about still gets a feed;
- followed (here): the newest posts, from the last ``serve.followed_window_hours``, of the accounts the
  user follows.

Times are relative to the serving set's snapshot (``PostCatalog.snapshot_us``), not the wall clock: a
serving set answers as of the data it was built from, and an offline evaluation replays it exactly.

Fusion: each source ranks its own posts and their scores are not comparable (cosines, summed
similarities, engagement counts, ages), so the merge uses ranks only. A post scores the sum over the
sources that returned it of a weight for its rank there, and the list is sorted by that sum (CombSUM).
The weight is the source's learned hit rate at that rank (``serve.fusion_hit_rates``): the share of
a validation period's users for whom the post at that rank of that source was engaged with in the
period after the snapshot, in log2 rank buckets, fitted by ``nearline eval recommend --fit-fusion``
(ProbFuse, Lillis et al., SIGIR 2006, with log-spaced segments). Ordering by the expected number of
hits is what makes the merged list at least as good as its best source when the sources differ a lot
in quality, where an even interleave (or plain reciprocal-rank fusion) gives weak sources as many slots
as strong ones. Without learned rates, every source weighs ``1 / (60 + rank)``: reciprocal-rank fusion
(Cormack et al., SIGIR 2009), which needs no training data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.api import SOURCES
from serving.arrays import IdLists, PostCatalog
from serving.config import ServeConfig

# Rank bucket b holds ranks 2**b .. 2**(b+1) - 1 (1-based); 12 buckets reach rank 4,095, beyond any k.
NUM_RANK_BUCKETS = 12
RRF_K = 60  # reciprocal-rank fusion's constant, as published
MICROS_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class SourceSettings:
    """Which sources run, their time windows, and the fusion weights (see the module docstring).

    Attributes:
        enabled: source names, a subset of SOURCES.
        trending_window_hours: how far back before the snapshot a trending post may have been created.
        followed_window_hours: the same for the posts of followed accounts.
        content_window_hours: the same for content-index results.
        hit_rates: source -> NUM_RANK_BUCKETS learned hit rates (non-increasing), or None for
            reciprocal-rank fusion.
    """

    enabled: tuple[str, ...]
    trending_window_hours: float
    followed_window_hours: float
    content_window_hours: float
    hit_rates: Mapping[str, tuple[float, ...]] | None

    def __post_init__(self) -> None:
        unknown = [name for name in self.enabled if name not in SOURCES]
        if unknown or not self.enabled:
            raise ValueError(f"candidate sources must be a non-empty subset of {list(SOURCES)}, got {list(self.enabled)}")
        for name, hours in (
            ("trending", self.trending_window_hours),
            ("followed", self.followed_window_hours),
            ("content", self.content_window_hours),
        ):
            if not hours > 0:
                raise ValueError(f"{name}_window_hours must be positive, got {hours}")
        if self.hit_rates is None:
            return
        missing = [name for name in self.enabled if name not in self.hit_rates]
        if missing:
            raise ValueError(
                f"fusion_hit_rates has no rates for enabled source(s) {missing}; it covers {sorted(self.hit_rates)}"
            )
        for name, rates in self.hit_rates.items():
            values = np.asarray(rates, dtype=np.float64)
            if values.shape != (NUM_RANK_BUCKETS,) or not np.isfinite(values).all() or (values < 0).any():
                raise ValueError(
                    f"fusion_hit_rates[{name!r}] must hold {NUM_RANK_BUCKETS} non-negative numbers (one per log2 "
                    f"rank bucket), got {list(rates)}"
                )

    @classmethod
    def from_config(cls, config: ServeConfig) -> SourceSettings:
        rates = config.fusion_hit_rates
        return cls(
            enabled=tuple(config.candidate_sources),
            trending_window_hours=config.trending_window_hours,
            followed_window_hours=config.followed_window_hours,
            content_window_hours=config.content_window_hours,
            hit_rates=None if rates is None else {name: tuple(values) for name, values in rates.items()},
        )


def rank_buckets(num_ranks: int) -> np.ndarray:
    """The log2 bucket of ranks 1..num_ranks: int64 (num_ranks,), capped at NUM_RANK_BUCKETS - 1."""
    ranks = np.arange(1, num_ranks + 1)
    return np.minimum(np.floor(np.log2(ranks)).astype(np.int64), NUM_RANK_BUCKETS - 1)


def rank_weights(num_ranks: int, hit_rates: Sequence[float] | None) -> np.ndarray:
    """The fusion weight of ranks 1..num_ranks of one source: float64 (num_ranks,).

    Learned rates are a step function of the log2 rank bucket, as fitted (posts of one source in one
    bucket tie and keep their order through fuse's tie-break); without rates, 1 / (RRF_K + rank).
    """
    if hit_rates is None:
        return 1.0 / (RRF_K + np.arange(1, num_ranks + 1, dtype=np.float64))
    return np.asarray(hit_rates, dtype=np.float64)[rank_buckets(num_ranks)]


def fuse(
    per_source: Mapping[str, tuple[np.ndarray, np.ndarray]],
    k: int,
    hit_rates: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """Merge per-source ranked lists into the k posts with the highest summed rank weight.

    Args:
        per_source: source name -> (post ids int64 (n,), the source's scores float (n,)), best first,
            each id at most once per source.
        k: candidates wanted.
        hit_rates: learned per-source rates (see rank_weights), or None for reciprocal-rank fusion.

    Returns:
        Up to k dicts {post_id, source, score, scores, fused_score}, best first: ``source`` is the
        source whose rank weighs most for the post (``score`` its score there), ``scores`` every
        returning source's score, ``fused_score`` the summed weight. Ties go to the post with the
        better rank in any source, then the smaller id, so the order never depends on dict order.
    """
    names = [name for name, (ids, _) in per_source.items() if len(ids)]
    if not names or k <= 0:
        return []
    ids = np.concatenate([np.asarray(per_source[n][0], dtype=np.int64) for n in names])
    scores = np.concatenate([np.asarray(per_source[n][1], dtype=np.float64) for n in names])
    weights = np.concatenate(
        [rank_weights(len(per_source[n][0]), None if hit_rates is None else hit_rates[n]) for n in names]
    )
    ranks = np.concatenate([np.arange(1, len(per_source[n][0]) + 1) for n in names])
    source = np.concatenate([np.full(len(per_source[n][0]), s) for s, n in enumerate(names)])
    unique, inverse = np.unique(ids, return_inverse=True)
    fused = np.bincount(inverse, weights=weights, minlength=len(unique))
    best_rank = np.full(len(unique), np.iinfo(np.int64).max)
    np.minimum.at(best_rank, inverse, ranks)
    # The entry that weighs most for each post (ties: the earlier source): sort entries by post, weight.
    by_post = np.lexsort((source, -weights, inverse))
    first = by_post[np.r_[True, inverse[by_post][1:] != inverse[by_post][:-1]]]
    top = np.lexsort((unique, best_rank, -fused))[:k]
    # Every returning source's score per picked post, built source by source: the membership count is
    # small (a few per post), so this beats a dict per post over every source.
    position = np.full(len(unique), -1)
    position[top] = np.arange(len(top))
    per_post: list[dict[str, float]] = [{} for _ in range(len(top))]
    picked = position[inverse] >= 0
    for row, s, score in zip(
        position[inverse][picked].tolist(), source[picked].tolist(), scores[picked].tolist(), strict=True
    ):
        per_post[row][names[s]] = score
    entries = first[top]
    return [
        {"post_id": post_id, "source": names[s], "score": score, "scores": by_source, "fused_score": weight}
        for post_id, s, score, by_source, weight in zip(
            unique[top].tolist(),
            source[entries].tolist(),
            scores[entries].tolist(),
            per_post,
            fused[top].tolist(),
            strict=True,
        )
    ]


def top_unseen(ids: np.ndarray, scores: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k entries of a ranked list that are not in ``seen``.

    Args:
        ids: int64 (n,) best first; scores: float (n,) aligned; seen: int64 (S,); k: entries wanted.

    Returns:
        (ids int64 (<=k,), scores float32 (<=k,)).
    """
    # At most len(seen) entries can be dropped, so the head of that length holds the answer.
    head = slice(0, k + len(seen))
    keep = ~np.isin(ids[head], seen)
    return ids[head][keep][:k], np.asarray(scores[head][keep][:k], dtype=np.float32)


def posts_older_than(posts: PostCatalog, window_hours: float) -> np.ndarray:
    """Posts created before the window that ends at the snapshot: int64 (O,), to exclude from a search."""
    start_us = posts.snapshot_us - int(window_hours * MICROS_PER_HOUR)
    return posts.post_ids[posts.created_at_us <= start_us]


def trending_posts(posts: PostCatalog, window_hours: float) -> tuple[np.ndarray, np.ndarray]:
    """Posts created in the window before the snapshot, most positive engagements first.

    Args:
        posts: the catalog (engagement counts as of its snapshot).
        window_hours: how far back before the snapshot a post may have been created.

    Returns:
        (post ids int64 (T,), engagement counts float32 (T,)), ties broken by the newer post, then
        the larger id.
    """
    start_us = posts.snapshot_us - int(window_hours * MICROS_PER_HOUR)
    rows = np.flatnonzero((posts.created_at_us > start_us) & (posts.created_at_us <= posts.snapshot_us))
    order = np.lexsort((-posts.post_ids[rows], -posts.created_at_us[rows], -posts.engagements_so_far[rows]))
    rows = rows[order]
    return posts.post_ids[rows], posts.engagements_so_far[rows].astype(np.float32)


def gather(lists: IdLists, keys: np.ndarray) -> np.ndarray:
    """The concatenated lists of ``keys`` (in key order; missing keys give nothing): int64 (V,)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(lists.keys) == 0 or len(keys) == 0:
        return np.zeros(0, np.int64)
    pos = np.minimum(np.searchsorted(lists.keys, keys), len(lists.keys) - 1)
    pos = pos[lists.keys[pos] == keys]
    starts, lengths = lists.offsets[pos], lists.offsets[pos + 1] - lists.offsets[pos]
    # Positions start_j + 0 .. start_j + length_j - 1 for every list j, without a Python loop.
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return lists.values[np.repeat(starts, lengths) + within]


def followed_posts(
    posts: PostCatalog, followees: np.ndarray, seen: np.ndarray, window_hours: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The newest posts of followed accounts created in the window before the snapshot, unseen ones only.

    Args:
        posts: the catalog (``author_posts`` holds each author's newest posts).
        followees: int64 (F,) accounts the user follows.
        seen: int64 (S,) posts to leave out.
        window_hours: how far back before the snapshot a post may have been created.
        k: posts wanted.

    Returns:
        (post ids int64 (<=k,), scores float32 (<=k,)) newest first; the score is minus the post's age
        in hours at the snapshot, so higher is better as for every source.
    """
    candidates = gather(posts.author_posts, followees)
    if len(candidates) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    created = posts.created_at_us[np.searchsorted(posts.post_ids, candidates)]
    start_us = posts.snapshot_us - int(window_hours * MICROS_PER_HOUR)
    keep = (created > start_us) & (created <= posts.snapshot_us) & ~np.isin(candidates, seen)
    candidates, created = candidates[keep], created[keep]
    order = np.lexsort((-candidates, -created))[:k]
    age_hours = (posts.snapshot_us - created[order]) / MICROS_PER_HOUR
    return candidates[order], (-age_hours).astype(np.float32)
