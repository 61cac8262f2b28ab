"""The Ray Serve application: candidates, neighbours, ranking and recommendations over HTTP and handles.

Three deployments (``build_app`` wires them; ``conf/serve.yaml`` runs it with ``serve run`` / ``serve
deploy``; ``nearline serve`` starts it on a local Ray):

- ``IndexDeployment`` holds the content and user FAISS indexes with the vectors that query them
  (GPU via its actor options when ``serve.index_num_gpus`` > 0); one FAISS call per index per batch.
- ``RankerDeployment`` holds the ranker scorer with the precomputed user / user-author vectors and
  the post features; one scorer call per batch.
- ``Ingress`` answers HTTP (``GET /v1/candidates/{user_id}?k=&sources=``, ``POST /v1/neighbors``,
  ``POST /v1/rank``, ``GET /v1/recommend/{user_id}?k=&candidates=``, ``GET /v1/versions``,
  ``GET /healthz``) and exposes the same operations as handle methods for in-cluster callers. It
  merges concurrent requests from all callers with ``@serve.batch`` and sends each batch to the model
  deployments as one call (a recommend batch: one candidates call, then one ranker call).

Both model-holding deployments follow the store: a daemon thread polls the CURRENT pointers every
``serve.poll_interval_s`` (a ``user_config`` change of ``reload`` polls at once), loads a changed set
beside the serving one, verifies and warms it up, swaps the reference and frees the old set
(``ranking.serving_state.BundleHolder``). A set that fails is refused and the old one keeps serving.

Metrics (Prometheus, through Ray's metrics agent): ``nearline_request_latency_ms`` and
``nearline_requests`` by route and status, ``nearline_batch_size`` and ``nearline_candidate_count``,
``nearline_serving_version`` (1 for each artifact version serving), ``nearline_version_swaps`` and
``nearline_version_refusals``. Each request is logged as one JSON line with its request id (taken from
the ``x-request-id`` header or Serve's own id) and returned in the ``x-request-id`` response header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import metrics
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from retrieval.config import IndexConfig
from serving.api import (
    SOURCES,
    CandidateQuery,
    NeighborQuery,
    RankQuery,
    match_route,
    parse_json_object,
    parse_k,
    parse_sources,
    parse_user_id,
    validate_neighbors,
    validate_rank,
)
from serving.config import ServeConfig
from serving.errors import RequestError
from serving.hot_swap import BundleHolder
from serving.index_side import IndexBundle, load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers
from serving.ranker_side import RankerBundle, load_ranker_bundle
from serving.recommend import rank_queries_for, rank_response, recommendations
from storage.store import Store

log = logging.getLogger("ray.serve")

APP_NAME = "nearline"
BATCHING_KEYS = ("max_batch_size", "batch_wait_timeout_s")
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2000]


class AppSpec(BaseModel):
    """What every deployment needs, resolved on the driver (absolute paths, validated configs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_root: str
    data_path: str
    serve: ServeConfig = ServeConfig()
    indexes: dict[str, IndexConfig] = Field(default_factory=dict)


class ServeAppArgs(BaseModel):
    """``args`` of the Serve config file (``conf/serve.yaml``): which nearline config to serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str | None = Field(None, description="nearline YAML (default: conf/local.yaml when present).")
    overrides: list[str] = Field(default_factory=list, description="--set style KEY=VALUE overrides.")


def _version_gauge_tags(versions: dict[str, Any] | None) -> dict[str, str]:
    """'kind/name' -> version of every artifact in a bundle's versions tree."""
    flat = {}
    for kind, artifacts in (versions or {}).items():
        for name, info in artifacts.items():
            if isinstance(info, dict) and info.get("version"):
                flat[f"{kind}/{name}"] = str(info["version"])
    return flat


class _Follower:
    """Shared by the two model-holding deployments: the bundle holder, the reload knob, version metrics."""

    _holder: BundleHolder
    _user_config_keys: frozenset[str] = frozenset({"reload"})

    def _create_metrics(self) -> None:
        self._version_gauge = metrics.Gauge(
            "nearline_serving_version",
            "1 for each artifact version being served",
            tag_keys=("artifact", "version"),  # type: ignore[arg-type]  # Ray annotates Tuple[str]
        )
        self._swaps = metrics.Counter("nearline_version_swaps", "Bundles swapped in")
        self._refusals = metrics.Counter("nearline_version_refusals", "Published versions refused")
        self._reload_token: Any = None

    def _follow(self, name: str, holder: BundleHolder, spec: AppSpec) -> None:
        """Load the first bundle (failing the replica when nothing is servable), then poll."""
        self._name = name
        self._holder = holder
        if not holder.poll():
            raise RuntimeError(f"{name}: no servable version in the store: {holder.last_error}")
        holder.start(spec.serve.poll_interval_s)

    def _on_swap(self, old: Any, new: Any) -> None:
        # Runs on the poll thread (or in reconfigure): metrics only, the swap itself is done.
        self._swaps.inc()
        for artifact, version in _version_gauge_tags(getattr(old, "versions", None)).items():
            self._version_gauge.set(0, tags={"artifact": artifact, "version": version})
        for artifact, version in _version_gauge_tags(new.versions).items():
            self._version_gauge.set(1, tags={"artifact": artifact, "version": version})

    def _on_refuse(self, reason: str) -> None:
        self._refusals.inc()

    def _apply_reload(self, user_config: dict) -> None:
        unknown = set(user_config) - self._user_config_keys
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)} for {self._name}")
        if "reload" in user_config and user_config["reload"] != self._reload_token:
            self._reload_token = user_config["reload"]
            self._holder.poll()

    def versions(self) -> dict[str, Any]:
        """What this deployment serves: pointers, versions tree, load time, last refusal."""
        return self._holder.status()

    def _bundle(self) -> Any:
        bundle = self._holder.current
        assert bundle is not None  # the constructor fails unless the first load succeeded
        return bundle

    def check_health(self) -> None:
        if self._holder.current is None:
            raise RuntimeError(f"{self._name}: no bundle loaded")

    def __del__(self) -> None:
        holder = getattr(self, "_holder", None)
        if holder is not None:
            holder.stop()


def _raise_error(result: Any) -> Any:
    if isinstance(result, RequestError):
        raise result
    return result


@serve.deployment(name="IndexDeployment")
class IndexDeployment(_Follower):
    """The FAISS indexes and their query vectors. Each call carries a batch the ingress formed, and is
    answered with one FAISS search per index."""

    def __init__(self, spec: dict[str, Any]) -> None:
        spec_model = AppSpec.model_validate(spec)
        store = Store(spec_model.store_root)
        holder: BundleHolder[IndexBundle] = BundleHolder(
            "index",
            lambda: read_pointers(store, INDEX_POINTERS),
            lambda pointers: load_index_bundle(
                store, pointers, spec_model.serve, spec_model.indexes, spec_model.data_path
            ),
            on_swap=self._on_swap,
            on_refuse=self._on_refuse,
        )
        self._create_metrics()
        self._candidate_count = metrics.Histogram(
            "nearline_candidate_count",
            "Candidates returned per query",
            boundaries=[1, 10, 50, 100, 200, 500, 1000, 2000],
            tag_keys=("method",),
        )
        self._follow("index", holder, spec_model)

    def reconfigure(self, user_config: dict) -> None:
        self._apply_reload(user_config)

    async def candidates(self, queries: list[CandidateQuery]) -> list[Any]:
        """Per query, its candidates [{post_id, source, score, scores}] (seen posts excluded) or the
        RequestError that answers it (404 unknown user): one bad query does not fail the batch."""
        results = self._bundle().candidates(queries)  # one bundle for the whole batch, even across a swap
        for result in results:
            if not isinstance(result, RequestError):
                self._candidate_count.observe(len(result), tags={"method": "candidates"})
        return results

    async def neighbors(self, queries: list[NeighborQuery]) -> list[Any]:
        """Per query, the posts nearest its vector or post [{post_id, score}], or its RequestError
        (422 wrong vector dimension, 404 unknown post)."""
        return self._bundle().neighbors(queries)


@serve.deployment(name="RankerDeployment")
class RankerDeployment(_Follower):
    """The ranker scorer over one ranker version's precomputed vectors; one scorer call per batch."""

    _user_config_keys = frozenset({"reload", "score_weights"})

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        spec_model = AppSpec.model_validate(spec)
        torch.set_num_threads(spec_model.serve.torch_num_threads)
        store = Store(spec_model.store_root)
        self._score_weights = dict(spec_model.serve.score_weights)
        holder: BundleHolder[RankerBundle] = BundleHolder(
            "ranker",
            lambda: read_pointers(store, RANKER_POINTERS),
            lambda pointers: self._load(store, pointers, spec_model),
            on_swap=self._on_swap,
            on_refuse=self._on_refuse,
        )
        self._create_metrics()
        self._follow("ranker", holder, spec_model)

    def _load(self, store: Store, pointers: dict, spec: AppSpec) -> RankerBundle:
        bundle = load_ranker_bundle(store, pointers, spec.serve, spec.data_path)
        bundle.set_score_weights(self._score_weights)
        return bundle

    def reconfigure(self, user_config: dict) -> None:
        if "score_weights" in user_config:
            weights = {str(k): float(v) for k, v in dict(user_config["score_weights"]).items()}
            self._bundle().set_score_weights(weights)  # raises ValueError on unknown tasks
            self._score_weights = weights
        self._apply_reload(user_config)

    def versions(self) -> dict[str, Any]:
        return {**super().versions(), "score_weights": self._score_weights}

    async def rank(self, queries: list[RankQuery]) -> tuple[list[Any], tuple[str, ...]]:
        """Per query, calibrated scores {post_ids, score, probabilities} in its post order, or its
        RequestError (404 unknown user or posts); and the task names of the probabilities."""
        bundle = self._bundle()
        return bundle.rank(queries), bundle.tasks


# A replica that stops (rolling update, scale-down, crash) fails the calls it held with one of these.
_REPLICA_LOST = (ray.exceptions.RayActorError, ReplicaUnavailableError)


async def _read(method: Any, *args: Any) -> Any:
    """Call a model deployment; every such call only reads, so one that met a lost replica is sent once more,
    and the router, which has dropped that replica by then, sends it to a live one."""
    try:
        return await method.remote(*args)
    except _REPLICA_LOST as exc:
        log.warning("retrying %s after a lost replica: %s", method, type(exc).__name__)
        return await method.remote(*args)


def _unwrap_error(exc: BaseException) -> RequestError | None:
    """A RequestError raised in another replica (Ray wraps it in RayTaskError)."""
    if isinstance(exc, RequestError):
        return exc
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, RequestError) else None


@dataclass(frozen=True)
class _RecommendQuery:
    user_id: int
    k: int
    num_candidates: int


@serve.deployment(name="Ingress")
class Ingress:
    """HTTP edge and handle API: validates requests, batches them across callers (``@serve.batch``, knobs
    in ``serve.batching`` and the ``user_config``), and sends each batch to the index and ranker
    deployments as one call. Batching here, where callers fan in, spares the per-request hop to the model
    deployments, which on a small machine costs more than the FAISS and ranker work itself."""

    def __init__(
        self, index: DeploymentHandle, ranker: DeploymentHandle, serve_config: dict[str, Any]
    ) -> None:
        self._index = index
        self._ranker = ranker
        self._config = ServeConfig.model_validate(serve_config)
        self._latency = metrics.Histogram(
            "nearline_request_latency_ms",
            "HTTP request latency",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route", "status"),  # type: ignore[arg-type]
        )
        self._requests = metrics.Counter(
            "nearline_requests",
            "HTTP requests",
            tag_keys=("route", "status"),  # type: ignore[arg-type]
        )
        self._batch_size = metrics.Histogram(
            "nearline_batch_size",
            "Requests per batched call to a model deployment",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
            tag_keys=("method",),
        )
        # Batches and requests per method since start: the mean batch size without a metrics backend.
        self._batch_totals: dict[str, list[int]] = {}
        self.reconfigure({})

    def _observe_batch(self, method: str, size: int) -> None:
        self._batch_size.observe(size, tags={"method": method})
        totals = self._batch_totals.setdefault(method, [0, 0])
        totals[0] += 1
        totals[1] += size

    def reconfigure(self, user_config: dict) -> None:
        unknown = set(user_config) - set(BATCHING_KEYS)
        if unknown:
            raise ValueError(
                f"unknown user_config key(s) {sorted(unknown)} for Ingress, expected {BATCHING_KEYS}"
            )
        size = int(user_config.get("max_batch_size", self._config.batching.max_batch_size))
        wait = float(user_config.get("batch_wait_timeout_s", self._config.batching.batch_wait_timeout_s))
        if size < 1 or wait < 0:
            raise ValueError(f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, got {size}, {wait}")
        for method in (
            self._candidates_batch,
            self._neighbors_batch,
            self._rank_batch,
            self._recommend_batch,
        ):
            method.set_max_batch_size(size)
            method.set_batch_wait_timeout_s(wait)
        self._batching = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    # ---- batched calls to the model deployments: one list in, one result (or RequestError) per query out
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _candidates_batch(self, queries: list[CandidateQuery]) -> list[Any]:
        self._observe_batch("candidates", len(queries))
        return await _read(self._index.candidates, queries)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _neighbors_batch(self, queries: list[NeighborQuery]) -> list[Any]:
        self._observe_batch("neighbors", len(queries))
        return await _read(self._index.neighbors, queries)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _rank_batch(self, queries: list[RankQuery]) -> list[Any]:
        self._observe_batch("rank", len(queries))
        results, tasks = await _read(self._ranker.rank, queries)
        return [result if isinstance(result, RequestError) else (result, tasks) for result in results]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _recommend_batch(self, queries: list[_RecommendQuery]) -> list[Any]:
        self._observe_batch("recommend", len(queries))
        candidate_lists = await _read(
            self._index.candidates, [CandidateQuery(q.user_id, q.num_candidates, SOURCES) for q in queries]
        )
        to_rank, rank_queries = rank_queries_for([q.user_id for q in queries], candidate_lists)
        ranked, _ = await _read(self._ranker.rank, rank_queries) if rank_queries else ([], ())
        return recommendations(candidate_lists, to_rank, ranked, [q.k for q in queries])

    # ---- handle API (in-cluster callers); HTTP routes use the same methods
    async def candidates(
        self, user_id: int, k: int | str | None = None, sources: tuple[str, ...] = SOURCES
    ) -> list[dict]:
        """Candidates for a user: [{post_id, source, score, scores}], seen posts excluded.

        Raises:
            RequestError: 422 bad k, 404 unknown user.
        """
        k = parse_k(k, self._config.default_k, self._config.max_k)
        return _raise_error(await self._candidates_batch(CandidateQuery(int(user_id), k, tuple(sources))))

    async def neighbors(
        self, k: int | None = None, vector: list[float] | None = None, post_id: int | None = None
    ) -> list[dict]:
        """Posts nearest a vector or another post's content vector: [{post_id, score}].

        Raises:
            RequestError: 422 bad k or vector dimension, 404 unknown post.
        """
        query = validate_neighbors({"k": k, "vector": vector, "post_id": post_id}, self._config)
        return _raise_error(await self._neighbors_batch(query))

    async def rank(self, user_id: int, post_ids: list[int]) -> list[dict]:
        """Calibrated scores in the given post order: [{post_id, score, probabilities}].

        Raises:
            RequestError: 422 bad body, 404 unknown user or posts.
        """
        query = validate_rank({"user_id": user_id, "post_ids": list(post_ids)}, self._config)
        if len(query.post_ids) == 0:
            return []
        result, tasks = _raise_error(await self._rank_batch(RankQuery(query.user_id, query.post_ids)))
        return rank_response(result, tasks)

    async def recommend(
        self, user_id: int, k: int | str | None = None, num_candidates: int | str | None = None
    ) -> list[dict]:
        """The user's candidates ranked, top k: [{post_id, source, score, ...}].

        Raises:
            RequestError: 422 bad k or candidates, 404 unknown user.
        """
        k = parse_k(k, self._config.recommend_top_k, self._config.max_k)
        num_candidates = parse_k(
            num_candidates,
            self._config.default_recommend_candidates,
            self._config.max_recommend_candidates,
            name="candidates",
        )
        return _raise_error(await self._recommend_batch(_RecommendQuery(int(user_id), k, num_candidates)))

    async def versions(self) -> dict[str, Any]:
        index, ranker = await asyncio.gather(_read(self._index.versions), _read(self._ranker.versions))
        serving: dict[str, dict] = {}
        for part in (index, ranker):
            for kind, artifacts in (part.get("versions") or {}).items():
                serving.setdefault(kind, {}).update(artifacts)
        return {
            "serving": serving,
            "index_deployment": index,
            "ranker_deployment": ranker,
            "ingress": {
                "batching": dict(self._batching),
                "batches_since_start": {
                    method: {"batches": batches, "requests": requests}
                    for method, (batches, requests) in self._batch_totals.items()
                },
            },
        }

    # ---- HTTP
    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        # Serve's proxy takes the caller's x-request-id (or makes one) and returns it in the response header.
        request_id = _serve_request_id() or request.headers.get("x-request-id") or uuid.uuid4().hex
        route = "unknown"
        try:
            path = request.url.path
            root = request.scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            route, user_param = match_route(request.method, path)
            status, body = 200, await self._dispatch(route, user_param, request)
        except Exception as exc:  # noqa: BLE001 - the HTTP boundary: every failure becomes a JSON error
            error = _unwrap_error(exc)
            if error is None:
                log.exception("request %s failed", request_id)
                error = RequestError(500, f"internal error: {type(exc).__name__}")
            status, body = error.status, error.to_dict(request_id)
            if route == "healthz":
                status = 503
        latency_ms = (time.perf_counter() - started) * 1000
        self._latency.observe(latency_ms, tags={"route": route, "status": str(status)})
        self._requests.inc(tags={"route": route, "status": str(status)})
        log.info(
            json.dumps(
                {
                    "event": "request",
                    "request_id": request_id,
                    "route": route,
                    "method": request.method,
                    "status": status,
                    "latency_ms": round(latency_ms, 3),
                }
            )
        )
        return JSONResponse(body, status_code=status)

    async def _dispatch(self, route: str, user_param: str | None, request: Request) -> Any:
        params = request.query_params
        if route == "candidates":
            items = await self.candidates(
                parse_user_id(user_param), params.get("k"), parse_sources(params.get("sources"))
            )
            return {"user_id": parse_user_id(user_param), "candidates": items}
        if route == "recommend":
            user_id = parse_user_id(user_param)
            items = await self.recommend(user_id, params.get("k"), params.get("candidates"))
            return {"user_id": user_id, "items": items}
        if route == "neighbors":
            query = validate_neighbors(parse_json_object(await request.body()), self._config)
            return {"neighbors": _raise_error(await self._neighbors_batch(query))}
        if route == "rank":
            body = parse_json_object(await request.body())
            rank_query = validate_rank(body, self._config)
            scores = await self.rank(rank_query.user_id, rank_query.post_ids.tolist())
            return {"user_id": rank_query.user_id, "scores": scores}
        if route == "versions":
            return await self.versions()
        if route == "healthz":
            await asyncio.gather(self._index.check_health.remote(), self._ranker.check_health.remote())
            return {"status": "ok"}
        raise RequestError(404, f"no endpoint {route}")


def _serve_request_id() -> str | None:
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except (ImportError, AttributeError):
        return None


def app_spec(
    store_root: str, data_path: str, serve_config: ServeConfig, indexes: dict[str, IndexConfig]
) -> AppSpec:
    """An AppSpec with absolute paths, so replicas started in any directory read the same store."""
    return AppSpec(
        store_root=str(Path(store_root).absolute()),
        data_path=str(Path(data_path).absolute()),
        serve=serve_config,
        indexes=indexes,
    )


def build_app_from_spec(spec: AppSpec, user_config: dict[str, Any] | None = None):
    """The application graph for a spec: index and ranker deployments behind the ingress.

    Args:
        spec: paths and configs.
        user_config: live knobs: max_batch_size and batch_wait_timeout_s go to the ingress, reload to
            both model deployments, score_weights to the ranker; redeploying with a new one reconfigures
            the running replicas without restarting them.
    """
    cfg = spec.serve
    spec_dict = spec.model_dump(mode="json")
    common = {"num_replicas": cfg.num_replicas, "max_ongoing_requests": cfg.max_ongoing_requests}
    ranker_user_config = {k: v for k, v in (user_config or {}).items() if k not in BATCHING_KEYS}
    index_user_config = {k: v for k, v in ranker_user_config.items() if k != "score_weights"}
    ingress_user_config = {k: v for k, v in (user_config or {}).items() if k in BATCHING_KEYS}
    index = IndexDeployment.options(  # type: ignore[attr-defined]
        ray_actor_options={
            "num_cpus": cfg.index_num_cpus,
            "num_gpus": cfg.index_num_gpus,
            # Small batched searches: OpenMP threads contending on shared cores cost far more than they give.
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(cfg.index_omp_threads)}},
        },
        user_config=index_user_config or None,
        **common,
    ).bind(spec_dict)
    ranker = RankerDeployment.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": cfg.ranker_num_cpus}, user_config=ranker_user_config or None, **common
    ).bind(spec_dict)
    ingress = Ingress.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        user_config=ingress_user_config or None,
        **common,
    )
    return ingress.bind(index, ranker, cfg.model_dump(mode="json"))


def build_app(args: dict[str, Any]):
    """Entry point for ``serve run`` / ``serve deploy`` (import_path ``serving.app:build_app``).

    Args:
        args: ServeAppArgs fields: ``config`` (nearline YAML) and ``overrides``.
    """
    from jobs.cli import default_config_path
    from jobs.config import load_config

    app_args = ServeAppArgs.model_validate(args or {})
    config = load_config(default_config_path(app_args.config), app_args.overrides)
    return build_app_from_spec(app_spec(config.store.root, config.data.path, config.serve, config.indexes))


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
        The ingress handle. Call ``shutdown_local()`` to stop everything.
    """
    if not ray.is_initialized():
        # The raylet started by ray.init passes this environment on to the Serve controller, proxy and replicas.
        os.environ.update(spec.serve.ray_serve_env)
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
