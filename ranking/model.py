"""Split-network ranker and its fully-connected baseline.

Split architecture: each feature group (user, user_author, post) has its own split — an embedding
bag over the group's hashed feature ids, concatenated with the group's dense inputs, then an MLP
down to a group embedding. The three group embeddings are concatenated and a PReLU head outputs
one logit per task. Because a split sees only its own group's features, the user and user-author
splits can be run in batch (``export_split``) and looked up at serving time.

Fully-connected baseline: the same sparse layers and dense inputs, concatenated, then one PReLU
MLP over everything (no group bottleneck, so nothing can be precomputed).

Dense scalar inputs are compressed with signed log1p inside the model, so raw counts can be fed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ranking.config import GROUP_NAMES, FeatureGroupConfig, RankerConfig


def _signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


class SparseDenseInput(nn.Module):
    """Embedding bag over a group's ids concatenated with its (compressed) dense inputs."""

    def __init__(self, group: FeatureGroupConfig, hash_space_size: int) -> None:
        super().__init__()
        self.num_sparse = len(group.sparse_features)
        self.num_dense_scalars = len(group.dense_features)
        self.dense_vector_dim = group.dense_vector_dim
        self.bag = (
            nn.EmbeddingBag(hash_space_size, group.embedding_bag_dim, mode="sum") if self.num_sparse else None
        )
        if self.bag is not None:
            # Small init: a sum over ~10 ids should start near unit scale.
            nn.init.normal_(self.bag.weight, std=0.05)
        self.output_dim = (group.embedding_bag_dim if self.num_sparse else 0) + group.dense_width

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Args: ids int64 (B, F); dense float32 (B, D). Returns float32 (B, output_dim)."""
        parts = []
        if self.bag is not None:
            parts.append(self.bag(ids))
        if self.num_dense_scalars:
            parts.append(_signed_log1p(dense[:, : self.num_dense_scalars]))
        if self.dense_vector_dim:
            parts.append(dense[:, self.num_dense_scalars :])
        return torch.cat(parts, dim=1)


def _mlp(input_dim: int, sizes: tuple[int, ...], activation: type[nn.Module]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = input_dim
    for size in sizes:
        layers += [nn.Linear(width, size), activation()]
        width = size
    return nn.Sequential(*layers), width


class GroupSplit(nn.Module):
    """One group's split: sparse/dense input -> MLP -> group embedding (B, group_embedding_dim)."""

    def __init__(self, group: FeatureGroupConfig, hash_space_size: int) -> None:
        super().__init__()
        self.inputs = SparseDenseInput(group, hash_space_size)
        self.mlp, width = _mlp(self.inputs.output_dim, group.mlp_sizes, nn.ReLU)
        self.out = nn.Linear(width, group.group_embedding_dim)
        self.output_dim = group.group_embedding_dim

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Args: ids int64 (B, F); dense float32 (B, D). Returns float32 (B, group_embedding_dim)."""
        return self.out(self.mlp(self.inputs(ids, dense)))


class Head(nn.Module):
    """PReLU MLP from concatenated group embeddings to one logit per task."""

    def __init__(self, input_dim: int, sizes: tuple[int, ...], num_tasks: int) -> None:
        super().__init__()
        self.mlp, width = _mlp(input_dim, sizes, nn.PReLU)
        self.logits = nn.Linear(width, num_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x float32 (B, input_dim). Returns logits float32 (B, T)."""
        return self.logits(self.mlp(x))


class SplitRanker(nn.Module):
    """Split-network ranker: one GroupSplit per group, concatenated, then the Head."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        size = config.discretizer.hash_space_size
        # Sized from the typed dict: through the ModuleDict an attribute is only a Tensor | Module to mypy.
        splits = {g: GroupSplit(config.groups[g], size) for g in GROUP_NAMES}
        self.splits = nn.ModuleDict(splits)
        self.head = Head(sum(s.output_dim for s in splits.values()), config.head_sizes, len(config.tasks))

    def forward(self, ids: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: per-group ids int64 (B, F_g) and dense float32 (B, D_g). Returns logits (B, T)."""
        return self.head(torch.cat([self.splits[g](ids[g], dense[g]) for g in GROUP_NAMES], dim=1))


class FullyConnectedRanker(nn.Module):
    """Baseline: the same inputs concatenated into one PReLU MLP."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        size = config.discretizer.hash_space_size
        inputs = {g: SparseDenseInput(config.groups[g], size) for g in GROUP_NAMES}
        self.inputs = nn.ModuleDict(inputs)
        self.head = Head(sum(i.output_dim for i in inputs.values()), config.fully_connected_sizes, len(config.tasks))

    def forward(self, ids: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: per-group ids int64 (B, F_g) and dense float32 (B, D_g). Returns logits (B, T)."""
        return self.head(torch.cat([self.inputs[g](ids[g], dense[g]) for g in GROUP_NAMES], dim=1))


def build_ranker(config: RankerConfig) -> SplitRanker | FullyConnectedRanker:
    """Build the architecture named by ``config.architecture`` (randomly initialised)."""
    if config.architecture == "split":
        return SplitRanker(config)
    return FullyConnectedRanker(config)


def export_split(model: nn.Module, group: str) -> GroupSplit:
    """A standalone copy of one group's split, in eval mode, for batch or serving use.

    Args:
        model: a SplitRanker.
        group: "user", "user_author" or "post".

    Returns:
        GroupSplit mapping (ids (B, F_g), dense (B, D_g)) to vectors (B, group_embedding_dim).
    """
    if not isinstance(model, SplitRanker):
        raise ValueError(f"only a split ranker has exportable splits, got {type(model).__name__}")
    if group not in model.splits:
        raise ValueError(f"unknown split {group!r}; expected one of {list(model.splits)}")
    split = model.splits[group]
    assert isinstance(split, GroupSplit), type(split)  # SplitRanker holds only GroupSplits
    return copy.deepcopy(split).eval()


def export_head(model: nn.Module) -> Head:
    """A standalone copy of the head of a SplitRanker, in eval mode."""
    if not isinstance(model, SplitRanker):
        raise ValueError(f"only a split ranker has an exportable head, got {type(model).__name__}")
    return copy.deepcopy(model.head).eval()
