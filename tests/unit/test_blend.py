"""The recommend blend: its features, its fit, its config contract, and the order it serves."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from serving.arrays import IdLists, PostCatalog
from serving.blend import MAX_AGE_HOURS, RecommendBlend, blend_features, fit_blend
from serving.config import BLEND_FEATURES, RecommendBlendConfig, ServeConfig
from serving.recommend import select_top

HOUR_US = 3_600_000_000
SNAPSHOT_US = 1_000 * HOUR_US


def catalog(ages_hours: list[float], engagements: list[float]) -> PostCatalog:
    n = len(ages_hours)
    return PostCatalog(
        post_ids=np.arange(1, n + 1, dtype=np.int64),
        author_ids=np.ones(n, np.int64),
        created_at_us=(SNAPSHOT_US - np.asarray(ages_hours) * HOUR_US).astype(np.int64),
        engagements_so_far=np.asarray(engagements, dtype=np.float64),
        snapshot_us=SNAPSHOT_US,
        author_posts=IdLists(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)),
    )


def candidate(post_id: int, fused: float, *sources: str) -> dict:
    return {"post_id": post_id, "source": sources[0], "score": 1.0, "scores": dict.fromkeys(sources, 1.0),
            "fused_score": fused}


def test_features_read_the_ranker_score_fusion_age_popularity_and_sources():
    posts = catalog([2.0, 30.0, 500.0], [0.0, 9.0, 1.0])
    candidates = [candidate(3, 0.5, "trending"), candidate(1, 0.01, "followed", "content"), candidate(2, 0.0, "content")]
    features = blend_features(candidates, np.array([0.2, 0.4, -np.inf]), posts)
    assert features.shape == (3, len(BLEND_FEATURES))
    column = {name: features[:, i] for i, name in enumerate(BLEND_FEATURES)}
    assert np.allclose(column["log_rank_score"][:2], np.log([0.2, 0.4]))
    assert np.isfinite(column["log_rank_score"][2]) and column["log_rank_score"][2] < -20  # unscored: a floor, not -inf
    assert np.allclose(column["log_fused_score"][:2], np.log([0.5, 0.01])) and np.isfinite(column["log_fused_score"][2])
    assert column["age_hours"].tolist() == [MAX_AGE_HOURS, 2.0, 30.0]  # capped at a week
    assert np.allclose(column["log1p_engagements"], np.log1p([1.0, 0.0, 9.0]))
    assert column["in_trending"].tolist() == [1, 0, 0] and column["in_content"].tolist() == [0, 1, 1]
    assert column["in_followed"].tolist() == [0, 1, 0] and column["in_collaborative"].tolist() == [0, 0, 0]


def test_fit_learns_that_fresh_posts_with_high_ranker_scores_are_engaged_with():
    rng = np.random.default_rng(0)
    n = 20_000
    features = np.zeros((n, len(BLEND_FEATURES)))
    features[:, 0] = np.log(rng.uniform(0.01, 0.5, n))  # log_rank_score
    features[:, 2] = rng.uniform(0, 48, n)  # age_hours
    features[:, 4] = rng.random(n) < 0.5  # in_content: no signal
    logit = -2.0 + 1.5 * features[:, 0] - 0.1 * features[:, 2]
    labels = rng.random(n) < 1 / (1 + np.exp(-logit))
    blend = fit_blend(features, labels)
    weight = dict(zip(BLEND_FEATURES, blend.weights, strict=True))
    assert weight["log_rank_score"] > 0.3 and weight["age_hours"] < -0.3 and abs(weight["in_content"]) < 0.1
    # Constant columns (sources never seen) get a unit scale, not a division by zero.
    assert blend.scale[BLEND_FEATURES.index("in_followed")] == 1.0 and np.isfinite(blend.score(features)).all()
    # The fitted score ranks the engaged rows above the rest far better than chance.
    scores = blend.score(features)
    assert scores[labels].mean() > scores[~labels].mean() + 1.0


def test_fit_with_one_class_only_names_the_problem():
    with pytest.raises(ValueError, match=r"all 3 candidates have the same label \(False\)"):
        fit_blend(np.zeros((3, len(BLEND_FEATURES))), np.zeros(3, bool))


def test_the_config_round_trips_and_rejects_a_blend_for_other_features():
    blend = RecommendBlend(np.arange(1.0, 9.0), np.zeros(8), np.full(8, 2.0))
    config = ServeConfig(recommend_blend=blend.to_config().model_dump())
    back = RecommendBlend.from_config(config.recommend_blend)
    assert back is not None and np.array_equal(back.weights, blend.weights)
    assert RecommendBlend.from_config(ServeConfig().recommend_blend) is None
    good = blend.to_config().model_dump()
    with pytest.raises(ValidationError, match="recommend_blend.features must be"):
        RecommendBlendConfig(**{**good, "features": list(reversed(BLEND_FEATURES))})
    with pytest.raises(ValidationError, match="recommend_blend.weights must hold 8 finite numbers"):
        RecommendBlendConfig(**{**good, "weights": [1.0, 2.0]})
    with pytest.raises(ValidationError, match="recommend_blend.scale must be positive"):
        RecommendBlendConfig(**{**good, "scale": [0.0] * 8})


def test_the_blend_orders_and_its_ties_go_to_the_ranker_score():
    candidates = [candidate(i, 0.1, "content") for i in range(1, 5)]
    scored = {"rank_score": np.array([0.9, 0.1, 0.5, 0.3]), "score": np.full(4, 0.2)}
    top = select_top(candidates, scored, 4, blend_score=np.array([0.0, 2.0, 1.0, 1.0]))
    # 2 has the best blend; 3 and 4 tie in it and the ranker prefers 3; 1 is last despite its ranker score.
    assert [t["post_id"] for t in top] == [2, 3, 4, 1]
    assert [t["blend_score"] for t in top] == [2.0, 1.0, 1.0, 0.0] and top[0]["rank_score"] == 0.1
    assert all(t["blend_score"] is None for t in select_top(candidates, scored, 4))
