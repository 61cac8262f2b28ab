"""The validation gate an index must pass before it is published, and exact search to measure it against.

Checks (thresholds in ``GateConfig``): the index dimension matches the query model's, the vector count is
within bounds of the previous version's, search scores on a query sample are finite, and recall@k on that
sample against exact search reaches the minimum. A failing index is kept for inspection but not published.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from retrieval.config import GateConfig
from retrieval.index import FAISS_METRICS, prepare_vectors
from retrieval.search import Searcher, rowwise_isin


@dataclass(frozen=True)
class GateCheck:
    """One check: its measured value, the threshold it was held to, and whether it passed."""

    name: str
    value: float | int | None
    threshold: float | int | list[float] | None
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class GateReport:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def exact_search(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], query_vectors: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest neighbours over streamed batches, merged in a result heap (memory: B * k).

    Args:
        batches: (ids int64 (N_i,), vectors float32 (N_i, D)) batches of the database.
        query_vectors: float32 (B, D).
        k: neighbours per query.
        metric: "ip", "cosine" or "l2" (cosine normalises queries and database).

    Returns:
        ids int64 (B, k) and scores float32 (B, k), best first; -1 where the database has fewer than k.
    """
    queries = prepare_vectors(query_vectors, metric)
    keep_max = metric != "l2"
    heap = faiss.ResultHeap(len(queries), k, keep_max=keep_max)
    for ids, vectors in batches:
        if len(ids) == 0:
            continue
        scores, positions = faiss.knn(queries, prepare_vectors(vectors, metric), min(k, len(ids)), FAISS_METRICS[metric])
        batch_ids = np.where(positions >= 0, np.asarray(ids, dtype=np.int64)[positions], -1)
        heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(batch_ids))
    heap.finalize()
    return heap.I, heap.D


def exact_search_excluding_self(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    query_ids: np.ndarray,
    query_vectors: np.ndarray,
    k: int,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours of queries taken from the database itself, each query's own id left out.

    That is the "similar posts / similar users" question, and a recall sample on which an index
    cannot score a hit by finding the query itself (worth up to 1/k of recall@k).

    Args:
        batches: as ``exact_search``.
        query_ids: int64 (B,) the database ids of the query vectors.
        query_vectors: float32 (B, D).
        k: neighbours per query, self excluded.
        metric: as ``exact_search``.

    Returns:
        ids int64 (B, k) and scores float32 (B, k), best first.
    """
    ids, scores = exact_search(batches, query_vectors, k + 1, metric)
    # A stable sort on "is the query itself" moves self to the end and keeps the rest in rank order.
    others_first = np.argsort(ids == np.asarray(query_ids)[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, others_first, axis=1), np.take_along_axis(scores, others_first, axis=1)


def self_exclusions(query_ids: np.ndarray) -> list[np.ndarray]:
    """Per-query exclusion lists (``Searcher.search(exclude_per_query=...)``) that leave each query's own id out."""
    return list(np.asarray(query_ids, dtype=np.int64).reshape(-1, 1))


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean share of each query's true top-k found in its returned top-k.

    Args:
        found_ids: int64 (B, >=k) returned ids, -1 padded.
        true_ids: int64 (B, >=k) exact ids, -1 padded.
        k: cut-off.

    Returns:
        Recall in [0, 1]; queries with no true neighbours are skipped.
    """
    found, truth = found_ids[:, :k], true_ids[:, :k]
    hits = (rowwise_isin(found, truth) & (found >= 0)).sum(axis=1)
    possible = (truth >= 0).sum(axis=1)
    mask = possible > 0
    return float((hits[mask] / possible[mask]).mean()) if mask.any() else 0.0


def sample_stored_vectors(index: faiss.Index, max_vectors: int = 1000) -> np.ndarray | None:
    """Decode up to max_vectors vectors as stored in the index, spread over it, to check they are finite.

    Returns:
        float32 (M, D') (D' is the stored dimension, after any pre-transform), or None for index types
        whose stored vectors cannot be read back.
    """
    level = faiss.downcast_index(index)
    while True:
        if isinstance(level, faiss.IndexRefine):
            level = faiss.downcast_index(level.refine_index)
        elif isinstance(level, faiss.IndexHNSW):
            level = faiss.downcast_index(level.storage)
        elif isinstance(level, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            level = faiss.downcast_index(level.index)
        else:
            break
    count = min(max_vectors, int(level.ntotal))
    if isinstance(level, faiss.IndexFlatCodes):
        positions = np.linspace(0, level.ntotal - 1, count).astype(np.int64)
        return level.reconstruct_batch(positions)
    if isinstance(level, faiss.IndexIVF):
        # Round-robin over the lists by offset, which needs no direct map.
        invlists = level.invlists
        assert invlists is not None, "an IVF index always has inverted lists"
        sizes = np.array([invlists.list_size(i) for i in range(level.nlist)])
        vectors = np.empty((count, level.d), dtype=np.float32)
        filled = 0
        for offset in range(int(sizes.max(initial=0))):
            if filled == count:
                break
            for list_no in np.flatnonzero(sizes > offset)[: count - filled]:
                level.reconstruct_from_offset(int(list_no), offset, faiss.swig_ptr(vectors[filled]))
                filled += 1
        return vectors[:filled]
    return None


def validate_index(
    searcher: Searcher,
    gate: GateConfig,
    query_vectors: np.ndarray,
    true_ids: np.ndarray,
    expected_dim: int | None = None,
    previous_count: int | None = None,
    query_ids: np.ndarray | None = None,
) -> GateReport:
    """Run every gate check on an index.

    Args:
        searcher: the index under test, with the search parameters it will serve with.
        gate: thresholds.
        query_vectors: float32 (Q, D) query sample.
        true_ids: int64 (Q, >= gate.recall_k) exact neighbours of the queries (``exact_search``).
        expected_dim: the dimension of the vectors that will query the index (None: not checked).
        previous_count: vector count of the previous version (None: first version, not checked).
        query_ids: int64 (Q,) when the queries are stored vectors: each query's own id is excluded from
            its results, as true_ids must exclude it (``exact_search_excluding_self``).

    Returns:
        The GateReport; ``reason`` lists the failed checks.
    """
    checks = []
    dim_ok = expected_dim is None or expected_dim == searcher.dim
    checks.append(GateCheck("dimension", searcher.dim, expected_dim, dim_ok))

    count = searcher.num_vectors
    if previous_count:
        ratio = count / previous_count
        bounds = [gate.min_count_ratio, gate.max_count_ratio]
        ok = gate.min_count_ratio <= ratio <= gate.max_count_ratio
        checks.append(GateCheck("count_ratio", round(ratio, 4), bounds, ok, f"{count} vs {previous_count} vectors"))
    else:
        checks.append(GateCheck("count_ratio", None, None, count > 0, f"{count} vectors, no previous version"))

    stored = sample_stored_vectors(searcher.index, gate.query_sample_size)
    if stored is None:
        checks.append(GateCheck("finite_vectors", None, 0, True, "stored vectors of this index type are not readable"))
    else:
        bad_rows = int((~np.isfinite(stored).all(axis=1)).sum())
        detail = f"{bad_rows} of {len(stored)} sampled stored vectors have NaN/inf"
        checks.append(GateCheck("finite_vectors", bad_rows, 0, bad_rows == 0, detail))

    if dim_ok and query_vectors.shape[1] == searcher.dim:
        exclude = None if query_ids is None else self_exclusions(query_ids)
        found_ids, scores = searcher.search(query_vectors, gate.recall_k, exclude_per_query=exclude)
        bad_scores = int((~np.isfinite(scores[found_ids >= 0])).sum())
        checks.append(GateCheck("finite_scores", bad_scores, 0, bad_scores == 0, "NaN/inf scores among results"))
        recall = recall_at_k(found_ids, true_ids, gate.recall_k)
        checks.append(GateCheck(f"recall@{gate.recall_k}", round(recall, 4), gate.min_recall, recall >= gate.min_recall))
    else:
        detail = f"not searched: index dimension {searcher.dim}, expected {expected_dim}, queries {query_vectors.shape[1]}"
        checks.append(GateCheck(f"recall@{gate.recall_k}", None, gate.min_recall, False, detail))

    failed = [c for c in checks if not c.ok]
    reason = "; ".join(
        f"{c.name} {c.value} outside {c.threshold}" + (f" ({c.detail})" if c.detail else "") for c in failed
    )
    return GateReport(passed=not failed, checks=checks, reason=reason)
