"""Ranker model: split vs fully-connected shapes, exported splits, config validation."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ranking.config import DiscretizerConfig, FeatureGroupConfig, RankerConfig
from ranking.model import FullyConnectedRanker, SplitRanker, build_ranker, export_split


def toy_config(**overrides) -> RankerConfig:
    groups = {
        "user": FeatureGroupConfig(
            continuous_features=("u_activity", "u_age"),
            categorical_features=("u_country",),
            embedding_bag_dim=8,
            mlp_sizes=(16,),
            group_embedding_dim=6,
        ),
        "user_author": FeatureGroupConfig(
            continuous_features=("ua_engagements",),
            dense_features=("ua_count",),
            embedding_bag_dim=8,
            mlp_sizes=(16,),
            group_embedding_dim=4,
        ),
        "post": FeatureGroupConfig(
            continuous_features=("p_length",),
            dense_features=("p_engagements",),
            dense_vector_dim=5,
            embedding_bag_dim=8,
            mlp_sizes=(16, 8),
            group_embedding_dim=7,
        ),
    }
    base = dict(
        groups=groups,
        discretizer=DiscretizerConfig(num_bins=4, hash_space_size=64),
        head_sizes=(12, 6),
        fully_connected_sizes=(20,),
        tasks=("engage", "like", "reply"),
    )
    base.update(overrides)
    return RankerConfig(**base)


def toy_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = {
        "user": torch.randint(0, 64, (batch, 3), generator=g),
        "user_author": torch.randint(0, 64, (batch, 1), generator=g),
        "post": torch.randint(0, 64, (batch, 1), generator=g),
    }
    dense = {
        "user": torch.zeros(batch, 0),
        "user_author": torch.rand(batch, 1, generator=g) * 10,
        "post": torch.randn(batch, 6, generator=g),
    }
    return ids, dense


def test_split_and_fully_connected_have_task_logits():
    ids, dense = toy_inputs(5)
    split = build_ranker(toy_config())
    fc = build_ranker(toy_config(architecture="fully_connected"))
    assert isinstance(split, SplitRanker) and isinstance(fc, FullyConnectedRanker)
    assert split(ids, dense).shape == (5, 3)
    assert fc(ids, dense).shape == (5, 3)
    # The head sees the concatenated group embeddings: 6 + 4 + 7.
    assert split.head.mlp[0].in_features == 17
    # The FC baseline sees the raw sparse/dense inputs of all groups: 3 bags of 8 + 1 + 6 dense.
    assert fc.head.mlp[0].in_features == 31
    assert any(isinstance(m, torch.nn.PReLU) for m in split.head.modules())


def test_exported_split_recomputes_the_models_group_embedding():
    ids, dense = toy_inputs(4)
    model = build_ranker(toy_config()).eval()
    user = export_split(model, "user")
    pair = export_split(model, "user_author")
    assert user(ids["user"], dense["user"]).shape == (4, 6)
    assert pair(ids["user_author"], dense["user_author"]).shape == (4, 4)
    with torch.no_grad():
        parts = [export_split(model, g)(ids[g], dense[g]) for g in ("user", "user_author", "post")]
        torch.testing.assert_close(model.head(torch.cat(parts, 1)), model(ids, dense))
    # A standalone copy: training the model further does not change the exported split.
    with torch.no_grad():
        model.splits["user"].out.bias.add_(1.0)
    assert not torch.allclose(
        user(ids["user"], dense["user"]), model.splits["user"](ids["user"], dense["user"])
    )


def test_export_split_rejects_fc_and_unknown_group():
    with pytest.raises(ValueError, match="split ranker"):
        export_split(build_ranker(toy_config(architecture="fully_connected")), "user")
    with pytest.raises(ValueError, match="unknown split"):
        export_split(build_ranker(toy_config()), "author")


def test_config_rejects_unknown_keys_and_bad_groups():
    with pytest.raises(ValidationError):
        RankerConfig(head_size=(1,))
    with pytest.raises(ValidationError, match="exactly"):
        RankerConfig(groups={"user": FeatureGroupConfig(continuous_features=("a",))})
    groups = dict(toy_config().groups)
    groups["post"] = FeatureGroupConfig(continuous_features=("u_age",))
    with pytest.raises(ValidationError, match="u_age"):
        RankerConfig(groups=groups)
    assert np.isclose(RankerConfig().training.learning_rate, 2e-3)
