"""`nearline refresh` and `nearline runs`."""

from __future__ import annotations

import argparse

from cli.main import positive_int
from jobs.refresh import render_record, run_refresh
from nearline.config import NearlineConfig
from storage.store import Store


def _handle_refresh(args: argparse.Namespace, config: NearlineConfig) -> int:
    record = run_refresh(config)
    print(render_record(record))
    return 0 if record["outcome"] in ("success", "unchanged") else 1


def _handle_runs(args: argparse.Namespace, config: NearlineConfig) -> int:
    store = Store(config.store.root)
    records = store.runs(limit=args.limit)
    if not records:
        print(f"no runs recorded in {store.root / 'runs'}")
        return 0
    print(f"{'run id':<28} {'job':<12} {'outcome':<12} {'seconds':>8}  detail")
    for record in records:
        job = record.get("job", "refresh")
        detail = record.get("reason") or ", ".join(sorted(record.get("published", {}))) or ""
        if record.get("failed_stage"):
            detail = f"{record['failed_stage']}: {detail}"
        elif job != "refresh":
            detail = f"{record.get('artifact', '')} {record.get('version', '')}"
        print(f"{record['run_id']:<28} {job:<12} {record.get('outcome', '?'):<12} "
              f"{record.get('seconds') or 0:>8.1f}  {detail[:100]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    refresh = subparsers.add_parser("refresh")
    refresh.set_defaults(handler=_handle_refresh)
    runs = subparsers.add_parser("runs")
    runs.add_argument("--limit", type=positive_int, default=20, help="newest first (default 20)")
    runs.set_defaults(handler=_handle_runs)

