"""Ranking jobs end to end on the tiny generated dataset: features, train (cold, warm), export."""

import numpy as np
import pandas as pd
import pytest

from jobs import build_ranking_features, export_user_embeddings, train_ranker
from nearline.config import load_config
from ranking.training import load_ranker
from storage.store import Store

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def ranking_config(tiny_dataset, tmp_path_factory):
    store_root = tmp_path_factory.mktemp("ranking_store")
    return load_config(
        None,
        [
            f"data.path={tiny_dataset.data.path}",
            f"store.root={store_root}",
            "spark.master=local[2]",
            "ranker.training.epochs=1",
            "ranker.discretizer.hash_space_size=4096",
        ],
    )


@pytest.fixture(scope="module")
def features(spark, ranking_config):
    version, manifest = build_ranking_features.run(spark, ranking_config)
    return version, manifest


def test_features_are_point_in_time_with_consistent_labels(features, ranking_config):
    version, manifest = features
    store = Store(ranking_config.store.root)
    assert store.current("features", "ranking") == version
    assert all(manifest["row_counts"][s] > 0 for s in ("train", "validation", "test"))
    root = store.data_path("features", "ranking", version)
    train = pd.read_parquet(f"{root}/train")
    test = pd.read_parquet(f"{root}/test")
    assert train["ts_us"].max() < test["ts_us"].min()
    assert (train["engage"] == train[["like", "reply", "repost"]].max(axis=1)).all()
    events = pd.read_parquet(f"{ranking_config.data.path}/engagements")
    events["ts_us"] = (
        events["ts"].astype("int64") // 1000
        if events["ts"].dtype.unit == "ns"
        else events["ts"].astype("int64")
    )
    sample = train.sample(200, random_state=0)
    imps = events[events.event == "impression"]
    for row in sample.itertuples():
        prior = imps[(imps.post_id == row.post_id) & (imps.ts_us < row.ts_us)]
        assert row.post_impressions_so_far == len(prior)
        user_prior = events[
            (events.user_id == row.user_id)
            & (events.ts_us < row.ts_us)
            & (events.ts_us >= row.ts_us - 86_400_000_000)
        ]
        assert row.user_impressions_1d == (user_prior.event == "impression").sum()
        liked = events[
            (events.user_id == row.user_id) & (events.post_id == row.post_id) & (events.event == "like")
        ]
        assert row.like == int((liked.ts_us >= row.ts_us).any())


def test_train_cold_then_warm_and_export(spark, features, ranking_config):
    store = Store(ranking_config.store.root)
    cold = train_ranker.run(ranking_config, "none", 1.0)
    assert cold["parent_model"] is None and cold["warm_start"] is None
    assert cold["features_version"] == features[0]
    assert cold["metrics"]["test"]["tasks"]["engage"]["auc"] > 0.6
    warm = train_ranker.run(ranking_config, "latest", 0.5)
    assert warm["parent_model"] == cold["version"]
    assert warm["parent_discretizer_version"] == cold["discretizer_version"]
    assert warm["warm_start"]["kept"] and not warm["warm_start"]["shape_mismatched"]
    assert store.current("models", "ranker") == warm["version"]
    # Bin-preserving recalibration: every old bin keeps its id.
    parent = load_ranker(store.path("models", "ranker", cold["version"])).discretizer
    child = load_ranker(store.path("models", "ranker", warm["version"])).discretizer
    for name, bins in parent.features.items():
        np.testing.assert_array_equal(np.isin(bins.bin_ids, child.features[name].bin_ids), True)
    with pytest.raises(ValueError, match="no such ranker version"):
        train_ranker.run(ranking_config, "20990101T000000Z-000000", 1.0)

    users = export_user_embeddings.run(spark, ranking_config, "user")
    pairs = export_user_embeddings.run(spark, ranking_config, "user-author")
    user_table = pd.read_parquet(store.data_path("embeddings", "user", users["version"]))
    n_users = len(pd.read_parquet(f"{ranking_config.data.path}/users"))
    assert len(user_table) == n_users == users["row_counts"]["user"]
    assert np.stack(user_table["vector"]).shape == (
        n_users,
        ranking_config.ranker.groups["user"].group_embedding_dim,
    )
    pair_table = pd.read_parquet(store.data_path("embeddings", "user_author", pairs["version"]))
    follows = pd.read_parquet(f"{ranking_config.data.path}/follows")
    exported = set(zip(pair_table.user_id, pair_table.author_id, strict=True))
    assert set(zip(follows.follower_id, follows.followee_id, strict=True)) <= exported
    assert users["model_version"] == warm["version"]


def test_derived_impressions_for_a_positives_only_log(spark):
    us = 1_000_000
    posts = spark.createDataFrame(
        [(p, 100 + p % 3, p * us) for p in range(1, 41)], "post_id long, author_id long, created_us long"
    ).selectExpr("post_id", "author_id", "timestamp_micros(created_us) as created_at")
    rows = [(u, p, "repost", (p + 1) * us + u) for p in range(1, 41) for u in range(1, 6) if (u + p) % 2 == 0]
    rows.append((1, 3, "reply", 500 * us))  # a second, later event: the impression precedes the first one
    engagements = spark.createDataFrame(rows, "user_id long, post_id long, event string, ts_us long")
    derived = build_ranking_features.derive_impressions(engagements, posts, 2, 5).toPandas()
    assert (derived.event == "impression").all()
    assert not derived.duplicated(["user_id", "post_id"]).any()
    first = engagements.groupBy("user_id", "post_id").min("ts_us").toPandas()
    merged = first.merge(derived, on=["user_id", "post_id"], how="left")
    assert (merged["ts_us"] == merged["min(ts_us)"] - 1).all()
    negatives = derived.merge(first, on=["user_id", "post_id"], how="left", indicator=True)
    negatives = negatives[negatives["_merge"] == "left_only"]
    assert 0 < len(negatives) <= 2 * len(first)
    created = {p: p * us for p in range(1, 41)}
    assert all(created[p] < t for p, t in zip(negatives.post_id, negatives.ts_us, strict=True))
