"""A complete, coherent serving set built directly with the libraries, for tests and the serving benchmark.

``build_serving_set`` publishes, in one call, what the refresh jobs would: content embeddings of a
(pretend) content model and their index, user-interest vectors pooled from the content vectors of
what each user engaged with, a randomly initialised ranker with its exported user and user-author
vectors, and the user index — all with the manifest lineage serving checks. Each call makes a new
coherent version of everything, so two calls give a hot swap and a rollback target.

``write_tiny_dataset`` writes a small contract dataset (users, posts, follows, engagements) when no
generated one is at hand. Neither is used by the serving path itself.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.config import TopicModelConfig
from embeddings.topics import fit_topic_model
from inputs.contract import POSITIVE_EVENTS
from ranking.config import DiscretizerConfig, RankerConfig
from ranking.discretizer import fit_discretizer
from ranking.examples import encode_group
from ranking.model import build_ranker, export_split
from ranking.scorer import compute_split_vectors
from ranking.training import save_ranker
from retrieval.config import IndexConfig
from retrieval.index import build_index, save_index
from serving.arrays import TOPICS_COLUMN, read_table
from serving.ranker_side import PostTable, post_table_from_artifact
from storage.store import Store

_START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _write(table: pa.Table, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "part-00000.parquet")


def write_tiny_dataset(data_path: str, num_users: int = 300, num_posts: int = 600, seed: int = 0) -> None:
    """A small contract dataset with topic structure: users engage mostly with posts of their topic.

    Args:
        data_path: directory to create the users/posts/follows/engagements tables in.
        num_users: users (ids 1..num_users); the first third are authors.
        num_posts: posts (ids 1..num_posts).
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    root = Path(data_path)
    num_topics = 8
    user_ids = np.arange(1, num_users + 1, dtype=np.int64)
    user_topic = rng.integers(0, num_topics, num_users)
    authors = user_ids[: max(num_users // 3, 1)]
    post_ids = np.arange(1, num_posts + 1, dtype=np.int64)
    post_author = rng.choice(authors, num_posts)
    post_topic = user_topic[post_author - 1]
    micro = 1_000_000
    base_us = int(_START.timestamp() * micro)
    post_created = base_us + rng.integers(0, 5 * 86_400, num_posts) * micro
    ts_type = pa.timestamp("us", tz="UTC")
    # Words from the post's topic (a generator of their own, so the other draws stay as they were): the
    # topic model the serving tables carry needs subjects to find.
    word_rng = np.random.default_rng(seed + 1)
    texts = [
        " ".join([f"post {p}", *(f"t{t}w{w}" for w in word_rng.integers(0, 6, 4))])
        for p, t in zip(post_ids.tolist(), post_topic.tolist(), strict=True)
    ]
    _write(
        pa.table(
            {
                "user_id": user_ids,
                "created_at": pa.array(np.full(num_users, base_us - 86_400 * micro * 30), ts_type),
                "country": rng.choice(["us", "gb", "fr"], num_users),
                "language": rng.choice(["en", "fr"], num_users),
                "is_verified": rng.random(num_users) < 0.05,
            }
        ),
        root / "users",
    )
    _write(
        pa.table(
            {
                "post_id": post_ids,
                "author_id": post_author,
                "text": texts,
                "created_at": pa.array(post_created, ts_type),
                "has_media": rng.random(num_posts) < 0.3,
                "text_length": pa.array(rng.integers(5, 280, num_posts), pa.int32()),
            }
        ),
        root / "posts",
    )
    followers = rng.choice(user_ids, num_users * 5)
    followees = rng.choice(authors, num_users * 5)
    pairs = np.unique(np.stack([followers, followees], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    _write(
        pa.table(
            {
                "follower_id": pairs[:, 0],
                "followee_id": pairs[:, 1],
                "created_at": pa.array(np.full(len(pairs), base_us), ts_type),
            }
        ),
        root / "follows",
    )
    rows_user, rows_post, rows_event, rows_ts = [], [], [], []
    for u in range(num_users):
        same = post_ids[post_topic == user_topic[u]]
        shown = np.unique(np.concatenate([rng.choice(post_ids, 12), rng.choice(same, min(8, len(same)))]))
        liked = shown[(post_topic[shown - 1] == user_topic[u]) & (rng.random(len(shown)) < 0.6)]
        ts = base_us + rng.integers(5 * 86_400, 6 * 86_400, len(shown)) * micro
        rows_user += [user_ids[u]] * len(shown)
        rows_post += shown.tolist()
        rows_event += ["impression"] * len(shown)
        rows_ts += ts.tolist()
        for p in liked:
            rows_user.append(user_ids[u])
            rows_post.append(int(p))
            rows_event.append(str(rng.choice(POSITIVE_EVENTS)))
            rows_ts.append(int(ts[0]) + micro)
    _write(
        pa.table(
            {
                "user_id": pa.array(rows_user, pa.int64()),
                "post_id": pa.array(rows_post, pa.int64()),
                "event": rows_event,
                "ts": pa.array(rows_ts, ts_type),
            }
        ),
        root / "engagements",
    )


def _vector_table(id_name: str, ids: np.ndarray, vectors: np.ndarray, **extra: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    columns = {id_name: pa.array(ids, pa.int64()), **{k: pa.array(v, pa.int64()) for k, v in extra.items()}}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table(columns)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _publish_index(
    store: Store, name: str, ids: np.ndarray, vectors: np.ndarray, config: IndexConfig, lineage: dict
) -> str:
    built = build_index(config, vectors.shape[1], [(ids, vectors)], vectors, num_vectors=len(ids))
    with store.stage("indexes", name, manifest=dict(lineage)) as staged:
        save_index(built, staged.path)
    store.publish("indexes", name, staged.version)
    return staged.version


def _publish_vectors(store: Store, name: str, table: pa.Table, model_version: str, **manifest: int) -> str:
    with store.stage("embeddings", name, manifest={"model_version": model_version, **manifest}) as staged:
        os.makedirs(staged.data_path)
        pq.write_table(table, os.path.join(staged.data_path, "part-00000.parquet"))
    store.publish("embeddings", name, staged.version)
    return staged.version


def _post_feature_table(data_path: str, seed: int) -> tuple[pa.Table, int]:
    """The features/post table the serving-tables Spark job publishes, computed in numpy for the fixture.

    Each set (seed) is a snapshot taken a few microseconds apart, so that rollback's pairing of snapshots
    with user vectors (snapshot_us == as_of_us) is exercised.

    Returns:
        The table (post_id, author_id, created_at_us, post feature columns, topics) and its snapshot time (us).
    """
    root = Path(data_path)
    posts = read_table(str(root / "posts"), ["post_id", "author_id", "created_at", "has_media", "text_length", "text"])
    engagements = read_table(str(root / "engagements"), ["post_id", "event", "ts"])
    follows = read_table(str(root / "follows"), ["followee_id"])
    post_ids = posts.column("post_id").to_numpy().astype(np.int64)
    order = np.argsort(post_ids)
    post_ids = post_ids[order]
    author_ids = posts.column("author_id").to_numpy().astype(np.int64)[order]
    created = posts.column("created_at").cast(pa.int64()).to_numpy()[order]
    events = engagements.column("event").to_numpy(zero_copy_only=False)
    ts = engagements.column("ts").cast(pa.int64()).to_numpy()
    snapshot_us = (int(ts.max()) + 1 if len(ts) else int(created.max())) + seed
    pos = np.searchsorted(post_ids, engagements.column("post_id").to_numpy().astype(np.int64))

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(pos[mask], minlength=len(post_ids)).astype(np.float64)

    authors, follower_counts = np.unique(follows.column("followee_id").to_numpy(), return_counts=True)
    followers = dict(zip(authors.tolist(), follower_counts.tolist(), strict=True))
    texts = [posts.column("text")[int(i)].as_py() for i in order]
    table = pa.table(
        {
            "post_id": post_ids,
            "author_id": author_ids,
            "created_at_us": created,
            "post_has_media": posts.column("has_media").to_numpy(zero_copy_only=False)[order].astype(np.float64),
            "post_text_length": posts.column("text_length").to_numpy()[order].astype(np.float64),
            "post_age_hours": np.maximum(snapshot_us - created, 0) / 3.6e9,
            "post_impressions_so_far": count(events == "impression"),
            "post_engagements_so_far": count(np.isin(events, POSITIVE_EVENTS)),
            "post_likes_so_far": count(events == "like"),
            "post_replies_so_far": count(events == "reply"),
            "post_reposts_so_far": count(events == "repost"),
            "author_follower_count": np.asarray([followers.get(a, 0) for a in author_ids.tolist()], np.float64),
            TOPICS_COLUMN: list(fit_topic_model(texts, TopicModelConfig()).transform(texts)),
        }
    )
    return table, snapshot_us


def _newest_first(keys: np.ndarray, values: np.ndarray, times: np.ndarray, users: np.ndarray) -> list[list[int]]:
    """Per user in ``users``, their values newest first, each value once."""
    out: dict[int, list[int]] = {int(u): [] for u in users}
    for key, value, _ in sorted(zip(keys.tolist(), values.tolist(), times.tolist(), strict=True),
                             key=lambda row: (-row[2], -row[1])):
        if value not in out[key]:
            out[key].append(value)
    return [out[int(u)] for u in users]


def _user_lists_table(data_path: str) -> pa.Table:
    """The features/user_lists table (user_id, engaged, seen, followees) the Spark job publishes."""
    root = Path(data_path)
    engagements = read_table(str(root / "engagements"), ["user_id", "post_id", "event", "ts"])
    follows = read_table(str(root / "follows"), ["follower_id", "followee_id", "created_at"])
    users = np.unique(read_table(str(root / "users"), ["user_id"]).column("user_id").to_numpy())
    e_users = engagements.column("user_id").to_numpy()
    e_posts = engagements.column("post_id").to_numpy()
    e_ts = engagements.column("ts").cast(pa.int64()).to_numpy()
    positive = np.isin(engagements.column("event").to_numpy(zero_copy_only=False), POSITIVE_EVENTS)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "engaged": pa.array(
                _newest_first(e_users[positive], e_posts[positive], e_ts[positive], users), pa.list_(pa.int64())
            ),
            "seen": pa.array(_newest_first(e_users, e_posts, e_ts, users), pa.list_(pa.int64())),
            "followees": pa.array(
                _newest_first(
                    follows.column("follower_id").to_numpy(),
                    follows.column("followee_id").to_numpy(),
                    follows.column("created_at").cast(pa.int64()).to_numpy(),
                    users,
                ),
                pa.list_(pa.int64()),
            ),
        }
    )


def _publish_table(store: Store, name: str, table: pa.Table, manifest: dict) -> str:
    with store.stage("features", name, manifest=manifest) as staged:
        os.makedirs(staged.data_path)
        pq.write_table(table, os.path.join(staged.data_path, "part-00000.parquet"))
    store.publish("features", name, staged.version)
    return staged.version


def fixture_index_configs() -> dict[str, IndexConfig]:
    """Exact (Flat) indexes: tiny fixtures need no training, and results are deterministic."""
    return {
        "content": IndexConfig(factory_string="Flat", metric="cosine"),
        "user": IndexConfig(factory_string="Flat", metric="ip"),
    }


def build_serving_set(
    store_root: str, data_path: str, seed: int = 0, content_dim: int = 32
) -> dict[str, str]:
    """Publish one new coherent set of every artifact serving reads (see module docstring).

    Args:
        store_root: the store to publish into.
        data_path: a contract dataset (posts, engagements, follows; e.g. from write_tiny_dataset).
        seed: varies the vectors and the ranker's weights between sets.
        content_dim: content embedding dimension.

    Returns:
        'kind/name' -> published version.
    """
    rng = np.random.default_rng(seed)
    store = Store(store_root)
    versions: dict[str, str] = {}
    index_configs = fixture_index_configs()
    post_features, snapshot_us = _post_feature_table(data_path, seed)
    lineage = {"snapshot_us": snapshot_us, "input_fingerprint": f"fixture-{Path(data_path).name}"}
    versions["features/post"] = _publish_table(store, "post", post_features, lineage)
    versions["features/user_lists"] = _publish_table(store, "user_lists", _user_lists_table(data_path), lineage)
    posts: PostTable = post_table_from_artifact(store.data_path("features", "post", versions["features/post"]))
    engagements = read_table(str(Path(data_path) / "engagements"), ["user_id", "post_id", "event"])
    users = np.unique(read_table(str(Path(data_path) / "users"), ["user_id"]).column("user_id").to_numpy())

    # Content side: a pretend content model version, its post vectors, the index, pooled user interests.
    content_model = f"content-model-seed{seed}"
    centers = rng.normal(size=(8, content_dim))
    post_vectors = _unit(
        centers[posts.author_ids % 8] + 0.5 * rng.normal(size=(len(posts.post_ids), content_dim))
    )
    versions["embeddings/content"] = _publish_vectors(
        store, "content", _vector_table("post_id", posts.post_ids, post_vectors), content_model
    )
    versions["indexes/content"] = _publish_index(
        store,
        "content",
        posts.post_ids,
        post_vectors,
        index_configs["content"],
        {"embedding_version": versions["embeddings/content"], "model_version": content_model},
    )
    event = engagements.column("event").to_numpy(zero_copy_only=False)
    positive = np.isin(event, POSITIVE_EVENTS)
    e_users = engagements.column("user_id").to_numpy()[positive]
    e_rows = np.searchsorted(posts.post_ids, engagements.column("post_id").to_numpy()[positive])
    interest_users, inverse = np.unique(e_users, return_inverse=True)
    interest = np.zeros((len(interest_users), content_dim))
    np.add.at(interest, inverse, post_vectors[e_rows])
    versions["embeddings/user_interest"] = _publish_vectors(
        store, "user_interest", _vector_table("user_id", interest_users, _unit(interest)), content_model
    )

    # Ranker side: a random ranker, its user / user-author vectors and the user index, one lineage.
    config = RankerConfig(discretizer=DiscretizerConfig(num_bins=8, hash_space_size=4096))
    samples = {name: rng.gamma(2.0, 10.0, 500) for name in config.continuous_features}
    samples.update({name: np.asarray(posts.columns[name], dtype=float) for name in posts.columns if name != "created_at_us"})
    discretizer = fit_discretizer(
        samples, config.discretizer.num_bins, config.discretizer.hash_space_size, config.categorical_features
    )
    import torch

    torch.manual_seed(seed)
    model = build_ranker(config).eval()
    with store.stage("models", "ranker", manifest={"fixture_seed": seed}) as staged:
        save_ranker(staged.path, model, config, discretizer, metadata={"fixture_seed": seed})
    ranker_version = staged.version
    store.publish("models", "ranker", ranker_version)
    versions["models/ranker"] = ranker_version

    def split_vectors(group: str, n: int) -> np.ndarray:
        group_config = config.groups[group]
        columns = {name: rng.gamma(2.0, 10.0, n) for name in group_config.continuous_features}
        columns.update(
            {
                name: rng.choice(["a", "b", "c"], n).astype(object)
                for name in group_config.categorical_features
            }
        )
        ids, dense = encode_group(config, discretizer, group, columns)
        return compute_split_vectors(export_split(model, group), ids, dense)

    user_vectors = split_vectors("user", len(users))
    versions["embeddings/user"] = _publish_vectors(
        store, "user", _vector_table("user_id", users, user_vectors), ranker_version, as_of_us=snapshot_us
    )
    authors = posts.author_ids[np.searchsorted(posts.post_ids, engagements.column("post_id").to_numpy())]
    pairs = np.unique(np.stack([engagements.column("user_id").to_numpy(), authors], axis=1), axis=0)
    versions["embeddings/user_author"] = _publish_vectors(
        store,
        "user_author",
        _vector_table(
            "user_id", pairs[:, 0], split_vectors("user_author", len(pairs)), author_id=pairs[:, 1]
        ),
        ranker_version,
    )
    versions["indexes/user"] = _publish_index(
        store,
        "user",
        users,
        user_vectors,
        index_configs["user"],
        {"embedding_version": versions["embeddings/user"], "model_version": ranker_version},
    )
    return versions
