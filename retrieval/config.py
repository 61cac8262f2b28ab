"""Index specifications: one strict config per FAISS index (the ``indexes`` section of NearlineConfig).

A spec is a faiss ``index_factory`` string plus everything needed to build, search, validate and keep
the index. The same spec works on CPU and GPU: ``gpu.use_gpu="auto"`` uses GPUs when faiss reports them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

NLIST_PLACEHOLDER = "{nlist}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchConfig(_Strict):
    """Search-time parameters; each applies only to index types that have it."""

    nprobe: PositiveInt = Field(16, description="IVF lists visited per query.")
    ef_search: PositiveInt = Field(64, description="HNSW candidate list size; raised to k when k is larger.")
    k_factor: PositiveInt = Field(4, description="Refinement (RFlat): the base index returns k * k_factor to re-rank.")
    max_k: PositiveInt = Field(10_000, description="Largest k a caller may ask for.")
    query_batch_size: PositiveInt = Field(
        4096, description="Queries per faiss call; bounds result memory (batch * k * 12 bytes)."
    )


class GpuConfig(_Strict):
    """How the index uses GPUs; ignored on machines without them unless use_gpu='always'."""

    use_gpu: Literal["auto", "never", "always"] = Field(
        "auto", description="auto: GPU when faiss.get_num_gpus() > 0; always: fail without one."
    )
    float16: bool = Field(False, description="Store vectors / lookup tables in float16 on the GPU.")
    multi_gpu: Literal["shard", "replicate"] = Field(
        "shard", description="Several GPUs: split the vectors (capacity) or copy the index (throughput)."
    )
    max_k: PositiveInt = Field(
        2048, description="Largest k the GPU kernels select; larger searches run on the CPU copy."
    )


class GateConfig(_Strict):
    """Validation gate thresholds: an index failing any check is kept but never published."""

    recall_k: PositiveInt = Field(10, description="k of the recall@k check against exact search.")
    min_recall: float = Field(0.9, ge=0.0, le=1.0, description="Least acceptable recall@recall_k.")
    query_sample_size: PositiveInt = Field(1000, description="Queries sampled for the recall check.")
    min_count_ratio: float = Field(0.5, gt=0.0, description="Least vector count relative to the previous version.")
    max_count_ratio: float = Field(2.0, gt=0.0, description="Largest vector count relative to the previous version.")

    @model_validator(mode="after")
    def _ordered_ratios(self) -> GateConfig:
        if self.min_count_ratio > self.max_count_ratio:
            raise ValueError(
                f"min_count_ratio {self.min_count_ratio} is above max_count_ratio {self.max_count_ratio}"
            )
        return self


class IndexConfig(_Strict):
    """How one index is built, searched, validated and retained."""

    factory_string: str = Field(
        "IVF{nlist},Flat",
        description="faiss.index_factory spec, e.g. 'IVF4096,PQ32,RFlat' or 'HNSW32'. "
        "'{nlist}' is replaced by a list count fitted to the number of vectors (about 4 * sqrt(N)).",
    )
    metric: Literal["ip", "cosine", "l2"] = Field(
        "ip", description="ip: inner product; cosine: vectors and queries L2-normalised, then ip; l2: squared L2."
    )
    train_sample_size: PositiveInt = Field(200_000, description="Vectors sampled to train quantizers.")
    add_batch_size: PositiveInt = Field(100_000, description="Vectors read and added per batch.")
    sample_seed: int = Field(0, description="Seed of the training and validation samples.")
    search: SearchConfig = SearchConfig()
    gpu: GpuConfig = GpuConfig()
    gate: GateConfig = GateConfig()
    keep_versions: PositiveInt = Field(5, description="Versions kept in the store; older ones are deleted.")

    @field_validator("factory_string")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("factory_string is empty: expected a faiss index_factory spec such as 'IVF1024,Flat'")
        return value.strip()


IndexesConfig = dict[str, IndexConfig]


def default_index_configs() -> IndexesConfig:
    """Defaults for the two indexes: post content embeddings and user embeddings, both cosine."""
    return {
        "content": IndexConfig(factory_string="IVF{nlist},Flat", metric="cosine"),
        # Cosine: collaborative neighbours are users with similar tastes, whatever their activity level
        # (vector norm); IVF on raw inner product also loses recall on unnormalised split outputs.
        "user": IndexConfig(factory_string="IVF{nlist},Flat", metric="cosine"),
    }


def auto_nlist(num_vectors: int) -> int:
    """A power-of-two IVF list count near 4 * sqrt(N), with at least 39 vectors per list (faiss's minimum).

    Args:
        num_vectors: number of vectors the index will hold.

    Returns:
        The list count, at least 1.
    """
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be positive to size the IVF lists, got {num_vectors}")
    target = 4 * math.sqrt(num_vectors)
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and num_vectors // nlist < 39:
        nlist //= 2
    return nlist


def resolve_factory_string(factory_string: str, num_vectors: int | None) -> str:
    """Replace the '{nlist}' placeholder by ``auto_nlist(num_vectors)``; other specs pass unchanged."""
    if NLIST_PLACEHOLDER not in factory_string:
        return factory_string
    if num_vectors is None:
        raise ValueError(f"factory_string {factory_string!r} uses {NLIST_PLACEHOLDER}: the vector count is needed")
    return factory_string.replace(NLIST_PLACEHOLDER, str(auto_nlist(num_vectors)))
