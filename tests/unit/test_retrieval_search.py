"""Searcher: ANN recall against exact search, large k with padding, exclusions, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.config import IndexConfig, SearchConfig
from retrieval.index import build_index
from retrieval.search import FLT_MAX, Searcher, rowwise_isin
from retrieval.synthetic import clustered_vectors, query_vectors
from retrieval.validation import exact_search, recall_at_k

DIM = 32
NUM_VECTORS = 4000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, vectors = clustered_vectors(NUM_VECTORS, DIM, num_clusters=32, seed=5)
    return ids * 10 + 3, vectors, query_vectors(40, DIM, num_clusters=32, seed=5)


def make(data, spec: str, metric: str = "ip", **search) -> Searcher:
    ids, vectors, _ = data
    config = IndexConfig(factory_string=spec, metric=metric, search=SearchConfig(**search))
    batches = [(ids[i : i + 1000], vectors[i : i + 1000]) for i in range(0, len(ids), 1000)]
    return Searcher(build_index(config, DIM, batches, vectors), config)


@pytest.fixture(scope="module")
def truth(data) -> np.ndarray:
    ids, vectors, queries = data
    return exact_search([(ids, vectors)], queries, 100, "ip")[0]


@pytest.mark.parametrize(
    ("spec", "search", "min_recall"),
    [
        ("IVF64,Flat", {"nprobe": 8}, 0.95),
        ("HNSW16", {"ef_search": 64}, 0.9),
        ("IVF32,PQ16x4,RFlat", {"nprobe": 8, "k_factor": 8}, 0.85),
    ],
)
def test_ann_recall_against_exact(data, truth, spec: str, search: dict, min_recall: float) -> None:
    found, scores = make(data, spec, **search).search(data[2], 100)
    assert recall_at_k(found, truth, 100) >= min_recall
    assert recall_at_k(found, truth, 10) >= min_recall
    # Best first.
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_fewer_probes_lose_recall(data, truth) -> None:
    # The recall check above could pass vacuously if nprobe were ignored; this shows it is applied.
    coarse = recall_at_k(make(data, "IVF64,Flat", nprobe=1).search(data[2], 100)[0], truth, 100)
    fine = recall_at_k(make(data, "IVF64,Flat", nprobe=64).search(data[2], 100)[0], truth, 100)
    assert fine == 1.0 and coarse < 0.8


def test_large_k_pads_with_minus_one(data) -> None:
    ids = data[0]
    found, scores = make(data, "Flat").search(data[2][:3], 10_000)
    assert found.shape == (3, 10_000)
    assert np.all(found[:, :NUM_VECTORS] >= 0) and np.all(found[:, NUM_VECTORS:] == -1)
    assert set(found[0, :NUM_VECTORS].tolist()) == set(ids.tolist())
    assert np.all(scores[:, NUM_VECTORS:] == -FLT_MAX)


def test_hnsw_reaches_k_beyond_ef_search(data) -> None:
    found, _ = make(data, "HNSW16", ef_search=16).search(data[2][:3], 3000)
    assert (found >= 0).sum(axis=1).min() == 3000


def test_l2_pads_with_max_distance(data) -> None:
    found, scores = make(data, "Flat", metric="l2").search(data[2][:2], 5000)
    assert np.all(found[:, NUM_VECTORS:] == -1) and np.all(scores[:, NUM_VECTORS:] == FLT_MAX)
    assert np.all(np.diff(scores[:, :NUM_VECTORS], axis=1) >= 0)


@pytest.mark.parametrize("spec", ["IVF32,Flat", "HNSW16", "Flat", "IVF32,PQ16x4,RFlat", "PCA16,IVF32,Flat"])
def test_exclusions_exclude_and_keep_k(data, truth, spec: str) -> None:
    searcher = make(data, spec, nprobe=32, ef_search=128, k_factor=8)
    queries = data[2]
    plain, _ = searcher.search(queries, 20)
    blocked = plain[:, :2].ravel()  # the two best of every query, for all queries
    seen = [row[2:7] for row in plain]  # the next five, for that query only
    found, scores = searcher.search(queries, 20, exclude_ids=blocked, exclude_per_query=seen)
    assert not np.isin(found, blocked).any()
    assert not rowwise_isin(found, seen).any()
    assert np.all(found >= 0) and found.shape == (len(queries), 20)
    # For exact-scan indexes what remains is exactly the best of the rest, in order.
    if spec in ("Flat", "IVF32,Flat"):
        deeper, _ = searcher.search(queries, 200)
        rest = [row[~np.isin(row, np.concatenate([blocked, s]))][:20] for row, s in zip(deeper, seen, strict=True)]
        np.testing.assert_array_equal(found, np.stack(rest))


def test_global_exclusions_use_the_selector(data) -> None:
    searcher = make(data, "IVF32,Flat", nprobe=32)
    blocked = data[0][: NUM_VECTORS - 10]  # all but ten vectors
    found, _ = searcher.search(data[2][:4], 20, exclude_ids=blocked)
    # The selector skips blocked vectors inside faiss: exactly the ten others remain, then padding.
    assert set(found[0, :10].tolist()) == set(data[0][NUM_VECTORS - 10 :].tolist())
    assert np.all(found[:, 10:] == -1)


def test_per_query_exclusion_lists_must_match_queries(data) -> None:
    with pytest.raises(ValueError, match="exclude_per_query has 1 lists for 40 queries"):
        make(data, "Flat").search(data[2], 5, exclude_per_query=[np.array([1])])


def test_query_batches_match_one_call(data) -> None:
    whole = make(data, "IVF32,Flat", nprobe=4).search(data[2], 50)
    batched = make(data, "IVF32,Flat", nprobe=4, query_batch_size=7).search(data[2], 50)
    np.testing.assert_array_equal(whole[0], batched[0])
    np.testing.assert_array_equal(whole[1], batched[1])


@pytest.mark.parametrize("k", [0, -3, 10_001])
def test_k_out_of_range_is_an_error(data, k: int) -> None:
    with pytest.raises(ValueError, match=f"k must be between 1 and 10000, got {k}"):
        make(data, "Flat").search(data[2], k)


def test_wrong_query_dimension_is_an_error(data) -> None:
    with pytest.raises(ValueError, match=r"shape \(B, 32\), got \(40, 16\)"):
        make(data, "Flat").search(data[2][:, :16], 5)


def test_nan_queries_are_an_error(data) -> None:
    queries = data[2].copy()
    queries[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        make(data, "Flat").search(queries, 5)


def test_rowwise_isin() -> None:
    ids = np.array([[5, 6, 7], [5, 6, -1]])
    got = rowwise_isin(ids, [np.array([6]), np.array([5, 9])])
    np.testing.assert_array_equal(got, [[False, True, False], [True, False, False]])
