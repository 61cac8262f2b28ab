"""`nearline index build|publish|rollback|list|eval`: FAISS indexes behind the validation gate."""

from __future__ import annotations

import argparse

from cli.main import positive_int
from jobs.build_index import ID_COLUMNS, configured_index, evaluate, list_versions, publish, run
from nearline.config import NearlineConfig
from storage.store import Store


def _handle_build(args: argparse.Namespace, config: NearlineConfig) -> int:
    result = run(config, args.name, args.embedding_version, publish=not args.no_publish)
    print(
        f"indexes/{args.name} {result['version']}: {result['row_counts']['vectors']:,} vectors "
        f"{result['factory_string']} ({result['metric']}, dim {result['dim']}, {result['device']}), "
        f"{', '.join(f'{k} {v}' for k, v in result['metrics'].items())}, "
        f"built in {result['build_time_s']['total']:.1f} s; gate passed; "
        + ("published" if result["published"] else "not published (--no-publish)")
    )
    return 0


def _handle_publish(args: argparse.Namespace, config: NearlineConfig) -> int:
    version = publish(config, args.name, args.version, args.force)
    print(f"indexes/{args.name}: CURRENT -> {version}")
    return 0


def _handle_rollback(args: argparse.Namespace, config: NearlineConfig) -> int:
    configured_index(config, args.name)
    version = Store(config.store.root).rollback("indexes", args.name)
    print(f"indexes/{args.name}: rolled back, CURRENT -> {version}")
    return 0


def _handle_list(args: argparse.Namespace, config: NearlineConfig) -> int:
    rows = list_versions(config, args.name)
    if not rows:
        print(f"indexes/{args.name}: no versions")
    for row in rows:
        metrics = " ".join(f"{k}={v}" for k, v in row["metrics"].items())
        gate = {True: "passed", False: "FAILED", None: "-"}[row["gate_passed"]]
        print(
            f"{'*' if row['current'] else ' '} {row['version']}  {row['vectors'] or 0:>10,} vectors  "
            f"{row['factory_string']}  {metrics}  gate {gate}  embeddings {row['embedding_version']}"
        )
    return 0


def _handle_eval(args: argparse.Namespace, config: NearlineConfig) -> int:
    result = evaluate(config, args.name, args.version, args.out, args.queries)
    for point in result["points"]:
        print(
            f"{result['parameter'] or '-'}={point['value']:<5} recall@10 {point['recall@10']:.3f}  "
            f"recall@100 {point['recall@100']:.3f}  {point['qps']:>10,.0f} QPS"
        )
    print(f"indexes/{args.name} {result['version']}: wrote {', '.join(result['outputs'])}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index")
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = commands.add_parser("build", help="build an index from embeddings, gate it, publish if it passes")
    build.add_argument("name", choices=sorted(ID_COLUMNS))
    build.add_argument("--embedding-version", help="embeddings version (default: CURRENT, else the latest)")
    build.add_argument("--no-publish", action="store_true", help="stage only, even if the gate passes")
    build.set_defaults(handler=_handle_build)

    pub = commands.add_parser("publish", help="make a version the serving one (default: the latest)")
    pub.add_argument("name", choices=sorted(ID_COLUMNS))
    pub.add_argument("--version")
    pub.add_argument("--force", action="store_true", help="publish even if the version failed its gate")
    pub.set_defaults(handler=_handle_publish)

    back = commands.add_parser("rollback", help="switch back to the previously published version")
    back.add_argument("name", choices=sorted(ID_COLUMNS))
    back.set_defaults(handler=_handle_rollback)

    show = commands.add_parser("list", help="versions with counts, recall and gate outcome (* = CURRENT)")
    show.add_argument("name", choices=sorted(ID_COLUMNS))
    show.set_defaults(handler=_handle_list)

    ev = commands.add_parser("eval", help="recall@10/@100 and QPS across search parameters; JSON + PNG")
    ev.add_argument("name", choices=sorted(ID_COLUMNS))
    ev.add_argument("--version", help="index version (default: CURRENT, else the latest)")
    ev.add_argument("--out", default="reports", help="directory for index_<name>_eval.json/.png")
    ev.add_argument("--queries", type=positive_int, default=1000, help="query vectors sampled from the embeddings")
    ev.set_defaults(handler=_handle_eval)
