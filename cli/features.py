"""`nearline features`: point-in-time ranking rows with a time-based split."""

from __future__ import annotations

import argparse
import time

from jobs.build_ranking_features import run
from jobs.spark import build_spark_session
from nearline.config import NearlineConfig


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=2_000_000, app_suffix="features")
    version, manifest = run(spark, config)
    counts = manifest["row_counts"]
    print(
        f"features/ranking {version}: train {counts['train']:,}, validation {counts['validation']:,}, "
        f"test {counts['test']:,} rows (engage rate {manifest['train_positive_rates']['engage']:.3f}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features")
    parser.set_defaults(handler=_handle)
