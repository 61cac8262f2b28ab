"""Serving core without Ray: request validation, candidate merging, coherent loading, refusal, swap, rollback."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.calibration import Calibration
from serving.api import (
    CandidateQuery,
    NeighborQuery,
    RankQuery,
    parse_k,
    parse_sources,
    parse_user_id,
    validate_neighbors,
    validate_rank,
)
from serving.arrays import IdLists, parquet_files
from serving.config import ServeConfig, haproxy_available, serve_environment
from serving.errors import BundleLoadError, RequestError
from serving.hot_swap import BundleHolder
from serving.index_side import load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers, rollback_serving_set
from serving.ranker_side import load_ranker_bundle
from serving.recommend import rank_response, recommend, select_top
from storage.store import Store
from tests.support.serving_fixture import build_serving_set, fixture_index_configs, write_tiny_dataset

CONFIG = ServeConfig(warmup_queries=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny dataset and a store holding two coherent serving sets (the second one CURRENT)."""
    root = tmp_path_factory.mktemp("serve")
    data = str(root / "data")
    write_tiny_dataset(data, num_users=200, num_posts=400, seed=3)
    first = build_serving_set(str(root / "store"), data, seed=1, content_dim=16)
    second = build_serving_set(str(root / "store"), data, seed=2, content_dim=16)
    return {"root": root, "data": data, "store": str(root / "store"), "first": first, "second": second}


@pytest.fixture
def store_copy(served, tmp_path):
    """A private copy of the served store for tests that publish, corrupt or roll back."""
    target = tmp_path / "store"
    shutil.copytree(served["store"], target)
    return Store(str(target))


def _index(store: Store, data: str):
    return load_index_bundle(store, read_pointers(store, INDEX_POINTERS), CONFIG, fixture_index_configs())


def _ranker(store: Store, data: str):
    return load_ranker_bundle(store, read_pointers(store, RANKER_POINTERS), CONFIG)


@pytest.fixture(scope="module")
def bundles(served):
    store = Store(served["store"])
    return _index(store, served["data"]), _ranker(store, served["data"])


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("raw", ["0", "-3", "1001", "abc", "", "1.5", 2.5, True, [5]])
def test_k_out_of_range_or_not_a_number_is_422_with_the_allowed_range(raw):
    with pytest.raises(RequestError) as info:
        parse_k(raw, default=100, maximum=1000)
    assert info.value.status == 422
    assert "between 1 and 1000" in info.value.message


def test_k_defaults_and_accepts_integers_in_range():
    assert parse_k(None, default=100, maximum=1000) == 100
    assert parse_k(" 7 ", default=100, maximum=1000) == 7
    assert parse_k(1000, default=100, maximum=1000) == 1000
    assert parse_k(3.0, default=100, maximum=1000) == 3


def test_user_id_must_be_a_non_negative_integer():
    assert parse_user_id("42") == 42
    for raw in ("abc", "-1", "1e3", str(2**63)):
        with pytest.raises(RequestError) as info:
            parse_user_id(raw)
        assert info.value.status == 422 and "user_id" in info.value.message


def test_sources():
    every = ("content", "collaborative", "trending", "followed")
    assert parse_sources(None) == every
    assert parse_sources("both") == every and parse_sources("all") == every
    assert parse_sources("all", enabled=("content", "trending")) == ("content", "trending")
    assert parse_sources("collaborative") == ("collaborative",)
    assert parse_sources("content,content, followed") == ("content", "followed")
    for raw, enabled, bad in [
        ("content,popular", every, "popular"),
        ("trending", ("content", "collaborative"), "trending"),
        (",", every, "','"),
    ]:
        with pytest.raises(RequestError) as info:
            parse_sources(raw, enabled)
        assert info.value.status == 422 and bad in info.value.message
        assert ", ".join(enabled) in info.value.message  # names what is allowed


def test_neighbors_body_validation():
    assert validate_neighbors({"post_id": 3, "k": "5"}, CONFIG).k == 5
    query = validate_neighbors({"vector": [1, 2, 3]}, CONFIG)
    assert query.k == CONFIG.default_k and query.vector.dtype == np.float32
    bad = [
        {"vector": [1.0], "post_id": 3},
        {},
        {"post_id": 3, "k": 0},
        {"post_id": 3, "k": "many"},
        {"post_id": "x"},
        {"post_id": 3, "path": "/etc/passwd"},
        json.loads('{"vector": [NaN, 1.0]}'),
    ]
    for body in bad:
        with pytest.raises(RequestError) as info:
            validate_neighbors(body, CONFIG)
        assert info.value.status == 422, body
    with pytest.raises(RequestError, match="between 1 and 1000"):
        validate_neighbors({"post_id": 3, "k": 5000}, CONFIG)


def test_rank_body_validation():
    query = validate_rank({"user_id": 3, "post_ids": [1, 2]}, CONFIG)
    assert query.user_id == 3 and query.post_ids.tolist() == [1, 2]
    assert len(validate_rank({"user_id": 3, "post_ids": []}, CONFIG).post_ids) == 0
    for body in ({"user_id": "x", "post_ids": [1]}, {"post_ids": [1]}, {"user_id": 1, "post_ids": ["a"]}):
        with pytest.raises(RequestError) as info:
            validate_rank(body, CONFIG)
        assert info.value.status == 422
    with pytest.raises(RequestError, match="between 0 and 3"):
        validate_rank({"user_id": 1, "post_ids": [1, 2, 3, 4]}, ServeConfig(max_rank_posts=3))


def test_ray_serve_env_takes_only_serve_flags():
    assert serve_environment(ServeConfig(ingress="proxy")) == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    assert serve_environment(ServeConfig(ingress="proxy", ray_serve_env={"RAY_SERVE_LOG_TO_STDERR": "0"})) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_LOG_TO_STDERR": "0"
    }
    if haproxy_available():
        assert serve_environment(ServeConfig()) == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    with pytest.raises(ValueError, match=r"RAY_SERVE_\* variables only, got \['PATH'\]"):
        ServeConfig(ray_serve_env={"PATH": "/tmp", "RAY_SERVE_LOG_TO_STDERR": "0"})


# ------------------------------------------------------------------------------------------- merging


def test_id_lists_keep_the_most_recent_first_and_cap():
    lists = IdLists.from_pairs(
        keys=np.array([2, 1, 2, 2, 1]),
        values=np.array([20, 10, 21, 22, 11]),
        order=np.array([1, 5, 3, 2, 4]),
        cap=2,
    )
    assert lists.get(2).tolist() == [21, 22]
    assert lists.get(1).tolist() == [10, 11]
    assert lists.get(3).tolist() == []


# ------------------------------------------------------------------------------------------- bundles


def test_candidates_exclude_seen_posts_and_carry_source_and_score(bundles):
    index, _ = bundles
    users = [int(u) for u in index.known_users[:20]]
    results = index.candidates([CandidateQuery(u, 30) for u in users])
    assert any(len(r) for r in results)
    for user, result in zip(users, results, strict=True):
        seen = set(index.lists.seen.get(user).tolist())
        ids = [c["post_id"] for c in result]
        assert len(ids) == len(set(ids)) <= 30
        assert not seen & set(ids)
        assert all(c["source"] in c["scores"] for c in result)
    sources = {c["source"] for result in results for c in result}
    assert sources <= {"content", "collaborative", "trending", "followed"} and len(sources) > 1


def test_content_only_candidates_are_the_index_neighbours_of_the_interest_vector(bundles):
    index, _ = bundles
    user = int(index.interest.ids[0])
    result = index.candidates([CandidateQuery(user, 5, ("content",))])[0]
    assert {c["source"] for c in result} == {"content"}
    scores = [c["score"] for c in result]
    assert scores == sorted(scores, reverse=True)
    # Exact check against numpy: cosine of the interest vector with every unseen post of the content window.
    vectors = index.post_vectors.vectors / np.linalg.norm(index.post_vectors.vectors, axis=1, keepdims=True)
    query = index.interest.get(user) / np.linalg.norm(index.interest.get(user))
    sims = vectors @ query
    sims[np.isin(index.post_vectors.ids, index.lists.seen.get(user))] = -np.inf
    posts = index.posts
    created = posts.created_at_us[np.searchsorted(posts.post_ids, index.post_vectors.ids)]
    old = created <= posts.snapshot_us - index.sources.content_window_hours * 3_600_000_000
    assert 0 < old.sum() < len(old)  # the window leaves some posts out and keeps others
    sims[old] = -np.inf
    expected = index.post_vectors.ids[np.argsort(-sims)[:5]]
    assert [c["post_id"] for c in result] == expected.tolist()


def test_unknown_user_is_a_404_naming_it_and_does_not_fail_the_batch(bundles):
    index, ranker = bundles
    known = int(index.known_users[0])
    results = index.candidates([CandidateQuery(987654, 5), CandidateQuery(known, 5)])
    assert (
        isinstance(results[0], RequestError) and results[0].status == 404 and "987654" in results[0].message
    )
    assert isinstance(results[1], list)
    ranked = ranker.rank([RankQuery(987654, np.array([1]))])[0]
    assert isinstance(ranked, RequestError) and ranked.status == 404 and "987654" in ranked.message


def test_neighbors_errors_and_self_exclusion(bundles):
    index, _ = bundles
    post = int(index.post_vectors.ids[0])
    wrong_dim, unknown, by_post = index.neighbors(
        [
            NeighborQuery(5, vector=np.ones(3, np.float32)),
            NeighborQuery(5, post_id=10**9),
            NeighborQuery(5, post_id=post),
        ]
    )
    assert wrong_dim.status == 422 and "expected 16" in wrong_dim.message
    assert unknown.status == 404 and str(10**9) in unknown.message
    assert len(by_post) == 5 and post not in [n["post_id"] for n in by_post]
    by_vector = index.neighbors([NeighborQuery(3, vector=index.post_vectors.vectors[0])])[0]
    assert by_vector[0]["post_id"] == post


def test_rank_scores_match_the_scorer_and_empty_is_empty(bundles):
    _, ranker = bundles
    user = int(ranker.known_users[3])
    posts = ranker.posts.post_ids[:7]
    empty, full, unknown = ranker.rank(
        [
            RankQuery(user, np.zeros(0, np.int64)),
            RankQuery(user, posts),
            RankQuery(user, np.array([posts[0], 10**9])),
        ]
    )
    assert len(empty["score"]) == 0
    rows = np.searchsorted(ranker.posts.post_ids, posts)
    direct = ranker.scorer.score(
        user, posts, ranker.posts.author_ids[rows], {k: v[rows] for k, v in ranker.feature_columns.items()}
    )
    np.testing.assert_allclose(full["probabilities"], direct)
    np.testing.assert_allclose(full["score"], direct[:, 0])  # default weights: engage only
    assert unknown.status == 404 and str(10**9) in unknown.message


def test_recommend_ranks_candidates_and_returns_top_k(bundles):
    index, ranker = bundles
    user = int(index.interest.ids[1])
    top = recommend(index, ranker, user, k=5, num_candidates=40)
    candidates = {c["post_id"] for c in index.candidates([CandidateQuery(user, 40)])[0]}
    assert 0 < len(top) <= 5 and {t["post_id"] for t in top} <= candidates
    scores = [t["rank_score"] for t in top]
    assert scores == sorted(scores, reverse=True)
    all_scores = ranker.rank([RankQuery(user, np.array(sorted(candidates)))])[0]["rank_score"]
    assert scores[0] == pytest.approx(all_scores.max())


def test_served_order_is_the_raw_score_even_where_calibration_ties(bundles, monkeypatch):
    # A calibration that maps every model output to one value: the extreme of isotonic steps.
    index, ranker = bundles
    flat = Calibration(ranker.tasks, {t: (np.array([0.0, 1.0]), np.array([0.3, 0.3])) for t in ranker.tasks})
    monkeypatch.setattr(ranker.scorer, "_calibration", flat)
    user = int(index.interest.ids[2])
    candidates = index.candidates([CandidateQuery(user, 40)])[0]
    scored = ranker.rank([RankQuery(user, np.array([c["post_id"] for c in candidates]))])[0]
    assert np.allclose(scored["score"], 0.3) and len(np.unique(scored["rank_score"])) == len(candidates)
    # Handed over worst-first, so falling back to candidate order would serve them worst-first.
    worst_first = np.argsort(scored["rank_score"])
    candidates = [candidates[i] for i in worst_first]
    scored = ranker.rank([RankQuery(user, np.array([c["post_id"] for c in candidates]))])[0]
    top = select_top(candidates, scored, k=10)
    served = [t["rank_score"] for t in top]
    assert (np.diff(served) < 0).all(), "posts with different raw scores tied or inverted"
    assert [t["post_id"] for t in top] == [candidates[i]["post_id"] for i in np.argsort(-scored["rank_score"])[:10]]
    assert all(t["score"] == pytest.approx(0.3) for t in top)
    via_recommend = recommend(index, ranker, user, k=10, num_candidates=40)
    assert [t["post_id"] for t in via_recommend] == [t["post_id"] for t in top]
    response = rank_response(scored, ranker.tasks)
    assert [r["rank_score"] for r in response] == scored["rank_score"].tolist()
    assert all(r["score"] == pytest.approx(0.3) for r in response)


@pytest.fixture(scope="module")
def with_cold_users(tmp_path_factory):
    """A serving set whose dataset has three users without any event or follow (ids 9001..9003)."""
    root = tmp_path_factory.mktemp("cold")
    data = root / "data"
    write_tiny_dataset(str(data), num_users=120, num_posts=300, seed=5)
    users = pq.read_table(data / "users" / "part-00000.parquet")
    cold = users.slice(0, 3).set_column(0, "user_id", pa.array([9001, 9002, 9003], pa.int64()))
    pq.write_table(cold, data / "users" / "part-00001.parquet")
    build_serving_set(str(root / "store"), str(data), seed=1, content_dim=16)
    store = Store(str(root / "store"))
    # The tiny dataset's newest post is a day older than its last engagement: widen the trending window.
    config = CONFIG.model_copy(update={"trending_window_hours": 72.0})
    index = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config, fixture_index_configs())
    return index, _ranker(store, str(data))


def test_a_user_without_history_gets_the_fallback_sources_and_only_a_never_seen_id_is_404(with_cold_users):
    index, ranker = with_cold_users
    assert index.interest.get(9001) is None and len(index.lists.seen.get(9001)) == 0
    cold, never_seen = index.candidates([CandidateQuery(9001, 20), CandidateQuery(424242, 20)])
    assert cold and "content" not in {c["source"] for c in cold}
    trending = index.candidates([CandidateQuery(9001, 20, ("trending",))])[0]
    assert trending and {c["source"] for c in trending} == {"trending"}
    assert trending[0]["post_id"] in {c["post_id"] for c in cold}
    assert isinstance(never_seen, RequestError) and never_seen.status == 404 and "424242" in never_seen.message
    top = recommend(index, ranker, 9002, k=5, num_candidates=50)
    assert len(top) == 5
    with pytest.raises(RequestError) as info:
        recommend(index, ranker, 424242, k=5, num_candidates=50)
    assert info.value.status == 404 and "424242" in info.value.message


def test_disabled_sources_do_not_run(bundles):
    index, _ = bundles
    only_content = replace(index, sources=replace(index.sources, enabled=("content",)))
    users = [int(u) for u in index.interest.ids[:5]]
    for result in only_content.candidates([CandidateQuery(u, 30) for u in users]):
        assert result and {c["source"] for c in result} == {"content"}
        assert all(set(c["scores"]) == {"content"} for c in result)
    asked = only_content.candidates([CandidateQuery(users[0], 30, ("trending", "followed"))])[0]
    assert asked == []


# ------------------------------------------------------------------------------------------- coherence / refusal


def _republish_interest(store: Store, model_version: str) -> str:
    current = store.current("embeddings", "user_interest")
    table = pq.read_table(parquet_files(store.path("embeddings", "user_interest", current))[0])
    with store.stage("embeddings", "user_interest", manifest={"model_version": model_version}) as staged:
        pq.write_table(table, Path(staged.path) / "part-00000.parquet")
    store.publish("embeddings", "user_interest", staged.version)
    return staged.version


def test_interest_vectors_from_another_content_model_are_refused(store_copy, served):
    _republish_interest(store_copy, "some-other-content-model")
    with pytest.raises(BundleLoadError, match="incoherent"):
        _index(store_copy, served["data"])


def test_user_vectors_from_another_ranker_are_refused(store_copy, served):
    # Point the ranker back at the first set while the user vectors stay from the second one.
    store_copy.publish("models", "ranker", served["first"]["models/ranker"])
    with pytest.raises(BundleLoadError, match="incoherent"):
        _ranker(store_copy, served["data"])


def test_index_without_lineage_is_refused_when_lineage_is_required(store_copy, served):
    index_dir = Path(store_copy.path("indexes", "content", served["second"]["indexes/content"]))
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["embedding_version"]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleLoadError, match="embedding_version"):
        _index(store_copy, served["data"])


def _holder(store: Store, data: str) -> BundleHolder:
    return BundleHolder(
        "index",
        lambda: read_pointers(store, INDEX_POINTERS),
        lambda pointers: load_index_bundle(store, pointers, CONFIG, fixture_index_configs()),
    )


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_corrupt_or_missing_version_is_refused_and_the_old_one_keeps_serving(store_copy, served, damage):
    holder = _holder(store_copy, served["data"])
    assert holder.poll()
    serving = holder.current
    new = build_serving_set(str(store_copy.root), served["data"], seed=3, content_dim=16)
    index_file = Path(store_copy.path("indexes", "content", new["indexes/content"])) / "index.faiss"
    if damage == "corrupt":
        data = bytearray(index_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
    else:
        index_file.unlink()
    assert not holder.poll()
    assert holder.current is serving
    assert "index.faiss" in holder.last_error and new["indexes/content"] in holder.last_error
    assert not holder.poll()  # the refused pointers are not retried until they change
    # A good version published afterwards is picked up.
    fixed = build_serving_set(str(store_copy.root), served["data"], seed=4, content_dim=16)
    assert holder.poll()
    assert holder.current.versions["indexes"]["content"]["version"] == fixed["indexes/content"]
    assert holder.last_error is None and holder.swaps == 2


def test_rollback_returns_to_the_previous_coherent_set(store_copy, served):
    changed = rollback_serving_set(store_copy)
    first = served["first"]
    for key in (
        "indexes/content",
        "indexes/user",
        "embeddings/user_interest",
        "models/ranker",
        "embeddings/user",
    ):
        kind, name = key.split("/")
        assert store_copy.current(kind, name) == first[key], key
    assert changed["models/ranker"] == first["models/ranker"]
    index = _index(store_copy, served["data"])
    ranker = _ranker(store_copy, served["data"])
    assert index.versions["indexes"]["user"]["version"] == first["indexes/user"]
    assert ranker.versions["models"]["ranker"]["version"] == first["models/ranker"]


def test_unknown_score_weight_task_is_refused(served):
    store = Store(served["store"])
    config = ServeConfig(warmup_queries=2, score_weights={"retweet": 1.0})
    with pytest.raises(BundleLoadError, match="retweet"):
        load_ranker_bundle(store, read_pointers(store, RANKER_POINTERS), config)


def test_serve_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        ServeConfig.model_validate({"batching": {"max_batch_size": 8, "wait": 1}})


def test_vectors_with_nan_are_refused(store_copy, served):
    current = store_copy.current("embeddings", "user_interest")
    model = store_copy.manifest("embeddings", "user_interest", current)["model_version"]
    table = pq.read_table(parquet_files(store_copy.path("embeddings", "user_interest", current))[0])
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[0, 0] = np.nan
    bad = table.set_column(
        table.schema.get_field_index("vector"),
        "vector",
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
    )
    with store_copy.stage("embeddings", "user_interest", manifest={"model_version": model}) as staged:
        pq.write_table(bad, Path(staged.path) / "part-00000.parquet")
    store_copy.publish("embeddings", "user_interest", staged.version)
    with pytest.raises(BundleLoadError, match="NaN"):
        _index(store_copy, served["data"])


def test_posts_the_ranker_does_not_know_yet_are_dropped_from_recommend_not_an_error(bundles):
    # Mid hot-swap the index side can serve posts newer than the ranker side's post table.
    _, ranker = bundles
    user = int(ranker.known_users[0])
    known = ranker.posts.post_ids[:3]
    unknown = np.asarray([10_000_000, 10_000_001], dtype=np.int64)
    posts = np.concatenate([known.astype(np.int64), unknown])
    strict = ranker.rank([RankQuery(user, posts)])[0]
    assert isinstance(strict, RequestError) and strict.status == 404
    lenient = ranker.rank([RankQuery(user, posts, skip_unknown_posts=True)])[0]
    assert np.isfinite(lenient["score"][:3]).all() and np.isneginf(lenient["score"][3:]).all()
    candidates = [{"post_id": int(p), "source": "content", "score": 0.0} for p in posts]
    top = select_top(candidates, lenient, k=5)
    assert [item["post_id"] for item in top] and all(item["post_id"] not in unknown for item in top)
    assert len(top) == 3


def test_rollback_pairs_the_feature_snapshots_with_the_user_vectors(tmp_path):
    data, store_root = str(tmp_path / "data"), str(tmp_path / "store")
    write_tiny_dataset(data, num_users=60, num_posts=120, seed=4)
    first = build_serving_set(store_root, data, seed=1, content_dim=8)
    second = build_serving_set(store_root, data, seed=2, content_dim=8)
    store = Store(store_root)
    assert store.current("features", "post") == second["features/post"]
    changed = rollback_serving_set(store)
    for name in ("post", "user_lists"):
        assert changed[f"features/{name}"] == first[f"features/{name}"] == store.current("features", name)


def test_scorer_lookups_return_exported_vectors_and_defaults_for_the_rest(served):
    store = Store(served["store"])
    version = store.current("embeddings", "user_author")
    pairs = pq.read_table(parquet_files(store.path("embeddings", "user_author", version))[0])
    users = pairs.column("user_id").to_numpy()
    authors = pairs.column("author_id").to_numpy()
    vectors = np.stack(pairs.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    scorer = _ranker(store, served["data"]).scorer
    rows = np.random.default_rng(0).permutation(len(users))[:300]
    # Known pairs in random order, mixed with unknown authors and an unknown user.
    query_users = np.concatenate([users[rows], users[rows[:5]], [10**9]])
    query_authors = np.concatenate([authors[rows], np.full(5, 10**9), authors[rows[:1]]])
    got = scorer.lookup_pairs(query_users, query_authors)
    np.testing.assert_array_equal(got[:300], vectors[rows])
    np.testing.assert_array_equal(got[300:], np.tile(scorer.default_pair_vector, (6, 1)))
    known = int(users[0])
    assert scorer.lookup_users(np.array([known, 10**9])).shape == (2, scorer.default_user_vector.shape[0])
    np.testing.assert_array_equal(scorer.lookup_user(10**9), scorer.default_user_vector)
