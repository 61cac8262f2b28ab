"""The recommend blend: its features, its fit, its config contract, and the order it serves."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from evaluation.blend import fit_blend
from serving.arrays import IdLists, PostCatalog, UserLists, mean_by_key
from serving.blend import MAX_AGE_HOURS, RecommendBlend, blend_features, topic_profiles
from serving.config import BLEND_FEATURES, RecommendBlendConfig, ServeConfig
from serving.recommend import select_top

HOUR_US = 3_600_000_000
SNAPSHOT_US = 1_000 * HOUR_US


def catalog(
    ages_hours: list[float], engagements: list[float], topics: np.ndarray | None = None, authors: list[int] | None = None
) -> PostCatalog:
    n = len(ages_hours)
    topics = np.zeros((n, 2), np.float32) if topics is None else np.asarray(topics, np.float32)
    author_ids = np.ones(n, np.int64) if authors is None else np.asarray(authors, np.int64)
    return PostCatalog(
        post_ids=np.arange(1, n + 1, dtype=np.int64),
        author_ids=author_ids,
        created_at_us=(SNAPSHOT_US - np.asarray(ages_hours) * HOUR_US).astype(np.int64),
        engagements_so_far=np.asarray(engagements, dtype=np.float64),
        snapshot_us=SNAPSHOT_US,
        author_posts=IdLists(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)),
        topics=topics,
        author_topics=mean_by_key(author_ids, topics),
    )


def user_lists(user_id: int, seen: list[int], engaged: list[int], followees: list[int]) -> UserLists:
    def one(values: list[int]) -> IdLists:
        return IdLists(np.asarray([user_id], np.int64), np.asarray([0, len(values)], np.int64), np.asarray(values, np.int64))

    return UserLists(np.asarray([user_id], np.int64), one(engaged), one(seen), one(followees))


NO_HISTORY = user_lists(7, [], [], [])


def candidate(post_id: int, fused: float, *sources: str) -> dict:
    return {"post_id": post_id, "source": sources[0], "score": 1.0, "scores": dict.fromkeys(sources, 1.0),
            "fused_score": fused}


def test_features_read_the_ranker_score_fusion_age_popularity_and_sources():
    posts = catalog([2.0, 30.0, 500.0], [0.0, 9.0, 1.0])
    candidates = [candidate(3, 0.5, "trending"), candidate(1, 0.01, "followed", "content"), candidate(2, 0.0, "content")]
    features = blend_features(candidates, np.array([0.2, 0.4, -np.inf]), posts, NO_HISTORY, 7)
    assert features.shape == (3, len(BLEND_FEATURES))
    column = {name: features[:, i] for i, name in enumerate(BLEND_FEATURES)}
    assert np.allclose(column["log_rank_score"][:2], np.log([0.2, 0.4]))
    assert np.isfinite(column["log_rank_score"][2]) and column["log_rank_score"][2] < -20  # unscored: a floor, not -inf
    assert np.allclose(column["log_fused_score"][:2], np.log([0.5, 0.01])) and np.isfinite(column["log_fused_score"][2])
    assert column["age_hours"].tolist() == [MAX_AGE_HOURS, 2.0, 30.0]  # capped at a week
    assert np.allclose(column["log1p_engagements"], np.log1p([1.0, 0.0, 9.0]))
    assert column["in_trending"].tolist() == [1, 0, 0] and column["in_content"].tolist() == [0, 1, 1]
    assert column["in_followed"].tolist() == [0, 1, 0] and column["in_collaborative"].tolist() == [0, 0, 0]
    # A user with no history and no followees has no topic profile: every affinity is 0.
    for profile in ("seen", "engaged", "followed"):
        assert column[f"topic_affinity_{profile}"].tolist() == [0.0, 0.0, 0.0]


def test_topic_affinities_compare_each_candidate_with_what_the_user_saw_engaged_with_and_follows():
    # Posts 1-3 are on topic 0, 4-5 on topic 1, 6 half and half; authors: 10 wrote 1-3, 20 wrote 4-6.
    topics = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0.5, 0.5]])
    posts = catalog([1.0] * 6, [0.0] * 6, topics, authors=[10, 10, 10, 20, 20, 20])
    # Saw 1, 4 and 5, engaged with 1 only, follows author 20 (whose posts lean to topic 1) and an unknown id.
    lists = user_lists(7, seen=[1, 4, 5], engaged=[1], followees=[20, 999])
    profiles = topic_profiles(7, posts, lists)
    assert np.allclose(profiles, [[1 / 3, 2 / 3], [1.0, 0.0], [0.5 / 3, 2.5 / 3]])
    candidates = [candidate(2, 0.1, "content"), candidate(6, 0.1, "content"), candidate(5, 0.1, "content")]
    features = blend_features(candidates, np.ones(3), posts, lists, 7)
    column = {name: features[:, i] for i, name in enumerate(BLEND_FEATURES)}
    assert np.allclose(column["topic_affinity_engaged"], [1.0, 0.5, 0.0])  # engaged on topic 0 only
    assert np.allclose(column["topic_affinity_seen"], [1 / 3, 0.5, 2 / 3])
    assert np.allclose(column["topic_affinity_followed"], [0.5 / 3, 0.5, 2.5 / 3])


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
    n = len(BLEND_FEATURES)
    blend = RecommendBlend(np.arange(1.0, n + 1.0), np.zeros(n), np.full(n, 2.0))
    config = ServeConfig(recommend_blend=blend.to_config().model_dump())
    back = RecommendBlend.from_config(config.recommend_blend)
    assert back is not None and np.array_equal(back.weights, blend.weights)
    assert RecommendBlend.from_config(ServeConfig().recommend_blend) is None
    good = blend.to_config().model_dump()
    with pytest.raises(ValidationError, match="recommend_blend.features must be"):
        RecommendBlendConfig(**{**good, "features": list(reversed(BLEND_FEATURES))})
    with pytest.raises(ValidationError, match=f"recommend_blend.weights must hold {len(BLEND_FEATURES)} finite numbers"):
        RecommendBlendConfig(**{**good, "weights": [1.0, 2.0]})
    with pytest.raises(ValidationError, match="recommend_blend.scale must be positive"):
        RecommendBlendConfig(**{**good, "scale": [0.0] * len(BLEND_FEATURES)})


def test_the_blend_orders_and_its_ties_go_to_the_ranker_score():
    candidates = [candidate(i, 0.1, "content") for i in range(1, 5)]
    scored = {"rank_score": np.array([0.9, 0.1, 0.5, 0.3]), "score": np.full(4, 0.2)}
    top = select_top(candidates, scored, 4, blend_score=np.array([0.0, 2.0, 1.0, 1.0]))
    # 2 has the best blend; 3 and 4 tie in it and the ranker prefers 3; 1 is last despite its ranker score.
    assert [t["post_id"] for t in top] == [2, 3, 4, 1]
    assert [t["blend_score"] for t in top] == [2.0, 1.0, 1.0, 0.0] and top[0]["rank_score"] == 0.1
    assert all(t["blend_score"] is None for t in select_top(candidates, scored, 4))
