"""Arrow readers and the id-keyed arrays serving holds: vector tables, CSR id lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from serving.errors import BundleLoadError

POSITIVE_EVENTS = ("like", "reply", "repost")


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
