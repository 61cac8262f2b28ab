"""Serving configuration: where the app binds, how it batches, how it follows the store."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
)


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
    index_num_cpus: NonNegativeFloat = Field(1.0, description="Ray CPUs reserved by each index replica.")
    ranker_num_cpus: NonNegativeFloat = Field(1.0, description="Ray CPUs reserved by each ranker replica.")
    ingress_num_cpus: NonNegativeFloat = Field(
        0.0, description="Ray CPUs reserved by the HTTP ingress (it only awaits the other two)."
    )
    torch_num_threads: PositiveInt = Field(
        1, description="torch intra-op threads in the ranker replica; small batches gain nothing from more."
    )
    index_omp_threads: PositiveInt = Field(
        1, description="OpenMP threads of FAISS in the index replica (OMP_NUM_THREADS of its actor)."
    )
    max_ongoing_requests: PositiveInt = Field(
        256, description="Requests a replica accepts at once; must exceed max_batch_size for batches to fill."
    )
    batching: BatchingConfig = BatchingConfig()
    default_k: PositiveInt = 100
    max_k: PositiveInt = 1_000
    default_recommend_candidates: PositiveInt = 500
    max_recommend_candidates: PositiveInt = 2_000
    recommend_top_k: PositiveInt = 50
    max_rank_posts: PositiveInt = Field(2_000, description="Most post ids one /v1/rank request may score.")
    score_weights: dict[str, float] = Field(
        default_factory=lambda: {"engage": 1.0},
        description="Task name -> weight of its calibrated probability in the ranking score.",
    )
    poll_interval_s: PositiveFloat = Field(5.0, description="How often deployments check CURRENT pointers.")
    warmup_queries: PositiveInt = Field(
        32, description="Sample queries run on a new version before the swap."
    )
    collaborative_neighbors: PositiveInt = Field(
        20, description="Similar users expanded per collaborative query."
    )
    recent_posts_per_user: PositiveInt = Field(
        50, description="Most recent engaged posts kept per user for the collaborative expansion."
    )
    seen_posts_per_user: PositiveInt = Field(
        2_000, description="Most recent seen posts (any event) kept per user and excluded from results."
    )
    require_lineage: bool = Field(
        True,
        description="Refuse index versions whose manifest lacks embedding_version (coherence cannot be checked).",
    )
    request_timeout_s: PositiveFloat = Field(10.0, description="Client timeout of `nearline query`.")
    ray_serve_env: dict[str, str] = Field(
        default_factory=lambda: {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"},
        description=(
            "Ray Serve flags for the Ray that `nearline serve` starts (Serve reads them from the environment of "
            "each of its processes). gRPC between proxy, ingress and model replicas halves the per-hop cost "
            "measured by bench/serve.py. A cluster started with `ray start` needs them in that command's environment."
        ),
    )

    @field_validator("ray_serve_env")
    @classmethod
    def _only_ray_serve_flags(cls, env: dict[str, str]) -> dict[str, str]:
        wrong = sorted(name for name in env if not name.startswith("RAY_SERVE_"))
        if wrong:
            raise ValueError(f"ray_serve_env takes RAY_SERVE_* variables only, got {wrong}")
        return env
