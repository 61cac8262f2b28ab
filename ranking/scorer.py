"""Serving-side scoring with precomputed user and user-author vectors.

The batch export jobs run the user and user-author splits over all users and the pairs that
matter; at serving time only the post split and the head run. A user or (user, author) pair that
was not exported gets a default vector: the split's output on the group's empty row (the feature
values of an entity with no history, ``FeatureGroupConfig.empty_row_values``).

This is plain numpy/torch so that ``serving/app.py`` and tests call it without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ranking.calibration import Calibration
from ranking.config import RankerConfig
from ranking.discretizer import Discretizer
from ranking.examples import empty_row_columns, encode_group
from ranking.model import GroupSplit, SplitRanker, export_head, export_split


@torch.no_grad()
def compute_split_vectors(
    split: GroupSplit, ids: np.ndarray, dense: np.ndarray, batch_size: int = 8192
) -> np.ndarray:
    """Run a split over encoded rows.

    Args:
        split: an exported GroupSplit.
        ids: int64 (N, F) encoded ids.
        dense: float32 (N, D) dense inputs.
        batch_size: rows per forward pass.

    Returns:
        float32 (N, group_embedding_dim).
    """
    out = [
        split(torch.from_numpy(ids[s : s + batch_size]), torch.from_numpy(dense[s : s + batch_size])).numpy()
        for s in range(0, len(ids), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, split.output_dim), dtype=np.float32)


class RankerScorer:
    """Scores (user, post) pairs from precomputed user / user-author vectors plus post features."""

    def __init__(
        self,
        model: SplitRanker,
        config: RankerConfig,
        discretizer: Discretizer,
        calibration: Calibration | None,
        user_ids: np.ndarray,
        user_vectors: np.ndarray,
        pair_user_ids: np.ndarray,
        pair_author_ids: np.ndarray,
        pair_vectors: np.ndarray,
    ) -> None:
        """Args:
        model: a trained SplitRanker (its post split and head are used).
        config: its config.
        discretizer: its discretizer.
        calibration: applied to the probabilities when given.
        user_ids: int64 (U,); user_vectors: float32 (U, D_user).
        pair_user_ids, pair_author_ids: int64 (P,); pair_vectors: float32 (P, D_user_author).
        """
        if not isinstance(model, SplitRanker):
            raise ValueError(f"RankerScorer needs a split ranker, got {type(model).__name__}")
        self._config = config
        self._discretizer = discretizer
        self._calibration = calibration
        self._post_split = export_split(model, "post")
        self._head = export_head(model)
        # Sorted id arrays searched with np.searchsorted: a scoring call looks up hundreds of rows at
        # once, which per-row dict lookups made the largest cost of a /v1/recommend call.
        user_ids = np.asarray(user_ids, dtype=np.int64)
        by_user = np.argsort(user_ids, kind="stable")
        self._user_ids = user_ids[by_user]
        self._user_vectors = np.asarray(user_vectors, dtype=np.float32)[by_user]
        pair_user_ids = np.asarray(pair_user_ids, dtype=np.int64)
        pair_author_ids = np.asarray(pair_author_ids, dtype=np.int64)
        by_pair = np.lexsort((pair_author_ids, pair_user_ids))
        self._pair_user_ids = pair_user_ids[by_pair]
        self._pair_author_ids = pair_author_ids[by_pair]
        self._pair_vectors = np.asarray(pair_vectors, dtype=np.float32)[by_pair]
        self.default_user_vector = self._default_vector(model, "user")
        self.default_pair_vector = self._default_vector(model, "user_author")
        for name, vectors, default in (
            ("user", self._user_vectors, self.default_user_vector),
            ("user-author", self._pair_vectors, self.default_pair_vector),
        ):
            if vectors.ndim != 2 or vectors.shape[1] != default.shape[0]:
                raise ValueError(
                    f"{name} vectors have shape {vectors.shape}, expected (*, {default.shape[0]})"
                )

    def _default_vector(self, model: SplitRanker, group: str) -> np.ndarray:
        ids, dense = encode_group(
            self._config,
            self._discretizer,
            group,
            empty_row_columns(self._config, group),
            self._empty_vector(group),
        )
        return compute_split_vectors(export_split(model, group), ids, dense)[0]

    def _empty_vector(self, group: str) -> np.ndarray | None:
        dim = self._config.groups[group].dense_vector_dim
        return np.zeros((1, dim), dtype=np.float32) if dim else None

    def lookup_user(self, user_id: int) -> np.ndarray:
        """The user's exported vector, or the default one. float32 (D_user,)."""
        return self.lookup_users(np.asarray([user_id]))[0]

    def lookup_users(self, user_ids: np.ndarray) -> np.ndarray:
        """Exported user vectors, the default one for users not exported. float32 (N, D_user)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        out = np.tile(self.default_user_vector, (len(user_ids), 1))
        if len(self._user_ids) and len(user_ids):
            pos = np.minimum(np.searchsorted(self._user_ids, user_ids), len(self._user_ids) - 1)
            found = self._user_ids[pos] == user_ids
            out[found] = self._user_vectors[pos[found]]
        return out

    def lookup_pairs(self, user_ids: np.ndarray, author_ids: np.ndarray) -> np.ndarray:
        """Exported user-author vectors, defaults for unseen pairs. float32 (N, D_user_author)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        author_ids = np.asarray(author_ids, dtype=np.int64)
        out = np.tile(self.default_pair_vector, (len(user_ids), 1))
        if not len(self._pair_user_ids) or not len(user_ids):
            return out
        # One binary search per distinct user (a recommend call has one) for its block of pairs, then
        # the authors within that block.
        order = np.argsort(user_ids, kind="stable")
        users, starts = np.unique(user_ids[order], return_index=True)
        blocks_lo = np.searchsorted(self._pair_user_ids, users, side="left")
        blocks_hi = np.searchsorted(self._pair_user_ids, users, side="right")
        for rows, lo, hi in zip(np.split(order, starts[1:]), blocks_lo.tolist(), blocks_hi.tolist(), strict=True):
            if lo == hi:
                continue
            authors = self._pair_author_ids[lo:hi]
            pos = np.minimum(np.searchsorted(authors, author_ids[rows]), hi - lo - 1)
            found = authors[pos] == author_ids[rows]
            out[rows[found]] = self._pair_vectors[lo + pos[found]]
        return out

    @torch.no_grad()
    def score_pairs(
        self,
        user_ids: np.ndarray,
        author_ids: np.ndarray,
        post_columns: Mapping[str, np.ndarray],
        post_vectors: np.ndarray | None = None,
        calibrated: bool = True,
    ) -> np.ndarray:
        """Score rows of (user, post); each row names the user, the post's author and its features.

        Args:
            user_ids: int64 (N,).
            author_ids: int64 (N,) author of each post.
            post_columns: post feature name -> array (N,).
            post_vectors: float32 (N, post dense_vector_dim) when the post group takes one.
            calibrated: apply the scorer's calibration (when it has one). False gives the model's own
                sigmoid outputs, which order posts strictly; see ``calibrate``.

        Returns:
            float64 (N, T) probabilities.
        """
        user_ids = np.asarray(user_ids)
        post_ids, post_dense = encode_group(
            self._config, self._discretizer, "post", post_columns, post_vectors
        )
        if len(post_ids) != len(user_ids) or len(author_ids) != len(user_ids):
            raise ValueError(
                f"row counts differ: users {len(user_ids)}, authors {len(author_ids)}, posts {len(post_ids)}"
            )
        if not len(user_ids):
            return np.zeros((0, len(self._config.tasks)))
        user_vectors = self.lookup_users(user_ids)
        pair_vectors = self.lookup_pairs(user_ids, np.asarray(author_ids))
        post_vectors_out = self._post_split(torch.from_numpy(post_ids), torch.from_numpy(post_dense))
        logits = self._head(
            torch.cat(
                [torch.from_numpy(user_vectors), torch.from_numpy(pair_vectors), post_vectors_out], dim=1
            )
        )
        probabilities = torch.sigmoid(logits).numpy().astype(np.float64)
        return self.calibrate(probabilities) if calibrated else probabilities

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The calibrated probabilities of ``score_pairs(..., calibrated=False)`` outputs.

        Isotonic calibration is a step function: it maps whole ranges of model outputs to one value,
        so it is right for reading probabilities off but must not decide the order of posts.

        Args:
            probabilities: float64 (N, T) uncalibrated.

        Returns:
            float64 (N, T); the input itself when the scorer has no calibration.
        """
        return self._calibration.apply(probabilities) if self._calibration is not None else probabilities

    def score(
        self,
        user_id: int,
        post_ids: np.ndarray,
        post_author_ids: np.ndarray,
        post_columns: Mapping[str, np.ndarray],
        post_vectors: np.ndarray | None = None,
    ) -> np.ndarray:
        """Score candidate posts for one user.

        Args:
            user_id: the user.
            post_ids: int64 (P,) candidate posts (their features are given row-aligned).
            post_author_ids: int64 (P,).
            post_columns: post feature name -> array (P,).
            post_vectors: float32 (P, D) content vectors when the post group takes them.

        Returns:
            float64 (P, T) probabilities, columns in ``config.tasks`` order.
        """
        post_ids = np.asarray(post_ids)
        users = np.full(len(post_ids), int(user_id), dtype=np.int64)
        return self.score_pairs(users, np.asarray(post_author_ids), post_columns, post_vectors)
