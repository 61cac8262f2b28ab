"""The recommend pipeline: candidates -> which to rank -> ranker scores -> top k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.api import CandidateQuery, RankQuery
from serving.errors import RequestError
from serving.index_side import IndexBundle
from serving.ranker_side import RankerBundle


def select_top(candidates: Sequence[Mapping[str, Any]], scores: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The k best candidates by ranking score, each with its candidate source and retrieval score.

    Args:
        candidates: candidate dicts (post_id, source, score, ...), row-aligned with scores.
        scores: float (C,) ranking scores.
        k: items wanted.
    """
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")[:k]
    # -inf marks a candidate the ranker could not score (see RankQuery.skip_unknown_posts).
    order = order[np.isfinite(scores[order])]
    return [
        {
            "post_id": candidates[i]["post_id"],
            "score": float(scores[i]),
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


def recommendations(
    candidate_lists: Sequence[list[dict[str, Any]] | RequestError],
    to_rank: Sequence[int],
    ranked: Sequence[Mapping[str, np.ndarray] | RequestError],
    ks: Sequence[int],
) -> list[list[dict[str, Any]] | RequestError]:
    """Per query, its top ks[i] ranked candidates, or the error / empty list it already was."""
    results: list[list[dict[str, Any]] | RequestError] = list(candidate_lists)
    for i, scored in zip(to_rank, ranked, strict=True):
        results[i] = (
            scored
            if isinstance(scored, RequestError)
            else select_top(
                candidate_lists[i],
                scored["score"],
                ks[i],  # type: ignore[arg-type]
            )
        )
    return results


def recommend(
    index: IndexBundle, ranker: RankerBundle, user_id: int, k: int, num_candidates: int
) -> list[dict[str, Any]]:
    """In-process candidates -> rank -> top k (seen posts excluded by the candidate step)."""
    candidate_lists = index.candidates([CandidateQuery(user_id, num_candidates)])
    to_rank, rank_queries = rank_queries_for([user_id], candidate_lists)
    ranked = ranker.rank(rank_queries) if rank_queries else []
    result = recommendations(candidate_lists, to_rank, ranked, [k])[0]
    if isinstance(result, RequestError):
        raise result
    return result


def rank_response(result: Mapping[str, np.ndarray], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """JSON-ready scores for /v1/rank, in the request's post order."""
    probabilities = result["probabilities"].tolist()
    return [
        {"post_id": p, "score": s, "probabilities": dict(zip(tasks, probs, strict=True))}
        for p, s, probs in zip(
            result["post_ids"].tolist(), result["score"].tolist(), probabilities, strict=True
        )
    ]
