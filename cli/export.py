"""`nearline export KIND`: batch embedding and serving-table exports into the store (Spark)."""

from __future__ import annotations

import argparse
import time

from cli.main import positive_int
from jobs import export_content_embeddings, export_serving_tables, export_user_embeddings
from jobs.export_content_embeddings import health_line
from jobs.io import input_fingerprint
from jobs.spark import build_spark_session
from nearline.config import NearlineConfig
from storage.store import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    _register_content(kinds)
    _register_user(kinds)
    _register_serving_tables(kinds)


def _handle_content(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    store = Store(config.store.root)
    spark = build_spark_session(config.spark, app_suffix="export-content")
    version, rows = export_content_embeddings.run_content(spark, config, store, args.model_version, not args.no_publish)
    elapsed = time.perf_counter() - started
    print(f"encoded {rows:,} posts in {elapsed:.1f} s ({rows / elapsed:,.0f} posts/s) -> embeddings/content/{version}")
    print(health_line(store.manifest("embeddings", "content", version)["health"]))
    return 0


def _handle_user_interest(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    store = Store(config.store.root)
    spark = build_spark_session(config.spark, app_suffix="export-user-interest")
    version, rows = export_content_embeddings.run_user_interest(spark, config, store, args.content_version, not args.no_publish)
    print(f"pooled {rows:,} user interest vectors in {time.perf_counter() - started:.1f} s "
          f"-> embeddings/user_interest/{version}")
    print(health_line(store.manifest("embeddings", "user_interest", version)["health"]))
    return 0


def _register_content(exports: argparse._SubParsersAction) -> None:
    """Adds `export content` and `export user-interest` to the `export` command."""
    content = exports.add_parser("content", help="content embeddings of every post (Spark)")
    content.add_argument("--model-version", help="content model version (default: CURRENT)")
    content.add_argument("--no-publish", action="store_true", help="stage the version without publishing it")
    content.set_defaults(handler=_handle_content)
    interest = exports.add_parser("user-interest", help="users' pooled interest vectors (Spark)")
    interest.add_argument("--content-version", help="content embedding version (default: CURRENT)")
    interest.add_argument("--no-publish", action="store_true", help="stage the version without publishing it")
    interest.set_defaults(handler=_handle_user_interest)


def _handle_user(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix=f"export-{args.kind}")
    result = export_user_embeddings.run(
        spark, config, args.kind, args.model_version, args.as_of_us, args.recent_days, not args.no_publish
    )
    group = export_user_embeddings.GROUP_OF_KIND[args.kind]
    print(
        f"embeddings/{group} {result['version']}: {result['row_counts'][group]:,} vectors of dim {result['dim']} "
        f"from ranker {result['model_version']} ({result['rows_per_s']:,.0f} rows/s) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _register_user(kinds: argparse._SubParsersAction) -> None:
    """Adds `export user` and `export user-author` to the `export` command's kinds."""
    for kind, help_text in (
        ("user", "user vectors of every user from the ranker's user split (Spark)"),
        ("user-author", "user-author vectors of follow edges and recent pairs (Spark)"),
    ):
        parser = kinds.add_parser(kind, help=help_text)
        parser.add_argument("--model-version", default=None, help="ranker version (default: current)")
        parser.add_argument(
            "--as-of-us", type=int, default=None, help="feature time, µs (default: after last event)"
        )
        parser.add_argument("--recent-days", type=positive_int, default=28, help="user-author: window of recent pairs")
        parser.add_argument("--no-publish", action="store_true", help="stage without making it CURRENT")
        parser.set_defaults(handler=_handle_user, kind=kind)


def _handle_serving_tables(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    spark = build_spark_session(config.spark, expected_rows=1_000_000, app_suffix="export-serving-tables")
    fingerprint = input_fingerprint(config.data.path)
    for result in (
        export_serving_tables.run_post_features(spark, config, not args.no_publish, fingerprint),
        export_serving_tables.run_user_lists(spark, config, not args.no_publish, fingerprint),
    ):
        name = result["name"]
        print(f"features/{name} {result['version']}: {result['row_counts'][name]:,} rows "
              f"as of {result['snapshot_us']} µs" + ("" if args.no_publish else " (published)"))
        if "topics" in result:
            topics = result["topics"]
            print(f"  topics: {topics['num_topics']} fitted on {topics['fitted_on_posts']:,} posts, "
                  f"{topics['effective_topics']} effective, {topics['share_without_terms']:.1%} of posts without known terms")
    print(f"exported serving tables in {time.perf_counter() - started:.1f} s")
    return 0


def _register_serving_tables(kinds: argparse._SubParsersAction) -> None:
    """Adds `export serving-tables` to the `export` command's kinds."""
    parser = kinds.add_parser(
        "serving-tables", help="features/post and features/user_lists as of the last event, for serving (Spark)"
    )
    parser.add_argument("--no-publish", action="store_true", help="stage the versions without publishing them")
    parser.set_defaults(handler=_handle_serving_tables)
