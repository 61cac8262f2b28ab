"""`nearline generate`: the seeded synthetic dataset."""

from __future__ import annotations

import argparse
import time

from jobs.generate_dataset import run
from jobs.spark import build_spark_session
from nearline.config import NearlineConfig


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    print(
        f"generating {config.generate.num_users:,} users (seed {config.generate.seed}) into {config.data.path}"
    )
    spark = build_spark_session(
        config.spark, expected_rows=config.generate.num_users * 100, app_suffix="generate"
    )
    counts = run(spark, config)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    print(
        f"generated {total:,} rows in {elapsed:.1f} s ({total / elapsed:,.0f} rows/s) -> {config.data.path}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate")
    parser.set_defaults(handler=_handle)
