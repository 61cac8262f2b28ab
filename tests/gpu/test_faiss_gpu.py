"""The same index specs on a GPU: build, search, k above the GPU limit, exclusions by over-fetch."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.config import GpuConfig, IndexConfig, SearchConfig
from retrieval.index import build_index, load_index, save_index
from retrieval.search import Searcher
from retrieval.synthetic import clustered_vectors, query_vectors
from retrieval.validation import exact_search, recall_at_k

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss reports no GPU (faiss-cpu, or no device)"),
]

DIM = 64


@pytest.fixture(scope="module")
def data():
    ids, vectors = clustered_vectors(50_000, DIM, num_clusters=128, seed=11)
    queries = query_vectors(200, DIM, num_clusters=128, seed=11)
    truth, _ = exact_search([(ids, vectors)], queries, 100, "ip")
    return ids * 3 + 1, vectors, queries, truth * 3 + 1


def config(spec: str, **gpu) -> IndexConfig:
    return IndexConfig(factory_string=spec, search=SearchConfig(nprobe=32), gpu=GpuConfig(use_gpu="always", **gpu))


@pytest.mark.parametrize(("spec", "gpu"), [("IVF256,Flat", {}), ("IVF256,Flat", {"float16": True}), ("Flat", {})])
def test_gpu_build_and_search_match_exact(data, spec: str, gpu: dict) -> None:
    ids, vectors, queries, truth = data
    cfg = config(spec, **gpu)
    built = build_index(cfg, DIM, [(ids[i : i + 10_000], vectors[i : i + 10_000]) for i in range(0, 50_000, 10_000)], vectors)
    assert built.device == "gpu"
    searcher = Searcher(built, cfg)
    assert searcher.on_gpu
    found, _ = searcher.search(queries, 100)
    assert recall_at_k(found, truth, 100) >= 0.95


def test_gpu_built_index_loads_on_cpu(data, tmp_path) -> None:
    ids, vectors, queries, _ = data
    cfg = config("IVF256,Flat")
    built = build_index(cfg, DIM, [(ids, vectors)], vectors)
    gpu_found, _ = Searcher(built, cfg).search(queries, 10)
    save_index(built, str(tmp_path))
    cpu_cfg = cfg.model_copy(update={"gpu": GpuConfig(use_gpu="never")})
    cpu_found, _ = Searcher(load_index(str(tmp_path)), cpu_cfg).search(queries, 10)
    assert (gpu_found == cpu_found).mean() > 0.99


def test_k_above_gpu_limit_runs(data) -> None:
    ids, vectors, queries, truth = data
    cfg = config("Flat")
    found, scores = Searcher(build_index(cfg, DIM, [(ids, vectors)], None), cfg).search(queries[:5], 5000)
    assert found.shape == (5, 5000) and np.all(found >= 0)
    assert np.all(np.diff(scores, axis=1) <= 1e-5)
    np.testing.assert_array_equal(found[:, :100], truth[:5])


def test_gpu_exclusions_over_fetch_and_filter(data) -> None:
    ids, vectors, queries, truth = data
    cfg = config("IVF256,Flat")
    searcher = Searcher(build_index(cfg, DIM, [(ids, vectors)], vectors), cfg)
    blocked = truth[:, 0]
    seen = [row[1:4] for row in truth]
    found, _ = searcher.search(queries, 50, exclude_ids=blocked, exclude_per_query=seen)
    assert not np.isin(found, blocked).any()
    assert not any(np.isin(row, s).any() for row, s in zip(found, seen, strict=True))
    assert np.all(found >= 0)
