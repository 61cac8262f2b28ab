"""Recall and throughput of an index across search-parameter values, against exact search.

``sweep_index`` measures recall@k (k = 10 and 100 by default) and queries per second at several values
of the index's main search parameter (nprobe for IVF, efSearch for HNSW); ``plot_recall_qps`` draws the
recall-QPS trade-off curves to a PNG.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from retrieval.config import IndexConfig
from retrieval.index import BuiltIndex
from retrieval.search import Searcher, index_levels
from retrieval.validation import recall_at_k, self_exclusions


def sweep_parameter(built: BuiltIndex) -> tuple[str | None, list[int]]:
    """The search parameter worth sweeping for this index and its values.

    Returns:
        ("nprobe", powers of two up to nlist) for IVF, ("ef_search", 128..1024) for HNSW (the Searcher
        raises efSearch to k, so values below the k=100 of the sweep would all measure the same), and
        (None, [0]) for indexes without one (Flat).
    """
    for level in index_levels(built.index):
        if isinstance(level, faiss.IndexIVF):
            return "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256) if v <= level.nlist]
        if isinstance(level, faiss.IndexHNSW):
            return "ef_search", [128, 192, 256, 384, 512, 1024]
    return None, [0]


def time_search(
    searcher: Searcher,
    query_vectors: np.ndarray,
    k: int,
    repeats: int,
    exclude_per_query: list[np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """Median seconds of one search of all queries, over repeats, and the ids found.

    Returns:
        (seconds, ids int64 (Q, k)).
    """
    seconds = []
    ids = np.empty((0, k), dtype=np.int64)
    for _ in range(repeats):
        start = time.perf_counter()
        ids, _ = searcher.search(query_vectors, k, exclude_per_query=exclude_per_query)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), ids


def sweep_index(
    built: BuiltIndex,
    config: IndexConfig,
    query_vectors: np.ndarray,
    true_ids: np.ndarray,
    ks: tuple[int, ...] = (10, 100),
    values: list[int] | None = None,
    repeats: int = 3,
    query_ids: np.ndarray | None = None,
) -> dict:
    """Recall@k and QPS at each value of the index's search parameter.

    Args:
        built: the index (its search parameters are changed during the sweep).
        config: the index spec; the swept parameter overrides config.search.
        query_vectors: float32 (Q, D).
        true_ids: int64 (Q, >= max(ks)) exact neighbours.
        ks: recall cut-offs; searches use k = max(ks).
        values: parameter values (default: ``sweep_parameter``).
        repeats: timed searches per value; the median is reported.
        query_ids: int64 (Q,) when the queries are stored vectors: each is left out of its own results
            (true_ids from ``exact_search_excluding_self``).

    Returns:
        {"factory_string", "metric", "num_vectors", "num_queries", "k", "parameter",
         "points": [{"value", "qps", "recall@10", "recall@100", ...}]}.
    """
    parameter, default_values = sweep_parameter(built)
    if values is None or parameter is None:
        values = default_values
    k = max(ks)
    exclude = None if query_ids is None else self_exclusions(query_ids)
    points = []
    for value in values:
        search = config.search if parameter is None else config.search.model_copy(update={parameter: value})
        searcher = Searcher(built, config.model_copy(update={"search": search}))
        seconds, found = time_search(searcher, query_vectors, k, repeats, exclude)
        point = {"value": value, "qps": round(len(query_vectors) / seconds, 1)}
        point.update({f"recall@{cut}": round(recall_at_k(found, true_ids, cut), 4) for cut in ks})
        points.append(point)
    return {
        "factory_string": built.factory_string,
        "metric": built.metric,
        "num_vectors": built.num_vectors,
        "num_queries": int(len(query_vectors)),
        "k": k,
        "parameter": parameter,
        "points": points,
    }


def plot_recall_qps(curves: dict[str, dict], path: str, title: str, recall_key: str = "recall@100") -> None:
    """Draw recall (x) against QPS (y, log) for each sweep result in curves, labelled by its key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, sweep in curves.items():
        points = sweep["points"]
        recalls = [p[recall_key] for p in points]
        qps = [p["qps"] for p in points]
        ax.plot(recalls, qps, marker="o", label=name)
        if sweep.get("parameter"):
            for p in points:
                ax.annotate(str(p["value"]), (p[recall_key], p["qps"]), fontsize=7, alpha=0.7)
    ax.set_xlabel(recall_key)
    ax.set_ylabel("queries per second")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
