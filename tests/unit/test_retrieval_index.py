"""Index build, Parquet streaming, sampling, save/load and the errors on bad input."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.config import IndexConfig, SearchConfig
from retrieval.index import (
    INDEX_FILE,
    build_index,
    iter_parquet_vectors,
    load_index,
    parquet_row_count,
    sample_vectors,
    save_index,
)
from retrieval.search import Searcher
from retrieval.synthetic import clustered_vectors, query_vectors

DIM = 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = clustered_vectors(4000, DIM, num_clusters=32, seed=3)
    # Sparse, shuffled ids: an index that dropped them would return positions instead.
    rng = np.random.default_rng(3)
    sparse_ids = rng.permutation(np.unique(rng.integers(0, 10**12, 4100))[:4000])
    return sparse_ids.astype(np.int64), vectors


def batches_of(ids: np.ndarray, vectors: np.ndarray, size: int = 1000):
    return [(ids[i : i + size], vectors[i : i + size]) for i in range(0, len(ids), size)]


CONFIG = IndexConfig(factory_string="IVF32,Flat", metric="ip", search=SearchConfig(nprobe=32, k_factor=16))


@pytest.mark.parametrize("spec", ["IVF32,Flat", "Flat", "HNSW16", "IVF32,PQ16x4,RFlat"])
def test_ids_are_preserved(data, spec: str) -> None:
    ids, vectors = data
    config = CONFIG.model_copy(update={"factory_string": spec})
    built = build_index(config, DIM, batches_of(ids, vectors), vectors)
    assert built.num_vectors == len(ids)
    np.testing.assert_array_equal(built.ids, ids)
    found, scores = Searcher(built, config).search(vectors[:50], 1)
    # Each stored vector is its own best inner-product match among unit vectors.
    np.testing.assert_array_equal(found[:, 0], ids[:50])
    assert found.dtype == np.int64 and scores.dtype == np.float32


def test_cosine_normalises_vectors_and_queries(data) -> None:
    ids, vectors = data
    scaled = vectors * np.random.default_rng(0).uniform(0.1, 10.0, (len(vectors), 1)).astype(np.float32)
    config = IndexConfig(factory_string="Flat", metric="cosine")
    built = build_index(config, DIM, batches_of(ids, scaled), None)
    queries = query_vectors(20, DIM, num_clusters=32, seed=3)
    found, scores = Searcher(built, config).search(queries * 5.0, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(found, ids[expected])
    assert np.all(scores <= 1.0 + 1e-5)
    # The caller's queries are not normalised in place.
    assert not np.allclose(np.linalg.norm(queries * 5.0, axis=1), 1.0)


def test_nlist_placeholder_sized_from_count(data) -> None:
    ids, vectors = data
    config = CONFIG.model_copy(update={"factory_string": "IVF{nlist},Flat"})
    built = build_index(config, DIM, batches_of(ids, vectors), vectors, num_vectors=len(ids))
    assert built.factory_string == "IVF64,Flat"


def test_empty_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_index(IndexConfig(factory_string="Flat"), DIM, [], None)


def test_untrained_index_without_sample_is_an_error(data) -> None:
    ids, vectors = data
    with pytest.raises(ValueError, match="needs training vectors"):
        build_index(CONFIG, DIM, batches_of(ids, vectors), None)


def test_mixed_dimensions_are_an_error(data) -> None:
    ids, vectors = data
    batches = [(ids[:10], vectors[:10]), (ids[10:20], vectors[10:20, :16])]
    with pytest.raises(ValueError, match="batch 1: mixed dimensions: .* 16, expected 32"):
        build_index(IndexConfig(factory_string="Flat"), DIM, batches, None)


def test_duplicate_ids_are_an_error(data) -> None:
    ids, vectors = data
    repeated = ids[:100].copy()
    repeated[50] = repeated[3]
    with pytest.raises(ValueError, match=rf"duplicate ids: 1 id\(s\).*\[{repeated[3]}\]"):
        build_index(IndexConfig(factory_string="Flat"), DIM, [(repeated, vectors[:100])], None)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors_are_an_error(data, bad: float) -> None:
    ids, vectors = data
    broken = vectors[:100].copy()
    broken[7, 3] = bad
    with pytest.raises(ValueError, match=f"1 vector\\(s\\) contain NaN or inf values \\(first id {ids[7]}\\)"):
        build_index(IndexConfig(factory_string="Flat"), DIM, [(ids[:100], broken)], None)


def test_invalid_factory_string_is_an_error() -> None:
    with pytest.raises(ValueError, match="invalid factory_string 'IVFx,Nope'"):
        build_index(IndexConfig(factory_string="IVFx,Nope"), DIM, [], None)


def test_sample_is_uniform_and_bounded() -> None:
    ids = np.arange(10_000, dtype=np.int64)
    vectors = np.repeat(ids[:, None], 4, axis=1).astype(np.float32)
    sample_ids, sample = sample_vectors(batches_of(ids, vectors, 700), 1000, seed=1)
    assert len(sample_ids) == 1000 and len(np.unique(sample_ids)) == 1000
    np.testing.assert_array_equal(sample[:, 0], sample_ids.astype(np.float32))
    assert np.all(np.diff(sample_ids) > 0)
    # Every tenth of the input is represented about equally (a prefix sample would fail this).
    counts = np.bincount(sample_ids // 1000, minlength=10)
    assert counts.min() > 60
    small_ids, _ = sample_vectors(batches_of(ids[:50], vectors[:50]), 1000)
    assert len(small_ids) == 50


def test_save_load_round_trip_gives_identical_results(data, tmp_path) -> None:
    ids, vectors = data
    config = CONFIG.model_copy(update={"factory_string": "IVF32,PQ16x4,RFlat"})
    built = build_index(config, DIM, batches_of(ids, vectors), vectors)
    queries = query_vectors(30, DIM, num_clusters=32, seed=3)
    before = Searcher(built, config).search(queries, 20)
    meta = save_index(built, str(tmp_path))
    assert meta["num_vectors"] == len(ids) and set(meta["sha256"]) == {"index.faiss", "ids.npy"}
    for mmap in (False, True):
        loaded = load_index(str(tmp_path), mmap=mmap)
        np.testing.assert_array_equal(loaded.ids, ids)
        assert (loaded.metric, loaded.dim, loaded.factory_string) == ("ip", DIM, "IVF32,PQ16x4,RFlat")
        after = Searcher(loaded, config).search(queries, 20)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])


def test_corrupted_index_file_is_a_clear_error(data, tmp_path) -> None:
    ids, vectors = data
    save_index(build_index(IndexConfig(factory_string="Flat"), DIM, batches_of(ids, vectors), None), str(tmp_path))
    with open(tmp_path / INDEX_FILE, "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage")
    with pytest.raises(ValueError, match="checksum mismatch .* corrupted"):
        load_index(str(tmp_path))


def test_truncated_index_file_is_a_clear_error_without_checksum(data, tmp_path) -> None:
    ids, vectors = data
    save_index(build_index(IndexConfig(factory_string="Flat"), DIM, batches_of(ids, vectors), None), str(tmp_path))
    path = tmp_path / INDEX_FILE
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="faiss cannot read the index file"):
        load_index(str(tmp_path), verify=False)


def test_directory_without_metadata_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="no index_meta.json"):
        load_index(str(tmp_path))


@pytest.mark.parametrize("list_type", ["fixed", "variable"])
def test_parquet_vectors_stream_in_batches(data, tmp_path, list_type: str) -> None:
    ids, vectors = data
    flat = pa.array(vectors[:2500].astype(np.float64).ravel())
    if list_type == "fixed":
        column = pa.FixedSizeListArray.from_arrays(flat, DIM)
    else:
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, 2501 * DIM, DIM, dtype=np.int32)), flat)
    table = pa.table({"post_id": ids[:2500], "text": ["x"] * 2500, "embedding": column})
    pq.write_table(table.slice(0, 1200), tmp_path / "part-0.parquet", row_group_size=500)
    pq.write_table(table.slice(1200), tmp_path / "part-1.parquet", row_group_size=500)
    assert parquet_row_count(str(tmp_path)) == 2500
    batches = list(iter_parquet_vectors(str(tmp_path), "post_id", "embedding", batch_rows=400))
    assert max(len(b[0]) for b in batches) <= 400
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ids[:2500])
    got = np.concatenate([b[1] for b in batches])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors[:2500], rtol=1e-6)


def test_parquet_missing_column_is_an_error(data, tmp_path) -> None:
    pq.write_table(pa.table({"post_id": data[0][:10]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="no column 'embedding'"):
        next(iter_parquet_vectors(str(tmp_path), "post_id", "embedding"))


def test_parquet_ragged_vectors_are_an_error(tmp_path) -> None:
    column = pa.array([[0.1, 0.2], [0.3, 0.4, 0.5]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"post_id": [1, 2], "embedding": column}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="mixed vector dimensions"):
        next(iter_parquet_vectors(str(tmp_path), "post_id", "embedding"))
