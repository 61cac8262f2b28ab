"""Seeded clustered unit vectors shaped like content embeddings, for tests and benchmarks.

Posts about the same topic have nearby embeddings: each vector is a random topic centre plus Gaussian
noise, L2-normalised. Generation is batched and deterministic for a given seed, so 10M vectors can be
streamed without holding them, and the same stream can be read twice (sample pass, add pass).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Seed-sequence key of the query stream; database batches use their start row, always smaller.
QUERY_STREAM = 2**63 - 1


def cluster_centres(num_clusters: int, dim: int, seed: int) -> np.ndarray:
    """float32 (C, D) unit-norm cluster centres."""
    centres = np.random.default_rng(seed).standard_normal((num_clusters, dim)).astype(np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def iter_clustered_vectors(
    num_vectors: int,
    dim: int = 128,
    num_clusters: int = 256,
    noise: float = 0.6,
    batch_rows: int = 100_000,
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids int64 (B,), vectors float32 (B, D)) batches of clustered unit vectors.

    Args:
        num_vectors: total vectors; ids are 0..num_vectors-1.
        dim: dimension D.
        num_clusters: topic count.
        noise: norm of the per-vector noise relative to the unit centre (larger: harder search).
        batch_rows: vectors per batch.
        seed: the same seed gives the same stream.
    """
    centres = cluster_centres(num_clusters, dim, seed)
    for start in range(0, num_vectors, batch_rows):
        stop = min(start + batch_rows, num_vectors)
        # One generator per batch, so any batch can be regenerated on its own.
        rng = np.random.default_rng([seed, start])
        assignment = rng.integers(0, num_clusters, stop - start)
        vectors = rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors *= noise / np.sqrt(dim)
        vectors += centres[assignment]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield np.arange(start, stop, dtype=np.int64), vectors


def clustered_vectors(
    num_vectors: int, dim: int = 128, num_clusters: int = 256, noise: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All of iter_clustered_vectors at once: ids int64 (N,), vectors float32 (N, D)."""
    batches = list(iter_clustered_vectors(num_vectors, dim, num_clusters, noise, seed=seed))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def query_vectors(
    num_queries: int, dim: int = 128, num_clusters: int = 256, noise: float = 0.6, seed: int = 0
) -> np.ndarray:
    """float32 (Q, D) queries around the same centres as the database, drawn from a separate stream."""
    centres = cluster_centres(num_clusters, dim, seed)
    rng = np.random.default_rng([seed, QUERY_STREAM])
    vectors = centres[rng.integers(0, num_clusters, num_queries)]
    vectors = vectors + rng.standard_normal((num_queries, dim), dtype=np.float32) * (noise / np.sqrt(dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
