"""Seeded synthetic social-feed data with known latent structure (pure numpy/pandas, no Spark).

The world: topics with their own vocabularies and emoji preferences; users with
Dirichlet interests over topics; a share of users are authors with one main
topic and a power-law popularity; a follow graph with topic homophily; posts
whose words come from the author's topic and whose emojis depend on topic and
sentiment; impressions drawn from followed authors, topic-matching popular posts
and random posts; likes/replies/reposts whose probability rises with interest
match, following the author and post quality.

Generation is split into fixed-size user blocks. A block's rows depend only on
(seed, table, block index) and on the global skeleton (authors, posts), so the
output is identical whatever the parallelism, and Spark can generate blocks as
independent tasks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nearline.config import GenerateConfig

EMOJIS = [
    "😂",
    "❤",
    "😍",
    "😭",
    "😊",
    "😘",
    "🙏",
    "🔥",
    "😎",
    "💯",
    "🙌",
    "👏",
    "😩",
    "😢",
    "😡",
    "💕",
    "✨",
    "🎉",
    "😴",
    "🤔",
    "😤",
    "💪",
    "👀",
    "🙄",
    "😉",
    "🎶",
    "☀",
    "🌹",
    "💔",
    "😱",
    "🤣",
    "👍",
]
POSITIVE_EMOJIS = {
    "😂",
    "❤",
    "😍",
    "😊",
    "😘",
    "🔥",
    "😎",
    "💯",
    "🙌",
    "👏",
    "💕",
    "✨",
    "🎉",
    "💪",
    "🌹",
    "🤣",
    "👍",
    "☀",
}
NEGATIVE_EMOJIS = {"😭", "😩", "😢", "😡", "😤", "🙄", "💔", "😱"}
COMMON_WORDS = "the a to and i you it is in my of for on this that with just so be me at all not".split()
POSITIVE_WORDS = "love great happy amazing best awesome beautiful win excited perfect lol yay".split()
NEGATIVE_WORDS = "hate sad worst angry tired miss sick awful hurt lost ugh never".split()
_SYLLABLES = "ka lo mi nu te ra si po ve da zu ne fi go ha ju le mo ri sa ta bo".split()
_TABLE_CODES = {"users": 1, "follows": 2, "posts": 3, "engagements": 4}
_MICROS_PER_DAY = 86_400 * 1_000_000


def _epoch_us(date: str) -> int:
    start = dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)
    return int(start.timestamp()) * 1_000_000


@dataclass(frozen=True)
class Skeleton:
    """Global latent structure every block needs. Arrays are indexed by id - 1."""

    user_interests: np.ndarray  # float32 (U, K), rows sum to 1
    is_author: np.ndarray  # bool (U,)
    author_topic: np.ndarray  # int16 (U,), -1 for non-authors
    author_popularity: np.ndarray  # float32 (U,), 0 for non-authors; power law
    post_author: np.ndarray  # int64 (P,) user ids, sorted
    post_topic: np.ndarray  # int16 (P,)
    post_sentiment: np.ndarray  # int8 (P,) -1, 0, +1
    post_quality: np.ndarray  # float32 (P,) in (0, 1)
    post_created_us: np.ndarray  # int64 (P,)
    topic_words: list[list[str]]
    topic_emoji_probs: np.ndarray  # float32 (K, E)

    @property
    def num_users(self) -> int:
        return int(self.is_author.shape[0])

    @property
    def num_posts(self) -> int:
        return int(self.post_author.shape[0])


def build_skeleton(config: GenerateConfig) -> Skeleton:
    """The global structure, deterministic in config.seed."""
    rng = np.random.default_rng([config.seed, 0])
    num_users, num_topics = config.num_users, config.num_topics
    # Sparse Dirichlet: most users care about two or three topics, which makes interest match matter.
    user_interests = rng.dirichlet(np.full(num_topics, 0.15), size=num_users).astype(np.float32)
    is_author = rng.random(num_users) < config.author_fraction
    author_topic = np.where(is_author, user_interests.argmax(axis=1), -1).astype(np.int16)
    popularity = (rng.pareto(1.2, size=num_users) + 1.0).astype(np.float32)
    author_popularity = np.where(is_author, popularity, 0.0).astype(np.float32)

    # Popular authors post more, as on real platforms.
    posts_per_author = rng.poisson(config.posts_per_author_mean * np.sqrt(np.minimum(popularity, 50.0)))
    posts_per_author = np.where(is_author, np.maximum(posts_per_author, 1), 0)
    post_author = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), posts_per_author)
    num_posts = post_author.shape[0]
    off_topic = rng.random(num_posts) < 0.15
    post_topic = np.where(
        off_topic, rng.integers(0, num_topics, num_posts), author_topic[post_author - 1]
    ).astype(np.int16)
    post_sentiment = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=num_posts, p=[0.3, 0.3, 0.4])
    post_quality = rng.beta(2.0, 2.0, size=num_posts).astype(np.float32)
    window_us = config.num_days * _MICROS_PER_DAY
    post_created_us = _epoch_us(config.start_date) + rng.integers(0, window_us, num_posts)

    words_per_topic = 40
    topic_words = [
        ["".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4))) + f"{t}" for _ in range(words_per_topic)]
        for t in range(num_topics)
    ]
    # Each topic prefers a handful of emojis; sentiment later reweights them.
    emoji_logits = rng.normal(0.0, 1.0, size=(num_topics, len(EMOJIS)))
    for t in range(num_topics):
        emoji_logits[t, rng.choice(len(EMOJIS), size=4, replace=False)] += 3.0
    topic_emoji_probs = np.exp(emoji_logits)
    topic_emoji_probs = (topic_emoji_probs / topic_emoji_probs.sum(axis=1, keepdims=True)).astype(np.float32)
    return Skeleton(
        user_interests,
        is_author,
        author_topic,
        author_popularity,
        post_author,
        post_topic,
        post_sentiment,
        post_quality,
        post_created_us.astype(np.int64),
        topic_words,
        topic_emoji_probs,
    )


def num_blocks(config: GenerateConfig) -> int:
    return -(-config.num_users // config.users_per_block)


def _block_users(config: GenerateConfig, block: int) -> np.ndarray:
    first = block * config.users_per_block + 1
    last = min((block + 1) * config.users_per_block, config.num_users)
    return np.arange(first, last + 1, dtype=np.int64)


def _rng(config: GenerateConfig, table: str, block: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _TABLE_CODES[table], block])


def generate_users(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    rng = _rng(config, "users", block)
    user_ids = _block_users(config, block)
    n = user_ids.shape[0]
    start = _epoch_us(config.start_date)
    created = start - rng.integers(_MICROS_PER_DAY, 3 * 365 * _MICROS_PER_DAY, n)
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "created_at": pd.to_datetime(created, unit="us", utc=True),
            "country": rng.choice(np.array(["us", "gb", "in", "br", "jp", "de", "fr", "ng"]), size=n),
            "language": rng.choice(np.array(["en", "es", "pt", "ja"]), size=n, p=[0.7, 0.12, 0.1, 0.08]),
            "is_verified": skeleton.author_popularity[user_ids - 1] > 20.0,
        }
    )


def _popularity_sampler(
    skeleton: Skeleton,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-topic author lists with cumulative popularity, plus the global one."""
    author_ids = np.flatnonzero(skeleton.is_author) + 1
    topics = skeleton.author_topic[author_ids - 1]
    weights = skeleton.author_popularity[author_ids - 1].astype(np.float64)
    per_topic_ids, per_topic_cum = [], []
    for t in range(skeleton.topic_emoji_probs.shape[0]):
        mask = topics == t
        per_topic_ids.append(author_ids[mask])
        per_topic_cum.append(np.cumsum(weights[mask]))
    return per_topic_ids, per_topic_cum, author_ids, np.cumsum(weights)


def _sample_weighted(rng: np.random.Generator, ids: np.ndarray, cum: np.ndarray, n: int) -> np.ndarray:
    if ids.shape[0] == 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    picks = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return ids[np.minimum(picks, ids.shape[0] - 1)]


def generate_follows(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    """Each user follows popular authors, mostly within their favourite topics (homophily)."""
    rng = _rng(config, "follows", block)
    per_topic_ids, per_topic_cum, all_ids, all_cum = _popularity_sampler(skeleton)
    followers, followees = [], []
    for user_id in _block_users(config, block):
        count = rng.poisson(config.follows_per_user_mean)
        interests = skeleton.user_interests[user_id - 1]
        on_topic = rng.binomial(count, 0.75)
        topics = rng.choice(interests.shape[0], size=on_topic, p=interests / interests.sum())
        chosen = [
            _sample_weighted(rng, per_topic_ids[t], per_topic_cum[t], c)
            for t, c in zip(*np.unique(topics, return_counts=True), strict=True)
        ]
        chosen.append(_sample_weighted(rng, all_ids, all_cum, count - on_topic))
        targets = np.unique(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
        targets = targets[targets != user_id]
        followers.append(np.full(targets.shape[0], user_id, dtype=np.int64))
        followees.append(targets.astype(np.int64))
    follower_ids = np.concatenate(followers) if followers else np.empty(0, dtype=np.int64)
    followee_ids = np.concatenate(followees) if followees else np.empty(0, dtype=np.int64)
    start = _epoch_us(config.start_date)
    created = start - rng.integers(1, 365 * _MICROS_PER_DAY, follower_ids.shape[0])
    return pd.DataFrame(
        {
            "follower_id": follower_ids,
            "followee_id": followee_ids,
            "created_at": pd.to_datetime(created, unit="us", utc=True),
        }
    )


def _post_text(rng: np.random.Generator, skeleton: Skeleton, post_index: int) -> tuple[str, bool]:
    topic = int(skeleton.post_topic[post_index])
    sentiment = int(skeleton.post_sentiment[post_index])
    words = list(rng.choice(skeleton.topic_words[topic], size=rng.integers(3, 9)))
    words += list(rng.choice(COMMON_WORDS, size=rng.integers(2, 7)))
    if sentiment > 0:
        words += list(rng.choice(POSITIVE_WORDS, size=rng.integers(1, 3)))
    elif sentiment < 0:
        words += list(rng.choice(NEGATIVE_WORDS, size=rng.integers(1, 3)))
    rng.shuffle(words)
    text = " ".join(words)
    if rng.random() < 0.8:
        probs = skeleton.topic_emoji_probs[topic].astype(np.float64).copy()
        boost = POSITIVE_EMOJIS if sentiment > 0 else NEGATIVE_EMOJIS if sentiment < 0 else set()
        probs *= np.array([4.0 if e in boost else 1.0 for e in EMOJIS])
        probs /= probs.sum()
        emojis = rng.choice(EMOJIS, size=rng.integers(1, 3), p=probs)
        text = text + " " + "".join(emojis)
    has_media = bool(rng.random() < 0.2 + 0.3 * float(skeleton.post_quality[post_index]))
    return text, has_media


def _block_post_range(skeleton: Skeleton, user_ids: np.ndarray) -> tuple[int, int]:
    lo = int(np.searchsorted(skeleton.post_author, user_ids[0], side="left"))
    hi = int(np.searchsorted(skeleton.post_author, user_ids[-1], side="right"))
    return lo, hi


def generate_posts(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    rng = _rng(config, "posts", block)
    lo, hi = _block_post_range(skeleton, _block_users(config, block))
    texts, media = [], []
    for index in range(lo, hi):
        text, has_media = _post_text(rng, skeleton, index)
        texts.append(text)
        media.append(has_media)
    return pd.DataFrame(
        {
            "post_id": np.arange(lo + 1, hi + 1, dtype=np.int64),
            "author_id": skeleton.post_author[lo:hi],
            "text": texts,
            "created_at": pd.to_datetime(skeleton.post_created_us[lo:hi], unit="us", utc=True),
            "has_media": np.array(media, dtype=bool),
            "text_length": np.array([len(t) for t in texts], dtype=np.int32),
        }
    )


def engagement_probabilities(
    interest_match: np.ndarray, follows_author: np.ndarray, quality: np.ndarray
) -> np.ndarray:
    """P(engage | impression): the planted signal the ranker should recover."""
    logit = -3.2 + 4.0 * interest_match + 1.2 * follows_author + 1.5 * (quality - 0.5)
    return 1.0 / (1.0 + np.exp(-logit))


def generate_engagements(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    """Impressions, then likes/replies/reposts on some of them, with timestamps after the post."""
    rng = _rng(config, "engagements", block)
    follows = generate_follows(config, skeleton, block)
    follow_sets = follows.groupby("follower_id")["followee_id"].apply(np.asarray).to_dict()
    # CSR of posts by author, and per-topic post samplers weighted by author popularity.
    author_offsets = np.searchsorted(skeleton.post_author, np.arange(1, skeleton.num_users + 2))
    post_weights = skeleton.author_popularity[skeleton.post_author - 1].astype(np.float64)
    topic_posts = [
        np.flatnonzero(skeleton.post_topic == t) for t in range(skeleton.topic_emoji_probs.shape[0])
    ]
    topic_cums = [np.cumsum(post_weights[p]) for p in topic_posts]
    end_us = _epoch_us(config.start_date) + config.num_days * _MICROS_PER_DAY
    columns: dict[str, list[np.ndarray]] = {"user_id": [], "post_id": [], "event": [], "ts": []}
    for user_id in _block_users(config, block):
        count = rng.poisson(config.impressions_per_user_per_day * config.num_days)
        interests = skeleton.user_interests[user_id - 1]
        followees = follow_sets.get(user_id, np.empty(0, dtype=np.int64))
        source = rng.choice(3, size=count, p=[0.35, 0.45, 0.2])
        posts = [rng.integers(0, skeleton.num_posts, int((source == 2).sum()))]
        if followees.shape[0]:
            chosen_authors = rng.choice(followees, size=int((source == 0).sum()))
            starts, stops = author_offsets[chosen_authors - 1], author_offsets[chosen_authors]
            has_posts = stops > starts
            posts.append(
                starts[has_posts]
                + (rng.random(has_posts.sum()) * (stops - starts)[has_posts]).astype(np.int64)
            )
        topics = rng.choice(interests.shape[0], size=int((source == 1).sum()), p=interests / interests.sum())
        for t, c in zip(*np.unique(topics, return_counts=True), strict=True):
            posts.append(_sample_weighted(rng, topic_posts[t], topic_cums[t], c))
        post_index = np.unique(np.concatenate(posts))
        if post_index.shape[0] == 0:
            continue
        created = skeleton.post_created_us[post_index]
        seen_at = np.minimum(
            created + rng.exponential(0.5 * _MICROS_PER_DAY, len(post_index)).astype(np.int64), end_us - 1
        )
        seen_at = np.maximum(seen_at, created + 1_000_000)
        authors = skeleton.post_author[post_index]
        match = interests[skeleton.post_topic[post_index]]
        p_engage = engagement_probabilities(
            match, np.isin(authors, followees).astype(np.float64), skeleton.post_quality[post_index]
        )
        engaged = rng.random(post_index.shape[0]) < p_engage
        post_ids = post_index.astype(np.int64) + 1
        columns["user_id"].append(np.full(post_ids.shape[0], user_id, dtype=np.int64))
        columns["post_id"].append(post_ids)
        columns["event"].append(np.full(post_ids.shape[0], "impression", dtype=object))
        columns["ts"].append(seen_at)
        # An engaged impression becomes a like, and sometimes also a reply or a repost.
        for event, share in (("like", 0.85), ("reply", 0.2), ("repost", 0.25)):
            hit = engaged & (rng.random(post_index.shape[0]) < share)
            delay = rng.integers(1_000_000, 600_000_000, int(hit.sum()))
            columns["user_id"].append(np.full(int(hit.sum()), user_id, dtype=np.int64))
            columns["post_id"].append(post_ids[hit])
            columns["event"].append(np.full(int(hit.sum()), event, dtype=object))
            columns["ts"].append(np.minimum(seen_at[hit] + delay, end_us - 1))
    if not columns["user_id"]:
        return pd.DataFrame(
            {
                "user_id": pd.Series([], dtype="int64"),
                "post_id": pd.Series([], dtype="int64"),
                "event": pd.Series([], dtype="object"),
                "ts": pd.Series([], dtype="datetime64[us, UTC]"),
            }
        )
    return pd.DataFrame(
        {
            "user_id": np.concatenate(columns["user_id"]),
            "post_id": np.concatenate(columns["post_id"]),
            "event": np.concatenate(columns["event"]),
            "ts": pd.to_datetime(np.concatenate(columns["ts"]), unit="us", utc=True),
        }
    )


def truth_user_topics(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    user_ids = _block_users(config, block)
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "topic_weights": list(skeleton.user_interests[user_ids - 1]),
            "author_topic": skeleton.author_topic[user_ids - 1].astype(np.int32),
            "author_popularity": skeleton.author_popularity[user_ids - 1],
        }
    )


def truth_posts(config: GenerateConfig, skeleton: Skeleton, block: int) -> pd.DataFrame:
    lo, hi = _block_post_range(skeleton, _block_users(config, block))
    return pd.DataFrame(
        {
            "post_id": np.arange(lo + 1, hi + 1, dtype=np.int64),
            "topic": skeleton.post_topic[lo:hi].astype(np.int32),
            "sentiment": skeleton.post_sentiment[lo:hi].astype(np.int32),
            "quality": skeleton.post_quality[lo:hi],
        }
    )


TIME_COLUMNS = {"posts": "created_at", "engagements": "ts"}


def snapshot_end_us(config: GenerateConfig) -> int | None:
    """End of the snapshot window in µs, or None when every generated day is included."""
    if config.through_day is None:
        return None
    return _epoch_us(config.start_date) + config.through_day * _MICROS_PER_DAY


def cut_to_snapshot(config: GenerateConfig, table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Drop rows after the snapshot end, so an earlier snapshot is a subset of a later one."""
    end_us = snapshot_end_us(config)
    column = TIME_COLUMNS.get(table.removeprefix("truth/"))
    if end_us is None or column is None:
        return frame
    if table == "truth/posts":
        return frame  # latent truth of posts not yet written is harmless and keeps truth stable across days
    cutoff = pd.Timestamp(end_us, unit="us", tz="UTC")
    return frame[frame[column] < cutoff].reset_index(drop=True)


TABLE_GENERATORS = {
    "users": generate_users,
    "follows": generate_follows,
    "posts": generate_posts,
    "engagements": generate_engagements,
    "truth/user_topics": truth_user_topics,
    "truth/posts": truth_posts,
}
