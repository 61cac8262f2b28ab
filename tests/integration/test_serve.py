"""The Serve app end to end on a local Ray: every endpoint, every error code, handles, hot swap under load.

One Ray + Serve start for the module (it costs tens of seconds on 2 cores); the app binds a free
loopback port and serves a tiny store built with the libraries.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from serving.config import ServeConfig
from serving.lineage import rollback_serving_set
from storage.store import Store
from tests.support.serving_fixture import build_serving_set, fixture_index_configs, write_tiny_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from serving.app import app_spec, shutdown_local, start_local

    root = tmp_path_factory.mktemp("serve-app")
    data, store_root = str(root / "data"), str(root / "store")
    write_tiny_dataset(data, num_users=200, num_posts=400, seed=5)
    first = build_serving_set(store_root, data, seed=1, content_dim=16)
    config = ServeConfig(
        port=_free_port(), poll_interval_s=0.5, warmup_queries=4, num_cpus=0.5,
        # HAProxy's own listeners default to fixed ports; free ones keep a concurrent Serve from colliding.
        ray_serve_env={"RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
                       "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port())},
    )
    spec = app_spec(store_root, config, fixture_index_configs())
    try:
        handle = start_local(spec, num_cpus=2)
        with httpx.Client(base_url=f"http://127.0.0.1:{config.port}", timeout=30) as client:
            yield {"client": client, "handle": handle, "store": store_root, "data": data, "first": first}
    finally:
        shutdown_local()


def _serving(client: httpx.Client) -> dict:
    return client.get("/v1/versions").json()["serving"]


def test_endpoints_answer(app):
    client = app["client"]
    assert client.get("/healthz").json() == {"status": "ok"}
    candidates = client.get("/v1/candidates/5", params={"k": 7}).json()["candidates"]
    assert 0 < len(candidates) <= 7 and {"post_id", "source", "score", "scores"} <= set(candidates[0])
    content_only = client.get("/v1/candidates/5", params={"k": 5, "sources": "content"}).json()["candidates"]
    assert {c["source"] for c in content_only} == {"content"}
    post = candidates[0]["post_id"]
    neighbors = client.post("/v1/neighbors", json={"post_id": post, "k": 3}).json()["neighbors"]
    assert len(neighbors) == 3 and post not in [n["post_id"] for n in neighbors]
    by_vector = client.post("/v1/neighbors", json={"vector": [0.1] * 16, "k": 2}).json()["neighbors"]
    assert len(by_vector) == 2
    scores = client.post("/v1/rank", json={"user_id": 5, "post_ids": [post, 1, 2]}).json()["scores"]
    assert [s["post_id"] for s in scores] == [post, 1, 2]
    assert all(0 <= s["score"] <= 1 and set(s["probabilities"]) >= {"engage"} for s in scores)
    items = client.get("/v1/recommend/5", params={"k": 4, "candidates": 60}).json()["items"]
    assert 0 < len(items) <= 4 and [i["score"] for i in items] == sorted(
        (i["score"] for i in items), reverse=True
    )
    serving = _serving(client)
    assert serving["indexes"]["content"]["version"] == app["first"]["indexes/content"]
    assert serving["models"]["ranker"]["version"] == app["first"]["models/ranker"]


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("GET", "/v1/candidates/424242", None, 404, "424242"),
        ("GET", "/v1/recommend/424242", None, 404, "424242"),
        ("POST", "/v1/rank", b'{"user_id": 424242, "post_ids": [1]}', 404, "424242"),
        ("GET", "/v1/candidates/5?k=0", None, 422, "between 1 and 1000"),
        ("GET", "/v1/candidates/5?k=1001", None, 422, "between 1 and 1000"),
        ("GET", "/v1/candidates/5?k=ten", None, 422, "between 1 and 1000"),
        ("GET", "/v1/recommend/5?candidates=0", None, 422, "between 1 and 2000"),
        ("GET", "/v1/candidates/abc", None, 422, "user_id"),
        ("POST", "/v1/neighbors", b'{"post_id": 1,', 400, "malformed JSON"),
        ("POST", "/v1/rank", b"not json", 400, "malformed JSON"),
        ("POST", "/v1/neighbors", b'{"vector": [1.0, 2.0]}', 422, "expected 16"),
        ("POST", "/v1/neighbors", b'{"post_id": 99999999}', 404, "99999999"),
        ("GET", "/v1/rank", None, 405, "POST"),
        ("GET", "/v1/nothing", None, 404, "no endpoint"),
    ],
)
def test_bad_requests_get_clear_json_errors(app, method, path, body, status, fragment):
    response = app["client"].request(method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["request_id"]
    assert response.headers["x-request-id"]


def test_empty_candidate_list_is_200(app):
    response = app["client"].post("/v1/rank", json={"user_id": 5, "post_ids": []})
    assert response.status_code == 200 and response.json()["scores"] == []


def test_handles_give_the_same_operations(app):
    handle = app["handle"]
    over_http = app["client"].get("/v1/candidates/7", params={"k": 5}).json()["candidates"]
    assert handle.candidates.remote(7, 5).result() == over_http
    assert len(handle.recommend.remote(7, 3, 50).result()) <= 3
    with pytest.raises(Exception) as info:
        handle.candidates.remote(424242, 5).result()
    assert "424242" in str(info.value)


def test_concurrent_requests_are_batched_and_answered_each_their_own(app):
    handle = app["handle"]
    users = [3, 7, 11, 424242, 19, 23]  # one unknown user among them must not fail the others' batch
    alone = {u: handle.recommend.remote(u, 5, 60).result() for u in users if u != 424242}
    responses = [handle.recommend.remote(u, 5, 60) for u in users]  # all in flight together
    for user, response in zip(users, responses, strict=True):
        if user == 424242:
            with pytest.raises(Exception, match="424242"):
                response.result()
        else:
            batched = response.result()
            # The ranker scores a batch in one matmul: its float32 sums may differ in the last bits from a
            # batch of one, so the posts, their order and sources match exactly and the scores closely.
            assert [(i["post_id"], i["source"]) for i in batched] == [(i["post_id"], i["source"]) for i in alone[user]]
            assert [i["score"] for i in batched] == pytest.approx([i["score"] for i in alone[user]], rel=1e-5)
    replica = app["client"].get("/v1/versions").json()["replica"]
    assert replica["batching"] == {"max_batch_size": 64, "batch_wait_timeout_s": 0.0}
    totals = replica["batches_since_start"]["recommend"]
    assert totals["requests"] > totals["batches"]  # requests in flight together shared a call


def test_hot_swap_and_rollback_under_load_drop_no_request(app):
    client = app["client"]
    base = str(client.base_url)
    stop = threading.Event()
    outcomes: list[int] = []
    lock = threading.Lock()

    def load(path: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as own:
            while not stop.is_set():
                try:
                    status = own.get(path).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    outcomes.append(status)

    threads = [
        threading.Thread(target=load, args=(path,))
        for path in ("/v1/recommend/5?k=10&candidates=80", "/v1/candidates/9?k=20", "/v1/recommend/11?k=5")
        * 2
    ]
    for thread in threads:
        thread.start()
    try:
        second = build_serving_set(app["store"], app["data"], seed=2, content_dim=16)

        def wait_for(content_version: str, ranker_version: str, user_lists_version: str) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                serving = _serving(client)
                if (
                    serving["indexes"]["content"]["version"] == content_version
                    and serving["models"]["ranker"]["version"] == ranker_version
                    and serving["features"]["user_lists"]["version"] == user_lists_version
                ):
                    return
                time.sleep(0.25)
            raise AssertionError(
                f"serving did not switch to {content_version}/{ranker_version}: {_serving(client)}"
            )

        wait_for(second["indexes/content"], second["models/ranker"], second["features/user_lists"])
        serving = _serving(client)
        assert serving["embeddings"]["user"]["model_version"] == second["models/ranker"]
        assert serving["features"]["post"]["version"] == second["features/post"]
        rollback_serving_set(Store(app["store"]))
        wait_for(app["first"]["indexes/content"], app["first"]["models/ranker"], app["first"]["features/user_lists"])
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(outcomes) > 20
    assert set(outcomes) == {200}, {s: outcomes.count(s) for s in set(outcomes)}


def test_fuzzing_the_served_api_over_loopback_finds_no_server_error(app):
    """The schema the running app serves, fuzzed against that app through HAProxy and the replica."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(str(app["client"].base_url.join("/openapi.json")))
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def fuzz(case):
            case.call_and_validate(checks=checks, timeout=30)

        fuzz()
