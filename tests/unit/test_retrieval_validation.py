"""The publish gate and the evaluation sweep, on small seeded clustered vectors."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from retrieval.config import GateConfig, IndexConfig, SearchConfig
from retrieval.evaluation import plot_recall_qps, sweep_index
from retrieval.index import build_index
from retrieval.search import Searcher
from retrieval.synthetic import clustered_vectors, query_vectors
from retrieval.validation import exact_search, exact_search_excluding_self, recall_at_k, validate_index

DIM = 32


@pytest.fixture(scope="module")
def data():
    ids, vectors = clustered_vectors(4000, DIM, num_clusters=32, seed=5)
    queries = query_vectors(50, DIM, num_clusters=32, seed=5)
    truth, _ = exact_search([(ids[:1500], vectors[:1500]), (ids[1500:], vectors[1500:])], queries, 100, "ip")
    return ids, vectors, queries, truth


@pytest.fixture(scope="module")
def built(data):
    ids, vectors, _, _ = data
    return build_index(IndexConfig(factory_string="IVF64,Flat"), DIM, [(ids, vectors)], vectors)


def searcher(built, nprobe: int) -> Searcher:
    return Searcher(built, IndexConfig(factory_string="IVF64,Flat", search=SearchConfig(nprobe=nprobe)))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_streamed_exact_search_matches_flat(data, metric: str) -> None:
    ids, vectors, queries, _ = data
    scaled = vectors * np.linspace(0.5, 2.0, len(vectors), dtype=np.float32)[:, None]
    batches = [(ids[i : i + 700], scaled[i : i + 700]) for i in range(0, len(ids), 700)]
    found, scores = exact_search(batches, queries, 30, metric)
    database, query = scaled.copy(), queries.copy()
    if metric == "cosine":
        faiss.normalize_L2(database)
        faiss.normalize_L2(query)
    flat = faiss.IndexFlat(DIM, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    flat.add(database)
    expected_scores, positions = flat.search(query, 30)
    np.testing.assert_array_equal(found, ids[positions])
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_recall_at_k_counts_overlap() -> None:
    found = np.array([[1, 2, 3], [7, 8, -1]])
    truth = np.array([[3, 2, 9], [7, -1, -1]])
    # Query 0 finds 2 of 3; query 1 finds its only true neighbour.
    assert recall_at_k(found, truth, 3) == pytest.approx((2 / 3 + 1.0) / 2)
    assert recall_at_k(found, truth, 1) == pytest.approx((0.0 + 1.0) / 2)


def test_stored_vector_queries_leave_themselves_out(data, built) -> None:
    ids, vectors, _, _ = data
    picked = np.arange(0, len(ids), 100)
    query_ids, queries = ids[picked], vectors[picked]
    with_self, _ = exact_search([(ids, vectors)], queries, 11, "ip")
    without_self, scores = exact_search_excluding_self([(ids, vectors)], query_ids, queries, 10, "ip")
    assert (with_self[:, 0] == query_ids).all()  # each stored vector is its own nearest neighbour
    assert not (without_self == query_ids[:, None]).any()
    np.testing.assert_array_equal(without_self, with_self[:, 1:])
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # A 1-probe IVF finds the query itself every time: that hit alone would be 1/10 of recall@10.
    gate = GateConfig(min_recall=0.0)
    counted_self = validate_index(searcher(built, 1), gate, queries, with_self[:, :10], DIM)
    left_out = validate_index(searcher(built, 1), gate, queries, without_self, DIM, query_ids=query_ids)
    recall = {r: next(c.value for c in report.checks if c.name == "recall@10")
              for r, report in (("self", counted_self), ("loo", left_out))}
    assert recall["loo"] < recall["self"]
    sweep = sweep_index(built, IndexConfig(factory_string="IVF64,Flat"), queries, without_self, ks=(10,),
                        values=[64], repeats=1, query_ids=query_ids)
    assert sweep["points"][0]["recall@10"] == 1.0  # every list probed: exact, and self is never returned


def test_gate_passes_a_good_index(data, built) -> None:
    _, _, queries, truth = data
    report = validate_index(searcher(built, 16), GateConfig(min_recall=0.95), queries, truth, DIM, 3500)
    assert report.passed, report.reason
    assert {c.name for c in report.checks} == {"dimension", "count_ratio", "finite_vectors", "finite_scores", "recall@10"}
    json.dumps(report.to_dict())


def test_gate_fails_low_recall(data, built) -> None:
    _, _, queries, truth = data
    report = validate_index(searcher(built, 1), GateConfig(min_recall=0.95), queries, truth, DIM, None)
    assert not report.passed
    assert report.reason.startswith("recall@10 ")
    (recall,) = [c for c in report.checks if c.name == "recall@10"]
    assert recall.value < 0.95 and not recall.ok


@pytest.mark.parametrize(("previous", "passes"), [(2000, True), (8000, True), (1999, False), (8001, False)])
def test_gate_bounds_the_count_change(data, built, previous: int, passes: bool) -> None:
    _, _, queries, truth = data
    report = validate_index(searcher(built, 16), GateConfig(min_recall=0.5), queries, truth, DIM, previous)
    assert report.passed is passes
    if not passes:
        assert "count_ratio" in report.reason and f"vs {previous} vectors" in report.reason


def test_gate_fails_a_dimension_mismatch(data, built) -> None:
    _, _, queries, truth = data
    report = validate_index(searcher(built, 16), GateConfig(), queries, truth, 64, None)
    assert not report.passed
    assert "dimension 32 outside 64" in report.reason


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW8"])
def test_gate_fails_non_finite_stored_vectors(data, spec: str) -> None:
    ids, vectors, queries, truth = data
    config = IndexConfig(factory_string=spec, search=SearchConfig(nprobe=16))
    built = build_index(config, DIM, [(ids, vectors)], vectors)
    # Corrupt stored values after the build's input checks, as a faulty writer or disk would.
    for stored in _stored_float_views(built.index):
        stored[::7] = np.nan
    report = validate_index(Searcher(built, config), GateConfig(min_recall=0.0), queries, truth, DIM)
    assert not report.passed
    assert report.reason.startswith("finite_vectors ")


def _stored_float_views(index: faiss.Index) -> list[np.ndarray]:
    """Writable float32 views of the vectors stored in a Flat, HNSW-Flat or IVF-Flat index."""
    level = faiss.downcast_index(index)
    if isinstance(level, faiss.IndexIDMap):
        level = faiss.downcast_index(level.index)
    if isinstance(level, faiss.IndexHNSW):
        level = faiss.downcast_index(level.storage)
    if isinstance(level, faiss.IndexIVF):
        lists = level.invlists
        return [
            faiss.rev_swig_ptr(lists.get_codes(i), lists.list_size(i) * lists.code_size).view(np.float32)
            for i in range(level.nlist)
            if lists.list_size(i)
        ]
    return [faiss.rev_swig_ptr(level.get_xb(), level.ntotal * DIM)]


def test_sweep_recall_grows_with_nprobe_and_plots(data, built, tmp_path) -> None:
    _, _, queries, truth = data
    result = sweep_index(built, IndexConfig(factory_string="IVF64,Flat"), queries, truth, repeats=1)
    assert result["parameter"] == "nprobe"
    assert [p["value"] for p in result["points"]] == [1, 2, 4, 8, 16, 32, 64]
    recalls = [p["recall@100"] for p in result["points"]]
    assert recalls[-1] == 1.0 and recalls[0] < 0.8
    assert all(b >= a - 0.01 for a, b in zip(recalls, recalls[1:], strict=False))
    assert all(p["qps"] > 0 and 0 <= p["recall@10"] <= 1 for p in result["points"])
    path = tmp_path / "curve.png"
    plot_recall_qps({"IVF64,Flat": result}, str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
