"""`nearline export serving-tables` on a small hand-made dataset, checked against pandas.

The dataset is built so that the interesting cases occur: repeated events on one (user, post),
several events at the same instant, a follow made after the snapshot, users known only from the
engagements or follows tables, users with no history, and list caps small enough to bind.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inputs.contract import POSITIVE_EVENTS
from jobs.export_serving_tables import run_post_features, run_user_lists
from jobs.io import input_fingerprint
from nearline.config import NearlineConfig, load_config
from storage.store import Store

pytestmark = pytest.mark.spark

MICROS = 1_000_000
BASE_US = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()) * MICROS
HOUR_US = 3_600 * MICROS
CAPS = {"engaged": 3, "seen": 5, "followees": 2}
TS = pa.timestamp("us", tz="UTC")


def _write(frame: pd.DataFrame, schema: pa.Schema, directory: Path) -> None:
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), directory / "part-00000.parquet")


def _make_dataset(root: Path, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Contract tables (timestamps as int64 µs in the returned frames) written as Parquet under root."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({
        "user_id": np.arange(1, 41, dtype=np.int64),
        "created_at": BASE_US - 30 * 24 * HOUR_US,
        "country": rng.choice(["us", "fr"], 40),
        "language": "en",
        "is_verified": rng.random(40) < 0.1,
    })
    authors = np.array([1, 2, 3, 4, 5, 50], dtype=np.int64)  # 50 is in no users row
    posts = pd.DataFrame({
        "post_id": np.arange(1, 81, dtype=np.int64),
        "author_id": rng.choice(authors, 80),
        "created_at": BASE_US + rng.integers(0, 72 * 60, 80) * 60 * MICROS,
        "has_media": rng.random(80) < 0.3,
        "text_length": rng.integers(5, 280, 80).astype(np.int32),
    })
    # Two subjects with their own words, so the topic model has something to find.
    subjects = {0: "kitten purr whiskers meow", 1: "compiler borrow cargo crate"}
    posts["text"] = [f"{subjects[int(p) % 2]} post {p}" for p in posts["post_id"]]
    # Ten-minute buckets over two days: a user often has two events at the same instant.
    n = 600
    engagements = pd.DataFrame({
        "user_id": rng.choice(np.r_[np.arange(1, 36), [60]], n).astype(np.int64),  # 60: engagements only
        "post_id": rng.integers(1, 81, n).astype(np.int64),
        "event": rng.choice(["impression", "like", "reply", "repost"], n, p=[0.6, 0.2, 0.1, 0.1]),
        "ts": BASE_US + 72 * HOUR_US + rng.integers(0, 288, n) * 600 * MICROS,
    })
    last_us = int(engagements["ts"].max())
    extra = pd.DataFrame({  # user 1: a tie at the very last instant, and older events on the same posts
        "user_id": np.int64(1),
        "post_id": np.array([5, 7, 5, 7, 9], dtype=np.int64),
        "event": ["like", "like", "impression", "reply", "impression"],
        "ts": [last_us, last_us, last_us - 600 * MICROS, BASE_US + 72 * HOUR_US, last_us],
    })
    engagements = pd.concat([engagements, extra], ignore_index=True)
    # Followers 1..37 only: users 38..40 have no history at all.
    pairs = {(int(a), int(b)) for a, b in zip(rng.integers(1, 38, 120), rng.choice(authors, 120), strict=True)}
    pairs = sorted((a, b) for a, b in pairs if a != b)
    follows = pd.DataFrame(pairs, columns=["follower_id", "followee_id"]).astype(np.int64)
    follows["created_at"] = BASE_US + rng.integers(0, 96, len(follows)) * HOUR_US
    # A follow made after the last engagement: after the snapshot, so in neither table.
    late = pd.DataFrame({"follower_id": [2], "followee_id": [70], "created_at": [last_us + 24 * HOUR_US]})
    follows = pd.concat([follows, late.astype(np.int64)], ignore_index=True)

    _write(users, pa.schema([("user_id", pa.int64()), ("created_at", TS), ("country", pa.string()),
                             ("language", pa.string()), ("is_verified", pa.bool_())]), root / "users")
    _write(posts, pa.schema([("post_id", pa.int64()), ("author_id", pa.int64()), ("created_at", TS),
                             ("has_media", pa.bool_()), ("text_length", pa.int32()), ("text", pa.string())]),
           root / "posts")
    _write(follows, pa.schema([("follower_id", pa.int64()), ("followee_id", pa.int64()), ("created_at", TS)]),
           root / "follows")
    _write(engagements, pa.schema([("user_id", pa.int64()), ("post_id", pa.int64()), ("event", pa.string()),
                                   ("ts", TS)]), root / "engagements")
    return {"users": users, "posts": posts, "follows": follows, "engagements": engagements}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[NearlineConfig, dict[str, pd.DataFrame], list[str]]:
    root = tmp_path_factory.mktemp("serving_tables")
    frames = _make_dataset(root / "data")
    overrides = [
        f"data.path={root / 'data'}", f"store.root={root / 'store'}", "spark.master=local[2]",
        f"serve.recent_posts_per_user={CAPS['engaged']}", f"serve.seen_posts_per_user={CAPS['seen']}",
        f"serve.followees_per_user={CAPS['followees']}",
    ]
    return load_config(None, overrides), frames, overrides


@pytest.fixture(scope="module")
def exported(spark, dataset) -> dict[str, dict]:
    config, _, _ = dataset
    return {"post": run_post_features(spark, config, publish=False),
            "user_lists": run_user_lists(spark, config, publish=False)}


def _read(config: NearlineConfig, name: str, version: str) -> pa.Table:
    return pq.read_table(Store(config.store.root).data_path("features", name, version))


def _newest_first(frame: pd.DataFrame, key: str, value: str, cap: int) -> dict[int, list[int]]:
    latest = frame.groupby([key, value], as_index=False)["ts"].max()
    latest = latest.sort_values([key, "ts", value], ascending=[True, False, False])
    return {int(k): group[value].head(cap).tolist() for k, group in latest.groupby(key)}


def test_post_features_match_the_raw_tables(exported, dataset):
    config, frames, _ = dataset
    result = exported["post"]
    engagements, posts, follows = frames["engagements"], frames["posts"], frames["follows"]
    snapshot_us = int(engagements["ts"].max()) + 1
    assert result["snapshot_us"] == snapshot_us
    assert result["input_fingerprint"] == input_fingerprint(config.data.path)
    assert Store(config.store.root).current("features", "post") is None  # staged, not published

    table = _read(config, "post", result["version"])
    assert table.schema.field("post_id").type == pa.int64()
    assert table.schema.field("author_id").type == pa.int64()
    assert table.schema.field("created_at_us").type == pa.int64()
    assert result["feature_columns"] and all(
        table.schema.field(c).type == pa.float64() for c in result["feature_columns"]
    )
    assert "post_content_vector" not in table.column_names and "ts_us" not in table.column_names
    assert result["row_counts"] == {"post": len(posts)}
    got = table.to_pandas().set_index("post_id").sort_index()
    assert list(got.index) == sorted(posts["post_id"])

    counts = pd.crosstab(engagements["post_id"], engagements["event"])
    followers = follows[follows["created_at"] < snapshot_us].groupby("followee_id").size()
    for post in posts.sample(25, random_state=0).itertuples():
        row = got.loc[post.post_id]
        events = counts.loc[post.post_id] if post.post_id in counts.index else pd.Series(dtype=float)
        assert row["author_id"] == post.author_id
        assert row["created_at_us"] == post.created_at
        assert row["post_impressions_so_far"] == events.get("impression", 0)
        assert row["post_likes_so_far"] == events.get("like", 0)
        assert row["post_replies_so_far"] == events.get("reply", 0)
        assert row["post_reposts_so_far"] == events.get("repost", 0)
        assert row["post_engagements_so_far"] == sum(events.get(e, 0) for e in POSITIVE_EVENTS)
        assert row["post_age_hours"] == pytest.approx((snapshot_us - post.created_at) / HOUR_US)
        assert row["author_follower_count"] == followers.get(post.author_id, 0)
        assert row["post_has_media"] == float(post.has_media)
        assert row["post_text_length"] == float(post.text_length)
    # The last instant's events count: the snapshot is after them, not at them.
    assert got.loc[7, "post_likes_so_far"] == counts.loc[7, "like"] >= 1


def test_post_topics_separate_the_two_subjects(exported, dataset):
    config, frames, _ = dataset
    result = exported["post"]
    assert result["topics"]["column"] == "topics" and result["topics"]["fitted_on_posts"] == 80
    assert result["topics"]["effective_topics"] >= 2.0 and result["topics"]["share_without_terms"] == 0.0
    table = _read(config, "post", result["version"]).sort_by("post_id")
    topics = np.asarray(table.column("topics").to_pylist(), dtype=np.float32)
    assert topics.shape == (80, result["topics"]["num_topics"])
    assert np.allclose(topics.sum(axis=1), 1.0, atol=1e-5)
    main_topic = topics.argmax(axis=1)
    subject = table.column("post_id").to_numpy() % 2
    # Every post of a subject has the same main topic, and the two subjects' differ.
    assert len(set(main_topic[subject == 0])) == 1 and len(set(main_topic[subject == 1])) == 1
    assert main_topic[subject == 0][0] != main_topic[subject == 1][0]


def test_user_lists_are_capped_newest_first_and_deduplicated(exported, dataset):
    config, frames, _ = dataset
    result = exported["user_lists"]
    engagements, follows = frames["engagements"], frames["follows"]
    snapshot_us = int(engagements["ts"].max()) + 1
    assert result["caps"] == CAPS
    assert result["snapshot_us"] == snapshot_us
    table = _read(config, "user_lists", result["version"])
    assert {f.name: f.type for f in table.schema} == {
        "user_id": pa.int64(), "engaged": pa.list_(pa.int64()), "seen": pa.list_(pa.int64()),
        "followees": pa.list_(pa.int64()),
    }
    rows = {r["user_id"]: r for r in table.to_pylist()}
    known = set(frames["users"]["user_id"]) | set(engagements["user_id"]) | set(follows["follower_id"]) | set(
        follows["followee_id"])
    assert set(rows) == known and len(rows) == table.num_rows == result["row_counts"]["user_lists"]
    assert rows[40] == {"user_id": 40, "engaged": [], "seen": [], "followees": []}

    positive = engagements[engagements["event"].isin(POSITIVE_EVENTS)]
    followed = follows[follows["created_at"] < snapshot_us].rename(columns={"created_at": "ts"})
    expected = {
        "engaged": _newest_first(positive, "user_id", "post_id", CAPS["engaged"]),
        "seen": _newest_first(engagements, "user_id", "post_id", CAPS["seen"]),
        "followees": _newest_first(followed, "follower_id", "followee_id", CAPS["followees"]),
    }
    latest_seen = engagements.groupby(["user_id", "post_id"])["ts"].max()
    positive_pairs = set(zip(positive["user_id"], positive["post_id"], strict=True))
    for user, row in rows.items():
        for column, cap in CAPS.items():
            assert row[column] == expected[column].get(user, []), (user, column)
            assert len(row[column]) <= cap and len(set(row[column])) == len(row[column])
        assert all((user, post) in positive_pairs for post in row["engaged"])
        times = [latest_seen[(user, post)] for post in row["seen"]]
        assert times == sorted(times, reverse=True)
    for column, cap in CAPS.items():  # every cap binds somewhere
        assert max(len(row[column]) for row in rows.values()) == cap
    # User 1: posts 5, 7 (liked) and 9 (seen) share the last instant; ids break the tie, largest first.
    assert rows[1]["engaged"][:2] == [7, 5]
    assert rows[1]["seen"][:3] == [9, 7, 5]
    assert 70 not in rows[2]["followees"]  # followed after the snapshot
    assert rows[60]["followees"] == [] and rows[60]["seen"]


def test_same_input_gives_identical_files(spark, exported, dataset):
    config, _, _ = dataset
    store = Store(config.store.root)
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "5")  # output files must not depend on it
    try:
        again = {"post": run_post_features(spark, config, publish=False),
                 "user_lists": run_user_lists(spark, config, publish=False)}
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    for name, first in exported.items():
        second = again[name]
        assert second["version"] != first["version"]
        assert first["checksums"] and second["checksums"] == first["checksums"], name
        for relpath in first["checksums"]:
            left = Path(store.path("features", name, first["version"])) / relpath
            right = Path(store.path("features", name, second["version"])) / relpath
            assert left.read_bytes() == right.read_bytes()


def test_cli_exports_and_publishes_both(spark, exported, dataset):
    from cli.main import main

    config, _, overrides = dataset
    store = Store(config.store.root)
    before = {name: set(store.versions("features", name)) for name in exported}
    assert main([a for o in overrides for a in ("--set", o)] + ["export", "serving-tables"]) == 0
    for name, first in exported.items():
        current = store.current("features", name)
        assert current is not None and current not in before[name]
        assert store.manifest("features", name, current)["checksums"] == first["checksums"]
