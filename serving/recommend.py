"""The recommend pipeline: candidates -> which to rank -> ranker scores -> (blend) -> top k.

Order: by the learned blend of the ranker's score with the candidates' retrieval features
(``blend_score``, serving/blend.py) when ``serve.recommend_blend`` is set, else by the ranker's
uncalibrated task-weighted score (``rank_score``). Never by the calibrated score (``score``, kept under
its old name): it is isotonic, a step function that gives whole ranges of model outputs one value, so
ordering by it made many candidates tie and fall back to retrieval order. Every item carries all three;
blend ties go to rank_score, and only posts the model scores identically keep their candidate order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.api import SOURCES, CandidateQuery, RankQuery
from serving.arrays import PostCatalog, UserLists
from serving.blend import RecommendBlend, blend_features
from serving.errors import RequestError
from serving.index_side import IndexBundle
from serving.ranker_side import RankerBundle


def select_top(
    candidates: Sequence[Mapping[str, Any]],
    scored: Mapping[str, np.ndarray],
    k: int,
    blend_score: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The k best candidates, each with its candidate source and retrieval score.

    Args:
        candidates: candidate dicts (post_id, source, score, ...), row-aligned with the scores.
        scored: RankerBundle.rank's result for them: "rank_score" and "score" float (C,).
        k: items wanted.
        blend_score: float (C,) the blend's score (the order), or None to order by rank_score.

    Returns:
        Up to k dicts {post_id, score (calibrated), rank_score, blend_score (None without a blend),
        source, retrieval_score}, best first; candidates the ranker could not score (-inf) are left out.
    """
    rank_score = np.asarray(scored["rank_score"])
    score = np.asarray(scored["score"])
    position = np.arange(len(rank_score))
    # Ties (the model cannot tell the posts apart) go to rank_score, then keep the candidate order.
    keys = (position, -rank_score) if blend_score is None else (position, -rank_score, -blend_score)
    order = np.lexsort(keys)
    order = order[np.isfinite(rank_score[order])][:k]
    return [
        {
            "post_id": candidates[i]["post_id"],
            "score": float(score[i]),
            "rank_score": float(rank_score[i]),
            "blend_score": None if blend_score is None else float(blend_score[i]),
            "source": candidates[i]["source"],
            "retrieval_score": candidates[i]["score"],
        }
        for i in order.tolist()
    ]


def rank_queries_for(
    user_ids: Sequence[int], candidate_lists: Sequence[list[dict[str, Any]] | RequestError]
) -> tuple[list[int], list[RankQuery]]:
    """The recommend step between candidates and ranker: which queries go to the ranker, and their RankQueries.

    An error (unknown user) or an empty candidate set is an answer already; the rest are ranked, skipping
    posts the ranker does not know yet (see RankQuery.skip_unknown_posts).
    """
    to_rank = [i for i, c in enumerate(candidate_lists) if not isinstance(c, RequestError) and c]
    queries = [
        RankQuery(
            int(user_ids[i]),
            np.fromiter((c["post_id"] for c in candidate_lists[i]), dtype=np.int64),  # type: ignore[union-attr]
            skip_unknown_posts=True,
        )
        for i in to_rank
    ]
    return to_rank, queries


@dataclass(frozen=True)
class Blending:
    """The blend and the catalog and user lists its features read (the index side's, that found the candidates)."""

    blend: RecommendBlend
    posts: PostCatalog
    lists: UserLists

    @classmethod
    def of(cls, blend: RecommendBlend | None, index: IndexBundle) -> Blending | None:
        return None if blend is None else cls(blend, index.posts, index.lists)

    def score(
        self, user_id: int, candidates: Sequence[Mapping[str, Any]], scored: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        features = blend_features(candidates, np.asarray(scored["rank_score"]), self.posts, self.lists, user_id)
        return self.blend.score(features)


def recommendations(
    user_ids: Sequence[int],
    candidate_lists: Sequence[list[dict[str, Any]] | RequestError],
    to_rank: Sequence[int],
    ranked: Sequence[Mapping[str, np.ndarray] | RequestError],
    ks: Sequence[int],
    blending: Blending | None = None,
) -> list[list[dict[str, Any]] | RequestError]:
    """Per query, its top ks[i] ranked candidates, or the error / empty list it already was."""
    results: list[list[dict[str, Any]] | RequestError] = list(candidate_lists)
    for i, scored in zip(to_rank, ranked, strict=True):
        if isinstance(scored, RequestError):
            results[i] = scored
            continue
        candidates: list[dict[str, Any]] = candidate_lists[i]  # type: ignore[assignment]
        blend_score = None if blending is None else blending.score(int(user_ids[i]), candidates, scored)
        results[i] = select_top(candidates, scored, ks[i], blend_score)
    return results


def rank_candidates(
    ranker: RankerBundle,
    user_ids: Sequence[int],
    candidate_lists: Sequence[list[dict[str, Any]] | RequestError],
    ks: Sequence[int],
    blending: Blending | None = None,
) -> list[list[dict[str, Any]] | RequestError]:
    """Rank each user's candidates (IndexBundle.candidates output) and keep the top ks[i]: one ranker call."""
    to_rank, rank_queries = rank_queries_for(user_ids, candidate_lists)
    ranked = ranker.rank(rank_queries) if rank_queries else []
    return recommendations(user_ids, candidate_lists, to_rank, ranked, ks, blending)


def recommend_batch(
    index: IndexBundle,
    ranker: RankerBundle,
    user_ids: Sequence[int],
    k: int,
    num_candidates: int,
    sources: tuple[str, ...] = SOURCES,
    blend: RecommendBlend | None = None,
) -> list[list[dict[str, Any]] | RequestError]:
    """Candidates -> rank -> (blend) -> top k for a batch of users (seen posts excluded by the candidate step)."""
    candidate_lists = index.candidates([CandidateQuery(int(u), num_candidates, sources) for u in user_ids])
    return rank_candidates(ranker, user_ids, candidate_lists, [k] * len(user_ids), Blending.of(blend, index))


def recommend(
    index: IndexBundle,
    ranker: RankerBundle,
    user_id: int,
    k: int,
    num_candidates: int,
    blend: RecommendBlend | None = None,
) -> list[dict[str, Any]]:
    """In-process candidates -> rank -> top k for one user; raises the RequestError (404 unknown user)."""
    result = recommend_batch(index, ranker, [user_id], k, num_candidates, blend=blend)[0]
    if isinstance(result, RequestError):
        raise result
    return result


def rank_response(result: Mapping[str, np.ndarray], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """JSON-ready scores for /v1/rank, in the request's post order.

    ``score`` is the calibrated weighted probability; sort by ``rank_score`` (uncalibrated, strictly
    monotone in the model's outputs) to order posts, as /v1/recommend does.
    """
    probabilities = result["probabilities"].tolist()
    return [
        {"post_id": p, "score": s, "rank_score": r, "probabilities": dict(zip(tasks, probs, strict=True))}
        for p, s, r, probs in zip(
            result["post_ids"].tolist(),
            result["score"].tolist(),
            result["rank_score"].tolist(),
            probabilities,
            strict=True,
        )
    ]
