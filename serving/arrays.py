"""Arrow readers and the id-keyed arrays serving holds: vector tables, CSR id lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from serving.errors import BundleLoadError

TOPICS_COLUMN = "topics"  # features/post: each post's topic mixture (embeddings/topics.py)


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


def vectors_from_arrow(column: pa.ChunkedArray, where: str) -> np.ndarray:
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
    vectors = vectors_from_arrow(table.column("vector"), directory)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise BundleLoadError(f"{directory}: duplicate {id_column} values")
    return VectorTable(ids, vectors)


def _id_lists_column(table: pa.Table, column: str, where: str) -> IdLists:
    """A list<int64> column of a table sorted by its key as CSR IdLists (keys set by the caller)."""
    array = table.column(column).combine_chunks()
    if array.null_count:
        raise BundleLoadError(f"{where}: null {column} lists")
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return IdLists(np.zeros(0, np.int64), offsets - offsets[0], values)


@dataclass(frozen=True)
class UserLists:
    """Per user, from the published ``features/user_lists`` artifact (most recent first, capped by the job).

    Attributes:
        user_ids: int64 (U,) sorted: every user the dataset knows, with or without history.
        engaged: recent positively engaged posts (collaborative expansion, interest).
        seen: posts the user had any event on (excluded from candidates).
        followees: accounts the user follows (followed-authors source).
    """

    user_ids: np.ndarray
    engaged: IdLists
    seen: IdLists
    followees: IdLists


USER_LIST_COLUMNS = ("engaged", "seen", "followees")


def read_user_lists(directory: str) -> UserLists:
    """A features/user_lists artifact (user_id, engaged, seen, followees) as CSR lists keyed by user."""
    table = read_table(directory, ["user_id", *USER_LIST_COLUMNS]).sort_by("user_id")
    user_ids = table.column("user_id").to_numpy().astype(np.int64)
    if len(user_ids) > 1 and (user_ids[1:] == user_ids[:-1]).any():
        raise BundleLoadError(f"{directory}: duplicate user_id values")
    lists = {}
    for column in USER_LIST_COLUMNS:
        csr = _id_lists_column(table, column, directory)
        lists[column] = IdLists(user_ids, csr.offsets, csr.values)
    return UserLists(user_ids, **lists)


@dataclass(frozen=True)
class PostCatalog:
    """What the candidate sources need of every post, from the published ``features/post`` artifact.

    Attributes:
        post_ids: int64 (P,) sorted; author_ids: int64 (P,); created_at_us: int64 (P,) unix micros.
        engagements_so_far: float64 (P,) positive engagements up to the snapshot.
        snapshot_us: the artifact's snapshot time (the dataset's last engagement).
        author_posts: author id -> that author's posts, newest first.
        topics: float32 (P, K) each post's topic mixture (rows sum to 1, or 0 for a post without known terms).
        author_topics: each author's mean topic mixture over all their posts in the catalog.
    """

    post_ids: np.ndarray
    author_ids: np.ndarray
    created_at_us: np.ndarray
    engagements_so_far: np.ndarray
    snapshot_us: int
    author_posts: IdLists
    topics: np.ndarray
    author_topics: VectorTable

    def topic_rows(self, post_ids: np.ndarray) -> np.ndarray:
        """float32 (B, K) topic mixtures of these posts; zeros for posts not in the catalog."""
        post_ids = np.asarray(post_ids, dtype=np.int64)
        if len(self.post_ids) == 0:
            return np.zeros((len(post_ids), self.topics.shape[1]), np.float32)
        rows = np.minimum(np.searchsorted(self.post_ids, post_ids), len(self.post_ids) - 1)
        return np.where((self.post_ids[rows] == post_ids)[:, None], self.topics[rows], 0.0).astype(np.float32)


def mean_by_key(keys: np.ndarray, vectors: np.ndarray) -> VectorTable:
    """Per distinct key, the mean of its rows' vectors."""
    unique, inverse = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    sums = np.zeros((len(unique), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    return VectorTable(unique, (sums / np.maximum(counts, 1)).astype(np.float32))


def read_post_catalog(directory: str, snapshot_us: int, author_posts_cap: int) -> PostCatalog:
    """The candidate-side columns of a features/post artifact (post_id, author_id, created_at_us, counts, topics)."""
    table = read_table(
        directory, ["post_id", "author_id", "created_at_us", "post_engagements_so_far", TOPICS_COLUMN]
    ).sort_by("post_id")
    post_ids = table.column("post_id").to_numpy().astype(np.int64)
    author_ids = table.column("author_id").to_numpy().astype(np.int64)
    created_at_us = table.column("created_at_us").to_numpy().astype(np.int64)
    topics = vectors_from_arrow(table.column(TOPICS_COLUMN), f"{directory} ({TOPICS_COLUMN})")
    return PostCatalog(
        post_ids=post_ids,
        author_ids=author_ids,
        created_at_us=created_at_us,
        engagements_so_far=np.nan_to_num(
            table.column("post_engagements_so_far").to_numpy(zero_copy_only=False).astype(np.float64)
        ),
        snapshot_us=int(snapshot_us),
        author_posts=IdLists.from_pairs(author_ids, post_ids, created_at_us, author_posts_cap),
        topics=topics,
        author_topics=mean_by_key(author_ids, topics),
    )
