"""Model inputs as numpy arrays: encode raw feature columns with the discretizer, per group.

The same encoding is used for training rows, batch export of splits and serving, so a feature
value means the same id everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ranking.config import GROUP_NAMES, RankerConfig
from ranking.discretizer import Discretizer


@dataclass(frozen=True)
class RankingExamples:
    """Encoded examples.

    Attributes:
        feature_ids: group -> int64 (N, F_g) hashed feature ids (one per sparse feature, fixed width).
        dense: group -> float32 (N, D_g) dense scalars then the group's dense vector (may be D_g = 0).
        labels: float32 (N, T) in {0, 1}, columns in ``config.tasks`` order.
        timestamps: int64 (N,) impression time (microseconds since the epoch).
    """

    feature_ids: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]
    labels: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: np.ndarray) -> RankingExamples:
        """Rows picked by an integer index or boolean mask (N,)."""
        return RankingExamples(
            feature_ids={g: a[index] for g, a in self.feature_ids.items()},
            dense={g: a[index] for g, a in self.dense.items()},
            labels=self.labels[index],
            timestamps=self.timestamps[index],
        )


def encode_group(
    config: RankerConfig,
    discretizer: Discretizer,
    group: str,
    columns: Mapping[str, np.ndarray],
    vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode one group's raw features.

    Args:
        config: ranker config (defines the group's features).
        discretizer: fitted discretizer.
        group: "user", "user_author" or "post".
        columns: feature name -> array (N,). Continuous NaN/inf and categorical None map to the
            feature's missing id; dense scalars must be finite.
        vectors: float array (N, dense_vector_dim) when the group has a dense vector; rows of a
            missing vector should be zeros.

    Returns:
        (ids int64 (N, F_g), dense float32 (N, D_g)).
    """
    group_config = config.groups[group]
    ids = discretizer.transform(columns, group_config.sparse_features)
    n = len(ids)
    missing = [name for name in group_config.dense_features if name not in columns]
    if missing:
        raise ValueError(f"input is missing dense features {missing} of group {group!r}")
    parts = [
        np.asarray(columns[name], dtype=np.float32).reshape(n, 1) for name in group_config.dense_features
    ]
    if group_config.dense_vector_dim:
        if vectors is None:
            raise ValueError(f"group {group!r} needs a dense vector of width {group_config.dense_vector_dim}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (n, group_config.dense_vector_dim):
            raise ValueError(
                f"group {group!r} vectors have shape {vectors.shape}, expected ({n}, {group_config.dense_vector_dim})"
            )
        parts.append(vectors)
    dense = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.float32)
    if not np.isfinite(dense).all():
        raise ValueError(f"dense inputs of group {group!r} contain NaN or inf; impute them before encoding")
    return ids, dense


def build_examples(
    config: RankerConfig,
    discretizer: Discretizer,
    columns: Mapping[str, np.ndarray],
    labels: np.ndarray,
    timestamps: np.ndarray,
    vectors: Mapping[str, np.ndarray] | None = None,
) -> RankingExamples:
    """Encode all groups of a table of raw rows.

    Args:
        config: ranker config.
        discretizer: fitted discretizer.
        columns: feature name -> array (N,) for every feature of every group.
        labels: {0, 1} array (N, T).
        timestamps: int64 (N,).
        vectors: group -> (N, D) dense vectors for groups that take one.

    Returns:
        RankingExamples.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[1] != len(config.tasks):
        raise ValueError(f"labels must have shape (N, {len(config.tasks)}), got {labels.shape}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    ids, dense = {}, {}
    for group in GROUP_NAMES:
        ids[group], dense[group] = encode_group(
            config, discretizer, group, columns, None if vectors is None else vectors.get(group)
        )
        if len(ids[group]) != len(labels):
            raise ValueError(f"group {group!r} has {len(ids[group])} rows but labels have {len(labels)}")
    return RankingExamples(ids, dense, labels, np.asarray(timestamps, dtype=np.int64))


def empty_row_columns(config: RankerConfig, group: str) -> dict[str, np.ndarray]:
    """One raw row of an entity with no history: ``empty_row_values``, everything else missing.

    Returns:
        feature name -> array (1,) (NaN / None for missing; 0.0 for dense scalars not listed).
    """
    group_config = config.groups[group]
    columns: dict[str, np.ndarray] = {}
    for name in group_config.continuous_features:
        columns[name] = np.asarray([group_config.empty_row_values.get(name, np.nan)], dtype=np.float64)
    for name in group_config.categorical_features:
        columns[name] = np.asarray([group_config.empty_row_values.get(name)], dtype=object)
    for name in group_config.dense_features:
        columns[name] = np.asarray([group_config.empty_row_values.get(name, 0.0)], dtype=np.float64)
    return columns
