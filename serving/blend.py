"""The last step of recommend: a learned blend of the ranker's score with what retrieval knows.

Why: the ranker is trained on impressions, so it predicts engagement *given* that a post is shown. What
a feed needs is the chance that the user engages with the post in the next period, which also depends
on whether the post will still be seen: mostly its age (engagement falls off within a day of posting)
and the sources that found it (a followed author's new post is shown far more often than a trending one
from a stranger). The fused candidate order carries that through validated per-source hit rates, and
the ranker alone ignores it (``reports/recommend.json``: ranked by the ranker alone, NDCG@50 was below
the candidates' own order).

Whether the user cares about a post's subject decides most engagement, and the ranker's inputs hardly
show it (its score told posts of a user's strong topics from the rest with AUC 0.54 on the generated
data). So the blend also reads topic affinities: the candidate's topic mixture (features/post
``topics``, embeddings/topics.py) against the mean mixture of the posts the user has seen, the posts
they engaged with, and the posts of the accounts they follow (one profile each: seen posts are many and
broad, engaged ones few and sharp, followees say what the user chose to read).

The blend is a logistic regression over BLEND_FEATURES, fitted on a *validation* period by
``nearline eval recommend --fit-fusion`` (the same run that fits the fusion rates, with candidates
fused by the new rates) and served from ``serve.recommend_blend``. Its score is a log-odds less the fitted
intercept (only the order is used, so the intercept is not kept), strictly
increasing in the ranker's score when the fitted ranker weight is positive; ties in it (rare: a sum of
floats) go to the ranker's score, then to the candidate order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.api import SOURCES
from serving.arrays import PostCatalog, UserLists
from serving.config import BLEND_FEATURES, RecommendBlendConfig

MICROS_PER_HOUR = 3_600_000_000
MAX_AGE_HOURS = 168.0  # older posts are all "old": beyond a week the age says nothing more
SCORE_FLOOR = 1e-9  # log of a zero score (an unscored post) stays finite


@dataclass(frozen=True)
class RecommendBlend:
    """Standardised logistic-regression weights over BLEND_FEATURES.

    Attributes:
        weights, mean, scale: float64 (F,), F = len(BLEND_FEATURES); score = ((x - mean) / scale) @ weights.
    """

    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_config(cls, config: RecommendBlendConfig | None) -> RecommendBlend | None:
        """The blend serve.recommend_blend holds (validated there), or None when it is unset."""
        if config is None:
            return None
        return cls(*(np.asarray(values, dtype=np.float64) for values in (config.weights, config.mean, config.scale)))

    def to_config(self) -> RecommendBlendConfig:
        return RecommendBlendConfig(
            features=list(BLEND_FEATURES),
            **{name: [float(f"{v:.6g}") for v in getattr(self, name)] for name in ("weights", "mean", "scale")},
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Log-odds of engagement in the next period less the intercept: float64 (C,) from features float64 (C, F)."""
        return ((features - self.mean) / self.scale) @ self.weights


def topic_profiles(user_id: int, posts: PostCatalog, lists: UserLists) -> np.ndarray:
    """float64 (3, K): the user's mean topic mixture over seen posts, engaged posts and followed accounts.

    A profile with nothing to average (no history, no followees) is all zeros, so its affinities are 0.
    """
    followees = lists.followees.get(user_id)
    found, rows = posts.author_topics.rows(followees)
    parts = (
        posts.topic_rows(lists.seen.get(user_id)),
        posts.topic_rows(lists.engaged.get(user_id)),
        posts.author_topics.vectors[rows[found]] if len(followees) else np.zeros((0, posts.topics.shape[1])),
    )
    return np.stack([p.mean(axis=0) if len(p) else np.zeros(posts.topics.shape[1]) for p in parts])


def blend_features(
    candidates: Sequence[Mapping[str, Any]],
    rank_score: np.ndarray,
    posts: PostCatalog,
    lists: UserLists,
    user_id: int,
) -> np.ndarray:
    """BLEND_FEATURES of one user's candidates: float64 (C, F).

    Args:
        candidates: IndexBundle.candidates dicts (post_id, fused_score, scores by source).
        rank_score: float (C,) the ranker's raw weighted score, -inf where it could not score.
        posts: the index side's catalog (creation times, engagement counts and topics as of its snapshot).
        lists: the index side's user lists (seen, engaged, followees) of the same snapshot.
        user_id: whose candidates these are.
    """
    post_ids = np.fromiter((c["post_id"] for c in candidates), dtype=np.int64, count=len(candidates))
    rows = np.minimum(np.searchsorted(posts.post_ids, post_ids), len(posts.post_ids) - 1)
    age_hours = (posts.snapshot_us - posts.created_at_us[rows]) / MICROS_PER_HOUR
    fused = np.fromiter((c["fused_score"] for c in candidates), dtype=np.float64, count=len(candidates))
    membership = np.asarray(
        [[source in c["scores"] for source in SOURCES] for c in candidates], dtype=np.float64
    ).reshape(len(candidates), len(SOURCES))
    finite = np.where(np.isfinite(rank_score), rank_score, SCORE_FLOOR)
    return np.column_stack(
        [
            np.log(np.maximum(finite, SCORE_FLOOR)),
            np.log(np.maximum(fused, SCORE_FLOOR)),
            np.clip(age_hours, 0.0, MAX_AGE_HOURS),
            np.log1p(posts.engagements_so_far[rows]),
            membership,
            posts.topic_rows(post_ids) @ topic_profiles(user_id, posts, lists).T,
        ]
    )
