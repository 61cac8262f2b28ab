"""The end-to-end demo behind `make demo`: generate, refresh, serve, query, append a day, refresh live.

Everything runs for real on this machine: local Spark for the jobs, a local Ray
instance for serving, FAISS indexes and a store on disk under .demo/ (wiped at
the start). When the new day arrives, `eval recommend` first scores the serving
set on it (recommend against its candidates' own order, each source, popularity
and random; .demo/recommend.json). While the second refresh publishes, a load
generator keeps calling the app; the demo ends by printing the versions before
and after the switch and how many requests failed during it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds

from evaluation.recommend import evaluate as evaluate_recommend
from evaluation.recommend import render as render_recommend
from jobs.generate_dataset import run as generate
from jobs.refresh import render_record, run_refresh
from jobs.spark import build_spark_session
from nearline.config import NearlineConfig, load_config

DEMO_ROOT = Path(".demo")


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def _demo_config(through_day: int, port: int) -> NearlineConfig:
    return load_config("conf/local.yaml", [
        f"store.root={DEMO_ROOT / 'store'}", f"data.path={DEMO_ROOT / 'data'}",
        f"refresh.lock_path={DEMO_ROOT / 'store' / 'refresh.lock'}",
        f"generate.through_day={through_day}", f"serve.port={port}", "serve.poll_interval_s=1",
        # A lighter content model than the TweetEval default: the demo's few thousand posts do not
        # need 2^19 n-gram buckets, and the demo has to finish in minutes on two cores.
        "content.wide_buckets=131072", "content.epochs=4",
    ])


class LoadGenerator:
    """Closed-loop callers of /v1/recommend and /v1/candidates; counts every non-200 answer."""

    def __init__(self, url: str, user_ids: list[int], workers: int = 4) -> None:
        self.url, self.user_ids, self.workers = url, user_ids, workers
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(workers)]

    def _loop(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = worker
            while not self.stop.is_set():
                user_id = self.user_ids[i % len(self.user_ids)]
                path = f"/v1/recommend/{user_id}?k=10" if i % 2 else f"/v1/candidates/{user_id}?k=50"
                started = time.perf_counter()
                try:
                    response = client.get(path)
                    if response.status_code != 200:
                        self.failures.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                i += self.workers

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _post_texts(config: NearlineConfig, post_ids: list[int]) -> dict[int, str]:
    posts = ds.dataset(f"{config.data.path}/posts").to_table(
        columns=["post_id", "text"], filter=ds.field("post_id").isin(post_ids))
    return dict(zip(posts.column("post_id").to_pylist(), posts.column("text").to_pylist(), strict=True))


def _show_user(client: httpx.Client, config: NearlineConfig, user_id: int) -> None:
    candidates = client.get(f"/v1/candidates/{user_id}", params={"k": 100}).json()["candidates"]
    by_source: dict[str, int] = {}
    for item in candidates:
        by_source[item["source"]] = by_source.get(item["source"], 0) + 1
    items = client.get(f"/v1/recommend/{user_id}", params={"k": 5, "candidates": 300}).json()["items"]
    texts = _post_texts(config, [item["post_id"] for item in items])
    blended = bool(items) and items[0]["blend_score"] is not None
    order = "the blend of the ranker's score with retrieval features" if blended else "the ranker's raw score"
    print(f"user {user_id}: {len(candidates)} candidates {by_source}; top 5 after ranking "
          f"(ordered by {order}; p(engage) is the ranker's calibrated probability):")
    for item in items:
        blend = f"blend {item['blend_score']:+.4f}  " if blended else ""
        print(f"   post {item['post_id']:>6}  {blend}rank score {item['rank_score']:.5f}  p(engage)={item['score']:.3f}"
              f"  from {item['source']:<13}  {texts.get(item['post_id'], '')[:60]}")


def _flat_versions(serving: dict[str, Any]) -> dict[str, str | None]:
    """{kind: {name: {version, ...}}} from /v1/versions -> {"kind/name": version}."""
    return {f"{kind}/{name}": info.get("version") for kind, artifacts in serving.items()
            for name, info in artifacts.items() if isinstance(info, dict)}


def _wait_for_versions(client: httpx.Client, expected: dict[str, str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    serving: dict[str, Any] = {}
    while time.monotonic() < deadline:
        serving = client.get("/v1/versions").json().get("serving", {})
        flat = json.dumps(serving)
        if all(version in flat for version in expected.values()):
            return serving
        time.sleep(0.5)
    raise RuntimeError(f"serving did not switch to {expected} within {timeout_s} s; it serves {serving}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    days = load_config("conf/local.yaml").generate.num_days
    config = _demo_config(days - 1, args.port)

    _banner(f"1. generate a {config.generate.num_users:,}-user world, days 1-{days - 1} (local Spark)")
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="demo")
    generate(spark, config)

    _banner("2. first refresh: content model, embeddings, ranker (cold), indexes, validate, publish")
    record = run_refresh(config, spark)
    print(render_record(record))
    if record["outcome"] != "success":
        return 1

    _banner("3. serve (local Ray Serve on 127.0.0.1)")
    ready_file = DEMO_ROOT / "serve-ready.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--config", "conf/local.yaml",
         "--set", f"store.root={DEMO_ROOT / 'store'}", "--set", f"data.path={DEMO_ROOT / 'data'}",
         "--set", "serve.poll_interval_s=1", "serve", "--port", str(args.port), "--ready-file", str(ready_file),
         "--max-runtime-s", "900"],
        stdout=open(DEMO_ROOT / "serve.log", "w"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print((DEMO_ROOT / "serve.log").read_text()[-3000:])
                raise RuntimeError("the serving app did not start; see .demo/serve.log")
            time.sleep(0.5)
        url = json.loads(ready_file.read_text())["url"]
        print(f"serving on {url}")
        users = ds.dataset(f"{config.data.path}/users").to_table(columns=["user_id"]).column("user_id").to_pylist()
        sample_users = users[:: max(1, len(users) // 50)][:50]
        with httpx.Client(base_url=url, timeout=30) as client:
            before = _flat_versions(client.get("/v1/versions").json().get("serving", {}))
            _banner("4. query a few users: candidates, then ranked posts with their text")
            for user_id in sample_users[:3]:
                _show_user(client, config, user_id)

            _banner("5. a new day of data arrives: first, how well did the serving set predict it?")
            config = _demo_config(days, args.port)
            generate(spark, config)
            # The same candidates -> rank -> top k code the app serves, scored on the day it had not seen.
            report, _ = evaluate_recommend(config, config.data.path, max_users=500)
            (DEMO_ROOT / "recommend.json").write_text(json.dumps(report, indent=2, default=str))
            print(render_recommend(report))

            _banner("6. refresh again while serving under load")
            with LoadGenerator(url, sample_users) as load:
                record = run_refresh(config, spark)
                print(render_record(record))
                if record["outcome"] != "success":
                    return 1
                after = _flat_versions(_wait_for_versions(
                    client, {k: v for k, v in record["published"].items() if k.startswith("indexes/")},
                    timeout_s=120))
                time.sleep(2)
            _banner("7. versions switched with zero downtime")
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    print(f"  {key:<28} {before.get(key)} -> {after.get(key)}")
            warm: dict[str, Any] = next((s for s in record["stages"] if s["name"] == "ranker"), {})
            report = warm.get("details", {}).get("warm_start") or {}
            print(f"  ranker warm-started from the serving model {before.get('models/ranker', '')}: "
                  f"kept {len(report.get('kept', []))} tensors, grown {len(report.get('grown', []))}, "
                  f"added {len(report.get('added', []))}, dropped {len(report.get('dropped', []))}")
            p50 = statistics.median(load.latencies_ms) if load.latencies_ms else float("nan")
            print(f"  requests during the refresh and switch: {len(load.latencies_ms):,}, "
                  f"failed: {len(load.failures)}, p50 {p50:.1f} ms")
            for failure in load.failures[:5]:
                print(f"    {failure}")
            for user_id in sample_users[:1]:
                _show_user(client, config, user_id)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        spark.stop()

    _banner("done")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; failed requests during the switch: "
          f"{len(load.failures)}")
    print(f"store, run records and serving log: {DEMO_ROOT.resolve()}/ (runs: nearline --set "
          f"store.root={DEMO_ROOT / 'store'} runs); benchmark reports and plots: {Path('reports').resolve()}/")
    return 0 if not load.failures else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
