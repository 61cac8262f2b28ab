"""Serving configuration: where the app binds, how it batches, how it follows the store."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class BatchingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: PositiveInt = Field(64, description="Requests merged into one FAISS/ranker call.")
    batch_wait_timeout_s: float = Field(0.002, ge=0, description="How long a batch waits to fill.")


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="HTTP bind address; loopback unless exposed on purpose.")
    port: PositiveInt = 8000
    route_prefix: str = "/"
    num_replicas: PositiveInt = 1
    index_num_gpus: float = Field(0.0, ge=0, description="GPUs for the index deployment's actor.")
    batching: BatchingConfig = BatchingConfig()
    default_k: PositiveInt = 100
    max_k: PositiveInt = 1_000
    default_recommend_candidates: PositiveInt = 500
    max_recommend_candidates: PositiveInt = 2_000
    recommend_top_k: PositiveInt = 50
    poll_interval_s: PositiveFloat = Field(5.0, description="How often deployments check CURRENT pointers.")
    warmup_queries: PositiveInt = Field(32, description="Sample queries run on a new version before the swap.")
    collaborative_neighbors: PositiveInt = Field(20, description="Similar users expanded per collaborative query.")
