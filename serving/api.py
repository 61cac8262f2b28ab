"""Request validation shared by HTTP and handle callers (ids, k, sources, bodies) and the typed queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.config import ServeConfig, SourceName
from serving.errors import unprocessable

SOURCES: tuple[str, ...] = get_args(SourceName)  # every source there is; serve.candidate_sources enables some
INT64_MAX = 2**63 - 1


def parse_int(raw: Any, name: str, minimum: int, maximum: int) -> int:
    """An integer in [minimum, maximum] from a query string or JSON value, or a 422 naming the range."""
    allowed = f"an integer between {minimum} and {maximum}"
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        raise unprocessable(f"{name} must be {allowed}, got {raw!r}")
    try:
        value = int(raw.strip()) if isinstance(raw, str) else int(raw)
    except (TypeError, ValueError, OverflowError):
        raise unprocessable(f"{name} must be {allowed}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise unprocessable(f"{name} must be {allowed}, got {value}")
    return value


def parse_k(raw: Any, default: int, maximum: int, name: str = "k") -> int:
    """k from a request: default when absent; 422 with the allowed range when not 1..maximum."""
    if raw is None:
        return default
    return parse_int(raw, name, 1, maximum)


def parse_user_id(raw: Any) -> int:
    """A user id from a path segment or JSON value (non-negative int64), else 422."""
    return parse_int(raw, "user_id", 0, INT64_MAX)


def parse_sources(raw: str | None, enabled: Sequence[str] = SOURCES) -> tuple[str, ...]:
    """``?sources=``: a comma list of source names, or 'all' / 'both' / nothing for every enabled source.

    Args:
        raw: the query parameter.
        enabled: the sources the deployment runs (serve.candidate_sources).

    Raises:
        RequestError: 422 naming the allowed sources when a name is unknown or not enabled.
    """
    if raw is None or raw.strip() in ("", "both", "all"):
        return tuple(enabled)
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    wrong = [n for n in names if n not in enabled]
    if wrong or not names:
        raise unprocessable(
            f"sources must be 'all' or a comma list of {', '.join(enabled)}; got {raw!r}"
            + (f" ({', '.join(wrong)} not allowed)" if wrong else "")
        )
    return names


class NeighborsRequest(BaseModel):
    """POST /v1/neighbors: exactly one of ``vector`` or ``post_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vector: list[float] | None = None
    post_id: int | None = None
    k: Any = None


class RankRequest(BaseModel):
    """POST /v1/rank: a user and the posts to score for them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int
    post_ids: list[int]


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(body)"
        parts.append(
            f"unknown field {where!r}" if item["type"] == "extra_forbidden" else f"{where}: {item['msg']}"
        )
    return "invalid request: " + "; ".join(parts)


@dataclass(frozen=True)
class NeighborQuery:
    """One post-to-post / vector neighbour query (validated)."""

    k: int
    vector: np.ndarray | None = None
    post_id: int | None = None


@dataclass(frozen=True)
class CandidateQuery:
    """One candidate query (validated)."""

    user_id: int
    k: int
    sources: tuple[str, ...] = SOURCES


@dataclass(frozen=True)
class RankQuery:
    """One ranking query (validated).

    skip_unknown_posts: score posts the ranker's post table lacks as -inf instead of failing the
    query. Recommend sets it: during a hot swap the index side may already serve a newer post set
    than the ranker side, and a candidate the ranker cannot score is dropped, not an error.
    """

    user_id: int
    post_ids: np.ndarray
    skip_unknown_posts: bool = False


def validate_neighbors(body: Mapping[str, Any], config: ServeConfig) -> NeighborQuery:
    """Validate a /v1/neighbors body (dimension is checked against the index later)."""
    try:
        request = NeighborsRequest.model_validate(body)
    except ValidationError as exc:
        raise unprocessable(_pydantic_message(exc)) from None
    k = parse_k(request.k, config.default_k, config.max_k)
    if (request.vector is None) == (request.post_id is None):
        raise unprocessable("give exactly one of 'vector' (a list of floats) or 'post_id' (an integer)")
    if request.vector is not None:
        vector = np.asarray(request.vector, dtype=np.float32)
        if not np.isfinite(vector).all():
            raise unprocessable("vector contains NaN or infinite values")
        return NeighborQuery(k=k, vector=vector)
    return NeighborQuery(k=k, post_id=parse_int(request.post_id, "post_id", 0, INT64_MAX))


def validate_rank(body: Mapping[str, Any], config: ServeConfig) -> RankQuery:
    """Validate a /v1/rank body: user_id and at most max_rank_posts post ids."""
    try:
        request = RankRequest.model_validate(body)
    except ValidationError as exc:
        raise unprocessable(_pydantic_message(exc)) from None
    user_id = parse_user_id(request.user_id)
    if len(request.post_ids) > config.max_rank_posts:
        raise unprocessable(
            f"post_ids must hold between 0 and {config.max_rank_posts} ids, got {len(request.post_ids)}"
        )
    post_ids = np.asarray(request.post_ids, dtype=np.int64)
    return RankQuery(user_id=user_id, post_ids=post_ids)
