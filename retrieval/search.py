"""Batched k-nearest-neighbour search over a built index, with id exclusions.

``Searcher`` sets the search parameters (nprobe, efSearch, k_factor) on the index once, so the plain
path is a direct ``index.search`` into preallocated result arrays and runs at raw faiss speed.

Exclusions:
- ``exclude_ids``: ids no query may return (e.g. posts of blocked authors). On the CPU they go to faiss
  as an ``IDSelector`` in per-call ``SearchParameters``, so excluded vectors are skipped inside the scan.
- ``exclude_per_query``: one id array per query (e.g. posts the user has already seen). The search
  over-fetches k + (that query's exclusion count) and filters, which still returns the top k of what
  remains, because at most that many results can be removed.
On a GPU, which has no IDSelector, both kinds are over-fetched and filtered; k above the GPU's
selection limit (``GpuConfig.max_k``) runs on the CPU copy of the index.

Results are ``(ids int64 (B, k), scores float32 (B, k))``. Scores are inner products for "ip" and
"cosine", squared L2 distances for "l2". Missing results are padded with id -1 and score
-FLT_MAX (ip/cosine) or +FLT_MAX (l2), faiss's own convention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import faiss
import numpy as np

from retrieval.config import IndexConfig
from retrieval.index import BuiltIndex, gpu_clone_or_none, gpu_count, prepare_vectors

FLT_MAX = float(np.finfo(np.float32).max)


def _unwrap(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index)


def index_levels(index: faiss.Index) -> Iterator[faiss.Index]:
    """The index and the indexes it wraps: ID map, pre-transform, refinement base, IVF coarse quantizer."""
    level = _unwrap(index)
    while True:
        yield level
        if isinstance(level, faiss.IndexRefine):
            level = _unwrap(level.base_index)
        elif isinstance(level, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            level = _unwrap(level.index)
        elif isinstance(level, faiss.IndexIVF):
            level = _unwrap(level.quantizer)
        else:
            return


def set_search_parameters(index: faiss.Index, nprobe: int, ef_search: int, k_factor: int) -> None:
    """Set nprobe / efSearch / k_factor on every level of a CPU index that has them (once, not per call)."""
    for level in index_levels(index):
        if isinstance(level, faiss.IndexIVF):
            level.nprobe = nprobe
        elif isinstance(level, faiss.IndexHNSW):
            level.hnsw.efSearch = ef_search
        elif isinstance(level, faiss.IndexRefine):
            level.k_factor = k_factor


def search_parameters(
    index: faiss.Index,
    selector: faiss.IDSelector | None,
    nprobe: int,
    ef_search: int,
    k_factor: int,
) -> faiss.SearchParameters:
    """Per-call SearchParameters mirroring the index's wrapper chain, with the selector where it applies.

    The selector is given in the caller's ids. ``IndexIDMap`` only translates a selector at the top of
    the parameters, so below it the selector is wrapped in ``IDSelectorTranslated`` explicitly, which also
    reaches a selector nested under a refinement's base index.
    """
    level = _unwrap(index)
    if isinstance(level, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        # The C++ constructor takes the map's std::vector as is; the stubs list only arrays and lists.
        translated = (faiss.IDSelectorTranslated(level.id_map, selector)  # type: ignore[arg-type]
                      if selector is not None else None)
        return search_parameters(level.index, translated, nprobe, ef_search, k_factor)
    if isinstance(level, faiss.IndexPreTransform):
        inner = search_parameters(level.index, selector, nprobe, ef_search, k_factor)
        # Keyword construction is faiss's wrapper (it keeps the nested objects alive); its stubs show only
        # the bare SWIG constructors, and no SearchParametersHNSW at all: hence the ignores below.
        return faiss.SearchParametersPreTransform(index_params=inner)  # type: ignore[call-arg]
    if isinstance(level, faiss.IndexRefine):
        inner = search_parameters(level.base_index, selector, nprobe, ef_search, k_factor)
        return faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=inner)  # type: ignore[call-arg]
    params: faiss.SearchParameters
    if isinstance(level, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
    elif isinstance(level, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


class Searcher:
    """Search one index with fixed parameters; safe to call from one thread at a time per instance.

    Args:
        built: the index (CPU form, as built or loaded). The Searcher owns it from then on: it sets the
            search parameters on it.
        config: the index spec (metric is taken from the built index; search and gpu from here).
    """

    def __init__(self, built: BuiltIndex, config: IndexConfig) -> None:
        self.dim = built.dim
        self.metric = built.metric
        self.num_vectors = built.num_vectors
        self._search_config = config.search
        self._gpu_max_k = config.gpu.max_k
        self._cpu_index = built.index
        self._hnsw = any(isinstance(level, faiss.IndexHNSW) for level in index_levels(built.index))
        self._pad_score = FLT_MAX if built.metric == "l2" else -FLT_MAX
        s = config.search
        set_search_parameters(self._cpu_index, s.nprobe, s.ef_search, s.k_factor)
        num_gpus = gpu_count(config.gpu)
        self._gpu_index = gpu_clone_or_none(self._cpu_index, config.gpu, num_gpus) if num_gpus else None
        if self._gpu_index is not None and any(isinstance(lv, faiss.IndexIVF) for lv in index_levels(built.index)):
            faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", s.nprobe)

    @property
    def index(self) -> faiss.Index:
        """The CPU index searched (and the source of the GPU copy)."""
        return self._cpu_index

    @property
    def device_index(self) -> faiss.Index:
        """The index plain searches run on: the GPU copy when there is one, else the CPU index."""
        return self._gpu_index if self._gpu_index is not None else self._cpu_index

    @property
    def on_gpu(self) -> bool:
        return self._gpu_index is not None

    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        exclude_ids: np.ndarray | None = None,
        exclude_per_query: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of each query, best first.

        Args:
            query_vectors: float32 (B, D) (cosine indexes normalise them; the caller's array is untouched).
            k: results per query, 1..config.search.max_k.
            exclude_ids: int64 (E,) ids that no query may return.
            exclude_per_query: B int64 arrays, ids that query may not return.

        Returns:
            ids int64 (B, k) and scores float32 (B, k); missing results have id -1.

        Raises:
            ValueError: k out of range, wrong query shape or dimension, NaN/inf queries, or a
                per-query exclusion list whose length differs from B.
        """
        max_k = self._search_config.max_k
        if not 1 <= k <= max_k:
            raise ValueError(f"k must be between 1 and {max_k}, got {k}")
        query_vectors = np.asarray(query_vectors)
        if query_vectors.ndim != 2 or query_vectors.shape[1] != self.dim:
            raise ValueError(f"query_vectors must have shape (B, {self.dim}), got {query_vectors.shape}")
        if not np.isfinite(query_vectors).all():
            raise ValueError("query_vectors contain NaN or inf values")
        query_vectors = prepare_vectors(query_vectors, self.metric)
        if exclude_per_query is not None and len(exclude_per_query) != len(query_vectors):
            raise ValueError(
                f"exclude_per_query has {len(exclude_per_query)} lists for {len(query_vectors)} queries"
            )
        exclude = None if exclude_ids is None or len(exclude_ids) == 0 else np.asarray(exclude_ids, dtype=np.int64)
        # Lists that exclude nothing are no lists: the batch then takes the unfiltered path.
        per_query_lists = (exclude_per_query if exclude_per_query is not None and any(len(e) for e in exclude_per_query)
                           else None)

        num_queries = len(query_vectors)
        out_ids = np.empty((num_queries, k), dtype=np.int64)
        out_scores = np.empty((num_queries, k), dtype=np.float32)
        batch = self._search_config.query_batch_size
        for start in range(0, num_queries, batch):
            stop = min(start + batch, num_queries)
            per_query = per_query_lists[start:stop] if per_query_lists is not None else None
            self._search_batch(
                query_vectors[start:stop], k, exclude, per_query, out_ids[start:stop], out_scores[start:stop]
            )
        return out_ids, out_scores

    def _search_batch(
        self,
        queries: np.ndarray,
        k: int,
        exclude: np.ndarray | None,
        per_query: Sequence[np.ndarray] | None,
        out_ids: np.ndarray,
        out_scores: np.ndarray,
    ) -> None:
        use_gpu = self._gpu_index is not None
        # Over-fetch for what filtering will remove: per-query lists always, global ids on the GPU only.
        extra = max((len(e) for e in per_query), default=0) if per_query is not None else 0
        if use_gpu and exclude is not None:
            extra += len(exclude)
        fetch_k = min(k + extra, self.num_vectors) if extra else k
        if use_gpu and fetch_k > self._gpu_max_k:
            use_gpu = False
            if exclude is not None:
                extra -= len(exclude)
                fetch_k = min(k + extra, self.num_vectors) if extra else k

        params = None
        if not use_gpu and (exclude is not None or (self._hnsw and fetch_k > self._search_config.ef_search)):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(exclude)) if exclude is not None else None
            s = self._search_config
            params = search_parameters(self._cpu_index, selector, s.nprobe, max(s.ef_search, fetch_k), s.k_factor)
        index = self._gpu_index if use_gpu and self._gpu_index is not None else self._cpu_index

        if fetch_k == k and extra == 0:
            # The hot path: faiss writes straight into the caller's result rows.
            index.search(queries, k, params=params, D=out_scores, I=out_ids)
            return
        scores, ids = index.search(queries, fetch_k, params=params)
        drop = np.zeros(ids.shape, dtype=bool)
        if per_query is not None:
            drop |= rowwise_isin(ids, per_query)
        if use_gpu and exclude is not None:
            drop |= np.isin(ids, exclude)
        _compact(ids, scores, ~drop & (ids >= 0), out_ids, out_scores, self._pad_score)


def rowwise_isin(ids: np.ndarray, per_row: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Boolean (B, K): ids[r, j] is in per_row[r]. Vectorised by coding (row, id) pairs as one int64."""
    lengths = np.fromiter((len(e) for e in per_row), dtype=np.int64, count=len(per_row))
    excluded = np.concatenate([np.asarray(e, dtype=np.int64) for e in per_row]) if lengths.sum() else None
    if excluded is None:
        return np.zeros(ids.shape, dtype=bool)
    # Dense codes for every id involved, so that row * num_codes + code cannot overflow.
    codes, inverse = np.unique(np.concatenate([ids.ravel(), excluded]), return_inverse=True)
    num_codes = len(codes)
    result_keys = np.repeat(np.arange(len(ids)), ids.shape[1]) * num_codes + inverse[: ids.size]
    excluded_keys = np.repeat(np.arange(len(per_row)), lengths) * num_codes + inverse[ids.size :]
    return np.isin(result_keys, excluded_keys).reshape(ids.shape)


def _compact(
    ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, out_ids: np.ndarray, out_scores: np.ndarray, pad: float
) -> None:
    """Move each row's first k kept results to the front of out_*; pad the rest."""
    k = out_ids.shape[1]
    out_ids.fill(-1)
    out_scores.fill(pad)
    position = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep & (position < k))
    out_ids[rows, position[rows, cols]] = ids[rows, cols]
    out_scores[rows, position[rows, cols]] = scores[rows, cols]
