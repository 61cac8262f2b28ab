"""Warm start: map a parent checkpoint's parameters onto a new model by name and shape.

A parameter is *kept* when the parent has the same name and shape, *grown* when it is an embedding
table whose row count increased with the hash space (the parent's rows are copied; the discretizer
never moves old ids, so row i means the same feature bin in both), *added* when only the new model
has it, *dropped* when only the parent has it, and *shape-mismatched* otherwise (left at its fresh
initialisation and reported). A checkpoint from which nothing can be kept, or whose embedding
tables are larger than the new model's (ids would be truncated), raises ValueError.
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
    parent_state: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """Merge a parent state dict into a target state dict.

    Args:
        parent_state: the parent checkpoint's state dict.
        target_state: the freshly initialised model's state dict (defines names and shapes).

    Returns:
        (merged state dict with the target's names and shapes, report).

    Raises:
        ValueError: nothing in the parent matches the target, or an embedding table would shrink.
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
    if not report.kept and not report.grown:
        raise ValueError(
            "warm-start checkpoint is incompatible with the model: no parameter matches by name and shape "
            f"(checkpoint keys e.g. {list(parent_state)[:3]}, model keys e.g. {list(target_state)[:3]})"
        )
    return merged, report


def warm_start(model: nn.Module, parent_state: Mapping[str, torch.Tensor]) -> WarmStartReport:
    """Load what can be loaded from ``parent_state`` into ``model`` in place; returns the report."""
    merged, report = map_state_dict(parent_state, model.state_dict())
    model.load_state_dict(merged)
    return report
