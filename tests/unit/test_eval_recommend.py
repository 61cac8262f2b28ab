"""`nearline eval recommend`: metrics, the hit-rate fit, the time split, and a run on a tiny serving set."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from evaluation.candidates import evaluate as evaluate_candidates
from evaluation.metrics import fit_hit_rates, paired_difference, ranking_metrics
from evaluation.recommend import (
    evaluate,
    evaluation_period,
    fit_recommend_blend,
    render,
    with_fusion_file,
    with_serve_settings,
    write_time_split,
)
from nearline.config import load_config
from serving.api import CandidateQuery
from serving.candidates import NUM_RANK_BUCKETS
from serving.index_side import load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers
from serving.ranker_side import load_ranker_bundle
from serving.recommend import recommend
from storage.store import Store
from tests.support.serving_fixture import build_serving_set, write_tiny_dataset

HOUR_US = 3_600_000_000


def test_ranking_metrics_by_hand():
    ranked = np.array([5, 1, 7, 2, 9])
    got = ranking_metrics(ranked, truth=np.array([1, 2, 3]), ks=[1, 2, 5])
    assert got[1] == (0.0, 0.0, 0.0)
    recall, ndcg, mrr = got[2]
    assert recall == pytest.approx(1 / 3) and mrr == 0.5
    assert ndcg == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    recall, ndcg, mrr = got[5]
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert recall == pytest.approx(2 / 3) and ndcg == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
    assert ranking_metrics(np.array([3]), np.array([3]), [10])[10] == (1.0, 1.0, 1.0)
    assert ranking_metrics(np.zeros(0, np.int64), np.array([3]), [10])[10] == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least one held-out post"):
        ranking_metrics(ranked, np.zeros(0, np.int64), [5])


def test_hit_rates_are_the_share_of_hits_per_rank_bucket_made_non_increasing():
    # Two users, lists of 4: ranks 1 | 2-3 | 4. Hits: rank 1 once, rank 3 once, rank 4 twice.
    lists = [np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8])]
    truths = [np.array([1, 3, 4]), np.array([8])]
    rates = fit_hit_rates(lists, truths)
    assert len(rates) == NUM_RANK_BUCKETS
    # Raw: 0.5, 0.25, 1.0 -> the isotonic fit pools the last two (weights 4 and 2): (1 + 2) / 6 = 0.5.
    assert rates[:3] == [0.5, 0.5, 0.5]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False)) and rates[-1] == 0.5
    assert fit_hit_rates([], []) == [0.0] * NUM_RANK_BUCKETS


def test_paired_difference_brackets_a_real_gap_and_straddles_zero_without_one():
    rng = np.random.default_rng(3)
    base = rng.random(2000)
    better = paired_difference(base + 0.05 + rng.normal(0, 0.1, 2000), base)
    assert better["difference"] == pytest.approx(0.05, abs=0.01) and 0 < better["ci95"][0] < 0.05 < better["ci95"][1]
    same = paired_difference(base + rng.normal(0, 0.1, 2000), base)
    assert same["ci95"][0] < 0 < same["ci95"][1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny serving set, and a holdout snapshot: the same data plus a day of engagements after it."""
    root = tmp_path_factory.mktemp("evalrec")
    data, holdout = root / "data", root / "holdout"
    write_tiny_dataset(str(data), num_users=150, num_posts=300, seed=11)
    build_serving_set(str(root / "store"), str(data), seed=1, content_dim=16)
    shutil.copytree(data, holdout)
    engagements = pq.read_table(data / "engagements" / "part-00000.parquet")
    last_us = int(engagements.column("ts").cast(pa.int64()).to_numpy().max())
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 41), 3)
    posts = rng.integers(1, 301, len(users))
    later = pa.table(
        {
            "user_id": pa.array([*users, 777_777], pa.int64()),  # 777777: a user the store never saw
            "post_id": pa.array([*posts, 5], pa.int64()),
            "event": ["like"] * (len(users) + 1),
            "ts": pa.array(last_us + HOUR_US * rng.integers(1, 20, len(users) + 1), pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(later.cast(engagements.schema), holdout / "engagements" / "part-00001.parquet")
    config = load_config(
        None,
        [
            f"store.root={root / 'store'}",
            f"data.path={data}",
            "indexes.content.factory_string=Flat",
            "indexes.user.factory_string=Flat",
            "indexes.user.metric=ip",
            "serve.warmup_queries=2",
        ],
    )
    return {"root": root, "data": str(data), "holdout": str(holdout), "config": config, "last_us": last_us}


def test_an_empty_evaluation_period_is_an_error_that_names_it(world):
    with pytest.raises(ValueError, match="evaluation period is empty.*later snapshot"):
        evaluation_period(world["data"], world["last_us"] + 1, None)
    with pytest.raises(ValueError, match="--period-hours must be positive"):
        evaluation_period(world["holdout"], world["last_us"] + 1, 0)
    period = evaluation_period(world["holdout"], world["last_us"] + 1, 5)
    assert 0 < period.num_engagements < 121 and period.end_us == world["last_us"] + 1 + 5 * HOUR_US


def test_eval_recommend_scores_the_serving_path_against_the_baselines(world):
    report, hit_rates = evaluate(world["config"], world["holdout"], ks=[5, 20], num_candidates=60, max_users=100)
    assert report["period"]["users_unknown_to_the_store"] == 1 and report["users"] == 40
    names = {"recommend", "candidates", "content", "collaborative", "trending", "followed", "popularity", "random"}
    assert set(report["metrics"]) == names
    for values in report["metrics"].values():
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert set(hit_rates) == {"content", "collaborative", "trending", "followed"}
    assert all(len(r) == NUM_RANK_BUCKETS for r in hit_rates.values())
    items = sum(c["items"] for c in report["contribution"]["5"].values())
    assert items == 40 * 5  # every user got a full top 5, each item credited to one source
    assert "recommend" in render(report) and "paired differences" in render(report)
    gap = report["differences"]["recommend - candidates, recall@5"]
    assert gap["ci95"][0] <= gap["difference"] <= gap["ci95"][1]
    # The recommend list is serving's own: the in-process recommend gives the same posts for a user.
    store = Store(str(world["root"] / "store"))
    config = world["config"]
    index = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config.serve, config.indexes)
    ranker = load_ranker_bundle(store, read_pointers(store, RANKER_POINTERS), config.serve)
    served = [item["post_id"] for item in recommend(index, ranker, 7, k=20, num_candidates=60)]
    fused = [c["post_id"] for c in index.candidates([CandidateQuery(7, 60)])[0]]
    assert set(served) <= set(fused) and len(served) == 20


def test_a_fitted_blend_orders_recommend_and_the_ranker_order_is_reported_beside_it(world, tmp_path):
    _, hit_rates = evaluate(world["config"], world["holdout"], ks=[5], num_candidates=60, max_users=100)
    blend, rows = fit_recommend_blend(world["config"], world["holdout"], hit_rates, num_candidates=60, max_users=100)
    assert rows["rows"] >= 40 * 5 and 0 < rows["positives"] < rows["rows"]
    fitted = tmp_path / "fusion.json"
    fitted.write_text(json.dumps({"fusion_hit_rates": hit_rates, "recommend_blend": blend.to_config().model_dump()}))
    config = with_fusion_file(world["config"], str(fitted))
    assert config.serve.recommend_blend is not None and config.serve.fusion_hit_rates is not None
    report, _ = evaluate(config, world["holdout"], ks=[5, 20], num_candidates=60, max_users=100)
    assert report["recommend_order"] == "blend" and list(report["metrics"])[:3] == ["recommend", "ranker", "candidates"]
    # Same candidates, same scores, another order: the blend changes which posts make the top 5, not the pool.
    assert report["metrics"]["recommend"]["recall@20"] != report["metrics"]["ranker"]["recall@20"] or (
        report["metrics"]["recommend"]["ndcg@5"] != report["metrics"]["ranker"]["ndcg@5"]
    )
    plain, _ = evaluate(with_serve_settings(config, {"recommend_blend": None}), world["holdout"], ks=[5], num_candidates=60)
    assert plain["recommend_order"] == "ranker" and "ranker" not in plain["metrics"]


def test_eval_candidates_reports_combined_and_each_source_at_each_k(world):
    report = evaluate_candidates(world["config"], world["holdout"], ks=[10, 50], max_users=100)
    assert report["users"] == 40 and list(report["metrics"])[0] == "combined"
    assert {"recall@10", "recall@50", "ndcg@50"} <= set(report["metrics"]["trending"])


def test_time_split_keeps_what_happened_before_and_the_users_seen_by_then(world, tmp_path):
    until = dt.datetime.fromtimestamp((world["last_us"] - 10 * HOUR_US) / 1e6, tz=dt.timezone.utc)
    counts = write_time_split(world["holdout"], until.isoformat(), str(tmp_path / "cut"))
    engagements = ds.dataset(tmp_path / "cut" / "engagements").to_table()
    ts = engagements.column("ts").cast(pa.int64()).to_numpy()
    assert counts["engagements"] == len(ts) > 0 and ts.max() < world["last_us"] - 10 * HOUR_US
    users = set(ds.dataset(tmp_path / "cut" / "users").to_table().column("user_id").to_pylist())
    assert 777_777 not in users and set(engagements.column("user_id").to_pylist()) <= users
    with pytest.raises(ValueError, match="no engagement before"):
        write_time_split(world["holdout"], "2000-01-01T00:00:00", str(tmp_path / "none"))
    assert not Path(tmp_path / "none" / "users").exists()
