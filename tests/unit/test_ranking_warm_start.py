"""Warm start: name/shape mapping report, grown hash space, incompatible checkpoints."""

import numpy as np
import pytest
import torch
from test_ranking_model import toy_config, toy_inputs

from ranking.config import DiscretizerConfig
from ranking.model import build_ranker
from ranking.warm_start import map_state_dict, warm_start


def test_same_architecture_keeps_every_parameter():
    torch.manual_seed(0)
    parent = build_ranker(toy_config())
    torch.manual_seed(1)
    child = build_ranker(toy_config())
    report = warm_start(child, parent.state_dict())
    assert len(report.kept) == len(parent.state_dict()) and not (
        report.added or report.dropped or report.shape_mismatched
    )
    ids, dense = toy_inputs(3)
    torch.testing.assert_close(child(ids, dense), parent(ids, dense))


def test_grown_hash_space_copies_rows_and_reports_changes():
    parent = build_ranker(toy_config())
    config = toy_config(discretizer=DiscretizerConfig(num_bins=4, hash_space_size=128), head_sizes=(12, 6, 3))
    child = build_ranker(config)
    report = warm_start(child, parent.state_dict())
    assert sorted(report.grown) == [
        "splits.post.inputs.bag.weight",
        "splits.user.inputs.bag.weight",
        "splits.user_author.inputs.bag.weight",
    ]
    old = parent.splits["user"].inputs.bag.weight
    torch.testing.assert_close(child.splits["user"].inputs.bag.weight[:64], old)
    # The extra head layer: new PReLU/Linear keys are added, the resized output layer is shape-mismatched.
    assert "head.mlp.4.weight" in report.added
    assert report.shape_mismatched["head.logits.weight"] == ([3, 6], [3, 3])
    assert "splits.user.out.weight" in report.kept
    assert report.summary().startswith("warm start: kept")


def test_dropped_keys_are_reported():
    parent = build_ranker(toy_config(head_sizes=(12, 6, 3)))
    _, report = map_state_dict(parent.state_dict(), build_ranker(toy_config()).state_dict())
    assert "head.mlp.4.weight" in report.dropped


def test_incompatible_checkpoints_raise():
    split = build_ranker(toy_config())
    fc = build_ranker(toy_config(architecture="fully_connected"))
    with pytest.raises(ValueError, match="incompatible"):
        warm_start(split, {"encoder.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="hash space may only grow"):
        big = build_ranker(toy_config(discretizer=DiscretizerConfig(num_bins=4, hash_space_size=128)))
        warm_start(split, big.state_dict())
    # A fully-connected checkpoint shares no parameter names with a split model.
    with pytest.raises(ValueError, match="incompatible"):
        warm_start(split, {k: v for k, v in fc.state_dict().items() if "bag" not in k})
    assert np.isfinite(split.head.logits.weight.detach().numpy()).all()
