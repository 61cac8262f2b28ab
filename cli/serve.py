"""`nearline serve`, `nearline query ...` and `nearline rollback`: run, call and steer the serving app.

Reads:  the store (config.store.root) only: published indexes, embeddings, ranker, post features and user
        lists, CURRENT pointers.
Writes: `serve` writes nothing (optionally a ready file with the URL); `rollback` moves CURRENT pointers
        back to the previous coherent set, which serving replicas pick up on their next poll.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cli.main import positive_int
from nearline.config import NearlineConfig, load_config


class ServeAppArgs(BaseModel):
    """``args`` of the Serve config file (``conf/serve.yaml``): which nearline config to serve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field("conf/local.yaml", description="nearline YAML, relative to where serve runs.")
    overrides: list[str] = Field(default_factory=list, description="--set style KEY=VALUE overrides.")


def build_app(args: dict[str, Any]):
    """Entry point for ``serve run`` / ``serve deploy`` (import_path ``cli.serve:build_app``).

    Args:
        args: ServeAppArgs fields: ``config`` (nearline YAML) and ``overrides``.
    """
    from serving.app import app_spec, build_app_from_spec

    app_args = ServeAppArgs.model_validate(args or {})
    config = load_config(app_args.config, app_args.overrides)
    return build_app_from_spec(app_spec(config.store.root, config.serve, config.indexes))


def register(subparsers: argparse._SubParsersAction) -> None:
    serve_parser = subparsers.add_parser("serve")
    serve_parser.add_argument("--host", help="bind address (default: serve.host, loopback)")
    serve_parser.add_argument("--port", type=int, help="HTTP port (default: serve.port)")
    serve_parser.add_argument("--num-cpus", type=positive_int, help="CPUs for the local Ray (default: all)")
    serve_parser.add_argument("--ready-file", help="write {url, versions} JSON here once the app answers")
    serve_parser.add_argument(
        "--max-runtime-s", type=float, help="stop by itself after this many seconds (demos, smoke tests)"
    )
    serve_parser.set_defaults(handler=run_serve)

    query = subparsers.add_parser("query")
    query.add_argument("--url", help="app base URL (default: http://serve.host:serve.port)")
    kinds = query.add_subparsers(dest="query_kind", metavar="KIND", required=True)
    candidates = kinds.add_parser("candidates", help="candidate posts for a user")
    candidates.add_argument("user_id", type=int)
    candidates.add_argument("--k", type=positive_int)
    candidates.add_argument("--sources", help="content, collaborative or both")
    recommend = kinds.add_parser("recommend", help="candidates -> rank -> top k for a user")
    recommend.add_argument("user_id", type=int)
    recommend.add_argument("--k", type=positive_int)
    recommend.add_argument("--candidates", type=positive_int)
    rank = kinds.add_parser("rank", help="calibrated scores of posts for a user")
    rank.add_argument("user_id", type=int)
    rank.add_argument("post_ids", type=int, nargs="*")
    neighbors = kinds.add_parser("neighbors", help="posts similar to a post or a vector")
    group = neighbors.add_mutually_exclusive_group(required=True)
    group.add_argument("--post-id", type=int)
    group.add_argument("--vector", help="comma-separated floats")
    neighbors.add_argument("--k", type=positive_int)
    kinds.add_parser("versions", help="index, embedding and model versions being served")
    kinds.add_parser("health", help="GET /healthz")
    query.set_defaults(handler=run_query)

    rollback = subparsers.add_parser("rollback")
    rollback.add_argument("--side", choices=("content", "user", "both"), default="both")
    rollback.set_defaults(handler=run_rollback)


def run_serve(args: argparse.Namespace, config: NearlineConfig) -> int:
    import httpx

    from serving.app import app_spec, shutdown_local, start_local

    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    serve_config = config.serve.model_copy(update=updates)
    spec = app_spec(config.store.root, serve_config, config.indexes)
    url = f"http://{serve_config.host}:{serve_config.port}"
    stop = threading.Event()
    started = time.perf_counter()
    try:
        start_local(spec, num_cpus=args.num_cpus)
        # SIGTERM ends the wait like Ctrl-C, so that Serve and Ray are shut down on the way out. Set after
        # ray.init, which installs its own handler that would exit without that.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        versions = httpx.get(f"{url}/v1/versions", timeout=serve_config.request_timeout_s).json()
        print(f"nearline serving on {url} ({time.perf_counter() - started:.1f} s to start); Ctrl-C to stop")
        print(json.dumps(versions.get("serving", versions), indent=1))
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"url": url, "versions": versions.get("serving")}))
        deadline = None if args.max_runtime_s is None else time.monotonic() + args.max_runtime_s
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_local()
        print("nearline serve stopped")
    return 0


def _http(config: NearlineConfig, url: str | None, method: str, path: str, **kwargs: Any) -> int:
    import httpx

    base = url or f"http://{config.serve.host}:{config.serve.port}"
    try:
        response = httpx.request(
            method, base.rstrip("/") + path, timeout=config.serve.request_timeout_s, **kwargs
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(
            f"cannot reach the serving app at {base} ({exc}); is `nearline serve` running?"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text}
    out = sys.stdout if response.is_success else sys.stderr
    print(json.dumps(body, indent=1), file=out)
    return 0 if response.is_success else 1


def run_query(args: argparse.Namespace, config: NearlineConfig) -> int:
    kind = args.query_kind
    if kind == "candidates":
        params = {k: v for k, v in (("k", args.k), ("sources", args.sources)) if v is not None}
        return _http(config, args.url, "GET", f"/v1/candidates/{args.user_id}", params=params)
    if kind == "recommend":
        params = {k: v for k, v in (("k", args.k), ("candidates", args.candidates)) if v is not None}
        return _http(config, args.url, "GET", f"/v1/recommend/{args.user_id}", params=params)
    if kind == "rank":
        return _http(config, args.url, "POST", "/v1/rank", json={"user_id": args.user_id, "post_ids": args.post_ids})
    if kind == "neighbors":
        body: dict[str, Any] = {} if args.k is None else {"k": args.k}
        if args.post_id is not None:
            body["post_id"] = args.post_id
        else:
            try:
                body["vector"] = [float(x) for x in args.vector.split(",") if x.strip()]
            except ValueError:
                raise ValueError(f"--vector takes comma-separated floats, got {args.vector!r}") from None
        return _http(config, args.url, "POST", "/v1/neighbors", json=body)
    if kind == "versions":
        return _http(config, args.url, "GET", "/v1/versions")
    return _http(config, args.url, "GET", "/healthz")


def run_rollback(args: argparse.Namespace, config: NearlineConfig) -> int:
    from serving.lineage import rollback_serving_set
    from storage.store import Store

    sides = ("content", "user") if args.side == "both" else (args.side,)
    changed = rollback_serving_set(Store(config.store.root), sides)
    for pointer, version in changed.items():
        print(f"{pointer}: CURRENT -> {version}")
    print(
        f"rolled back {len(changed)} pointer(s); serving replicas switch within serve.poll_interval_s "
        f"({config.serve.poll_interval_s} s)"
    )
    return 0
