import numpy as np
import pandas as pd

from inputs.synthetic import EMOJIS, TABLE_GENERATORS, build_skeleton, num_blocks
from nearline.config import GenerateConfig

CONFIG = GenerateConfig(num_users=1_000, users_per_block=400, num_days=4, seed=11)


def _table(name, config=CONFIG):
    skeleton = build_skeleton(config)
    return pd.concat([TABLE_GENERATORS[name](config, skeleton, b) for b in range(num_blocks(config))],
                     ignore_index=True)


def test_same_seed_same_rows_other_seed_other_rows():
    first, second = _table("engagements"), _table("engagements")
    pd.testing.assert_frame_equal(first, second)
    other = _table("engagements", CONFIG.model_copy(update={"seed": 12}))
    assert not first.equals(other)


def test_blocks_do_not_depend_on_block_size_for_the_skeleton():
    small_blocks = CONFIG.model_copy(update={"users_per_block": 250})
    assert _table("posts", small_blocks)["post_id"].tolist() == _table("posts")["post_id"].tolist()


def test_engagement_rate_is_higher_when_interest_matches():
    skeleton = build_skeleton(CONFIG)
    engagements = _table("engagements")
    impressions = engagements[engagements.event == "impression"][["user_id", "post_id"]]
    liked = engagements[engagements.event == "like"][["user_id", "post_id"]].assign(liked=1)
    rows = impressions.merge(liked, on=["user_id", "post_id"], how="left").fillna({"liked": 0})
    match = skeleton.user_interests[rows.user_id - 1, skeleton.post_topic[rows.post_id - 1]]
    high, low = rows.liked[match > 0.5].mean(), rows.liked[match < 0.05].mean()
    assert high > 3 * low, (high, low)


def test_follow_graph_is_topic_homophilous():
    skeleton = build_skeleton(CONFIG)
    follows = _table("follows")
    favourite = skeleton.user_interests.argmax(axis=1)
    same_topic = (favourite[follows.follower_id - 1] == skeleton.author_topic[follows.followee_id - 1]).mean()
    assert same_topic > 3 / CONFIG.num_topics


def test_author_popularity_is_heavy_tailed():
    skeleton = build_skeleton(CONFIG)
    popularity = np.sort(skeleton.author_popularity[skeleton.is_author])[::-1]
    top_share = popularity[: len(popularity) // 10].sum() / popularity.sum()
    assert top_share > 0.3


def test_posts_carry_emojis_that_depend_on_topic():
    skeleton = build_skeleton(CONFIG)
    posts = _table("posts")
    first_emoji = posts.text.map(lambda t: next((e for e in EMOJIS if e in t), None))
    assert first_emoji.notna().mean() > 0.6
    topics = skeleton.post_topic[posts.post_id - 1]
    frame = pd.DataFrame({"topic": topics, "emoji": first_emoji}).dropna()
    top_share = frame.groupby("topic").emoji.agg(lambda s: s.value_counts(normalize=True).iloc[0]).mean()
    assert top_share > 2 / len(EMOJIS)


def test_engagements_follow_their_posts_in_time():
    skeleton = build_skeleton(CONFIG)
    engagements = _table("engagements")
    created = pd.to_datetime(skeleton.post_created_us[engagements.post_id - 1], unit="us", utc=True)
    assert (engagements.ts.values >= created.values).all()


def test_an_earlier_snapshot_is_a_subset_of_a_later_one():
    from inputs.synthetic import cut_to_snapshot

    day3 = CONFIG.model_copy(update={"through_day": 3})
    day4 = CONFIG.model_copy(update={"through_day": 4})
    skeleton = build_skeleton(CONFIG)
    early = cut_to_snapshot(day3, "engagements", TABLE_GENERATORS["engagements"](day3, skeleton, 0))
    late = cut_to_snapshot(day4, "engagements", TABLE_GENERATORS["engagements"](day4, skeleton, 0))
    assert 0 < len(early) < len(late)
    merged = early.merge(late, on=["user_id", "post_id", "event", "ts"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert early.ts.max() < late.ts.max()
