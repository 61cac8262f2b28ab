"""Warm start: map a parent checkpoint's parameters onto a new model by name and shape.

A parameter is *kept* when the parent has the same name and shape, *grown* when it is an embedding
table whose row count increased with the hash space (the parent's rows are copied; the discretizer
never moves old ids, so row i means the same feature bin in both), *added* when only the new model
has it, *dropped* when only the parent has it, and *shape-mismatched* otherwise (left at its fresh
initialisation and reported). A checkpoint from which less than ``min_kept_fraction`` of the new
model's parameter tensors can be loaded (another architecture), or whose embedding tables are larger
than the new model's (ids would be truncated), raises ValueError rather than silently training a
mostly fresh model under a warm-start label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class WarmStartReport:
    """What happened to each parameter name during a warm start."""

    kept: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    shape_mismatched: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (for manifests)."""
        return asdict(self)

    def summary(self) -> str:
        """One line: counts of each category."""
        return (
            f"warm start: kept {len(self.kept)}, grown {len(self.grown)}, added {len(self.added)}, "
            f"dropped {len(self.dropped)}, shape-mismatched {len(self.shape_mismatched)}"
        )


def _is_embedding_table(name: str) -> bool:
    return name.endswith("bag.weight")


def map_state_dict(
    parent_state: Mapping[str, torch.Tensor],
    target_state: Mapping[str, torch.Tensor],
    min_kept_fraction: float = 0.5,
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """Merge a parent state dict into a target state dict.

    Args:
        parent_state: the parent checkpoint's state dict.
        target_state: the freshly initialised model's state dict (defines names and shapes).
        min_kept_fraction: least share of the target's tensors that must be kept or grown.

    Returns:
        (merged state dict with the target's names and shapes, report).

    Raises:
        ValueError: too little of the parent matches the target, or an embedding table would shrink.
    """
    report = WarmStartReport()
    merged: dict[str, torch.Tensor] = {}
    for name, target in target_state.items():
        if name not in parent_state:
            report.added.append(name)
            merged[name] = target.clone()
            continue
        source = parent_state[name]
        if source.shape == target.shape:
            report.kept.append(name)
            merged[name] = source.detach().clone().to(target.dtype)
        elif (
            _is_embedding_table(name)
            and source.dim() == 2
            and source.shape[1] == target.shape[1]
            and source.shape[0] < target.shape[0]
        ):
            grown = target.clone()
            grown[: source.shape[0]] = source.to(target.dtype)
            report.grown.append(name)
            merged[name] = grown
        elif _is_embedding_table(name) and source.dim() == 2 and source.shape[0] > target.shape[0]:
            raise ValueError(
                f"warm-start checkpoint's {name} has {source.shape[0]} rows but the new model has "
                f"{target.shape[0]}: the hash space may only grow across retrains"
            )
        else:
            report.shape_mismatched[name] = (list(source.shape), list(target.shape))
            merged[name] = target.clone()
    report.dropped = [name for name in parent_state if name not in target_state]
    loaded = len(report.kept) + len(report.grown)
    if loaded < min_kept_fraction * max(len(target_state), 1):
        raise ValueError(
            f"warm-start checkpoint is incompatible with the model: only {loaded} of {len(target_state)} "
            f"parameters match by name and shape (checkpoint keys e.g. {list(parent_state)[:3]}, "
            f"model keys e.g. {list(target_state)[:3]})"
        )
    return merged, report


def warm_start(model: nn.Module, parent_state: Mapping[str, torch.Tensor]) -> WarmStartReport:
    """Load what can be loaded from ``parent_state`` into ``model`` in place; returns the report."""
    merged, report = map_state_dict(parent_state, model.state_dict())
    model.load_state_dict(merged)
    return report
