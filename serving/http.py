"""The HTTP API: FastAPI routes with typed request and response models, and one JSON error shape.

Routes (``/openapi.json`` and ``/docs`` describe them):

- ``GET /v1/candidates/{user_id}?k=&sources=``: candidates, seen posts excluded;
- ``POST /v1/neighbors`` ``{"post_id": ..}`` or ``{"vector": [..]}``, optional ``k``: similar posts;
- ``POST /v1/rank`` ``{"user_id": .., "post_ids": [..]}``: scores in the given order;
- ``GET /v1/recommend/{user_id}?k=&candidates=``: candidates ranked, top k;
- ``GET /v1/versions``: what is serving; ``GET /healthz``: 200 when both sides hold a bundle, else 503.

Every error, whether FastAPI's own (unknown path, wrong method, unparsable JSON, wrong types) or the
service's (unknown user, k out of range), answers ``{"error": {"status", "message", "request_id"}}``
with a message that names the bad value and what was expected.

The routes call a ``Frontend`` (``serving.service.ServingFrontend``): the Ray Serve deployment in
production, a Ray-free one in tests, so what the API tests exercise is the code that serves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api import INT64_MAX, SOURCES
from serving.config import ServeConfig
from serving.errors import RequestError

UserId = Annotated[int, Path(ge=0, le=INT64_MAX, description="A user id (non-negative int64).")]
PostId = Annotated[int, Field(ge=0, le=INT64_MAX)]


class Frontend(Protocol):
    async def candidates(self, user_id: int, k: int | None, sources: str | None) -> list[dict]: ...
    async def neighbors(self, k: int | None, vector: list[float] | None, post_id: int | None) -> list[dict]: ...
    async def rank(self, user_id: int, post_ids: list[int]) -> list[dict]: ...
    async def recommend(self, user_id: int, k: int | None, num_candidates: int | None) -> list[dict]: ...
    async def versions(self) -> dict[str, Any]: ...
    async def check_health(self) -> None: ...


# ---- request bodies


class NeighborsBody(BaseModel):
    """Exactly one of ``vector`` (the content index's dimension) or ``post_id``."""

    model_config = ConfigDict(extra="forbid")

    vector: list[float] | None = None
    post_id: PostId | None = None
    k: int | None = Field(None, description="Neighbours wanted (1..serve.max_k; default serve.default_k).")


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: PostId
    post_ids: list[PostId] = Field(description="Posts to score (at most serve.max_rank_posts).")


# ---- responses (extra fields allowed: the pipeline may attach more per item than documented here)


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")

    post_id: int
    source: str = Field(description="The source that contributed the post first.")
    score: float = Field(description="That source's retrieval score.")
    scores: dict[str, float] = Field(description="Every source's score for the post.")


class CandidatesResponse(BaseModel):
    user_id: int
    candidates: list[Candidate]


class Neighbor(BaseModel):
    post_id: int
    score: float


class NeighborsResponse(BaseModel):
    neighbors: list[Neighbor]


class PostScore(BaseModel):
    model_config = ConfigDict(extra="allow")

    post_id: int
    score: float = Field(description="The score-weighted sum of the calibrated task probabilities.")
    probabilities: dict[str, float]


class RankResponse(BaseModel):
    user_id: int
    scores: list[PostScore]


class RecommendedItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    post_id: int
    score: float = Field(description="The score-weighted sum of the calibrated task probabilities.")
    rank_score: float = Field(description="The ranker's uncalibrated weighted score (the order without a blend).")
    blend_score: float | None = Field(
        description="The recommend blend's score (log-odds less a constant), the order when serve.recommend_blend is set; else null."
    )
    source: str
    retrieval_score: float


class RecommendResponse(BaseModel):
    user_id: int
    items: list[RecommendedItem]


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    status: int
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed JSON body"),
        (404, "Unknown user, post or endpoint"),
        (405, "Method not allowed"),
        (422, "A value out of range or of the wrong type; the message names it"),
    )
}


def _param_ranges(config: ServeConfig) -> dict[str, tuple[int, int]]:
    return {
        "user_id": (0, INT64_MAX),
        "post_id": (0, INT64_MAX),
        "k": (1, config.max_k),
        "candidates": (1, config.max_recommend_candidates),
    }


def _validation_message(exc: RequestValidationError, ranges: dict[str, tuple[int, int]]) -> tuple[int, str]:
    """FastAPI's validation errors in the service's words: (status, message naming the value)."""
    parts = []
    for item in exc.errors():
        loc = [str(p) for p in item["loc"]]
        where = ".".join(loc[1:]) or "(body)"
        if item["type"] == "json_invalid":
            return 400, f"malformed JSON body: {item.get('ctx', {}).get('error', item['msg'])}"
        if loc == ["body"] and item["type"] in ("model_attributes_type", "dict_type"):
            if isinstance(item.get("input"), bytes):
                # FastAPI parses JSON only when the client says so: a browser cannot send that header
                # cross-site without a CORS preflight, which keeps a loopback server safe from CSRF.
                return 400, "the body must be a JSON object sent with 'Content-Type: application/json'"
            return 400, f"the JSON body must be an object, got {type(item.get('input')).__name__}"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif item["type"] == "missing":
            parts.append(f"{where}: required")
        elif loc[-1] in ranges and len(loc) == 2:
            low, high = ranges[loc[-1]]
            parts.append(f"{loc[-1]} must be an integer between {low} and {high}, got {item.get('input')!r}")
        else:
            parts.append(f"{where}: {item['msg']}, got {item.get('input')!r}")
    return 422, "invalid request: " + "; ".join(parts)


def build_http_api(
    frontend: Frontend, config: ServeConfig, request_id: Callable[[], str | None] = lambda: None
) -> FastAPI:
    """The FastAPI app answering the routes above from ``frontend``.

    Args:
        frontend: the operations (validation beyond types, batching, the work).
        config: limits quoted in error messages.
        request_id: the id of the request being served (Serve's), used in error bodies when the caller
            sent no ``x-request-id``.
    """
    # The hot routes (candidates, rank, recommend) return a JSONResponse: FastAPI then skips re-validating
    # the answer against its response_model, which cost ~0.5 ms per 100 candidates. The models still
    # describe the answers in /openapi.json, and the schema fuzzer checks that the answers fit them.
    app = FastAPI(
        title="nearline",
        summary="Candidates, neighbours, ranking and recommendations for a social feed.",
        version="1",
    )
    ranges = _param_ranges(config)

    def error_response(
        request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        rid = request.headers.get("x-request-id") or request_id() or uuid.uuid4().hex
        return JSONResponse(RequestError(status, message).to_dict(rid), status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, *_validation_message(exc, ranges))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no endpoint {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        else:
            message = str(exc.detail)
        return error_response(request, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(json.JSONDecodeError)
    async def _json_error(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(request, 400, f"malformed JSON body: {exc}")

    @app.get("/healthz", response_model=Health, responses={503: {"model": ErrorResponse}})
    async def healthz(request: Request) -> Any:
        try:
            await frontend.check_health()
        except Exception as exc:  # noqa: BLE001 - any failure to serve is "unhealthy", with its reason
            return error_response(request, 503, f"unhealthy: {exc}")
        return {"status": "ok"}

    @app.get("/v1/candidates/{user_id}", response_model=CandidatesResponse, responses=_ERRORS)
    async def candidates(
        user_id: UserId,
        k: Annotated[int | None, Query(description="Candidates wanted (1..serve.max_k).")] = None,
        sources: Annotated[
            str | None, Query(description=f"Comma list of {', '.join(SOURCES)}, or 'all' (default).")
        ] = None,
    ) -> Any:
        items = await frontend.candidates(user_id, k, sources)
        return JSONResponse({"user_id": user_id, "candidates": items})

    @app.post("/v1/neighbors", response_model=NeighborsResponse, responses=_ERRORS)
    async def neighbors(body: NeighborsBody) -> Any:
        return {"neighbors": await frontend.neighbors(body.k, body.vector, body.post_id)}

    @app.post("/v1/rank", response_model=RankResponse, responses=_ERRORS)
    async def rank(body: RankBody) -> Any:
        return JSONResponse({"user_id": body.user_id, "scores": await frontend.rank(body.user_id, body.post_ids)})

    @app.get("/v1/recommend/{user_id}", response_model=RecommendResponse, responses=_ERRORS)
    async def recommend(
        user_id: UserId,
        k: Annotated[int | None, Query(description="Items wanted (1..serve.max_k).")] = None,
        candidates: Annotated[
            int | None, Query(description="Candidates ranked (1..serve.max_recommend_candidates).")
        ] = None,
    ) -> Any:
        return JSONResponse({"user_id": user_id, "items": await frontend.recommend(user_id, k, candidates)})

    @app.get("/v1/versions", response_model=dict[str, Any])
    async def versions() -> Any:
        return await frontend.versions()

    return app
