"""Ray-free serving logic: request validation, coherent version loading, candidates, ranking, hot swap.

``ranking/serve.py`` wraps these in Ray Serve deployments; tests, the benchmark's in-process pipeline
and handle callers use the same functions, so what is tested here is what serves.

Two bundles, each internally coherent, are loaded from the store:

- ``IndexBundle`` (index deployment): the content index with the user-interest vectors that query it,
  the user index with the user vectors that query it, the content vectors of indexed posts
  (post-to-post), and per-user recent engaged / seen posts.
- ``RankerBundle`` (ranker deployment): the ranker with the user and user-author vectors exported by
  that same ranker, plus the post feature table the post split needs.

Coherence comes from manifest lineage (written by the embedding and index jobs):

- ``indexes/<name>/<v>/manifest.json`` has ``embedding_version``: the ``embeddings/<name>`` version
  whose vectors it holds (and may have ``model_version``). The bundle queries an index with vectors of
  exactly that lineage, so a user vector of ranker v2 never meets a user index built from v1 vectors.
- ``embeddings/{content,user,user_author,user_interest}/<v>/manifest.json`` has ``model_version``:
  the content model version (content, user_interest) or the ranker version (user, user_author).
- Content side: user_interest's model_version == the content index's embeddings' model_version.
  User side: the user vectors are the index's own embedding version. Ranker side: user and
  user_author model_version == the serving ranker version.

Every artifact's files are checked against its manifest checksums before anything is read, the index
files against their own sha256, and a new bundle answers warm-up queries before it is swapped in; a
version that fails any of this is refused and the previous bundle keeps serving. Requests only carry
integer ids, vectors and small numbers: no request names a path or a version, nothing is unpickled
(Parquet, JSON, faiss and ``torch.load(weights_only=True)`` only).

Embedding Parquet schemas: content (post_id, vector), user_interest (user_id, vector), user (user_id,
vector), user_author (user_id, author_id, vector). Optional ``features/post/<v>`` Parquet: post_id,
author_id and post feature columns; without it the post table is derived from the dataset.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, ValidationError

from ranking.model import SplitRanker
from ranking.scorer import RankerScorer
from ranking.serve_config import ServeConfig
from ranking.training import load_ranker
from retrieval.config import IndexConfig
from retrieval.index import load_index
from retrieval.search import Searcher
from storage.store import Store, StoreError, verify_checksums

log = logging.getLogger(__name__)

SOURCES = ("content", "collaborative")
POSITIVE_EVENTS = ("like", "reply", "repost")
INT64_MAX = 2**63 - 1

# ---------------------------------------------------------------------------------------------- errors


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # keep status across Ray's pickling of exceptions
        return (RequestError, (self.status, self.message))

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if request_id:
            error["request_id"] = request_id
        return {"error": error}


def not_found(message: str) -> RequestError:
    return RequestError(404, message)


def unprocessable(message: str) -> RequestError:
    return RequestError(422, message)


class BundleLoadError(RuntimeError):
    """A published version cannot be served (incoherent, missing or corrupt files, failed warm-up)."""


# ---------------------------------------------------------------------------------------------- validation


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


def parse_sources(raw: str | None) -> tuple[str, ...]:
    """'content', 'collaborative', 'both' or a comma list of the first two (default: both)."""
    if raw is None or raw.strip() in ("", "both", "all"):
        return SOURCES
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise unprocessable(f"sources must be 'content', 'collaborative' or 'both', got {raw!r}")
    return names


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not valid JSON or not an object."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"the JSON body must be an object, got {type(value).__name__}")
    return value


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


Route = Literal["candidates", "neighbors", "rank", "recommend", "versions", "healthz", "metrics_help"]

_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "candidates"): "candidates",
    ("POST", "neighbors"): "neighbors",
    ("POST", "rank"): "rank",
    ("GET", "recommend"): "recommend",
    ("GET", "versions"): "versions",
}


def match_route(method: str, path: str) -> tuple[Route, str | None]:
    """Map (method, path) to an endpoint and its path parameter (the user id), or a 404/405 error."""
    parts = [p for p in path.split("/") if p]
    if parts == ["healthz"]:
        if method != "GET":
            raise RequestError(405, f"{method} is not allowed on /healthz; use GET")
        return "healthz", None
    if len(parts) >= 2 and parts[0] == "v1":
        name = parts[1]
        takes_user = name in ("candidates", "recommend")
        if (takes_user and len(parts) == 3) or (not takes_user and len(parts) == 2):
            route = _ROUTES.get((method, name))
            if route is None:
                allowed = [m for (m, n) in _ROUTES if n == name]
                if allowed:
                    raise RequestError(405, f"{method} is not allowed on /v1/{name}; use {allowed[0]}")
            else:
                return route, parts[2] if takes_user else None
    raise not_found(f"no endpoint {method} {path}")


# ---------------------------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class VectorTable:
    """Vectors keyed by int64 id, looked up by binary search.

    Attributes:
        ids: int64 (N,) sorted ascending, unique.
        vectors: float32 (N, D) rows aligned with ids.
    """

    ids: np.ndarray
    vectors: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found bool (B,), row int64 (B,)); row is meaningless where not found."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), dtype=bool)
        return found, pos

    def get(self, id_: int) -> np.ndarray | None:
        found, pos = self.rows(np.asarray([id_]))
        return self.vectors[pos[0]] if found[0] else None


@dataclass(frozen=True)
class IdLists:
    """int64 lists keyed by int64 id, stored as CSR arrays (compact for millions of users).

    Attributes:
        keys: int64 (K,) sorted; offsets: int64 (K + 1,); values: int64 (V,).
    """

    keys: np.ndarray
    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def from_pairs(cls, keys: np.ndarray, values: np.ndarray, order: np.ndarray, cap: int) -> IdLists:
        """Group values by key, each list ordered by descending ``order`` (e.g. time), at most cap long."""
        keys = np.asarray(keys, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        if len(keys) == 0:
            return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
        sort = np.lexsort((-np.asarray(order, dtype=np.float64), keys))
        keys, values = keys[sort], values[sort]
        unique, starts, counts = np.unique(keys, return_index=True, return_counts=True)
        rank = np.arange(len(keys)) - np.repeat(starts, counts)
        keep = rank < cap
        keys, values = keys[keep], values[keep]
        counts = np.minimum(counts, cap)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(unique, offsets, values)

    def get(self, key: int) -> np.ndarray:
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return self.values[self.offsets[i] : self.offsets[i + 1]]
        return self.values[:0]


# ---------------------------------------------------------------------------------------------- reading


def parquet_files(directory: str) -> list[str]:
    """The Parquet files of an artifact directory (Spark part files included, hidden/underscore skipped)."""
    root = Path(directory)
    files = [
        str(p)
        for p in sorted(root.rglob("*.parquet"))
        if not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    ]
    if not files:
        raise BundleLoadError(f"{directory}: no Parquet files")
    return files


def _vectors_from_arrow(column: pa.ChunkedArray, where: str) -> np.ndarray:
    array = column.combine_chunks()
    if array.null_count:
        raise BundleLoadError(f"{where}: null vectors")
    if len(array) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.diff(array.offsets.to_numpy())
        dim = int(lengths[0])
        if (lengths != dim).any():
            raise BundleLoadError(f"{where}: vectors of mixed dimensions")
    else:
        raise BundleLoadError(f"{where}: vector column has type {array.type}, expected a list of floats")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    vectors = values.reshape(len(array), dim)
    if not np.isfinite(vectors).all():
        raise BundleLoadError(f"{where}: NaN or infinite vector values")
    return np.ascontiguousarray(vectors)


def read_table(directory: str, columns: Sequence[str]) -> pa.Table:
    """Selected columns of an artifact's or dataset table's Parquet files."""
    try:
        dataset = ds.dataset(parquet_files(directory), format="parquet")
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise BundleLoadError(f"{directory}: missing column(s) {missing}; found {dataset.schema.names}")
        return dataset.to_table(columns=list(columns))
    except (pa.ArrowException, OSError) as exc:
        raise BundleLoadError(f"{directory}: unreadable Parquet: {exc}") from None


def read_vector_table(directory: str, id_column: str) -> VectorTable:
    """An (id, vector) Parquet artifact as a VectorTable (ids sorted, duplicates refused)."""
    table = read_table(directory, [id_column, "vector"])
    ids = table.column(id_column).to_numpy().astype(np.int64)
    vectors = _vectors_from_arrow(table.column("vector"), directory)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise BundleLoadError(f"{directory}: duplicate {id_column} values")
    return VectorTable(ids, vectors)


@dataclass(frozen=True)
class EngagementLists:
    """Per user: recent positively engaged posts (collaborative expansion) and seen posts (exclusion)."""

    engaged: IdLists
    seen: IdLists


def load_engagement_lists(data_path: str, recent_per_user: int, seen_per_user: int) -> EngagementLists:
    """Build the per-user lists from the dataset's engagements table (user_id, post_id, event, ts)."""
    table = read_table(str(Path(data_path) / "engagements"), ["user_id", "post_id", "event", "ts"])
    users = table.column("user_id").to_numpy().astype(np.int64)
    posts = table.column("post_id").to_numpy().astype(np.int64)
    ts = pc.cast(table.column("ts"), pa.int64()).to_numpy().astype(np.float64)
    positive = pc.is_in(table.column("event"), value_set=pa.array(POSITIVE_EVENTS)).to_numpy(
        zero_copy_only=False
    )
    return EngagementLists(
        engaged=IdLists.from_pairs(users[positive], posts[positive], ts[positive], recent_per_user),
        seen=IdLists.from_pairs(users, posts, ts, seen_per_user),
    )


# ---------------------------------------------------------------------------------------------- lineage


@dataclass(frozen=True)
class Artifact:
    """One resolved, checksum-verified store artifact."""

    kind: str
    name: str
    version: str
    path: str
    manifest: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        out = {"version": self.version}
        for key in ("embedding_version", "model_version", "created_at", "code_version"):
            if key in self.manifest:
                out[key] = self.manifest[key]
        return out


def open_artifact(store: Store, kind: str, name: str, version: str | None) -> Artifact:
    """Resolve a version, read its manifest and verify its files; BundleLoadError when any step fails."""
    if version is None:
        raise BundleLoadError(f"{kind}/{name}: nothing is published (no CURRENT pointer)")
    try:
        path = store.path(kind, name, version)
        manifest = store.manifest(kind, name, version)
        verify_checksums(path, manifest)
    except (StoreError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise BundleLoadError(f"{kind}/{name} version {version}: {exc}") from None
    return Artifact(kind, name, version, path, manifest)


def _require_same(what: str, expected: str | None, got: str | None, strict: bool) -> None:
    if expected is None or got is None:
        if strict:
            raise BundleLoadError(f"{what}: lineage unknown (model_version missing from a manifest)")
        return
    if expected != got:
        raise BundleLoadError(f"{what}: incoherent versions ({got!r} != {expected!r})")


def _indexed_embeddings(store: Store, index: Artifact, strict: bool) -> Artifact:
    """The embeddings artifact an index was built from (its manifest's embedding_version)."""
    version = index.manifest.get("embedding_version")
    if version is None:
        if strict:
            raise BundleLoadError(
                f"indexes/{index.name} version {index.version}: manifest has no embedding_version, "
                "so its query vectors cannot be matched to it"
            )
        version = store.current("embeddings", index.name)
    embeddings = open_artifact(store, "embeddings", index.name, version)
    _require_same(
        f"indexes/{index.name} {index.version} vs embeddings/{index.name} {embeddings.version}",
        index.manifest.get("model_version"),
        embeddings.manifest.get("model_version"),
        strict=False,
    )
    return embeddings


INDEX_POINTERS = (("indexes", "content"), ("indexes", "user"), ("embeddings", "user_interest"))
RANKER_POINTERS = (
    ("models", "ranker"),
    ("embeddings", "user"),
    ("embeddings", "user_author"),
    ("features", "post"),
)


def read_pointers(store: Store, which: Sequence[tuple[str, str]]) -> dict[str, str | None]:
    """The CURRENT versions of the given artifacts ('kind/name' -> version); cheap enough to poll."""
    return {f"{kind}/{name}": store.current(kind, name) for kind, name in which}


# ---------------------------------------------------------------------------------------------- index bundle


def merge_candidates(per_source: Mapping[str, tuple[np.ndarray, np.ndarray]], k: int) -> list[dict[str, Any]]:
    """Interleave per-source ranked lists (scores of different sources are not comparable) into k unique.

    Args:
        per_source: source name -> (post ids int64 (n,), scores float (n,)), each best first.
        k: candidates wanted.

    Returns:
        Up to k dicts {post_id, source, score, scores}: ``source``/``score`` from the source that
        contributed the post first, ``scores`` every source's score for it.
    """
    merged: dict[int, dict[str, Any]] = {}
    lists = [(name, ids.tolist(), scores.tolist()) for name, (ids, scores) in per_source.items()]
    # Each source's own scores: a post found by both sources shows both.
    by_source = {name: dict(zip(ids, scores, strict=True)) for name, ids, scores in lists}
    longest = max((len(ids) for _, ids, _ in lists), default=0)
    for rank in range(longest):
        for name, ids, scores in lists:
            if rank < len(ids) and ids[rank] not in merged:
                post_id = ids[rank]
                merged[post_id] = {
                    "post_id": post_id,
                    "source": name,
                    "score": scores[rank],
                    "scores": {n: s[post_id] for n, s in by_source.items() if post_id in s},
                }
                if len(merged) == k:
                    return list(merged.values())
    return list(merged.values())


@dataclass
class IndexBundle:
    """Everything the index deployment serves from one coherent set of versions."""

    versions: dict[str, Any]
    content: Searcher
    user: Searcher
    interest: VectorTable
    post_vectors: VectorTable
    user_vectors: VectorTable
    lists: EngagementLists
    known_users: np.ndarray
    collaborative_neighbors: int
    max_k: int

    def is_known_user(self, user_id: int) -> bool:
        i = int(np.searchsorted(self.known_users, user_id))
        return i < len(self.known_users) and self.known_users[i] == user_id

    def _content(self, queries: Sequence[CandidateQuery]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        users = np.asarray([q.user_id for q in queries], dtype=np.int64)
        found, rows = self.interest.rows(users)
        picked = [i for i in range(len(queries)) if found[i] and "content" in queries[i].sources]
        if not picked:
            return {}
        k = min(max(queries[i].k for i in picked), self.content.num_vectors, self.max_k)
        seen = [self.lists.seen.get(int(users[i])) for i in picked]
        ids, scores = self.content.search(self.interest.vectors[rows[picked]], k, exclude_per_query=seen)
        out = {}
        for row, i in enumerate(picked):
            keep = ids[row, : queries[i].k] >= 0
            out[i] = (ids[row, : queries[i].k][keep], scores[row, : queries[i].k][keep])
        return out

    def _collaborative(self, queries: Sequence[CandidateQuery]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        users = np.asarray([q.user_id for q in queries], dtype=np.int64)
        found, rows = self.user_vectors.rows(users)
        picked = [i for i in range(len(queries)) if found[i] and "collaborative" in queries[i].sources]
        if not picked:
            return {}
        k = min(self.collaborative_neighbors, max(self.user.num_vectors - 1, 1))
        exclude_self = [users[i : i + 1] for i in picked]
        neighbors, sims = self.user.search(
            self.user_vectors.vectors[rows[picked]], k, exclude_per_query=exclude_self
        )
        out = {}
        for row, i in enumerate(picked):
            lists = [
                (self.lists.engaged.get(int(n)), s)
                for n, s in zip(neighbors[row], sims[row], strict=True)
                if n >= 0
            ]
            if not lists:
                out[i] = (np.zeros(0, np.int64), np.zeros(0, np.float32))
                continue
            posts = np.concatenate([p for p, _ in lists])
            weights = np.concatenate([np.full(len(p), s, dtype=np.float64) for p, s in lists])
            unique, inverse = np.unique(posts, return_inverse=True)
            # A post engaged by several similar users scores the sum of their similarities.
            score = np.bincount(inverse, weights=weights, minlength=len(unique))
            keep = ~np.isin(unique, self.lists.seen.get(int(users[i])))
            unique, score = unique[keep], score[keep]
            top = np.argsort(-score, kind="stable")[: queries[i].k]
            out[i] = (unique[top], score[top].astype(np.float32))
        return out

    def candidates(self, queries: Sequence[CandidateQuery]) -> list[list[dict[str, Any]] | RequestError]:
        """Candidates for a batch of queries: one content search and one user search for the batch.

        Returns:
            Per query, a list of {post_id, source, score, scores} (seen posts excluded), or the
            RequestError for that query (unknown user).
        """
        content = self._content(queries)
        collaborative = self._collaborative(queries)
        results: list[list[dict[str, Any]] | RequestError] = []
        for i, q in enumerate(queries):
            if not self.is_known_user(q.user_id):
                results.append(not_found(f"unknown user_id {q.user_id}"))
                continue
            per_source = {}
            for name in q.sources:
                got = (content if name == "content" else collaborative).get(i)
                if got is not None:
                    per_source[name] = got
            results.append(merge_candidates(per_source, q.k))
        return results

    def neighbors(self, queries: Sequence[NeighborQuery]) -> list[list[dict[str, Any]] | RequestError]:
        """Similar posts to a vector or a post's content vector, one content-index search per batch."""
        results: list[list[dict[str, Any]] | RequestError | None] = [None] * len(queries)
        vectors, exclusions, picked = [], [], []
        for i, q in enumerate(queries):
            if q.vector is not None:
                if q.vector.shape != (self.content.dim,):
                    results[i] = unprocessable(
                        f"vector has dimension {q.vector.shape[0] if q.vector.ndim == 1 else q.vector.shape}, "
                        f"expected {self.content.dim}"
                    )
                    continue
                vectors.append(q.vector)
                exclusions.append(np.zeros(0, np.int64))
            else:
                assert q.post_id is not None  # NeighborQuery holds a vector or a post id
                vector = self.post_vectors.get(int(q.post_id))
                if vector is None:
                    results[i] = not_found(f"unknown post_id {q.post_id}")
                    continue
                vectors.append(vector)
                exclusions.append(np.asarray([q.post_id], dtype=np.int64))
            picked.append(i)
        if picked:
            k = min(max(queries[i].k for i in picked), self.content.num_vectors, self.max_k)
            ids, scores = self.content.search(np.stack(vectors), k, exclude_per_query=exclusions)
            for row, i in enumerate(picked):
                kk = queries[i].k
                keep = ids[row, :kk] >= 0
                results[i] = [
                    {"post_id": p, "score": s}
                    for p, s in zip(
                        ids[row, :kk][keep].tolist(), scores[row, :kk][keep].tolist(), strict=True
                    )
                ]
        return results  # type: ignore[return-value]

    def warmup(self, num_queries: int, seed: int = 0) -> None:
        """Run sample queries through every path; raises if any fails or returns malformed results."""
        rng = np.random.default_rng(seed)
        users = rng.choice(self.known_users, size=min(num_queries, len(self.known_users)), replace=False)
        results = self.candidates([CandidateQuery(int(u), min(10, self.max_k)) for u in users])
        posts = rng.choice(
            self.post_vectors.ids, size=min(num_queries, len(self.post_vectors.ids)), replace=False
        )
        results += self.neighbors([NeighborQuery(k=min(10, self.max_k), post_id=int(p)) for p in posts])
        for result in results:
            if isinstance(result, RequestError):
                raise BundleLoadError(f"warm-up query failed: {result.message}")


def load_index_bundle(
    store: Store,
    pointers: Mapping[str, str | None],
    config: ServeConfig,
    index_configs: Mapping[str, IndexConfig],
    data_path: str,
) -> IndexBundle:
    """Load, verify and warm up the index side for the given CURRENT pointers (see module docstring).

    Raises:
        BundleLoadError: nothing published, incoherent lineage, missing/corrupt files, failed warm-up.
    """
    strict = config.require_lineage
    content_index = open_artifact(store, "indexes", "content", pointers["indexes/content"])
    content_embeddings = _indexed_embeddings(store, content_index, strict)
    interest = open_artifact(store, "embeddings", "user_interest", pointers["embeddings/user_interest"])
    _require_same(
        f"embeddings/user_interest {interest.version} vs content embeddings {content_embeddings.version}",
        content_embeddings.manifest.get("model_version") or content_index.manifest.get("model_version"),
        interest.manifest.get("model_version"),
        strict,
    )
    user_index = open_artifact(store, "indexes", "user", pointers["indexes/user"])
    user_embeddings = _indexed_embeddings(store, user_index, strict)
    try:
        searchers = {}
        for name, artifact in (("content", content_index), ("user", user_index)):
            searchers[name] = Searcher(load_index(artifact.path), index_configs[name])
    except ValueError as exc:
        raise BundleLoadError(str(exc)) from None
    interest_vectors = read_vector_table(interest.path, "user_id")
    post_vectors = read_vector_table(content_embeddings.path, "post_id")
    user_vectors = read_vector_table(user_embeddings.path, "user_id")
    for what, table, searcher in (
        ("user-interest vectors", interest_vectors, searchers["content"]),
        ("content vectors", post_vectors, searchers["content"]),
        ("user vectors", user_vectors, searchers["user"]),
    ):
        if len(table.ids) and table.dim != searcher.dim:
            raise BundleLoadError(f"{what} have dimension {table.dim}, the index expects {searcher.dim}")
    lists = load_engagement_lists(data_path, config.recent_posts_per_user, config.seen_posts_per_user)
    bundle = IndexBundle(
        versions={
            "indexes": {"content": content_index.describe(), "user": user_index.describe()},
            "embeddings": {
                "content": content_embeddings.describe(),
                "user": user_embeddings.describe(),
                "user_interest": interest.describe(),
            },
        },
        content=searchers["content"],
        user=searchers["user"],
        interest=interest_vectors,
        post_vectors=post_vectors,
        user_vectors=user_vectors,
        lists=lists,
        known_users=np.union1d(interest_vectors.ids, user_vectors.ids),
        collaborative_neighbors=config.collaborative_neighbors,
        max_k=config.max_k,
    )
    try:
        bundle.warmup(config.warmup_queries)
    except (ValueError, RuntimeError) as exc:
        raise BundleLoadError(f"warm-up failed: {exc}") from None
    return bundle


# ---------------------------------------------------------------------------------------------- ranker bundle


@dataclass(frozen=True)
class PostTable:
    """Post features for scoring, keyed by post id.

    Attributes:
        post_ids: int64 (P,) sorted; author_ids: int64 (P,).
        columns: feature name -> array (P,).
        vectors: float32 (P, D) when the ranker's post group takes a dense vector, else None.
    """

    post_ids: np.ndarray
    author_ids: np.ndarray
    columns: dict[str, np.ndarray]
    vectors: np.ndarray | None = None

    def rows(self, post_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(self.post_ids, post_ids), max(len(self.post_ids) - 1, 0))
        found = self.post_ids[pos] == post_ids if len(self.post_ids) else np.zeros(len(post_ids), bool)
        return found, pos


def post_table_from_dataset(data_path: str) -> PostTable:
    """Post features as of the dataset's last engagement: counts so far, age, author followers."""
    root = Path(data_path)
    posts = read_table(
        str(root / "posts"), ["post_id", "author_id", "created_at", "has_media", "text_length"]
    )
    engagements = read_table(str(root / "engagements"), ["post_id", "event", "ts"])
    follows = read_table(str(root / "follows"), ["followee_id"])
    post_ids = posts.column("post_id").to_numpy().astype(np.int64)
    order = np.argsort(post_ids)
    post_ids = post_ids[order]
    author_ids = posts.column("author_id").to_numpy().astype(np.int64)[order]
    created = pc.cast(posts.column("created_at"), pa.int64()).to_numpy()[order]
    engaged_posts = engagements.column("post_id").to_numpy().astype(np.int64)
    events = engagements.column("event").to_numpy(zero_copy_only=False)
    ts = pc.cast(engagements.column("ts"), pa.int64()).to_numpy()
    snapshot_us = int(ts.max()) if len(ts) else int(created.max())
    pos = np.minimum(np.searchsorted(post_ids, engaged_posts), len(post_ids) - 1)
    known = post_ids[pos] == engaged_posts

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(pos[known & mask], minlength=len(post_ids)).astype(np.float64)

    followee = follows.column("followee_id").to_numpy().astype(np.int64)
    authors, follower_counts = np.unique(followee, return_counts=True)
    apos = np.minimum(np.searchsorted(authors, author_ids), max(len(authors) - 1, 0))
    author_followers = np.where(
        (authors[apos] == author_ids) if len(authors) else False,
        follower_counts[apos] if len(authors) else 0,
        0,
    )
    is_positive = np.isin(events, POSITIVE_EVENTS)
    columns = {
        "post_has_media": posts.column("has_media").to_numpy(zero_copy_only=False)[order].astype(np.float64),
        "post_text_length": posts.column("text_length").to_numpy()[order].astype(np.float64),
        "post_age_hours": np.maximum(snapshot_us - created, 0) / 3.6e9,
        "post_impressions_so_far": count(events == "impression"),
        "post_engagements_so_far": count(is_positive),
        "post_likes_so_far": count(events == "like"),
        "post_replies_so_far": count(events == "reply"),
        "post_reposts_so_far": count(events == "repost"),
        "author_follower_count": author_followers.astype(np.float64),
    }
    return PostTable(post_ids, author_ids, columns)


def post_table_from_artifact(directory: str) -> PostTable:
    """A features/post artifact: post_id, author_id, feature columns (and optionally vector)."""
    names = ds.dataset(parquet_files(directory), format="parquet").schema.names
    table = read_table(directory, names)
    post_ids = table.column("post_id").to_numpy().astype(np.int64)
    order = np.argsort(post_ids)
    columns = {
        name: table.column(name).to_numpy(zero_copy_only=False)[order]
        for name in names
        if name not in ("post_id", "author_id", "vector")
    }
    vectors = _vectors_from_arrow(table.column("vector"), directory)[order] if "vector" in names else None
    return PostTable(
        post_ids[order], table.column("author_id").to_numpy().astype(np.int64)[order], columns, vectors
    )


@dataclass
class RankerBundle:
    """The ranker side: a scorer over one ranker version's precomputed vectors, plus post features."""

    versions: dict[str, Any]
    scorer: RankerScorer
    posts: PostTable
    known_users: np.ndarray
    tasks: tuple[str, ...]
    feature_columns: dict[str, np.ndarray]
    post_vector_dim: int
    task_weights: np.ndarray = field(default_factory=lambda: np.ones(1))

    def set_score_weights(self, weights: Mapping[str, float]) -> None:
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(
                f"score_weights name unknown task(s) {sorted(unknown)}; the ranker's tasks are {list(self.tasks)}"
            )
        self.task_weights = np.asarray([float(weights.get(t, 0.0)) for t in self.tasks])

    def is_known_user(self, user_id: int) -> bool:
        i = int(np.searchsorted(self.known_users, user_id))
        return i < len(self.known_users) and self.known_users[i] == user_id

    def rank(self, queries: Sequence[RankQuery]) -> list[dict[str, np.ndarray] | RequestError]:
        """Score every query's posts in one scorer call.

        Returns:
            Per query {"post_ids" int64 (P,), "score" float64 (P,) weighted calibrated score,
            "probabilities" float64 (P, T)}, or its RequestError (unknown user or posts).
        """
        results: list[dict[str, np.ndarray] | RequestError | None] = [None] * len(queries)
        rows: list[np.ndarray] = []
        users: list[np.ndarray] = []
        spans: list[tuple[int, int, int]] = []
        found_masks: dict[int, np.ndarray] = {}
        for i, q in enumerate(queries):
            if not self.is_known_user(q.user_id):
                results[i] = not_found(f"unknown user_id {q.user_id}")
                continue
            found, pos = self.posts.rows(q.post_ids)
            if not found.all() and not q.skip_unknown_posts:
                missing = q.post_ids[~found][:10].tolist()
                results[i] = not_found(f"unknown post_id(s) {missing}")
                continue
            pos = pos[found]
            spans.append((i, sum(len(r) for r in rows), len(pos)))
            found_masks[i] = found
            rows.append(pos)
            users.append(np.full(len(pos), q.user_id, dtype=np.int64))
        if rows:
            pos = np.concatenate(rows)
            user_ids = np.concatenate(users)
            if len(pos):
                columns = {name: values[pos] for name, values in self.feature_columns.items()}
                vectors = None
                if self.post_vector_dim:
                    vectors = (
                        self.posts.vectors[pos]
                        if self.posts.vectors is not None
                        and self.posts.vectors.shape[1] == self.post_vector_dim
                        else np.zeros((len(pos), self.post_vector_dim), dtype=np.float32)
                    )
                probabilities = self.scorer.score_pairs(
                    user_ids, self.posts.author_ids[pos], columns, vectors
                )
            else:
                probabilities = np.zeros((0, len(self.tasks)))
            scores = probabilities @ self.task_weights
            for i, start, n in spans:
                found = found_masks[i]
                score = np.full(len(found), -np.inf)
                score[found] = scores[start : start + n]
                query_probabilities = np.full((len(found), len(self.tasks)), np.nan)
                query_probabilities[found] = probabilities[start : start + n]
                results[i] = {
                    "post_ids": queries[i].post_ids,
                    "score": score,
                    "probabilities": query_probabilities,
                }
        return results  # type: ignore[return-value]

    def warmup(self, num_queries: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        users = rng.choice(self.known_users, size=min(num_queries, len(self.known_users)), replace=False)
        posts = self.posts.post_ids
        queries = [
            RankQuery(int(u), rng.choice(posts, size=min(20, len(posts)), replace=False)) for u in users
        ]
        for result in self.rank(queries):
            if isinstance(result, RequestError):
                raise BundleLoadError(f"warm-up query failed: {result.message}")
            if not np.isfinite(result["score"]).all():
                raise BundleLoadError("warm-up produced non-finite scores")


def _feature_columns(table: PostTable, scorer_config) -> dict[str, np.ndarray]:
    """Every post-group feature as a column: from the table, else missing (NaN / None / 0 dense)."""
    group = scorer_config.groups["post"]
    n = len(table.post_ids)
    columns: dict[str, np.ndarray] = {}
    for name in group.continuous_features:
        columns[name] = (
            np.asarray(table.columns[name], dtype=np.float64) if name in table.columns else np.full(n, np.nan)
        )
    for name in group.categorical_features:
        columns[name] = table.columns[name] if name in table.columns else np.full(n, None, dtype=object)
    for name in group.dense_features:
        columns[name] = (
            np.nan_to_num(np.asarray(table.columns[name], dtype=np.float64))
            if name in table.columns
            else np.zeros(n)
        )
    return columns


def load_ranker_bundle(
    store: Store, pointers: Mapping[str, str | None], config: ServeConfig, data_path: str
) -> RankerBundle:
    """Load, verify and warm up the ranker side for the given CURRENT pointers.

    Raises:
        BundleLoadError: nothing published, user vectors from another ranker, missing/corrupt files,
            unknown score-weight tasks, failed warm-up.
    """
    strict = config.require_lineage
    ranker = open_artifact(store, "models", "ranker", pointers["models/ranker"])
    user = open_artifact(store, "embeddings", "user", pointers["embeddings/user"])
    user_author = open_artifact(store, "embeddings", "user_author", pointers["embeddings/user_author"])
    for artifact in (user, user_author):
        _require_same(
            f"embeddings/{artifact.name} {artifact.version} vs models/ranker {ranker.version}",
            ranker.version,
            artifact.manifest.get("model_version"),
            strict,
        )
    features_version = pointers.get("features/post")
    features = open_artifact(store, "features", "post", features_version) if features_version else None
    try:
        loaded = load_ranker(ranker.path)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise BundleLoadError(f"models/ranker {ranker.version}: cannot load: {exc}") from None
    if not isinstance(loaded.model, SplitRanker):
        raise BundleLoadError(
            f"models/ranker {ranker.version}: a {type(loaded.model).__name__} cannot serve precomputed vectors; "
            "serving needs the split architecture"
        )
    users = read_vector_table(user.path, "user_id")
    pairs = read_table(user_author.path, ["user_id", "author_id", "vector"])
    pair_vectors = _vectors_from_arrow(pairs.column("vector"), user_author.path)
    try:
        scorer = RankerScorer(
            loaded.model,
            loaded.config,
            loaded.discretizer,
            loaded.calibration,
            users.ids,
            users.vectors,
            pairs.column("user_id").to_numpy().astype(np.int64),
            pairs.column("author_id").to_numpy().astype(np.int64),
            pair_vectors if len(pair_vectors) else np.zeros((0, 0), np.float32),
        )
    except ValueError as exc:
        raise BundleLoadError(f"models/ranker {ranker.version}: {exc}") from None
    posts = post_table_from_artifact(features.path) if features else post_table_from_dataset(data_path)
    post_vector_dim = loaded.config.groups["post"].dense_vector_dim
    content_version = None
    if post_vector_dim and posts.vectors is None:
        # The post split takes the post's content vector: the content embeddings the ranker trained on.
        content_version = (
            ranker.manifest.get("content_embedding_version")
            or ranker.manifest.get("content_version")
            or store.current("embeddings", "content")
        )
        content = open_artifact(store, "embeddings", "content", content_version)
        vectors = read_vector_table(content.path, "post_id")
        if vectors.dim != post_vector_dim:
            raise BundleLoadError(
                f"embeddings/content {content_version} has dimension {vectors.dim}, the ranker expects {post_vector_dim}"
            )
        found, rows = vectors.rows(posts.post_ids)
        post_vectors = np.where(found[:, None], vectors.vectors[rows], 0.0).astype(np.float32)
        posts = PostTable(posts.post_ids, posts.author_ids, posts.columns, post_vectors)
    versions: dict[str, Any] = {
        "models": {"ranker": ranker.describe()},
        "embeddings": {"user": user.describe(), "user_author": user_author.describe()},
        "features": {"post": features.describe() if features else {"version": None, "source": "dataset"}},
    }
    if content_version:
        versions["embeddings"]["content"] = {"version": content_version}
    bundle = RankerBundle(
        versions=versions,
        scorer=scorer,
        posts=posts,
        known_users=users.ids,
        tasks=tuple(loaded.config.tasks),
        feature_columns=_feature_columns(posts, loaded.config),
        post_vector_dim=post_vector_dim,
    )
    try:
        bundle.set_score_weights(config.score_weights)
        bundle.warmup(config.warmup_queries)
    except (ValueError, RuntimeError) as exc:
        raise BundleLoadError(f"models/ranker {ranker.version}: {exc}") from None
    return bundle


# ---------------------------------------------------------------------------------------------- pipeline


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


# ---------------------------------------------------------------------------------------------- hot swap

B = TypeVar("B")


class BundleHolder(Generic[B]):
    """Serves one bundle and replaces it when the store's CURRENT pointers move.

    ``poll()`` loads the new versions beside the serving bundle (the loader verifies and warms up),
    then swaps the reference: a request that already holds the old bundle finishes on it, the next
    request gets the new one, and the old one is freed once the last holder lets go. A version that
    fails to load is remembered and not retried until the pointers change again.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[], dict[str, str | None]],
        load: Callable[[dict[str, str | None]], B],
        on_swap: Callable[[B | None, B], None] | None = None,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._read = read
        self._load = load
        self._on_swap = on_swap
        self._on_refuse = on_refuse
        self.current: B | None = None
        self.pointers: dict[str, str | None] | None = None
        self.loaded_at: str | None = None
        self.last_error: str | None = None
        self.refused: dict[str, str | None] | None = None
        self.swaps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, force: bool = False) -> bool:
        """Check the pointers; load and swap when they changed. Returns True when a swap happened."""
        with self._lock:
            pointers = self._read()
            if not force and (pointers == self.pointers or pointers == self.refused):
                return False
            started = time.perf_counter()
            try:
                bundle = self._load(pointers)
            except BundleLoadError as exc:
                self.last_error = f"refused {pointers}: {exc}"
                self.refused = pointers
                log.error("%s: %s; still serving %s", self.name, self.last_error, self.pointers)
                if self._on_refuse is not None:
                    self._on_refuse(self.last_error)
                return False
            old, self.current = self.current, bundle
            self.pointers, self.refused, self.last_error = pointers, None, None
            self.loaded_at = dt.datetime.now(dt.timezone.utc).isoformat()
            self.swaps += 1
            if self._on_swap is not None:
                self._on_swap(old, bundle)
            log.info("%s: serving %s (loaded in %.2f s)", self.name, pointers, time.perf_counter() - started)
            del old
            gc.collect()
            return True

    def status(self) -> dict[str, Any]:
        return {
            "pointers": self.pointers,
            "loaded_at": self.loaded_at,
            "swaps": self.swaps,
            "last_error": self.last_error,
            "versions": getattr(self.current, "versions", None),
        }

    def start(self, interval_s: float) -> None:
        """Poll in a daemon thread every interval_s seconds until stop()."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - a poll failure must never stop future polls
                    log.exception("%s: poll failed", self.name)

        self._thread = threading.Thread(target=loop, name=f"{self.name}-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# ---------------------------------------------------------------------------------------------- rollback


def rollback_serving_set(store: Store, sides: Sequence[str] = ("content", "user")) -> dict[str, str]:
    """Return the serving set to the previously published versions, keeping it coherent.

    The indexes are rolled back (their HISTORY), then the artifacts queried with them are pointed at
    matching versions: user_interest of the content index's content model; the ranker, user and
    user_author vectors of the user index's ranker. Serving deployments pick the change up on their
    next poll, load it beside the current bundle, and swap.

    Args:
        store: the store.
        sides: "content" and/or "user".

    Returns:
        'kind/name' -> version now CURRENT, for every pointer changed.

    Raises:
        StoreError: no earlier version, or no version of a dependent artifact matches.
    """
    unknown = set(sides) - {"content", "user"}
    if unknown or not sides:
        raise ValueError(f"rollback sides must be 'content' and/or 'user', got {list(sides)}")
    changed: dict[str, str] = {}

    def publish_matching(kind: str, name: str, model_version: str, key: str = "model_version") -> None:
        matches = [
            v for v in store.versions(kind, name) if store.manifest(kind, name, v).get(key) == model_version
        ]
        if not matches:
            raise StoreError(f"rollback: no {kind}/{name} version was made by {model_version!r}")
        if store.current(kind, name) != matches[-1]:
            store.publish(kind, name, matches[-1])
            changed[f"{kind}/{name}"] = matches[-1]

    def embedding_model(name: str, index_version: str) -> str:
        manifest = store.manifest("indexes", name, index_version)
        embedding_version = manifest.get("embedding_version")
        if embedding_version is None:
            raise StoreError(f"rollback: indexes/{name} {index_version} has no embedding_version")
        model = store.manifest("embeddings", name, embedding_version).get("model_version")
        if model is None:
            raise StoreError(f"rollback: embeddings/{name} {embedding_version} has no model_version")
        return model

    if "content" in sides:
        changed["indexes/content"] = store.rollback("indexes", "content")
        publish_matching(
            "embeddings", "user_interest", embedding_model("content", changed["indexes/content"])
        )
    if "user" in sides:
        changed["indexes/user"] = store.rollback("indexes", "user")
        ranker_version = embedding_model("user", changed["indexes/user"])
        if ranker_version not in store.versions("models", "ranker"):
            raise StoreError(f"rollback: models/ranker {ranker_version} is no longer in the store")
        if store.current("models", "ranker") != ranker_version:
            store.publish("models", "ranker", ranker_version)
            changed["models/ranker"] = ranker_version
        publish_matching("embeddings", "user", ranker_version)
        publish_matching("embeddings", "user_author", ranker_version)
    return changed
