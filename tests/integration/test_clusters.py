"""A real Ray cluster on loopback: `ray start --head`, `serve deploy` of conf/serve.yaml, a rolling update.

The head is started with the `ray` CLI of this interpreter (as an operator would on a node), the Serve
app goes out with `serve deploy` from a copy of conf/serve.yaml whose only edits are what a deployment
edits (the nearline config it serves, the HTTP port, the CPU shares of a 2-core machine), and it is
queried over HTTP. The redeploy changes both the app args (so every replica is replaced: a rolling
update) and a user_config batching knob, while a closed-loop load counts failed requests.

The head runs in its own process group and teardown signals that group only: `ray stop` would kill
every Ray process of this user on the machine, including other people's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.serving_fixture import build_serving_set, write_tiny_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT_S = 120
DEPLOY_TIMEOUT_S = 240
LOAD_CLIENTS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL whatever of it is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    # Raylet workers, the dashboard and the autoscaler monitor share the group; none may outlive the test.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on loopback with every port chosen free; yields the dashboard address."""
    temp_dir = tempfile.mkdtemp(prefix="nl-ray-", dir="/tmp")  # short: Ray's Unix socket paths are limited
    dashboard = f"http://127.0.0.1:{_free_port()}"
    log = Path(temp_dir) / "ray-start.log"
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(_free_port()), "--num-cpus", "2", "--num-gpus", "0",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", dashboard.rsplit(":", 1)[1],
        "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()), "--temp-dir", temp_dir, "--disable-usage-stats",
    ]
    # Token authentication on, with a token of this test's own (not ~/.ray/auth_token): `serve deploy`
    # and the REST calls below present it, as an operator's tools would on a real cluster.
    token = secrets.token_hex(16)
    # HAProxy ingress on, as conf/serve.yaml tells operators (serve.ingress).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
           "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port())}
    head = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=REPO_ROOT)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited {head.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{dashboard}/api/version", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray dashboard not up after {HEAD_START_TIMEOUT_S} s: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"dashboard": dashboard, "env": env, "headers": headers}
    finally:
        # Serve's shutdown stops HAProxy, which runs in a session of its own and would outlive the group.
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "--address", dashboard],
                       capture_output=True, timeout=120, env=env)
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def serving_store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ray-cluster-store")
    data, store = str(root / "data"), str(root / "store")
    write_tiny_dataset(data, num_users=200, num_posts=400, seed=5)
    versions = build_serving_set(store, data, seed=1, content_dim=16)
    nearline_config = root / "nearline.yaml"
    # The fixture store has exact (Flat) indexes; the serving config must describe the same ones.
    nearline_config.write_text(yaml.safe_dump({
        "store": {"root": store}, "data": {"path": data},
        "indexes": {"content": {"factory_string": "Flat", "metric": "cosine"},
                    "user": {"factory_string": "Flat", "metric": "ip"}},
        "serve": {"warmup_queries": 4, "poll_interval_s": 2.0},
    }))
    return {"root": root, "config": str(nearline_config), "versions": versions}


def serve_config_copy(nearline_config: str, port: int, overrides: list[str], batch_size: int) -> dict:
    """conf/serve.yaml with the edits a deployment makes: what to serve, where, and CPU shares."""
    spec = yaml.safe_load((REPO_ROOT / "conf" / "serve.yaml").read_text())
    spec["http_options"]["port"] = port
    app = spec["applications"][0]
    app["args"] = {"config": nearline_config, "overrides": overrides}
    for deployment in app["deployments"]:
        if deployment["ray_actor_options"].get("num_cpus"):
            # A 2-CPU head leaves room for a replacement replica beside each old one.
            deployment["ray_actor_options"]["num_cpus"] = 0.5
        # A stopping replica keeps answering what routers still send it while they learn it is going.
        deployment["graceful_shutdown_wait_loop_s"] = 5
        deployment["graceful_shutdown_timeout_s"] = 60
        deployment["user_config"]["max_batch_size"] = batch_size
    return spec


def _serve_deploy(spec: dict, path: Path, head: dict) -> None:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", head["dashboard"]],
                            capture_output=True, text=True, timeout=120, env=head["env"])
    assert result.returncode == 0, result.stdout + result.stderr


def _application(head: dict) -> dict:
    details = httpx.get(f"{head['dashboard']}/api/serve/applications/", headers=head["headers"], timeout=10).json()
    return details.get("applications", {}).get("nearline", {})


def _replica_ids(app: dict) -> set[str]:
    return {r["replica_id"] for d in app.get("deployments", {}).values() for r in d.get("replicas", [])
            if r.get("state") == "RUNNING"}


def _wait_running(head: dict, client: httpx.Client, batch_size: int, timeout_s: float) -> dict:
    """Wait until the app is RUNNING and its replicas report the wanted batch size over HTTP."""
    deadline = time.monotonic() + timeout_s
    app: dict = {}
    while time.monotonic() < deadline:
        app = _application(head)
        if app.get("status") == "RUNNING" and all(
            d.get("status") == "HEALTHY" for d in app.get("deployments", {}).values()
        ):
            try:
                versions = client.get("/v1/versions").json()
                if versions["replica"]["batching"]["max_batch_size"] == batch_size:
                    return app
            except (httpx.HTTPError, KeyError, ValueError):
                pass
        time.sleep(1)
    raise TimeoutError(f"app not RUNNING with batch size {batch_size} after {timeout_s} s: {app}")


class ClosedLoopLoad:
    """LOAD_CLIENTS threads, each sending its next request when the last one answered; counts failures."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._stop = threading.Event()
        self._answered = threading.Condition()
        self.ok = 0
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)]

    def _loop(self, worker: int) -> None:
        with httpx.Client(base_url=self._base_url, timeout=30) as client:
            user = 1 + worker
            while not self._stop.is_set():
                user = user % 200 + 1
                path = f"/v1/recommend/{user}" if user % 2 else f"/v1/candidates/{user}"
                try:
                    response = client.get(path, params={"k": 5})
                    failed = (None if response.status_code == 200
                              else f"{path}: {response.status_code} {response.text[:300]}")
                except httpx.HTTPError as exc:
                    failed = f"{path}: {type(exc).__name__} {exc}"
                with self._answered:
                    if failed:
                        self.failures.append(failed)
                    else:
                        self.ok += 1
                    self._answered.notify_all()

    def wait_for_ok(self, count: int, timeout_s: float = 120) -> int:
        """Block until at least `count` requests have succeeded; returns the count then."""
        with self._answered:
            if not self._answered.wait_for(lambda: self.ok >= count, timeout=timeout_s):
                raise TimeoutError(f"{self.ok} of {count} requests succeeded in {timeout_s} s: {self.failures[:5]}")
            return self.ok

    def __enter__(self) -> ClosedLoopLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_serve_deploy_query_and_rolling_update_without_failed_requests(ray_head, serving_store, tmp_path):
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    first = serve_config_copy(serving_store["config"], port, overrides=[], batch_size=64)
    _serve_deploy(first, tmp_path / "serve-v1.yaml", ray_head)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        app_before = _wait_running(ray_head, client, 64, DEPLOY_TIMEOUT_S)
        assert client.get("/healthz").json() == {"status": "ok"}
        serving = client.get("/v1/versions").json()["serving"]
        assert serving["models"]["ranker"]["version"] == serving_store["versions"]["models/ranker"]
        items = client.get("/v1/recommend/5", params={"k": 4, "candidates": 60}).json()["items"]
        assert 0 < len(items) <= 4

        # New args replace every replica (a rolling update); the new batch size is a user_config change.
        second = serve_config_copy(serving_store["config"], port, overrides=["serve.poll_interval_s=1.5"],
                                   batch_size=16)
        with ClosedLoopLoad(base_url) as load:
            # Requests answered before the update starts, and more after it ends (counts, not sleeps).
            before_update = load.wait_for_ok(LOAD_CLIENTS * 5)
            _serve_deploy(second, tmp_path / "serve-v2.yaml", ray_head)
            app_after = _wait_running(ray_head, client, 16, DEPLOY_TIMEOUT_S)
            load.wait_for_ok(load.ok + LOAD_CLIENTS * 5)
        print(f"rolling update under load: {load.ok} ok, {len(load.failures)} failed "
              f"({before_update} before the redeploy)")
        assert before_update > 0 and load.ok > before_update
        assert load.failures == [], load.failures[:10]
        assert not _replica_ids(app_before) & _replica_ids(app_after), "replicas were not replaced"
        assert client.get("/v1/versions").json()["replica"]["batching"]["max_batch_size"] == 16
