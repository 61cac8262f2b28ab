"""Candidate sources over arrays (trending, followed) and the rank fusion, on hand-made catalogs."""

from __future__ import annotations

import numpy as np
import pytest

from serving.arrays import IdLists, PostCatalog, mean_by_key
from serving.candidates import (
    NUM_RANK_BUCKETS,
    RRF_K,
    SourceSettings,
    followed_posts,
    fuse,
    gather,
    posts_older_than,
    rank_buckets,
    rank_weights,
    top_unseen,
    trending_posts,
)
from serving.config import ServeConfig

HOUR_US = 3_600_000_000
SNAPSHOT_US = 1_000 * HOUR_US


def _catalog(rows: list[tuple[int, int, float, float]]) -> PostCatalog:
    """rows: (post_id, author_id, hours before the snapshot it was created, engagements so far)."""
    post_id, author, hours, engaged = (np.asarray(c) for c in zip(*sorted(rows), strict=True))
    created = SNAPSHOT_US - (hours * HOUR_US).astype(np.int64)
    return PostCatalog(
        post_ids=post_id.astype(np.int64),
        author_ids=author.astype(np.int64),
        created_at_us=created,
        engagements_so_far=engaged.astype(np.float64),
        snapshot_us=SNAPSHOT_US,
        author_posts=IdLists.from_pairs(author, post_id, created, cap=10),
        topics=np.zeros((len(post_id), 1), np.float32),
        author_topics=mean_by_key(author, np.zeros((len(post_id), 1), np.float32)),
    )


CATALOG = _catalog(
    [
        # post, author, hours old, engagements
        (1, 100, 2.0, 5.0),
        (2, 100, 30.0, 50.0),
        (3, 200, 1.0, 5.0),  # ties post 1 on engagements, newer: ahead of it
        (4, 200, 60.0, 500.0),  # outside a 48 h window however popular
        (5, 300, 10.0, 0.0),
        (6, 300, -1.0, 900.0),  # created after the snapshot: never a candidate
    ]
)


def test_posts_older_than_the_window_are_the_ones_to_exclude():
    assert sorted(posts_older_than(CATALOG, window_hours=24).tolist()) == [2, 4]
    assert posts_older_than(CATALOG, window_hours=100).tolist() == []


def test_trending_is_the_windows_most_engaged_posts_then_the_newest():
    ids, counts = trending_posts(CATALOG, window_hours=48)
    assert ids.tolist() == [2, 3, 1, 5]
    assert counts.tolist() == [50.0, 5.0, 5.0, 0.0] and counts.dtype == np.float32
    assert trending_posts(CATALOG, window_hours=5)[0].tolist() == [3, 1]


def test_top_unseen_skips_seen_posts_and_still_returns_k():
    ids, scores = np.array([9, 8, 7, 6, 5]), np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    got_ids, got_scores = top_unseen(ids, scores, np.array([9, 7]), k=2)
    assert got_ids.tolist() == [8, 6] and got_scores.tolist() == [4.0, 2.0]
    assert top_unseen(ids, scores, np.zeros(0, np.int64), k=10)[0].tolist() == [9, 8, 7, 6, 5]


def test_gather_concatenates_the_lists_of_the_keys_in_key_order():
    lists = IdLists.from_pairs(np.array([1, 1, 2, 3]), np.array([10, 11, 20, 30]), np.array([2, 1, 1, 1]), cap=5)
    assert gather(lists, np.array([3, 1, 99])).tolist() == [30, 10, 11]
    assert gather(lists, np.zeros(0, np.int64)).tolist() == []


def test_followed_is_the_newest_unseen_posts_of_followed_accounts_in_the_window():
    ids, scores = followed_posts(CATALOG, np.array([300, 100, 200]), seen=np.array([3]), window_hours=48, k=10)
    # 4 is too old, 6 is after the snapshot, 3 is seen; the rest newest first, score = -age in hours.
    assert ids.tolist() == [1, 5, 2]
    np.testing.assert_allclose(scores, [-2.0, -10.0, -30.0])
    assert followed_posts(CATALOG, np.array([100]), np.zeros(0, np.int64), 48, k=1)[0].tolist() == [1]
    assert len(followed_posts(CATALOG, np.zeros(0, np.int64), np.zeros(0, np.int64), 48, k=5)[0]) == 0
    assert len(followed_posts(CATALOG, np.array([999]), np.zeros(0, np.int64), 48, k=5)[0]) == 0


def test_rank_buckets_are_log2_and_capped():
    assert rank_buckets(9).tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3]
    assert rank_buckets(10_000)[-1] == NUM_RANK_BUCKETS - 1


def test_rank_weights_rrf_and_learned():
    np.testing.assert_allclose(rank_weights(3, None), 1.0 / (RRF_K + np.array([1, 2, 3])))
    rates = np.linspace(0.5, 0.0, NUM_RANK_BUCKETS)
    weights = rank_weights(3000, rates)
    assert weights[0] == rates[0] and weights[1] == weights[2] == rates[1] and weights[3] == rates[2]
    assert weights[2999] == rates[11]


def _lists(**per_source: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: (np.asarray(ids, dtype=np.int64), np.linspace(1.0, 0.5, len(ids)))
        for name, ids in per_source.items()
    }


def test_rrf_fusion_dedupes_and_puts_posts_found_by_several_sources_first():
    merged = fuse(_lists(content=[10, 11, 12], collaborative=[11, 20]), k=10)
    assert [c["post_id"] for c in merged] == [11, 10, 20, 12]
    both = merged[0]
    assert both["scores"] == {"content": 0.75, "collaborative": 1.0}
    # The source named is the one whose rank weighs most (rank 1 in collaborative beats rank 2).
    assert both["source"] == "collaborative" and both["score"] == 1.0
    assert both["fused_score"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert [c["post_id"] for c in fuse(_lists(content=[10, 11, 12], collaborative=[11, 20]), k=2)] == [11, 10]
    # Equal weights: the better rank, then the smaller id, never the order of the sources.
    assert [c["post_id"] for c in fuse(_lists(a=[5, 6], b=[4, 7]), k=4)] == [4, 5, 6, 7]
    assert [c["post_id"] for c in fuse(_lists(b=[4, 7], a=[5, 6]), k=4)] == [4, 5, 6, 7]
    assert fuse({}, k=5) == []
    assert fuse(_lists(content=[]), k=5) == []


def test_learned_fusion_gives_a_strong_source_the_slots_its_hit_rates_earn():
    strong = np.full(NUM_RANK_BUCKETS, 0.10)
    weak = np.full(NUM_RANK_BUCKETS, 0.01)
    weak[0] = 0.5  # the weak source's very first post is its one good bet
    per_source = _lists(content=list(range(100, 110)), trending=list(range(200, 210)))
    merged = [c["post_id"] for c in fuse(per_source, k=12, hit_rates={"content": strong, "trending": weak})]
    assert merged == [200, *range(100, 110), 201]
    # An even interleave (what plain RRF gives two disjoint lists) would have spent 5 of 10 slots on it.
    rrf = [c["post_id"] for c in fuse(per_source, k=10)]
    assert sum(p >= 200 for p in rrf) == 5


def test_source_settings_come_from_config_and_refuse_bad_values():
    settings = SourceSettings.from_config(ServeConfig())
    assert settings.enabled == ("content", "collaborative", "trending", "followed")
    assert settings.hit_rates is None
    rates = {"content": [0.1] * NUM_RANK_BUCKETS}
    assert SourceSettings.from_config(
        ServeConfig(candidate_sources=("content",), fusion_hit_rates=rates)
    ).hit_rates == {"content": (0.1,) * NUM_RANK_BUCKETS}
    with pytest.raises(ValueError, match="popular"):
        ServeConfig(candidate_sources=("content", "popular"))
    with pytest.raises(ValueError, match=r"no rates for enabled source\(s\) \['trending'\]"):
        SourceSettings(("content", "trending"), 48.0, 48.0, 48.0, rates)
    with pytest.raises(ValueError, match=r"fusion_hit_rates\['content'\] must hold 12"):
        SourceSettings(("content",), 48.0, 48.0, 48.0, {"content": (0.1, 0.2)})
    with pytest.raises(ValueError, match="non-empty subset"):
        SourceSettings((), 48.0, 48.0, 48.0, None)
    with pytest.raises(ValueError, match="trending_window_hours must be positive, got 0"):
        SourceSettings(("trending",), 0.0, 48.0, 48.0, None)
    with pytest.raises(ValueError, match="content_window_hours must be positive, got -1"):
        SourceSettings(("content",), 48.0, 48.0, -1.0, None)
