"""The HTTP API in process (FastAPI over the Ray-free frontend): routes, error shape, OpenAPI, and a
property-based fuzzer generated from the OpenAPI schema that must find no server error and no response
that breaks the schema."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.config import AppSpec, ServeConfig
from serving.http import build_http_api
from serving.service import ServingFrontend, ServingState
from tests.support.serving_fixture import build_serving_set, fixture_index_configs, write_tiny_dataset

CONFIG = ServeConfig(warmup_queries=4)


class InProcessFrontend(ServingFrontend):
    def __init__(self, state: ServingState) -> None:
        self.state = state


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-api")
    data, store_root = str(root / "data"), str(root / "store")
    write_tiny_dataset(data, num_users=120, num_posts=240, seed=3)
    build_serving_set(store_root, data, seed=1, content_dim=16)
    state = ServingState(AppSpec(store_root=store_root, serve=CONFIG, indexes=fixture_index_configs()))
    state.start(follow=False)
    app = build_http_api(InProcessFrontend(state), CONFIG)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_routes_answer_with_their_documented_shapes(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    candidates = api.get("/v1/candidates/5", params={"k": 7}).json()
    assert candidates["user_id"] == 5 and 0 < len(candidates["candidates"]) <= 7
    post = candidates["candidates"][0]["post_id"]
    neighbors = api.post("/v1/neighbors", json={"post_id": post, "k": 3}).json()["neighbors"]
    assert len(neighbors) == 3 and post not in [n["post_id"] for n in neighbors]
    scores = api.post("/v1/rank", json={"user_id": 5, "post_ids": [post, 1, 2]}).json()["scores"]
    assert [s["post_id"] for s in scores] == [post, 1, 2]
    items = api.get("/v1/recommend/5", params={"k": 4, "candidates": 60}).json()["items"]
    assert 0 < len(items) <= 4
    assert api.get("/v1/versions").json()["serving"]["models"]["ranker"]["version"]


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("GET", "/v1/candidates/424242", None, 404, "424242"),
        ("GET", "/v1/recommend/424242", None, 404, "424242"),
        ("POST", "/v1/rank", b'{"user_id": 424242, "post_ids": [1]}', 404, "424242"),
        ("GET", "/v1/candidates/5?k=0", None, 422, "between 1 and 1000"),
        ("GET", "/v1/candidates/5?k=1001", None, 422, "between 1 and 1000"),
        ("GET", "/v1/candidates/5?k=ten", None, 422, "between 1 and 1000"),
        ("GET", "/v1/candidates/5?sources=nope", None, 422, "sources"),
        ("GET", "/v1/recommend/5?candidates=0", None, 422, "between 1 and 2000"),
        ("GET", "/v1/candidates/abc", None, 422, "user_id"),
        ("GET", "/v1/candidates/-1", None, 422, "user_id"),
        ("GET", "/v1/candidates/99999999999999999999", None, 422, "user_id"),
        ("POST", "/v1/neighbors", b'{"post_id": 1,', 400, "malformed JSON"),
        ("POST", "/v1/rank", b"not json", 400, "malformed JSON"),
        ("POST", "/v1/rank", b"[1, 2]", 400, "must be an object"),
        ("POST", "/v1/rank", b"\xff\xfe", 400, "malformed JSON"),
        ("POST", "/v1/rank", b'{"user_id": 5, "post_ids": [1], "extra": 1}', 422, "unknown field 'extra'"),
        ("POST", "/v1/rank", b'{"user_id": 5, "post_ids": [99999999999999999999]}', 422, "post_ids"),
        ("POST", "/v1/neighbors", b'{"vector": [1.0, 2.0]}', 422, "expected 16"),
        ("POST", "/v1/neighbors", b'{"post_id": 1, "vector": [1.0]}', 422, "exactly one"),
        ("POST", "/v1/neighbors", b'{"post_id": 99999999}', 404, "99999999"),
        ("GET", "/v1/rank", None, 405, "POST"),
        ("GET", "/v1/nothing", None, 404, "no endpoint"),
    ],
)
def test_bad_requests_get_clear_json_errors(api, method, path, body, status, fragment):
    response = api.request(method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    assert fragment in error["message"] and error["request_id"]


def test_a_body_without_a_json_content_type_is_refused_with_the_reason(api):
    response = api.post("/v1/rank", content=b'{"user_id": 5, "post_ids": [1]}', headers={"content-type": "text/plain"})
    assert response.status_code == 400 and "Content-Type: application/json" in response.json()["error"]["message"]


def test_the_callers_request_id_comes_back_in_errors(api):
    response = api.get("/v1/candidates/424242", headers={"x-request-id": "abc-123"})
    assert response.json()["error"]["request_id"] == "abc-123"


def test_openapi_and_docs_are_served(api):
    schema = api.get("/openapi.json").json()
    assert {"/v1/candidates/{user_id}", "/v1/neighbors", "/v1/rank", "/v1/recommend/{user_id}",
            "/v1/versions", "/healthz"} <= set(schema["paths"])
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert api.get("/docs").status_code == 200


def test_fuzzing_from_the_openapi_schema_finds_no_server_error(api):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def fuzz(case):
            case.call_and_validate(checks=checks)

        fuzz()
