"""Index specs: strict keys, defaults for both indexes, list-count sizing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from retrieval.config import (
    GateConfig,
    IndexConfig,
    auto_nlist,
    default_index_configs,
    resolve_factory_string,
)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="nprobes"):
        IndexConfig.model_validate({"search": {"nprobes": 8}})


def test_configs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        IndexConfig().metric = "l2"


def test_defaults_cover_content_and_user() -> None:
    configs = default_index_configs()
    assert set(configs) == {"content", "user"}
    assert configs["content"].metric == "cosine"
    assert configs["content"].search.max_k == 10_000


def test_count_ratio_bounds_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_count_ratio"):
        GateConfig(min_count_ratio=3.0, max_count_ratio=2.0)


def test_empty_factory_string_is_rejected() -> None:
    with pytest.raises(ValidationError, match="factory_string"):
        IndexConfig(factory_string="  ")


@pytest.mark.parametrize(("num_vectors", "expected"), [(1, 1), (1_000, 16), (1_000_000, 4096), (10_000_000, 16384)])
def test_auto_nlist_keeps_39_vectors_per_list(num_vectors: int, expected: int) -> None:
    nlist = auto_nlist(num_vectors)
    assert nlist == expected
    assert nlist == 1 or num_vectors // nlist >= 39


def test_nlist_placeholder_needs_a_count() -> None:
    assert resolve_factory_string("IVF{nlist},PQ16", 1_000_000) == "IVF4096,PQ16"
    assert resolve_factory_string("HNSW32", None) == "HNSW32"
    with pytest.raises(ValueError, match="vector count"):
        resolve_factory_string("IVF{nlist},Flat", None)
