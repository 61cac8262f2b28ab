"""Serving benchmark: closed-loop HTTP load, in-process overhead, batching gain, hot swap + rollback under load.

    python -m bench.serve [--data data/synthetic] [--seconds 4] [--concurrency 1 4 16 32]

(``python bench/serve.py`` works too unless a ``bench/retrieval.py`` shadows the ``retrieval`` package.)

Builds a coherent serving set into a temporary store (content vectors, user interests, a random
ranker with its user / user-author vectors, both indexes) over the dataset, starts the app on a free
loopback port, and measures:

1. in-process pipeline (same bundles, no Ray/HTTP): /v1/candidates (k=100) and /v1/recommend
   (500 candidates -> top 50) sequentially, for what HTTP + Serve add;
2. closed-loop load at increasing concurrency: p50/p99 latency, QPS, errors per endpoint;
3. batched (max_batch_size 64) vs unbatched (1) throughput of /v1/recommend at the highest concurrency,
   switched live through user_config;
4. a hot swap (a new set published) and a rollback during sustained /v1/recommend load: failed requests
   and the latency blip (p99 in 1 s windows around each switch vs before).

Writes reports/serve.json, reports/serve_latency.png and reports/serve.md. The load generator runs on
the same (2 shared) cores as the server, so absolute QPS is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nearline.config import load_config
from retrieval.config import IndexConfig
from serving.api import CandidateQuery, RankQuery
from serving.blend import RecommendBlend
from serving.config import ServeConfig, serve_environment
from serving.index_side import load_index_bundle
from serving.lineage import INDEX_POINTERS, RANKER_POINTERS, read_pointers, rollback_serving_set
from serving.ranker_side import load_ranker_bundle
from serving.recommend import recommend
from storage.store import Store
from tests.support.serving_fixture import build_serving_set, write_tiny_dataset

REPORTS = Path(__file__).resolve().parent.parent / "reports"
FLOOR_APP = "serve-floor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50_ms": None, "p99_ms": None}
    array = np.asarray(latencies_ms)
    return {
        "p50_ms": round(float(np.percentile(array, 50)), 3),
        "p99_ms": round(float(np.percentile(array, 99)), 3),
    }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 response off a keep-alive connection: its status (body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _closed_loop(base: str, paths: list[str], concurrency: int, seconds: float) -> dict:
    """`concurrency` workers each send the next request as soon as the previous answers.

    Each worker speaks HTTP/1.1 over its own keep-alive connection with plain asyncio streams: a general
    client (httpx) costs ~3 ms of CPU per request here, as much as the server's work, and would take
    the cores the server needs."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    host, port = base.removeprefix("http://").split(":")

    async def worker(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        i = offset
        try:
            while time.perf_counter() < deadline:
                request = f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
                started = time.perf_counter()
                try:
                    writer.write(request)
                    ok = await asyncio.wait_for(_read_response(reader), 30) == 200
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not ok
                i += concurrency
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "qps": round(len(latencies) / elapsed, 1),
        **_percentiles(latencies),
    }


def _process_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) so far of each Ray process on this machine, by Ray's process title
    (``ray::ServeReplica:nearline:Ingress``, ``ray::ProxyActor``, ...; raylet and GCS by executable)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while being read
            continue
        if command.startswith("ray::"):
            name = command.split()[0]
        elif ("/ray/" in command and Path(command).name in ("raylet", "gcs_server")) or Path(command).name == "haproxy":
            name = Path(command).name
        else:
            continue
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def _cpu_ms_per_request(
    before: dict[str, float], after: dict[str, float], client_s: float, requests: int
) -> dict:
    """Where the CPU of a load level went, in ms per request, by process (and the load generator's own)."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    spent = {name.removeprefix("ray::"): seconds for name, seconds in spent.items() if seconds > 0.05}
    spent["load generator (this process)"] = client_s
    return {name: round(seconds * 1000 / max(requests, 1), 2) for name, seconds in sorted(spent.items())}


def _batch_totals(base: str, method: str) -> dict[str, int]:
    """The ingress's batches and requests of one method since it started (from /v1/versions)."""
    totals = httpx.get(f"{base}/v1/versions", timeout=30).json()["replica"]["batches_since_start"]
    return totals.get(method, {"batches": 0, "requests": 0})


def _mean_batch_size(before: dict[str, int], after: dict[str, int]) -> float | None:
    batches = after["batches"] - before["batches"]
    return round((after["requests"] - before["requests"]) / batches, 2) if batches else None


def _deploy_serve_floor(route_prefix: str) -> None:
    """A Serve app that does no work: a FastAPI ingress answering at once, behind the same ingress mode."""
    from fastapi import FastAPI
    from ray import serve

    floor = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(floor)
    class FloorIngress:
        @floor.get("/")
        async def ping(self) -> dict:
            return {"ok": True}

    serve.run(FloorIngress.bind(), name=FLOOR_APP, route_prefix=route_prefix)


def _publish_set(store: Store, versions: dict[str, str]) -> None:
    """Point CURRENT at a built set, models and embeddings before the indexes that depend on them."""
    for key in sorted(versions, key=lambda k: k.startswith("indexes/")):
        kind, name = key.split("/")
        store.publish(kind, name, versions[key])


def _in_process(index, ranker, users: np.ndarray, repeats: int, blend: RecommendBlend | None) -> dict:
    calls = {
        "candidates": lambda u: index.candidates([CandidateQuery(int(u), 100)]),
        "recommend": lambda u: recommend(index, ranker, int(u), 50, 500, blend),
        "recommend_ranker_order": lambda u: recommend(index, ranker, int(u), 50, 500),
    }
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    # Variants alternate in blocks of users, so a noisy moment on the shared cores lands on every variant
    # alike; within a block one variant runs back to back, as a replica serving one route would.
    block = 20
    for start in range(0, min(repeats, len(users)), block):
        for name, call in calls.items():
            for u in users[start : min(start + block, repeats)]:
                started = time.perf_counter()
                call(u)
                latencies[name].append((time.perf_counter() - started) * 1000)
    return {name: _percentiles(values) for name, values in latencies.items()}


def _in_process_batching(index, ranker, users: np.ndarray, batch_size: int = 32) -> dict:
    """Queries/s of one batched call vs the same queries one call each (the work @serve.batch merges)."""
    users = users[:batch_size]
    posts = ranker.posts.post_ids
    rng = np.random.default_rng(1)
    rank_queries = [RankQuery(int(u), rng.choice(posts, 500, replace=False)) for u in users]
    candidate_queries = [CandidateQuery(int(u), 100) for u in users]
    out = {}
    for name, batched, single in (
        ("candidates", lambda: index.candidates(candidate_queries), lambda q: index.candidates([q])),
        ("rank_500", lambda: ranker.rank(rank_queries), lambda q: ranker.rank([q])),
    ):
        queries = candidate_queries if name == "candidates" else rank_queries
        timings = {}
        for mode in ("batched", "unbatched"):
            started = time.perf_counter()
            for _ in range(3):
                if mode == "batched":
                    batched()
                else:
                    for q in queries:
                        single(q)
            timings[mode] = round(3 * len(queries) / (time.perf_counter() - started), 1)
        out[name] = {
            "batch_size": len(queries),
            "batched_qps": timings["batched"],
            "unbatched_qps": timings["unbatched"],
            "gain": round(timings["batched"] / timings["unbatched"], 2),
        }
    return out


def _sustained_with_switches(base: str, paths: list[str], concurrency: int, actions, tail_s: float) -> dict:
    """Threads keep requesting while `actions` ((delay_s, name, callable), run in turn) switch versions."""
    records: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.perf_counter()

    def worker(offset: int) -> None:
        i = offset
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(paths[i % len(paths)]).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    records.append((started - t0, (time.perf_counter() - started) * 1000, status))
                i += concurrency

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    events = []
    try:
        for delay_s, name, action in actions:
            time.sleep(delay_s)
            started = time.perf_counter() - t0
            detail = action()
            events.append(
                {
                    "event": name,
                    "started_s": round(started, 2),
                    "done_s": round(time.perf_counter() - t0, 2),
                    "detail": detail,
                }
            )
        time.sleep(tail_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    times = np.asarray([r[0] for r in records])
    latencies = np.asarray([r[1] for r in records])
    statuses = np.asarray([r[2] for r in records])
    first_event = events[0]["started_s"] if events else float("inf")
    baseline = latencies[times < first_event]
    windows = []
    for event in events:
        mask = (times >= event["started_s"]) & (times <= event["done_s"] + 1.0)
        windows.append(
            {
                "event": event["event"],
                "requests": int(mask.sum()),
                **_percentiles(latencies[mask].tolist()),
                "max_ms": round(float(latencies[mask].max()), 1) if mask.any() else None,
            }
        )
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "failed_requests": int((statuses != 200).sum()),
        "baseline": _percentiles(baseline.tolist()),
        "switch_windows": windows,
        "events": events,
        "series": {"t_s": times.round(3).tolist(), "latency_ms": latencies.round(2).tolist()},
    }


def _nearline_metrics(metrics_port: int) -> list[str] | str:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return f"unavailable: {exc}"
    return sorted(
        {line.split("{")[0].split(" ")[0] for line in text.splitlines() if "nearline_" in line and not line.startswith("#")}
    )


def _batching_and_swaps(spec, base: str, store: Store, first: dict, second: dict, recommend_paths: list[str],
                        load: dict, args: argparse.Namespace) -> dict:
    """Batched vs unbatched throughput (switched live through user_config), then a hot swap and a rollback
    under sustained load."""
    from serving.app import start_local

    top = max(args.concurrency)
    batching = {"batched": next(r for r in load["recommend"] if r["concurrency"] == top)}
    start_local(spec, user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    _wait_batching(base, 1)
    before = _batch_totals(base, "recommend")
    batching["unbatched"] = asyncio.run(_closed_loop(base, recommend_paths, top, args.seconds))
    batching["unbatched"]["mean_batch_size"] = _mean_batch_size(before, _batch_totals(base, "recommend"))
    batching["gain"] = round(batching["batched"]["qps"] / max(batching["unbatched"]["qps"], 1e-9), 2)
    start_local(spec, user_config={"max_batch_size": 64, "batch_wait_timeout_s": 0.0})
    _wait_batching(base, 64)
    print("batching:", {k: v if isinstance(v, float) else v["qps"] for k, v in batching.items()})

    def wait_serving(content_version: str, ranker_version: str, timeout_s: float = 60.0) -> float:
        started = time.perf_counter()
        with httpx.Client(base_url=base) as client:
            while time.perf_counter() - started < timeout_s:
                serving = client.get("/v1/versions").json()["serving"]
                if (
                    serving["indexes"]["content"]["version"] == content_version
                    and serving["models"]["ranker"]["version"] == ranker_version
                ):
                    return round(time.perf_counter() - started, 2)
                time.sleep(0.1)
        raise RuntimeError(f"serving did not switch to {content_version}/{ranker_version}")

    def hot_swap() -> dict:
        _publish_set(store, second)
        return {
            "published": second["indexes/content"],
            "switch_after_publish_s": wait_serving(second["indexes/content"], second["models/ranker"]),
        }

    def rollback() -> dict:
        rollback_serving_set(store)
        return {
            "rolled_back_to": first["indexes/content"],
            "switch_after_publish_s": wait_serving(first["indexes/content"], first["models/ranker"]),
        }

    swap = _sustained_with_switches(
        base, recommend_paths, 8, [(3.0, "hot_swap", hot_swap), (3.0, "rollback", rollback)], tail_s=3.0
    )
    print("hot swap:", {k: v for k, v in swap.items() if k != "series"})
    return {"batching": batching, "hot_swap": swap}


def _wait_batching(base: str, max_batch_size: int, timeout_s: float = 30.0) -> None:
    """Until the replica reports the batch size a redeploy's user_config set."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replica = httpx.get(f"{base}/v1/versions", timeout=30).json()["replica"]
        if replica["batching"]["max_batch_size"] == max_batch_size:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the replica did not take max_batch_size={max_batch_size}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="data/synthetic", help="contract dataset (a tiny one is made if absent)"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each load level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--content-dim", type=int, default=64)
    parser.add_argument(
        "--replicas", type=int, default=2, help="serving replicas (one per core of this 2-core box by default)"
    )
    parser.add_argument(
        "--ingress", nargs="+", default=["haproxy", "proxy"], choices=["haproxy", "proxy"],
        help="ingress modes to measure, side by side (the first also runs batching, swap and rollback)",
    )
    parser.add_argument(
        "--blend-config", default="conf/local.yaml",
        help="serve /v1/recommend with this config's serve.recommend_blend, as production does",
    )
    args = parser.parse_args()
    served_blend = load_config(args.blend_config).serve.recommend_blend

    import faiss
    import torch
    from ray import serve

    from serving.app import app_spec, shutdown_local, start_local

    # The same thread counts as the replicas (serve.index_omp_threads, serve.torch_num_threads).
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)

    bench_started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="nearline-bench-serve-"))
    data = args.data
    if not (Path(data) / "engagements").is_dir():
        data = str(workdir / "data")
        write_tiny_dataset(data, num_users=2000, num_posts=3000)
    store_root = str(workdir / "store")
    first = build_serving_set(store_root, data, seed=1, content_dim=args.content_dim)
    # The second set is built now (not during the load) and published later: the swap is measured, not the build.
    second = build_serving_set(store_root, data, seed=2, content_dim=args.content_dim)
    store = Store(store_root)
    _publish_set(store, first)
    index_configs = {
        "content": IndexConfig(factory_string="IVF{nlist},Flat", metric="cosine"),
        "user": IndexConfig(factory_string="IVF{nlist},Flat", metric="ip"),
    }
    config = ServeConfig(warmup_queries=16, max_recommend_candidates=2000, recommend_blend=served_blend)
    index = load_index_bundle(store, read_pointers(store, INDEX_POINTERS), config, index_configs)
    ranker = load_ranker_bundle(store, read_pointers(store, RANKER_POINTERS), config)
    users = np.random.default_rng(0).permutation(index.interest.ids)
    in_process = _in_process(index, ranker, users, repeats=200, blend=RecommendBlend.from_config(served_blend))
    in_process_batching = _in_process_batching(index, ranker, users)
    print("in-process batching:", in_process_batching)
    sizes = {
        "users": int(len(index.known_users)),
        "posts": int(len(index.post_vectors.ids)),
        "content_dim": args.content_dim,
    }
    del index, ranker
    print("in-process:", in_process)

    candidate_paths = [f"/v1/candidates/{u}?k=100" for u in users[:500]]
    recommend_paths = [f"/v1/recommend/{u}?k=50&candidates=500" for u in users[:500]]
    result: dict = {
        "dataset": data,
        "sizes": sizes,
        "in_process": in_process,
        "in_process_batching": in_process_batching,
        "replicas": args.replicas,
        "ingress": {},
    }
    # The default ingress first: the batching, hot swap and rollback measurements run on it.
    modes = [args.ingress[0]] + [m for m in args.ingress[1:] if m != args.ingress[0]]
    for mode in modes:
        config = ServeConfig(
            port=_free_port(), poll_interval_s=1.0, warmup_queries=16, max_recommend_candidates=2000, ingress=mode,
            num_replicas=args.replicas, recommend_blend=served_blend,
        )
        spec = app_spec(store_root, config, index_configs)
        metrics_port = _free_port()
        base = f"http://127.0.0.1:{config.port}"
        run: dict = {"serve_config": config.model_dump(mode="json"), "ray_serve_env": serve_environment(config)}
        result["ingress"][mode] = run
        try:
            started = time.perf_counter()
            start_local(spec, num_cpus=2, metrics_export_port=metrics_port)
            run["startup_s"] = round(time.perf_counter() - started, 1)
            with httpx.Client(base_url=base) as client:  # warm the HTTP path once
                for path in candidate_paths[:20] + recommend_paths[:20]:
                    client.get(path)
            run["healthz_floor"] = asyncio.run(_closed_loop(base, ["/healthz"], 1, args.seconds))
            load: dict = {"candidates": [], "recommend": []}
            for level in args.concurrency:
                for name, paths in (("candidates", candidate_paths), ("recommend", recommend_paths)):
                    before, cpu_before, client_before = (
                        _batch_totals(base, name),
                        _process_cpu_s(),
                        time.process_time(),
                    )
                    row = asyncio.run(_closed_loop(base, paths, level, args.seconds))
                    row["cpu_ms_per_request"] = _cpu_ms_per_request(
                        cpu_before, _process_cpu_s(), time.process_time() - client_before, row["requests"]
                    )
                    row["mean_batch_size"] = _mean_batch_size(before, _batch_totals(base, name))
                    load[name].append(row)
                    print(mode, name, {k: v for k, v in row.items() if k != "cpu_ms_per_request"})
            run["load"] = load
            # Last: deploying and deleting the work-free app keeps Serve's controller busy for a while.
            _deploy_serve_floor("/serve-floor")
            # A new app reloads HAProxy's routes, which may close a kept-alive connection: settle first.
            asyncio.run(_closed_loop(base, ["/serve-floor/"], 1, 1.0))
            run["serve_floor"] = asyncio.run(_closed_loop(base, ["/serve-floor/"], 1, args.seconds))
            run["serve_floor_32"] = asyncio.run(_closed_loop(base, ["/serve-floor/"], 32, args.seconds))
            serve.delete(FLOOR_APP)
            print(mode, "serve floor:", run["serve_floor"], run["serve_floor_32"], "healthz:", run["healthz_floor"])
            if mode == modes[0]:
                result.update(_batching_and_swaps(spec, base, store, first, second, recommend_paths, load, args))
                result["prometheus_metrics"] = _nearline_metrics(metrics_port)
        finally:
            shutdown_local()
    result["bench_seconds"] = round(time.perf_counter() - bench_started, 1)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "serve.json").write_text(json.dumps(result, indent=1))
    _plot(result, REPORTS / "serve_latency.png")
    (REPORTS / "serve.md").write_text(_markdown(result))
    print((REPORTS / "serve.md").read_text())


def _plot(result: dict, path: Path) -> None:
    fig, (ax_load, ax_swap) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, linestyle in zip(result["ingress"], ("-", ":"), strict=False):
        for name, marker in (("candidates", "o"), ("recommend", "s")):
            rows = result["ingress"][mode]["load"][name]
            levels = [r["concurrency"] for r in rows]
            ax_load.plot(levels, [r["qps"] for r in rows], marker=marker, linestyle=linestyle, label=f"{name} ({mode})")
    ax_load.set_xscale("log", base=2)
    ax_load.set_xlabel("concurrent clients (closed loop)")
    ax_load.set_ylabel("requests per second")
    ax_load.set_title("HTTP throughput vs concurrency, by ingress")
    ax_load.legend(fontsize=8)
    series = result["hot_swap"]["series"]
    ax_swap.scatter(series["t_s"], series["latency_ms"], s=3, alpha=0.5)
    for event, color in zip(result["hot_swap"]["events"], ("tab:green", "tab:red"), strict=False):
        label = f"{event['event']} (publish -> serving)"
        ax_swap.axvspan(event["started_s"], event["done_s"], alpha=0.2, color=color, label=label)
    ax_swap.set_xlabel("time (s)")
    ax_swap.set_ylabel("/v1/recommend latency (ms)")
    ax_swap.set_title(f"hot swap + rollback: {result['hot_swap']['failed_requests']} failed requests")
    ax_swap.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(result: dict) -> str:
    ip = result["in_process"]
    modes = list(result["ingress"])
    first = result["ingress"][modes[0]]
    lines = [
        "# Serving benchmark",
        "",
        f"Dataset `{result['dataset']}`: {result['sizes']['users']} users, {result['sizes']['posts']} posts, "
        f"content dim {result['sizes']['content_dim']}; IVF Flat indexes; {result['replicas']} replica(s), each holding both sides "
        "(batch sizes and the batching counters are one replica's); "
        f"2 shared CPU cores for server and load generator. `python -m bench.serve` ({result['bench_seconds']} s).",
        "",
        "| ingress | endpoint | clients | p50 ms | p99 ms | QPS | errors | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        for name in ("candidates", "recommend"):
            for row in result["ingress"][mode]["load"][name]:
                lines.append(
                    f"| {mode} | {name} | {row['concurrency']} | {row['p50_ms']} | {row['p99_ms']} | {row['qps']} | "
                    f"{row['errors']} | {row['mean_batch_size']} |"
                )
    lines += [
        "",
        "What HTTP and Serve add over the in-process pipeline (same bundles, no Ray, no HTTP), p50 at 1 client, "
        "beside the work-free app's floor (a FastAPI replica answering at once through the same ingress):",
        "",
        "| ingress | work-free floor: p50 ms, 1 client / QPS, 32 clients | candidates: in-process / HTTP / added ms | recommend 500 -> 50: in-process / HTTP / added ms |",
        "|---|---:|---:|---:|",
    ]
    for mode in modes:
        low = {name: result["ingress"][mode]["load"][name][0] for name in ("candidates", "recommend")}
        cells = [
            f"{ip[name]['p50_ms']} / {low[name]['p50_ms']} / {round(low[name]['p50_ms'] - ip[name]['p50_ms'], 2)}"
            for name in ("candidates", "recommend")
        ]
        floor = result["ingress"][mode]
        lines.append(
            f"| {mode} | {floor['serve_floor']['p50_ms']} / {floor['serve_floor_32']['qps']} | {cells[0]} | {cells[1]} |"
        )
    if "recommend_ranker_order" in ip:
        lines += [
            "",
            f"In process, /v1/recommend as served (ordered by serve.recommend_blend) p50 {ip['recommend']['p50_ms']} ms "
            f"vs {ip['recommend_ranker_order']['p50_ms']} ms ordered by the ranker's score alone (same calls, 1 thread).",
        ]
    top_rows = {
        name: max(first["load"][name], key=lambda r: r["concurrency"]) for name in ("candidates", "recommend")
    }
    processes = sorted({p for row in top_rows.values() for p in row["cpu_ms_per_request"]})
    lines += [
        "",
        f"CPU per request by process at {top_rows['recommend']['concurrency']} clients, {modes[0]} ingress "
        "(ms; from /proc, so what each process burns, wherever it waits):",
        "",
        "| process | " + " | ".join(top_rows) + " |",
        "|---|" + "---:|" * len(top_rows),
    ]
    for process in processes:
        cells = " | ".join(str(row["cpu_ms_per_request"].get(process, "-")) for row in top_rows.values())
        lines.append(f"| {process} | {cells} |")
    totals = " | ".join(str(round(sum(row["cpu_ms_per_request"].values()), 2)) for row in top_rows.values())
    lines.append(f"| **total** | {totals} |")
    b = result["batching"]
    lines += [
        "",
        f"Batching (/v1/recommend, {b['batched']['concurrency']} clients): batched {b['batched']['qps']} QPS "
        f"(p50 {b['batched']['p50_ms']} ms) vs unbatched {b['unbatched']['qps']} QPS "
        f"(p50 {b['unbatched']['p50_ms']} ms, batch size 1 forced through the user_config): x{b['gain']}.",
        "",
        "| in-process, one call for a batch vs one call per query | batch | batched q/s | unbatched q/s | gain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["in_process_batching"].items():
        lines.append(
            f"| {name} | {row['batch_size']} | {row['batched_qps']} | {row['unbatched_qps']} | x{row['gain']} |"
        )
    swap = result["hot_swap"]
    lines += [
        "",
        f"Hot swap + rollback under sustained /v1/recommend load ({swap['concurrency']} clients, "
        f"{swap['requests']} requests, {modes[0]} ingress): **{swap['failed_requests']} failed**. Baseline p50/p99 "
        f"{swap['baseline']['p50_ms']}/{swap['baseline']['p99_ms']} ms.",
        "",
        "| switch | publish -> serving (s) | requests in window | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for event, window in zip(swap["events"], swap["switch_windows"], strict=True):
        lines.append(
            f"| {event['event']} | {event['detail']['switch_after_publish_s']} | {window['requests']} | "
            f"{window['p50_ms']} | {window['p99_ms']} | {window['max_ms']} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
