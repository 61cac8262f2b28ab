"""Embedding health metrics and gate (embeddings.health) on collapsed, spread and clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.config import EmbeddingHealthConfig
from embeddings.health import effective_rank, embedding_health, gate_embedding_health, sample_rows


def clustered(rng: np.random.Generator, n: int = 600, dim: int = 32, clusters: int = 8, noise: float = 0.3):
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, n)
    return centres[labels] + noise * rng.normal(size=(n, dim)), labels


def collapsed(rng: np.random.Generator, n: int = 600, dim: int = 32):
    """What the issue saw: one shared direction plus a little noise (mean cosine ~0.99)."""
    return rng.normal(size=dim) + 0.02 * rng.normal(size=(n, dim))


def test_collapsed_vectors_have_cosine_near_one_and_low_rank(rng):
    report = embedding_health(collapsed(rng), sample_size=500)
    assert report["mean_cosine"] > 0.99
    assert report["effective_rank"] < 4
    assert report["sample_size"] == 500 and report["num_vectors"] == 600


def test_spread_vectors_have_cosine_near_zero_and_high_rank(rng):
    report = embedding_health(rng.normal(size=(800, 32)))
    assert abs(report["mean_cosine"]) < 0.02
    assert report["effective_rank"] > 25


def test_effective_rank_bounds():
    assert effective_rank(np.ones((5, 4))) == pytest.approx(1.0)
    assert effective_rank(np.eye(6)) == pytest.approx(6.0)
    # Scaling a row changes nothing: rows are normalised first.
    assert effective_rank(np.diag([1.0, 10.0, 100.0])) == pytest.approx(3.0)


def test_neighbour_agreement_against_chance(rng):
    vectors, labels = clustered(rng)
    report = embedding_health(vectors, labels)
    assert report["nn_agreement"] > 0.95
    assert report["chance_agreement"] == pytest.approx(1 / 8, abs=0.03)
    assert report["nn_lift"] > 6
    shuffled = embedding_health(vectors, rng.permutation(labels))
    assert 0.5 < shuffled["nn_lift"] < 1.5  # labels unrelated to the geometry: chance level


def test_unlabelled_rows_are_left_out_of_agreement(rng):
    vectors, labels = clustered(rng)
    labels[::2] = -1
    report = embedding_health(vectors, labels)
    assert report["nn_agreement"] > 0.95


def test_gate_refuses_collapsed_and_names_the_failed_checks(rng):
    thresholds = EmbeddingHealthConfig(max_mean_cosine=0.5, min_effective_rank=4, min_nn_lift=3)
    vectors, labels = clustered(rng)
    good = gate_embedding_health(embedding_health(vectors, labels), thresholds)
    assert good["passed"] and good["reason"] is None
    assert [c["name"] for c in good["checks"]] == ["finite_rows", "mean_cosine", "effective_rank", "nn_lift"]
    bad = gate_embedding_health(embedding_health(collapsed(rng), labels), thresholds)
    assert not bad["passed"]
    assert "mean_cosine" in bad["reason"] and "effective_rank" in bad["reason"]
    # Without truth labels the agreement check is not part of the gate.
    no_truth = gate_embedding_health(embedding_health(vectors), thresholds)
    assert no_truth["passed"] and "nn_lift" not in [c["name"] for c in no_truth["checks"]]


def test_non_finite_and_zero_rows_fail_the_gate(rng):
    vectors = rng.normal(size=(100, 16))
    vectors[3] = np.nan
    vectors[7] = 0.0
    report = embedding_health(vectors)
    assert report["non_finite_rows"] == 1 and report["zero_rows"] == 1
    assert np.isfinite(report["mean_cosine"])
    gate = gate_embedding_health(report, EmbeddingHealthConfig(min_effective_rank=1))
    assert not gate["passed"] and "finite_rows" in gate["reason"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2 vectors"):
        embedding_health(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="3 labels for 4 vectors"):
        embedding_health(np.ones((4, 2)), np.zeros(3, dtype=np.int64))


def test_sample_is_seeded_and_sorted():
    assert np.array_equal(sample_rows(10, 20, 0), np.arange(10))
    picked = sample_rows(1000, 50, 3)
    assert len(picked) == 50 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, sample_rows(1000, 50, 3))
