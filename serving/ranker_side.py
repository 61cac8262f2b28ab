"""The ranker side: the scorer over one ranker version's precomputed vectors, plus the post features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.dataset as ds

from ranking.model import SplitRanker
from ranking.scorer import RankerScorer
from ranking.training import load_ranker
from serving.api import RankQuery
from serving.arrays import TOPICS_COLUMN, parquet_files, read_table, read_vector_table, vectors_from_arrow
from serving.config import ServeConfig
from serving.errors import BundleLoadError, RequestError, not_found
from serving.lineage import Artifact, open_artifact, require_same
from storage.store import Store, StoreError


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


def post_table_from_artifact(directory: str) -> PostTable:
    """A features/post artifact: post_id, author_id, feature columns (and optionally vector)."""
    names = ds.dataset(parquet_files(directory), format="parquet").schema.names
    table = read_table(directory, names)
    post_ids = table.column("post_id").to_numpy().astype(np.int64)
    order = np.argsort(post_ids)
    columns = {
        name: table.column(name).to_numpy(zero_copy_only=False)[order]
        for name in names
        if name not in ("post_id", "author_id", "vector", TOPICS_COLUMN)
    }
    vectors = vectors_from_arrow(table.column("vector"), directory)[order] if "vector" in names else None
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
            Per query, or its RequestError (unknown user or posts):
            {"post_ids" int64 (P,),
             "rank_score" float64 (P,): the task-weighted uncalibrated model probabilities, the order
                 to serve in (strictly monotone in the model's outputs, so posts tie only when the
                 model cannot tell them apart),
             "score" float64 (P,): the task-weighted calibrated probabilities, the value to read as
                 a probability (isotonic calibration is a step function: many posts share one value),
             "probabilities" float64 (P, T) calibrated per task}.
            A post the ranker does not know (skip_unknown_posts) has -inf scores and NaN probabilities.
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
                raw = self.scorer.score_pairs(
                    user_ids, self.posts.author_ids[pos], columns, vectors, calibrated=False
                )
            else:
                raw = np.zeros((0, len(self.tasks)))
            probabilities = self.scorer.calibrate(raw)
            weighted = {"rank_score": raw @ self.task_weights, "score": probabilities @ self.task_weights}
            for i, start, n in spans:
                found = found_masks[i]
                result: dict[str, np.ndarray] = {"post_ids": queries[i].post_ids}
                for name, values in weighted.items():
                    result[name] = np.full(len(found), -np.inf)
                    result[name][found] = values[start : start + n]
                result["probabilities"] = np.full((len(found), len(self.tasks)), np.nan)
                result["probabilities"][found] = probabilities[start : start + n]
                results[i] = result
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
            if not (np.isfinite(result["score"]).all() and np.isfinite(result["rank_score"]).all()):
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


def _trained_content_version(store: Store, ranker: Artifact) -> str:
    """The content embeddings version the ranker's training rows carried (its features' lineage)."""
    version = ranker.manifest.get("content_embedding_version")
    if version is None and ranker.manifest.get("features_version"):
        try:
            features = store.manifest("features", "ranking", ranker.manifest["features_version"])
        except (StoreError, OSError, ValueError) as exc:
            raise BundleLoadError(f"models/ranker {ranker.version}: its features are unreadable: {exc}") from None
        version = features.get("content_embedding_version")
    if version is None:
        raise BundleLoadError(
            f"models/ranker {ranker.version}: the post split takes content vectors, but neither the ranker's "
            "manifest nor its features' manifest names a content_embedding_version"
        )
    return str(version)


def load_ranker_bundle(
    store: Store, pointers: Mapping[str, str | None], config: ServeConfig
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
        require_same(
            f"embeddings/{artifact.name} {artifact.version} vs models/ranker {ranker.version}",
            ranker.version,
            artifact.manifest.get("model_version"),
            strict,
        )
    features = open_artifact(store, "features", "post", pointers["features/post"])
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
    pair_vectors = vectors_from_arrow(pairs.column("vector"), user_author.path)
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
    posts = post_table_from_artifact(features.path)
    post_vector_dim = loaded.config.groups["post"].dense_vector_dim
    content_version = None
    if post_vector_dim and posts.vectors is None:
        # The post split takes the post's content vector: the content embeddings the ranker trained on.
        content_version = _trained_content_version(store, ranker)
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
        "features": {"post": features.describe()},
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
