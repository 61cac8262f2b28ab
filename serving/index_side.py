"""The index side: FAISS searchers with the vectors that query them, candidate sources, neighbours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from retrieval.config import IndexConfig
from retrieval.index import load_index
from retrieval.search import Searcher
from serving.api import CandidateQuery, NeighborQuery
from serving.arrays import (
    PostCatalog,
    UserLists,
    VectorTable,
    read_post_catalog,
    read_user_lists,
    read_vector_table,
)
from serving.candidates import (
    SourceSettings,
    followed_posts,
    fuse,
    posts_older_than,
    top_unseen,
    trending_posts,
)
from serving.config import ServeConfig
from serving.errors import BundleLoadError, RequestError, not_found, unprocessable
from serving.lineage import indexed_embeddings, open_artifact, require_same
from storage.store import Store


@dataclass
class IndexBundle:
    """Everything the index deployment serves from one coherent set of versions."""

    versions: dict[str, Any]
    content: Searcher
    user: Searcher
    interest: VectorTable
    post_vectors: VectorTable
    user_vectors: VectorTable
    lists: UserLists
    posts: PostCatalog
    known_users: np.ndarray
    collaborative_neighbors: int
    max_k: int
    sources: SourceSettings = field(default_factory=lambda: SourceSettings.from_config(ServeConfig()))

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
        old = posts_older_than(self.posts, self.sources.content_window_hours)
        ids, scores = self.content.search(
            self.interest.vectors[rows[picked]], k, exclude_ids=old, exclude_per_query=seen
        )
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

        Each query runs the sources it names that ``self.sources`` enables; their lists are fused by
        rank (serving/candidates.py). A user with no history still gets trending (and followed) posts;
        only a user id the store has never seen is an error.

        Returns:
            Per query, up to k dicts {post_id, source, score, scores, fused_score}, best first, seen
            posts excluded; or the RequestError for that query (404 unknown user).
        """
        enabled = self.sources.enabled
        queries = [replace(q, sources=tuple(n for n in q.sources if n in enabled)) for q in queries]
        searched = {"content": self._content(queries), "collaborative": self._collaborative(queries)}
        wants_trending = any("trending" in q.sources for q in queries)
        trending = trending_posts(self.posts, self.sources.trending_window_hours) if wants_trending else None
        results: list[list[dict[str, Any]] | RequestError] = []
        for i, q in enumerate(queries):
            if not self.is_known_user(q.user_id):
                results.append(not_found(f"unknown user_id {q.user_id}"))
                continue
            seen = self.lists.seen.get(q.user_id)
            per_source: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for name in q.sources:
                if name in searched:
                    got = searched[name].get(i)
                elif name == "trending":
                    assert trending is not None
                    got = top_unseen(*trending, seen, q.k)
                else:
                    got = followed_posts(
                        self.posts, self.lists.followees.get(q.user_id), seen,
                        self.sources.followed_window_hours, q.k,
                    )
                if got is not None:
                    per_source[name] = got
            results.append(fuse(per_source, q.k, self.sources.hit_rates))
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
) -> IndexBundle:
    """Load, verify and warm up the index side for the given CURRENT pointers (see module docstring).

    Raises:
        BundleLoadError: nothing published, incoherent lineage, missing/corrupt files, failed warm-up.
    """
    strict = config.require_lineage
    content_index = open_artifact(store, "indexes", "content", pointers["indexes/content"])
    content_embeddings = indexed_embeddings(store, content_index, strict)
    interest = open_artifact(store, "embeddings", "user_interest", pointers["embeddings/user_interest"])
    require_same(
        f"embeddings/user_interest {interest.version} vs content embeddings {content_embeddings.version}",
        content_embeddings.manifest.get("model_version") or content_index.manifest.get("model_version"),
        interest.manifest.get("model_version"),
        strict,
    )
    user_index = open_artifact(store, "indexes", "user", pointers["indexes/user"])
    user_embeddings = indexed_embeddings(store, user_index, strict)
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
    post_features = open_artifact(store, "features", "post", pointers["features/post"])
    user_lists = open_artifact(store, "features", "user_lists", pointers["features/user_lists"])
    snapshot_us = post_features.manifest.get("snapshot_us")
    if snapshot_us is None:
        raise BundleLoadError(f"features/post {post_features.version}: manifest has no snapshot_us")
    lists = read_user_lists(user_lists.path)
    posts = read_post_catalog(post_features.path, int(snapshot_us), config.author_posts_per_author)
    bundle = IndexBundle(
        versions={
            "indexes": {"content": content_index.describe(), "user": user_index.describe()},
            "embeddings": {
                "content": content_embeddings.describe(),
                "user": user_embeddings.describe(),
                "user_interest": interest.describe(),
            },
            "features": {"post": post_features.describe(), "user_lists": user_lists.describe()},
        },
        content=searchers["content"],
        user=searchers["user"],
        interest=interest_vectors,
        post_vectors=post_vectors,
        user_vectors=user_vectors,
        lists=lists,
        posts=posts,
        # A user with no history yet is known (the fallback sources answer); only ids the store has never
        # seen are 404s.
        known_users=np.union1d(np.union1d(interest_vectors.ids, user_vectors.ids), lists.user_ids),
        collaborative_neighbors=config.collaborative_neighbors,
        max_k=config.max_k,
        sources=SourceSettings.from_config(config),
    )
    try:
        bundle.warmup(config.warmup_queries)
    except (ValueError, RuntimeError) as exc:
        raise BundleLoadError(f"warm-up failed: {exc}") from None
    return bundle
