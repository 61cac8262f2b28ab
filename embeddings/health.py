"""Health of a set of embeddings: is there signal, or did the vectors collapse? (pure numpy)

A collapsed embedding (every vector pointing the same way) still passes an ANN recall gate, because
approximate and exact search agree on noise; these checks look at the vectors themselves:

* **mean pairwise cosine** over a sample (off-diagonal pairs): near 1 means every vector points the
  same way, so cosine search ranks by noise;
* **effective rank** (Roy & Vetterli 2007): ``exp(entropy(s / sum(s)))`` of the singular values ``s``
  of the sampled, row-normalised, *uncentred* matrix. Uncentred on purpose: centring a collapsed set
  leaves only its isotropic noise, whose effective rank is high;
* where labels or ground truth exist, **nearest-neighbour label agreement**: the share of each
  vector's ``k`` nearest sampled neighbours (cosine, itself excluded) that carry its label, against
  the agreement two random sampled items would have by chance (``lift = agreement / chance``).

:func:`embedding_health` measures, :func:`gate_embedding_health` compares with the thresholds of an
:class:`embeddings.config.EmbeddingHealthConfig`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embeddings.config import EmbeddingHealthConfig


def sample_rows(num_rows: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample without replacement (all rows when there are fewer).

    Returns:
        int64 array of shape (min(num_rows, sample_size),).
    """
    if num_rows <= sample_size:
        return np.arange(num_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(num_rows, sample_size, replace=False)).astype(np.int64)


def effective_rank(vectors: np.ndarray) -> float:
    """``exp`` of the entropy of the normalised singular values of ``vectors`` (N, D), rows L2-normalised.

    1.0 for vectors that all point the same way; ``min(N, D)`` for orthonormal ones.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    singular = np.linalg.svd(unit, compute_uv=False)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular[singular > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_health(vectors: np.ndarray, labels: np.ndarray | None = None, sample_size: int = 4000,
                     num_neighbors: int = 10, seed: int = 0) -> dict[str, Any]:
    """Collapse and signal metrics of an embedding set, measured on a seeded sample of rows.

    Args:
        vectors: float array of shape (N, D).
        labels: optional int array of shape (N,), a ground-truth class per row (e.g. the latent topic
            of a generated post); rows with a negative label are ignored by the agreement metric.
        sample_size: rows sampled (all rows when N is smaller); the cost is O(sample_size^2 * D).
        num_neighbors: k of the nearest-neighbour agreement.
        seed: seed of the sample.

    Returns:
        A JSON-ready dict: ``num_vectors``, ``dim``, ``sample_size``, ``non_finite_rows``,
        ``zero_rows``, ``mean_cosine``, ``cosine_p5``, ``cosine_p95``, ``effective_rank``, and with
        labels ``num_labels``, ``nn_agreement``, ``chance_agreement``, ``nn_lift``.

    Raises:
        ValueError: on a non-2-D array, fewer than 2 rows, or labels of another length.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"embedding_health needs a 2-D array of at least 2 vectors, got shape {vectors.shape}")
    if labels is not None and len(labels) != len(vectors):
        raise ValueError(f"{len(labels)} labels for {len(vectors)} vectors: expected one label per vector")
    picked = sample_rows(len(vectors), sample_size, seed)
    sample = vectors[picked].astype(np.float64)
    finite = np.isfinite(sample).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], sample, 0.0), axis=1)
    report: dict[str, Any] = {
        "num_vectors": int(len(vectors)), "dim": int(vectors.shape[1]), "sample_size": int(len(picked)),
        "non_finite_rows": int((~finite).sum()), "zero_rows": int((finite & (norms == 0)).sum()),
    }
    usable = finite & (norms > 0)
    if usable.sum() < 2:
        report.update(mean_cosine=None, cosine_p5=None, cosine_p95=None, effective_rank=0.0)
        return report
    unit = sample[usable] / norms[usable, None]
    cosine = unit @ unit.T
    off_diagonal = cosine[~np.eye(len(unit), dtype=bool)]
    report.update(
        mean_cosine=float(off_diagonal.mean()),
        cosine_p5=float(np.percentile(off_diagonal, 5)), cosine_p95=float(np.percentile(off_diagonal, 95)),
        effective_rank=effective_rank(unit),
    )
    if labels is not None:
        report.update(_neighbour_agreement(cosine, np.asarray(labels)[picked][usable], num_neighbors))
    return report


def _neighbour_agreement(cosine: np.ndarray, labels: np.ndarray, num_neighbors: int) -> dict[str, Any]:
    labelled = labels >= 0
    cosine, labels = cosine[np.ix_(labelled, labelled)], labels[labelled].astype(np.int64)
    n = len(labels)
    if n < 3:
        return {"num_labels": int(len(np.unique(labels))), "nn_agreement": None, "chance_agreement": None,
                "nn_lift": None}
    k = min(num_neighbors, n - 1)
    scores = cosine.copy()
    np.fill_diagonal(scores, -np.inf)
    neighbours = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    agreement = float((labels[neighbours] == labels[:, None]).mean())
    # Chance: two distinct sampled items share a label (without replacement, as the neighbours are drawn).
    counts = np.bincount(labels - labels.min()).astype(np.float64)
    chance = float((counts * (counts - 1)).sum() / (n * (n - 1)))
    return {"num_labels": int((counts > 0).sum()), "nn_agreement": agreement, "chance_agreement": chance,
            "nn_lift": agreement / chance if chance > 0 else None}


def gate_embedding_health(report: dict[str, Any], thresholds: EmbeddingHealthConfig) -> dict[str, Any]:
    """Compare a report of :func:`embedding_health` with ``thresholds``.

    Returns:
        ``{"passed": bool, "reason": str | None, "checks": [{name, value, threshold, passed}]}``;
        the agreement check is left out when the report has no labels. ``reason`` names every failed check.
    """
    checks = [
        ("finite_rows", report["non_finite_rows"] + report["zero_rows"], 0,
         report["non_finite_rows"] + report["zero_rows"] == 0),
        ("mean_cosine<=", report["mean_cosine"], thresholds.max_mean_cosine,
         report["mean_cosine"] is not None and report["mean_cosine"] <= thresholds.max_mean_cosine),
        ("effective_rank>=", report["effective_rank"], thresholds.min_effective_rank,
         report["effective_rank"] >= thresholds.min_effective_rank),
    ]
    if "nn_lift" in report:
        checks.append(("nn_lift>=", report["nn_lift"], thresholds.min_nn_lift,
                       report["nn_lift"] is not None and report["nn_lift"] >= thresholds.min_nn_lift))
    failed = [f"{name} failed: {value if not isinstance(value, float) else round(value, 4)} vs {threshold}"
              for name, value, threshold, ok in checks if not ok]
    return {"passed": not failed, "reason": "; ".join(failed) or None,
            "checks": [{"name": name.rstrip("<=>"), "value": value, "threshold": threshold, "passed": bool(ok)}
                       for name, value, threshold, ok in checks]}
