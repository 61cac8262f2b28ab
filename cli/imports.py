"""`nearline import FORMAT DIR --out PATH`: adapters from public formats into the data contract."""

from __future__ import annotations

import argparse
import time

from jobs import import_tweeteval, import_twitter1516
from jobs.io import print_import_summary
from jobs.spark import build_spark_session
from nearline.config import NearlineConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    tweeteval = formats.add_parser("tweeteval", help="TweetEval emoji text/label files")
    tweeteval.add_argument("directory")
    tweeteval.add_argument("--out", default="data/tweeteval", help="output dataset directory")
    tweeteval.set_defaults(handler=_handle_tweeteval)
    twitter = formats.add_parser("twitter1516", help="Twitter15/16 propagation cascades")
    twitter.add_argument("directory")
    twitter.add_argument("--out", default="data/twitter15", help="output dataset directory")
    twitter.set_defaults(handler=_handle_twitter1516)


def _handle_tweeteval(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=50_000, app_suffix="import-tweeteval")
    print_import_summary(args.directory, args.out, import_tweeteval.run(spark, args.directory, args.out), started)
    return 0


def _handle_twitter1516(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="import-twitter1516")
    print_import_summary(args.directory, args.out, import_twitter1516.run(spark, args.directory, args.out), started)
    return 0
