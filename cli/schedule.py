"""`nearline schedule`: refresh on the configured cron schedule."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from cli.main import positive_int
from jobs.refresh import render_record, run_refresh
from jobs.schedule import Scheduler
from nearline.config import NearlineConfig


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    def refresh_once() -> dict[str, Any]:
        record = run_refresh(config)
        print(render_record(record), flush=True)
        return record

    scheduler = Scheduler(config.refresh, refresh_once)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: scheduler.stop.set())
    print(f"scheduling refresh on '{config.refresh.schedule}' (UTC); SIGTERM stops after the current run", flush=True)
    outcomes = scheduler.loop(max_runs=args.max_runs)
    print(f"scheduler stopped after {len(outcomes)} run(s): {', '.join(outcomes) or 'none'}")
    return 0 if all(o != "failed" for o in outcomes) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schedule")
    parser.add_argument("--max-runs", type=positive_int, default=None, help="stop after this many scheduled runs")
    parser.set_defaults(handler=_handle)
